//! Dial's records, in the same database as the ledger or its own (its own tables and migrations,
//! `migrations/dial`): receipts, messages, numbers,
//! eSIMs, verifications, SIWE nonces and sessions.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::clock::now_ms;
use crate::storage::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Open(#[from] DbError),
}

/// Where a paid request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// Verified; settlement asked for and not yet answered.
    Settling,
    /// Broadcast, receipt late: the payment may still land.
    SettlementPending,
    /// The facilitator refused to settle; nothing was charged.
    SettlementFailed,
    /// Settled on chain; the work is being done.
    Paid,
    Fulfilled,
    /// Paid but the work failed: owed a refund.
    FulfillmentFailed,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Settling => "settling",
            ReceiptStatus::SettlementPending => "settlement_pending",
            ReceiptStatus::SettlementFailed => "settlement_failed",
            ReceiptStatus::Paid => "paid",
            ReceiptStatus::Fulfilled => "fulfilled",
            ReceiptStatus::FulfillmentFailed => "fulfillment_failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            ReceiptStatus::Settling,
            ReceiptStatus::SettlementPending,
            ReceiptStatus::SettlementFailed,
            ReceiptStatus::Paid,
            ReceiptStatus::Fulfilled,
            ReceiptStatus::FulfillmentFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A payment taken for one request.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub id: i64,
    pub payment_key: String,
    pub payer: String,
    pub route: String,
    pub amount: String,
    pub network: String,
    pub request_hash: String,
    pub status: ReceiptStatus,
    pub tx_hash: Option<String>,
    pub response_json: Option<String>,
}

/// What a new receipt records.
#[derive(Debug, Clone)]
pub struct NewReceipt<'a> {
    pub payment_key: &'a str,
    pub payer: &'a str,
    pub route: &'a str,
    pub amount: &'a str,
    pub network: &'a str,
    pub asset: &'a str,
    pub request_hash: &'a str,
}

/// Where a number stands: paid until `expires_at`, then `Grace` (renewable), then released at
/// the provider (`Releasing` while that call is out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberStatus {
    Active,
    Grace,
    Releasing,
    Released,
}

impl NumberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberStatus::Active => "active",
            NumberStatus::Grace => "grace",
            NumberStatus::Releasing => "releasing",
            NumberStatus::Released => "released",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            NumberStatus::Active,
            NumberStatus::Grace,
            NumberStatus::Releasing,
            NumberStatus::Released,
        ]
        .into_iter()
        .find(|n| n.as_str() == s)
    }
}

/// A number a payer owns.
#[derive(Debug, Clone)]
pub struct OwnedNumber {
    pub phone_number: String,
    pub country: String,
    pub expires_at: i64,
    pub texts_used: i64,
    pub texts_quota: i64,
    pub status: NumberStatus,
    pub provider: String,
    pub provider_id: String,
    pub webhook_url: Option<String>,
    pub webhook_failing_since: Option<i64>,
    pub webhook_disabled_at: Option<i64>,
}

impl OwnedNumber {
    /// What the owner is told at `now`: `active`, `grace` (past its month, renewable) or
    /// `released`, whether or not the background sweep has run yet.
    pub fn lifecycle(&self, now: i64) -> &'static str {
        match self.status {
            NumberStatus::Active if self.expires_at > now => "active",
            NumberStatus::Active | NumberStatus::Grace | NumberStatus::Releasing => "grace",
            NumberStatus::Released => "released",
        }
    }
}

/// A delivered (or queued) message.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub message_id: &'a str,
    pub provider: &'a str,
    pub sender: Option<&'a str>,
    pub recipient: &'a str,
    pub body: &'a str,
    pub segments: usize,
    pub status: &'a str,
    pub owner: Option<&'a str>,
    pub receipt_id: Option<i64>,
}

