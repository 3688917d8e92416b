//! Durable state: payments keyed by (chain, asset, payer, nonce), their states and history, batches
//! and their transactions. SQLite (default) or PostgreSQL, chosen by the URL, through one set of
//! queries. Never calls the chain.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

pub use crate::db::now_ms;
use crate::db::placeholders;

/// A ledger failure. Always our fault (answered 5xx), never the client's.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] crate::db::DbError),
    #[error("ledger row is corrupt: {0}")]
    Corrupt(String),
    /// A failure shared by every claim of one group commit.
    #[error("database: {0}")]
    Shared(String),
}

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentState {
    /// Claimed and waiting for a batch.
    Queued,
    /// In a signed (maybe broadcast) transaction whose receipt has not been seen.
    InBatch,
    /// Its `AuthorizationUsed` log is in a mined transaction; waiting for confirmations.
    Included,
    Confirmed,
    Failed,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Queued => "queued",
            PaymentState::InBatch => "in_batch",
            PaymentState::Included => "included",
            PaymentState::Confirmed => "confirmed",
            PaymentState::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, PaymentState::Confirmed | PaymentState::Failed)
    }
}

impl FromStr for PaymentState {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, LedgerError> {
        Ok(match s {
            "queued" => PaymentState::Queued,
            "in_batch" => PaymentState::InBatch,
            "included" => PaymentState::Included,
            "confirmed" => PaymentState::Confirmed,
            "failed" => PaymentState::Failed,
            other => {
                return Err(LedgerError::Corrupt(format!(
                    "unknown payment state {other:?}"
                )));
            }
        })
    }
}

/// Status of a settlement transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Signed and stored, not yet known to be broadcast.
    Signed,
    Broadcast,
    Mined,
    /// Mined but reverted as a whole.
    Reverted,
    /// Never mined (nonce taken by another transaction).
    Dropped,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Signed => "signed",
            TxStatus::Broadcast => "broadcast",
            TxStatus::Mined => "mined",
            TxStatus::Reverted => "reverted",
            TxStatus::Dropped => "dropped",
        }
    }
}

impl FromStr for TxStatus {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, LedgerError> {
        Ok(match s {
            "signed" => TxStatus::Signed,
            "broadcast" => TxStatus::Broadcast,
            "mined" => TxStatus::Mined,
            "reverted" => TxStatus::Reverted,
            "dropped" => TxStatus::Dropped,
            other => return Err(LedgerError::Corrupt(format!("unknown tx status {other:?}"))),
        })
    }
}

/// A payment to claim.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub chain_id: u64,
    /// Addresses and hashes as lower-case 0x hex.
    pub asset: String,
    pub payer: String,
    pub nonce: String,
    pub pay_to: String,
    pub amount: String,
    pub valid_before: u64,
    /// Identifies the exact signed payload, to tell a retry from a different payload for the same key.
    pub payload_digest: String,
    pub x402_version: u8,
    pub network: String,
    pub request_json: String,
    pub deploy_target: Option<String>,
    pub deploy_calldata: Option<String>,
    pub transfer_calldata: String,
}

/// A payment as stored.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: i64,
    pub chain_id: u64,
    pub asset: String,
    pub payer: String,
    pub nonce: String,
    pub pay_to: String,
    pub amount: String,
    pub valid_before: u64,
    pub payload_digest: String,
    pub request_json: String,
    pub deploy_target: Option<String>,
    pub deploy_calldata: Option<String>,
    pub transfer_calldata: String,
    pub state: PaymentState,
    pub fail_reason: Option<String>,
    pub fail_message: Option<String>,
    pub batch_id: Option<i64>,
    pub tx_hash: Option<String>,
    pub block_number: Option<u64>,
    pub created_at: i64,
}

/// The outcome of a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The key was free: this is a new payment.
    New(i64),
    /// The key was taken: the existing payment.
    Existing(Box<Payment>),
}

