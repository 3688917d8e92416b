//! Operations against a real anvil: metrics that follow payments (SQLite and PostgreSQL), request
//! ids, readiness that follows the node and the gas wallet, and the operator page in headless
//! Chromium.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use common::*;
use futures::future::join_all;
use serde_json::Value;
use x402d::config::Config;
use x402d::dev::chain::anvil_binary;
use x402d::http::server::RunningServer;

const NETWORK: &str = "eip155:84532";

/// One line of the text exposition: name, labels, value.
type Line = (String, BTreeMap<String, String>, f64);

fn parse_metrics(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The sum of the series named `name` whose labels include `labels`; `None` when there is none.
fn value(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = lines
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn get(h: &Harness, path: &str) -> reqwest::Response {
    h.http
        .get(format!("{}{path}", h.url()))
        .send()
        .await
        .unwrap()
}

async fn scrape(h: &Harness) -> Vec<Line> {
    // Gauges read from the chain refresh at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(h, "/metrics").await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse_metrics(&r.text().await.unwrap())
}

fn count(lines: &[Line], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(lines, name, labels).unwrap_or(0.0)
}

on_both_backends!(metrics_follow_payments);
async fn metrics_follow_payments(backend: Backend) {
    let Some(h) = Harness::start_with(HarnessOptions {
        backend,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let net = ("network", NETWORK);
    let before = scrape(&h).await;
    // Series that must exist from the start, at 0 (replacements and reorgs until those land).
    for name in [
        "x402d_tx_replacements_total",
        "x402d_reorgs_handled_total",
        "x402d_settle_duplicates_joined_total",
    ] {
        assert_eq!(value(&before, name, &[net]), Some(0.0), "{name}");
    }
    assert_eq!(
        value(
            &before,
            "x402d_settle_total",
            &[net, ("outcome", "success")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&before, "x402d_ledger_errors_total", &[]), Some(0.0));
    assert_eq!(
        value(&before, "x402d_settlement_queue_depth", &[net]),
        Some(0.0)
    );

    const N: usize = 5;
    let payers = h.funded_payers(N, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();
    let (status, answer) = h.verify(&bodies[0]).await;
    assert_eq!((status, &answer["isValid"]), (200, &Value::Bool(true)));
    let answers = join_all(bodies.iter().map(|b| h.settle(b))).await;
    for (status, a) in &answers {
        assert_eq!(*status, 200, "{a}");
        assert_eq!(a["success"], true, "{a}");
    }
    // The same payload again joins the first outcome.
    let (status, again) = h.settle(&bodies[0]).await;
    assert_eq!((status, &again["success"]), (200, &Value::Bool(true)));
    assert_eq!(again["transaction"], answers[0].1["transaction"]);
    // A settled authorization no longer verifies; a request for an unserved network is counted
    // under a fixed label, not under the client's string.
    let (_, used) = h.verify(&bodies[1]).await;
    assert_eq!(used["isValid"], false);
    let mut elsewhere = bodies[2].clone();
    elsewhere["paymentRequirements"]["network"] = "eip155:999999".into();
    elsewhere["paymentPayload"]["accepted"]["network"] = "eip155:999999".into();
    let (status, _) = h.verify(&elsewhere).await;
    assert_eq!(status, 200);

    let after = scrape(&h).await;
    let success = [net, ("outcome", "success")];
    assert_eq!(
        count(&after, "x402d_settle_total", &success),
        (N + 1) as f64
    );
    assert_eq!(
        count(&after, "x402d_settle_duration_seconds_count", &[net]),
        (N + 1) as f64
    );
    assert_eq!(
        count(&after, "x402d_settle_duplicates_joined_total", &[net]),
        1.0
    );
    assert_eq!(
        count(&after, "x402d_verify_total", &[net, ("outcome", "valid")]),
        1.0
    );
    assert_eq!(
        count(
            &after,
            "x402d_verify_total",
            &[net, ("outcome", "invalid_exact_evm_nonce_already_used")]
        ),
        1.0
    );
    assert_eq!(
        count(&after, "x402d_verify_total", &[("network", "unserved")]),
        1.0
    );
    assert!(
        !after
            .iter()
            .any(|(_, l, _)| l.values().any(|v| v.contains("999999"))),
        "a client's network string became a label"
    );
    assert_eq!(
        count(
            &after,
            "x402d_http_requests_total",
            &[("route", "/settle"), ("status", "200")]
        ),
        (N + 1) as f64
    );
    assert_eq!(
        count(
            &after,
            "x402d_http_requests_total",
            &[("route", "/verify"), ("status", "200")]
        ),
        3.0
    );

    // Batches: every settled payment is in exactly one counted batch, each with its gas.
    let txs = h.ledger().transactions(CHAIN_ID).await.unwrap();
    let batches = txs.len() as f64;
    assert!(batches >= 1.0);
    assert_eq!(count(&after, "x402d_batch_size_count", &[net]), batches);
    assert_eq!(count(&after, "x402d_batch_size_sum", &[net]), N as f64);
    assert_eq!(count(&after, "x402d_batch_gas_used_count", &[net]), batches);
    let gas: u64 = txs.iter().map(|t| t.gas_used.unwrap()).sum();
    assert_eq!(
        count(&after, "x402d_batch_gas_used_sum", &[net]),
        gas as f64
    );
    assert_eq!(
        count(&after, "x402d_payment_gas_used_count", &[net]),
        batches
    );
    assert!(count(&after, "x402d_effective_gas_price_wei", &[net]) > 0.0);
    assert_eq!(count(&after, "x402d_settlement_queue_depth", &[net]), 0.0);
    assert_eq!(
        count(&after, "x402d_oldest_pending_payment_age_seconds", &[net]),
        0.0
    );

    // The gas wallet's gauges agree with the chain.
    let wallet = h.gas_key.address();
    let wallet_label = ("wallet", wallet.to_checksum(None));
    let w = [net, (wallet_label.0, wallet_label.1.as_str())];
    let balance = h.chain.provider().get_balance(wallet).await.unwrap();
    assert_eq!(
        count(&after, "x402d_gas_wallet_balance_wei", &w),
        f64::from(balance)
    );
    assert!(balance < U256::from(10u128.pow(20)), "gas was spent");
    assert_eq!(count(&after, "x402d_gas_wallet_nonce", &w), batches);
    assert_eq!(
        count(&after, "x402d_gas_wallet_in_flight_transactions", &w),
        0.0
    );

    // RPC traffic is counted per endpoint host:port, never the URL.
    let rpc = h.chain.rpc_url();
    let host = rpc.trim_start_matches("http://");
    assert!(count(&after, "x402d_rpc_requests_total", &[("endpoint", host)]) >= batches * 2.0);
    assert_eq!(
        count(&after, "x402d_rpc_errors_total", &[("endpoint", host)]),
        0.0
    );
    assert_eq!(count(&after, "x402d_ledger_errors_total", &[]), 0.0);

    // A route that does not exist is one label, whatever the path.
    for path in ["/nope", "/also/not/here"] {
        assert_eq!(get(&h, path).await.status(), 404);
    }
    let last = scrape(&h).await;
    assert_eq!(
        count(
            &last,
            "x402d_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        2.0
    );

    // The status feed shows the same settlements and batches.
    let status: Value = get(&h, "/status").await.json().await.unwrap();
    assert_eq!(status["settlements"].as_array().unwrap().len(), N);
    assert_eq!(status["batches"].as_array().unwrap().len(), txs.len());
    let items: u64 = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["items"].as_u64().unwrap())
        .sum();
    assert_eq!(items, N as u64);
    assert_eq!(status["networks"][0]["network"], NETWORK);
    assert_eq!(status["gasWallets"][0]["balanceWei"], balance.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_is_documented_and_every_documented_series_exists() {
    // With Dial: its series are in the same registry.
    let h = Harness::start_with(HarnessOptions {
        dial: Some(String::new()),
        ..Default::default()
    })
    .await
    .unwrap();
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let (_, a) = h.settle(&h.body(2, &req, &h.sign(&payer, &req))).await;
    assert_eq!(a["success"], true, "{a}");
    let text = get(&h, "/metrics").await.text().await.unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let documented = documented_series();
    let exported: std::collections::BTreeSet<String> = exported
        .iter()
        .map(|n| n.strip_prefix("x402d_").unwrap().to_owned())
        .collect();
    assert!(exported.len() >= 20, "{exported:?}");
    assert_eq!(exported, documented, "README.md Metrics table vs /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_round_trip() {
    let h = Harness::start().await;
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .expect("x-request-id answered")
            .to_str()
            .unwrap()
            .to_owned()
    };
    for path in ["/health", "/supported", "/no-such-route"] {
        let r = h
            .http
            .get(format!("{}{path}", h.url()))
            .header("x-request-id", "client-7f3a.b:9")
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&r), "client-7f3a.b:9", "{path}");
    }
    // Without one, or with a malformed one, we make one up: 32 hex digits, new each time.
    let first = id_of(&get(&h, "/health").await);
    let second = id_of(&get(&h, "/health").await);
    assert_ne!(first, second);
    for id in [&first, &second] {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    for bad in ["has space", &"x".repeat(200), "quote\"d"] {
        let r = h
            .http
            .get(format!("{}/health", h.url()))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let answered = id_of(&r);
        assert_ne!(answered, bad);
        assert_eq!(answered.len(), 32);
    }
    // A POST carries its id too.
    let r = h
        .http
        .post(format!("{}/verify", h.url()))
        .header("x-request-id", "settle-42")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(id_of(&r), "settle-42");
}

fn spawn_anvil(port: Option<u16>) -> AnvilInstance {
    let mut anvil = Anvil::at(anvil_binary().unwrap()).chain_id(CHAIN_ID);
    if let Some(p) = port {
        anvil = anvil.port(p);
    }
    anvil.try_spawn().expect("anvil must start")
}

async fn ready(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/ready")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_node_and_the_gas_wallet() {
    // Our own anvil, so the test can kill it and start another at the same address. Its first
    // account (funded by anvil) is the gas wallet.
    let anvil = spawn_anvil(None);
    let port = anvil.port();
    let gas_key = alloy::signers::local::PrivateKeySigner::from(anvil.first_key().clone());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\npublic = true\nlisten = \"127.0.0.1:0\"\n[[networks]]\nchain_id = {CHAIN_ID}\nrpc_urls = [\"{}\"]\n\
         [gas_wallets]\nprivate_keys = [\"$GAS\"]\n[ledger]\nurl = \"sqlite://{}/l.db\"\n",
        anvil.endpoint(),
        dir.path().display()
    );
    let env = BTreeMap::from([("GAS".to_owned(), alloy::hex::encode(gas_key.to_bytes()))]);
    let server = RunningServer::start(&Config::from_toml(&text, &env).unwrap())
        .await
        .unwrap();
    let url = server.url();
    let wallet = gas_key.address().to_checksum(None);

    let (status, r) = ready(&url).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["ready"], true);
    assert_eq!(r["failed"], serde_json::json!([]));
    assert_eq!(r["checks"]["database"]["ok"], true);
    assert_eq!(r["checks"]["database"]["backend"], "sqlite");
    assert_eq!(r["checks"]["migrations"]["ok"], true);
    assert_eq!(r["checks"]["rpc"][NETWORK]["ok"], true);
    assert_eq!(r["checks"]["rpc"][NETWORK]["chainId"], CHAIN_ID);
    assert_eq!(r["checks"]["gas_wallets"][&wallet]["ok"], true);
    assert_eq!(
        r["checks"]["gas_wallets"][&wallet]["balance"][NETWORK],
        U256::from(10u128.pow(22)).to_string(),
        "anvil funds its accounts with 10000 ETH"
    );

    // An empty gas wallet is not ready, and only that check says so.
    let provider = alloy::providers::ProviderBuilder::new().connect_http(anvil.endpoint_url());
    provider
        .anvil_set_balance(gas_key.address(), U256::ZERO)
        .await
        .unwrap();
    let (status, r) = ready(&url).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["failed"], serde_json::json!(["gas_wallets"]));
    assert_eq!(r["checks"]["gas_wallets"][&wallet]["balance"][NETWORK], "0");
    provider
        .anvil_set_balance(gas_key.address(), U256::from(1u64))
        .await
        .unwrap();
    assert_eq!(ready(&url).await.0, 200);

    // The node goes away: 503 naming the rpc check; the database is still fine.
    drop(anvil);
    let (status, r) = ready(&url).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["ready"], false);
    assert!(
        r["failed"].as_array().unwrap().contains(&"rpc".into()),
        "{r}"
    );
    assert_eq!(r["checks"]["rpc"][NETWORK]["ok"], false);
    assert!(
        r["checks"]["rpc"][NETWORK]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("localhost:{port}")),
        "{r}"
    );
    assert_eq!(r["checks"]["database"]["ok"], true);

    // A node at the same address again: ready again.
    let anvil = spawn_anvil(Some(port));
    let (status, r) = ready(&url).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["checks"]["rpc"][NETWORK]["chainId"], CHAIN_ID);
    drop(anvil);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_a_node_on_the_wrong_chain() {
    let anvil = Anvil::at(anvil_binary().unwrap())
        .chain_id(1)
        .try_spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\npublic = true\nlisten = \"127.0.0.1:0\"\n[[networks]]\nchain_id = {CHAIN_ID}\nrpc_urls = [\"{}\"]\n\
         [ledger]\nurl = \"sqlite://{}/l.db\"\n",
        anvil.endpoint(),
        dir.path().display()
    );
    let server = RunningServer::start(&Config::from_toml(&text, &BTreeMap::new()).unwrap())
        .await
        .unwrap();
    let (status, r) = ready(&server.url()).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["failed"], serde_json::json!(["rpc"]));
    assert_eq!(r["checks"]["rpc"][NETWORK]["chainId"], 1);
    // No gas wallet configured: nothing to check, nothing failed.
    assert_eq!(r["checks"]["gas_wallets"], serde_json::json!({}));
    server.stop().await;
}

