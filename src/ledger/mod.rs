//! Durable state: payments keyed by (chain, asset, payer, nonce), their states and history, batches
//! and their transactions. SQLite (default) or PostgreSQL, chosen by the URL, through one set of
//! queries. Never calls the chain.
//!
//! Rows are typed ([`rows`]); a payment's state moves only through [`Ledger::transition`] and the
//! writes in [`writes`] built on it, compare-and-set, each with a history event.

mod catalogue;
mod identifiers;
mod keys;
mod leases;
mod retention;
mod rows;
mod signals;
pub mod state;
mod synthetic;
mod writes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, B256};
use sqlx::{AnyPool, AssertSqlSafe, Row};

pub use crate::clock::now_ms;
pub use catalogue::{CatalogueEntry, Sighting};
pub use identifiers::BoundIdentifier;
pub use keys::ApiKeyRecord;
pub use leases::{Fence, LaneShare, Lease};
pub use retention::{Archive, MIN_RETENTION, PruneReport, RetentionTask};
pub use rows::{
    Deploy, Method, MinedTx, NewPayment, NewTransaction, Payment, Transaction, TxStatus,
};
use rows::{PAYMENT_COLUMNS, TX_COLUMNS, hex, i64_of, payment_of, transaction_of, u64_of};
pub use signals::{Signal, Signals};
pub use state::{Inclusion, PaymentState, Transition};
pub use writes::QueueClaim;

/// A ledger failure. Always our fault (answered 5xx), never the client's.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] crate::storage::DbError),
    #[error("ledger row is corrupt: {0}")]
    Corrupt(String),
    /// A failure shared by every claim of one group commit.
    #[error("database: {0}")]
    Shared(String),
    /// The lane's lease passed to another node (or a later fence): nothing was written.
    #[error("the lease of gas wallet {wallet}'s lane is no longer held under fence {token}")]
    Fenced { wallet: Address, token: i64 },
}

/// The outcome of a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The key was free: this is a new payment.
    New(i64),
    /// The key was taken: the existing payment.
    Existing(Box<Payment>),
}

/// What is still moving on one chain: the queue and the oldest payment not yet terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct PendingSummary {
    /// Payments queued for a batch.
    pub queued: u64,
    /// `created_at` (ms) of the oldest payment queued, in a batch or included.
    pub oldest_pending_at: Option<i64>,
}

/// A settlement transaction with its batch's size, for the operator page.
#[derive(Debug, Clone)]
pub struct RecentTransaction {
    pub tx: Transaction,
    pub item_count: u64,
}

/// Whether the schema is the one this build expects.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// Versions this build carries.
    pub expected: Vec<i64>,
    /// Versions applied successfully in the database.
    pub applied: Vec<i64>,
}

impl MigrationStatus {
    /// Every migration of this build is applied.
    pub fn complete(&self) -> bool {
        self.expected.iter().all(|v| self.applied.contains(v))
    }
}

/// The ledger's tables (payments, batches, transactions, payment identifiers), its own migrations.
static MIGRATIONS: crate::storage::Migrations = crate::storage::Migrations {
    sqlite: sqlx::migrate!("migrations/ledger/sqlite"),
    postgres: sqlx::migrate!("migrations/ledger/postgres"),
};

/// The ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    /// Present when this process is the database's only writer (SQLite): every key it ever claimed
    /// that can still be spent, so `/verify` learns "never seen" without a database round trip.
    keys: Option<Arc<KeyIndex>>,
    sqlite: bool,
    /// Claims go to one writer task that commits them in groups.
    claims: tokio::sync::mpsc::Sender<ClaimRequest>,
    /// The PostgreSQL URL, for [`Ledger::listen`] (`None` with SQLite).
    url: Option<Arc<str>>,
}

type PaymentKey = (u64, Address, Address, B256);

/// Keys of unexpired claimed authorizations (an expired one is refused before the ledger is asked).
/// Bounded: past [`KEY_INDEX_CAP`] keys it stops remembering new ones and, until the last of those
/// has expired, answers "maybe" for a key it does not hold, so the ledger is asked (slower, never
/// wrong). Each key is ~120 bytes with the map's overhead: the cap keeps it near 30 MB.
#[derive(Debug, Default)]
struct KeyIndex {
    inner: Mutex<KeyIndexInner>,
}