/// A signed settlement transaction to record with its batch.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub chain_id: u64,
    pub wallet: String,
    pub nonce: u64,
    pub raw_tx: String,
    pub tx_hash: String,
    pub gas_limit: u64,
    pub max_fee_per_gas: String,
    pub max_priority_fee_per_gas: String,
}

/// A settlement transaction as stored.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub id: i64,
    pub batch_id: i64,
    pub chain_id: u64,
    pub wallet: String,
    pub nonce: u64,
    pub raw_tx: String,
    pub tx_hash: String,
    pub gas_limit: u64,
    pub status: TxStatus,
    pub gas_used: Option<u64>,
    pub block_number: Option<u64>,
    pub created_at: i64,
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
    pub effective_gas_price: Option<String>,
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

/// What a mined transaction's receipt said.
#[derive(Debug, Clone)]
pub struct MinedTx {
    pub succeeded: bool,
    pub block_number: u64,
    pub gas_used: u64,
    pub effective_gas_price: String,
}

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
}

type PaymentKey = (u64, String, String, String);

/// Keys of unexpired claimed authorizations (an expired one is refused before the ledger is asked).
#[derive(Debug, Default)]
struct KeyIndex {
    inner: Mutex<KeyIndexInner>,
}

#[derive(Debug, Default)]
struct KeyIndexInner {
    valid_before: HashMap<PaymentKey, u64>,
    prune_at: usize,
}

impl KeyIndex {
    fn insert(&self, key: PaymentKey, valid_before: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.valid_before.insert(key, valid_before);
        if inner.valid_before.len() >= inner.prune_at {
            let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
            inner.valid_before.retain(|_, vb| *vb >= now);
            inner.prune_at = (inner.valid_before.len() * 2).max(10_000);
        }
    }

    fn contains(&self, key: &PaymentKey) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.valid_before.contains_key(key)
    }
}

/// Milliseconds since the Unix epoch.
const PAYMENT_COLUMNS: &str = "id, chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, request_json, \
     deploy_target, deploy_calldata, transfer_calldata, state, fail_reason, fail_message, batch_id, tx_hash, block_number, created_at";

const TX_COLUMNS: &str = "id, batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, status, gas_used, block_number, created_at";

fn u64_of(row: &AnyRow, col: &str) -> Result<u64, LedgerError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| LedgerError::Corrupt(format!("{col} is negative")))
}

fn opt_u64_of(row: &AnyRow, col: &str) -> Result<Option<u64>, LedgerError> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u64::try_from(v).ok()))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn payment_of(row: &AnyRow) -> Result<Payment, LedgerError> {
    let state: String = row.try_get("state")?;
    Ok(Payment {
        id: row.try_get("id")?,
        chain_id: u64_of(row, "chain_id")?,
        asset: row.try_get("asset")?,
        payer: row.try_get("payer")?,
        nonce: row.try_get("nonce")?,
        pay_to: row.try_get("pay_to")?,
        amount: row.try_get("amount")?,
        valid_before: u64_of(row, "valid_before")?,
        payload_digest: row.try_get("payload_digest")?,
        request_json: row.try_get("request_json")?,
        deploy_target: row.try_get("deploy_target")?,
        deploy_calldata: row.try_get("deploy_calldata")?,
        transfer_calldata: row.try_get("transfer_calldata")?,
        state: state.parse()?,
        fail_reason: row.try_get("fail_reason")?,
        fail_message: row.try_get("fail_message")?,
        batch_id: row.try_get("batch_id")?,
        tx_hash: row.try_get("tx_hash")?,
        block_number: opt_u64_of(row, "block_number")?,
        created_at: row.try_get("created_at")?,
    })
}

