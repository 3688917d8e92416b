//! Who may call `/verify` and `/settle`: optional bearer API keys, stored hashed, each limited to
//! some `payTo` addresses and a daily settled amount. A node without keys must say it is public
//! (`server.public = true`); a public node still honours a key that is presented.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256, keccak256};

use crate::ledger::{ApiKeyRecord, Ledger, LedgerError};
use crate::limits::{RateLimitBackend, Verdict};

/// How long a key's record is trusted from memory: a revocation takes effect within this.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// Every key's text starts with this, so a leaked key is recognisable (and greppable) as ours.
const PREFIX: &str = "x402d_";

/// Why a caller may not go on.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("an API key is required: send Authorization: Bearer x402d_…")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("this API key may not settle for payTo {0}")]
    PayToNotAllowed(Address),
    #[error(
        "this API key's daily budget of {budget} is spent ({spent} in the last 24 h; this payment is {amount})"
    )]
    BudgetExhausted {
        budget: U256,
        spent: U256,
        amount: U256,
    },
    #[error(
        "more than {per_minute} requests a minute with this API key; retry in {retry_after_secs} s"
    )]
    RateLimited {
        per_minute: u32,
        retry_after_secs: u64,
    },
    #[error("ledger unavailable: {0}")]
    Ledger(#[from] LedgerError),
}

/// An authorised caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: an anonymous caller of a public node.
    pub key: Option<ApiKeyRecord>,
    /// Where the key stands against its rate, when it has one (for `X-RateLimit-Remaining`).
    pub rate: Option<Verdict>,
}

/// A new key: the text handed to its owner once, and the record stored.
pub struct NewKey {
    pub text: String,
    pub record: ApiKeyRecord,
}

/// What a key may do, as its creator asked.
#[derive(Debug, Clone, Default)]
pub struct KeyLimits {
    pub pay_to_allowlist: Vec<Address>,
    pub per_minute: Option<u32>,
    pub daily_amount: Option<U256>,
}

/// Makes a key: 64 random bits of id (public, in listings) and 128 of secret. Only keccak256 of
/// the secret is stored; a fast hash is enough for a random 128-bit secret (no dictionary to
/// try), and it keeps the check off the request's critical path.
pub fn new_key(name: &str, limits: KeyLimits) -> NewKey {
    let id = format!("{:016x}", rand::random::<u64>());
    let secret = format!("{:032x}", rand::random::<u128>());
    NewKey {
        text: format!("{PREFIX}{id}_{secret}"),
        record: ApiKeyRecord {
            id,
            name: name.to_owned(),
            secret_hash: secret_hash(&secret),
            pay_to_allowlist: limits.pay_to_allowlist,
            per_minute: limits.per_minute,
            daily_amount: limits.daily_amount,
            created_at: crate::clock::now_ms(),
            revoked_at: None,
        },
    }
}

fn secret_hash(secret: &str) -> String {
    keccak256(secret.as_bytes()).to_string()
}

/// `x402d_<id>_<secret>` → (id, secret).
fn split_key(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 32)).then_some((id, secret))
}

/// Checks callers against the keys in the ledger.
pub struct Access {
    public: bool,
    cache: Mutex<HashMap<String, (Instant, Option<ApiKeyRecord>)>>,
    /// One limiter per distinct `per_minute` (a quota is per limiter), keyed by key id.
    limiters: Mutex<HashMap<u32, Arc<dyn RateLimitBackend<String>>>>,
    limits: crate::limits::Limits,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Access {
    pub fn new(public: bool, limits: crate::limits::Limits) -> Self {
        Access {
            public,
            limits,
            cache: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// Where the limits are counted.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.limits
    }

    /// Counts a request of `key` against its `per_minute`, if it has one.
    ///
    /// # Errors
    /// Past the key's rate.
    pub async fn check_rate(&self, key: &ApiKeyRecord) -> Result<Option<Verdict>, AccessError> {
        let Some(per_minute) = key.per_minute else {
            return Ok(None);
        };
        let limiter = self
            .limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(per_minute)
            .or_insert_with(|| self.limits.backend("key", per_minute))
            .clone();
        match limiter.check(key.id.clone()).await {
            Verdict::Limited { retry_after_secs } => Err(AccessError::RateLimited {
                per_minute,
                retry_after_secs,
            }),
            allowed => Ok(Some(allowed)),
        }
    }

    /// The caller's key from an `Authorization` header value, if any: `None` for an anonymous
    /// caller of a public node.
    ///
    /// # Errors
    /// No key on a node that is not public, or a key that is malformed, unknown or revoked.
    pub async fn caller(
        &self,
        ledger: &Ledger,
        authorization: Option<&[u8]>,
    ) -> Result<Option<ApiKeyRecord>, AccessError> {
        let Some(header) = authorization else {
            return if self.public {
                Ok(None)
            } else {
                Err(AccessError::Missing)
            };
        };
        let text = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AccessError::Invalid)?;
        let (id, secret) = split_key(text).ok_or(AccessError::Invalid)?;
        let record = self.record(ledger, id).await?.ok_or(AccessError::Invalid)?;
        // Compared as hashes: equal-length hex of a keyed digest, so timing reveals nothing usable.
        if record.revoked_at.is_some() || record.secret_hash != secret_hash(secret) {
            return Err(AccessError::Invalid);
        }
        Ok(Some(record))
    }

    async fn record(&self, ledger: &Ledger, id: &str) -> Result<Option<ApiKeyRecord>, LedgerError> {
        if let Some((at, r)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(id)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(r.clone());
        }
        let r = ledger.api_key(id).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Unknown ids are cached too (a caller guessing ids costs one query per id per period);
        // the map is bounded by clearing it when it grows past any plausible number of keys.
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(id.to_owned(), (Instant::now(), r.clone()));
        Ok(r)
    }
}

/// May `key` act for `pay_to`?
///
/// # Errors
/// When its allowlist is set and does not hold `pay_to`.
pub fn check_pay_to(key: &ApiKeyRecord, pay_to: Address) -> Result<(), AccessError> {
    if key.pay_to_allowlist.is_empty() || key.pay_to_allowlist.contains(&pay_to) {
        Ok(())
    } else {
        Err(AccessError::PayToNotAllowed(pay_to))
    }
}

/// May `key` commit `amount` more within its daily budget?
///
/// # Errors
/// When the amount committed in the last 24 hours plus `amount` exceeds the budget.
pub async fn check_budget(
    ledger: &Ledger,
    key: &ApiKeyRecord,
    amount: U256,
) -> Result<(), AccessError> {
    let Some(budget) = key.daily_amount else {
        return Ok(());
    };
    let spent = ledger
        .key_amount_since(&key.id, crate::clock::now_ms() - 86_400_000)
        .await?;
    if spent.saturating_add(amount) > budget {
        return Err(AccessError::BudgetExhausted {
            budget,
            spent,
            amount,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_only_in_their_own_shape() {
        let k = new_key("t", KeyLimits::default());
        let (id, secret) = split_key(&k.text).unwrap();
        assert_eq!(id, k.record.id);
        assert_eq!(secret_hash(secret), k.record.secret_hash);
        for bad in [
            "",
            "x402d_",
            "x402d_0123456789abcdef",
            "x402d_0123456789abcdef_short",
            "x402d_0123456789abcdeg_0123456789abcdef0123456789abcdef",
            "other_0123456789abcdef_0123456789abcdef0123456789abcdef",
            "x402d_0123456789abcdef_0123456789abcdef0123456789abcdé",
        ] {
            assert!(split_key(bad).is_none(), "{bad:?}");
        }
    }
}