/// Keys held in memory at most.
const KEY_INDEX_CAP: usize = 250_000;

#[derive(Debug, Default)]
struct KeyIndexInner {
    valid_before: HashMap<PaymentKey, u64>,
    prune_at: usize,
    /// The latest `validBefore` of a key left out for the cap: until then absence proves nothing.
    incomplete_until: Option<u64>,
    /// The second of the last pruning pass.
    pruned_at: u64,
}

impl KeyIndex {
    fn insert(&self, key: PaymentKey, valid_before: u64) {
        self.insert_capped(key, valid_before, KEY_INDEX_CAP);
    }

    fn insert_capped(&self, key: PaymentKey, valid_before: u64, cap: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        // At the cap, at most one pass a second: a full scan per claim would cost more than the
        // ledger read it saves.
        let due = inner.valid_before.len() >= inner.prune_at
            || (inner.valid_before.len() >= cap && inner.pruned_at < now);
        if due {
            inner.valid_before.retain(|_, vb| *vb >= now);
            inner.prune_at = (inner.valid_before.len() * 2).max(10_000);
            inner.pruned_at = now;
        }
        if inner.valid_before.len() >= cap {
            let until = inner.incomplete_until.unwrap_or(0).max(valid_before);
            inner.incomplete_until = Some(until);
            return;
        }
        inner.valid_before.insert(key, valid_before);
    }

    /// Records that keys valid until `until` were left out.
    fn leave_out_until(&self, until: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.incomplete_until = Some(inner.incomplete_until.unwrap_or(0).max(until));
    }

    /// Whether the key may be held: false only when the index proves it is not.
    fn may_hold(&self, key: &PaymentKey) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.valid_before.contains_key(key) {
            return true;
        }
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        match inner.incomplete_until {
            Some(until) if until >= now => true,
            Some(_) => {
                inner.incomplete_until = None;
                false
            }
            None => false,
        }
    }
}

