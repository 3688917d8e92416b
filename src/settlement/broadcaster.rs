//! A lane: one gas wallet on one chain. It owns the wallet's nonce, prices each transaction under the
//! chain's fee ceiling, records it before broadcasting, replaces it when it is stuck, and heals
//! after any nonce disturbance (nonce too low, dropped from the pool, an outside send from the same
//! key, a reorg that moved the chain's nonce back) by resynchronising from the chain.
//!
//! A lane is one task: sending, watching its receipts and healing never race each other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alloy::primitives::{B256, Bytes, U256};
use alloy::signers::local::PrivateKeySigner;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::json;
use tokio::sync::mpsc;

use super::fees::{Fees, Quote};
use super::tx::{self, ItemCalls, Unsigned};
use super::{ChainCtx, Item, LaneHealth, LaneShared, StepError, reconciler, watcher};
use crate::chain::{RpcCall, RpcError};
use crate::ledger::{Fence, LaneShare, Lease, NewTransaction, PaymentState, TxStatus};

/// One signed transaction of a slot.
#[derive(Debug, Clone)]
struct Attempt {
    tx_id: i64,
    hash: B256,
    raw: Bytes,
}

/// A batch in flight at one nonce, with every attempt signed for it (whichever is mined settles it).
#[derive(Debug)]
struct Slot {
    batch_id: i64,
    nonce: u64,
    attempts: Vec<Attempt>,
    /// What the latest attempt calls, with its gas and fees (`None`: not decodable, cannot be
    /// signed again).
    unsigned: Option<Unsigned>,
    /// When it was first sent at this nonce, and last replaced or rebroadcast.
    since: Instant,
    replaced_at: Instant,
    broadcast_at: Instant,
    /// When the chain's nonce was first seen past this slot's without a receipt of ours.
    gone_since: Option<Instant>,
}

/// A node may count a mined transaction in the account's nonce a moment before it serves the
/// receipt; a slot whose nonce is used and whose receipt is missing for this long was displaced.
const GONE_GRACE: Duration = Duration::from_secs(2);

/// The fastest a lane polls receipts. On anvil's automine, 64 connections settled 512/s
/// (p50 140 ms) polling every 50 ms and 927/s (p50 69 ms) every 10 ms (same machine, same hour).
const FASTEST_POLL: Duration = Duration::from_millis(10);

/// How often to poll receipts, from how long they have been taking to appear: a quarter of
/// that, between [`FASTEST_POLL`] and the configured `ceiling`. A chain that mines at once is
/// polled fast; one with 2 s blocks stays at the ceiling; nobody tunes it.
fn poll_interval(inclusion: Duration, ceiling: Duration) -> Duration {
    (inclusion / 4).clamp(FASTEST_POLL.min(ceiling), ceiling)
}

/// The moving average of receipt delays with one more sample (weight 1/4).
fn observe_inclusion(average: Duration, sample: Duration) -> Duration {
    average * 3 / 4 + sample / 4
}

/// What a node said to a broadcast.
#[derive(Debug)]
enum Broadcast {
    Accepted,
    /// Unreachable or garbled: try again later, it may well be in the pool.
    Unknown,
    NonceUsed,
    Underpriced,
    /// The fee cap is below the block's base fee (fees rose since the quote); anvil and some
    /// nodes refuse such a transaction instead of pooling it. Not the payments' fault.
    FeeCapTooLow(String),
    NoFunds,
    Refused(String),
}

struct Lane {
    ctx: Arc<ChainCtx>,
    signer: PrivateKeySigner,
    shared: Arc<LaneShared>,
    /// By nonce.
    slots: Vec<Slot>,
    /// The next nonce to sign with, as far as the lane knows.
    next_nonce: Option<u64>,
    /// What the last batch that found the lane dry needed.
    needed: U256,
    balance_checked: Instant,
    /// The lane's lease while this node holds it, and when it was last renewed.
    fence: Option<Fence>,
    renewed: Instant,
    /// The fence this process last held (`None`: never; a restart under the same name takes the
    /// lane back at once, a node that lost its fence waits for the lease to expire).
    last_fence: Option<i64>,
    /// Handing the lane to another node: no new batches; the lease ends once nothing is in flight.
    handing_over: bool,
    /// How long our transactions' receipts have been taking to appear after their broadcast
    /// (moving average): sets the poll tick ([`poll_interval`]).
    inclusion: Duration,
}

pub(super) async fn run(
    ctx: Arc<ChainCtx>,
    signer: PrivateKeySigner,
    shared: Arc<LaneShared>,
    mut batches: mpsc::Receiver<Vec<Item>>,
) {
    let inclusion = ctx.config.receipt_poll * 4;
    let mut lane = Lane {
        ctx,
        signer,
        shared,
        slots: Vec::new(),
        next_nonce: None,
        needed: U256::ZERO,
        balance_checked: Instant::now(),
        fence: None,
        renewed: Instant::now(),
        last_fence: None,
        handing_over: false,
        inclusion,
    };
    loop {
        if !lane.hold(&mut batches).await {
            return;
        }
        // Recovery is retried until it succeeds (a lane cannot work without it): from one
        // second, doubling with jitter up to 5 s (at most 10 s with the jitter).
        let mut retry = ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        while let Err(e) = lane.recover().await {
            lane.ctx.count_ledger_error(&e);
            let delay = retry.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(wallet = %lane.shared.wallet, error = %e, retry_in = ?delay, "lane recovery failed; retrying");
            tokio::time::sleep(delay).await;
        }
        if !lane.work(&mut batches).await {
            return;
        }
    }
}

