//! Synthetic history for the bench: months of settled payments written straight into the
//! tables by the database itself (no chain, no signatures), each row as large as a real one, so
//! that what a long-running ledger costs (start-up, claims, look-ups, pruning) can be measured
//! without settling millions of payments first.

use alloy::primitives::Address;

use super::rows::{hex, i64_of};
use super::{Ledger, LedgerError, now_ms};

/// Payments written per statement (one commit each).
const CHUNK: u64 = 100_000;

/// Payments per synthetic batch (and transaction), as settlement under load makes them.
const PER_BATCH: u64 = 60;

/// The span the synthetic history covers, ending `SPAN_END_MS` before now.
const SPAN_MS: i64 = 120 * 86_400_000;
const SPAN_END_MS: i64 = 3 * 86_400_000;

/// Of every this many payments one is `refused` (the rest `final`).
const REFUSED_EVERY: u64 = 100;

impl Ledger {
    /// Adds `rows` settled payments of `asset` on `chain_id` to `pay_to`, spread over 120 days
    /// ending three days ago (all expired), with their events (six each, as a real settlement
    /// leaves), batches and transactions. `progress` is told the running total after each chunk.
    pub async fn fill_synthetic_history(
        &self,
        rows: u64,
        chain_id: u64,
        asset: Address,
        pay_to: Address,
        mut progress: impl FnMut(u64),
    ) -> Result<(), LedgerError> {
        // One incompressible request and calldata of a real one's size, bound once per chunk: the
        // database stores (and PostgreSQL compresses) them as it would real ones.
        let random = |n: usize| -> Vec<u8> { (0..n).map(|_| rand::random::<u8>()).collect() };
        let request_json = format!("{{\"synthetic\":\"{}\"}}", alloy::hex::encode(random(600)));
        let calldata = hex(&random(292));
        // Ids, batches and transactions are numbered from 1: only an empty ledger can take them.
        if self.scalar("SELECT COUNT(*) AS n FROM payments").await? > 0 {
            return Err(LedgerError::Corrupt(
                "synthetic history goes into an empty ledger only".into(),
            ));
        }
        let start_ms = now_ms() - SPAN_END_MS - SPAN_MS;
        let step_ms = (SPAN_MS / i64_of(rows.max(1))).max(1);
        let mut done = 0;
        while done < rows {
            let n = CHUNK.min(rows - done);
            let first = i64_of(done) + 1;
            let last = first + i64_of(n) - 1;
            let mut tx = self.pool.begin().await?;
            let (payments, events, batches, transactions) =
                if self.sqlite { SQLITE } else { POSTGRES };
            sqlx::query(payments)
                .bind(first)
                .bind(last)
                .bind(i64_of(chain_id))
                .bind(hex(asset.as_slice()))
                .bind(hex(pay_to.as_slice()))
                .bind(&request_json)
                .bind(&calldata)
                .bind(start_ms)
                .bind(step_ms)
                .bind(i64_of(PER_BATCH))
                .bind(i64_of(REFUSED_EVERY))
                .execute(&mut *tx)
                .await?;
            sqlx::query(events)
                .bind(first)
                .bind(last)
                .execute(&mut *tx)
                .await?;
            sqlx::query(batches)
                .bind(first)
                .bind(last)
                .bind(i64_of(PER_BATCH))
                .execute(&mut *tx)
                .await?;
            sqlx::query(transactions)
                .bind(first)
                .bind(last)
                .bind(i64_of(PER_BATCH))
                .bind(&calldata)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done += n;
            progress(done);
        }
        if self.sqlite {
            // Leave the file as a long-running node's is, its log folded in: a node opening it
            // would otherwise first index gigabytes of write-ahead log, which no real start meets.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        } else {
            // As autovacuum and the checkpointer leave a months-old database: vacuumed, its
            // statistics current, nothing dirty. Otherwise both would run under the measured
            // load, which no steady node meets.
            sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
            // Needs a superuser or pg_checkpoint; without it the checkpointer catches up alone.
            let _ = sqlx::query("CHECKPOINT").execute(&self.pool).await;
            // Explicit ids leave PostgreSQL's sequences behind: the next real row follows them.
            for table in ["payments", "payment_events", "batches", "transactions"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )))
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn scalar(&self, sql: &'static str) -> Result<i64, LedgerError> {
        use sqlx::Row;
        Ok(sqlx::query(sql).fetch_one(&self.pool).await?.try_get("n")?)
    }
}

/// payments ($1..$2 ids; $3 chain, $4 asset, $5 payTo, $6 request, $7 calldata, $8 time of id 0,
/// $9 ms per payment, $10 payments per batch, $11 one refused in so many); their events; a batch
/// and a mined transaction per `$3` payments, keyed by the batch of the chunk's ids.
type Statements = (&'static str, &'static str, &'static str, &'static str);

