//! Settlement on a live chain, with every fault produced on a real anvil: several gas wallets,
//! stuck transactions and their replacement, a fee ceiling, reorgs, outside sends from a lane's
//! key, dropped pools, poisoned batch items and dry wallets. Each test asserts money: balances,
//! `AuthorizationUsed` logs, nonces.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use common::*;
use futures::StreamExt;
use serde_json::Value;
use x402d::ledger::TxStatus;

async fn harness(
    backend: Backend,
    gas_wallets: usize,
    settlement: &str,
    fees: &str,
) -> Option<Harness> {
    Harness::start_with(HarnessOptions {
        backend,
        gas_wallets,
        settlement: settlement.to_owned(),
        fees: fees.to_owned(),
        ..Default::default()
    })
    .await
}

/// A metric's value for a label set (the first series whose labels contain `labels`).
async fn metric(h: &Harness, name: &str, labels: &str) -> f64 {
    let text = h
        .http
        .get(format!("{}/metrics", h.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn status(h: &Harness) -> Value {
    h.http
        .get(format!("{}/status", h.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Mined transactions per wallet, each wallet's nonces contiguous from 0 and equal to the chain's
/// count (the lane never skipped or reused one); no settlement transaction reverted.
async fn assert_lanes_contiguous(h: &Harness, outside_sends: &BTreeMap<Address, u64>) -> usize {
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    let mut wallets_used = 0;
    for key in &h.gas_keys {
        let w = key.address();
        let mut nonces: Vec<u64> = txs
            .iter()
            .filter(|t| t.wallet == w && t.status == TxStatus::Mined)
            .map(|t| t.nonce)
            .collect();
        nonces.sort_unstable();
        assert!(
            !txs.iter()
                .any(|t| t.wallet == w && t.status == TxStatus::Reverted),
            "a settlement transaction of {w} reverted"
        );
        let chain_nonce = h.chain.provider().get_transaction_count(w).await.unwrap();
        let outside = outside_sends.get(&w).copied().unwrap_or(0);
        assert_eq!(
            nonces.len() as u64 + outside,
            chain_nonce,
            "{w}: {} mined settlement transactions and {outside} outside sends, chain nonce {chain_nonce}",
            nonces.len()
        );
        if outside == 0 {
            let expected: Vec<u64> = (0..nonces.len() as u64).collect();
            assert_eq!(nonces, expected, "{w}'s nonces are contiguous");
        }
        if !nonces.is_empty() {
            wallets_used += 1;
        }
    }
    wallets_used
}

async fn settle_all(h: &Harness, bodies: &[Value], concurrency: usize) -> Vec<(u16, Value)> {
    futures::stream::iter(bodies.iter().map(|b| h.settle(b)))
        .buffered(concurrency)
        .collect()
        .await
}

on_both_backends!(
    four_wallets_settle_a_thousand_payments_once_with_contiguous_nonces,
    4
);
async fn four_wallets_settle_a_thousand_payments_once_with_contiguous_nonces(backend: Backend) {
    let Some(h) = harness(backend, 4, "batch_max_items = 50", "").await else {
        return;
    };
    let payers = h.funded_payers(1000, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let answers = settle_all(&h, &bodies, 500).await;
    for (status, a) in &answers {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["success"], true, "{a}");
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(1000 * ONE_CENT));
    for p in payers.iter().step_by(97) {
        assert_eq!(h.usdc_balance(p.address()).await, U256::ZERO);
        assert_eq!(h.authorizations_used(p.address()).await, 1);
    }
    let used = assert_lanes_contiguous(&h, &BTreeMap::new()).await;
    assert!(used >= 3, "only {used} of 4 wallets settled anything");
}

on_both_backends!(
    a_stuck_transaction_is_replaced_and_its_payment_settles_once,
    4
);
async fn a_stuck_transaction_is_replaced_and_its_payment_settles_once(backend: Backend) {
    let Some(h) = harness(
        backend,
        1,
        "replace_after_seconds = 1\nrebroadcast_after_seconds = 1\nsettle_timeout_seconds = 60",
        "",
    )
    .await
    else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let p = h.chain.provider();
    p.anvil_set_auto_mine(false).await.unwrap();
    let settle = spawn_settle(&h, &body);
    let first = wait_for_transactions(&h, 1).await.remove(0);
    // The next block's base fee jumps above what the first transaction may pay: it is stuck.
    p.anvil_set_next_block_base_fee_per_gas(first.max_fee_per_gas * 3)
        .await
        .unwrap();
    p.evm_mine(None).await.unwrap();
    let started = Instant::now();
    while h.ledger().transactions(CHAIN_ID).await.unwrap().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replacement was signed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.anvil_set_auto_mine(true).await.unwrap();
    let answer = loop {
        p.evm_mine(None).await.unwrap();
        if settle.is_finished() {
            break settle.await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(answer["success"], true, "{answer}");
    assert_ne!(
        answer["transaction"],
        first.tx_hash.to_string(),
        "the replacement was mined, not the stuck one"
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
    assert!(metric(&h, "x402d_tx_replacements_total", "eip155:84532").await >= 1.0);
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    assert!(
        txs.iter().all(|t| t.nonce == first.nonce),
        "replacements keep the nonce"
    );
    assert_eq!(
        txs.iter().filter(|t| t.status == TxStatus::Mined).count(),
        1
    );
}

async fn wait_for_transactions(h: &Harness, n: usize) -> Vec<x402d::ledger::Transaction> {
    let started = Instant::now();
    loop {
        let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
        if txs.len() >= n {
            return txs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {} transactions",
            txs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    a_batch_waits_visibly_under_the_fee_ceiling_and_settles_when_fees_fall,
    4
);
async fn a_batch_waits_visibly_under_the_fee_ceiling_and_settles_when_fees_fall(backend: Backend) {
    const CEILING: u128 = 50_000_000_000; // 50 gwei
    let Some(h) = harness(
        backend,
        1,
        "settle_timeout_seconds = 3",
        &format!("max_fee_per_gas_wei = {CEILING}"),
    )
    .await
    else {
        return;
    };
    // Funded before the spike: the funder's own transaction would be priced from a stale estimate.
    let payer = h.funded_payer(ONE_CENT).await;
    let p = h.chain.provider();
    p.anvil_set_next_block_base_fee_per_gas(CEILING * 4)
        .await
        .unwrap();
    p.evm_mine(None).await.unwrap();
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let (code, pending) = h.settle(&body).await;
    assert_eq!(code, 200, "{pending}");
    assert_eq!(pending["errorReason"], "settlement_pending", "{pending}");
    assert_eq!(
        pending["transaction"], "",
        "nothing was sent above the ceiling"
    );
    // A batch priced from a quote taken just before the spike may have been signed and refused by
    // the node ("fee cap below base fee"); nothing above the ceiling was ever signed, and nothing
    // reached the pool.
    for t in h.ledger().transactions(CHAIN_ID).await.unwrap() {
        assert!(t.max_fee_per_gas <= CEILING, "{t:?} above the ceiling");
        assert_eq!(t.status, TxStatus::Dropped, "{t:?}");
    }
    let s = status(&h).await;
    let waiting = s["settlement"][0]["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("fee ceiling"), "{s}");
    assert_eq!(
        metric(&h, "x402d_settlement_waiting", "eip155:84532").await,
        1.0
    );
    let ready: Value = h
        .http
        .get(format!("{}/ready", h.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["failed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "settlement")),
        "/ready says settlement is degraded: {ready}"
    );
    p.anvil_set_next_block_base_fee_per_gas(1_000_000_000)
        .await
        .unwrap();
    p.evm_mine(None).await.unwrap();
    let started = Instant::now();
    let done = loop {
        let (_, a) = h.settle(&body).await;
        if a["success"] == true {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{a}");
    };
    let hash: B256 = done["transaction"].as_str().unwrap().parse().unwrap();
    let tx = p.get_transaction_by_hash(hash).await.unwrap().unwrap();
    use alloy::consensus::Transaction as _;
    assert!(tx.max_fee_per_gas() <= CEILING, "sent under the ceiling");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
    assert_eq!(
        metric(&h, "x402d_settlement_waiting", "eip155:84532").await,
        0.0
    );
}

on_both_backends!(
    a_reorg_after_success_is_resubmitted_and_the_payee_made_whole,
    4
);
async fn a_reorg_after_success_is_resubmitted_and_the_payee_made_whole(backend: Backend) {
    let Some(h) = harness(backend, 1, "", "").await else {
        return;
    };
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let (_, first) = h.settle(&body).await;
    assert_eq!(first["success"], true, "{first}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
    let p = h.chain.provider();
    p.anvil_rollback(Some(1)).await.unwrap();
    p.evm_mine(None).await.unwrap();
    let reorged = Instant::now();
    while h.usdc_balance(h.pay_to).await != U256::from(ONE_CENT) {
        assert!(
            reorged.elapsed() < Duration::from_secs(20),
            "the payee was never made whole"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, again) = h.settle(&body).await;
    assert_eq!(again["success"], true, "{again}");
    let hash: B256 = again["transaction"].as_str().unwrap().parse().unwrap();
    let receipt = p.get_transaction_receipt(hash).await.unwrap();
    assert!(
        receipt.is_some_and(|r| r.status()),
        "/settle names a transaction that is mined now: {again}"
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
    assert_eq!(h.usdc_balance(payer.address()).await, U256::ZERO);
    assert_eq!(
        metric(&h, "x402d_reorgs_handled_total", "eip155:84532").await,
        1.0
    );
    // The lane's nonce went back with the chain; new payments keep settling at once.
    let next = h.funded_payer(ONE_CENT).await;
    let body = h.body(2, &req, &h.sign(&next, &req));
    let started = Instant::now();
    let (_, a) = h.settle(&body).await;
    assert_eq!(a["success"], true, "{a}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_lanes_contiguous_ignoring_reorged(&h).await;
}

/// After a reorg, the wallet's chain nonce equals the number of its settlement transactions mined
/// on the chain as it is now.
async fn assert_lanes_contiguous_ignoring_reorged(h: &Harness) {
    let w = h.gas_key.address();
    let mined = h
        .ledger()
        .transactions(CHAIN_ID)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.status == TxStatus::Mined)
        .count() as u64;
    assert_eq!(
        h.chain.provider().get_transaction_count(w).await.unwrap(),
        mined
    );
}

on_both_backends!(
    an_outside_send_from_a_lane_key_mid_load_loses_and_doubles_nothing,
    4
);
async fn an_outside_send_from_a_lane_key_mid_load_loses_and_doubles_nothing(backend: Backend) {
    let Some(h) = harness(backend, 1, "rebroadcast_after_seconds = 1", "").await else {
        return;
    };
    let payers = h.funded_payers(200, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies = h.v2_bodies(&payers, &req);
    let outside = lane_key_provider(&h);
    let sends = async {
        let mut n = 0u64;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let tx = TransactionRequest::default()
                .with_to(Address::random())
                .with_value(U256::from(1));
            if let Ok(pending) = outside.send_transaction(tx).await
                && pending.get_receipt().await.is_ok_and(|r| r.status())
            {
                n += 1;
            }
        }
        n
    };
    let (answers, outside_sends) = tokio::join!(settle_all(&h, &bodies, 200), sends);
    assert!(outside_sends > 0, "no outside send got through");
    for (status, a) in &answers {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["success"], true, "{a}");
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(200 * ONE_CENT));
    for p in payers.iter().step_by(23) {
        assert_eq!(h.authorizations_used(p.address()).await, 1);
    }
    assert_lanes_contiguous(&h, &BTreeMap::from([(h.gas_key.address(), outside_sends)])).await;
    // A payment after the disturbance settles within seconds.
    let next = h.funded_payer(ONE_CENT).await;
    let started = Instant::now();
    let (_, a) = h.settle(&h.body(2, &req, &h.sign(&next, &req))).await;
    assert_eq!(a["success"], true, "{a}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

on_both_backends!(a_dropped_pool_and_a_stolen_nonce_heal_without_loss, 4);
async fn a_dropped_pool_and_a_stolen_nonce_heal_without_loss(backend: Backend) {
    let Some(h) = harness(
        backend,
        1,
        "rebroadcast_after_seconds = 1\nsettle_timeout_seconds = 60",
        "",
    )
    .await
    else {
        return;
    };
    let p = h.chain.provider();
    let req = h.requirement(ONE_CENT);
    // 1. Dropped from the pool: rebroadcast from the stored bytes.
    let a = h.funded_payer(ONE_CENT).await;
    let body_a = h.body(2, &req, &h.sign(&a, &req));
    p.anvil_set_auto_mine(false).await.unwrap();
    let settle_a = spawn_settle(&h, &body_a);
    let first = wait_for_transactions(&h, 1).await.remove(0);
    p.anvil_drop_all_transactions().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.anvil_set_auto_mine(true).await.unwrap();
    p.evm_mine(None).await.unwrap();
    let answer = settle_a.await.unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["transaction"], first.tx_hash.to_string());
    // 2. A transaction of ours dropped and its nonce taken by an outside send from the same key:
    //    the lane sees the nonce used without its receipt and sends the payment again.
    let b = h.funded_payer(ONE_CENT).await;
    let body_b = h.body(2, &req, &h.sign(&b, &req));
    p.anvil_set_auto_mine(false).await.unwrap();
    let settle_b = spawn_settle(&h, &body_b);
    let ours = wait_for_transactions(&h, 2).await.pop().unwrap();
    p.anvil_drop_transaction(ours.tx_hash).await.unwrap();
    let outside = lane_key_provider(&h);
    let steal = TransactionRequest::default()
        .with_to(Address::random())
        .with_value(U256::from(1))
        .with_nonce(ours.nonce)
        .with_gas_limit(21_000)
        .with_max_fee_per_gas(ours.max_fee_per_gas * 2)
        .with_max_priority_fee_per_gas(ours.max_priority_fee_per_gas * 2);
    let _ = outside.send_transaction(steal).await.unwrap();
    p.evm_mine(None).await.unwrap();
    p.anvil_set_auto_mine(true).await.unwrap();
    let answer = settle_b.await.unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_ne!(answer["transaction"], ours.tx_hash.to_string());
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(2 * ONE_CENT));
    assert_eq!(h.authorizations_used(a.address()).await, 1);
    assert_eq!(h.authorizations_used(b.address()).await, 1);
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    let stolen = txs.iter().find(|t| t.tx_hash == ours.tx_hash).unwrap();
    assert_eq!(stolen.status, TxStatus::Dropped);
    assert!(metric(&h, "x402d_lane_resyncs_total", "eip155:84532").await >= 1.0);
}

/// A provider signing with the first lane's own key, as an operator's script outside x402d would.
fn lane_key_provider(h: &Harness) -> impl Provider {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(h.gas_key.clone()))
        .connect_http(h.chain.rpc_url().parse().unwrap())
}

fn spawn_settle(h: &Harness, body: &Value) -> tokio::task::JoinHandle<Value> {
    let http = h.http.clone();
    let url = format!("{}/settle", h.url());
    let body = body.clone();
    tokio::spawn(async move {
        http.post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })
}

on_both_backends!(one_poisoned_item_in_a_batch_of_fifty_fails_alone, 4);
async fn one_poisoned_item_in_a_batch_of_fifty_fails_alone(backend: Backend) {
    let Some(h) = harness(backend, 1, "", "").await else {
        return;
    };
    // 48 honest payers, and one who signs two authorizations for its whole balance: each passes
    // simulation alone, the second fails inside the batch.
    let payers = h.funded_payers(48, ONE_CENT).await;
    let greedy = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let mut bodies = h.v2_bodies(&payers, &req);
    bodies.insert(10, h.body(2, &req, &h.sign(&greedy, &req)));
    bodies.insert(30, h.body(2, &req, &h.sign(&greedy, &req)));
    let answers = settle_all(&h, &bodies, 50).await;
    let ok = answers.iter().filter(|(_, a)| a["success"] == true).count();
    assert_eq!(ok, 49, "{answers:?}");
    let failed: Vec<&Value> = answers
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a["success"] != true)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0]["errorReason"], "invalid_exact_evm_insufficient_balance",
        "{}",
        failed[0]
    );
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(49 * ONE_CENT));
    assert_eq!(h.authorizations_used(greedy.address()).await, 1);
}

on_both_backends!(
    a_dry_wallet_hands_its_work_to_the_others_and_all_dry_answers_503,
    4
);
async fn a_dry_wallet_hands_its_work_to_the_others_and_all_dry_answers_503(backend: Backend) {
    let Some(h) = harness(backend, 2, "settle_timeout_seconds = 10", "").await else {
        return;
    };
    let p = h.chain.provider();
    let (a, b) = (h.gas_keys[0].address(), h.gas_keys[1].address());
    p.anvil_set_balance(a, U256::ZERO).await.unwrap();
    let req = h.requirement(ONE_CENT);
    let payers = h.funded_payers(20, ONE_CENT).await;
    let bodies = h.v2_bodies(&payers, &req);
    for (status, answer) in settle_all(&h, &bodies, 20).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["success"], true, "{answer}");
    }
    assert_eq!(
        p.get_transaction_count(a).await.unwrap(),
        0,
        "the dry wallet sent nothing"
    );
    assert!(p.get_transaction_count(b).await.unwrap() > 0);
    // Every wallet dry: a clear 503, and the payment waits in the queue.
    p.anvil_set_balance(b, U256::ZERO).await.unwrap();
    let payer = h.funded_payer(ONE_CENT).await;
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let mut answer = (0, Value::Null);
    for _ in 0..3 {
        answer = h.settle(&body).await;
        if answer.0 == 503 {
            break;
        }
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert_eq!(answer.1["error"], "gas_wallets_dry", "{}", answer.1);
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(20 * ONE_CENT));
    p.anvil_set_balance(a, U256::from(10u128.pow(19)))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let (status, a) = h.settle(&body).await;
        if a["success"] == true {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status} {a}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(21 * ONE_CENT));
    let used: HashSet<Address> = h
        .ledger()
        .transactions(CHAIN_ID)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.status == TxStatus::Mined)
        .map(|t| t.wallet)
        .collect();
    assert!(
        used.contains(&a),
        "the funded wallet took the waiting payment"
    );
}

on_both_backends!(a_spent_daily_gas_budget_holds_payments_visibly, 4);
async fn a_spent_daily_gas_budget_holds_payments_visibly(backend: Backend) {
    // The harness starts no server of its own: this test runs the only one, with a budget.
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        settlement: "settle_timeout_seconds = 2".into(),
        in_process: false,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    // One wei of budget: the first transaction spends it, nothing more may be sent.
    let rpc_line = format!("rpc_urls = [\"{}\"]", h.chain.rpc_url());
    let text = h
        .config_text
        .replace(&rpc_line, &format!("{rpc_line}\ndaily_gas_budget_wei = 1"));
    assert_ne!(text, h.config_text);
    let config = x402d::config::Config::from_toml(&text, &h.config_env()).unwrap();
    let server = x402d::http::server::RunningServer::start(&config)
        .await
        .unwrap();
    let url = server.url();
    let req = h.requirement(ONE_CENT);
    let post = |body: Value| {
        let (http, url) = (h.http.clone(), url.clone());
        async move {
            http.post(format!("{url}/settle"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let first = h.funded_payer(ONE_CENT).await;
    let a = post(h.body(2, &req, &h.sign(&first, &req))).await;
    assert_eq!(a["success"], true, "{a}");
    let second = h.funded_payer(ONE_CENT).await;
    let b = post(h.body(2, &req, &h.sign(&second, &req))).await;
    assert_eq!(b["errorReason"], "settlement_pending", "{b}");
    assert_eq!(b["transaction"], "", "nothing sent over the budget: {b}");
    let status: Value = h
        .http
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let waiting = status["settlement"][0]["waiting"]
        .as_str()
        .unwrap_or_default();
    assert!(waiting.contains("daily gas budget"), "{status}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(ONE_CENT));
    assert_eq!(
        server
            .facilitator
            .ledger()
            .transactions(CHAIN_ID)
            .await
            .unwrap()
            .len(),
        1
    );
}
