//! The settlement engine's reads and writes: the queue, batches and their transactions, and the
//! one compare-and-set [`Ledger::transition`] every payment state change goes through.

use alloy::primitives::{Address, B256};
use sqlx::{AssertSqlSafe, Row};

use super::rows::{
    PAYMENT_COLUMNS, TX_COLUMNS, hex, i64_of, opt_u64_of, payment_of, transaction_of, u64_of,
};
use super::{
    Fence, Ledger, LedgerError, MinedTx, NewPayment, NewTransaction, Payment, Transaction,
    Transition, TxStatus, now_ms,
};
use crate::storage::placeholders;

/// A value bound into a statement built at run time.
enum Bind {
    Text(String),
    Int(i64),
    Null,
}

/// Where settled payments still inside the finality window were mined (one per transaction).
#[derive(Debug, Clone)]
pub struct SettledBlock {
    pub tx_hash: Option<B256>,
    pub block_number: u64,
    pub block_hash: Option<B256>,
}

/// Who takes queued payments from a shared ledger, and for how long the claim holds (a node
/// that dies with a claim delays those payments by at most this). A claim only saves work: the
/// batch's record refuses payments no longer queued, so a lapsed claim is never a double charge.
#[derive(Debug, Clone, Copy)]
pub struct QueueClaim<'a> {
    pub node: &'a str,
    pub ttl: std::time::Duration,
}