const SQLITE: Statements = (
    "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
     INSERT INTO payments (id, chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, \
     x402_version, network, request_json, transfer_calldata, state, batch_id, tx_hash, block_number, block_hash, \
     created_at, updated_at, method, call_target) \
     SELECT i, $3, $4, '0x' || lower(hex(randomblob(20))), '0x' || lower(hex(randomblob(32))), $5, '10000', \
     ($8 + i * $9) / 1000 + 600, '0x' || lower(hex(randomblob(32))), 2, 'eip155:' || $3, $6, $7, \
     CASE WHEN i % $11 = 0 THEN 'refused' ELSE 'final' END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE i / $10 END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE printf('0x%064x', i / $10) END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE i / $10 END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE printf('0x%064x', i / $10) END, \
     $8 + i * $9, $8 + i * $9 + 4000, 'eip3009', $4 FROM n",
    "INSERT INTO payment_events (payment_id, state, detail, at) \
     SELECT p.id, s.state, NULL, p.created_at FROM payments p, \
     (SELECT 'received' AS state UNION ALL SELECT 'queued' UNION ALL SELECT 'in_batch' \
      UNION ALL SELECT 'included' UNION ALL SELECT 'confirmed' UNION ALL SELECT 'final') s \
     WHERE p.id BETWEEN $1 AND $2 ORDER BY p.id",
    "INSERT OR IGNORE INTO batches (id, chain_id, item_count, state, created_at, updated_at) \
     SELECT batch_id, chain_id, $3, 'mined', MIN(created_at), MAX(updated_at) FROM payments \
     WHERE id BETWEEN $1 AND $2 AND batch_id IS NOT NULL GROUP BY batch_id, chain_id",
    "INSERT OR IGNORE INTO transactions (id, batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, \
     max_fee_per_gas, max_priority_fee_per_gas, status, gas_used, effective_gas_price, block_number, block_hash, \
     created_at, updated_at) \
     SELECT batch_id, batch_id, chain_id, '0x00000000000000000000000000000000000000aa', batch_id, $4, tx_hash, \
     $3 * 60000, '2000000000', '1000000', 'mined', $3 * 50000, '1000000000', block_number, block_hash, \
     MIN(created_at), MAX(updated_at) FROM payments \
     WHERE id BETWEEN $1 AND $2 AND batch_id IS NOT NULL GROUP BY batch_id, chain_id, tx_hash, block_number, block_hash",
);

const POSTGRES: Statements = (
    "INSERT INTO payments (id, chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, \
     x402_version, network, request_json, transfer_calldata, state, batch_id, tx_hash, block_number, block_hash, \
     created_at, updated_at, method, call_target) \
     SELECT i, $3, $4, '0x' || substr(md5(random()::text) || md5(random()::text), 1, 40), \
     '0x' || md5(random()::text) || md5(random()::text), $5, '10000', \
     ($8 + i * $9) / 1000 + 600, '0x' || md5(random()::text) || md5(random()::text), 2, 'eip155:' || $3, $6, $7, \
     CASE WHEN i % $11 = 0 THEN 'refused' ELSE 'final' END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE i / $10 END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE '0x' || lpad(to_hex(i / $10), 64, '0') END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE i / $10 END, \
     CASE WHEN i % $11 = 0 THEN NULL ELSE '0x' || lpad(to_hex(i / $10), 64, '0') END, \
     $8 + i * $9, $8 + i * $9 + 4000, 'eip3009', $4 FROM generate_series($1::bigint, $2::bigint) AS i",
    "INSERT INTO payment_events (payment_id, state, detail, at) \
     SELECT p.id, s.state, NULL, p.created_at FROM payments p, \
     (VALUES ('received'), ('queued'), ('in_batch'), ('included'), ('confirmed'), ('final')) AS s(state) \
     WHERE p.id BETWEEN $1 AND $2 ORDER BY p.id",
    "INSERT INTO batches (id, chain_id, item_count, state, created_at, updated_at) \
     SELECT batch_id, chain_id, $3, 'mined', MIN(created_at), MAX(updated_at) FROM payments \
     WHERE id BETWEEN $1 AND $2 AND batch_id IS NOT NULL GROUP BY batch_id, chain_id ON CONFLICT (id) DO NOTHING",
    "INSERT INTO transactions (id, batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, \
     max_fee_per_gas, max_priority_fee_per_gas, status, gas_used, effective_gas_price, block_number, block_hash, \
     created_at, updated_at) \
     SELECT batch_id, batch_id, chain_id, '0x00000000000000000000000000000000000000aa', batch_id, $4, tx_hash, \
     $3 * 60000, '2000000000', '1000000', 'mined', $3 * 50000, '1000000000', block_number, block_hash, \
     MIN(created_at), MAX(updated_at) FROM payments \
     WHERE id BETWEEN $1 AND $2 AND batch_id IS NOT NULL GROUP BY batch_id, chain_id, tx_hash, block_number, block_hash \
     ON CONFLICT (tx_hash) DO NOTHING",
);