impl Ledger {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Ledger, LedgerError> {
        let pool = crate::storage::open(url, &MIGRATIONS).await?;
        let sqlite = url.starts_with("sqlite:");
        let keys = if sqlite {
            let index = KeyIndex::default();
            let now = now_ms() / 1000;
            // Through the expiry index, and never more than the index holds: start-up costs the
            // same after months of history.
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT chain_id, asset, payer, nonce, valid_before FROM payments WHERE valid_before >= $1 \
                 ORDER BY valid_before LIMIT {}",
                KEY_INDEX_CAP + 1
            )))
            .bind(now)
            .fetch_all(&pool)
            .await?;
            if rows.len() > KEY_INDEX_CAP {
                // More unexpired keys than the index holds: absence proves nothing until the
                // latest of them has expired.
                let latest: Option<i64> =
                    sqlx::query("SELECT MAX(valid_before) AS v FROM payments")
                        .fetch_one(&pool)
                        .await?
                        .try_get("v")?;
                index.leave_out_until(latest.and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
            }
            for row in rows.iter().take(KEY_INDEX_CAP) {
                let text = |c: &str| -> Result<String, LedgerError> { Ok(row.try_get(c)?) };
                let corrupt = |c: &str| LedgerError::Corrupt(format!("payment {c}"));
                index.insert(
                    (
                        u64_of(row, "chain_id")?,
                        text("asset")?.parse().map_err(|_| corrupt("asset"))?,
                        text("payer")?.parse().map_err(|_| corrupt("payer"))?,
                        text("nonce")?.parse().map_err(|_| corrupt("nonce"))?,
                    ),
                    u64_of(row, "valid_before")?,
                );
            }
            Some(Arc::new(index))
        } else {
            None
        };
        let (claims, requests) = tokio::sync::mpsc::channel(4 * CLAIM_GROUP);
        tokio::spawn(claim_writer(pool.clone(), requests));
        Ok(Ledger {
            pool,
            keys,
            sqlite,
            claims,
            url: (!sqlite).then(|| Arc::from(url)),
        })
    }

    /// The state of the payment holding this key, if one does (a refused payment does not: its
    /// authorization may be submitted again). With SQLite, a key this process never claimed is
    /// answered from memory.
    pub async fn holds(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> Result<Option<PaymentState>, LedgerError> {
        if let Some(keys) = &self.keys
            && !keys.may_hold(&(chain_id, asset, payer, nonce))
        {
            return Ok(None);
        }
        Ok(self
            .find(chain_id, asset, payer, nonce)
            .await?
            .map(|p| p.state)
            .filter(|s| s.holds_key()))
    }

    /// Claims a payment's key. The unique key makes concurrent claims of one authorization agree on a
    /// single row.
    pub async fn claim(&self, p: &NewPayment) -> Result<Claim, LedgerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.claims
            .send((p.clone(), reply))
            .await
            .map_err(|_| LedgerError::Shared("the claim writer has stopped".into()))?;
        let inserted = answer
            .await
            .map_err(|_| LedgerError::Shared("the claim writer has stopped".into()))??;
        if let Some(id) = inserted {
            if let Some(keys) = &self.keys {
                keys.insert((p.chain_id, p.asset, p.payer, p.nonce), p.valid_before);
            }
            return Ok(Claim::New(id));
        }
        let existing = self
            .find(p.chain_id, p.asset, p.payer, p.nonce)
            .await?
            .ok_or_else(|| LedgerError::Corrupt("claim conflicted but no row exists".into()))?;
        Ok(Claim::Existing(Box::new(existing)))
    }

    /// The payment with this key, if any.
    pub async fn find(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> Result<Option<Payment>, LedgerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND nonce = $4"
        )))
        .bind(i64_of(chain_id))
        .bind(hex(asset.as_slice()))
        .bind(hex(payer.as_slice()))
        .bind(hex(nonce.as_slice()))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    pub async fn payment(&self, id: i64) -> Result<Option<Payment>, LedgerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_of).transpose()
    }

    /// Counts of payments by state (for tests and metrics).
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM payments GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// A payment's history: (state, detail).
    pub async fn history(&self, id: i64) -> Result<Vec<(String, Option<String>)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT state, detail FROM payment_events WHERE payment_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("detail")?)))
            .collect()
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        if self.sqlite { "sqlite" } else { "postgres" }
    }

    /// Queue depth and the oldest unfinished payment of a chain.
    pub async fn pending_summary(&self, chain_id: u64) -> Result<PendingSummary, LedgerError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM payments WHERE chain_id = $1 AND state = 'queued') AS queued, \
             (SELECT MIN(created_at) FROM payments WHERE chain_id = $1 AND state IN ('queued','in_batch','included')) AS oldest",
        )
        .bind(i64_of(chain_id))
        .fetch_one(&self.pool)
        .await?;
        Ok(PendingSummary {
            queued: u64_of(&row, "queued")?,
            oldest_pending_at: row.try_get("oldest")?,
        })
    }

    /// The latest payments, newest first.
    pub async fn recent_payments(&self, limit: usize) -> Result<Vec<Payment>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments ORDER BY id DESC LIMIT $1"
        )))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// The latest settlement transactions with their batch sizes, newest first (raw bytes left out).
    pub async fn recent_transactions(
        &self,
        limit: usize,
    ) -> Result<Vec<RecentTransaction>, LedgerError> {
        let columns = TX_COLUMNS
            .split(", ")
            .map(|c| {
                if c == "raw_tx" {
                    "'' AS raw_tx".to_owned()
                } else {
                    format!("t.{c} AS {c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {columns}, b.item_count AS item_count FROM transactions t JOIN batches b ON b.id = t.batch_id \
             ORDER BY t.id DESC LIMIT $1"
        )))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentTransaction {
                    tx: transaction_of(r)?,
                    item_count: u64_of(r, "item_count")?,
                })
            })
            .collect()
    }

    /// Which migrations of this build are applied.
    pub async fn migration_status(&self) -> Result<MigrationStatus, LedgerError> {
        let migrator = if self.sqlite {
            &MIGRATIONS.sqlite
        } else {
            &MIGRATIONS.postgres
        };
        let expected = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .collect();
        let rows =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        let applied = rows
            .iter()
            .map(|r| r.try_get("version"))
            .collect::<Result<_, _>>()?;
        Ok(MigrationStatus { expected, applied })
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// A claim waiting for the writer: the payment and where to send its new id (`None`: key taken).
type ClaimRequest = (
    NewPayment,
    tokio::sync::oneshot::Sender<Result<Option<i64>, LedgerError>>,
);

/// Most claims committed together.
const CLAIM_GROUP: usize = 256;

/// The one task that writes claims: whatever arrived while the last commit ran is committed in one
/// transaction (group commit), so concurrent `/settle` calls share one fsync instead of queueing
/// for SQLite's write lock one by one.
async fn claim_writer(pool: AnyPool, mut requests: tokio::sync::mpsc::Receiver<ClaimRequest>) {
    let mut group = Vec::with_capacity(CLAIM_GROUP);
    while requests.recv_many(&mut group, CLAIM_GROUP).await > 0 {
        // Another node's group may hold some of the same keys: PostgreSQL resolves a lock cycle
        // by aborting one side (its group is then simply written again).
        let mut written = insert_claims(&pool, &group).await;
        for _ in 0..3 {
            match &written {
                Err(LedgerError::Database(sqlx::Error::Database(e)))
                    if matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    written = insert_claims(&pool, &group).await;
                }
                _ => break,
            }
        }
        match written {
            Ok(ids) => {
                for ((_, reply), id) in group.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(LedgerError::Shared(message.clone())));
                }
            }
        }
    }
}

