//! kill -9 of the x402d process mid-settlement, on SQLite and PostgreSQL: after a restart every
//! accepted payment reaches `confirmed` exactly once.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::primitives::U256;
use alloy::providers::ext::AnvilApi;
use common::*;
use futures::future::join_all;
use serde_json::Value;
use x402d::ledger::{Ledger, TxStatus};

macro_rules! on_both_backends {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(Backend::Postgres).await
            }
        }
    };
}

/// x402d running as its own process.
struct Service {
    child: Child,
    url: String,
    _config: tempfile::NamedTempFile,
}

impl Service {
    async fn start(h: &Harness, settlement: &str) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = h
            .config_text
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace("[settlement]", &format!("[settlement]\n{settlement}"));
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_x402d"))
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .envs(h.config_env())
            .env("X402D_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if reqwest::get(format!("{url}/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Service {
                    child,
                    url,
                    _config: config,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("x402d did not come up");
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crash.
    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    async fn settle(&self, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/settle", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// A failing assertion must not leave an x402d process behind holding the anvil chain.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn harness(backend: Backend) -> Option<Harness> {
    Harness::start_with(HarnessOptions {
        backend,
        in_process: false,
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

on_both_backends!(killed_between_broadcast_and_receipt);
async fn killed_between_broadcast_and_receipt(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();

    let service = Service::start(&h, "settle_timeout_seconds = 2").await;
    let pending = join_all(bodies.iter().map(|b| service.settle(b))).await;
    let hash = pending[0]["transaction"].as_str().unwrap().to_owned();
    for a in &pending {
        assert_eq!(a["errorReason"], "settlement_pending", "{a}");
        assert_eq!(a["transaction"], hash.as_str(), "one batch");
    }
    service.kill_9();
    // The node forgets the transaction too: only the ledger's raw copy can bring it back.
    h.chain
        .provider()
        .anvil_drop_all_transactions()
        .await
        .unwrap();
    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();

    let service = Service::start(&h, "settle_timeout_seconds = 10").await;
    let done = join_all(bodies.iter().map(|b| service.settle(b))).await;
    for a in &done {
        assert_eq!(a["success"], true, "{a}");
        assert_eq!(
            a["transaction"],
            hash.as_str(),
            "the stored transaction was rebroadcast"
        );
    }
    service.kill_9();
    assert_eq!(assert_settled_exactly_once(&h, &payers).await, 1);
}

on_both_backends!(killed_between_claim_and_broadcast);
async fn killed_between_claim_and_broadcast(backend: Backend) {
    let Some(h) = harness(backend).await else {
        return;
    };
    let payers = h.funded_payers(5, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();

    // A long batch window holds the claimed payments before any transaction exists.
    let service = Service::start(&h, "settle_timeout_seconds = 1\nbatch_window_ms = 8000").await;
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
    assert_eq!(assert_settled_exactly_once(&h, &payers).await, 1);
}
