//! API keys as stored: a public id, a hash of the secret (never the secret), and each key's limits.

use alloy::primitives::{Address, U256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{hex, opt_parsed};
use super::{Ledger, LedgerError};

/// An API key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// Lower-case 0x hex of keccak256(secret).
    pub secret_hash: String,
    /// `payTo` addresses it may verify and settle for; empty: any.
    pub pay_to_allowlist: Vec<Address>,
    /// Requests per minute (default: the node's own limit).
    pub per_minute: Option<u32>,
    /// Atomic amount it may settle per rolling 24 hours.
    pub daily_amount: Option<U256>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

fn record_of(r: &AnyRow) -> Result<ApiKeyRecord, LedgerError> {
    let allowlist: String = r.try_get("pay_to_allowlist")?;
    let per_minute: Option<i64> = r.try_get("per_minute")?;
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        pay_to_allowlist: allowlist
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| LedgerError::Corrupt(format!("pay_to_allowlist {s:?}")))
            })
            .collect::<Result<_, _>>()?,
        per_minute: per_minute.and_then(|n| u32::try_from(n).ok()),
        daily_amount: opt_parsed(r, "daily_amount")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

const COLUMNS: &str =
    "id, name, secret_hash, pay_to_allowlist, per_minute, daily_amount, created_at, revoked_at";

impl Ledger {
    pub async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), LedgerError> {
        let allowlist = k
            .pay_to_allowlist
            .iter()
            .map(|a| hex(a.as_slice()))
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, pay_to_allowlist, per_minute, daily_amount, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.secret_hash)
        .bind(allowlist)
        .bind(k.per_minute.map(i64::from))
        .bind(k.daily_amount.map(|a| a.to_string()))
        .bind(k.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, LedgerError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_of).collect()
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, LedgerError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_of).transpose()
    }

    /// Revokes a key; `false` when there is no such active key.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, LedgerError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(crate::clock::now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether any key is active (a non-public node needs one).
    pub async fn has_active_api_key(&self) -> Result<bool, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n > 0)
    }

    /// The amount `key` has committed since `since_ms` (every payment it submitted that was not
    /// refused or failed: queued and in-flight ones count, so a burst cannot overrun the budget).
    pub async fn key_amount_since(&self, key: &str, since_ms: i64) -> Result<U256, LedgerError> {
        let rows = sqlx::query(
            "SELECT amount FROM payments WHERE api_key = $1 AND created_at >= $2 \
             AND state NOT IN ('refused', 'failed')",
        )
        .bind(key)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().try_fold(U256::ZERO, |sum, r| {
            let a: String = r.try_get("amount")?;
            let a: U256 = a
                .parse()
                .map_err(|_| LedgerError::Corrupt(format!("amount {a:?}")))?;
            Ok(sum.saturating_add(a))
        })
    }
}
