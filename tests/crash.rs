//! kill -9 of the x402d process mid-settlement, on SQLite and PostgreSQL: after a restart every
//! accepted payment reaches `confirmed` exactly once.

#[macro_use]
mod common;

use alloy::primitives::U256;
use alloy::providers::ext::AnvilApi;
use common::*;
use futures::future::join_all;
use serde_json::Value;
use x402d::ledger::{Ledger, TxStatus};

/// Four gas wallets: every kill leaves several lanes with work of their own.
async fn harness(backend: Backend) -> Option<Harness> {
    Harness::start_with(HarnessOptions {
        backend,
        in_process: false,
        gas_wallets: 4,
        ..Default::default()
    })
    .await
}

/// Every payment confirmed, each payer debited once, every transaction mined.
async fn assert_settled_exactly_once(
    h: &Harness,
    payers: &[alloy::signers::local::PrivateKeySigner],
) -> usize {
    for p in payers {
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
    }
    assert_eq!(
        h.usdc_balance(h.pay_to).await,
        U256::from(ONE_CENT * payers.len() as u64)
    );
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_eq!(
        ledger.count_by_state().await.unwrap(),
        vec![("confirmed".to_owned(), payers.len() as i64)]
    );
    let txs = ledger.transactions(CHAIN_ID).await.unwrap();
    for t in &txs {
        assert_eq!(t.status, TxStatus::Mined, "{}", t.tx_hash);
    }
    txs.len()
}

/// Settles `bodies` with mining paused until each is broadcast (`settlement_pending` with a
/// hash), kills x402d, makes the node forget its pool, restarts x402d and settles them again: each
/// must succeed with the transaction first broadcast (only the ledger's raw copy can bring it
/// back). Returns the answers before and after, and the still running service.
async fn broadcast_kill_and_rebroadcast(
    h: &Harness,
    bodies: &[Value],
) -> (Vec<Value>, Vec<Value>, Service) {
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    let service = Service::start(h, "settle_timeout_seconds = 2").await;
    let pending = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &pending {
        assert_eq!(a["errorReason"], "settlement_pending", "{a}");
        let hash = a["transaction"].as_str().unwrap_or_default();
        assert_eq!(hash.len(), 66, "broadcast before the kill: {a}");
    }
    service.kill_9();
    h.chain
        .provider()
        .anvil_drop_all_transactions()
        .await
        .unwrap();
    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
    let service = Service::start(h, "settle_timeout_seconds = 10").await;
    let done = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for (a, before) in done.iter().zip(&pending) {
        assert_eq!(a["success"], true, "{a}");
        assert_eq!(
            a["transaction"], before["transaction"],
            "the stored transaction was rebroadcast"
        );
    }
    (pending, done, service)
}

on_both_backends!(killed_between_broadcast_and_receipt);
async fn killed_between_broadcast_and_receipt(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let (pending, _, service) = broadcast_kill_and_rebroadcast(&h, &bodies).await;
    let hashes: std::collections::HashSet<&str> = pending
        .iter()
        .map(|a| a["transaction"].as_str().unwrap_or_default())
        .collect();
    service.kill_9();
    assert_eq!(assert_settled_exactly_once(&h, &payers).await, hashes.len());
}

on_both_backends!(killed_between_claim_and_broadcast);
async fn killed_between_claim_and_broadcast(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);

    // A fee ceiling below the base fee holds the claimed payments before any transaction exists.
    let service =
        Service::start_with(&h, "settle_timeout_seconds = 1", "max_fee_per_gas_wei = 1").await;
    let pending = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &pending {
        assert_eq!(a["errorReason"], "settlement_pending", "{a}");
    }
    service.kill_9();
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_eq!(
        ledger.count_by_state().await.unwrap(),
        vec![("queued".to_owned(), 5)]
    );
    assert!(ledger.transactions(CHAIN_ID).await.unwrap().is_empty());

    let service = Service::start(&h, "settle_timeout_seconds = 10").await;
    let done = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &done {
        assert_eq!(a["success"], true, "{a}");
    }
    service.kill_9();
    let txs = assert_settled_exactly_once(&h, &payers).await;
    assert!((1..=5).contains(&txs), "{txs}");
}

on_both_backends!(killed_between_inclusion_and_confirmation);
async fn killed_between_inclusion_and_confirmation(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    // Three confirmations on a chain that mines only when asked: the payments are included and
    // wait for depth when the process dies.
    let service = Service::start(&h, "settle_timeout_seconds = 2\nconfirmations = 3").await;
    let pending = join_all(bodies.iter().map(|b| service.settle(b))).await;
    service.kill_9();
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    let states = ledger.count_by_state().await.unwrap();
    assert!(
        states
            .iter()
            .all(|(s, _)| s == "included" || s == "confirmed")
            && states.iter().any(|(s, _)| s == "included"),
        "{states:?}"
    );
    for _ in 0..3 {
        h.chain.provider().evm_mine(None).await.unwrap();
    }
    let service = Service::start(&h, "settle_timeout_seconds = 10\nconfirmations = 3").await;
    let done = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for (a, before) in done.iter().zip(&pending) {
        assert_eq!(a["success"], true, "{a}");
        assert_eq!(a["transaction"], before["transaction"], "{a}");
    }
    service.kill_9();
    assert!(assert_settled_exactly_once(&h, &payers).await >= 1);
}

