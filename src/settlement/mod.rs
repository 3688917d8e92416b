//! The settlement engine: every claimed payment is settled on chain exactly once, in batches, from
//! any number of gas wallets, surviving reorgs, fee spikes, stuck and dropped transactions, outside
//! sends and restarts. The ledger is the source of truth; in-memory state is a cache of it,
//! rebuilt on start-up.
//!
//! Per served chain:
//! - [`batcher`] takes due payments from the queue, simulates them (a refusal never costs gas) and
//!   hands each batch to the least-loaded ready lane;
//! - [`broadcaster`] is one lane per gas wallet: it owns the wallet's nonce, prices fees under the
//!   chain's ceiling, signs and records before broadcasting, replaces stuck transactions, and heals
//!   after any nonce disturbance;
//! - [`watcher`] reads receipts of a lane's transactions, and follows settled payments through
//!   confirmations and the finality window, noticing reorgs;
//! - [`reconciler`] decides what becomes of a payment its transaction did not settle.
//!
//! Every payment state change goes through [`crate::ledger::Ledger::transition`].

mod batcher;
mod broadcaster;
pub mod fees;
mod reconciler;
mod share;
pub mod tx;
mod watcher;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use tokio::sync::{Notify, mpsc};

use crate::chain::{Chains, Network, RpcError};
use crate::ledger::{Ledger, LedgerError, Payment, Signal};
use crate::telemetry::Metrics;
use fees::{FeeOracle, FeePolicy};

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// Blocks (including the one it is in) before a payment is `confirmed`.
    pub confirmations: u64,
    /// While a lane's transactions are in flight, gather payments for at most this long.
    pub batch_window: Duration,
    /// At most this many payments in one transaction.
    pub batch_max_items: usize,
    /// A batch's modelled gas ([`tx::modelled_gas`]) stays under this.
    pub batch_max_gas: u64,
    /// The slowest in-flight transactions' receipts are polled: the lane polls faster (down to
    /// 10 ms) when receipts appear sooner (a chain that mines at once).
    pub receipt_poll: Duration,
    /// Rebroadcast a transaction that has no receipt after this long (a dropped pool forgets it).
    pub rebroadcast_after: Duration,
    /// Replace a transaction not mined after this long, at the same nonce with higher fees.
    pub replace_after: Duration,
    /// How far back to look for someone else's `AuthorizationUsed` log.
    pub log_lookback_blocks: u64,
    /// Blocks during which a settled payment's block hash is re-checked.
    pub finality_blocks: u64,
    /// At most this many of our transactions in flight per wallet (node pools take ~16 per account).
    pub max_in_flight: usize,
    /// A reorged authorization is resubmitted only if it stays valid this much longer (seconds).
    pub valid_before_buffer_seconds: u64,
    /// This node's name on lane leases.
    pub node: String,
    /// A lane lease's life unrenewed.
    pub lane_lease: Duration,
    /// Hand lanes over to other live nodes beyond a fair share (see `settlement.spread_lanes`).
    pub spread_lanes: bool,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            confirmations: 1,
            batch_window: Duration::from_millis(200),
            batch_max_items: 100,
            batch_max_gas: 8_000_000,
            receipt_poll: Duration::from_millis(50),
            rebroadcast_after: Duration::from_secs(3),
            replace_after: Duration::from_secs(20),
            log_lookback_blocks: 50_000,
            finality_blocks: 600,
            max_in_flight: 12,
            valid_before_buffer_seconds: 6,
            node: "x402d".to_owned(),
            lane_lease: Duration::from_secs(10),
            spread_lanes: true,
        }
    }
}

/// One chain's settlement policy besides the engine's tunables.
#[derive(Debug, Clone, Default)]
pub struct ChainPolicy {
    pub fees: FeePolicy,
    /// Wei all lanes together may spend in 24 hours.
    pub daily_budget_wei: Option<U256>,
}

/// Why a step could not finish; it is retried later, nothing is lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Wake-ups for requests waiting on a payment. Missing one is harmless: waiters also re-read the
/// ledger periodically.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<i64, Arc<Notify>>>,
    /// To the other nodes sharing a PostgreSQL ledger ([`share`]).
    outbox: std::sync::OnceLock<mpsc::UnboundedSender<Signal>>,
}