async fn insert_claims(
    pool: &AnyPool,
    group: &[ClaimRequest],
) -> Result<Vec<Option<i64>>, LedgerError> {
    let now = now_ms();
    let mut tx = pool.begin().await?;
    let mut ids = vec![None; group.len()];
    // In key order: every node's groups take the keys' locks in one order, so two groups with
    // keys in common wait for each other instead of deadlocking.
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| {
        let p = &group[i].0;
        (p.chain_id, p.asset, p.payer, p.nonce)
    });
    for i in order {
        let p = &group[i].0;
        let inserted = sqlx::query(
            "INSERT INTO payments (chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, x402_version, \
             network, request_json, deploy_target, deploy_calldata, transfer_calldata, api_key, method, call_target, sender, state, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$16,$17,$18,$19,'queued',$15,$15) \
             ON CONFLICT (chain_id, asset, payer, nonce) DO NOTHING RETURNING id",
        )
        .bind(i64_of(p.chain_id))
        .bind(hex(p.asset.as_slice()))
        .bind(hex(p.payer.as_slice()))
        .bind(hex(p.nonce.as_slice()))
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
        .fetch_optional(&mut *tx)
        .await?;
        let id = match inserted {
            Some(row) => Some(row.try_get::<i64, _>("id")?),
            None => None,
        };
        if let Some(id) = id {
            sqlx::query("INSERT INTO payment_events (payment_id, state, detail, at) VALUES ($1,'received',NULL,$2), ($1,'queued',NULL,$2)")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        ids[i] = id;
    }
    tx.commit().await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_key_index_says_maybe_until_what_it_left_out_expires() {
        let index = KeyIndex::default();
        let now = u64::try_from(now_ms() / 1000).unwrap();
        let key = |n: u8| (1u64, Address::ZERO, Address::ZERO, B256::repeat_byte(n));
        index.insert_capped(key(1), now + 600, 2);
        index.insert_capped(key(2), now + 600, 2);
        assert!(index.may_hold(&key(1)));
        assert!(!index.may_hold(&key(9)), "not full: absence is proof");
        // Full: key 3 is left out, so absence proves nothing until it has expired.
        index.insert_capped(key(3), now + 600, 2);
        assert!(index.may_hold(&key(3)));
        assert!(index.may_hold(&key(9)));
        assert_eq!(index.inner.lock().unwrap().valid_before.len(), 2);
        // What was left out has expired: absence is proof again.
        let expired = KeyIndex::default();
        expired.insert_capped(key(1), now + 600, 1);
        expired.insert_capped(key(2), now.saturating_sub(10), 1);
        assert!(!expired.may_hold(&key(2)));
        assert!(!expired.may_hold(&key(9)));
    }
}
