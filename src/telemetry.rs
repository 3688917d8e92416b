//! Telemetry: the Prometheus registry of one running x402d and the series it exports, plus a short
//! in-memory history of throughput and latency for the operator page.
//!
//! The registry is owned by the app ([`Metrics`] is created by the server and passed down), not a
//! global: two servers in one process (as in the tests) then count independently. Every series is
//! documented in README.md ("Metrics").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label value for a request naming a network we do not serve: client-chosen strings never become
/// label values (that would let anyone grow the registry without bound).
pub const UNSERVED_NETWORK: &str = "unserved";

/// How many history samples are kept, and how often one is taken: ten minutes at 5 s.
const HISTORY_LEN: usize = 120;
/// Interval between two history samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// All series of one x402d.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub verify_total: IntCounterVec,
    pub settle_total: IntCounterVec,
    pub verify_duration: HistogramVec,
    pub settle_duration: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub oldest_pending_age: GaugeVec,
    pub batch_size: HistogramVec,
    pub batch_gas_used: HistogramVec,
    pub payment_gas_used: HistogramVec,
    pub effective_gas_price: GaugeVec,
    pub wallet_balance: GaugeVec,
    pub wallet_in_flight: IntGaugeVec,
    pub wallet_nonce: IntGaugeVec,
    pub tx_replacements: IntCounterVec,
    pub reorgs_handled: IntCounterVec,
    pub payments_lost: IntCounterVec,
    pub lane_resyncs: IntCounterVec,
    pub settlement_waiting: IntGaugeVec,
    pub payment_cost_wei: GaugeVec,
    pub duplicates_joined: IntCounterVec,
    pub rpc_requests: IntCounterVec,
    pub rpc_errors: IntCounterVec,
    pub rpc_duration: HistogramVec,
    pub ledger_errors: IntCounter,
    history: Mutex<History>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// One point of the operator page's chart: what happened during the interval ending at `t`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix seconds at the end of the interval.
    pub t: u64,
    pub verify_per_second: f64,
    pub settle_per_second: f64,
    /// Mean latency of the verifications and settlements answered in the interval (0 when none).
    pub verify_mean_ms: f64,
    pub settle_mean_ms: f64,
}

#[derive(Default)]
struct History {
    samples: VecDeque<Sample>,
    /// Cumulative (count, sum) of the verify and settle histograms at the previous sample.
    last: Option<[(u64, f64); 2]>,
    last_at: Option<std::time::Instant>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(name, e))
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable(name, e))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(name, e))
}

fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable(name, e))
}

