//! Lane leases: which node writes a gas wallet's transactions. Nodes sharing a ledger take a
//! lane's lease when it is free or expired and renew it while they live; every change of holder
//! raises the lease's fence, and transaction rows are written only under the current fence
//! ([`Fence::check`] inside the writing transaction), so a node that was paused past its lease
//! and resumes can record, and so sign, nothing.

use std::time::Duration;

use alloy::primitives::Address;
use sqlx::{Any, Row, Transaction};

use super::rows::{hex, i64_of, parsed};
use super::{Ledger, LedgerError, now_ms};

/// A lane's lease as its holder took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub chain_id: u64,
    pub wallet: Address,
    pub holder: String,
    pub token: i64,
}

/// The answer to an attempt to take or renew a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Held by the caller until about `ttl` from now.
    Held(Fence),
    /// Held by another node (or by an earlier fence of this one) until `expires_at` (ms).
    Elsewhere { holder: String, expires_at: i64 },
}

impl Fence {
    /// Fails unless this fence is still the lane's current one. Locks the lease row until the
    /// surrounding transaction ends: a takeover waits for the write and then sees it.
    pub(super) async fn check(&self, tx: &mut Transaction<'_, Any>) -> Result<(), LedgerError> {
        let done = sqlx::query(
            "UPDATE lane_leases SET fence = fence WHERE chain_id = $1 AND wallet = $2 AND holder = $3 AND fence = $4",
        )
        .bind(i64_of(self.chain_id))
        .bind(hex(self.wallet.as_slice()))
        .bind(&self.holder)
        .bind(self.token)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(LedgerError::Fenced {
                wallet: self.wallet,
                token: self.token,
            })
        }
    }
}

impl Ledger {
    /// Takes or renews the lease of `wallet`'s lane for `holder`. `current` is the fence the
    /// caller holds (`None` when this process never held one: a node restarted under the same
    /// name takes its lane back at once, with a new fence). A fence the caller lost is never
    /// renewed; the lease is taken anew only once it expires, and only when `take_expired` (a node
    /// holding its fair share of lanes leaves expired ones to the others).
    pub async fn take_lease(
        &self,
        chain_id: u64,
        wallet: Address,
        holder: &str,
        current: Option<i64>,
        ttl: Duration,
        take_expired: bool,
    ) -> Result<Lease, LedgerError> {
        let now = now_ms();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let row = sqlx::query(
            "INSERT INTO lane_leases (chain_id, wallet, holder, fence, expires_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (chain_id, wallet) DO UPDATE SET \
               fence = CASE WHEN lane_leases.holder = excluded.holder AND lane_leases.fence = $5 \
                            THEN lane_leases.fence ELSE lane_leases.fence + 1 END, \
               holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE (lane_leases.holder = excluded.holder AND (lane_leases.fence = $5 OR $6 = 1) \
                    AND lane_leases.expires_at >= $7) \
                OR (lane_leases.expires_at < $7 AND $8 = 1) \
             RETURNING fence",
        )
        .bind(i64_of(chain_id))
        .bind(hex(wallet.as_slice()))
        .bind(holder)
        .bind(until)
        .bind(current.unwrap_or(-1))
        .bind(i64::from(current.is_none()))
        .bind(now)
        .bind(i64::from(take_expired))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Lease::Held(Fence {
                chain_id,
                wallet,
                holder: holder.to_owned(),
                token: row.try_get("fence")?,
            }));
        }
        let row = sqlx::query(
            "SELECT holder, expires_at FROM lane_leases WHERE chain_id = $1 AND wallet = $2",
        )
        .bind(i64_of(chain_id))
        .bind(hex(wallet.as_slice()))
        .fetch_one(&self.pool)
        .await?;
        Ok(Lease::Elsewhere {
            holder: row.try_get("holder")?,
            expires_at: row.try_get("expires_at")?,
        })
    }

    /// Says that `node` settles on `chain_id` and is alive now.
    pub async fn heartbeat(&self, chain_id: u64, node: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO cluster_nodes (chain_id, node, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (chain_id, node) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(i64_of(chain_id))
        .bind(node)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `node`'s part of the chain's lanes: the lanes whose lease it holds now and its fair share,
    /// counting as live the nodes seen within `ttl` and as lanes those leased within `ttl` (at
    /// least `lanes_here`, this node's own; a wallet dropped from every config stops counting).
    pub async fn lane_share(
        &self,
        chain_id: u64,
        node: &str,
        lanes_here: usize,
        ttl: Duration,
    ) -> Result<LaneShare, LedgerError> {
        let now = now_ms();
        let since = now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let counts = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM cluster_nodes WHERE chain_id = $1 AND seen_at >= $2) AS nodes, \
                    (SELECT COUNT(*) FROM lane_leases WHERE chain_id = $1 AND expires_at >= $2) AS lanes",
        )
        .bind(i64_of(chain_id))
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let nodes: i64 = counts.try_get("nodes")?;
        let lanes: i64 = counts.try_get("lanes")?;
        let held = sqlx::query(
            "SELECT wallet FROM lane_leases WHERE chain_id = $1 AND holder = $2 AND expires_at >= $3 ORDER BY wallet",
        )
        .bind(i64_of(chain_id))
        .bind(node)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| parsed::<Address>(r, "wallet"))
        .collect::<Result<Vec<_>, _>>()?;
        let lanes = usize::try_from(lanes).unwrap_or(0).max(lanes_here);
        let nodes = usize::try_from(nodes).unwrap_or(0).max(1);
        Ok(LaneShare {
            held,
            fair: lanes.div_ceil(nodes),
        })
    }

    /// Ends `fence`'s lease now (a lane handed over with nothing in flight): the next node that
    /// looks takes it, with a new fence. False when the fence was no longer current.
    pub async fn release_lease(&self, fence: &Fence) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE lane_leases SET expires_at = 0 WHERE chain_id = $1 AND wallet = $2 AND holder = $3 AND fence = $4",
        )
        .bind(i64_of(fence.chain_id))
        .bind(hex(fence.wallet.as_slice()))
        .bind(&fence.holder)
        .bind(fence.token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A node's part of a chain's lanes, as the ledger saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneShare {
    /// The lanes it holds now, by wallet address (the order every node sees).
    pub held: Vec<Address>,
    /// ceil(lanes / live nodes).
    pub fair: usize,
}

impl LaneShare {
    /// Whether `wallet` is the one lane this node should hand over: it holds more than its share
    /// and `wallet` is the last of its lanes (one lane at a time, the same one on every look).
    pub fn should_hand_over(&self, wallet: Address) -> bool {
        self.held.len() > self.fair && self.held.last() == Some(&wallet)
    }

    /// Whether this node may take `wallet`'s lane: it is already its own, or it holds less than
    /// its share.
    pub fn may_take(&self, wallet: Address) -> bool {
        self.held.contains(&wallet) || self.held.len() < self.fair
    }
}
