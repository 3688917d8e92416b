//! A reorg that un-includes a settlement after its authorization expired cannot be made good: the
//! payment is reported lost, loudly, and nothing is resubmitted. Its own test binary, because it
//! moves this process's clock forward (no sleeping through the validity window).

mod common;

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::ext::AnvilApi;
use common::*;
use x402d::ledger::PaymentState;

async fn lost_after_expiry(backend: Backend) {
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let payload = h.sign(&payer, &req);
    let body = h.body(2, &req, &payload);
    let (_, first) = h.settle(&body).await;
    assert_eq!(first["success"], true, "{first}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));

    // Past validBefore (the requirement's timeout is minutes), then the block is rolled back.
    x402d::clock::advance(Duration::from_secs(3_600));
    let p = h.chain.provider();
    p.anvil_rollback(Some(1)).await.unwrap();
    p.evm_mine(None).await.unwrap();
    let started = Instant::now();
    let lost = loop {
        let row = h
            .ledger()
            .find(
                CHAIN_ID,
                h.chain.usdc,
                payer.address(),
                payload.authorization.nonce,
            )
            .await
            .unwrap()
            .unwrap();
        if row.state == PaymentState::Lost {
            break row;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still {:?}",
            row.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        lost.fail_message
            .as_deref()
            .unwrap_or_default()
            .contains("reorg"),
        "{lost:?}"
    );
    // The payee was not paid, the payer kept the money, nothing was sent again.
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::ZERO);
    assert_eq!(h.usdc_balance(payer.address()).await, U256::from(ONE_CENT));
    assert_eq!(h.ledger().transactions(CHAIN_ID).await.unwrap().len(), 1);
    let metrics = h
        .http
        .get(format!("{}/metrics", h.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("x402d_payments_lost_total{network=\"eip155:84532\"} 1"),
        "{metrics}"
    );
    let (_, again) = h.settle(&body).await;
    assert_eq!(again["success"], false, "{again}");
    x402d::clock::reset();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_after_the_authorization_expired_reports_the_payment_lost() {
    // One test for both backends: the clock it moves is the whole process's.
    lost_after_expiry(Backend::Sqlite).await;
    lost_after_expiry(Backend::Postgres).await;
}
