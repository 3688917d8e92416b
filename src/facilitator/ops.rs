//! What an operator asks of the facilitator: is it ready, how is it doing. Readiness checks, the
//! gauges read on demand (queue, wallets), and the status snapshot behind the operator page.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Facilitator;
use crate::chain::{CallError, Network, RpcCall, RpcError};
use crate::ledger::{LedgerError, now_ms};
use crate::telemetry::Sample;

/// How long one readiness or status probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Gauges read from the ledger and the chain are refreshed at most this often, however many
/// scrapers and operator pages ask.
const REFRESH_MIN_INTERVAL_MS: i64 = 1_000;
/// Rows of the operator page's tables.
const RECENT_ROWS: usize = 20;

/// Operations state kept by the facilitator.
#[derive(Debug)]
pub(super) struct OpsState {
    started: Instant,
    last_refresh_ms: AtomicI64,
    wallets: Mutex<Vec<WalletView>>,
}

impl Default for OpsState {
    fn default() -> Self {
        OpsState {
            started: Instant::now(),
            last_refresh_ms: AtomicI64::new(0),
            wallets: Mutex::new(Vec::new()),
        }
    }
}

/// A gas wallet on one network, as last read.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    pub address: String,
    pub network: String,
    /// Wei, as a decimal string (exact); `None` when the node could not be read.
    pub balance_wei: Option<String>,
    /// The next nonce as the node sees it (pending count).
    pub nonce: Option<u64>,
    /// Our transactions broadcast and not yet mined.
    pub in_flight: i64,
    pub error: Option<String>,
}

/// The answer of `GET /ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The names of the checks that failed.
    pub failed: Vec<&'static str>,
    /// Checks that failed without stopping the node: it serves, only slower (Redis away: limits
    /// are counted per node).
    pub degraded: Vec<&'static str>,
    pub checks: Value,
}

/// One network's chain id and wallet balances, read in one JSON-RPC batch.
struct ChainProbe {
    chain_id: Result<u64, String>,
    /// Per signer: balance and pending nonce, or why not.
    wallets: Vec<Result<(U256, u64), String>>,
}

fn quantity_u256(v: &Value) -> Result<U256, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("expected a quantity, got {v}"))?;
    U256::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s}: {e}"))
}

fn quantity_u64(v: &Value) -> Result<u64, String> {
    let n = quantity_u256(v)?;
    u64::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn answer(r: Option<&Result<Value, CallError>>) -> Result<&Value, String> {
    match r {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.message.clone()),
        None => Err("no answer".to_owned()),
    }
}

async fn probe_chain(network: &Network, signers: &[Address]) -> ChainProbe {
    let mut calls = vec![RpcCall::chain_id()];
    for s in signers {
        calls.push(RpcCall {
            method: "eth_getBalance",
            params: json!([s, "latest"]),
        });
        calls.push(RpcCall {
            method: "eth_getTransactionCount",
            params: json!([s, "pending"]),
        });
    }
    let answers = match tokio::time::timeout(PROBE_TIMEOUT, network.rpc.batch(&calls)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return ChainProbe::failed(signers.len(), &e.to_string()),
        Err(_) => {
            let e = RpcError::Unreachable(format!("no answer within {PROBE_TIMEOUT:?}"));
            return ChainProbe::failed(signers.len(), &e.to_string());
        }
    };
    let chain_id = answer(answers.first()).and_then(quantity_u64);
    let wallets = (0..signers.len())
        .map(|i| {
            let balance = answer(answers.get(1 + 2 * i)).and_then(quantity_u256)?;
            let nonce = answer(answers.get(2 + 2 * i)).and_then(quantity_u64)?;
            Ok((balance, nonce))
        })
        .collect();
    ChainProbe { chain_id, wallets }
}

impl ChainProbe {
    fn failed(wallets: usize, error: &str) -> ChainProbe {
        ChainProbe {
            chain_id: Err(error.to_owned()),
            wallets: vec![Err(error.to_owned()); wallets],
        }
    }
}

impl Facilitator {
    fn signer_labels(&self) -> Vec<String> {
        self.signers.iter().map(|a| a.to_checksum(None)).collect()
    }