impl Waiters {
    fn get(&self, id: i64) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }

    fn tell_others(&self, signal: Signal) {
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(signal);
        }
    }

    fn notify(&self, id: i64) {
        self.notify_here(id);
        self.tell_others(Signal::Moved(id));
    }

    fn notify_here(&self, id: i64) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(&id) {
            n.notify_waiters();
        }
    }

    fn notify_all(&self, ids: &[i64]) {
        for id in ids {
            self.notify(*id);
        }
    }

    fn release(&self, id: i64, handle: Arc<Notify>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. Nobody else waits.
        if Arc::strong_count(&handle) <= 2 {
            map.remove(&id);
        }
    }
}

/// Whether a lane takes batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneHealth {
    Ready,
    /// Its ETH cannot pay for its next transaction; re-checked every few seconds.
    Dry {
        balance: U256,
        needed: U256,
    },
    /// It cannot make progress for another reason (said here); it keeps trying.
    Stalled(String),
    /// Another node sharing the ledger holds its lease and sends its transactions; this node
    /// takes the lane over if that lease expires.
    Elsewhere(String),
    /// Being handed to another live node (this one holds more than its fair share of lanes): it
    /// takes no new batch and ends its lease once what it sent is mined.
    HandingOver,
}

impl std::fmt::Display for LaneHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaneHealth::Ready => f.write_str("ready"),
            LaneHealth::Dry { balance, needed } => write!(
                f,
                "out of ETH: balance {balance} wei, the next transaction needs up to {needed} wei"
            ),
            LaneHealth::Stalled(why) => write!(f, "stalled: {why}"),
            LaneHealth::Elsewhere(holder) => write!(f, "sent by node {holder}"),
            LaneHealth::HandingOver => f.write_str("handing over to another node"),
        }
    }
}

/// What the batcher and the operator see of a lane.
#[derive(Debug)]
pub(crate) struct LaneShared {
    wallet: Address,
    /// Transactions in flight plus batches handed over and not yet signed.
    load: AtomicUsize,
    health: Mutex<LaneHealth>,
    /// Set when something outside the lane saw its nonce disturbed (a reorg).
    resync: AtomicBool,
    /// The next nonce it will sign with (`u64::MAX`: to be read from the chain).
    next_nonce: AtomicU64,
}

impl LaneShared {
    fn health(&self) -> LaneHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_health(&self, h: LaneHealth) -> bool {
        let mut g = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *g != h;
        *g = h;
        changed
    }
}

/// A payment handed to a lane, with the calls that settle it.
pub(crate) type Item = (Payment, tx::ItemCalls);

struct LaneHandle {
    shared: Arc<LaneShared>,
    batches: mpsc::Sender<Vec<Item>>,
}

/// Everything one chain's batcher, lanes and watcher share.
pub(crate) struct ChainCtx {
    ledger: Ledger,
    chains: Chains,
    index: usize,
    config: SettlementConfig,
    fees: FeeOracle,
    daily_budget_wei: Option<U256>,
    waiters: Arc<Waiters>,
    metrics: Arc<Metrics>,
    network_label: String,
    /// Payments handed to a lane and not yet recorded in a batch: the batcher skips them.
    assigned: Mutex<HashSet<i64>>,
    lanes: Vec<LaneHandle>,
    /// Wakes the batcher: a payment was queued.
    wake: Notify,
    /// Wakes the batcher: a lane finished a transaction, gave a batch back, or recovered.
    lane_freed: Notify,
    /// Why the queue is not moving, when it is not.
    waiting: Mutex<Option<String>>,
    /// The most gas one plain item has used in our receipts.
    learned_item_gas: Mutex<Option<u64>>,
    /// The highest block a receipt of ours was recorded in: the finality watcher's per-head check
    /// must look at blocks it never saw as a head (a payment included and reorged between ticks).
    newest_inclusion: std::sync::atomic::AtomicU64,
    /// The configured batch settler, once its code was seen on the chain (`None`: Multicall3).
    settler: tokio::sync::OnceCell<Option<Address>>,
}

impl ChainCtx {
    fn network(&self) -> &Network {
        &self.chains.networks()[self.index]
    }

    fn chain_id(&self) -> u64 {
        self.network().chain_id.0
    }

