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

/// A number a payer owns.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedNumber {
    pub phone_number: String,
    pub country: String,
    pub expires_at: i64,
    pub texts_used: i64,
    pub texts_quota: i64,
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
        status: ReceiptStatus::parse(&status).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("unknown receipt status {status:?}").into(),
            ))
        })?,
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

    /// Adds a bought number owned by `owner` for a month, with a fresh text quota. `false` if the
    /// number is already taken.
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
            "INSERT INTO dial_numbers (phone_number, country, owner, provider, provider_id, expires_at, quota_period_start, texts_used, texts_quota, receipt_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $7) RETURNING expires_at",
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
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(row) => Ok(Some(row.try_get("expires_at")?)),
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

    /// Extends a number by a month from its expiry (or from now if it lapsed); returns the new expiry.
    pub async fn renew_number(&self, phone_number: &str) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE dial_numbers SET expires_at = (CASE WHEN expires_at > $1 THEN expires_at ELSE $1 END) + $2 \
             WHERE phone_number = $3 RETURNING expires_at",
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
             WHERE phone_number = $1 AND owner = $2 AND expires_at > $3 AND texts_used < texts_quota",
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

    pub async fn record_verification(
        &self,
        verification_id: &str,
        service: &str,
        phone_number: &str,
        receipt_id: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dial_verifications (verification_id, service, phone_number, status, receipt_id, created_at) VALUES ($1, $2, $3, 'waiting', $4, $5)",
        )
        .bind(verification_id)
        .bind(service)
        .bind(phone_number)
        .bind(receipt_id)
        .bind(now_ms())
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

fn owned_number_of(r: &AnyRow) -> Result<OwnedNumber, StoreError> {
    Ok(OwnedNumber {
        phone_number: r.try_get("phone_number")?,
        country: r.try_get("country")?,
        expires_at: r.try_get("expires_at")?,
        texts_used: r.try_get("texts_used")?,
        texts_quota: r.try_get("texts_quota")?,
    })
}
