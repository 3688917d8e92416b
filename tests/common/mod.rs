//! Shared harness: a real anvil with our contracts, and x402d serving against it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use x402d::client::{
    AuthorizationTerms, facilitator_body, payload_v1, payload_v2, sign_authorization,
};
use x402d::config::Config;
use x402d::dev::chain::{DevChain, artifacts};
use x402d::http::server::RunningServer;
use x402d::protocol::wire::{ExactEvmPayload, ExactExtra, RequirementsV1, RequirementsV2};
use x402d::protocol::{AtomicAmount, ChainId};

/// Runs `async fn $scenario(Backend)` as two tests, `$scenario::sqlite` and `$scenario::postgres`,
/// each on a runtime of `$workers` threads (default 2).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($scenario:ident) => {
        on_both_backends!($scenario, 2);
    };
    ($scenario:ident, $workers:tt) => {
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = $workers)]
            async fn sqlite() {
                super::$scenario(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = $workers)]
            async fn postgres() {
                super::$scenario(Backend::Postgres).await
            }
        }
    };
}

pub const CHAIN_ID: u64 = 84532;
pub const ONE_CENT: u64 = 10_000;

/// Which ledger backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test. PostgreSQL is required when `CI=true`; elsewhere a test
/// without it says so loudly and returns `None`.
pub async fn fresh_database(backend: Backend) -> Option<(String, Option<tempfile::TempDir>)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/ledger.db", dir.path().display());
            Some((url, Some(dir)))
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let base = std::env::var("X402D_TEST_POSTGRES")
                .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
            let mut admin = match sqlx::postgres::PgConnection::connect(&base).await {
                Ok(c) => c,
                Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                    panic!("PostgreSQL is required in CI ({base}): {e}")
                }
                Err(e) => {
                    eprintln!("SKIPPED (not CI): PostgreSQL unavailable at {base}: {e}");
                    return None;
                }
            };
            let name = format!(
                "x402d_test_{}",
                alloy::hex::encode(B256::random().as_slice().get(..8).unwrap())
            );
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            let url = match base.rfind('/') {
                Some(i) => format!("{}/{name}", &base[..i]),
                None => panic!("bad postgres url {base}"),
            };
            Some((url, None))
        }
    }
}

/// `dial.public_url` of every harness with Dial: not the address it listens on, so a test can see
/// that no answer is built from the request's `Host`.
pub const DIAL_PUBLIC_URL: &str = "https://dial.test";

/// Options of a harness.
pub struct HarnessOptions {
    pub backend: Backend,
    /// Extra `[settlement]` keys, e.g. `settle_timeout_seconds = 2`.
    pub settlement: String,
    /// Seconds between blocks; `None` mines each transaction at once.
    pub block_time: Option<u64>,
    /// Run x402d inside the test process (false: the test starts the binary itself).
    pub in_process: bool,
    /// Enable Dial with these extra `[dial]` keys (`pay_to` is the harness's).
    pub dial: Option<String>,
    /// Gas wallets (lanes), each funded with 100 ETH.
    pub gas_wallets: usize,
    /// Keys of the served network's `[networks.fees]` table.
    pub fees: String,
    /// Extra `[exact]` keys; `{pay_to}` stands for the harness's payee.
    pub exact: String,
    /// Extra `[[networks.tokens]]` tables of the served network.
    pub tokens: String,
    /// Extra keys of the served `[[networks]]` table; `{batch_settler}` stands for the chain's.
    pub network: String,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        HarnessOptions {
            backend: Backend::Sqlite,
            settlement: String::new(),
            block_time: None,
            in_process: true,
            dial: None,
            gas_wallets: 1,
            fees: String::new(),
            exact: String::new(),
            tokens: String::new(),
            network: String::new(),
        }
    }
}

pub struct Harness {
    pub chain: DevChain,
    /// The config the server runs with (without the environment), for starting it elsewhere.
    pub config_text: String,
    pub gas_key: PrivateKeySigner,
    /// Every gas wallet; `gas_key` is the first.
    pub gas_keys: Vec<PrivateKeySigner>,
    pub ledger_url: String,
    _ledger_dir: Option<tempfile::TempDir>,
    pub server: Option<RunningServer>,
    pub http: reqwest::Client,
    pub pay_to: Address,
    /// A second EIP-3009 token, configured by the operator, that tests may pause.
    pub extra_token: Address,
    /// A configured EIP-3009 token that keeps 1 % of every transfer ("Fee Dollar", version 1).
    pub fee_token: Address,
    /// A configured token address with no code.
    pub ghost_token: Address,
    /// A configured "token" that is a contract without EIP-3009 (Multicall3).
    pub not_3009_token: Address,
    /// A wallet factory that is not on the ERC-6492 allowlist.
    pub unlisted_factory: Address,
}