    /// The chain's batch settler if one is configured and its code is there (checked once; an
    /// address without code is said in the log and left for Multicall3, which is always there).
    async fn settler(&self) -> Option<Address> {
        let at = self.network().batch_settler?;
        let checked = self.settler.get_or_try_init(|| async {
            let code = self
                .network()
                .rpc
                .request(crate::chain::RpcCall::get_code(at))
                .await;
            match code {
                Ok(Ok(v)) if v.as_str().is_some_and(|c| c.len() > 2) => Ok(Some(at)),
                Ok(Ok(_)) => {
                    tracing::error!(network = %self.network_label, settler = %at,
                        "batch_settler has no code on this chain: batches go through Multicall3");
                    Ok(None)
                }
                // Asked again with the next batch.
                _ => Err(()),
            }
        });
        checked.await.ok().copied().flatten()
    }

    fn unassign(&self, ids: impl IntoIterator<Item = i64>) {
        let mut a = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            a.remove(&id);
        }
    }

    fn set_waiting(&self, why: Option<String>) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if *w != why {
            if let Some(why) = &why {
                tracing::warn!(network = %self.network_label, "settlement waits: {why}");
            } else if w.is_some() {
                tracing::info!(network = %self.network_label, "settlement moves again");
            }
            *w = why;
        }
        self.metrics
            .settlement_waiting
            .with_label_values(&[&self.network_label])
            .set(i64::from(w.is_some()));
    }

    fn lane_of(&self, wallet: Address) -> Option<&LaneShared> {
        self.lanes
            .iter()
            .map(|l| l.shared.as_ref())
            .find(|l| l.wallet == wallet)
    }

    fn count_ledger_error(&self, e: &StepError) {
        if let StepError::Ledger(_) = e {
            self.metrics.ledger_errors.inc();
        }
    }
}

/// A lane as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaneView {
    pub wallet: String,
    pub health: String,
    /// Can settle payments: it sends here, or on the node holding its lease.
    pub ready: bool,
    pub in_flight: usize,
    pub next_nonce: Option<u64>,
}

/// A chain's engine as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainView {
    pub network: String,
    /// Why queued payments are not moving, when they are not.
    pub waiting: Option<String>,
    pub lanes: Vec<LaneView>,
}

