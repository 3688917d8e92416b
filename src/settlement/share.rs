//! What nodes sharing a PostgreSQL ledger tell each other: this node's wake-ups go out in
//! batches, every other node's come in and wake the same waiters and batchers locally
//! ([`crate::ledger::Signals`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ChainCtx, Waiters};
use crate::ledger::{Ledger, Signal};

/// Signals sent in one notification at most (each is a few bytes).
const BATCH: usize = 512;

/// The publisher and the listener.
pub(super) fn start(
    ledger: Ledger,
    outbox: mpsc::UnboundedReceiver<Signal>,
    waiters: Arc<Waiters>,
    chains: HashMap<u64, Arc<ChainCtx>>,
) -> [JoinHandle<()>; 2] {
    // A tag per process, so that its own notifications are not acted on twice.
    let me = B256::random().to_string();
    [
        tokio::spawn(publish(ledger.clone(), outbox, me.clone())),
        tokio::spawn(listen(ledger, me, waiters, chains)),
    ]
}

async fn publish(ledger: Ledger, mut outbox: mpsc::UnboundedReceiver<Signal>, me: String) {
    let mut batch = Vec::with_capacity(BATCH);
    while outbox.recv_many(&mut batch, BATCH).await > 0 {
        let mut seen = HashSet::new();
        batch.retain(|s| seen.insert(*s));
        if let Err(e) = ledger.signal(&me, &batch).await {
            // Only latency is lost: the others also poll.
            tracing::debug!(error = %e, "could not signal the other nodes");
        }
        batch.clear();
    }
}

async fn listen(
    ledger: Ledger,
    me: String,
    waiters: Arc<Waiters>,
    chains: HashMap<u64, Arc<ChainCtx>>,
) {
    loop {
        match ledger.listen().await {
            Ok(Some(mut signals)) => loop {
                match signals.next().await {
                    Ok((from, _)) if from == me => {}
                    Ok((_, list)) => {
                        for s in list {
                            match s {
                                Signal::Moved(id) => waiters.notify_here(id),
                                Signal::Queued(chain) => {
                                    if let Some(ctx) = chains.get(&chain) {
                                        ctx.wake.notify_one();
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the other nodes' signals; listening again");
                        break;
                    }
                }
            },
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "cannot listen to the other nodes' signals"),
        }
        // A retry pause: polling covers the gap meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
