//! payment-identifier records: a client's id bound to the payload that first carried it, in one
//! merchant's scope, with the valid `/verify` answer kept for retries.

use alloy::primitives::B256;
use sqlx::Row;

use super::rows::{hex, parsed};
use super::{Ledger, LedgerError};

/// What an id is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundIdentifier {
    pub payload_digest: B256,
    /// The recorded `/verify` answer (JSON), once a valid one was given.
    pub verify_answer: Option<String>,
}

impl Ledger {
    /// Binds `id` in `scope` to `digest` unless it is bound already, and returns the binding (the
    /// caller compares digests: another payload's digest is a conflict). Race-free: the first
    /// insert wins and every caller reads what won.
    pub async fn bind_identifier(
        &self,
        scope: &str,
        id: &str,
        digest: B256,
    ) -> Result<BoundIdentifier, LedgerError> {
        sqlx::query(
            "INSERT INTO payment_identifiers (scope, id, payload_digest, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (scope, id) DO NOTHING",
        )
        .bind(scope)
        .bind(id)
        .bind(hex(digest.as_slice()))
        .bind(crate::clock::now_ms())
        .execute(&self.pool)
        .await?;
        self.identifier(scope, id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt(format!("payment identifier {id} vanished")))
    }

    /// Keeps `answer` as the `/verify` answer of `id` if its payload is `digest` and none is kept
    /// yet; returns the binding as it now stands (a concurrent caller's answer may have won).
    pub async fn keep_verify_answer(
        &self,
        scope: &str,
        id: &str,
        digest: B256,
        answer: &str,
    ) -> Result<BoundIdentifier, LedgerError> {
        sqlx::query(
            "UPDATE payment_identifiers SET verify_answer = $1 \
             WHERE scope = $2 AND id = $3 AND payload_digest = $4 AND verify_answer IS NULL",
        )
        .bind(answer)
        .bind(scope)
        .bind(id)
        .bind(hex(digest.as_slice()))
        .execute(&self.pool)
        .await?;
        self.identifier(scope, id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt(format!("payment identifier {id} vanished")))
    }

    async fn identifier(
        &self,
        scope: &str,
        id: &str,
    ) -> Result<Option<BoundIdentifier>, LedgerError> {
        let row = sqlx::query(
            "SELECT payload_digest, verify_answer FROM payment_identifiers WHERE scope = $1 AND id = $2",
        )
        .bind(scope)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(BoundIdentifier {
                payload_digest: parsed(&r, "payload_digest")?,
                verify_answer: r.try_get("verify_answer")?,
            })
        })
        .transpose()
    }
}
