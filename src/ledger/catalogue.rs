//! The Bazaar catalogue as stored: one row per declared resource, its last sighting, aged out by
//! the reader (and pruned by the writer) after the catalogue's time to live.

use serde_json::Value;
use sqlx::Row;

use super::{Ledger, LedgerError};

/// A resource seen declared in a settled payment.
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    /// One row per key (HTTP: method and URL; MCP: URL and tool).
    pub key: &'a str,
    pub kind: &'a str,
    pub resource: &'a str,
    pub accepts: &'a Value,
    pub metadata: &'a Value,
}

/// A stored entry, as the facilitator serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueEntry {
    pub kind: String,
    pub resource: String,
    pub accepts: Vec<Value>,
    pub metadata: Value,
    pub last_seen_ms: i64,
}

impl Ledger {
    /// Records a sighting (inserting or refreshing its entry), and prunes entries not seen since
    /// `expired_before_ms`.
    pub async fn catalogue(
        &self,
        d: Sighting<'_>,
        expired_before_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO bazaar_resources (key, kind, resource, accepts, metadata, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (key) DO UPDATE SET accepts = excluded.accepts, \
             metadata = excluded.metadata, last_seen = excluded.last_seen",
        )
        .bind(d.key)
        .bind(d.kind)
        .bind(d.resource)
        .bind(d.accepts.to_string())
        .bind(d.metadata.to_string())
        .bind(crate::clock::now_ms())
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM bazaar_resources WHERE last_seen < $1")
            .bind(expired_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A page of entries seen since `since_ms`, newest sighting first (then by key, so pages are
    /// stable), optionally of one kind; and how many there are in all.
    pub async fn catalogue_page(
        &self,
        kind: Option<&str>,
        since_ms: i64,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<CatalogueEntry>, usize), LedgerError> {
        let kind = kind.unwrap_or("");
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM bazaar_resources WHERE last_seen >= $1 AND ($2 = '' OR kind = $2)",
        )
        .bind(since_ms)
        .bind(kind)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        let rows = sqlx::query(
            "SELECT kind, resource, accepts, metadata, last_seen FROM bazaar_resources \
             WHERE last_seen >= $1 AND ($2 = '' OR kind = $2) \
             ORDER BY last_seen DESC, key LIMIT $3 OFFSET $4",
        )
        .bind(since_ms)
        .bind(kind)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|r| {
                let accepts: String = r.try_get("accepts")?;
                let metadata: String = r.try_get("metadata")?;
                let corrupt = |what: &str| LedgerError::Corrupt(format!("bazaar {what}"));
                Ok(CatalogueEntry {
                    kind: r.try_get("kind")?,
                    resource: r.try_get("resource")?,
                    accepts: serde_json::from_str(&accepts).map_err(|_| corrupt("accepts"))?,
                    metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
                    last_seen_ms: r.try_get("last_seen")?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        Ok((entries, usize::try_from(total).unwrap_or(0)))
    }
}