/// What a new verification rental records.
#[derive(Debug, Clone)]
pub struct NewVerification<'a> {
    pub verification_id: &'a str,
    pub service: &'a str,
    pub phone_number: &'a str,
    pub receipt_id: Option<i64>,
    pub owner: &'a str,
    pub read_token_hash: &'a str,
    pub expires_at: i64,
}

/// A month, for number expiry and text quotas.
pub const MONTH_MS: i64 = 30 * 24 * 3600 * 1000;

/// Dial's tables (receipts, numbers, sessions, messages), its own migrations.
static MIGRATIONS: crate::storage::Migrations = crate::storage::Migrations {
    sqlite: sqlx::migrate!("migrations/dial/sqlite"),
    postgres: sqlx::migrate!("migrations/dial/postgres"),
};

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

fn receipt_of(row: &AnyRow) -> Result<Receipt, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Receipt {
        id: row.try_get("id")?,
        payment_key: row.try_get("payment_key")?,
        payer: row.try_get("payer")?,
        route: row.try_get("route")?,
        amount: row.try_get("amount")?,
        network: row.try_get("network")?,
        request_hash: row.try_get("request_hash")?,
        status: ReceiptStatus::parse(&status)
            .ok_or_else(|| decode_error("receipt status", &status))?,
        tx_hash: row.try_get("tx_hash")?,
        response_json: row.try_get("response_json")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            pool: crate::storage::open(url, &MIGRATIONS).await?,
        })
    }

    /// The pool, for reads outside the store's own queries (tests, operators' tools).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn receipt_by_key(&self, key: &str) -> Result<Option<Receipt>, StoreError> {
        let row = sqlx::query("SELECT * FROM dial_receipts WHERE payment_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(receipt_of).transpose()
    }

    /// Opens a receipt in `settling`; `None` when the payment already has one (a replay).
    pub async fn open_receipt(&self, r: &NewReceipt<'_>) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO dial_receipts (payment_key, payer, route, amount, network, asset, request_hash, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id",
        )
        .bind(r.payment_key)
        .bind(r.payer)
        .bind(r.route)
        .bind(r.amount)
        .bind(r.network)
        .bind(r.asset)
        .bind(r.request_hash)
        .bind(ReceiptStatus::Settling.as_str())
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(row) => Ok(Some(row.try_get("id")?)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a receipt to `to` only from one of `from`, so two replays cannot both take it.
    pub async fn move_receipt(
        &self,
        id: i64,
        from: &[ReceiptStatus],
        to: ReceiptStatus,
    ) -> Result<bool, StoreError> {
        let list = crate::storage::placeholders(4, from.len());
        let sql = format!(
            "UPDATE dial_receipts SET status = $1, updated_at = $2 WHERE id = $3 AND status IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now_ms())
            .bind(id);
        for f in from {
            q = q.bind(f.as_str());
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Records a receipt's outcome: its status and what it learned on the way.
    pub async fn finish_receipt(
        &self,
        id: i64,
        status: ReceiptStatus,
        tx_hash: Option<&str>,
        provider_id: Option<&str>,
        response_json: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dial_receipts SET status = $1, tx_hash = COALESCE($2, tx_hash), provider_id = COALESCE($3, provider_id), \
             response_json = COALESCE($4, response_json), error = COALESCE($5, error), updated_at = $6 WHERE id = $7",
        )
        .bind(status.as_str())
        .bind(tx_hash)
        .bind(provider_id)
        .bind(response_json)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_message(&self, m: &NewMessage<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_messages (message_id, provider, sender, recipient, body, segments, status, owner, receipt_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(m.message_id)
        .bind(m.provider)
        .bind(m.sender)
        .bind(m.recipient)
        .bind(m.body)
        .bind(i64::try_from(m.segments).unwrap_or(i64::MAX))
        .bind(m.status)
        .bind(m.owner)
        .bind(m.receipt_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a bought number owned by `owner` for a month, with a fresh text quota (a number
    /// released earlier is sold again as new). `None` if the number is held by someone.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_number(
        &self,
        phone_number: &str,
        country: &str,
        owner: &str,
        provider: &str,
        provider_id: &str,
        texts_quota: u32,
        receipt_id: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO dial_numbers (phone_number, country, owner, provider, provider_id, expires_at, quota_period_start, texts_used, texts_quota, receipt_id, created_at, status, status_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $7, 'active', $7) \
             ON CONFLICT (phone_number) DO UPDATE SET country = excluded.country, owner = excluded.owner, \
             provider = excluded.provider, provider_id = excluded.provider_id, expires_at = excluded.expires_at, \
             quota_period_start = excluded.quota_period_start, texts_used = 0, texts_quota = excluded.texts_quota, \
             receipt_id = excluded.receipt_id, created_at = excluded.created_at, status = 'active', \
             status_at = excluded.status_at, webhook_url = NULL, webhook_failing_since = NULL, webhook_disabled_at = NULL \
             WHERE dial_numbers.status = 'released' RETURNING expires_at",
        )
        .bind(phone_number)
        .bind(country)
        .bind(owner)
        .bind(provider)
        .bind(provider_id)
        .bind(now + MONTH_MS)
        .bind(now)
        .bind(i64::from(texts_quota))
        .bind(receipt_id)
        .fetch_optional(&self.pool)
        .await;
        match result {
            Ok(Some(row)) => Ok(Some(row.try_get("expires_at")?)),
            Ok(None) => Ok(None),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn number(
        &self,
        phone_number: &str,
    ) -> Result<Option<(String, OwnedNumber)>, StoreError> {
        let row = sqlx::query("SELECT * FROM dial_numbers WHERE phone_number = $1")
            .bind(phone_number)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("owner")?, owned_number_of(&r)?)))
            .transpose()
    }

    pub async fn numbers_of(&self, owner: &str) -> Result<Vec<OwnedNumber>, StoreError> {
        let rows = sqlx::query("SELECT * FROM dial_numbers WHERE owner = $1 ORDER BY id")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(owned_number_of).collect()
    }

    /// Extends a number by a month from its expiry (or from now if it lapsed into grace); returns
    /// the new expiry, `None` when it is unknown or already being released.
    pub async fn renew_number(&self, phone_number: &str) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE dial_numbers SET expires_at = (CASE WHEN expires_at > $1 THEN expires_at ELSE $1 END) + $2, \
             status = 'active', status_at = $1 \
             WHERE phone_number = $3 AND status IN ('active', 'grace') RETURNING expires_at",
        )
        .bind(now)
        .bind(MONTH_MS)
        .bind(phone_number)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("expires_at").map_err(StoreError::from))
            .transpose()
    }

    /// Takes one text from a live number's monthly quota (starting a new month when due); `false`
    /// when the quota is spent.
    pub async fn take_quota(&self, phone_number: &str, owner: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE dial_numbers SET texts_used = 0, quota_period_start = $1 \
             WHERE phone_number = $2 AND quota_period_start + $3 <= $1",
        )
        .bind(now)
        .bind(phone_number)
        .bind(MONTH_MS)
        .execute(&self.pool)
        .await?;
        let taken = sqlx::query(
            "UPDATE dial_numbers SET texts_used = texts_used + 1 \
             WHERE phone_number = $1 AND owner = $2 AND expires_at > $3 AND texts_used < texts_quota AND status = 'active'",
        )
        .bind(phone_number)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    pub async fn record_esim(
        &self,
        package_id: &str,
        iccid: &str,
        activation_code: &str,
        receipt_id: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_esims (package_id, iccid, activation_code, receipt_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(package_id)
        .bind(iccid)
        .bind(activation_code)
        .bind(receipt_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a rented verification number, waiting for its code until `expires_at`; only
    /// `owner` (the payer) or the holder of the read token may read it.
    pub async fn record_verification(&self, v: &NewVerification<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_verifications (verification_id, service, phone_number, status, receipt_id, created_at, owner, read_token_hash, expires_at) \
             VALUES ($1, $2, $3, 'waiting', $4, $5, $6, $7, $8)",
        )
        .bind(v.verification_id)
        .bind(v.service)
        .bind(v.phone_number)
        .bind(v.receipt_id)
        .bind(now_ms())
        .bind(v.owner)
        .bind(v.read_token_hash)
        .bind(v.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn add_siwe_nonce(
        &self,
        nonce: &str,
        address: &str,
        chain_id: u64,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO dial_siwe_nonces (nonce, address, chain_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(nonce)
        .bind(address)
        .bind(i64::try_from(chain_id).unwrap_or(i64::MAX))
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Uses a nonce we issued to `address` on `chain_id`, once and before it expires.
    pub async fn consume_siwe_nonce(
        &self,
        nonce: &str,
        address: &str,
        chain_id: u64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE dial_siwe_nonces SET used_at = $1 WHERE nonce = $2 AND address = $3 AND chain_id = $4 \
             AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(nonce)
        .bind(address)
        .bind(i64::try_from(chain_id).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn add_session(
        &self,
        token_hash: &str,
        address: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_sessions (token_hash, address, expires_at, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(address)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session_address(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT address FROM dial_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("address").map_err(StoreError::from))
            .transpose()
    }
}

fn decode_error(what: &str, value: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(
        format!("unknown {what} {value:?}").into(),
    ))
}

fn owned_number_of(r: &AnyRow) -> Result<OwnedNumber, StoreError> {
    let status: String = r.try_get("status")?;
    Ok(OwnedNumber {
        phone_number: r.try_get("phone_number")?,
        country: r.try_get("country")?,
        expires_at: r.try_get("expires_at")?,
        texts_used: r.try_get("texts_used")?,
        texts_quota: r.try_get("texts_quota")?,
        status: NumberStatus::parse(&status)
            .ok_or_else(|| decode_error("number status", &status))?,
        provider: r.try_get("provider")?,
        provider_id: r.try_get("provider_id")?,
        webhook_url: r.try_get("webhook_url")?,
        webhook_failing_since: r.try_get("webhook_failing_since")?,
        webhook_disabled_at: r.try_get("webhook_disabled_at")?,
    })
}

/// A text that arrived at one of Dial's numbers.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    pub id: i64,
    pub provider: String,
    pub provider_id: String,
    pub phone_number: String,
    pub sender: String,
    pub body: String,
    pub segments: i64,
    pub owner: Option<String>,
    pub verification_id: Option<String>,
    pub received_at: i64,
}

/// What an arriving text records.
#[derive(Debug, Clone)]
pub struct NewInbound<'a> {
    pub provider: &'a str,
    pub provider_id: &'a str,
    pub phone_number: &'a str,
    pub sender: &'a str,
    pub body: &'a str,
    pub segments: usize,
    pub owner: Option<&'a str>,
    pub verification_id: Option<&'a str>,
}

/// Which of an owner's texts to list: after the cursor, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter<'a> {
    pub phone_number: Option<&'a str>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub after_id: i64,
    pub limit: i64,
}

/// A verification rental.
#[derive(Debug, Clone)]
pub struct Verification {
    pub verification_id: String,
    pub service: String,
    pub phone_number: String,
    /// `waiting`, `received` or `expired`.
    pub status: String,
    pub owner: Option<String>,
    pub read_token_hash: Option<String>,
    pub expires_at: i64,
    pub code: Option<String>,
    pub message_text: Option<String>,
    pub received_at: Option<i64>,
    pub receipt_id: Option<i64>,
}

/// One inbound message on its way to one webhook URL.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub inbound_id: i64,
    pub owner: String,
    pub phone_number: String,
    pub url: String,
    /// `pending`, `delivered` or `abandoned` (the URL was disabled or changed).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

/// One try of a delivery.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: i64,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// Where a refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    /// Owed; no transaction signed (or the last one can never land).
    Owed,
    /// A transaction is signed and stored; it may be in the pool or mined.
    Signed,
    /// The transfer is mined.
    Confirmed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Owed => "owed",
            RefundStatus::Signed => "signed",
            RefundStatus::Confirmed => "confirmed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            RefundStatus::Owed,
            RefundStatus::Signed,
            RefundStatus::Confirmed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A refund of one payment.
#[derive(Debug, Clone)]
pub struct Refund {
    pub id: i64,
    pub receipt_id: i64,
    pub payer: String,
    pub amount: String,
    pub network: String,
    pub asset: String,
    pub reason: String,
    pub status: RefundStatus,
    pub tx_hash: Option<String>,
    pub tx_nonce: Option<i64>,
    pub raw_tx: Option<String>,
    pub last_error: Option<String>,
    pub displaced_since: Option<i64>,
    pub created_at: i64,
}

fn inbound_of(r: &AnyRow) -> Result<InboundMessage, StoreError> {
    Ok(InboundMessage {
        id: r.try_get("id")?,
        provider: r.try_get("provider")?,
        provider_id: r.try_get("provider_id")?,
        phone_number: r.try_get("phone_number")?,
        sender: r.try_get("sender")?,
        body: r.try_get("body")?,
        segments: r.try_get("segments")?,
        owner: r.try_get("owner")?,
        verification_id: r.try_get("verification_id")?,
        received_at: r.try_get("received_at")?,
    })
}

fn verification_of(r: &AnyRow) -> Result<Verification, StoreError> {
    Ok(Verification {
        verification_id: r.try_get("verification_id")?,
        service: r.try_get("service")?,
        phone_number: r.try_get("phone_number")?,
        status: r.try_get("status")?,
        owner: r.try_get("owner")?,
        read_token_hash: r.try_get("read_token_hash")?,
        expires_at: r.try_get("expires_at")?,
        code: r.try_get("code")?,
        message_text: r.try_get("message_text")?,
        received_at: r.try_get("received_at")?,
        receipt_id: r.try_get("receipt_id")?,
    })
}

fn delivery_of(r: &AnyRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.try_get("id")?,
        inbound_id: r.try_get("inbound_id")?,
        owner: r.try_get("owner")?,
        phone_number: r.try_get("phone_number")?,
        url: r.try_get("url")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
    })
}

fn refund_of(r: &AnyRow) -> Result<Refund, StoreError> {
    let status: String = r.try_get("status")?;
    Ok(Refund {
        id: r.try_get("id")?,
        receipt_id: r.try_get("receipt_id")?,
        payer: r.try_get("payer")?,
        amount: r.try_get("amount")?,
        network: r.try_get("network")?,
        asset: r.try_get("asset")?,
        reason: r.try_get("reason")?,
        status: RefundStatus::parse(&status)
            .ok_or_else(|| decode_error("refund status", &status))?,
        tx_hash: r.try_get("tx_hash")?,
        tx_nonce: r.try_get("tx_nonce")?,
        raw_tx: r.try_get("raw_tx")?,
        last_error: r.try_get("last_error")?,
        displaced_since: r.try_get("displaced_since")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Inbound texts and verification codes.
impl Store {
    /// Stores an arriving text; `None` when the provider delivered this message before.
    pub async fn record_inbound(
        &self,
        m: &NewInbound<'_>,
        now: i64,
    ) -> Result<Option<InboundMessage>, StoreError> {
        let result = sqlx::query(
            "INSERT INTO dial_inbound (provider, provider_id, phone_number, sender, body, segments, owner, verification_id, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
        )
        .bind(m.provider)
        .bind(m.provider_id)
        .bind(m.phone_number)
        .bind(m.sender)
        .bind(m.body)
        .bind(i64::try_from(m.segments).unwrap_or(i64::MAX))
        .bind(m.owner)
        .bind(m.verification_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(row) => Ok(Some(inbound_of(&row)?)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An owner's texts in arrival order (the id is the cursor: stable while texts keep arriving).
    pub async fn messages_of(
        &self,
        owner: &str,
        f: &MessageFilter<'_>,
    ) -> Result<Vec<InboundMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dial_inbound WHERE owner = $1 AND id > $2 \
             AND (CAST($3 AS TEXT) IS NULL OR phone_number = CAST($3 AS TEXT)) AND received_at >= $4 AND received_at < $5 \
             ORDER BY id LIMIT $6",
        )
        .bind(owner)
        .bind(f.after_id)
        .bind(f.phone_number)
        .bind(f.since_ms.unwrap_or(i64::MIN))
        .bind(f.until_ms.unwrap_or(i64::MAX))
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(inbound_of).collect()
    }

    pub async fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        let row = sqlx::query("SELECT * FROM dial_verifications WHERE verification_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(verification_of).transpose()
    }

    /// The rental waiting for a code on `phone_number` at `now`, if any.
    pub async fn waiting_verification(
        &self,
        phone_number: &str,
        now: i64,
    ) -> Result<Option<Verification>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM dial_verifications WHERE phone_number = $1 AND status = 'waiting' AND expires_at > $2 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(phone_number)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(verification_of).transpose()
    }

    /// Records the code of a waiting rental, once.
    pub async fn verification_received(
        &self,
        id: &str,
        code: Option<&str>,
        text: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE dial_verifications SET status = 'received', code = $1, message_text = $2, received_at = $3 \
             WHERE verification_id = $4 AND status = 'waiting'",
        )
        .bind(code)
        .bind(text)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Moves every rental past its window without a code to `expired`; returns them (each owes a
    /// refund).
    pub async fn expire_verifications(&self, now: i64) -> Result<Vec<Verification>, StoreError> {
        let rows = sqlx::query(
            "UPDATE dial_verifications SET status = 'expired' WHERE status = 'waiting' AND expires_at <= $1 RETURNING *",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(verification_of).collect()
    }
}

/// Owners' webhooks and their deliveries.
impl Store {
    /// Sets (or with `None` removes) the webhook of `owner`'s number; a new URL starts healthy.
    pub async fn set_webhook(
        &self,
        owner: &str,
        phone_number: &str,
        url: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE dial_numbers SET webhook_url = $1, webhook_failing_since = NULL, webhook_disabled_at = NULL \
             WHERE owner = $2 AND phone_number = $3 AND status <> 'released'",
        )
        .bind(url)
        .bind(owner)
        .bind(phone_number)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE dial_webhook_deliveries SET status = 'abandoned', updated_at = $1 \
             WHERE phone_number = $2 AND status = 'pending' AND (CAST($3 AS TEXT) IS NULL OR url <> CAST($3 AS TEXT))",
        )
        .bind(now_ms())
        .bind(phone_number)
        .bind(url)
        .execute(&self.pool)
        .await?;
        Ok(n == 1)
    }

    pub async fn owner_secret(&self, owner: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT secret FROM dial_owner_secrets WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("secret").map_err(StoreError::from))
            .transpose()
    }

    /// Stores `secret` as `owner`'s signing secret unless one exists; `true` if this one was stored.
    pub async fn create_owner_secret(&self, owner: &str, secret: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO dial_owner_secrets (owner, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (owner) DO NOTHING",
        )
        .bind(owner)
        .bind(secret)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Queues `inbound` for the webhook of its number, if it has a live one.
    pub async fn enqueue_delivery(
        &self,
        inbound: &InboundMessage,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO dial_webhook_deliveries (inbound_id, owner, phone_number, url, status, attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, owner, phone_number, webhook_url, 'pending', 0, $2, $2, $2 FROM dial_numbers \
             WHERE phone_number = $3 AND owner = $4 AND webhook_url IS NOT NULL AND webhook_disabled_at IS NULL \
             ON CONFLICT (inbound_id, url) DO NOTHING",
        )
        .bind(inbound.id)
        .bind(now)
        .bind(&inbound.phone_number)
        .bind(&inbound.owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Takes up to `limit` deliveries due at `now`, leasing each until `lease_until` (another
    /// node, or this one after a crash, may take it again only after that).
    pub async fn take_due_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let due = sqlx::query(
            "SELECT * FROM dial_webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::new();
        for row in &due {
            let d = delivery_of(row)?;
            let n = sqlx::query(
                "UPDATE dial_webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending' AND next_attempt_at = $3",
            )
            .bind(lease_until)
            .bind(d.id)
            .bind(d.next_attempt_at)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n == 1 {
                taken.push(d);
            }
        }
        Ok(taken)
    }

    pub async fn inbound(&self, id: i64) -> Result<Option<InboundMessage>, StoreError> {
        let row = sqlx::query("SELECT * FROM dial_inbound WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(inbound_of).transpose()
    }

    pub async fn record_attempt(
        &self,
        delivery_id: i64,
        attempt: &Attempt,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_webhook_attempts (delivery_id, at, http_status, error, duration_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(delivery_id)
        .bind(attempt.at)
        .bind(attempt.http_status)
        .bind(attempt.error.as_deref())
        .bind(attempt.duration_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the outcome of a delivery's attempt: `delivered`, or `pending` again at `next_at`.
    pub async fn finish_attempt(
        &self,
        d: &Delivery,
        delivered: bool,
        next_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dial_webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, updated_at = $3 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(if delivered { "delivered" } else { "pending" })
        .bind(next_at)
        .bind(now)
        .bind(d.id)
        .execute(&self.pool)
        .await?;
        // The URL's health, on the number: failing since the first failure, healthy on success.
        sqlx::query(
            "UPDATE dial_numbers SET webhook_failing_since = CASE WHEN $1 THEN NULL ELSE COALESCE(webhook_failing_since, $2) END \
             WHERE phone_number = $3 AND webhook_url = $4",
        )
        .bind(delivered)
        .bind(now)
        .bind(&d.phone_number)
        .bind(&d.url)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Disables every webhook failing since before `failing_before`; abandons their deliveries.
    /// Returns how many were disabled.
    pub async fn disable_failing_webhooks(
        &self,
        failing_before: i64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let disabled = sqlx::query(
            "UPDATE dial_numbers SET webhook_disabled_at = $1 \
             WHERE webhook_url IS NOT NULL AND webhook_disabled_at IS NULL AND webhook_failing_since <= $2 \
             RETURNING phone_number, webhook_url",
        )
        .bind(now)
        .bind(failing_before)
        .fetch_all(&self.pool)
        .await?;
        for row in &disabled {
            let phone: String = row.try_get("phone_number")?;
            let url: String = row.try_get("webhook_url")?;
            sqlx::query(
                "UPDATE dial_webhook_deliveries SET status = 'abandoned', updated_at = $1 WHERE phone_number = $2 AND url = $3 AND status = 'pending'",
            )
            .bind(now)
            .bind(&phone)
            .bind(&url)
            .execute(&self.pool)
            .await?;
        }
        Ok(disabled.len() as u64)
    }

    /// An owner's latest deliveries (newest first), each with its attempts.
    pub async fn deliveries_of(
        &self,
        owner: &str,
        phone_number: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dial_webhook_deliveries WHERE owner = $1 AND (CAST($2 AS TEXT) IS NULL OR phone_number = CAST($2 AS TEXT)) ORDER BY id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(phone_number)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = delivery_of(row)?;
            let attempts = sqlx::query(
                "SELECT * FROM dial_webhook_attempts WHERE delivery_id = $1 ORDER BY id",
            )
            .bind(d.id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|a| {
                Ok(Attempt {
                    at: a.try_get("at")?,
                    http_status: a.try_get("http_status")?,
                    error: a.try_get("error")?,
                    duration_ms: a.try_get("duration_ms")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            out.push((d, attempts));
        }
        Ok(out)
    }
}

/// Numbers' lifecycle.
impl Store {
    /// Moves every active number past its month into `grace`; returns how many.
    pub async fn numbers_into_grace(&self, now: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE dial_numbers SET status = 'grace', status_at = $1 WHERE status = 'active' AND expires_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Claims the numbers to release at the provider: past their grace, or claimed by a
    /// release that did not finish within `stale_ms` (the provider call is idempotent).
    pub async fn claim_releases(
        &self,
        now: i64,
        grace_ms: i64,
        stale_ms: i64,
    ) -> Result<Vec<OwnedNumber>, StoreError> {
        let rows = sqlx::query(
            "UPDATE dial_numbers SET status = 'releasing', status_at = $1 \
             WHERE (status = 'grace' AND expires_at + $2 <= $1) OR (status = 'releasing' AND status_at + $3 <= $1) \
             RETURNING *",
        )
        .bind(now)
        .bind(grace_ms)
        .bind(stale_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(owned_number_of).collect()
    }

    pub async fn mark_released(&self, phone_number: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dial_numbers SET status = 'released', status_at = $1, webhook_url = NULL WHERE phone_number = $2 AND status = 'releasing'",
        )
        .bind(now)
        .bind(phone_number)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Refunds.
impl Store {
    /// Records that receipt `receipt_id`'s payment is owed back; `false` when it already is (the
    /// payment is the key: at most one refund each).
    pub async fn owe_refund(&self, receipt_id: i64, reason: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO dial_refunds (receipt_id, payer, amount, network, asset, reason, status, created_at, updated_at) \
             SELECT id, payer, amount, network, asset, $1, 'owed', $2, $2 FROM dial_receipts WHERE id = $3 \
             ON CONFLICT (receipt_id) DO NOTHING",
        )
        .bind(reason)
        .bind(now)
        .bind(receipt_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn refund_of_receipt(&self, receipt_id: i64) -> Result<Option<Refund>, StoreError> {
        let row = sqlx::query("SELECT * FROM dial_refunds WHERE receipt_id = $1")
            .bind(receipt_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(refund_of).transpose()
    }

    /// Refunds not yet confirmed, oldest first.
    pub async fn open_refunds(&self, limit: i64) -> Result<Vec<Refund>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM dial_refunds WHERE status IN ('owed', 'signed') ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(refund_of).collect()
    }

    /// The latest refunds of any status (newest first), for the operator.
    pub async fn refunds(&self, limit: i64) -> Result<Vec<Refund>, StoreError> {
        let rows = sqlx::query("SELECT * FROM dial_refunds ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(refund_of).collect()
    }

    /// How many refunds are in each status.
    pub async fn refund_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM dial_refunds GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Stores the signed transaction of an owed refund, before it is broadcast (compare-and-set:
    /// one signer wins).
    pub async fn refund_signed(
        &self,
        id: i64,
        raw: &str,
        hash: &str,
        nonce: u64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE dial_refunds SET status = 'signed', raw_tx = $1, tx_hash = $2, tx_nonce = $3, displaced_since = NULL, updated_at = $4 \
             WHERE id = $5 AND status = 'owed'",
        )
        .bind(raw)
        .bind(hash)
        .bind(i64::try_from(nonce).unwrap_or(i64::MAX))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Moves a signed refund on: to `confirmed` (mined), or back to `owed` (its transaction can
    /// never land; nothing moved), only from the transaction it was signed with.
    pub async fn refund_outcome(
        &self,
        id: i64,
        hash: &str,
        to: RefundStatus,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE dial_refunds SET status = $1, last_error = COALESCE($2, last_error), updated_at = $3 \
             WHERE id = $4 AND status = 'signed' AND tx_hash = $5",
        )
        .bind(to.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Notes what went wrong with a refund (and since when its nonce is taken by another
    /// transaction, `None` to clear), without moving it.
    pub async fn refund_note(
        &self,
        id: i64,
        error: Option<&str>,
        displaced_since: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dial_refunds SET last_error = COALESCE($1, last_error), displaced_since = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(error)
        .bind(displaced_since)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