/// Metric definitions are constants of this file; an invalid one is a programming error caught by
/// the first test that builds a server.
fn unreachable(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

const LATENCY_FAST: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LATENCY_SETTLE: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
const BATCH_GAS: &[f64] = &[
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
    30_000_000.0,
];
const PAYMENT_GAS: &[f64] = &[
    20_000.0, 30_000.0, 40_000.0, 50_000.0, 60_000.0, 80_000.0, 100_000.0, 150_000.0, 250_000.0,
    500_000.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered (and none of their label sets yet).
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            http_requests: counter_vec(
                "x402d_http_requests_total",
                "HTTP requests answered, by route template and status code",
                &["route", "status"],
            ),
            http_duration: histogram_vec(
                "x402d_http_request_duration_seconds",
                "HTTP request latency by route template",
                &["route"],
                LATENCY_FAST.to_vec(),
            ),
            verify_total: counter_vec(
                "x402d_verify_total",
                "Verifications answered, by network and outcome (valid or the reason code)",
                &["network", "outcome"],
            ),
            settle_total: counter_vec(
                "x402d_settle_total",
                "Settlements answered, by network and outcome (success or the reason code)",
                &["network", "outcome"],
            ),
            verify_duration: histogram_vec(
                "x402d_verify_duration_seconds",
                "Time to answer a verification",
                &["network"],
                LATENCY_FAST.to_vec(),
            ),
            settle_duration: histogram_vec(
                "x402d_settle_duration_seconds",
                "Time to answer a settlement (includes waiting for the receipt)",
                &["network"],
                LATENCY_SETTLE.to_vec(),
            ),
            queue_depth: int_gauge_vec(
                "x402d_settlement_queue_depth",
                "Payments queued for a batch, not yet in a transaction",
                &["network"],
            ),
            oldest_pending_age: gauge_vec(
                "x402d_oldest_pending_payment_age_seconds",
                "Age of the oldest payment not yet confirmed or failed (0 when none)",
                &["network"],
            ),
            batch_size: histogram_vec(
                "x402d_batch_size",
                "Payments per settlement transaction signed",
                &["network"],
                BATCH_SIZES.to_vec(),
            ),
            batch_gas_used: histogram_vec(
                "x402d_batch_gas_used",
                "Gas used by a mined settlement transaction",
                &["network"],
                BATCH_GAS.to_vec(),
            ),
            payment_gas_used: histogram_vec(
                "x402d_payment_gas_used",
                "Gas used per payment settled (a mined transaction's gas over the payments it settled)",
                &["network"],
                PAYMENT_GAS.to_vec(),
            ),
            effective_gas_price: gauge_vec(
                "x402d_effective_gas_price_wei",
                "Effective gas price of the last mined settlement transaction",
                &["network"],
            ),
            wallet_balance: gauge_vec(
                "x402d_gas_wallet_balance_wei",
                "Native balance of a gas wallet, read when metrics or status are requested",
                &["network", "wallet"],
            ),
            wallet_in_flight: int_gauge_vec(
                "x402d_gas_wallet_in_flight_transactions",
                "Settlement transactions of a gas wallet broadcast and not yet mined",
                &["network", "wallet"],
            ),
            wallet_nonce: int_gauge_vec(
                "x402d_gas_wallet_nonce",
                "Next nonce of a gas wallet as the node sees it (pending transaction count)",
                &["network", "wallet"],
            ),
            tx_replacements: counter_vec(
                "x402d_tx_replacements_total",
                "Settlement transactions replaced with a higher fee",
                &["network"],
            ),
            reorgs_handled: counter_vec(
                "x402d_reorgs_handled_total",
                "Settled payments a reorg un-included whose authorization was resubmitted",
                &["network"],
            ),
            payments_lost: counter_vec(
                "x402d_payments_lost_total",
                "Settled payments a reorg un-included after their authorization expired (the payee was not paid)",
                &["network"],
            ),
            lane_resyncs: counter_vec(
                "x402d_lane_resyncs_total",
                "Times a gas wallet's lane resynchronised its nonce from the chain (nonce disturbances)",
                &["network", "wallet"],
            ),
            settlement_waiting: int_gauge_vec(
                "x402d_settlement_waiting",
                "1 while queued payments cannot be sent (fee ceiling, gas budget, every wallet dry); the reason is in /status",
                &["network"],
            ),
            payment_cost_wei: gauge_vec(
                "x402d_payment_cost_wei",
                "What the last mined settlement transaction cost per payment it settled (gas × price + L1 fee)",
                &["network"],
            ),
            duplicates_joined: counter_vec(
                "x402d_settle_duplicates_joined_total",
                "Settle requests for a payload already being settled, answered with its outcome",
                &["network"],
            ),
            rpc_requests: counter_vec(
                "x402d_rpc_requests_total",
                "JSON-RPC HTTP requests (one per batch) sent, by endpoint host",
                &["endpoint"],
            ),
            rpc_errors: counter_vec(
                "x402d_rpc_errors_total",
                "JSON-RPC HTTP requests that failed, by endpoint host and kind",
                &["endpoint", "kind"],
            ),
            rpc_duration: histogram_vec(
                "x402d_rpc_request_duration_seconds",
                "JSON-RPC HTTP round trip, by endpoint host",
                &["endpoint"],
                LATENCY_FAST.to_vec(),
            ),
            ledger_errors: IntCounter::with_opts(Opts::new(
                "x402d_ledger_errors_total",
                "Ledger (database) operations that failed",
            ))
            .unwrap_or_else(|e| unreachable("x402d_ledger_errors_total", e)),
            history: Mutex::new(History::default()),
        };
        let collectors: [Box<dyn Collector>; 26] = [
            Box::new(m.http_requests.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.verify_total.clone()),
            Box::new(m.settle_total.clone()),
            Box::new(m.verify_duration.clone()),
            Box::new(m.settle_duration.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.oldest_pending_age.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_gas_used.clone()),
            Box::new(m.payment_gas_used.clone()),
            Box::new(m.effective_gas_price.clone()),
            Box::new(m.wallet_balance.clone()),
            Box::new(m.wallet_in_flight.clone()),
            Box::new(m.wallet_nonce.clone()),
            Box::new(m.tx_replacements.clone()),
            Box::new(m.reorgs_handled.clone()),
            Box::new(m.payments_lost.clone()),
            Box::new(m.lane_resyncs.clone()),
            Box::new(m.settlement_waiting.clone()),
            Box::new(m.payment_cost_wei.clone()),
            Box::new(m.duplicates_joined.clone()),
            Box::new(m.rpc_requests.clone()),
            Box::new(m.rpc_errors.clone()),
            Box::new(m.rpc_duration.clone()),
            Box::new(m.ledger_errors.clone()),
        ];
        for c in collectors {
            if let Err(e) = m.registry.register(c) {
                unreachable("registration", e);
            }
        }
        m
    }

    /// The registry, for other rooms that want to add their own series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Makes a network's series exist (at 0) before anything happened on it, so dashboards and
    /// alerts see them from the start.
    pub fn init_network(&self, network: &str) {
        for c in [
            &self.tx_replacements,
            &self.reorgs_handled,
            &self.payments_lost,
            &self.duplicates_joined,
        ] {
            c.with_label_values(&[network]);
        }
        self.settlement_waiting.with_label_values(&[network]);
        self.queue_depth.with_label_values(&[network]);
        self.oldest_pending_age.with_label_values(&[network]);
        self.settle_total.with_label_values(&[network, "success"]);
        self.verify_total.with_label_values(&[network, "valid"]);
    }

    /// The series of one network, resolved once.
    pub fn network(&self, network: &str) -> NetworkMetrics {
        NetworkMetrics {
            name: network.to_owned(),
            verify_duration: self.verify_duration.with_label_values(&[network]),
            settle_duration: self.settle_duration.with_label_values(&[network]),
            duplicates_joined: self.duplicates_joined.with_label_values(&[network]),
            verify_total: self.verify_total.clone(),
            settle_total: self.settle_total.clone(),
        }
    }

    /// The series of one RPC endpoint; the label is its host (and port), never the full URL
    /// (paths and queries often carry API keys).
    pub fn rpc_endpoint(&self, url: &reqwest::Url) -> RpcEndpointMetrics {
        let host = endpoint_label(url);
        RpcEndpointMetrics {
            requests: self.rpc_requests.with_label_values(&[&host]),
            transport_errors: self.rpc_errors.with_label_values(&[&host, "transport"]),
            http_errors: self.rpc_errors.with_label_values(&[&host, "http_status"]),
            malformed: self.rpc_errors.with_label_values(&[&host, "malformed"]),
            duration: self.rpc_duration.with_label_values(&[&host]),
        }
    }

    /// Records one history sample from the cumulative verify and settle histograms.
    pub fn take_sample(&self) {
        let now = std::time::Instant::now();
        let totals = [
            histogram_totals(&self.verify_duration),
            histogram_totals(&self.settle_duration),
        ];
        let t = crate::clock::unix_now();
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(last), Some(at)) = (h.last, h.last_at) {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            let rate = |i: usize| totals[i].0.saturating_sub(last[i].0) as f64 / secs;
            let mean_ms = |i: usize| {
                let n = totals[i].0.saturating_sub(last[i].0);
                if n == 0 {
                    0.0
                } else {
                    (totals[i].1 - last[i].1).max(0.0) / n as f64 * 1000.0
                }
            };
            let sample = Sample {
                t,
                verify_per_second: rate(0),
                settle_per_second: rate(1),
                verify_mean_ms: mean_ms(0),
                settle_mean_ms: mean_ms(1),
            };
            h.samples.push_back(sample);
            while h.samples.len() > HISTORY_LEN {
                h.samples.pop_front();
            }
        }
        h.last = Some(totals);
        h.last_at = Some(now);
    }

    /// The history samples, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.samples.iter().copied().collect()
    }

    /// Samples every [`SAMPLE_EVERY`] until the metrics are dropped.
    pub fn spawn_sampler(metrics: &Arc<Metrics>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Metrics> = Arc::downgrade(metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                m.take_sample();
            }
        })
    }
}