impl Ledger {
    /// Applies `t` to those of `ids` that are in one of its source states, recording a history event
    /// for each; returns the ids that moved. A payment in any other state is left alone (someone
    /// else moved it first), which is what makes concurrent deciders safe.
    pub async fn transition(&self, ids: &[i64], t: &Transition) -> Result<Vec<i64>, LedgerError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let moved = apply(&mut tx, ids, t).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Oldest queued payments of a chain that are due (not deferred), skipping `exclude`; on a
    /// shared (PostgreSQL) ledger also claimed for `claim` so that no other node batches them.
    pub async fn queued_due(
        &self,
        chain_id: u64,
        limit: usize,
        exclude: &std::collections::HashSet<i64>,
        claim: &QueueClaim<'_>,
    ) -> Result<Vec<Payment>, LedgerError> {
        let now = now_ms();
        let fetch = i64::try_from(limit + exclude.len()).unwrap_or(i64::MAX);
        let rows = if self.sqlite {
            // One node per SQLite file: nobody else reads this queue.
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE chain_id = $1 AND state = 'queued' AND not_before <= $2 \
                 ORDER BY id LIMIT $3"
            )))
            .bind(i64_of(chain_id))
            .bind(now)
            .bind(fetch)
            .fetch_all(&self.pool)
            .await?
        } else {
            // Shared queue: take only what no other node holds a live claim on, skipping rows
            // another node is claiming this instant, and claim them (ours again included).
            let mut rows = sqlx::query(AssertSqlSafe(format!(
                "UPDATE payments SET claimed_by = $4, claim_until = $5 WHERE id IN \
                 (SELECT id FROM payments WHERE chain_id = $1 AND state = 'queued' AND not_before <= $2 \
                 AND (claim_until <= $2 OR claimed_by = $4) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING {PAYMENT_COLUMNS}"
            )))
            .bind(i64_of(chain_id))
            .bind(now)
            .bind(fetch)
            .bind(claim.node)
            .bind(now.saturating_add(i64::try_from(claim.ttl.as_millis()).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await?;
            // RETURNING keeps no order; the queue is first come, first served.
            rows.sort_by_cached_key(|r| r.try_get::<i64, _>("id").unwrap_or(i64::MAX));
            rows
        };
        let mut out = Vec::with_capacity(limit);
        for row in &rows {
            let p = payment_of(row)?;
            if !exclude.contains(&p.id) {
                out.push(p);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Gives up `node`'s claims on `ids` (a batch it took but did not send), so that any node
    /// may take them at once instead of when the claims lapse.
    pub async fn release_claims(&self, ids: &[i64], node: &str) -> Result<(), LedgerError> {
        if self.sqlite || ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE payments SET claim_until = 0 WHERE claimed_by = $1 AND id IN ({})",
            placeholders(2, ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(node);
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// When the next deferred payment of a chain becomes due (ms), if any is waiting.
    pub async fn next_due(&self, chain_id: u64) -> Result<Option<i64>, LedgerError> {
        let row = sqlx::query(
            "SELECT MIN(not_before) AS t FROM payments WHERE chain_id = $1 AND state = 'queued'",
        )
        .bind(i64_of(chain_id))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    /// Payments of a batch.
    pub async fn batch_payments(&self, batch_id: i64) -> Result<Vec<Payment>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE batch_id = $1 ORDER BY id"
        )))
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// Payments still `in_batch` although no transaction of their batch is open (a crash between
    /// a transaction's end and its payments' next step): they belong back in the queue.
    pub async fn stranded_in_batch(&self, chain_id: u64) -> Result<Vec<Payment>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments p WHERE chain_id = $1 AND state = 'in_batch' AND NOT EXISTS \
             (SELECT 1 FROM transactions t WHERE t.batch_id = p.batch_id AND t.status IN ('signed','broadcast'))"
        )))
        .bind(i64_of(chain_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// Payments settled by a transaction (by hash).
    pub async fn payments_of_tx(&self, tx_hash: B256) -> Result<Vec<Payment>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tx_hash = $1 ORDER BY id"
        )))
        .bind(hex(tx_hash.as_slice()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// A refused payment's key taken by a new submission: it goes back to the queue with the new
    /// payload. `false` when it was no longer refused (another submission won).
    pub async fn reclaim(&self, id: i64, p: &NewPayment) -> Result<bool, LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE payments SET state = 'queued', pay_to = $2, amount = $3, valid_before = $4, payload_digest = $5, \
             x402_version = $6, network = $7, request_json = $8, deploy_target = $9, deploy_calldata = $10, \
             transfer_calldata = $11, api_key = $13, method = $14, call_target = $15, sender = $16, fail_reason = NULL, fail_message = NULL, batch_id = NULL, tx_hash = NULL, \
             block_number = NULL, block_hash = NULL, not_before = 0, attempts = 0, updated_at = $12 \
             WHERE id = $1 AND state = 'refused'",
        )
        .bind(id)
        .bind(hex(p.pay_to.as_slice()))
        .bind(p.amount.to_string())
        .bind(i64_of(p.valid_before))
        .bind(hex(p.payload_digest.as_slice()))
        .bind(i64::from(p.x402_version))
        .bind(&p.network)
        .bind(&p.request_json)
        .bind(p.deploy.as_ref().map(|d| hex(d.factory.as_slice())))
        .bind(p.deploy.as_ref().map(|d| hex(&d.calldata)))
        .bind(hex(&p.transfer_calldata))
        .bind(now)
        .bind(p.api_key.as_deref())
        .bind(p.method.as_str())
        .bind(hex(p.call_target.as_slice()))
        .bind(p.sender.map(|a| hex(a.as_slice())))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            event(
                &mut tx,
                id,
                "queued",
                Some("submitted again after a refusal"),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Records a batch and its first signed transaction, and moves its payments to `in_batch`, in
    /// one database transaction, before anything is broadcast. Fails (and writes nothing) unless
    /// every item was still queued and `fence` is still the lane's.
    pub async fn record_batch(
        &self,
        items: &[i64],
        t: &NewTransaction,
        fence: &Fence,
    ) -> Result<(i64, i64), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        fence.check(&mut tx).await?;
        let batch_id: i64 = sqlx::query(
            "INSERT INTO batches (chain_id, item_count, state, created_at, updated_at) VALUES ($1,$2,'open',$3,$3) RETURNING id",
        )
        .bind(i64_of(t.chain_id))
        .bind(i64::try_from(items.len()).unwrap_or(i64::MAX))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let tx_id = insert_tx(&mut tx, batch_id, t, now).await?;
        let moved = apply(
            &mut tx,
            items,
            &Transition::Batched {
                batch_id,
                tx_hash: t.tx_hash,
            },
        )
        .await?;
        if moved.len() != items.len() {
            return Err(LedgerError::Corrupt(format!(
                "{} of {} batch items were no longer queued",
                items.len() - moved.len(),
                items.len()
            )));
        }
        tx.commit().await?;
        Ok((batch_id, tx_id))
    }

    /// Records another signed attempt for a batch (a replacement at the same nonce, or the batch
    /// signed again at a fresh nonce), before it is broadcast. `supersede` attempts become
    /// `replaced` (they can no longer be mined at their nonce, or must not be waited on). Only
    /// under the lane's current `fence`.
    pub async fn record_attempt(
        &self,
        batch_id: i64,
        t: &NewTransaction,
        supersede: &[i64],
        fence: &Fence,
    ) -> Result<i64, LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        fence.check(&mut tx).await?;
        let tx_id = insert_tx(&mut tx, batch_id, t, now).await?;
        for id in supersede {
            set_status(&mut tx, *id, TxStatus::Replaced, now).await?;
        }
        let ids: Vec<i64> =
            sqlx::query("SELECT id FROM payments WHERE batch_id = $1 AND state = 'in_batch'")
                .bind(batch_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<_, _>>()?;
        apply(&mut tx, &ids, &Transition::Resigned { tx_hash: t.tx_hash }).await?;
        tx.commit().await?;
        Ok(tx_id)
    }

    pub async fn set_tx_status(&self, tx_id: i64, status: TxStatus) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        set_status(&mut tx, tx_id, status, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a mined transaction, its batch's other open attempts as replaced, and which of the
    /// batch's payments it settled (`included`, or `confirmed` at once).
    pub async fn record_mined(
        &self,
        tx_id: i64,
        batch_id: i64,
        mined: &MinedTx,
        settled: &[i64],
        confirmed: bool,
    ) -> Result<Vec<i64>, LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let status = if mined.succeeded {
            TxStatus::Mined
        } else {
            TxStatus::Reverted
        };
        let hash: String = sqlx::query(
            "UPDATE transactions SET status = $2, gas_used = $3, effective_gas_price = $4, block_number = $5, \
             block_hash = $6, l1_fee = $7, updated_at = $8 WHERE id = $1 RETURNING tx_hash",
        )
        .bind(tx_id)
        .bind(status.as_str())
        .bind(i64_of(mined.gas_used))
        .bind(mined.effective_gas_price.to_string())
        .bind(i64_of(mined.block_number))
        .bind(hex(mined.block_hash.as_slice()))
        .bind(mined.l1_fee.map(|f| f.to_string()))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("tx_hash")?;
        sqlx::query(
            "UPDATE transactions SET status = 'replaced', updated_at = $3 WHERE batch_id = $1 AND id <> $2 \
             AND status IN ('signed','broadcast')",
        )
        .bind(batch_id)
        .bind(tx_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET state = 'mined', updated_at = $2 WHERE id = $1")
            .bind(batch_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let tx_hash: B256 = hash
            .parse()
            .map_err(|_| LedgerError::Corrupt(format!("tx hash {hash:?}")))?;
        let moved = apply(
            &mut tx,
            settled,
            &Transition::Included {
                at: super::Inclusion {
                    tx_hash,
                    block_number: mined.block_number,
                    block_hash: mined.block_hash,
                },
                confirmed,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Transactions of a chain not yet known to be mined, dropped or replaced, by nonce.
    pub async fn open_transactions(&self, chain_id: u64) -> Result<Vec<Transaction>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TX_COLUMNS} FROM transactions WHERE chain_id = $1 AND status IN ('signed','broadcast') ORDER BY nonce, id"
        )))
        .bind(i64_of(chain_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(transaction_of).collect()
    }

    /// All transactions of a chain, oldest first (for tests and the operator page).
    pub async fn transactions(&self, chain_id: u64) -> Result<Vec<Transaction>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TX_COLUMNS} FROM transactions WHERE chain_id = $1 ORDER BY id"
        )))
        .bind(i64_of(chain_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(transaction_of).collect()
    }

    /// The transaction with this hash.
    pub async fn transaction_by_hash(
        &self,
        hash: B256,
    ) -> Result<Option<Transaction>, LedgerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TX_COLUMNS} FROM transactions WHERE tx_hash = $1"
        )))
        .bind(hex(hash.as_slice()))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(transaction_of).transpose()
    }

    /// The highest nonce a wallet's mined or open transactions used on a chain.
    pub async fn last_nonce(
        &self,
        chain_id: u64,
        wallet: Address,
    ) -> Result<Option<u64>, LedgerError> {
        let row = sqlx::query(
            "SELECT MAX(nonce) AS n FROM transactions WHERE chain_id = $1 AND wallet = $2 \
             AND status IN ('signed','broadcast','mined','reverted')",
        )
        .bind(i64_of(chain_id))
        .bind(hex(wallet.as_slice()))
        .fetch_one(&self.pool)
        .await?;
        opt_u64_of(&row, "n")
    }

    /// Where a chain's `included` and `confirmed` payments were mined, one row per transaction:
    /// the finality window's watch list.
    pub async fn settled_blocks(&self, chain_id: u64) -> Result<Vec<SettledBlock>, LedgerError> {
        let rows = sqlx::query(
            "SELECT tx_hash, block_number, block_hash FROM payments WHERE chain_id = $1 \
             AND state IN ('included','confirmed') AND block_number IS NOT NULL \
             GROUP BY tx_hash, block_number, block_hash ORDER BY block_number",
        )
        .bind(i64_of(chain_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let hash = |c: &str| -> Result<Option<B256>, LedgerError> {
                    let s: Option<String> = r.try_get(c)?;
                    s.map(|s| {
                        s.parse()
                            .map_err(|_| LedgerError::Corrupt(format!("{c} {s:?}")))
                    })
                    .transpose()
                };
                Ok(SettledBlock {
                    tx_hash: hash("tx_hash")?,
                    block_number: u64_of(r, "block_number")?,
                    block_hash: hash("block_hash")?,
                })
            })
            .collect()
    }

    /// Ids of a chain's payments in `state` mined at or below `max_block`.
    pub async fn mined_up_to(
        &self,
        chain_id: u64,
        state: super::PaymentState,
        max_block: u64,
    ) -> Result<Vec<i64>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id FROM payments WHERE chain_id = $1 AND state = $2 AND block_number <= $3",
        )
        .bind(i64_of(chain_id))
        .bind(state.as_str())
        .bind(i64_of(max_block))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Wei spent by a chain's settlement transactions mined since `since_ms` (gas × price + L1 fee).
    pub async fn spent_since(
        &self,
        chain_id: u64,
        since_ms: i64,
    ) -> Result<alloy::primitives::U256, LedgerError> {
        let rows = sqlx::query(
            "SELECT gas_used, effective_gas_price, l1_fee FROM transactions WHERE chain_id = $1 \
             AND status IN ('mined','reverted','reorged') AND updated_at >= $2",
        )
        .bind(i64_of(chain_id))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut total = alloy::primitives::U256::ZERO;
        for r in &rows {
            let gas = opt_u64_of(r, "gas_used")?.unwrap_or(0);
            let price: Option<String> = r.try_get("effective_gas_price")?;
            let l1: Option<String> = r.try_get("l1_fee")?;
            let price: alloy::primitives::U256 =
                price.and_then(|p| p.parse().ok()).unwrap_or_default();
            let l1: alloy::primitives::U256 = l1.and_then(|p| p.parse().ok()).unwrap_or_default();
            total += alloy::primitives::U256::from(gas) * price + l1;
        }
        Ok(total)
    }
}

