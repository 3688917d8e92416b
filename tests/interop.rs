//! Interop: the official x402 SDKs (npm, pinned by `tests/interop/package-lock.json`) against x402d
//! on anvil. Each case runs one script of `tests/interop/` with the harness's environment and
//! asserts money on chain (the payee's balance, `AuthorizationUsed` logs), not only the status.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::signers::local::PrivateKeySigner;
use common::*;
use serde_json::{Value, json};

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// `npm ci` once per run; `Err` when node/npm are missing (a failure under `CI=true`).
fn installed() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(interop_dir())
            .output()
            .map_err(|e| format!("npm is required for the interop suite: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "npm ci failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .clone()
}

/// Whether to run: node present, or a failure under CI.
fn ready() -> bool {
    match installed() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("{e}"),
        Err(e) => {
            eprintln!("skipping (not CI): {e}");
            false
        }
    }
}

async fn harness(settlement: &str) -> Harness {
    Harness::start_with(HarnessOptions {
        dial: Some("mcp_allowed_hosts = [\"127.0.0.1\"]".into()),
        settlement: settlement.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Runs `script` for `payer`; returns its `RESULT` object (panics with its output if it failed).
async fn run(h: &Harness, script: &str, payer: &PrivateKeySigner) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("env.json");
    let env = json!({
        "rpc_url": h.chain.rpc_url(),
        "chain_id": CHAIN_ID,
        "network": format!("eip155:{CHAIN_ID}"),
        "usdc": h.chain.usdc.to_string(),
        "facilitator_url": h.url(),
        "merchant_url": h.url(),
        "pay_to": h.pay_to.to_string(),
        "payer_keys": [format!("0x{}", alloy::hex::encode(payer.to_bytes()))],
    });
    std::fs::write(&env_path, env.to_string()).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new("node")
            .arg(script)
            .current_dir(interop_dir())
            .env("X402D_ENV", &env_path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finished within 150 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|r| serde_json::from_str::<Value>(r).ok());
    match result {
        Some(r) if out.status.success() && r["ok"] == true => r,
        _ => panic!("{script} failed ({}):\n{stdout}\n{stderr}", out.status),
    }
}

/// The express app's price in the scripts: $0.01.
const ROUTE_PRICE: u64 = 10_000;

#[tokio::test]
async fn v2_express_middleware_and_v2_fetch_pay_through_x402d() {
    if !ready() {
        return;
    }
    let h = harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let r = run(&h, "v2-express.mjs", &payer).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["paymentResponse"]["success"], true, "{r}");
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(ROUTE_PRICE)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
}

#[tokio::test]
async fn v1_x402_express_and_x402_fetch_pay_through_x402d() {
    if !ready() {
        return;
    }
    let h = harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let r = run(&h, "v1-express.mjs", &payer).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["paymentResponse"]["success"], true, "{r}");
    assert_eq!(r["paymentResponse"]["network"], "base-sepolia", "{r}");
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(ROUTE_PRICE)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
}

#[tokio::test]
async fn the_v2_client_pays_dials_own_routes() {
    if !ready() {
        return;
    }
    let h = harness("").await;
    let payer = h.funded_payer(200_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let r = run(&h, "v2-dial.mjs", &payer).await;
    for case in ["sms", "number_us"] {
        assert_eq!(r["results"][case]["status"], 200, "{r}");
        assert_eq!(r["results"][case]["paymentResponse"]["success"], true);
    }
    // $0.05 for the SMS, $100 for the number.
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(50_000u64 + 100_000_000)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 2);
}

/// Mining paused past x402d's settle wait: `/settle` answers `settlement_pending` with the hash,
/// the official server asks once more, mining resumes, and the payment lands once.
#[tokio::test]
async fn the_official_server_retries_settlement_pending() {
    if !ready() {
        return;
    }
    let h = harness("settle_timeout_seconds = 3").await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    // Resume once the settlement has waited its 3 s in the pool: the first /settle has then
    // answered settlement_pending, and the server's one retry is waiting.
    let resume = {
        let provider = h.chain.provider().clone();
        tokio::spawn(async move {
            loop {
                let status: Value = provider
                    .raw_request("txpool_status".into(), ())
                    .await
                    .unwrap();
                if status["pending"].as_str().is_some_and(|p| p != "0x0")
                    || status["pending"].as_u64().is_some_and(|p| p > 0)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(3500)).await;
            provider.anvil_set_auto_mine(true).await.unwrap();
            provider.anvil_mine(Some(1), None).await.unwrap();
        })
    };
    let r = run(&h, "v2-pending.mjs", &payer).await;
    resume.await.unwrap();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["settleCalls"], 2, "{r}");
    assert_eq!(r["firstSettle"]["errorReason"], "settlement_pending", "{r}");
    assert_eq!(r["paymentResponse"]["success"], true, "{r}");
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(ROUTE_PRICE)
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
}

/// The official TypeScript MCP SDK lists Dial's tools and pays `send_sms` through `/mcp`.
#[tokio::test]
async fn the_mcp_sdk_lists_and_pays_dials_tools() {
    if !ready() {
        return;
    }
    let h = harness("").await;
    let payer = h.funded_payer(1_000_000).await;
    let before = h.usdc_balance(h.pay_to).await;
    let r = run(&h, "mcp-dial.mjs", &payer).await;
    assert_eq!(
        h.usdc_balance(h.pay_to).await - before,
        U256::from(50_000u64),
        "{r}"
    );
    assert_eq!(h.authorizations_used(payer.address()).await, 1);
}