impl Lane {
    /// Waits until this node holds the lane's lease (batches handed over meanwhile go back to
    /// the queue). False when the batcher is gone.
    async fn hold(&mut self, batches: &mut mpsc::Receiver<Vec<Item>>) -> bool {
        let ctx = Arc::clone(&self.ctx);
        let cfg = &ctx.config;
        loop {
            let take_expired = self.may_take().await;
            let wait = match ctx
                .ledger
                .take_lease(
                    ctx.chain_id(),
                    self.shared.wallet,
                    &cfg.node,
                    self.last_fence,
                    cfg.lane_lease,
                    take_expired,
                )
                .await
            {
                Ok(Lease::Held(fence)) => {
                    tracing::info!(wallet = %self.shared.wallet, fence = fence.token, node = %cfg.node, "holding the lane's lease");
                    self.last_fence = Some(fence.token);
                    self.fence = Some(fence);
                    self.renewed = Instant::now();
                    if matches!(self.shared.health(), LaneHealth::Elsewhere(_)) {
                        self.shared.set_health(LaneHealth::Ready);
                    }
                    return true;
                }
                Ok(Lease::Elsewhere { holder, expires_at }) => {
                    if !matches!(self.shared.health(), LaneHealth::Elsewhere(_)) {
                        tracing::info!(wallet = %self.shared.wallet, %holder, "the lane's lease is held by another node");
                    }
                    self.shared.set_health(LaneHealth::Elsewhere(holder));
                    let left = u64::try_from(expires_at.saturating_sub(crate::clock::now_ms()))
                        .unwrap_or(0);
                    if take_expired {
                        Duration::from_millis(left)
                            .clamp(Duration::from_millis(100), cfg.lane_lease / 3)
                    } else {
                        // Left to a node below its share; looked at again in case none comes.
                        cfg.lane_lease / 3
                    }
                }
                Err(e) => {
                    ctx.metrics.ledger_errors.inc();
                    tracing::warn!(wallet = %self.shared.wallet, error = %e, "cannot take the lane's lease; retrying");
                    Duration::from_secs(1)
                }
            };
            let until = tokio::time::sleep(wait);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    b = batches.recv() => match b {
                        Some(items) => self.take(items).await,
                        None => return false,
                    },
                    _ = &mut until => break,
                }
            }
        }
    }

    /// Renews the lease when a third of it has passed. False when it is lost (another node took
    /// it) or cannot be renewed before it runs out: the lane then stops signing.
    async fn keep_lease(&mut self) -> bool {
        let Some(fence) = &self.fence else {
            return false;
        };
        let lease = self.ctx.config.lane_lease;
        if self.renewed.elapsed() < lease / 3 {
            return true;
        }
        match self
            .ctx
            .ledger
            .take_lease(
                fence.chain_id,
                fence.wallet,
                &fence.holder,
                Some(fence.token),
                lease,
                // Its own lease, even if it ran out unnoticed: nobody else took it.
                true,
            )
            .await
        {
            Ok(Lease::Held(f)) if f.token == fence.token => {
                self.renewed = Instant::now();
                self.review_share().await;
                true
            }
            Ok(_) => {
                tracing::warn!(wallet = %self.shared.wallet, fence = fence.token, "the lane's lease was taken over; this node stops sending for it");
                false
            }
            Err(e) => {
                self.ctx.metrics.ledger_errors.inc();
                tracing::warn!(wallet = %self.shared.wallet, error = %e, "cannot renew the lane's lease");
                self.lease_fresh()
            }
        }
    }

    /// This node's share of the chain's lanes when lanes are spread (`None`: not spread, or
    /// the ledger cannot say now; the lane then acts as if alone).
    async fn share(&self) -> Option<LaneShare> {
        let cfg = &self.ctx.config;
        if !cfg.spread_lanes {
            return None;
        }
        let chain = self.ctx.chain_id();
        let lanes = self.ctx.lanes.len();
        match self
            .ctx
            .ledger
            .lane_share(chain, &cfg.node, lanes, cfg.lane_lease)
            .await
        {
            Ok(share) => Some(share),
            Err(e) => {
                self.ctx.metrics.ledger_errors.inc();
                tracing::warn!(wallet = %self.shared.wallet, error = %e, "cannot read the lanes' share");
                None
            }
        }
    }

    /// Whether this node may take the lane's lease once it expires: always, unless lanes are
    /// spread and this node already holds its fair share.
    async fn may_take(&self) -> bool {
        self.share()
            .await
            .is_none_or(|share| share.may_take(self.shared.wallet))
    }

    /// After a renewal: starts handing the lane over when this node holds more than its fair
    /// share and this is the lane to give (the last of its lanes by address), or stops doing so
    /// when the share grew again (a node left).
    async fn review_share(&mut self) {
        let Some(share) = self.share().await else {
            return;
        };
        let give = share.should_hand_over(self.shared.wallet);
        if give != self.handing_over {
            self.handing_over = give;
            if give {
                tracing::info!(wallet = %self.shared.wallet, held = share.held.len(), fair = share.fair, "handing the lane to another node once its transactions are mined");
                self.shared.set_health(LaneHealth::HandingOver);
            } else {
                self.set_ready();
            }
        }
    }

    /// Ends the lease of a lane being handed over once nothing of it is in flight. True when
    /// it was let go.
    async fn hand_over(&mut self) -> bool {
        if !self.handing_over || !self.slots.is_empty() {
            return false;
        }
        let Some(fence) = self.fence.clone() else {
            return false;
        };
        match self.ctx.ledger.release_lease(&fence).await {
            Ok(_) => {
                tracing::info!(wallet = %self.shared.wallet, fence = fence.token, "lane handed over: its lease is free for another node");
                self.handing_over = false;
                self.let_go();
                true
            }
            Err(e) => {
                self.ctx.metrics.ledger_errors.inc();
                tracing::warn!(wallet = %self.shared.wallet, error = %e, "cannot end the lane's lease; trying again");
                false
            }
        }
    }

    /// Back to taking batches, unless the lane is being handed over.
    fn set_ready(&self) {
        self.shared.set_health(if self.handing_over {
            LaneHealth::HandingOver
        } else {
            LaneHealth::Ready
        });
    }

    /// Whether the lease is surely still this node's (renewed less than its life ago).
    fn lease_fresh(&self) -> bool {
        self.fence.is_some() && self.renewed.elapsed() < self.ctx.config.lane_lease
    }

    /// Forgets the lane's in-flight state after losing its lease: the new holder recovers it
    /// from the ledger.
    fn let_go(&mut self) {
        self.fence = None;
        self.shared
            .load
            .fetch_sub(self.slots.len(), Ordering::Relaxed);
        self.slots.clear();
        self.next_nonce = None;
        self.publish();
        self.shared
            .set_health(LaneHealth::Elsewhere("another node".to_owned()));
        self.ctx.lane_freed.notify_one();
    }

    /// Sends and watches the lane's transactions while the lease is held. False when the batcher
    /// is gone.
    async fn work(&mut self, batches: &mut mpsc::Receiver<Vec<Item>>) -> bool {
        let lane = self;
        loop {
            // The lane's poll tick, not a retry: receipts are looked for at this rate while anything
            // is in flight (a failed poll or heal is simply tried again at the next tick).
            let poll = if lane.slots.is_empty() {
                Duration::from_secs(1)
            } else {
                poll_interval(lane.inclusion, lane.ctx.config.receipt_poll)
            };
            tokio::select! {
                b = batches.recv() => match b {
                    Some(items) => lane.take(items).await,
                    None => return false,
                },
                _ = tokio::time::sleep(poll) => {}
            }
            if !lane.keep_lease().await {
                lane.handing_over = false;
                lane.let_go();
                return true;
            }
            if lane.hand_over().await {
                return true;
            }
            if lane.shared.resync.swap(false, Ordering::Relaxed) {
                lane.heal_logged("asked to resynchronise").await;
            }
            if !lane.slots.is_empty()
                && let Err(e) = lane.poll().await
            {
                lane.ctx.count_ledger_error(&e);
                tracing::warn!(wallet = %lane.shared.wallet, error = %e, "receipt poll failed");
            }
            lane.check_balance().await;
        }
    }

    fn rpc(&self) -> &crate::chain::RpcClient {
        &self.ctx.network().rpc
    }

    fn publish(&self) {
        self.shared
            .next_nonce
            .store(self.next_nonce.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ctx
            .metrics
            .wallet_in_flight
            .with_label_values(&[
                self.ctx.network_label.as_str(),
                &self.shared.wallet.to_checksum(None),
            ])
            .set(self.slots.len() as i64);
    }

    /// Removes a finished slot; the batcher may hand this lane another batch.
    fn finish(&mut self, index: usize) {
        self.slots.remove(index);
        self.shared.load.fetch_sub(1, Ordering::Relaxed);
        self.publish();
        self.ctx.lane_freed.notify_one();
    }

    /// Resumes from the ledger: every open transaction of this wallet is in flight again and is
    /// rebroadcast; the first loop resynchronises the nonce. One bad row never stops it.
    async fn recover(&mut self) -> Result<(), StepError> {
        let open = self
            .ctx
            .ledger
            .open_transactions(self.ctx.chain_id())
            .await?;
        let mut slots: Vec<Slot> = Vec::new();
        for t in open.into_iter().filter(|t| t.wallet == self.shared.wallet) {
            let attempt = Attempt {
                tx_id: t.id,
                hash: t.tx_hash,
                raw: t.raw_tx.clone(),
            };
            let unsigned = tx::decode(&t.raw_tx);
            if unsigned.is_none() {
                tracing::error!(tx = %t.tx_hash, "stored transaction does not decode; watching it by hash only");
            }
            match slots.iter_mut().find(|s| s.batch_id == t.batch_id) {
                Some(s) => {
                    s.nonce = s.nonce.max(t.nonce);
                    s.attempts.push(attempt);
                    if unsigned.is_some() {
                        s.unsigned = unsigned;
                    }
                }
                None => slots.push(Slot {
                    batch_id: t.batch_id,
                    nonce: t.nonce,
                    attempts: vec![attempt],
                    unsigned,
                    since: Instant::now(),
                    replaced_at: Instant::now(),
                    broadcast_at: Instant::now(),
                    gone_since: None,
                }),
            }
        }
        slots.sort_by_key(|s| s.nonce);
        self.shared.load.fetch_add(slots.len(), Ordering::Relaxed);
        if !slots.is_empty() {
            tracing::info!(wallet = %self.shared.wallet, transactions = slots.len(), "resumed in-flight settlement transactions");
        }
        self.slots = slots;
        for i in 0..self.slots.len() {
            let attempts = self.slots[i].attempts.clone();
            for a in attempts {
                // Whatever the node says now, the first heal and poll sort it out.
                let _ = self.broadcast(&a).await;
            }
        }
        self.shared.resync.store(true, Ordering::Relaxed);
        self.publish();
        Ok(())
    }

    /// Signs, records and broadcasts a batch, or gives it back to the queue (its payments were
    /// never moved out of `queued`).
    async fn take(&mut self, items: Vec<Item>) {
        let ids: Vec<i64> = items.iter().map(|(p, _)| p.id).collect();
        let sent = match self.send(items).await {
            Ok(sent) => sent,
            Err(e) => {
                self.ctx.count_ledger_error(&e);
                tracing::warn!(wallet = %self.shared.wallet, error = %e, "batch not sent; back to the queue");
                false
            }
        };
        if !sent {
            // Back to the queue for every node, not only after this node's claims lapse.
            if let Err(e) = self
                .ctx
                .ledger
                .release_claims(&ids, &self.ctx.config.node)
                .await
            {
                // They pass on when the claims lapse instead.
                tracing::warn!(wallet = %self.shared.wallet, error = %e, "claims not released");
                self.ctx.count_ledger_error(&StepError::Ledger(e));
            }
        }
        self.ctx.unassign(ids);
        if !sent {
            self.shared.load.fetch_sub(1, Ordering::Relaxed);
            self.ctx.lane_freed.notify_one();
        }
    }

    async fn send(&mut self, items: Vec<Item>) -> Result<bool, StepError> {
        // Only the lease's holder signs (the ledger refuses the record otherwise, too).
        let Some(fence) = self.fence.clone().filter(|_| self.lease_fresh()) else {
            return Ok(false);
        };
        let calls: Vec<ItemCalls> = items.iter().map(|(_, c)| c.clone()).collect();
        let batch = tx::batch_call(&calls, self.ctx.settler().await);
        let gas_limit = self.gas_limit(&calls, &batch).await?;
        let Quote::Send(fees) = self.ctx.fees.quote(self.rpc()).await? else {
            return Ok(false);
        };
        let wallet = self.shared.wallet;
        let answers = self
            .rpc()
            .batch(&[
                RpcCall {
                    method: "eth_getTransactionCount",
                    params: json!([wallet, "pending"]),
                },
                RpcCall {
                    method: "eth_getBalance",
                    params: json!([wallet, "latest"]),
                },
            ])
            .await?;
        let quantity = |i: usize| -> Result<u128, StepError> {
            let v = answers
                .get(i)
                .cloned()
                .ok_or_else(|| RpcError::Malformed("short answer".into()))?
                .map_err(|e| RpcError::Malformed(e.message))?;
            Ok(tx::quantity(&v)?)
        };
        let pending = quantity(0)? as u64;
        let balance = U256::from(quantity(1)?);
        let needed = U256::from(gas_limit) * U256::from(fees.max_fee_per_gas);
        if balance < needed {
            self.needed = needed;
            self.balance_checked = Instant::now();
            if self.shared.set_health(LaneHealth::Dry { balance, needed }) {
                tracing::warn!(wallet = %wallet, %balance, %needed, "gas wallet cannot pay for its next transaction; it takes no batches until funded");
            }
            return Ok(false);
        }
        let nonce = self.choose_nonce(pending).await?;
        let unsigned = Unsigned {
            to: batch.to,
            input: batch.input,
            gas_limit,
            fees,
        };
        let Some((record, attempt_raw)) = self.sign(&unsigned, nonce) else {
            return Ok(false);
        };
        let ids: Vec<i64> = items.iter().map(|(p, _)| p.id).collect();
        // Written before the broadcast: a crash from here on is recovered by rebroadcasting it.
        let (batch_id, tx_id) = self.ctx.ledger.record_batch(&ids, &record, &fence).await?;
        self.next_nonce = Some(nonce + 1);
        let attempt = Attempt {
            tx_id,
            hash: record.tx_hash,
            raw: attempt_raw,
        };
        self.slots.push(Slot {
            batch_id,
            nonce,
            attempts: vec![attempt.clone()],
            unsigned: Some(unsigned),
            since: Instant::now(),
            replaced_at: Instant::now(),
            broadcast_at: Instant::now(),
            gone_since: None,
        });
        self.slots.sort_by_key(|s| s.nonce);
        self.publish();
        self.ctx
            .metrics
            .batch_size
            .with_label_values(&[self.ctx.network_label.as_str()])
            .observe(ids.len() as f64);
        tracing::debug!(wallet = %wallet, items = ids.len(), nonce, hash = %attempt.hash, gas_limit, "batch signed");
        let outcome = self.broadcast(&attempt).await;
        self.after_broadcast(batch_id, &attempt, outcome).await?;
        Ok(true)
    }

    /// The nonce of a new transaction: the chain's when nothing of ours is in flight (it knows of
    /// outside sends and of reorgs); ours when both agree; otherwise heal first.
    async fn choose_nonce(&mut self, pending: u64) -> Result<u64, StepError> {
        if self.slots.is_empty() {
            return Ok(pending);
        }
        if self.next_nonce == Some(pending) {
            return Ok(pending);
        }
        self.heal(&format!(
            "chain's pending nonce {pending}, ours {:?}",
            self.next_nonce
        ))
        .await?;
        Ok(self.next_nonce.unwrap_or(pending))
    }

    fn sign(&self, u: &Unsigned, nonce: u64) -> Option<(NewTransaction, Bytes)> {
        match tx::sign(
            &self.signer,
            self.ctx.chain_id(),
            nonce,
            u.gas_limit,
            u.fees,
            u.to,
            u.input.clone(),
        ) {
            Ok(signed) => Some((
                NewTransaction {
                    chain_id: self.ctx.chain_id(),
                    wallet: self.shared.wallet,
                    nonce,
                    raw_tx: signed.raw.clone(),
                    tx_hash: signed.hash,
                    gas_limit: u.gas_limit,
                    max_fee_per_gas: u.fees.max_fee_per_gas,
                    max_priority_fee_per_gas: u.fees.max_priority_fee_per_gas,
                },
                signed.raw,
            )),
            Err(e) => {
                self.shared
                    .set_health(LaneHealth::Stalled(format!("cannot sign: {e}")));
                None
            }
        }
    }

    /// Gas for a batch. Estimating a large batch costs the node as much as a hundred simulations, so
    /// once a receipt has taught us the gas of a plain item, plain batches use that (the largest seen,
    /// plus an allowance for a new payee); the first batch and any batch with deployments are
    /// estimated in their strict form.
    async fn gas_limit(
        &self,
        calls: &[ItemCalls],
        batch: &tx::BatchCall,
    ) -> Result<u64, StepError> {
        let plain = calls.iter().all(|c| c.deploy.is_none());
        let learned = *self
            .ctx
            .learned_item_gas
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let (true, Some(per_item)) = (plain, learned) {
            return Ok(tx::learned_gas(calls.len(), per_item));
        }
        let estimate = tx::estimate_gas(
            self.rpc(),
            self.shared.wallet,
            batch.to,
            &batch.strict_input,
        )
        .await?;
        Ok(estimate
            .map(tx::with_margin)
            .unwrap_or_else(|| tx::modelled_gas(calls)))
    }

    async fn broadcast(&self, a: &Attempt) -> Broadcast {
        // Recorded, not sent: a node that may have lost its lease sends nothing (the lane's new
        // holder rebroadcasts the recorded transaction).
        if !self.lease_fresh() {
            return Broadcast::Unknown;
        }
        let call = RpcCall {
            method: "eth_sendRawTransaction",
            params: json!([a.raw]),
        };
        let outcome = match self.rpc().request(call).await {
            Err(_) => Broadcast::Unknown,
            Ok(Ok(_)) => Broadcast::Accepted,
            Ok(Err(e)) => classify(&e.message),
        };
        if matches!(outcome, Broadcast::Accepted)
            && let Err(e) = self
                .ctx
                .ledger
                .set_tx_status(a.tx_id, TxStatus::Broadcast)
                .await
        {
            // Only a label: the transaction is recorded and in the pool; it stays in flight.
            tracing::warn!(tx = %a.hash, error = %e, "could not record the broadcast");
        }
        outcome
    }

    /// Acts on what the node said to a slot's attempt.
    async fn after_broadcast(
        &mut self,
        batch_id: i64,
        a: &Attempt,
        outcome: Broadcast,
    ) -> Result<(), StepError> {
        match outcome {
            Broadcast::Accepted | Broadcast::Unknown => {}
            Broadcast::NonceUsed | Broadcast::Underpriced => {
                tracing::info!(tx = %a.hash, ?outcome, "broadcast met another transaction at its nonce; resynchronising");
                self.shared.resync.store(true, Ordering::Relaxed);
            }
            Broadcast::NoFunds => {
                self.needed = self.needed.max(U256::from(1));
                self.shared.set_health(LaneHealth::Dry {
                    balance: U256::ZERO,
                    needed: self.needed,
                });
            }
            Broadcast::FeeCapTooLow(why) => {
                tracing::info!(tx = %a.hash, reason = %why, "fees rose past the quote; the batch is priced again");
                self.ctx.fees.invalidate();
                if let Some(payments) = self.refused_attempt(batch_id, a).await? {
                    reconciler::repriced(&self.ctx, &payments, &why).await?;
                }
            }
            Broadcast::Refused(why) => {
                tracing::warn!(tx = %a.hash, reason = %why, "node refused the transaction");
                if let Some(payments) = self.refused_attempt(batch_id, a).await? {
                    reconciler::unsettled(
                        &self.ctx,
                        &payments,
                        &format!("the node refused its transaction: {why}"),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Forgets an attempt the node refused. When it was the slot's last, the slot ends (never in
    /// any pool: its nonce is free again) and its payments are returned for the caller to requeue.
    async fn refused_attempt(
        &mut self,
        batch_id: i64,
        a: &Attempt,
    ) -> Result<Option<Vec<crate::ledger::Payment>>, StepError> {
        self.ctx
            .ledger
            .set_tx_status(a.tx_id, TxStatus::Dropped)
            .await?;
        let Some(i) = self.slots.iter().position(|s| s.batch_id == batch_id) else {
            return Ok(None);
        };
        self.slots[i].attempts.retain(|x| x.tx_id != a.tx_id);
        if !self.slots[i].attempts.is_empty() {
            return Ok(None);
        }
        self.finish(i);
        self.next_nonce = None;
        self.shared.resync.store(true, Ordering::Relaxed);
        Ok(Some(self.in_batch(batch_id).await?))
    }

    async fn in_batch(&self, batch_id: i64) -> Result<Vec<crate::ledger::Payment>, StepError> {
        Ok(self
            .ctx
            .ledger
            .batch_payments(batch_id)
            .await?
            .into_iter()
            .filter(|p| p.state == PaymentState::InBatch)
            .collect())
    }

    /// Receipts of every attempt in flight; late ones are rebroadcast, stuck ones replaced, and a
    /// nonce that moved without us heals the lane.
    async fn poll(&mut self) -> Result<(), StepError> {
        let hashes: Vec<(usize, Attempt)> = self
            .slots
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.attempts.iter().map(move |a| (i, a.clone())))
            .collect();
        let only: Vec<B256> = hashes.iter().map(|(_, a)| a.hash).collect();
        let receipts = watcher::receipts(&self.ctx, &only).await?;
        let mut done: Vec<usize> = Vec::new();
        for ((i, a), r) in hashes.iter().zip(&receipts) {
            if done.contains(i) {
                continue;
            }
            if let Some(r) = r
                && watcher::on_receipt(&self.ctx, a.tx_id, self.slots[*i].batch_id, r).await?
            {
                done.push(*i);
            }
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            let waited = self.slots[i].broadcast_at.elapsed();
            self.inclusion = observe_inclusion(self.inclusion, waited);
            self.finish(i);
        }
        if self
            .slots
            .iter()
            .any(|s| s.gone_since.is_some_and(|t| t.elapsed() >= GONE_GRACE))
        {
            return self.heal("a used nonce's receipt is still missing").await;
        }
        let late = self
            .slots
            .iter()
            .any(|s| s.broadcast_at.elapsed() >= self.ctx.config.rebroadcast_after);
        if !late {
            return Ok(());
        }
        let latest = self.chain_nonce("latest").await?;
        let lowest = self
            .slots
            .iter()
            .filter(|s| s.gone_since.is_none())
            .map(|s| s.nonce)
            .min();
        if lowest.is_some_and(|n| n != latest) {
            // Below: its nonce went to a transaction whose receipt we do not hold. Above: a gap
            // (a dropped transaction of ours, or a reorg moved the chain's nonce back).
            return self
                .heal(&format!(
                    "chain nonce {latest}, our lowest in flight {lowest:?}"
                ))
                .await;
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.broadcast_at.elapsed() < self.ctx.config.rebroadcast_after {
                continue;
            }
            let replace = s.since.elapsed() >= self.ctx.config.replace_after
                && s.replaced_at.elapsed() >= self.ctx.config.replace_after;
            if replace && self.replace(i).await? {
                continue;
            }
            let Some(a) = self.slots[i].attempts.last().cloned() else {
                continue;
            };
            let batch_id = self.slots[i].batch_id;
            self.slots[i].broadcast_at = Instant::now();
            let outcome = self.broadcast(&a).await;
            self.after_broadcast(batch_id, &a, outcome).await?;
        }
        Ok(())
    }

    /// Replaces a stuck slot at its nonce with fees raised by at least 12.5 % (never above the
    /// ceiling). Returns false when no replacement is allowed (the old one is rebroadcast).
    async fn replace(&mut self, i: usize) -> Result<bool, StepError> {
        let Some(fence) = self.fence.clone() else {
            return Ok(false);
        };
        let Some(old) = self.slots[i].unsigned.clone() else {
            return Ok(false);
        };
        let now = match self.ctx.fees.quote(self.rpc()).await? {
            Quote::Send(f) => Some(f),
            Quote::AboveCeiling { .. } => None,
        };
        let Some(fees) = self.ctx.fees.policy.bump(old.fees, now) else {
            tracing::warn!(
                nonce = self.slots[i].nonce,
                "stuck transaction not replaced: its replacement would exceed the fee ceiling"
            );
            self.slots[i].replaced_at = Instant::now();
            return Ok(false);
        };
        let u = Unsigned { fees, ..old };
        let nonce = self.slots[i].nonce;
        let Some((record, raw)) = self.sign(&u, nonce) else {
            return Ok(false);
        };
        let batch_id = self.slots[i].batch_id;
        let tx_id = self
            .ctx
            .ledger
            .record_attempt(batch_id, &record, &[], &fence)
            .await?;
        let a = Attempt {
            tx_id,
            hash: record.tx_hash,
            raw,
        };
        let slot = &mut self.slots[i];
        slot.attempts.push(a.clone());
        slot.unsigned = Some(u);
        slot.replaced_at = Instant::now();
        slot.broadcast_at = Instant::now();
        self.ctx
            .metrics
            .tx_replacements
            .with_label_values(&[self.ctx.network_label.as_str()])
            .inc();
        tracing::info!(nonce, tx = %a.hash, max_fee = fees.max_fee_per_gas, tip = fees.max_priority_fee_per_gas, "stuck transaction replaced");
        let outcome = self.broadcast(&a).await;
        self.after_broadcast(batch_id, &a, outcome).await?;
        Ok(true)
    }

    async fn chain_nonce(&self, tag: &str) -> Result<u64, StepError> {
        let v = self
            .rpc()
            .request(RpcCall {
                method: "eth_getTransactionCount",
                params: json!([self.shared.wallet, tag]),
            })
            .await?
            .map_err(|e| RpcError::Malformed(e.message))?;
        Ok(tx::quantity(&v)? as u64)
    }

    async fn heal_logged(&mut self, why: &str) {
        if let Err(e) = self.heal(why).await {
            self.ctx.count_ledger_error(&e);
            self.shared
                .set_health(LaneHealth::Stalled(format!("cannot resynchronise: {e}")));
            self.shared.resync.store(true, Ordering::Relaxed);
            tracing::warn!(wallet = %self.shared.wallet, error = %e, "lane cannot resynchronise; retrying");
        } else if matches!(self.shared.health(), LaneHealth::Stalled(_)) {
            self.set_ready();
            self.ctx.lane_freed.notify_one();
        }
    }

    /// Resynchronises from the chain: slots whose nonce the chain has used are settled by their
    /// receipt, or (no receipt: someone else's transaction took the nonce) their payments go back
    /// to the queue; the rest are made contiguous from the chain's nonce, signing again at fresh
    /// nonces what sat behind a gap.
    async fn heal(&mut self, why: &str) -> Result<(), StepError> {
        let wallet = self.shared.wallet.to_checksum(None);
        self.ctx
            .metrics
            .lane_resyncs
            .with_label_values(&[self.ctx.network_label.as_str(), &wallet])
            .inc();
        let latest = self.chain_nonce("latest").await?;
        tracing::info!(wallet = %wallet, latest, why, "resynchronising the lane's nonce");
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].nonce >= latest {
                i += 1;
                continue;
            }
            let hashes: Vec<B256> = self.slots[i].attempts.iter().map(|a| a.hash).collect();
            let receipts = watcher::receipts(&self.ctx, &hashes).await?;
            let batch_id = self.slots[i].batch_id;
            let mut settled = false;
            for (a, r) in self.slots[i].attempts.clone().iter().zip(&receipts) {
                if let Some(r) = r
                    && watcher::on_receipt(&self.ctx, a.tx_id, batch_id, r).await?
                {
                    settled = true;
                    break;
                }
            }
            if settled {
                self.finish(i);
                continue;
            }
            match self.slots[i].gone_since {
                Some(t) if t.elapsed() >= GONE_GRACE => {
                    tracing::warn!(wallet = %wallet, nonce = self.slots[i].nonce,
                        "nonce used by a transaction we did not send; its payments go back to the queue");
                    self.abandon(i, "its nonce was used by another transaction")
                        .await?;
                }
                Some(_) => i += 1,
                None => {
                    self.slots[i].gone_since = Some(Instant::now());
                    i += 1;
                }
            }
        }
        // Slots still waiting out the grace keep their (used) nonces; the rest follow the chain.
        let mut next = latest;
        for i in 0..self.slots.len() {
            if self.slots[i].nonce < latest {
                continue;
            }
            if self.slots[i].nonce != next {
                self.resign(i, next).await?;
            } else if let Some(a) = self.slots[i].attempts.last().cloned() {
                let batch_id = self.slots[i].batch_id;
                self.slots[i].broadcast_at = Instant::now();
                let outcome = self.broadcast(&a).await;
                self.after_broadcast(batch_id, &a, outcome).await?;
            }
            next += 1;
        }
        self.next_nonce = Some(next);
        self.publish();
        Ok(())
    }

    /// Gives up a slot that can never be mined: its attempts are dropped and its payments go back
    /// to the queue.
    async fn abandon(&mut self, i: usize, why: &str) -> Result<(), StepError> {
        for a in &self.slots[i].attempts {
            self.ctx
                .ledger
                .set_tx_status(a.tx_id, TxStatus::Dropped)
                .await?;
        }
        let payments = self.in_batch(self.slots[i].batch_id).await?;
        reconciler::unsettled(&self.ctx, &payments, why).await?;
        self.finish(i);
        Ok(())
    }

    /// Signs a slot's batch again at a fresh nonce (it sat behind a gap); its old attempts are
    /// superseded.
    async fn resign(&mut self, i: usize, nonce: u64) -> Result<(), StepError> {
        let Some(fence) = self.fence.clone() else {
            return Ok(());
        };
        let batch_id = self.slots[i].batch_id;
        let Some(old) = self.slots[i].unsigned.clone() else {
            // Cannot be signed again: its payments go back to the queue instead.
            return self
                .abandon(i, "its transaction sat behind a nonce gap")
                .await;
        };
        let fees = match self.ctx.fees.quote(self.rpc()).await? {
            Quote::Send(f) => f,
            Quote::AboveCeiling { .. } => old.fees,
        };
        let fees = Fees {
            max_fee_per_gas: fees.max_fee_per_gas.max(old.fees.max_fee_per_gas),
            max_priority_fee_per_gas: fees
                .max_priority_fee_per_gas
                .max(old.fees.max_priority_fee_per_gas),
        };
        let u = Unsigned { fees, ..old };
        let Some((record, raw)) = self.sign(&u, nonce) else {
            return Ok(());
        };
        let supersede: Vec<i64> = self.slots[i].attempts.iter().map(|a| a.tx_id).collect();
        let tx_id = self
            .ctx
            .ledger
            .record_attempt(batch_id, &record, &supersede, &fence)
            .await?;
        let a = Attempt {
            tx_id,
            hash: record.tx_hash,
            raw,
        };
        tracing::info!(batch_id, from = self.slots[i].nonce, to = nonce, tx = %a.hash, "batch signed again at a fresh nonce");
        let slot = &mut self.slots[i];
        slot.nonce = nonce;
        slot.attempts = vec![a.clone()];
        slot.unsigned = Some(u);
        slot.since = Instant::now();
        slot.replaced_at = Instant::now();
        slot.broadcast_at = Instant::now();
        let outcome = self.broadcast(&a).await;
        self.after_broadcast(batch_id, &a, outcome).await
    }

    /// A dry lane looks at its balance every few seconds and takes batches again once funded.
    async fn check_balance(&mut self) {
        if !matches!(self.shared.health(), LaneHealth::Dry { .. })
            || self.balance_checked.elapsed() < Duration::from_secs(2)
        {
            return;
        }
        self.balance_checked = Instant::now();
        let call = RpcCall {
            method: "eth_getBalance",
            params: json!([self.shared.wallet, "latest"]),
        };
        let Ok(Ok(v)) = self.rpc().request(call).await else {
            return;
        };
        let Ok(balance) = tx::quantity(&v) else {
            return;
        };
        let balance = U256::from(balance);
        if balance >= self.needed {
            tracing::info!(wallet = %self.shared.wallet, %balance, "gas wallet funded; taking batches again");
            self.set_ready();
            self.ctx.lane_freed.notify_one();
        } else {
            self.shared.set_health(LaneHealth::Dry {
                balance,
                needed: self.needed,
            });
        }
    }
}

/// Sorts a node's refusal of `eth_sendRawTransaction` (geth, reth, anvil and OP wording).
fn classify(message: &str) -> Broadcast {
    let m = message.to_ascii_lowercase();
    if m.contains("already known")
        || m.contains("already imported")
        || m.contains("known transaction")
    {
        Broadcast::Accepted
    } else if m.contains("nonce too low") || m.contains("nonce has already been used") {
        Broadcast::NonceUsed
    } else if m.contains("underpriced") {
        Broadcast::Underpriced
    } else if m.contains("less than block base fee")
        || m.contains("fee cap less than")
        || m.contains("max fee per gas less than")
        || m.contains("feecap too low")
    {
        Broadcast::FeeCapTooLow(message.to_owned())
    } else if m.contains("insufficient funds") {
        Broadcast::NoFunds
    } else {
        Broadcast::Refused(message.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_polled_as_fast_as_they_appear_and_no_faster_than_the_ceiling() {
        let ceiling = Duration::from_millis(50);
        let ms = Duration::from_millis;
        // A new lane polls at the ceiling.
        let mut avg = ceiling * 4;
        assert_eq!(poll_interval(avg, ceiling), ceiling);
        // Automine: receipts are there at the first poll; the tick falls to the floor.
        for _ in 0..30 {
            avg = observe_inclusion(avg, ms(2));
        }
        assert_eq!(poll_interval(avg, ceiling), FASTEST_POLL);
        // 2 s blocks: receipts take a second on average; the tick goes back to the ceiling.
        for _ in 0..30 {
            avg = observe_inclusion(avg, ms(1000));
        }
        assert_eq!(poll_interval(avg, ceiling), ceiling);
        // In between, a quarter of the delay.
        assert_eq!(poll_interval(ms(120), ceiling), ms(30));
        // A ceiling configured under the floor is kept.
        assert_eq!(poll_interval(ms(1), ms(5)), ms(5));
        assert_eq!(poll_interval(ms(400), ms(5)), ms(5));
    }

    #[test]
    fn node_refusals_are_sorted() {
        assert!(matches!(classify("already known"), Broadcast::Accepted));
        assert!(matches!(
            classify("nonce too low: next nonce 5, tx nonce 3"),
            Broadcast::NonceUsed
        ));
        assert!(matches!(
            classify("replacement transaction underpriced"),
            Broadcast::Underpriced
        ));
        assert!(matches!(
            classify("max fee per gas less than block base fee"),
            Broadcast::FeeCapTooLow(_)
        ));
        assert!(matches!(
            classify("fee cap less than block base fee: address 0x1, gasFeeCap: 1 baseFee: 2"),
            Broadcast::FeeCapTooLow(_)
        ));
        assert!(matches!(
            classify("insufficient funds for gas * price + value"),
            Broadcast::NoFunds
        ));
        assert!(matches!(
            classify("exceeds block gas limit"),
            Broadcast::Refused(_)
        ));
    }
}