/// Headless Chromium, or `None` (outside CI) when it is not installed. In CI a missing browser
/// fails the test.
fn chromium() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("CHROMIUM_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
        });
    match found {
        Some(p) => Some(p),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("chromium is required in CI (apt-get install chromium)")
        }
        None => {
            eprintln!(
                "\n*** SKIPPED (not CI): the operator page test needs chromium (apt-get install chromium) ***\n"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_page_shows_settlements_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let h = Harness::start().await;
    let payer = h.funded_payer(ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let (status, a) = h.settle(&h.body(2, &req, &h.sign(&payer, &req))).await;
    assert_eq!((status, &a["success"]), (200, &Value::Bool(true)), "{a}");
    let tx = a["transaction"].as_str().unwrap().to_owned();
    assert_eq!(tx.len(), 66);

    let page = get(&h, "/").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    let without_svg_namespace = html.replace("\"http://www.w3.org/2000/svg\"", "");
    for external in [
        "http://", "https://", "src=", "<link", "url(", "@import", "//cdn",
    ] {
        assert!(
            !without_svg_namespace.contains(external),
            "the page loads no external assets ({external})"
        );
    }
    assert!(
        !html.contains(&tx),
        "the hash comes from /status, not the HTML"
    );

    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&browser)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.path().display()),
                "--virtual-time-budget=5000",
                "--dump-dom",
                &format!("{}/", h.url()),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 90 s")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&tx),
        "the DOM lacks the transaction {tx}:\n{dom}"
    );
    assert!(dom.contains(NETWORK), "the DOM lacks the network:\n{dom}");
    assert!(
        dom.contains(&h.gas_key.address().to_checksum(None)),
        "the DOM lacks the gas wallet"
    );
    assert!(!dom.contains("loading…"), "the page never rendered /status");
    assert!(dom.contains("<polyline") || dom.contains("collecting samples"));
}