on_both_backends!(a_corrupt_stored_transaction_does_not_stop_recovery);
async fn a_corrupt_stored_transaction_does_not_stop_recovery(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    let service = Service::start(&h, "settle_timeout_seconds = 2").await;
    let pending = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &pending {
        assert_eq!(a["errorReason"], "settlement_pending", "{a}");
    }
    service.kill_9();
    h.chain
        .provider()
        .anvil_drop_all_transactions()
        .await
        .unwrap();
    // Damage the stored copy of one transaction: it can neither be decoded nor rebroadcast.
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    let victim = ledger.transactions(CHAIN_ID).await.unwrap()[0].id;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&h.ledger_url).await.unwrap();
    sqlx::query("UPDATE transactions SET raw_tx = 'not hex' WHERE id = $1")
        .bind(victim)
        .execute(&pool)
        .await
        .unwrap();
    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
    let service = Service::start(&h, "settle_timeout_seconds = 20").await;
    let done = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &done {
        assert_eq!(a["success"], true, "{a}");
    }
    service.kill_9();
    for p in &payers {
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
    }
    assert_eq!(
        h.usdc_balance(h.pay_to).await,
        U256::from(ONE_CENT * payers.len() as u64)
    );
    assert_eq!(
        ledger.count_by_state().await.unwrap(),
        vec![("confirmed".to_owned(), payers.len() as i64)]
    );
}

on_both_backends!(permit2_and_upto_survive_a_kill_between_broadcast_and_receipt);
/// Permit2 (exact) and upto payments beside EIP-3009 ones: broadcast, killed, the node's pool
/// dropped; after the restart each is settled once from the ledger's stored transaction, upto
/// for the amount charged.
async fn permit2_and_upto_survive_a_kill_between_broadcast_and_receipt(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let usdc_payers = h.funded_payers(2, ONE_CENT).await;
    let usdc_req = h.requirement(ONE_CENT);
    let mut bodies = h.v2_bodies(&usdc_payers, &usdc_req);
    let exact = h.permit2_requirement(ONE_CENT);
    let mut plain_payers = Vec::new();
    for _ in 0..2 {
        let p = h.plain_payer(ONE_CENT, true).await;
        let signed = x402d::client::sign_permit2_for_v2(&p, &exact, now()).unwrap();
        bodies.push(h.permit2_body(&exact, &signed));
        plain_payers.push(p);
    }
    // upto: authorised for three cents, charged one.
    let mut upto = h.permit2_requirement(3 * ONE_CENT);
    upto.scheme = "upto".into();
    upto.extra.as_mut().unwrap().facilitator_address = Some(h.gas_key.address());
    let upto_payer = h.plain_payer(3 * ONE_CENT, true).await;
    let signed = x402d::client::sign_permit2_for_v2(&upto_payer, &upto, now()).unwrap();
    let mut charged = upto.clone();
    charged.amount = x402d::protocol::AtomicAmount::from_u64(ONE_CENT);
    bodies.push(x402d::client::facilitator_body(
        2,
        x402d::client::payload_v2(&upto, &signed),
        serde_json::to_value(&charged).unwrap(),
    ));
    let (_, done, service) = broadcast_kill_and_rebroadcast(&h, &bodies).await;
    assert_eq!(done[4]["amount"], ONE_CENT.to_string());
    // Each settled again: still once.
    let again = join_all(bodies.iter().map(|b| service.settle(b))).await;
    assert!(again.iter().all(|a| a["success"] == true));
    service.kill_9();
    let plain = h.chain.plain_token;
    for p in usdc_payers.iter() {
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
    }
    for p in &plain_payers {
        assert_eq!(
            h.chain.balance_of(plain, p.address()).await.unwrap(),
            U256::ZERO
        );
    }
    assert_eq!(
        h.chain
            .balance_of(plain, upto_payer.address())
            .await
            .unwrap(),
        U256::from(2 * ONE_CENT)
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(2 * ONE_CENT));
    assert_eq!(
        h.chain.balance_of(plain, h.pay_to).await.unwrap(),
        U256::from(3 * ONE_CENT)
    );
    let ledger = Ledger::connect(&h.ledger_url).await.unwrap();
    assert_eq!(
        ledger.count_by_state().await.unwrap(),
        vec![("confirmed".to_owned(), 5)]
    );
}