/// The engine: per served chain a batcher, a lane per gas wallet and a watcher, all sharing the
/// ledger.
pub struct Settlement {
    ledger: Ledger,
    waiters: Arc<Waiters>,
    chains: HashMap<u64, Arc<ChainCtx>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("chains", &self.chains.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Settlement {
    /// Starts every chain's engine; each lane first recovers its transactions from the ledger.
    /// `policies` are per network, in the order of `chains.networks()` (missing: defaults).
    pub async fn start(
        ledger: Ledger,
        chains: Chains,
        signers: Vec<PrivateKeySigner>,
        config: SettlementConfig,
        policies: Vec<ChainPolicy>,
        metrics: Arc<Metrics>,
    ) -> Result<Settlement, LedgerError> {
        let waiters = Arc::new(Waiters::default());
        let mut contexts = HashMap::new();
        let mut tasks = Vec::new();
        for index in 0..chains.networks().len() {
            let policy = policies.get(index).cloned().unwrap_or_default();
            let network_label = chains.networks()[index].chain_id.caip2();
            let mut lanes = Vec::new();
            let mut receivers = Vec::new();
            for signer in &signers {
                let (tx, rx) = mpsc::channel(2);
                let shared = Arc::new(LaneShared {
                    wallet: signer.address(),
                    load: AtomicUsize::new(0),
                    health: Mutex::new(LaneHealth::Ready),
                    resync: AtomicBool::new(true),
                    next_nonce: AtomicU64::new(u64::MAX),
                });
                lanes.push(LaneHandle {
                    shared: shared.clone(),
                    batches: tx,
                });
                receivers.push((signer.clone(), shared, rx));
            }
            let ctx = Arc::new(ChainCtx {
                ledger: ledger.clone(),
                chains: chains.clone(),
                index,
                config: config.clone(),
                fees: FeeOracle::new(policy.fees),
                daily_budget_wei: policy.daily_budget_wei,
                waiters: waiters.clone(),
                metrics: metrics.clone(),
                network_label,
                assigned: Mutex::new(HashSet::new()),
                lanes,
                wake: Notify::new(),
                lane_freed: Notify::new(),
                waiting: Mutex::new(None),
                learned_item_gas: Mutex::new(None),
                newest_inclusion: std::sync::atomic::AtomicU64::new(0),
                settler: tokio::sync::OnceCell::new(),
            });
            // Counted among the chain's live nodes before any lane looks at its share.
            ledger.heartbeat(ctx.chain_id(), &config.node).await?;
            tasks.push(tokio::spawn(presence(ctx.clone())));
            for (signer, shared, rx) in receivers {
                tasks.push(tokio::spawn(broadcaster::run(
                    ctx.clone(),
                    signer,
                    shared,
                    rx,
                )));
            }
            tasks.push(tokio::spawn(batcher::run(ctx.clone())));
            tasks.push(tokio::spawn(watcher::run_finality(ctx.clone())));
            contexts.insert(ctx.chain_id(), ctx);
        }
        if ledger.backend() == "postgres" {
            let (outbox, inbox) = mpsc::unbounded_channel();
            let _ = waiters.outbox.set(outbox);
            let wakes: HashMap<u64, Arc<ChainCtx>> = contexts.clone();
            tasks.extend(share::start(ledger.clone(), inbox, waiters.clone(), wakes));
        }
        Ok(Settlement {
            ledger,
            waiters,
            chains: contexts,
            tasks,
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Tells a chain's batcher that a payment was queued.
    pub fn wake(&self, chain_id: u64) {
        if let Some(ctx) = self.chains.get(&chain_id) {
            ctx.wake.notify_one();
        }
        self.waiters.tell_others(Signal::Queued(chain_id));
    }

    /// Whether some gas wallet on the chain can pay for a transaction now (`false`: every lane is
    /// out of ETH; payments wait until one is funded).
    pub fn can_pay(&self, chain_id: u64) -> bool {
        self.chains.get(&chain_id).is_some_and(|ctx| {
            ctx.lanes
                .iter()
                .any(|l| !matches!(l.shared.health(), LaneHealth::Dry { .. }))
        })
    }

    /// Every chain's lanes and why its queue waits, if it does.
    pub fn views(&self) -> Vec<ChainView> {
        let mut views: Vec<ChainView> = self
            .chains
            .values()
            .map(|ctx| ChainView {
                network: ctx.network_label.clone(),
                waiting: ctx
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                lanes: ctx
                    .lanes
                    .iter()
                    .map(|l| {
                        let health = l.shared.health();
                        let n = l.shared.next_nonce.load(Ordering::Relaxed);
                        LaneView {
                            wallet: l.shared.wallet.to_checksum(None),
                            ready: matches!(
                                health,
                                LaneHealth::Ready
                                    | LaneHealth::Elsewhere(_)
                                    | LaneHealth::HandingOver
                            ),
                            health: health.to_string(),
                            in_flight: l.shared.load.load(Ordering::Relaxed),
                            next_nonce: (n != u64::MAX).then_some(n),
                        }
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.network.cmp(&b.network));
        views
    }

    /// Waits until the payment is terminal, the deadline passes, or every gas wallet of its chain
    /// is found dry (it then waits in the queue, not here); returns its latest row.
    pub async fn wait(&self, id: i64, timeout: Duration) -> Result<Payment, LedgerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let handle = self.waiters.get(id);
        let result = loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let payment = self
                .ledger
                .payment(id)
                .await?
                .ok_or_else(|| LedgerError::Corrupt(format!("payment {id} vanished")))?;
            if payment.state.is_terminal()
                || tokio::time::Instant::now() >= deadline
                || !self.can_pay(payment.chain_id)
            {
                break payment;
            }
            let poll = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(poll.min(deadline)) => {}
            }
        };
        self.waiters.release(id, handle);
        Ok(result)
    }
}

/// Says every third of a lease that this node is alive on the chain: the other nodes count it
/// when they share out the lanes.
async fn presence(ctx: Arc<ChainCtx>) {
    loop {
        tokio::time::sleep(ctx.config.lane_lease / 3).await;
        if let Err(e) = ctx.ledger.heartbeat(ctx.chain_id(), &ctx.config.node).await {
            ctx.metrics.ledger_errors.inc();
            tracing::warn!(error = %e, "cannot record this node as alive");
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Milliseconds since the Unix epoch plus `d`.
fn ms_from_now(d: Duration) -> i64 {
    crate::clock::now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