/// The documented series names (without the `x402d_` prefix).
fn documented_series() -> std::collections::BTreeSet<String> {
    include_str!("../README.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `x402d_"))
        .map(|l| l[..l.find('`').unwrap()].to_owned())
        .collect()
}

#[test]
fn the_grafana_dashboard_charts_every_real_series_and_only_those() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("x402d_") {
                let name: String = expr[i + "x402d_".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_owned();
                used.insert(base);
            }
        }
    }
    let documented = documented_series();
    let unknown: Vec<_> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses undocumented series {unknown:?}"
    );
    let unused: Vec<_> = documented.difference(&used).collect();
    assert!(unused.is_empty(), "dashboard lacks {unused:?}");
    let scrape = include_str!("../deploy/prometheus.yml");
    assert!(scrape.contains("metrics_path: /metrics") && scrape.contains("job_name: x402d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_do_not_leak_through_debug_errors_or_labels() {
    let key = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    let text = "[[networks]]\nchain_id = 84532\nrpc_urls = [\"https://base-sepolia.example.com/v2/RPCSECRET\"]\n\
                [gas_wallets]\nprivate_keys = [\"$GAS\"]\n\
                [ledger]\nurl = \"postgres://admin:DBSECRET@127.0.0.1:1/x402d\"\n";
    let env = BTreeMap::from([("GAS".to_owned(), key.to_owned())]);
    let config = Config::from_toml(text, &env).unwrap();
    let shown = format!("{:?} {:?}", config.ledger, config.gas_wallets);
    assert!(
        !shown.contains("DBSECRET") && !shown.contains(key),
        "{shown}"
    );
    // A database URL we cannot use is refused without echoing its password.
    let e = x402d::ledger::Ledger::connect("mysql://admin:DBSECRET@db.example.com/x402d")
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains("DBSECRET"), "{e}");
    assert!(e.contains("mysql"), "{e}");
    // RPC clients print and label only scheme://host.
    let metrics = x402d::telemetry::Metrics::new();
    let chains = x402d::chain::Chains::from_config_with(&config, Some(&metrics)).unwrap();
    let shown = format!("{chains:?}");
    assert!(!shown.contains("RPCSECRET"), "{shown}");
    assert!(shown.contains("base-sepolia.example.com"), "{shown}");
    let exported = metrics.render();
    assert!(
        exported.contains("endpoint=\"base-sepolia.example.com\""),
        "{exported}"
    );
    assert!(!exported.contains("RPCSECRET"));
}

