//! Retention: what a long-running ledger may forget. A payment row is pruned only when nothing
//! can ever happen to it again: its state is one no transition leaves (`final`, `failed`,
//! `lost`, or `refused` with its authorization expired), its authorization expired more than
//! [`EXPIRY_MARGIN_S`] ago (so the chain refuses it, and so do `/verify` and `/settle`, before the
//! ledger is asked), and it was last touched before the cut-off. Its events, the batches and
//! transactions left with no payment, and old payment identifiers go with it.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::rows::{PAYMENT_COLUMNS, i64_of, payment_of};
use super::{Ledger, LedgerError, Payment, now_ms};

/// The shortest retention accepted: longer than the rolling day of a key's budget and the gas
/// budget, which read recent rows.
pub const MIN_RETENTION: Duration = Duration::from_secs(2 * 86_400);

/// How long past its `validBefore` an authorization must be before its row may go: room for a
/// node's clock running behind the chain's.
pub const EXPIRY_MARGIN_S: u64 = 3_600;

/// Rows removed in one transaction: short enough that claims (SQLite's one writer) wait
/// milliseconds, not seconds, between chunks.
const CHUNK: usize = 2_000;

/// The states a pruned payment may be in. `refused` rows qualify only because their
/// authorization has expired: a refused key may otherwise be submitted again.
const PRUNABLE: &str = "('final','failed','lost','refused')";

/// Transaction statuses no step changes any more.
const SETTLED_TX: &str = "('mined','reverted','dropped','replaced','reorged')";

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub payments: u64,
    pub events: u64,
    pub transactions: u64,
    pub batches: u64,
    pub identifiers: u64,
}

/// Writes each payment about to be pruned, as one JSON line, before it is deleted.
pub trait Archive: Send {
    fn keep(&mut self, payment: &Payment) -> std::io::Result<()>;
    /// Called before the kept payments are deleted: they must be durable by then.
    fn flush_kept(&mut self) -> std::io::Result<()>;
}

impl<W: std::io::Write + Send> Archive for W {
    fn keep(&mut self, p: &Payment) -> std::io::Result<()> {
        // The request is stored as the client sent it: kept as JSON when it is JSON.
        let request = serde_json::from_str::<serde_json::Value>(&p.request_json)
            .unwrap_or_else(|_| serde_json::Value::String(p.request_json.clone()));
        let line = serde_json::json!({
            "id": p.id,
            "chainId": p.chain_id,
            "asset": p.asset,
            "payer": p.payer,
            "nonce": p.nonce,
            "payTo": p.pay_to,
            "amount": p.amount.to_string(),
            "validBefore": p.valid_before,
            "payloadDigest": p.payload_digest,
            "method": p.method.as_str(),
            "state": p.state.as_str(),
            "failReason": p.fail_reason,
            "txHash": p.tx_hash,
            "blockNumber": p.block_number,
            "createdAt": p.created_at,
            "request": request,
        });
        serde_json::to_writer(&mut *self, &line)?;
        self.write_all(b"\n")
    }

    fn flush_kept(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Ledger {
    /// Removes what is older than `keep` and can never be needed again (see the module), in
    /// chunks, handing each payment to `archive` first. `keep` below [`MIN_RETENTION`] is raised
    /// to it.
    pub async fn prune(
        &self,
        keep: Duration,
        mut archive: Option<&mut dyn Archive>,
    ) -> Result<PruneReport, LedgerError> {
        let keep = keep.max(MIN_RETENTION);
        let cutoff_ms =
            now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let expired_before =
            i64_of((u64::try_from(now_ms() / 1000).unwrap_or(0)).saturating_sub(EXPIRY_MARGIN_S));
        let mut report = PruneReport::default();
        let condition = format!("valid_before < $1 AND updated_at < $2 AND state IN {PRUNABLE}");
        loop {
            // Oldest authorizations first, through the expiry index.
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE {condition} ORDER BY valid_before LIMIT {CHUNK}"
            )))
            .bind(expired_before)
            .bind(cutoff_ms)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let payments = rows.iter().map(payment_of).collect::<Result<Vec<_>, _>>()?;
            if let Some(archive) = archive.as_deref_mut() {
                let kept = payments
                    .iter()
                    .try_for_each(|p| archive.keep(p))
                    .and_then(|()| archive.flush_kept());
                kept.map_err(|e| LedgerError::Shared(format!("archive: {e}")))?;
            }
            let ids = payments
                .iter()
                .map(|p| p.id.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut tx = self.pool.begin().await?;
            // The condition again: a row that changed since it was read stays.
            let deleted = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM payments WHERE id IN ({ids}) AND {condition}"
            )))
            .bind(expired_before)
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let events = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM payment_events WHERE payment_id IN ({ids}) \
                 AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.id = payment_events.payment_id)"
            )))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            report.payments += deleted;
            report.events += events;
            if payments.len() < CHUNK {
                break;
            }
        }
        // Transactions whose batch no longer has a payment (all pruned, or requeued elsewhere by
        // a reorg), then the emptied batches.
        report.transactions = self
            .delete_in_chunks(
                "transactions",
                &["id"],
                &format!(
                    "status IN {SETTLED_TX} AND updated_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM payments p WHERE p.batch_id = transactions.batch_id)"
                ),
                cutoff_ms,
            )
            .await?;
        report.batches = self
            .delete_in_chunks(
                "batches",
                &["id"],
                "updated_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.batch_id = batches.id) \
                 AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.batch_id = batches.id)",
                cutoff_ms,
            )
            .await?;
        report.identifiers = self
            .delete_in_chunks(
                "payment_identifiers",
                &["scope", "id"],
                "created_at < $1",
                cutoff_ms,
            )
            .await?;
        Ok(report)
    }

    /// Deletes the rows of `table` matching `condition` (with `$1` = `arg`), named by the
    /// columns of its primary `key`, [`CHUNK`] at a time.
    async fn delete_in_chunks(
        &self,
        table: &str,
        key: &[&str],
        condition: &str,
        arg: i64,
    ) -> Result<u64, LedgerError> {
        let columns = key.join(", ");
        let key = if key.len() == 1 {
            columns.clone()
        } else {
            format!("({columns})")
        };
        let mut total = 0;
        loop {
            let n = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {key} IN \
                 (SELECT {columns} FROM {table} WHERE {condition} LIMIT {CHUNK})"
            )))
            .bind(arg)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Prunes past `keep` once an hour (and once now) for as long as the returned task lives.
    pub fn keep_for(&self, keep: Duration) -> RetentionTask {
        let ledger = self.clone();
        RetentionTask(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3_600));
            loop {
                every.tick().await;
                match ledger.prune(keep, None).await {
                    Ok(r) if r == PruneReport::default() => {}
                    Ok(r) => tracing::info!(
                        payments = r.payments,
                        events = r.events,
                        transactions = r.transactions,
                        batches = r.batches,
                        identifiers = r.identifiers,
                        "ledger retention pruned old rows"
                    ),
                    // Another node may be pruning the same rows; the next pass finishes.
                    Err(e) => tracing::warn!(error = %e, "ledger retention pass failed"),
                }
            }
        }))
    }
}

/// The hourly pruning of [`Ledger::keep_for`]; stops when dropped.
#[derive(Debug)]
pub struct RetentionTask(tokio::task::JoinHandle<()>);

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