    /// Readiness: the database answers, its schema is this build's, every network's node answers
    /// with the configured chain id, and every gas wallet holds some native balance on every
    /// network.
    pub async fn readiness(&self) -> Readiness {
        let database = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.ledger.ping()).await {
                Ok(Ok(())) => json!({"ok": true, "backend": self.ledger.backend()}),
                Ok(Err(e)) => {
                    self.metrics.ledger_errors.inc();
                    json!({"ok": false, "backend": self.ledger.backend(), "error": e.to_string()})
                }
                Err(_) => {
                    json!({"ok": false, "backend": self.ledger.backend(), "error": "timed out"})
                }
            }
        };
        let migrations = async {
            let status = tokio::time::timeout(PROBE_TIMEOUT, self.ledger.migration_status()).await;
            match status {
                Ok(Ok(s)) => json!({
                    "ok": s.complete(),
                    "expected": s.expected.len(),
                    "applied": s.applied.len(),
                }),
                Ok(Err(e)) => json!({"ok": false, "error": e.to_string()}),
                Err(_) => json!({"ok": false, "error": "timed out"}),
            }
        };
        let probes = futures::future::join_all(
            self.chains
                .networks()
                .iter()
                .map(|n| probe_chain(n, &self.signers)),
        );
        let redis = self.access.limits().probe(PROBE_TIMEOUT);
        let (database, migrations, probes, redis) =
            tokio::join!(database, migrations, probes, redis);

        let mut rpc = Map::new();
        let mut wallets: Vec<(String, Map<String, Value>, bool)> = self
            .signer_labels()
            .into_iter()
            .map(|w| (w, Map::new(), true))
            .collect();
        for (network, probe) in self.chains.networks().iter().zip(&probes) {
            let name = network.chain_id.caip2();
            let check = match &probe.chain_id {
                Ok(id) if *id == network.chain_id.0 => json!({"ok": true, "chainId": id}),
                Ok(id) => json!({
                    "ok": false,
                    "chainId": id,
                    "error": format!("the node serves chain {id}, configured {}", network.chain_id.0),
                }),
                Err(e) => json!({"ok": false, "error": e}),
            };
            rpc.insert(name.clone(), check);
            for ((_, balances, ok), w) in wallets.iter_mut().zip(&probe.wallets) {
                match w {
                    Ok((balance, _)) => {
                        *ok &= !balance.is_zero();
                        balances.insert(name.clone(), json!(balance.to_string()));
                    }
                    Err(e) => {
                        *ok = false;
                        balances.insert(name.clone(), json!({"error": e}));
                    }
                }
            }
        }
        let gas_wallets: Map<String, Value> = wallets
            .into_iter()
            .map(|(w, balances, ok)| (w, json!({"ok": ok, "balance": balances})))
            .collect();

        let all_ok = |v: &Map<String, Value>| v.values().all(|c| c["ok"] == true);
        let mut failed = Vec::new();
        if database["ok"] != true {
            failed.push("database");
        }
        if migrations["ok"] != true {
            failed.push("migrations");
        }
        if !all_ok(&rpc) {
            failed.push("rpc");
        }
        if !all_ok(&gas_wallets) {
            failed.push("gas_wallets");
        }
        // Settlement is degraded when a chain's queue cannot move (fee ceiling, budget, every
        // wallet dry or stalled); each lane says why.
        let settlement: Vec<Value> = self
            .settlement_views()
            .into_iter()
            .map(|v| {
                let ok = v.waiting.is_none() && v.lanes.iter().any(|l| l.ready);
                json!({"ok": ok, "network": v.network, "waiting": v.waiting, "lanes": v.lanes})
            })
            .collect();
        if settlement.iter().any(|c| c["ok"] != true) {
            failed.push("settlement");
        }
        let mut degraded = Vec::new();
        let redis = match redis {
            None => json!({"ok": true, "configured": false}),
            Some(Ok(())) => json!({"ok": true, "configured": true}),
            Some(Err(e)) => {
                degraded.push("redis");
                json!({"ok": false, "configured": true, "error": e})
            }
        };
        Readiness {
            ready: failed.is_empty(),
            failed,
            degraded,
            checks: json!({
                "redis": redis,
                "database": database,
                "migrations": migrations,
                "rpc": rpc,
                "gas_wallets": gas_wallets,
                "settlement": settlement,
            }),
        }
    }

    /// Refreshes the gauges that are read rather than counted: queue depth, oldest pending age,
    /// wallet balances and nonces. At most once a second; a failed read leaves the last value.
    pub async fn refresh_gauges(&self) {
        let now = now_ms();
        let last = self.ops.last_refresh_ms.load(Ordering::Relaxed);
        if now - last < REFRESH_MIN_INTERVAL_MS
            || self
                .ops
                .last_refresh_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let wallets = self.signer_labels();
        let mut views = Vec::new();
        for network in self.chains.networks() {
            let name = network.chain_id.caip2();
            match self.ledger.pending_summary(network.chain_id.0).await {
                Ok(s) => {
                    self.metrics
                        .queue_depth
                        .with_label_values(&[&name])
                        .set(i64::try_from(s.queued).unwrap_or(i64::MAX));
                    let age = s
                        .oldest_pending_at
                        .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
                    self.metrics
                        .oldest_pending_age
                        .with_label_values(&[&name])
                        .set(age);
                }
                Err(e) => self.ledger_failed(&e),
            }
            let probe = probe_chain(network, &self.signers).await;
            for (wallet, w) in wallets.iter().zip(probe.wallets) {
                let labels = [name.as_str(), wallet.as_str()];
                let in_flight = self
                    .metrics
                    .wallet_in_flight
                    .with_label_values(&labels)
                    .get();
                let mut view = WalletView {
                    address: wallet.clone(),
                    network: name.clone(),
                    balance_wei: None,
                    nonce: None,
                    in_flight,
                    error: None,
                };
                match w {
                    Ok((balance, nonce)) => {
                        // f64 keeps ~16 significant digits: plenty for a balance gauge.
                        let wei: f64 = balance.to_string().parse().unwrap_or(f64::MAX);
                        self.metrics
                            .wallet_balance
                            .with_label_values(&labels)
                            .set(wei);
                        self.metrics
                            .wallet_nonce
                            .with_label_values(&labels)
                            .set(i64::try_from(nonce).unwrap_or(i64::MAX));
                        view.balance_wei = Some(balance.to_string());
                        view.nonce = Some(nonce);
                    }
                    Err(e) => view.error = Some(e),
                }
                views.push(view);
            }
        }
        *self.ops.wallets.lock().unwrap_or_else(|e| e.into_inner()) = views;
    }

    fn ledger_failed(&self, e: &LedgerError) {
        self.metrics.ledger_errors.inc();
        tracing::warn!(error = %e, "ledger read for operations failed");
    }

    /// The operator page's data: networks, wallets, queue, recent settlements and batches, and the
    /// throughput/latency history.
    pub async fn status(&self) -> Value {
        self.refresh_gauges().await;
        let networks: Vec<Value> = self
            .chains
            .networks()
            .iter()
            .map(|n| {
                let name = n.chain_id.caip2();
                json!({
                    "network": name,
                    "chainId": n.chain_id.0,
                    "v1Name": n.v1_name,
                    "tokens": n.tokens.iter().map(|t| json!({
                        "address": t.address.to_checksum(None),
                        "name": t.name,
                        "symbol": t.symbol,
                        "decimals": t.decimals,
                    })).collect::<Vec<_>>(),
                    "queueDepth": self.metrics.queue_depth.with_label_values(&[&name]).get(),
                    "oldestPendingAgeSeconds": self.metrics.oldest_pending_age.with_label_values(&[&name]).get(),
                })
            })
            .collect();
        let wallets = self
            .ops
            .wallets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let settlements = match self.ledger.recent_payments(RECENT_ROWS).await {
            Ok(rows) => rows
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id,
                        "network": crate::protocol::ChainId(p.chain_id).caip2(),
                        "payer": p.payer.to_checksum(None),
                        "payTo": p.pay_to.to_checksum(None),
                        "amount": p.amount.to_string(),
                        "state": p.state.as_str(),
                        "transaction": p.tx_hash,
                        "blockNumber": p.block_number,
                        "failReason": p.fail_reason,
                        "createdAt": p.created_at,
                    })
                })
                .collect(),
            Err(e) => {
                self.ledger_failed(&e);
                Vec::new()
            }
        };
        let batches = match self.ledger.recent_transactions(RECENT_ROWS).await {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    json!({
                        "batchId": r.tx.batch_id,
                        "network": crate::protocol::ChainId(r.tx.chain_id).caip2(),
                        "items": r.item_count,
                        "transaction": r.tx.tx_hash,
                        "wallet": r.tx.wallet.to_checksum(None),
                        "nonce": r.tx.nonce,
                        "status": r.tx.status.as_str(),
                        "gasUsed": r.tx.gas_used,
                        "effectiveGasPrice": r.tx.effective_gas_price.map(|p| p.to_string()),
                        "l1FeeWei": r.tx.l1_fee.map(|f| f.to_string()),
                        "costWei": r.tx.cost_wei().map(|c| c.to_string()),
                        "costPerPaymentWei": r.tx.cost_wei().filter(|_| r.item_count > 0)
                            .map(|c| (c / alloy::primitives::U256::from(r.item_count)).to_string()),
                        "blockNumber": r.tx.block_number,
                        "createdAt": r.tx.created_at,
                    })
                })
                .collect(),
            Err(e) => {
                self.ledger_failed(&e);
                Vec::new()
            }
        };
        let history: Vec<Sample> = self.metrics.history();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": self.ops.started.elapsed().as_secs(),
            "networks": networks,
            "gasWallets": wallets,
            "settlement": self.settlement_views(),
            "settlements": settlements,
            "batches": batches,
            "history": history,
            "sampleEverySeconds": crate::telemetry::SAMPLE_EVERY.as_secs(),
        })
    }
}
