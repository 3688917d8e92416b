//! Retention on a real anvil, on SQLite and on PostgreSQL: a ledger holding months of settled
//! payments (the bench's synthetic history) prunes exactly the rows that can never be needed
//! again, archives each before deleting it, and keeps settling (and answering a repeat of a
//! recent payment with its transaction) afterwards.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use alloy::primitives::U256;
use common::*;
use serde_json::Value;
use x402d::ledger::{MIN_RETENTION, PruneReport};

const HISTORY: u64 = 1_000;

async fn exec(pool: &sqlx::AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

on_both_backends!(old_history_is_pruned_and_archived_and_nothing_still_needed_goes);
async fn old_history_is_pruned_and_archived_and_nothing_still_needed_goes(backend: Backend) {
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let ledger = h.ledger();
    // Months of history, all settled and expired, before any real payment.
    let mut reported = Vec::new();
    ledger
        .fill_synthetic_history(HISTORY, CHAIN_ID, h.chain.usdc, h.pay_to, |n| {
            reported.push(n)
        })
        .await
        .unwrap();
    assert_eq!(reported.last(), Some(&HISTORY));
    assert!(
        ledger
            .fill_synthetic_history(1, CHAIN_ID, h.chain.usdc, h.pay_to, |_| {})
            .await
            .is_err(),
        "synthetic history goes into an empty ledger only"
    );

    // A real payment settles on top of it (PostgreSQL's sequences were moved past the history).
    let payer = h.funded_payer(ONE_CENT * 5).await;
    let req = h.requirement(ONE_CENT);
    let body = h.body(2, &req, &h.sign(&payer, &req));
    let (status, first) = h.settle(&body).await;
    assert_eq!(
        (status, &first["success"]),
        (200, &Value::Bool(true)),
        "{first}"
    );

    // Rows the policy must keep, made from old history rows.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&h.ledger_url).await.unwrap();
    let now = now();
    let now_ms = now * 1000;
    exec(
        &pool,
        "UPDATE payments SET state = 'confirmed' WHERE id = 10",
    )
    .await; // still watched
    exec(
        &pool,
        "UPDATE payments SET state = 'in_batch' WHERE id = 11",
    )
    .await; // in flight
    exec(&pool, "UPDATE payments SET state = 'queued' WHERE id = 12").await; // waiting
    let unexpired = format!(
        "UPDATE payments SET valid_before = {} WHERE id = 20",
        now + 3_600
    );
    exec(&pool, &unexpired).await; // could still be submitted
    let just_expired = format!(
        "UPDATE payments SET valid_before = {} WHERE id = 21",
        now - 600
    );
    exec(&pool, &just_expired).await; // inside the clock margin
    exec(
        &pool,
        &format!("UPDATE payments SET updated_at = {now_ms} WHERE id = 30"),
    )
    .await; // recent
    let kept: BTreeSet<i64> = [10, 11, 12, 20, 21, 30].into();
    // Payment identifiers: one old, one recent.
    let old_id = now_ms - 30 * 86_400_000;
    exec(
        &pool,
        &format!(
            "INSERT INTO payment_identifiers (scope, id, payload_digest, created_at) VALUES \
             ('m', 'old', '0x00', {old_id}), ('m', 'new', '0x00', {now_ms})"
        ),
    )
    .await;
    let events_before = count(&pool, "SELECT COUNT(*) FROM payment_events").await;

    let mut archive: Vec<u8> = Vec::new();
    let report = ledger
        .prune(MIN_RETENTION, Some(&mut archive))
        .await
        .unwrap();
    let pruned = HISTORY - kept.len() as u64;
    // Every synthetic batch of 60 but the first (which holds every kept row) went, with its
    // transaction; the real payment's batch is recent.
    let emptied_batches = HISTORY / 60;
    assert_eq!(
        report,
        PruneReport {
            payments: pruned,
            events: pruned * 6,
            transactions: emptied_batches,
            batches: emptied_batches,
            identifiers: 1,
        }
    );
    let archived: Vec<Value> = std::str::from_utf8(&archive)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        archived.len() as u64,
        pruned,
        "each pruned payment archived"
    );
    let archived_ids: BTreeSet<i64> = archived.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(archived_ids.is_disjoint(&kept));
    assert!(
        archived
            .iter()
            .all(|a| a["state"] == "final" || a["state"] == "refused")
    );
    assert!(
        archived
            .iter()
            .all(|a| a["request"]["synthetic"].is_string())
    );

    let left: BTreeSet<i64> = {
        use sqlx::Row;
        sqlx::query("SELECT id FROM payments ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>("id").unwrap())
            .collect()
    };
    let real_id = *left.iter().next_back().unwrap();
    assert!(
        real_id > HISTORY as i64,
        "the real payment follows the history"
    );
    assert_eq!(left, kept.iter().copied().chain([real_id]).collect());
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM payment_events").await,
        events_before - (pruned * 6) as i64,
    );
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM payment_identifiers").await,
        1
    );

    // A second pass has nothing left to do.
    let again = ledger.prune(Duration::ZERO, None).await.unwrap();
    assert_eq!(
        again,
        PruneReport::default(),
        "below the minimum: two days kept"
    );

    // The recent payment still answers a repeat with its transaction, and a new one settles.
    let (_, repeat) = h.settle(&body).await;
    assert_eq!(repeat["transaction"], first["transaction"], "{repeat}");
    let other = h.body(2, &req, &h.sign(&payer, &req));
    let (_, second) = h.settle(&other).await;
    assert_eq!(second["success"], Value::Bool(true), "{second}");
    assert_eq!(h.authorizations_used(payer.address()).await, 2);
    assert_eq!(
        h.usdc_balance(payer.address()).await,
        U256::from(ONE_CENT * 3),
        "debited once per payment"
    );
}

/// `x402d prune` with the node's config: refuses to keep less than two days, and prunes and
/// archives what the library call would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prune_command_archives_then_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    // Filled by the bench's own command, as an operator measuring a months-old ledger would.
    let fill = std::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["bench", "history", "--ledger-url", &url, "--rows", "250"])
        .output()
        .unwrap();
    assert!(
        fill.status.success(),
        "{}",
        String::from_utf8_lossy(&fill.stderr)
    );
    assert!(String::from_utf8_lossy(&fill.stderr).contains("250/250 payments"));
    let config = dir.path().join("x402d.toml");
    std::fs::write(
        &config,
        format!("[server]\npublic = true\n[ledger]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let archive = dir.path().join("archive.jsonl");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
            .arg("prune")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let short = run(&["--older-than-days", "1"]);
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 2"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let done = run(&[
        "--older-than-days",
        "2",
        "--archive",
        archive.to_str().unwrap(),
    ]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(report["payments"], 250, "{report}");
    assert_eq!(report["events"], 250 * 6, "{report}");
    let lines = std::fs::read_to_string(&archive).unwrap();
    assert_eq!(lines.lines().count(), 250);
    let ledger = x402d::ledger::Ledger::connect(&url).await.unwrap();
    assert!(ledger.count_by_state().await.unwrap().is_empty());
}