/// `deploy/cluster`: two nodes on one PostgreSQL and one Redis, both scraped, the dashboard
/// provisioned; every file it mounts exists and each node's config is valid and distinct.
#[test]
fn the_cluster_compose_file_runs_two_nodes_on_one_ledger() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster");
    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("compose.yaml")).unwrap())
            .unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "node-a",
        "node-b",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains_key(serde_yaml_ng::Value::from(name)),
            "no service {name}"
        );
    }
    // Every bind mount's source is in the repository.
    for (_, service) in services {
        for v in service["volumes"].as_sequence().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(dir.join(source).exists(), "{source} is mounted but missing");
            }
        }
    }
    let env = BTreeMap::from([
        (
            "X402D_RPC_URL".to_owned(),
            "http://127.0.0.1:8545".to_owned(),
        ),
        (
            "X402D_GAS_KEY_1".to_owned(),
            "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318".to_owned(),
        ),
        (
            "X402D_GAS_KEY_2".to_owned(),
            "0x8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f".to_owned(),
        ),
        (
            "X402D_DATABASE_URL".to_owned(),
            "postgres://x402d:x402d@postgres:5432/x402d".to_owned(),
        ),
    ]);
    let mut names = Vec::new();
    for node in ["node-a", "node-b"] {
        let text = std::fs::read_to_string(dir.join(format!("{node}.toml"))).unwrap();
        let config = Config::from_toml(&text, &env).unwrap();
        assert!(config.server.redis_url.is_some(), "{node} shares Redis");
        assert_eq!(config.gas_wallets.private_keys.len(), 2);
        names.push(config.server.node_name());
        // Its variables come from the compose file's environment.
        for var in env.keys() {
            assert!(
                !text.contains(var.as_str())
                    || compose["x-node"]["environment"][var.as_str()].is_string(),
                "{var}"
            );
        }
    }
    assert_ne!(names[0], names[1], "nodes need distinct names");
    let scrape: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("prometheus.yml")).unwrap())
            .unwrap();
    let targets = &scrape["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets.as_sequence().unwrap().len(), 2);
    let provider: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("grafana/dashboards.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}