fn transaction_of(row: &AnyRow) -> Result<Transaction, LedgerError> {
    let status: String = row.try_get("status")?;
    Ok(Transaction {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        chain_id: u64_of(row, "chain_id")?,
        wallet: row.try_get("wallet")?,
        nonce: u64_of(row, "nonce")?,
        raw_tx: row.try_get("raw_tx")?,
        tx_hash: row.try_get("tx_hash")?,
        gas_limit: u64_of(row, "gas_limit")?,
        status: status.parse()?,
        gas_used: opt_u64_of(row, "gas_used")?,
        block_number: opt_u64_of(row, "block_number")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Ledger {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Ledger, LedgerError> {
        let pool = crate::db::open(url).await?;
        let sqlite = url.starts_with("sqlite:");
        let keys = if sqlite {
            let index = KeyIndex::default();
            let now = now_ms() / 1000;
            let rows = sqlx::query(
                "SELECT chain_id, asset, payer, nonce, valid_before FROM payments WHERE valid_before >= $1",
            )
            .bind(now)
            .fetch_all(&pool)
            .await?;
            for row in &rows {
                index.insert(
                    (
                        u64_of(row, "chain_id")?,
                        row.try_get("asset")?,
                        row.try_get("payer")?,
                        row.try_get("nonce")?,
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
        })
    }

    /// Whether a payment that is not failed holds this key. With SQLite, a key this process never
    /// claimed is answered from memory.
    pub async fn holds(
        &self,
        chain_id: u64,
        asset: &str,
        payer: &str,
        nonce: &str,
    ) -> Result<Option<PaymentState>, LedgerError> {
        if let Some(keys) = &self.keys
            && !keys.contains(&(
                chain_id,
                asset.to_owned(),
                payer.to_owned(),
                nonce.to_owned(),
            ))
        {
            return Ok(None);
        }
        Ok(self
            .find(chain_id, asset, payer, nonce)
            .await?
            .map(|p| p.state)
            .filter(|s| *s != PaymentState::Failed))
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
                keys.insert(
                    (
                        p.chain_id,
                        p.asset.clone(),
                        p.payer.clone(),
                        p.nonce.clone(),
                    ),
                    p.valid_before,
                );
            }
            return Ok(Claim::New(id));
        }
        let existing = self
            .find(p.chain_id, &p.asset, &p.payer, &p.nonce)
            .await?
            .ok_or_else(|| LedgerError::Corrupt("claim conflicted but no row exists".into()))?;
        Ok(Claim::Existing(Box::new(existing)))
    }

    /// The payment with this key, if any.
    pub async fn find(
        &self,
        chain_id: u64,
        asset: &str,
        payer: &str,
        nonce: &str,
    ) -> Result<Option<Payment>, LedgerError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND nonce = $4"
        )))
        .bind(i64_of(chain_id))
        .bind(asset)
        .bind(payer)
        .bind(nonce)
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

    /// Oldest queued payments of a chain.
    pub async fn queued(&self, chain_id: u64, limit: usize) -> Result<Vec<Payment>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE chain_id = $1 AND state = 'queued' ORDER BY id LIMIT $2"
        )))
        .bind(i64_of(chain_id))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_of).collect()
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

    /// Marks a payment failed, unless it already reached a terminal state.
    pub async fn fail(&self, id: i64, reason: &str, message: &str) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE payments SET state = 'failed', fail_reason = $2, fail_message = $3, updated_at = $4 \
             WHERE id = $1 AND state NOT IN ('confirmed', 'failed')",
        )
        .bind(id)
        .bind(reason)
        .bind(message)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            event(
                &mut tx,
                id,
                "failed",
                Some(&format!("{reason}: {message}")),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that a payment was settled by a transaction we did not send (someone else submitted
    /// the authorization).
    pub async fn settled_elsewhere(
        &self,
        id: i64,
        tx_hash: &str,
        block: u64,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE payments SET state = 'confirmed', tx_hash = $2, block_number = $3, updated_at = $4 \
             WHERE id = $1 AND state NOT IN ('confirmed', 'failed')",
        )
        .bind(id)
        .bind(tx_hash)
        .bind(i64_of(block))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        event(
            &mut tx,
            id,
            "confirmed",
            Some(&format!("settled by {tx_hash}")),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a batch and its signed transaction, and moves its payments to `in_batch` — all in
    /// one database transaction, before anything is broadcast.
    pub async fn record_batch(
        &self,
        items: &[i64],
        t: &NewTransaction,
    ) -> Result<(i64, i64), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let batch_id: i64 = sqlx::query(
            "INSERT INTO batches (chain_id, item_count, state, created_at, updated_at) VALUES ($1,$2,'open',$3,$3) RETURNING id",
        )
        .bind(i64_of(t.chain_id))
        .bind(i64::try_from(items.len()).unwrap_or(i64::MAX))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let tx_id: i64 = sqlx::query(
            "INSERT INTO transactions (batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, max_fee_per_gas, \
             max_priority_fee_per_gas, status, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'signed',$10,$10) RETURNING id",
        )
        .bind(batch_id)
        .bind(i64_of(t.chain_id))
        .bind(&t.wallet)
        .bind(i64_of(t.nonce))
        .bind(&t.raw_tx)
        .bind(&t.tx_hash)
        .bind(i64_of(t.gas_limit))
        .bind(&t.max_fee_per_gas)
        .bind(&t.max_priority_fee_per_gas)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let sql = format!(
            "UPDATE payments SET state = 'in_batch', batch_id = $1, tx_hash = $2, updated_at = $3 WHERE state = 'queued' AND id IN ({})",
            placeholders(4, items.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(batch_id)
            .bind(&t.tx_hash)
            .bind(now);
        for id in items {
            q = q.bind(*id);
        }
        let moved = q.execute(&mut *tx).await?.rows_affected();
        if moved != items.len() as u64 {
            return Err(LedgerError::Corrupt(format!(
                "{} of {} batch items were no longer queued",
                items.len() as u64 - moved,
                items.len()
            )));
        }
        sqlx::query("INSERT INTO payment_events (payment_id, state, detail, at) SELECT id, 'in_batch', $2, $3 FROM payments WHERE batch_id = $1")
            .bind(batch_id)
            .bind(&t.tx_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((batch_id, tx_id))
    }

    pub async fn set_tx_status(&self, tx_id: i64, status: TxStatus) -> Result<(), LedgerError> {
        sqlx::query("UPDATE transactions SET status = $2, updated_at = $3 WHERE id = $1")
            .bind(tx_id)
            .bind(status.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a mined transaction, and which of its batch's payments it settled (`included`).
    /// With `confirmed`, they go straight to `confirmed`.
    pub async fn record_mined(
        &self,
        tx_id: i64,
        batch_id: i64,
        mined: &MinedTx,
        settled: &[i64],
        confirmed: bool,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let status = if mined.succeeded {
            TxStatus::Mined
        } else {
            TxStatus::Reverted
        };
        sqlx::query(
            "UPDATE transactions SET status = $2, gas_used = $3, effective_gas_price = $4, block_number = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(tx_id)
        .bind(status.as_str())
        .bind(i64_of(mined.gas_used))
        .bind(&mined.effective_gas_price)
        .bind(i64_of(mined.block_number))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET state = 'mined', updated_at = $2 WHERE id = $1")
            .bind(batch_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if !settled.is_empty() {
            let state = if confirmed {
                PaymentState::Confirmed
            } else {
                PaymentState::Included
            };
            let sql = format!(
                "UPDATE payments SET state = $1, block_number = $2, updated_at = $3 WHERE state = 'in_batch' AND id IN ({})",
                placeholders(4, settled.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(state.as_str())
                .bind(i64_of(mined.block_number))
                .bind(now);
            for id in settled {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let sql = format!(
                "INSERT INTO payment_events (payment_id, state, detail, at) SELECT id, $1, $2, $3 FROM payments WHERE id IN ({})",
                placeholders(4, settled.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(state.as_str())
                .bind(format!("block {}", mined.block_number))
                .bind(now);
            for id in settled {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves `included` payments mined at or below `block` to `confirmed`.
    pub async fn confirm_up_to(&self, chain_id: u64, block: u64) -> Result<Vec<i64>, LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE payments SET state = 'confirmed', updated_at = $3 WHERE chain_id = $1 AND state = 'included' AND block_number <= $2 RETURNING id",
        )
        .bind(i64_of(chain_id))
        .bind(i64_of(block))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            event(&mut tx, *id, "confirmed", None, now).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Puts payments back in the queue (their transaction was dropped or reverted as a whole).
    pub async fn requeue(&self, ids: &[i64], why: &str) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE payments SET state = 'queued', batch_id = NULL, tx_hash = NULL, updated_at = $1 WHERE state = 'in_batch' AND id IN ({})",
            placeholders(2, ids.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).bind(now);
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        for id in ids {
            event(&mut tx, *id, "queued", Some(why), now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Transactions of a chain not yet known to be mined or dropped.
    pub async fn open_transactions(&self, chain_id: u64) -> Result<Vec<Transaction>, LedgerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TX_COLUMNS} FROM transactions WHERE chain_id = $1 AND status IN ('signed','broadcast') ORDER BY nonce"
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

    /// The highest nonce we ever signed for a wallet on a chain.
    pub async fn last_nonce(
        &self,
        chain_id: u64,
        wallet: &str,
    ) -> Result<Option<u64>, LedgerError> {
        let row = sqlx::query("SELECT MAX(nonce) AS n FROM transactions WHERE chain_id = $1 AND wallet = $2 AND status <> 'dropped'")
            .bind(i64_of(chain_id))
            .bind(wallet)
            .fetch_one(&self.pool)
            .await?;
        opt_u64_of(&row, "n")
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
        let rows = sqlx::query(
            "SELECT t.id AS id, t.batch_id AS batch_id, t.chain_id AS chain_id, t.wallet AS wallet, t.nonce AS nonce, \
             '' AS raw_tx, t.tx_hash AS tx_hash, t.gas_limit AS gas_limit, t.status AS status, t.gas_used AS gas_used, \
             t.block_number AS block_number, t.created_at AS created_at, t.effective_gas_price AS effective_gas_price, \
             b.item_count AS item_count FROM transactions t JOIN batches b ON b.id = t.batch_id ORDER BY t.id DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentTransaction {
                    tx: transaction_of(r)?,
                    item_count: u64_of(r, "item_count")?,
                    effective_gas_price: r.try_get("effective_gas_price")?,
                })
            })
            .collect()
    }

    /// Which migrations of this build are applied.
    pub async fn migration_status(&self) -> Result<MigrationStatus, LedgerError> {
        let migrator = if self.sqlite {
            sqlx::migrate!("migrations/sqlite")
        } else {
            sqlx::migrate!("migrations/postgres")
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

/// A SQLite URL that creates the file (and its directory) when missing.
async fn event(
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
        match insert_claims(&pool, &group).await {
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
    let mut ids = Vec::with_capacity(group.len());
    for (p, _) in group {
        let inserted = sqlx::query(
            "INSERT INTO payments (chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, x402_version, \
             network, request_json, deploy_target, deploy_calldata, transfer_calldata, state, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,'queued',$15,$15) \
             ON CONFLICT (chain_id, asset, payer, nonce) DO NOTHING RETURNING id",
        )
        .bind(i64_of(p.chain_id))
        .bind(&p.asset)
        .bind(&p.payer)
        .bind(&p.nonce)
        .bind(&p.pay_to)
        .bind(&p.amount)
        .bind(i64_of(p.valid_before))
        .bind(&p.payload_digest)
        .bind(i64::from(p.x402_version))
        .bind(&p.network)
        .bind(&p.request_json)
        .bind(&p.deploy_target)
        .bind(&p.deploy_calldata)
        .bind(&p.transfer_calldata)
        .bind(now)
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
        ids.push(id);
    }
    tx.commit().await?;
    Ok(ids)
}