/// Sum of (count, sum) over every label set of a histogram.
fn histogram_totals(h: &HistogramVec) -> (u64, f64) {
    let mut count = 0;
    let mut sum = 0.0;
    for family in h.collect() {
        for m in family.get_metric() {
            let h = m.get_histogram();
            count += h.get_sample_count();
            sum += h.get_sample_sum();
        }
    }
    (count, sum)
}

/// `host[:port]` of an RPC URL.
pub fn endpoint_label(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// The series of one served network, resolved once at start-up.
#[derive(Clone)]
pub struct NetworkMetrics {
    pub name: String,
    pub verify_duration: Histogram,
    pub settle_duration: Histogram,
    pub duplicates_joined: IntCounter,
    verify_total: IntCounterVec,
    settle_total: IntCounterVec,
}

impl std::fmt::Debug for NetworkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl NetworkMetrics {
    /// Counts a verification and its latency. `outcome` is `valid` or a reason code (a closed set).
    pub fn verified(&self, outcome: &str, elapsed: Duration) {
        self.verify_total
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
        self.verify_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a settlement and its latency. `outcome` is `success` or a reason code.
    pub fn settled(&self, outcome: &str, elapsed: Duration) {
        self.settle_total
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
        self.settle_duration.observe(elapsed.as_secs_f64());
    }
}

/// The series of one RPC endpoint.
#[derive(Clone, Debug)]
pub struct RpcEndpointMetrics {
    pub requests: IntCounter,
    pub transport_errors: IntCounter,
    pub http_errors: IntCounter,
    pub malformed: IntCounter,
    pub duration: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_label_drops_paths_queries_and_credentials() {
        let url: reqwest::Url = "https://user:pw@base-sepolia.example.com/v2/SECRETKEY?key=abc"
            .parse()
            .unwrap();
        assert_eq!(endpoint_label(&url), "base-sepolia.example.com");
        let local: reqwest::Url = "http://127.0.0.1:8545".parse().unwrap();
        assert_eq!(endpoint_label(&local), "127.0.0.1:8545");
    }

    #[test]
    fn series_render_with_their_names() {
        let m = Metrics::new();
        m.init_network("eip155:84532");
        m.network("eip155:84532")
            .settled("success", Duration::from_millis(300));
        let text = m.render();
        assert!(
            text.contains("x402d_settle_total{network=\"eip155:84532\",outcome=\"success\"} 1")
        );
        assert!(text.contains("x402d_tx_replacements_total{network=\"eip155:84532\"} 0"));
        assert!(text.contains("x402d_ledger_errors_total 0"));
    }

    #[test]
    fn history_turns_counts_into_rates_and_means() {
        let m = Metrics::new();
        m.take_sample();
        let n = m.network("eip155:1");
        n.verified("valid", Duration::from_millis(10));
        n.verified("valid", Duration::from_millis(30));
        m.take_sample();
        let h = m.history();
        assert_eq!(h.len(), 1);
        assert!((h[0].verify_mean_ms - 20.0).abs() < 0.01, "{h:?}");
        assert!(h[0].verify_per_second > 0.0);
        assert_eq!(h[0].settle_per_second, 0.0);
    }
}
