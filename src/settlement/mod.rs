//! The settlement engine: every claimed payment is settled on chain exactly once, in batches, by a
//! lane per chain that owns its gas wallet's nonce. The ledger is the source of truth; in-memory
//! state is only a cache of it, rebuilt on start-up.

mod lane;
pub mod tx;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use tokio::sync::{Notify, mpsc};

use crate::chain::Chains;
use crate::ledger::{Ledger, LedgerError, Payment};
use crate::telemetry::Metrics;
use lane::Lane;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// Blocks (including the one it is in) before a payment is `confirmed`.
    pub confirmations: u64,
    /// Collect payments for at most this long before sending a batch.
    pub batch_window: Duration,
    /// At most this many payments in one transaction.
    pub batch_max_items: usize,
    /// How often in-flight transactions' receipts are polled.
    pub receipt_poll: Duration,
    /// Rebroadcast a transaction that has no receipt after this long.
    pub rebroadcast_after: Duration,
    /// How far back to look for someone else's `AuthorizationUsed` log.
    pub log_lookback_blocks: u64,
    /// At most this many of our transactions in flight per wallet (node pools take ~16 per account).
    pub max_in_flight: usize,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            confirmations: 1,
            batch_window: Duration::from_millis(200),
            batch_max_items: 100,
            receipt_poll: Duration::from_millis(50),
            rebroadcast_after: Duration::from_secs(3),
            log_lookback_blocks: 50_000,
            max_in_flight: 12,
        }
    }
}

/// Wake-ups for requests waiting on a payment. Missing one is harmless: waiters also re-read the
/// ledger periodically.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl Waiters {
    fn get(&self, id: i64) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }

    fn notify(&self, id: i64) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(&id) {
            n.notify_waiters();
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

/// The engine: one lane per served chain, all sharing the ledger.
pub struct Settlement {
    ledger: Ledger,
    waiters: Arc<Waiters>,
    lanes: HashMap<u64, mpsc::UnboundedSender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("lanes", &self.lanes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Settlement {
    /// Recovers every lane from the ledger, then starts them.
    pub async fn start(
        ledger: Ledger,
        chains: Chains,
        signer: PrivateKeySigner,
        config: SettlementConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Settlement, LedgerError> {
        let waiters = Arc::new(Waiters::default());
        let mut lanes = HashMap::new();
        let mut tasks = Vec::new();
        for index in 0..chains.networks().len() {
            let (tx, rx) = mpsc::unbounded_channel();
            let lane = Arc::new(Lane::new(
                ledger.clone(),
                chains.clone(),
                index,
                signer.clone(),
                config.clone(),
                waiters.clone(),
                metrics.clone(),
            ));
            let chain_id = lane.chain_id();
            tasks.push(tokio::spawn(lane.run(rx)));
            lanes.insert(chain_id, tx);
        }
        Ok(Settlement {
            ledger,
            waiters,
            lanes,
            tasks,
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Tells a chain's batcher that a payment was queued.
    pub fn wake(&self, chain_id: u64) {
        if let Some(tx) = self.lanes.get(&chain_id) {
            let _ = tx.send(());
        }
    }

    /// Waits until the payment is terminal or the deadline passes; returns its latest row.
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
            if payment.state.is_terminal() || tokio::time::Instant::now() >= deadline {
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

impl Drop for Settlement {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
