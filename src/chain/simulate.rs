//! Coalesced simulation: calls that arrive together (concurrent verifications) share one
//! `eth_call` of Multicall3 `aggregate3` with `allowFailure = true`, so the node runs one request
//! and one EVM call for many payments and reads each item's success and revert data.
//!
//! Nothing waits to be coalesced: a call goes at once while fewer than [`FLIGHTS`] are in flight,
//! and only calls that arrive while they all are gather, to go together when one comes back.
//! Inside one `aggregate3` the items run in arrival order on the same state, so two payments of
//! the same payer that together overdraw it are caught; identical calls are simulated once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, Bytes};
use alloy::sol_types::SolCall;
use tokio::sync::oneshot;

use super::bindings::{IMulticall3, MULTICALL3};
use super::rpc::{CallError, RpcCall, RpcClient, RpcError, hex_result};

/// `aggregate3` requests in flight at once; more calls gather meanwhile. Two and four measured
/// alike here (`x402d bench verify`: 10.4k/s and 8.6k–10.5k/s, the node sharing the two cores);
/// two gives larger aggregates, so the node does less per payment.
const FLIGHTS: usize = 2;

/// At most this many items per `aggregate3` (~60k gas each: well under any node's `eth_call`
/// gas cap).
const MAX_ITEMS: usize = 64;

/// A simulated call's outcome: `Err` carries the revert reason.
pub type Outcome = Result<(), String>;

type Answer = Result<Outcome, RpcError>;

struct Job {
    target: Address,
    data: Bytes,
    done: oneshot::Sender<Answer>,
}

struct Inner {
    rpc: Arc<RpcClient>,
    queue: Mutex<Queue>,
    /// The network has no working Multicall3: every call goes alone.
    alone: AtomicBool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    flights: usize,
}

/// One network's coalescing simulator.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("alone", &self.inner.alone.load(Ordering::Relaxed))
            .finish()
    }
}

/// The revert reason of a failed item, as [`CallError::reason`] gives it for a lone call.
fn reason_of(revert: &[u8]) -> String {
    alloy::sol_types::decode_revert_reason(revert).unwrap_or_else(|| "execution reverted".into())
}

impl Simulator {
    pub fn new(rpc: Arc<RpcClient>) -> Self {
        Simulator {
            inner: Arc::new(Inner {
                rpc,
                queue: Mutex::new(Queue::default()),
                alone: AtomicBool::new(false),
            }),
        }
    }

    /// Simulates `data` sent to `target` against the latest block.
    pub async fn call(&self, target: Address, data: Bytes) -> Answer {
        if self.inner.alone.load(Ordering::Relaxed) {
            return alone(&self.inner.rpc, target, data).await;
        }
        let (done, answer) = oneshot::channel();
        let fly = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.jobs.push(Job { target, data, done });
            let fly = q.flights < FLIGHTS;
            if fly {
                q.flights += 1;
            }
            fly
        };
        if fly {
            tokio::spawn(fly_while_queued(self.inner.clone()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RpcError::Unreachable("the simulation was dropped".into())))
    }
}

async fn alone(rpc: &RpcClient, target: Address, data: Bytes) -> Answer {
    Ok(match rpc.request(RpcCall::call(target, data)).await? {
        Ok(_) => Ok(()),
        Err(e) => Err(e.reason()),
    })
}

/// A flight: takes what is queued, sends it, answers it, and goes again while anything waits.
async fn fly_while_queued(inner: Arc<Inner>) {
    loop {
        let jobs = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.jobs.is_empty() {
                q.flights -= 1;
                return;
            }
            let n = q.jobs.len().min(MAX_ITEMS);
            q.jobs.drain(..n).collect::<Vec<_>>()
        };
        fly(&inner, jobs).await;
    }
}

async fn fly(inner: &Inner, jobs: Vec<Job>) {
    if let [job] = jobs.as_slice() {
        // Alone in its flight: a direct call costs the node less than a one-item aggregate.
        let answer = alone(&inner.rpc, job.target, job.data.clone()).await;
        for j in jobs {
            let _ = j.done.send(answer.clone());
        }
        return;
    }
    // Identical calls run once: the second copy would only see the first's effect.
    let mut index: HashMap<(Address, Bytes), usize> = HashMap::new();
    let mut calls = Vec::new();
    let slots: Vec<usize> = jobs
        .iter()
        .map(|j| {
            *index.entry((j.target, j.data.clone())).or_insert_with(|| {
                calls.push(IMulticall3::Call3 {
                    target: j.target,
                    allowFailure: true,
                    callData: j.data.clone(),
                });
                calls.len() - 1
            })
        })
        .collect();
    let n = calls.len();
    let aggregate = IMulticall3::aggregate3Call { calls }.abi_encode();
    let answers = match aggregate3(&inner.rpc, aggregate, n).await {
        Ok(a) => a,
        Err(Fallback::Rpc(e)) => {
            for j in jobs {
                let _ = j.done.send(Err(e.clone()));
            }
            return;
        }
        Err(Fallback::OneByOne { why, for_good }) => {
            if for_good {
                tracing::warn!(%why, "Multicall3 does not answer here; simulations go one by one");
                inner.alone.store(true, Ordering::Relaxed);
            }
            let calls: Vec<RpcCall> = jobs
                .iter()
                .map(|j| RpcCall::call(j.target, j.data.clone()))
                .collect();
            let answers = inner.rpc.batch(&calls).await;
            for (i, j) in jobs.into_iter().enumerate() {
                let answer = match &answers {
                    Ok(a) => a.get(i).cloned().map_or_else(
                        || Err(RpcError::Malformed("short batch answer".into())),
                        |r| Ok(r.map(|_| ()).map_err(|e: CallError| e.reason())),
                    ),
                    Err(e) => Err(e.clone()),
                };
                let _ = j.done.send(answer);
            }
            return;
        }
    };
    for (j, slot) in jobs.into_iter().zip(slots) {
        let _ = j.done.send(Ok(answers[slot].clone()));
    }
}

enum Fallback {
    Rpc(RpcError),
    /// The aggregate itself failed: these items go one by one, and all later ones too when the
    /// answer shows there is no Multicall3 at its address (`for_good`).
    OneByOne {
        why: String,
        for_good: bool,
    },
}

async fn aggregate3(rpc: &RpcClient, data: Vec<u8>, n: usize) -> Result<Vec<Outcome>, Fallback> {
    let value = match rpc.request(RpcCall::call(MULTICALL3, data)).await {
        Err(e) => return Err(Fallback::Rpc(e)),
        Ok(Err(e)) => {
            return Err(Fallback::OneByOne {
                why: e.message,
                for_good: false,
            });
        }
        Ok(Ok(v)) => v,
    };
    let for_good = |why: String| Fallback::OneByOne {
        why,
        for_good: true,
    };
    let bytes = hex_result(&value).map_err(|e| for_good(e.to_string()))?;
    let results = IMulticall3::aggregate3Call::abi_decode_returns(&bytes)
        .map_err(|e| for_good(format!("aggregate3 answer: {e}")))?;
    if results.len() != n {
        return Err(for_good(format!("{} results for {n} calls", results.len())));
    }
    Ok(results
        .into_iter()
        .map(|r| {
            if r.success {
                Ok(())
            } else {
                Err(reason_of(&r.returnData))
            }
        })
        .collect())
}