async fn insert_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: i64,
    t: &NewTransaction,
    now: i64,
) -> Result<i64, LedgerError> {
    // The same hash is the same transaction (same key, nonce, fees and calls): a batch signed again
    // exactly as an attempt that was dropped or superseded revives that row instead of colliding.
    Ok(sqlx::query(
        "INSERT INTO transactions (batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, max_fee_per_gas, \
         max_priority_fee_per_gas, status, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'signed',$10,$10) \
         ON CONFLICT (tx_hash) DO UPDATE SET batch_id = excluded.batch_id, raw_tx = excluded.raw_tx, status = 'signed', \
         updated_at = excluded.updated_at WHERE transactions.status IN ('dropped','replaced') RETURNING id",
    )
    .bind(batch_id)
    .bind(i64_of(t.chain_id))
    .bind(hex(t.wallet.as_slice()))
    .bind(i64_of(t.nonce))
    .bind(hex(&t.raw_tx))
    .bind(hex(t.tx_hash.as_slice()))
    .bind(i64_of(t.gas_limit))
    .bind(t.max_fee_per_gas.to_string())
    .bind(t.max_priority_fee_per_gas.to_string())
    .bind(now)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?)
}

async fn set_status(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tx_id: i64,
    status: TxStatus,
    now: i64,
) -> Result<(), LedgerError> {
    sqlx::query("UPDATE transactions SET status = $2, updated_at = $3 WHERE id = $1")
        .bind(tx_id)
        .bind(status.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The compare-and-set behind [`Ledger::transition`], inside a caller's database transaction.
async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ids: &[i64],
    t: &Transition,
) -> Result<Vec<i64>, LedgerError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let text = |b: &[u8]| Bind::Text(hex(b));
    let mut sets: Vec<(&str, Bind)> = Vec::new();
    let mut extra = "";
    match t {
        Transition::Batched { batch_id, tx_hash } => {
            sets.push(("batch_id", Bind::Int(*batch_id)));
            sets.push(("tx_hash", text(tx_hash.as_slice())));
        }
        Transition::Resigned { tx_hash } => sets.push(("tx_hash", text(tx_hash.as_slice()))),
        Transition::Included { at, .. } | Transition::SettledAt { at, .. } => {
            sets.push(("tx_hash", text(at.tx_hash.as_slice())));
            sets.push(("block_number", Bind::Int(i64_of(at.block_number))));
            sets.push(("block_hash", text(at.block_hash.as_slice())));
        }
        Transition::Confirmed | Transition::Finalized => {}
        Transition::Requeued {
            after_broadcast,
            not_before,
            ..
        } => {
            for c in ["batch_id", "tx_hash", "block_number", "block_hash"] {
                sets.push((c, Bind::Null));
            }
            sets.push(("not_before", Bind::Int(*not_before)));
            if *after_broadcast {
                extra = ", attempts = attempts + 1";
            }
        }
        Transition::Deferred { not_before, .. } => {
            sets.push(("not_before", Bind::Int(*not_before)))
        }
        Transition::Refused { reason, message }
        | Transition::Failed { reason, message }
        | Transition::Lost { reason, message } => {
            sets.push(("fail_reason", Bind::Text(reason.clone())));
            sets.push(("fail_message", Bind::Text(message.clone())));
        }
    }
    let mut sql = String::from("UPDATE payments SET state = $1, updated_at = $2");
    let mut n = 3;
    for (col, b) in &sets {
        // A NULL is written literally: a bound NULL carries a type PostgreSQL would refuse for
        // an integer column.
        if matches!(b, Bind::Null) {
            sql.push_str(&format!(", {col} = NULL"));
        } else {
            sql.push_str(&format!(", {col} = ${n}"));
            n += 1;
        }
    }
    sql.push_str(extra);
    let from = t.from_states();
    sql.push_str(&format!(
        " WHERE state IN ({}) AND id IN ({}) RETURNING id",
        placeholders(n, from.len()),
        placeholders(n + from.len(), ids.len())
    ));
    let mut q = sqlx::query(AssertSqlSafe(sql))
        .bind(t.to_state().as_str())
        .bind(now);
    for (_, b) in sets {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
            Bind::Null => q,
        };
    }
    for s in from {
        q = q.bind(s.as_str());
    }
    for id in ids {
        q = q.bind(*id);
    }
    let moved: Vec<i64> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    if !moved.is_empty() {
        let detail = t.detail();
        let sql = format!(
            "INSERT INTO payment_events (payment_id, state, detail, at) SELECT id, $1, $2, $3 FROM payments WHERE id IN ({})",
            placeholders(4, moved.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(t.event_name())
            .bind(detail)
            .bind(now);
        for id in &moved {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(moved)
}

pub(super) async fn event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: i64,
    state: &str,
    detail: Option<&str>,
    at: i64,
) -> Result<(), LedgerError> {
    sqlx::query("INSERT INTO payment_events (payment_id, state, detail, at) VALUES ($1,$2,$3,$4)")
        .bind(id)
        .bind(state)
        .bind(detail)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