fn gas_env(keys: &[PrivateKeySigner]) -> BTreeMap<String, String> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            (
                format!("TEST_GAS_KEY_{i}"),
                alloy::hex::encode(k.to_bytes()),
            )
        })
        .collect()
}

pub fn now() -> u64 {
    x402d::facilitator::unix_now()
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(HarnessOptions::default())
            .await
            .expect("SQLite is always available")
    }

    /// Starts a harness; `None` when the backend is unavailable outside CI.
    pub async fn start_with(opts: HarnessOptions) -> Option<Harness> {
        let (ledger_url, ledger_dir) = fresh_database(opts.backend).await?;
        let chain = DevChain::start(CHAIN_ID, opts.block_time)
            .await
            .expect("anvil must start (run anvil/install.sh)");
        let extra_token = chain.deploy_token("Extra Dollar", "1", 6).await.unwrap();
        let fee_token = chain
            .deploy_fee_on_transfer_token("Fee Dollar", "1")
            .await
            .unwrap();
        let unlisted_factory = chain.deploy(artifacts::WALLET_FACTORY).await.unwrap();
        let ghost_token = Address::repeat_byte(0x61);
        let not_3009_token = x402d::chain::bindings::MULTICALL3;
        let gas_keys: Vec<PrivateKeySigner> = (0..opts.gas_wallets.max(1))
            .map(|_| PrivateKeySigner::random())
            .collect();
        for k in &gas_keys {
            chain
                .fund_eth(k.address(), U256::from(10u128.pow(20)))
                .await
                .unwrap();
        }
        let gas_key = gas_keys[0].clone();
        let key_refs = (0..gas_keys.len())
            .map(|i| format!("\"$TEST_GAS_KEY_{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let pay_to = Address::random();
        let dial = match &opts.dial {
            Some(extra) => format!(
                "[dial]\npay_to = \"{pay_to}\"\npublic_url = \"{DIAL_PUBLIC_URL}\"\n{extra}\n"
            ),
            None => String::new(),
        };
        let text = format!(
            r#"
            [server]
            public = true
            listen = "127.0.0.1:0"
            [[networks]]
            chain_id = {CHAIN_ID}
            rpc_urls = ["{rpc}"]
            {network}
            [[networks.tokens]]
            address = "{extra_token}"
            name = "Extra Dollar"
            version = "1"
            decimals = 6
            [[networks.tokens]]
            address = "{fee_token}"
            name = "Fee Dollar"
            version = "1"
            decimals = 6
            [[networks.tokens]]
            address = "{ghost_token}"
            name = "Ghost"
            version = "1"
            decimals = 6
            [[networks.tokens]]
            address = "{not_3009_token}"
            name = "Not3009"
            version = "1"
            decimals = 6
            [[networks.tokens]]
            address = "{plain_token}"
            name = "Test Token"
            decimals = 6
            transfer_methods = ["permit2"]
            {tokens}
            [networks.fees]
            {fees}
            [exact]
            eip6492_factories = ["{factory}"]
            {exact}
            [gas_wallets]
            private_keys = [{key_refs}]
            [ledger]
            url = "{ledger_url}"
            [settlement]
            {settlement}
            {dial}
            "#,
            rpc = chain.rpc_url(),
            plain_token = chain.plain_token,
            factory = chain.wallet_factory,
            settlement = opts.settlement,
            fees = opts.fees,
            tokens = opts.tokens,
            network = opts
                .network
                .replace("{batch_settler}", &chain.batch_settler.to_string()),
            exact = opts.exact.replace("{pay_to}", &pay_to.to_string()),
        );
        let env = gas_env(&gas_keys);
        let config = Config::from_toml(&text, &env).unwrap();
        let server = if opts.in_process {
            Some(RunningServer::start(&config).await.unwrap())
        } else {
            None
        };
        Some(Harness {
            chain,
            config_text: text,
            gas_key,
            gas_keys,
            ledger_url,
            _ledger_dir: ledger_dir,
            server,
            // Bounded: a request that never returns fails its test instead of hanging the suite.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(90))
                .build()
                .unwrap(),
            pay_to,
            extra_token,
            fee_token,
            ghost_token,
            not_3009_token,
            unlisted_factory,
        })
    }

    /// The in-process server's URL.
    pub fn url(&self) -> String {
        self.server.as_ref().expect("in-process server").url()
    }

    pub fn ledger(&self) -> &x402d::ledger::Ledger {
        self.server
            .as_ref()
            .expect("in-process server")
            .facilitator
            .ledger()
    }

    /// The environment the config refers to.
    pub fn config_env(&self) -> BTreeMap<String, String> {
        gas_env(&self.gas_keys)
    }

    pub async fn settle(&self, body: &Value) -> (u16, Value) {
        self.post("/settle", serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn usdc_balance(&self, who: Address) -> U256 {
        self.chain.balance_of(self.chain.usdc, who).await.unwrap()
    }

    /// `AuthorizationUsed` logs of a payer on the test USDC, on the chain as it is now.
    pub async fn authorizations_used(&self, payer: Address) -> usize {
        use alloy::providers::Provider;
        use alloy::sol_types::SolEvent;
        let filter = alloy::rpc::types::Filter::new()
            .address(self.chain.usdc)
            .event_signature(
                x402d::chain::bindings::IEip3009Token::AuthorizationUsed::SIGNATURE_HASH,
            )
            .topic1(B256::left_padding_from(payer.as_slice()))
            .from_block(0);
        self.chain.provider().get_logs(&filter).await.unwrap().len()
    }

    /// Fresh payers, each holding exactly `amount`.
    pub async fn funded_payers(&self, n: usize, amount: u64) -> Vec<PrivateKeySigner> {
        // One mint at a time: concurrent sends from the funder sometimes left a mint in anvil's
        // pool that was never mined (a test waiting forever under load); sequential costs a few
        // seconds per thousand payers.
        let mut payers = Vec::with_capacity(n);
        for _ in 0..n {
            payers.push(self.funded_payer(amount).await);
        }
        payers
    }

    /// A fresh payer holding `amount` of the test USDC.
    pub async fn funded_payer(&self, amount: u64) -> PrivateKeySigner {
        let payer = PrivateKeySigner::random();
        if amount > 0 {
            self.chain
                .mint(self.chain.usdc, payer.address(), U256::from(amount))
                .await
                .unwrap();
        }
        payer
    }

    /// A fresh payer holding `amount` of the plain ERC-20 (no EIP-3009), with Permit2 approved
    /// when `approve`.
    pub async fn plain_payer(&self, amount: u64, approve: bool) -> PrivateKeySigner {
        let payer = PrivateKeySigner::random();
        self.chain
            .fund_token(self.chain.plain_token, payer.address(), U256::from(amount))
            .await
            .unwrap();
        if approve {
            self.chain
                .approve_permit2(&payer, self.chain.plain_token)
                .await
                .unwrap();
        }
        payer
    }

    /// An exact requirement for `amount` of the plain ERC-20, paid through Permit2.
    pub fn permit2_requirement(&self, amount: u64) -> RequirementsV2 {
        RequirementsV2 {
            scheme: "exact".into(),
            network: format!("eip155:{CHAIN_ID}"),
            amount: AtomicAmount::from_u64(amount),
            asset: self.chain.plain_token,
            pay_to: self.pay_to,
            max_timeout_seconds: 60,
            extra: Some(ExactExtra {
                asset_transfer_method: Some("permit2".into()),
                ..Default::default()
            }),
        }
    }

    /// The v2 `/verify` or `/settle` body of a Permit2 payload for `req`.
    pub fn permit2_body(
        &self,
        req: &RequirementsV2,
        payload: &x402d::protocol::wire::Permit2Payload,
    ) -> Value {
        facilitator_body(
            2,
            payload_v2(req, payload),
            serde_json::to_value(req).unwrap(),
        )
    }

    /// A v2 requirement for `amount` of the test USDC to `pay_to`.
    pub fn requirement(&self, amount: u64) -> RequirementsV2 {
        RequirementsV2 {
            scheme: "exact".into(),
            network: format!("eip155:{CHAIN_ID}"),
            amount: AtomicAmount::from_u64(amount),
            asset: self.chain.usdc,
            pay_to: self.pay_to,
            max_timeout_seconds: 60,
            extra: Some(ExactExtra {
                name: Some(self.chain.usdc_name.clone()),
                version: Some("2".into()),
                asset_transfer_method: None,
                facilitator_address: None,
            }),
        }
    }

    /// Signs the usual terms of `req` as `signer`, with the domain the requirement names.
    pub fn sign(&self, signer: &PrivateKeySigner, req: &RequirementsV2) -> ExactEvmPayload {
        let terms = AuthorizationTerms::for_requirement(
            req.pay_to,
            req.amount,
            req.max_timeout_seconds,
            now(),
        );
        self.sign_terms(signer, req, &terms)
    }

    pub fn sign_terms(
        &self,
        signer: &PrivateKeySigner,
        req: &RequirementsV2,
        terms: &AuthorizationTerms,
    ) -> ExactEvmPayload {
        let extra = req.extra.clone().unwrap_or_default();
        sign_authorization(
            signer,
            ChainId(CHAIN_ID),
            req.asset,
            extra.name.as_deref().unwrap_or(""),
            extra.version.as_deref().unwrap_or(""),
            terms,
        )
        .unwrap()
    }

    /// A v2 body per payer, each paying `req` with a fresh authorization.
    pub fn v2_bodies(&self, payers: &[PrivateKeySigner], req: &RequirementsV2) -> Vec<Value> {
        payers
            .iter()
            .map(|p| self.body(2, req, &self.sign(p, req)))
            .collect()
    }

    /// The `/verify` body of version 1 or 2 for a (v2-shaped) requirement.
    pub fn body(&self, version: u8, req: &RequirementsV2, payload: &ExactEvmPayload) -> Value {
        if version == 2 {
            return facilitator_body(
                2,
                payload_v2(req, payload),
                serde_json::to_value(req).unwrap(),
            );
        }
        let v1 = to_v1(req);
        facilitator_body(
            1,
            payload_v1(&v1, payload),
            serde_json::to_value(&v1).unwrap(),
        )
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET path` of the in-process server, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn verify(&self, body: &Value) -> (u16, Value) {
        self.post("/verify", serde_json::to_vec(body).unwrap())
            .await
    }

    /// Asserts the payment verifies under v2 and v1.
    pub async fn expect_valid(&self, req: &RequirementsV2, payload: &ExactEvmPayload) {
        for version in [2, 1] {
            let (status, answer) = self.verify(&self.body(version, req, payload)).await;
            assert_eq!(status, 200, "v{version}: {answer}");
            assert_eq!(answer["isValid"], true, "v{version}: {answer}");
            assert_eq!(
                answer["payer"],
                payload.authorization.from.to_checksum(None),
                "v{version}"
            );
        }
    }

    /// Asserts the payment is refused under v2 and v1 with these reason names, `payer` filled.
    /// Returns the v2 message.
    pub async fn expect_invalid(
        &self,
        req: &RequirementsV2,
        payload: &ExactEvmPayload,
        v2: &str,
        v1: &str,
    ) -> String {
        let mut message = String::new();
        for (version, reason) in [(2, v2), (1, v1)] {
            let (status, answer) = self.verify(&self.body(version, req, payload)).await;
            assert_eq!(status, 200, "v{version}: {answer}");
            assert_eq!(answer["isValid"], false, "v{version}: {answer}");
            assert_eq!(answer["invalidReason"], reason, "v{version}: {answer}");
            assert_eq!(
                answer["payer"],
                payload.authorization.from.to_checksum(None),
                "v{version}: {answer}"
            );
            if version == 2 {
                message = answer["invalidMessage"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        message
    }
}

/// The v1 form of a v2 requirement (Base Sepolia is `base-sepolia` in v1).
pub fn to_v1(req: &RequirementsV2) -> RequirementsV1 {
    let network = match req.network.as_str() {
        "eip155:84532" => "base-sepolia".to_owned(),
        "eip155:8453" => "base".to_owned(),
        other => other.replace("eip155:", "chain-"),
    };
    RequirementsV1 {
        scheme: req.scheme.clone(),
        network,
        max_amount_required: req.amount,
        resource: "http://127.0.0.1/paid".into(),
        description: "test".into(),
        mime_type: "application/json".into(),
        output_schema: None,
        pay_to: req.pay_to,
        max_timeout_seconds: req.max_timeout_seconds,
        asset: req.asset,
        extra: req.extra.clone(),
    }
}

pub fn random_nonce() -> B256 {
    B256::random()
}

/// x402d running as its own process.
pub struct Service {
    pub child: std::process::Child,
    pub url: String,
    _config: tempfile::NamedTempFile,
}

impl Service {
    pub async fn start(h: &Harness, settlement: &str) -> Service {
        Service::start_with(h, settlement, "").await
    }

    /// With extra `[networks.fees]` keys.
    pub async fn start_with(h: &Harness, settlement: &str, fees: &str) -> Service {
        Service::start_node(h, settlement, fees, "").await
    }

    /// With extra `[networks.fees]` and `[server]` keys (`node_id = "a"`: one of several nodes).
    pub async fn start_node(h: &Harness, settlement: &str, fees: &str, server: &str) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = h
            .config_text
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace("[settlement]", &format!("[settlement]\n{settlement}"))
            .replace("[networks.fees]", &format!("[networks.fees]\n{fees}"))
            .replace("[server]", &format!("[server]\n{server}"));
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .envs(h.config_env())
            .env("X402D_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if reqwest::get(format!("{url}/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Service {
                    child,
                    url,
                    _config: config,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("x402d did not come up");
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crash.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub async fn settle(&self, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/settle", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// A failing assertion must not leave an x402d process behind holding the anvil chain.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `x402d text`: texts `to` through Dial's sandbox carrier at `dial_url`; asserts it succeeded
/// and returns what it printed.
pub async fn x402d_text(dial_url: &str, to: &str, from: &str, body: &str) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args([
            "text",
            "--dial-url",
            dial_url,
            "--to",
            to,
            "--from",
            from,
            body,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
