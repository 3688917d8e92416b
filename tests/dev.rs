//! `x402d dev`, the README's first command: it comes up with a local chain, Dial and funded payers,
//! `--env-out` describes it well enough to pay, and SIGTERM stops everything it started.

mod common;

use std::process::Stdio;
use std::time::Duration;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use common::x402d_text;
use serde_json::Value;
use x402d::client::{PayRequest, pay};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port whose next one is free too (for `--nodes 2`), both held until the pair is found.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

#[tokio::test]
async fn dev_env_out_pays_and_sigterm_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("env.json");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["dev", "--payers", "2", "--port", &port.to_string()])
        .arg("--env-out")
        .arg(&env_path)
        .arg("--ledger-url")
        .arg(format!("sqlite://{}/dev.db", dir.path().display()))
        .env("X402D_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut env: Option<Value> = None;
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&env_path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            env = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = env.expect("x402d dev wrote --env-out");
    for key in [
        "rpc_url",
        "chain_id",
        "network",
        "usdc",
        "eip712_name",
        "eip712_version",
        "facilitator_url",
        "merchant_url",
        "pay_to",
        "gas_wallets",
        "payer_keys",
    ] {
        assert!(!env[key].is_null(), "{key} missing from {env}");
    }
    assert_eq!(env["chain_id"], 84532);
    assert_eq!(env["network"], "eip155:84532");
    assert_eq!(env["usdc"], "0x036CbD53842c5426634e7929541eC2318f3dCF7e");
    assert_eq!(env["payer_keys"].as_array().unwrap().len(), 2);
    let plain_token = assert_permit2_ready(&env).await;
    assert_ne!(plain_token.to_checksum(None), env["usdc"]);

    // Pay Dial with a key from the file, exactly as a newcomer would.
    let payer: PrivateKeySigner = env["payer_keys"][0].as_str().unwrap().parse().unwrap();
    let merchant = env["merchant_url"].as_str().unwrap();
    let http = reqwest::Client::new();
    let out = pay(
        &http,
        &payer,
        &PayRequest {
            method: reqwest::Method::POST,
            url: format!("{merchant}/api/v1/sms/send"),
            body: Some(r#"{"to":"+14155550100","message":"hello from x402d dev"}"#.into()),
            headers: Vec::new(),
            network: Some(env["network"].as_str().unwrap().to_owned()),
            asset: None,
            max_amount: "1".into(),
            force_v1: false,
            scheme: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let receipt = out.receipt.expect("a settlement receipt");
    assert!(receipt.success);
    assert_eq!(receipt.network, "eip155:84532");

    // The receive flow of the README: rent a verification number, `x402d text` it, read the code.
    let out = pay(
        &http,
        &payer,
        &PayRequest {
            method: reqwest::Method::POST,
            url: format!("{merchant}/api/v1/verifications/start"),
            body: Some(r#"{"service":"acme"}"#.into()),
            headers: Vec::new(),
            network: None,
            asset: None,
            max_amount: "3".into(),
            force_v1: false,
            scheme: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    let rented: Value = serde_json::from_str(&out.body).unwrap();
    x402d_text(
        merchant,
        rented["phoneNumber"].as_str().unwrap(),
        "acme",
        "Your acme code is 482913",
    )
    .await;
    let code: Value = http
        .get(rented["codeUrl"].as_str().unwrap().to_owned() + "?wait=5")
        .bearer_auth(rented["readToken"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code["code"], "482913", "{code}");
    assert!(env["refund_wallet"].is_string());
    // The batch settler is on the dev chain at its address on every chain.
    let settler = x402d::chain::settler::address().unwrap();
    assert_eq!(
        env["batch_settler"]
            .as_str()
            .unwrap()
            .parse::<Address>()
            .unwrap(),
        settler,
        "{env}"
    );
    let code: Value = http
        .post(env["rpc_url"].as_str().unwrap())
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getCode", "params": [settler, "latest"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(code["result"].as_str().unwrap().len() > 2, "{code}");

    // SIGTERM: the process exits cleanly and its anvil is gone.
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("x402d dev stops within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let rpc = env["rpc_url"].as_str().unwrap();
    let after = http
        .post(rpc)
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}),
        )
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        after.is_err(),
        "anvil still answers at {rpc} after x402d dev stopped"
    );
}

/// `--env-out` lists the tokens (USDC: EIP-3009 and Permit2; the plain token: Permit2 only) and
/// where Permit2 and the x402 proxies are, and every payer holds the plain token and has approved
/// Permit2 for both tokens on chain. Returns the plain token.
async fn assert_permit2_ready(env: &Value) -> alloy::primitives::Address {
    use alloy::network::TransactionBuilder;
    use alloy::primitives::{Address, U256};
    use alloy::providers::Provider;
    use alloy::sol_types::SolCall;
    use x402d::chain::bindings::{EXACT_PERMIT2_PROXY, IErc20, PERMIT2, UPTO_PERMIT2_PROXY};

    let tokens = env["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{env}");
    let usdc = &tokens[0];
    assert_eq!(usdc["address"], env["usdc"]);
    assert_eq!(usdc["name"], env["eip712_name"]);
    assert_eq!(usdc["version"], env["eip712_version"]);
    assert_eq!(usdc["decimals"], 6);
    assert_eq!(usdc["symbol"], "USDC");
    assert_eq!(
        usdc["transferMethods"],
        serde_json::json!(["eip3009", "permit2"])
    );
    let plain = &tokens[1];
    assert_eq!(plain["name"], "Test Token");
    assert!(
        plain.get("version").is_some_and(Value::is_null),
        "no EIP-712 version, said as null: {plain}"
    );
    assert_eq!(plain["decimals"], 6);
    assert_eq!(plain["symbol"], "TT");
    assert_eq!(plain["transferMethods"], serde_json::json!(["permit2"]));
    assert_eq!(
        env["permit2"],
        serde_json::json!({
            "address": PERMIT2.to_checksum(None),
            "exactProxy": EXACT_PERMIT2_PROXY.to_checksum(None),
            "uptoProxy": UPTO_PERMIT2_PROXY.to_checksum(None),
        })
    );

    let chain = alloy::providers::ProviderBuilder::new()
        .connect_http(env["rpc_url"].as_str().unwrap().parse().unwrap());
    let read = |token: Address, data: Vec<u8>| {
        let chain = chain.clone();
        async move {
            let tx = alloy::rpc::types::TransactionRequest::default()
                .with_to(token)
                .with_input(data);
            U256::from_be_slice(&chain.call(tx).await.unwrap())
        }
    };
    let plain_token: Address = plain["address"].as_str().unwrap().parse().unwrap();
    let usdc_token: Address = usdc["address"].as_str().unwrap().parse().unwrap();
    for key in env["payer_keys"].as_array().unwrap() {
        let payer: PrivateKeySigner = key.as_str().unwrap().parse().unwrap();
        for token in [plain_token, usdc_token] {
            let allowance = IErc20::allowanceCall {
                owner: payer.address(),
                spender: PERMIT2,
            };
            assert_eq!(
                read(token, allowance.abi_encode()).await,
                U256::MAX,
                "{token}: Permit2 allowance"
            );
        }
        let held = IErc20::balanceOfCall {
            account: payer.address(),
        };
        assert_eq!(
            read(plain_token, held.abi_encode()).await,
            U256::from(1_000_000_000u64),
            "plain token funded"
        );
    }
    // Permit2 and both proxies have code at their canonical addresses.
    for at in [PERMIT2, EXACT_PERMIT2_PROXY, UPTO_PERMIT2_PROXY] {
        assert!(!chain.get_code_at(at).await.unwrap().is_empty(), "{at}");
    }
    plain_token
}

/// Pays one SMS through a Dial at `merchant`, on Base Sepolia.
async fn pay_sms(merchant: &str, payer: &PrivateKeySigner) -> x402d::client::PayOutcome {
    pay_sms_on(merchant, payer, "eip155:84532").await
}

/// Pays one SMS through a Dial at `merchant`, on `network`.
async fn pay_sms_on(
    merchant: &str,
    payer: &PrivateKeySigner,
    network: &str,
) -> x402d::client::PayOutcome {
    pay(
        &reqwest::Client::new(),
        payer,
        &PayRequest {
            method: reqwest::Method::POST,
            url: format!("{merchant}/api/v1/sms/send"),
            body: Some(r#"{"to":"+14155550100","message":"hello"}"#.into()),
            headers: Vec::new(),
            network: Some(network.into()),
            asset: None,
            max_amount: "1".into(),
            force_v1: false,
            scheme: None,
        },
    )
    .await
    .unwrap()
}

async fn wait_for_json(path: &std::path::Path) -> Value {
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} was never written", path.display());
}

/// Starts `x402d dev ARGS --env-out DIR/env.json` (its log in `DIR/dev.stderr`) and waits for
/// the environment it describes.
async fn start_dev(dir: &std::path::Path, args: &[&str]) -> (tokio::process::Child, Value) {
    let env_path = dir.join("env.json");
    let log = dir.join("dev.stderr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .arg("dev")
        .args(args)
        .arg("--env-out")
        .arg(&env_path)
        .env("X402D_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let env = wait_for_env(&mut child, &env_path, &log).await;
    (child, env)
}

/// Waits for `x402d dev` to write its `--env-out`; fails at once, with the exit status and what it
/// printed (its stderr goes to `log`), if it exits first.
async fn wait_for_env(
    child: &mut tokio::process::Child,
    path: &std::path::Path,
    log: &std::path::Path,
) -> Value {
    let printed = || std::fs::read_to_string(log).unwrap_or_default();
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return v;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "x402d dev exited ({status}) before writing --env-out:\n{}",
                printed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} was never written in 60 s; x402d dev printed:\n{}",
        path.display(),
        printed()
    );
}

/// Sends SIGTERM and waits for a clean exit (SIGKILL would orphan the child's anvil).
async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("x402d dev stops within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

fn serve(config: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["serve", "--config", config])
        .env("X402D_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_healthy(url: &str) {
    for _ in 0..200 {
        if reqwest::get(format!("{url}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became healthy");
}

#[tokio::test]
async fn chain_only_outlives_a_killed_serve_and_lists_every_gas_wallet() {
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("env.json");
    let config_path = dir.path().join("x402d.toml");
    let port = free_port();
    let mut chain = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["dev", "--chain-only", "--gas-wallets", "3", "--payers", "2"])
        .args(["--port", &port.to_string()])
        .arg("--env-out")
        .arg(&env_path)
        .arg("--config-out")
        .arg(&config_path)
        .arg("--ledger-url")
        .arg(format!("sqlite://{}/ledger.db", dir.path().display()))
        .env("X402D_LOG", "warn")
        .stdout(Stdio::null())
        // Not inherited: its anvil would hold the test runner's output open if it outlived us.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let env = wait_for_json(&env_path).await;
    assert_eq!(env["gas_wallets"].as_array().unwrap().len(), 3, "{env}");
    let keys = env["gas_wallet_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for (k, w) in keys.iter().zip(env["gas_wallets"].as_array().unwrap()) {
        let signer: PrivateKeySigner = k.as_str().unwrap().parse().unwrap();
        assert_eq!(signer.address().to_checksum(None), w.as_str().unwrap());
    }
    assert_eq!(env["serving"], false);
    assert_eq!(env["config"], config_path.display().to_string());
    let merchant = env["merchant_url"].as_str().unwrap().to_owned();
    let payer: PrivateKeySigner = env["payer_keys"][0].as_str().unwrap().parse().unwrap();

    let config = env["config"].as_str().unwrap().to_owned();
    let mut first = serve(&config);
    wait_healthy(&merchant).await;
    let out = pay_sms(&merchant, &payer).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.receipt.is_some_and(|r| r.success));
    first.kill().await.unwrap(); // SIGKILL

    // The chain outlived it: a new serve on the same chain and ledger carries on.
    let _second = serve(&config);
    wait_healthy(&merchant).await;
    let out = pay_sms(&merchant, &payer).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.receipt.is_some_and(|r| r.success));
    // SIGTERM, not SIGKILL: `x402d dev` stops its anvil on the way out.
    terminate(&mut chain).await;
}

/// `x402d dev --fork-url` against a running dev chain that plays Base (chain id 8453, USDC at its
/// canonical address): the fork serves the token already there, funds its payers through storage
/// writes, honours `--fork-block`, settles a payment, and leaves the upstream untouched.
#[tokio::test]
async fn dev_fork_url_settles_on_the_fork_and_leaves_the_upstream_untouched() {
    use alloy::network::TransactionBuilder;
    use alloy::primitives::{Address, B256, U256};
    use alloy::providers::Provider;
    use x402d::dev::chain::DevChain;

    let upstream = DevChain::start(8453, None).await.unwrap();
    let fork_block = upstream.provider().get_block_number().await.unwrap();
    // Minted after the fork block: the fork must not see it.
    let late = Address::random();
    upstream
        .mint(upstream.usdc, late, U256::from(5_000_000))
        .await
        .unwrap();
    let upstream_head = upstream.provider().get_block_number().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("env.json");
    let port = free_port();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["dev", "--payers", "1", "--port", &port.to_string()])
        .args(["--fork-url", &upstream.rpc_url()])
        .args(["--fork-block", &fork_block.to_string()])
        .arg("--env-out")
        .arg(&env_path)
        .arg("--ledger-url")
        .arg(format!("sqlite://{}/fork.db", dir.path().display()))
        .env("X402D_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let env = wait_for_json(&env_path).await;
    assert_eq!(env["chain_id"], 8453, "{env}");
    assert_eq!(env["network"], "eip155:8453");
    assert_eq!(env["usdc"], "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");
    assert_eq!(env["eip712_name"], "USD Coin", "read from the chain");
    assert_eq!(env["eip712_version"], "2");
    assert_eq!(env["forked_from"], upstream.rpc_url());
    assert_eq!(env["fork_block"], fork_block);
    // The fork found Permit2 and the proxies upstream and kept them; its payers are ready too.
    assert_permit2_ready(&env).await;

    let fork = alloy::providers::ProviderBuilder::new()
        .connect_http(env["rpc_url"].as_str().unwrap().parse().unwrap())
        .erased();
    let balance = |p: alloy::providers::DynProvider, who: Address| async move {
        let call = x402d::chain::bindings::IEip3009Token::balanceOfCall { account: who };
        let tx = alloy::rpc::types::TransactionRequest::default()
            .with_to(upstream_usdc())
            .with_input(alloy::sol_types::SolCall::abi_encode(&call));
        let out = p.call(tx).await.unwrap();
        U256::from_be_slice(&out)
    };
    assert_eq!(
        balance(fork.clone(), late).await,
        U256::ZERO,
        "the fork is at --fork-block, before the late mint"
    );
    assert_eq!(
        balance(upstream.provider().clone(), late).await,
        U256::from(5_000_000)
    );

    let payer: PrivateKeySigner = env["payer_keys"][0].as_str().unwrap().parse().unwrap();
    let pay_to: Address = env["pay_to"].as_str().unwrap().parse().unwrap();
    let funded = balance(fork.clone(), payer.address()).await;
    assert_eq!(
        funded,
        U256::from(1_000_000_000u64),
        "payer funded by a storage write"
    );
    let merchant = env["merchant_url"].as_str().unwrap().to_owned();
    let out = pay_sms_on(&merchant, &payer, "eip155:8453").await;
    assert_eq!(out.status, 200, "{}", out.body);
    let receipt = out.receipt.expect("a settlement receipt");
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(receipt.network, "eip155:8453");
    let paid = balance(fork.clone(), pay_to).await;
    assert!(paid > U256::ZERO, "the payee was paid on the fork");
    assert_eq!(balance(fork.clone(), payer.address()).await, funded - paid);
    let hash: B256 = receipt.transaction.parse().unwrap();
    assert!(
        fork.get_transaction_receipt(hash).await.unwrap().is_some(),
        "mined on the fork"
    );

    // The upstream saw nothing: no new block, no transaction, no balances.
    let u = upstream.provider();
    assert_eq!(u.get_block_number().await.unwrap(), upstream_head);
    assert!(u.get_transaction_receipt(hash).await.unwrap().is_none());
    assert_eq!(balance(u.clone(), pay_to).await, U256::ZERO);
    assert_eq!(balance(u.clone(), payer.address()).await, U256::ZERO);
    terminate(&mut dev).await;
}

fn upstream_usdc() -> alloy::primitives::Address {
    x402d::chain::builtin_usdc(8453).unwrap().0
}

#[tokio::test]
async fn dev_nodes_share_one_ledger_and_any_node_settles() {
    let Some((ledger_url, _dir)) = common::fresh_database(common::Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let config = dir.path().join("x402d.toml");
    let (mut child, env) = start_dev(
        dir.path(),
        &[
            "--payers",
            "1",
            "--nodes",
            "2",
            "--port",
            &port.to_string(),
            "--ledger-url",
            &ledger_url,
            "--config-out",
            config.to_str().unwrap(),
        ],
    )
    .await;
    let first = env["facilitator_url"].as_str().unwrap().to_owned();
    let second = format!("http://127.0.0.1:{}", port + 1);
    assert_eq!(env["facilitator_urls"], serde_json::json!([first, second]));
    // One payment settled on the second node (it may hold no lane: the first may send), then
    // the same payment on the first: one transfer, one hash.
    let req: x402d::protocol::wire::RequirementsV2 = serde_json::from_value(serde_json::json!({
        "scheme": "exact",
        "network": env["network"],
        "amount": "10000",
        "asset": env["usdc"],
        "payTo": env["pay_to"],
        "maxTimeoutSeconds": 60,
        "extra": {"name": env["eip712_name"], "version": env["eip712_version"]},
    }))
    .unwrap();
    let payer: PrivateKeySigner = env["payer_keys"][0].as_str().unwrap().parse().unwrap();
    let terms = x402d::client::AuthorizationTerms::for_requirement(
        req.pay_to,
        req.amount,
        60,
        x402d::clock::unix_now(),
    );
    let payload = x402d::client::sign_authorization(
        &payer,
        x402d::protocol::ChainId(env["chain_id"].as_u64().unwrap()),
        req.asset,
        env["eip712_name"].as_str().unwrap(),
        env["eip712_version"].as_str().unwrap(),
        &terms,
    )
    .unwrap();
    let body = x402d::client::facilitator_body(
        2,
        x402d::client::payload_v2(&req, &payload),
        serde_json::to_value(&req).unwrap(),
    );
    let http = reqwest::Client::new();
    let mut hashes = Vec::new();
    for url in [&second, &first] {
        let answer: Value = http
            .post(format!("{url}/settle"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["success"], true, "{url}: {answer}");
        hashes.push(answer["transaction"].clone());
    }
    assert_eq!(hashes[0], hashes[1]);
    // The pay_to holds exactly one payment.
    let balance_of = format!(
        "0x70a08231{:0>64}",
        env["pay_to"].as_str().unwrap().trim_start_matches("0x")
    );
    let rpc: Value = http
        .post(env["rpc_url"].as_str().unwrap())
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
            "params": [{"to": env["usdc"], "data": balance_of}, "latest"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let held = alloy::primitives::U256::from_str_radix(
        rpc["result"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(held, alloy::primitives::U256::from(10_000u64));
    terminate(&mut child).await;
}

/// wrk drives `x402d bench`; CI installs it, elsewhere its absence skips.
fn have_wrk() -> bool {
    let found = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "wrk is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED (not CI): wrk is not installed");
    }
    found
}

/// Runs `x402d bench …` and returns its JSON report. A run that fails is shown with its log
/// and tried once more (CI once saw a silent exit 1 after 60 s that no local run reproduced;
/// the log says why next time); a second failure fails the test.
async fn bench(args: &[&str]) -> Value {
    // One bench at a time: each saturates the two cores for its run.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    for attempt in 1..=2 {
        let started = std::time::Instant::now();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
            .arg("bench")
            .args(args)
            .env("X402D_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("x402d bench {args:?} printed no report ({e}):\n{log}")
            });
        }
        let said = format!(
            "x402d bench {args:?} (attempt {attempt}): {} after {:?}\nstdout: {}\nstderr:\n{log}",
            out.status,
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(attempt < 2, "{said}");
        eprintln!("{said}");
    }
    unreachable!("the second failure panics")
}

/// A short run of `x402d bench verify` on its own chain: verifications and the node's own
/// simulations both measured, every answer as expected, the ratio reported.
#[tokio::test]
async fn bench_verify_smoke_measures_x402d_and_the_node() {
    if !have_wrk() {
        return;
    }
    let r = bench(&[
        "verify",
        "--payments",
        "400",
        "--payers",
        "2",
        "--connections",
        "4",
        "--duration",
        "2",
    ])
    .await;
    assert!(r["verify"]["requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["verify"]["unexpected"], 0, "{r}");
    assert!(r["node_eth_call"]["requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["node_eth_call"]["unexpected"], 0, "{r}");
    assert!(r["ratio_to_node"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(
        r["payloads_exhausted"],
        r["verify"]["requests"].as_u64().unwrap() > 400,
        "{r}"
    );
}

/// `x402d bench gas` compares Multicall3 with our batch settler on the same batches: the
/// settler's batch went through it, and it costs less gas and less L1 data per payment.
#[tokio::test]
async fn bench_gas_smoke_compares_multicall3_and_the_settler() {
    let r = bench(&["gas", "--sizes", "6"]).await;
    let points = r["points"].as_array().unwrap();
    let of = |contract: &str| {
        points
            .iter()
            .find(|p| p["contract"] == contract)
            .unwrap_or_else(|| panic!("no {contract} point: {r}"))
    };
    let (multicall, settler) = (of("multicall3"), of("settler"));
    assert_eq!(multicall["via_settler"], 0, "{r}");
    assert!(settler["via_settler"].as_u64().unwrap() >= 1, "{r}");
    let per = |p: &Value, k: &str| p[k].as_f64().unwrap();
    assert!(
        per(settler, "gas_per_payment") < per(multicall, "gas_per_payment"),
        "{r}"
    );
    assert!(
        per(settler, "fastlz_bytes_per_payment") < per(multicall, "fastlz_bytes_per_payment"),
        "{r}"
    );
    assert!(
        per(settler, "usd_per_payment") < per(multicall, "usd_per_payment"),
        "{r}"
    );
}

/// `x402d bench settle --facilitator URL --env FILE` loads a facilitator it did not start (here
/// the one `x402d dev` serves) and counts from the chain: each successful answer is one
/// `AuthorizationUsed`, nothing reverted, one gas wallet sent it all.
#[tokio::test]
async fn bench_settle_drives_a_facilitator_it_did_not_start() {
    if !have_wrk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join("env.json");
    let ledger = format!("sqlite://{}/dev.db", dir.path().display());
    let port = free_port().to_string();
    let (mut child, env) = start_dev(
        dir.path(),
        &["--payers", "2", "--port", &port, "--ledger-url", &ledger],
    )
    .await;
    let url = env["facilitator_url"].as_str().unwrap().to_owned();
    let r = bench(&[
        "settle",
        "--facilitator",
        &url,
        "--env",
        env_path.to_str().unwrap(),
        "--payments",
        "3000",
        "--connections",
        "8",
        "--duration",
        "3",
        "--duplicates",
        "0.2",
        "--pid",
        &child.id().unwrap().to_string(),
    ])
    .await;
    assert_eq!(r["facilitator"], url.trim_end_matches('/'), "{r}");
    // The memory figure is that process's own.
    assert_eq!(
        r["peak_rss"]["process"],
        format!("pid {}", child.id().unwrap()),
        "{r}"
    );
    let rss = r["peak_rss"]["mb"].as_f64().unwrap();
    assert!(rss > 5.0 && rss < 1000.0, "{r}");
    assert_eq!(r["duplicate_share"], 0.2, "{r}");
    let requests = r["wrk"]["requests"].as_u64().unwrap();
    assert!(requests > 50, "{r}");
    // Duplicates too are answered with success (the original's transaction).
    assert_eq!(r["wrk"]["unexpected"], 0, "{r}");
    assert_eq!(r["payloads_exhausted"], false, "{r}");
    // A fifth of the answers were repeats: fewer payments moved than were answered, about 4/5
    // of them (wrk may stop with up to a connection's worth unanswered that still settle).
    let moved = r["payments_confirmed"].as_u64().unwrap();
    assert!(
        moved < requests && moved * 10 >= requests * 7,
        "moved {moved}, answered {requests}: {r}"
    );
    assert_eq!(r["reverted_transactions"], 0, "{r}");
    assert!(r["transactions"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["wallets_used"], 1, "{r}");
    assert!(r["gas_per_payment"].as_f64().unwrap() > 10_000.0, "{r}");
    terminate(&mut child).await;
}

/// `x402d bench merchant` starts its own `x402d dev` and buys SMS from Dial end to end: every
/// paid request answered 200 with a settled receipt, each one an `AuthorizationUsed` on chain,
/// nothing reverted, and the dev process's own peak RSS reported.
#[tokio::test]
async fn bench_merchant_smoke_buys_sms_through_the_facilitator() {
    let r = bench(&["merchant", "--connections", "4", "--duration", "3"]).await;
    let paid = r["load"]["requests"].as_u64().unwrap();
    assert!(paid >= 4, "{r}");
    assert_eq!(r["load"]["unexpected"], 0, "{r}");
    assert!(r["load"].get("outcomes").is_none(), "{r}");
    // Dial answers after settlement: every paid SMS has moved its money.
    assert_eq!(r["payments_confirmed"].as_u64().unwrap(), paid, "{r}");
    assert_eq!(r["reverted_transactions"], 0, "{r}");
    assert!(r["gas_per_payment"].as_f64().unwrap() > 10_000.0, "{r}");
    assert!(
        r["url"].as_str().unwrap().ends_with("/api/v1/sms/send"),
        "{r}"
    );
    assert!(
        r["peak_rss"]["process"]
            .as_str()
            .unwrap()
            .starts_with("pid "),
        "{r}"
    );
    assert!(r["peak_rss"]["mb"].as_f64().unwrap() > 5.0, "{r}");
}
