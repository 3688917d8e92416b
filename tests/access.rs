//! API keys on `/verify` and `/settle`, managed by `x402d keys`: a node that is not public needs a
//! key to start and on every call; a key is limited to its payees and its daily budget, and a
//! revoked key stops working within seconds. Money is checked on chain.

mod common;

use alloy::primitives::{Address, U256};
use common::*;
use serde_json::Value;
use x402d::config::Config;
use x402d::http::server::RunningServer;

/// Runs `x402d keys …` against the config at `path`; returns (success, stdout, stderr).
fn keys(h: &Harness, path: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(path)
        .envs(h.config_env())
        .env("X402D_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn call(url: &str, route: &str, key: Option<&str>, body: &Value) -> (u16, Value, bool) {
    let mut r = reqwest::Client::new()
        .post(format!("{url}{route}"))
        .json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let challenged = r.headers().contains_key("www-authenticate");
    (status, r.json().await.unwrap_or(Value::Null), challenged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_serves_only_its_keys_within_their_payees_and_budgets() {
    let h = Harness::start_with(HarnessOptions {
        in_process: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = h.config_text.replace("public = true", "public = false");
    assert_ne!(text, h.config_text);
    let path = dir.path().join("x402d.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::from_toml(&text, &h.config_env()).unwrap();

    // Neither public nor keyed: it refuses to start, and says what to do.
    let refused = RunningServer::start(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("server.public") && refused.contains("x402d keys create"),
        "{refused}"
    );

    let (ok, key, err) = keys(
        &h,
        &path,
        &[
            "create",
            "--name",
            "shop",
            "--pay-to",
            &h.pay_to.to_string(),
            "--daily-amount",
            &(2 * ONE_CENT).to_string(),
        ],
    );
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("x402d_"), "{key}");
    let (ok, listed, err) = keys(&h, &path, &["list"]);
    assert!(ok, "{err}");
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !listed.contains(secret),
        "list never shows a secret: {listed}"
    );
    assert!(
        listed.contains("shop") && listed.contains("active"),
        "{listed}"
    );

    let server = RunningServer::start(&config).await.unwrap();
    let url = server.url();
    let payers = h.funded_payers(3, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let bodies: Vec<Value> = payers
        .iter()
        .map(|p| h.body(2, &req, &h.sign(p, &req)))
        .collect();

    // No key, a wrong key, a malformed header: 401 with a challenge; nothing is claimed.
    // The real key with its last hex digit changed (1 in 16 keys ends in 0: a fixed "0" was the
    // key itself then, and the test failed).
    let last = if key.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &key[..key.len() - 1]);
    assert_ne!(forged, key);
    for k in [None, Some(forged.as_str()), Some("x402d_nothing")] {
        for route in ["/verify", "/settle"] {
            let (status, answer, challenged) = call(&url, route, k, &bodies[0]).await;
            assert_eq!(status, 401, "{route} {k:?}: {answer}");
            assert_eq!(answer["error"], "unauthorized");
            assert!(challenged, "WWW-Authenticate on 401");
        }
    }
    // Public routes stay public.
    let supported = reqwest::get(format!("{url}/supported")).await.unwrap();
    assert_eq!(supported.status(), 200);

    // Another payee than the key's: 403, nothing settled.
    let mut foreign = h.requirement(ONE_CENT);
    foreign.pay_to = Address::random();
    let foreign_body = h.body(2, &foreign, &h.sign(&payers[2], &foreign));
    let (status, answer, _) = call(&url, "/settle", Some(&key), &foreign_body).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "pay_to_not_allowed");

    // Within the budget: two cents settle; the third cent is refused before anything is sent.
    for b in &bodies[..2] {
        let (status, answer, _) = call(&url, "/settle", Some(&key), b).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["success"], true, "{answer}");
    }
    let (status, answer, _) = call(&url, "/settle", Some(&key), &bodies[2]).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "budget_exhausted", "{answer}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(2 * ONE_CENT));
    assert_eq!(
        h.usdc_balance(payers[2].address()).await,
        U256::from(ONE_CENT)
    );
    // A replay of a settled payment is no new spending: it answers its outcome.
    let (status, again, _) = call(&url, "/settle", Some(&key), &bodies[0]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["success"], true, "{again}");

    // Revoked: refused within seconds (the key cache holds a record for 5 s).
    let id = key.split('_').nth(1).unwrap();
    let (ok, _, err) = keys(&h, &path, &["revoke", id]);
    assert!(ok, "{err}");
    let started = std::time::Instant::now();
    loop {
        let (status, _, _) = call(&url, "/verify", Some(&key), &bodies[2]).await;
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "revoked key still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let (ok, listed, _) = keys(&h, &path, &["list"]);
    assert!(ok && listed.contains("revoked"), "{listed}");

    // A key's own rate: a burst of 3, then 429 with Retry-After.
    let (ok, slow, err) = keys(
        &h,
        &path,
        &["create", "--name", "slow", "--per-minute", "3"],
    );
    assert!(ok, "{err}");
    let slow = slow.trim().to_owned();
    for left in (0..3).rev() {
        let r = reqwest::Client::new()
            .post(format!("{url}/verify"))
            .bearer_auth(&slow)
            .json(&bodies[2])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-remaining"], left.to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/verify"))
        .bearer_auth(&slow)
        .json(&bodies[2])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_facilitator_route_is_limited_per_ip_when_configured() {
    let h = Harness::start_with(HarnessOptions {
        in_process: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let text = h.config_text.replace(
        "public = true",
        "public = true\n            rate_limit_per_minute = 5",
    );
    let server = RunningServer::start(&Config::from_toml(&text, &h.config_env()).unwrap())
        .await
        .unwrap();
    let url = server.url();
    let routes = [
        "/supported",
        "/health",
        "/discovery/resources",
        "/supported",
        "/health",
    ];
    for (i, route) in routes.iter().enumerate() {
        let r = reqwest::get(format!("{url}{route}")).await.unwrap();
        assert_eq!(r.status(), 200, "{route}");
        assert_eq!(r.headers()["x-ratelimit-remaining"], (4 - i).to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{url}/verify"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the limit covers every route");
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_past_the_concurrency_limit_are_shed_at_once_and_lose_nothing() {
    use alloy::providers::ext::AnvilApi;
    let h = Harness::start_with(HarnessOptions {
        in_process: false,
        settlement: "settle_timeout_seconds = 3".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let text = h.config_text.replace(
        "public = true",
        "public = true\n            max_concurrent_settles = 1",
    );
    let server = RunningServer::start(&Config::from_toml(&text, &h.config_env()).unwrap())
        .await
        .unwrap();
    let url = server.url();
    let payers = h.funded_payers(2, ONE_CENT).await;
    let req = h.requirement(ONE_CENT);
    let first = h.body(2, &req, &h.sign(&payers[0], &req));
    let second = h.body(2, &req, &h.sign(&payers[1], &req));
    // Mining paused: the first settlement waits out its 3 s for a receipt, holding the one slot.
    h.chain.provider().anvil_set_auto_mine(false).await.unwrap();
    let waiting = tokio::spawn({
        let url = url.clone();
        async move { call(&url, "/settle", None, &first).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let (status, shed, _) = call(&url, "/settle", None, &second).await;
    assert_eq!(status, 503, "{shed}");
    assert_eq!(shed["error"], "overloaded");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "shed at once, not queued"
    );
    let (status, pending, _) = waiting.await.unwrap();
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["errorReason"], "settlement_pending", "{pending}");
    h.chain.provider().anvil_set_auto_mine(true).await.unwrap();
    h.chain.provider().evm_mine(None).await.unwrap();
    // Nothing was lost: the shed payment settles when sent again, the first one too.
    let (_, again, _) = call(&url, "/settle", None, &second).await;
    assert_eq!(again["success"], true, "{again}");
    assert_eq!(h.usdc_balance(h.pay_to).await, U256::from(2 * ONE_CENT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_takes_the_operator_routes_off_the_public_one() {
    let h = Harness::start_with(HarnessOptions {
        in_process: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let text = h.config_text.replace(
        "public = true",
        "public = true\n            admin_listen = \"127.0.0.1:0\"",
    );
    let server = RunningServer::start(&Config::from_toml(&text, &h.config_env()).unwrap())
        .await
        .unwrap();
    let public = server.url();
    let admin = server.admin_url().expect("an admin listener");
    assert_ne!(public, admin);
    for route in ["/metrics", "/status", "/ready", "/"] {
        let off = reqwest::get(format!("{public}{route}")).await.unwrap();
        assert_eq!(off.status(), 404, "{route} is not public");
        let on = reqwest::get(format!("{admin}{route}")).await.unwrap();
        assert!(
            on.status().is_success(),
            "{route} on the admin listener: {}",
            on.status()
        );
    }
    for route in ["/supported", "/health"] {
        assert_eq!(
            reqwest::get(format!("{public}{route}"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("x402d_http_requests_total"), "{metrics}");
    server.stop().await;
}

/// Two nodes on one Redis count a client once: 5 a minute means 5 across both, the sixth is 429 on
/// either. With Redis unreachable each node still limits (its own count), and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_share_the_per_ip_limit() {
    let h = Harness::start_with(HarnessOptions {
        in_process: false,
        ..Default::default()
    })
    .await
    .unwrap();
    // A namespace of its own: runs and tests sharing the machine's Redis never share counts.
    let namespace = format!("x402d-test-{}", alloy::primitives::B256::random());
    let with = |redis: &str| {
        h.config_text.replace(
            "public = true",
            &format!(
                "public = true\n            rate_limit_per_minute = 5\n            redis_url = \"{redis}\"\n            redis_namespace = \"{namespace}\""
            ),
        )
    };
    let config = Config::from_toml(&with("redis://127.0.0.1:6379"), &h.config_env()).unwrap();
    let a = RunningServer::start(&config).await.unwrap();
    let b = RunningServer::start(&config).await.unwrap();
    let get = |url: String| async move {
        let r = reqwest::get(format!("{url}/supported")).await.unwrap();
        let remaining = r
            .headers()
            .get("x-ratelimit-remaining")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            r.status().as_u16(),
            remaining,
            r.headers().contains_key("retry-after"),
        )
    };
    let mut remaining = Vec::new();
    for url in [a.url(), b.url(), a.url(), b.url(), a.url()] {
        let (status, left, _) = get(url).await;
        assert_eq!(status, 200);
        remaining.push(left.unwrap());
    }
    assert_eq!(
        remaining,
        ["4", "3", "2", "1", "0"],
        "one count across both nodes"
    );
    for url in [b.url(), a.url()] {
        let (status, _, retry_after) = get(url).await;
        assert_eq!(status, 429, "the sixth request, on either node");
        assert!(retry_after);
    }
    a.stop().await;
    b.stop().await;

    // Redis down (nothing listens there): each node counts on its own, and still limits.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config =
        Config::from_toml(&with(&format!("redis://127.0.0.1:{port}")), &h.config_env()).unwrap();
    let c = RunningServer::start(&config).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get(c.url()).await.0, 200);
    }
    assert_eq!(
        get(c.url()).await.0,
        429,
        "limited locally while Redis is away"
    );
    c.stop().await;
}
