//! Configuration: TOML, with `$VAR`/`${VAR}` indirection for secrets and `X402D_A__B=…` environment
//! overrides, validated at load. Every error names the key it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use serde::Deserialize;

use crate::protocol::primitives::deserialize_address;

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Toml(String),
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret string; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Networks served. A built-in network (8453, 84532) brings its USDC unless `builtin_tokens = false`.
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    #[serde(default)]
    pub exact: ExactConfig,
    #[serde(default)]
    pub gas_wallets: GasWalletsConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub settlement: SettlementSection,
    /// The embedded Dial merchant (paid SMS and phone numbers). Off unless the section is present.
    #[serde(default)]
    pub dial: Option<DialConfig>,
}

/// The Dial merchant module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialConfig {
    /// Where payments go.
    #[serde(deserialize_with = "deserialize_address")]
    pub pay_to: Address,
    /// A facilitator to use over HTTP instead of this process's own (any x402 facilitator).
    #[serde(default)]
    pub facilitator_url: Option<String>,
    /// The API key sent to `facilitator_url` as a bearer token (`$VAR` keeps it out of the file).
    #[serde(default)]
    pub facilitator_api_key: Option<crate::config::Secret>,
    /// The public base URL of the merchant (`https://dial.example.com`), required: resource URLs
    /// are built from it and SIWE messages must name its authority as their domain and it as their
    /// URI. Never taken from a request's `Host` (a relaying site could sign victims in).
    /// `x402d dev` sets it to its own address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// How long a payment authorization may stay open (`maxTimeoutSeconds` of every offer).
    #[serde(default = "default_dial_timeout")]
    pub max_timeout_seconds: u64,
    /// Requests per minute per client IP on the Dial routes.
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_minute: u32,
    /// Texts a bought number may send per month before `numbers/mine/send` charges again.
    #[serde(default = "default_text_quota")]
    pub number_text_quota: u32,
    /// Prices in US dollars, one entry per paid route (see the defaults).
    #[serde(default)]
    pub prices: DialPrices,
    #[serde(default)]
    pub provider: DialProvider,
    /// Hosts `/mcp` answers under (`Host` header; `name` or `name:port`). Empty: the host of
    /// `public_url` only. Other hosts are refused (DNS-rebinding defence of the MCP transport).
    #[serde(default)]
    pub mcp_allowed_hosts: Vec<String>,
    /// Browser origins allowed to call `/mcp` (`https://app.example`, `http://localhost:*`).
    /// Empty: the origin of `public_url` only. Requests without `Origin` (agents) always pass.
    #[serde(default)]
    pub mcp_allowed_origins: Vec<String>,
    /// The wallet refunds are paid from (its key, `$VAR`): USDC back to a payer whose paid work
    /// was not delivered. Unset: owed refunds are listed for the operator and never lost.
    #[serde(default)]
    pub refund_private_key: Option<Secret>,
    /// Seconds a number stays in `grace` after its paid month before it is released.
    #[serde(default = "default_grace")]
    pub number_grace_seconds: u64,
    /// Seconds a verification rental waits for its code; none received: refunded.
    #[serde(default = "default_verification_window")]
    pub verification_window_seconds: u64,
    /// Addresses (or CIDR ranges) webhooks may reach although private, loopback or link-local:
    /// nothing else private is ever called (no request forgery through a webhook URL).
    #[serde(default)]
    pub webhook_allow_private: Vec<String>,
    /// The first retry of a failed webhook delivery waits this long, doubling up to an hour.
    #[serde(default = "default_webhook_retry_ms")]
    pub webhook_retry_base_ms: u64,
    /// A webhook URL failing for this long is disabled (the owner sees it in `numbers/mine`).
    #[serde(default = "default_webhook_disable")]
    pub webhook_disable_after_seconds: u64,
    /// How often the background work runs: deliveries, expiry, releases, refunds.
    #[serde(default = "default_jobs_interval_ms")]
    pub jobs_interval_ms: u64,
}

fn default_grace() -> u64 {
    7 * 24 * 3600
}
fn default_verification_window() -> u64 {
    15 * 60
}
fn default_webhook_retry_ms() -> u64 {
    5_000
}
fn default_webhook_disable() -> u64 {
    24 * 3600
}
fn default_jobs_interval_ms() -> u64 {
    1_000
}

/// Route prices in dollars, as decimal strings (`"0.01"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialPrices {
    #[serde(default = "price_messages_send")]
    pub messages_send: String,
    #[serde(default = "price_sms_send")]
    pub sms_send: String,
    #[serde(default = "price_number")]
    pub numbers_buy: String,
    #[serde(default = "price_renew")]
    pub numbers_renew: String,
    #[serde(default = "price_esim")]
    pub esim_checkout: String,
    #[serde(default = "price_verification")]
    pub verifications_start: String,
    #[serde(default = "price_sms_send")]
    pub numbers_mine_send: String,
}

impl Default for DialPrices {
    fn default() -> Self {
        DialPrices {
            messages_send: price_messages_send(),
            sms_send: price_sms_send(),
            numbers_buy: price_number(),
            numbers_renew: price_renew(),
            esim_checkout: price_esim(),
            verifications_start: price_verification(),
            numbers_mine_send: price_sms_send(),
        }
    }
}

fn price_messages_send() -> String {
    "0.01".into()
}
fn price_sms_send() -> String {
    "0.05".into()
}
fn price_number() -> String {
    "100".into()
}
fn price_renew() -> String {
    "60".into()
}
fn price_esim() -> String {
    "2.45".into()
}
fn price_verification() -> String {
    "2.25".into()
}
fn default_dial_timeout() -> u64 {
    120
}
fn default_rate_limit() -> u32 {
    60
}
fn default_text_quota() -> u32 {
    500
}

/// Who delivers: the built-in sandbox (records everything in the database) or Twilio.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum DialProvider {
    #[default]
    Sandbox,
    Twilio(TwilioConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: Secret,
    /// The sender for `sms/send` and `messages/send` without `from`.
    pub from_number: String,
    /// Twilio's API root; tests point it at a local fake.
    #[serde(default = "default_twilio_url")]
    pub api_url: String,
}

fn default_twilio_url() -> String {
    "https://api.twilio.com".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://path/to/file.db` (created if missing) or `postgres://…` (for several nodes).
    #[serde(default = "default_ledger_url")]
    pub url: Secret,
    /// Prune, once an hour, payments settled or refused more than this many days ago whose
    /// authorizations have expired (with their events, batches and transactions); at least 2.
    /// Unset: keep everything (`x402d prune` does it by hand).
    #[serde(default)]
    pub retention_days: Option<u32>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: default_ledger_url(),
            retention_days: None,
        }
    }
}

fn default_ledger_url() -> Secret {
    Secret("sqlite://x402d-data/ledger.db".to_owned())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementSection {
    /// Blocks (including its own) before a settlement is reported.
    #[serde(default = "one")]
    pub confirmations: u64,
    /// How long `/settle` waits for the receipt before answering `settlement_pending` with the hash
    /// (also capped below the requirement's `maxTimeoutSeconds`).
    #[serde(default = "default_settle_timeout")]
    pub settle_timeout_seconds: u64,
    #[serde(default = "default_batch_window")]
    pub batch_window_ms: u64,
    #[serde(default = "default_batch_max")]
    pub batch_max_items: usize,
    /// A batch's modelled gas stays under this (Base caps a transaction at 2^24 ≈ 16.8M gas;
    /// half of it leaves room for ERC-6492 deployments the model may underestimate).
    #[serde(default = "default_batch_max_gas")]
    pub batch_max_gas: u64,
    /// The slowest receipt poll of in-flight transactions; lanes poll faster (to 10 ms) where
    /// receipts come sooner.
    #[serde(default = "default_receipt_poll")]
    pub receipt_poll_ms: u64,
    #[serde(default = "default_rebroadcast")]
    pub rebroadcast_after_seconds: u64,
    #[serde(default = "default_lookback")]
    pub log_lookback_blocks: u64,
    /// A transaction not mined after this long is replaced at the same nonce with higher fees.
    #[serde(default = "default_replace_after")]
    pub replace_after_seconds: u64,
    /// After inclusion, each settled payment's block is re-checked for this many blocks (reorgs);
    /// past it the payment is final. Default: about 20 minutes of Base blocks.
    #[serde(default = "default_finality")]
    pub finality_blocks: u64,
    /// At most this many of one gas wallet's transactions in flight (node pools take ~16).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_wallet: usize,
    /// How long a node's lease on a gas wallet's lane lasts unrenewed (renewed every third of
    /// it): nodes sharing a ledger take over a dead node's lanes this long after it stopped.
    #[serde(default = "default_lease")]
    pub lane_lease_seconds: u64,
    /// Nodes sharing a ledger spread the gas wallets' lanes among them (each holds at most
    /// ceil(lanes / live nodes) and hands an extra one over once it is idle). `false`: a node
    /// keeps every lane it takes, as when one node is meant to send everything.
    #[serde(default = "yes")]
    pub spread_lanes: bool,
}

impl Default for SettlementSection {
    fn default() -> Self {
        SettlementSection {
            confirmations: 1,
            settle_timeout_seconds: default_settle_timeout(),
            batch_window_ms: default_batch_window(),
            batch_max_items: default_batch_max(),
            batch_max_gas: default_batch_max_gas(),
            receipt_poll_ms: default_receipt_poll(),
            rebroadcast_after_seconds: default_rebroadcast(),
            log_lookback_blocks: default_lookback(),
            replace_after_seconds: default_replace_after(),
            finality_blocks: default_finality(),
            max_in_flight_per_wallet: default_max_in_flight(),
            lane_lease_seconds: default_lease(),
            spread_lanes: true,
        }
    }
}

fn default_replace_after() -> u64 {
    20
}
fn default_finality() -> u64 {
    600
}
fn default_lease() -> u64 {
    10
}
fn default_max_in_flight() -> usize {
    12
}

fn one() -> u64 {
    1
}
fn default_settle_timeout() -> u64 {
    25
}
fn default_batch_window() -> u64 {
    200
}
fn default_batch_max() -> usize {
    100
}
fn default_batch_max_gas() -> u64 {
    8_000_000
}
fn default_receipt_poll() -> u64 {
    50
}
fn default_rebroadcast() -> u64 {
    3
}
fn default_lookback() -> u64 {
    50_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones are answered 413.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Serve `/verify` and `/settle` to callers without an API key. Must be said: a node that is
    /// not public and has no key refuses to start (an open facilitator pays anyone's gas).
    #[serde(default)]
    pub public: bool,
    /// Requests a minute per client IP on every facilitator route (a burst of that many, then
    /// evenly replenished); unset: no per-IP limit (behind a proxy every client shares its IP).
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// `/settle` requests in progress at once; past it, 503 `overloaded` at once.
    #[serde(default = "default_max_concurrent_settles")]
    pub max_concurrent_settles: usize,
    /// A second listener for `/ready`, `/metrics`, `/status` and the operator page, which then
    /// leave the public one (keep them on a private interface).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// A Redis shared by every node (`redis://host:6379`): rate limits (per IP, per API key,
    /// Dial's) are counted there, once for all nodes. Unset: each node counts its own.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The first part of every key x402d writes to that Redis (deployments sharing one Redis).
    #[serde(default = "default_redis_namespace")]
    pub redis_namespace: String,
    /// This node's name among the nodes sharing a ledger (it holds lane leases under it); default
    /// the host's name. Nodes on one host need distinct names; a node restarted under its name
    /// takes its lanes back at once.
    #[serde(default)]
    pub node_id: Option<String>,
}

impl ServerConfig {
    /// The node's name for lane leases: `node_id`, else the host's name.
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "x402d".to_owned())
        })
    }
}

fn default_redis_namespace() -> String {
    "x402d".to_owned()
}

fn default_max_concurrent_settles() -> usize {
    4096
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            body_limit_bytes: default_body_limit(),
            public: false,
            rate_limit_per_minute: None,
            max_concurrent_settles: default_max_concurrent_settles(),
            admin_listen: None,
            redis_url: None,
            redis_namespace: default_redis_namespace(),
            node_id: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4021))
}

fn default_body_limit() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub chain_id: u64,
    /// One or more JSON-RPC endpoints, tried in order.
    pub rpc_urls: Vec<String>,
    /// The v1 network name (`base`, `base-sepolia` are built in).
    #[serde(default)]
    pub v1_name: Option<String>,
    #[serde(default = "yes")]
    pub builtin_tokens: bool,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// EIP-1559 fee policy of this chain's settlement transactions.
    #[serde(default)]
    pub fees: FeeConfig,
    /// The most wei all gas wallets together may spend on this chain in 24 hours (L1 fee
    /// included); none by default. Over it, payments wait (visible in `/status`).
    #[serde(default)]
    pub daily_gas_budget_wei: Option<u64>,
    /// Permit2 and the x402 proxies on this chain.
    #[serde(default)]
    pub permit2: Permit2Config,
    /// Our batch-settlement contract on this chain (`x402d deploy-settler` puts it at the same
    /// address everywhere): batches of EIP-3009 payments of one token go through it with packed
    /// calldata. Unset, or without code there: every batch goes through Multicall3.
    #[serde(default, deserialize_with = "deserialize_some_address")]
    pub batch_settler: Option<Address>,
}

/// A chain's fee policy: `max_fee_per_gas = next base fee × base_fee_multiplier + tip`, the tip the
/// `tip_percentile` of recent blocks' tips but at least `min_tip_wei`, never above `max_fee_per_gas_wei`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeConfig {
    #[serde(default = "default_multiplier")]
    pub base_fee_multiplier: f64,
    #[serde(default = "default_tip_percentile")]
    pub tip_percentile: f64,
    #[serde(default = "default_min_tip")]
    pub min_tip_wei: u64,
    /// A hard ceiling: a batch that cannot be sent under it waits, and is never sent above it.
    #[serde(default)]
    pub max_fee_per_gas_wei: Option<u64>,
}

impl Default for FeeConfig {
    fn default() -> Self {
        FeeConfig {
            base_fee_multiplier: default_multiplier(),
            tip_percentile: default_tip_percentile(),
            min_tip_wei: default_min_tip(),
            max_fee_per_gas_wei: None,
        }
    }
}

fn default_multiplier() -> f64 {
    2.0
}
fn default_tip_percentile() -> f64 {
    50.0
}
fn default_min_tip() -> u64 {
    1_000_000
}

fn yes() -> bool {
    true
}

/// An EIP-3009 token and its EIP-712 domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    #[serde(deserialize_with = "deserialize_address")]
    pub address: Address,
    /// EIP-712 domain name, exactly as the token's `name()` (USDC on Base: "USD Coin").
    pub name: String,
    /// EIP-712 domain version (USDC: "2"); only EIP-3009 needs it.
    #[serde(default)]
    pub version: String,
    pub decimals: u8,
    #[serde(default)]
    pub symbol: Option<String>,
    /// Smallest payment accepted, in atomic units, so nobody settles dust at the operator's gas
    /// expense. Default: a tenth of a cent of a dollar token (`10^decimals / 1000`; USDC: 1000).
    #[serde(default)]
    pub min_amount: Option<crate::protocol::AtomicAmount>,
    /// Largest payment accepted, in atomic units (default: no limit).
    #[serde(default)]
    pub max_amount: Option<crate::protocol::AtomicAmount>,
    /// How payers may sign for it: `eip3009` (the token's `transferWithAuthorization`) and/or
    /// `permit2` (any ERC-20 the payer approved to Permit2). Default: both.
    #[serde(default = "default_transfer_methods")]
    pub transfer_methods: Vec<crate::protocol::TransferMethod>,
}

fn default_transfer_methods() -> Vec<crate::protocol::TransferMethod> {
    vec![
        crate::protocol::TransferMethod::Eip3009,
        crate::protocol::TransferMethod::Permit2,
    ]
}

/// Where Permit2 and the x402 Permit2 proxies are on a chain; each unset one is at its canonical
/// address (`chain::bindings`), the same on every chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permit2Config {
    #[serde(default, deserialize_with = "deserialize_some_address")]
    pub address: Option<Address>,
    #[serde(default, deserialize_with = "deserialize_some_address")]
    pub exact_proxy: Option<Address>,
    #[serde(default, deserialize_with = "deserialize_some_address")]
    pub upto_proxy: Option<Address>,
}

fn deserialize_some_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Address>, D::Error> {
    deserialize_address(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactConfig {
    /// ERC-6492 factories we will deploy wallets through. Empty: counterfactual wallets are refused.
    #[serde(default, deserialize_with = "deserialize_addresses")]
    pub eip6492_factories: Vec<Address>,
    /// `validBefore` must be at least this far in the future (block-time buffer).
    #[serde(default = "default_valid_before_buffer")]
    pub valid_before_buffer_seconds: u64,
    /// `validBefore` at most this far in the future: an authorization that never expires would
    /// hold its key in the ledger and the in-memory index for ever. Default: one day.
    #[serde(default = "default_max_valid_before")]
    pub max_valid_before_seconds: u64,
    /// Only these `payTo` addresses are settled for (empty: any), for operators who serve known
    /// merchants only.
    #[serde(default, deserialize_with = "deserialize_addresses")]
    pub pay_to_allowlist: Vec<Address>,
}

impl Default for ExactConfig {
    fn default() -> Self {
        ExactConfig {
            eip6492_factories: Vec::new(),
            valid_before_buffer_seconds: default_valid_before_buffer(),
            max_valid_before_seconds: default_max_valid_before(),
            pay_to_allowlist: Vec::new(),
        }
    }
}

fn default_max_valid_before() -> u64 {
    86_400
}

fn default_valid_before_buffer() -> u64 {
    6
}

fn deserialize_addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Address>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| crate::protocol::primitives::parse_address(s).map_err(serde::de::Error::custom))
        .collect()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GasWalletsConfig {
    /// Private keys of the gas wallets, normally `$VAR` references.
    #[serde(default)]
    pub private_keys: Vec<Secret>,
    /// Files each holding one gas wallet's private key (hex), e.g. mounted secrets.
    #[serde(default)]
    pub key_files: Vec<std::path::PathBuf>,
}

impl Config {
    /// Loads and validates a config file, applying the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Config::from_toml(&text, &env)
    }

    /// Parses config text against an explicit environment (tests pass their own).
    pub fn from_toml(text: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut root: toml::Value = toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::Toml(e.to_string()))?;
        apply_env_overrides(&mut root, env)?;
        expand_vars(&mut root, "", env)?;
        let config: Config = serde_path_to_error::deserialize(root).map_err(|e| {
            let key = e.path().to_string();
            key_error(key, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server.redis_url
            && !reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss"))
        {
            return Err(key_error(
                "server.redis_url",
                format!("{url:?} is not a redis:// or rediss:// URL"),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(key_error(
                "server.body_limit_bytes",
                "must be at least 1024",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            if !seen.insert(n.chain_id) {
                return Err(key_error(
                    format!("networks[{i}].chain_id"),
                    format!("chain {} listed twice", n.chain_id),
                ));
            }
            if n.rpc_urls.is_empty() {
                return Err(key_error(
                    format!("networks[{i}].rpc_urls"),
                    "at least one RPC URL is required",
                ));
            }
            for (j, url) in n.rpc_urls.iter().enumerate() {
                let ok =
                    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                if !ok {
                    return Err(key_error(
                        format!("networks[{i}].rpc_urls[{j}]"),
                        format!("{url:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        for (i, n) in self.networks.iter().enumerate() {
            for (j, t) in n.tokens.iter().enumerate() {
                let key = format!("networks[{i}].tokens[{j}]");
                if t.transfer_methods.is_empty() {
                    return Err(key_error(
                        format!("{key}.transfer_methods"),
                        "must list at least one of \"eip3009\", \"permit2\"",
                    ));
                }
                if t.transfer_methods
                    .contains(&crate::protocol::TransferMethod::Eip3009)
                    && t.version.is_empty()
                {
                    return Err(key_error(
                        format!("{key}.version"),
                        "is required for eip3009 (the token's EIP-712 domain version); a token \
                         without EIP-3009 takes transfer_methods = [\"permit2\"]",
                    ));
                }
            }
            let f = &n.fees;
            if !(1.0..=100.0).contains(&f.base_fee_multiplier) {
                return Err(key_error(
                    format!("networks[{i}].fees.base_fee_multiplier"),
                    "must be between 1 and 100",
                ));
            }
            if !(0.0..=100.0).contains(&f.tip_percentile) {
                return Err(key_error(
                    format!("networks[{i}].fees.tip_percentile"),
                    "must be between 0 and 100",
                ));
            }
            if f.max_fee_per_gas_wei == Some(0) {
                return Err(key_error(
                    format!("networks[{i}].fees.max_fee_per_gas_wei"),
                    "must be above 0 (leave it out for no ceiling)",
                ));
            }
        }
        if self.ledger.retention_days.is_some_and(|d| d < 2) {
            return Err(key_error(
                "ledger.retention_days",
                "must be at least 2 (a key's daily budget reads the last day's payments)",
            ));
        }
        if self.settlement.lane_lease_seconds < 3 {
            return Err(key_error(
                "settlement.lane_lease_seconds",
                "must be at least 3 (it is renewed every third of it)",
            ));
        }
        if self.settlement.max_in_flight_per_wallet == 0 {
            return Err(key_error(
                "settlement.max_in_flight_per_wallet",
                "must be at least 1",
            ));
        }
        if self.settlement.confirmations == 0 {
            return Err(key_error("settlement.confirmations", "must be at least 1"));
        }
        if !(1..=300).contains(&self.settlement.batch_max_items) {
            return Err(key_error(
                "settlement.batch_max_items",
                "must be between 1 and 300 (Base caps a transaction near 16.7M gas)",
            ));
        }
        if !(200_000..=16_000_000).contains(&self.settlement.batch_max_gas) {
            return Err(key_error(
                "settlement.batch_max_gas",
                "must be between 200000 and 16000000 (Base caps a transaction near 16.7M gas)",
            ));
        }
        let url = &self.ledger.url.0;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(key_error(
                "ledger.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if let Some(dial) = &self.dial {
            dial.validate()?;
        }
        self.gas_wallet_signers().map(|_| ())
    }

    /// The gas wallets' signers: every inline key, then every key file; each wallet once.
    pub fn gas_wallet_signers(&self) -> Result<Vec<PrivateKeySigner>, ConfigError> {
        let not_a_key = |key: String| key_error(key, "not a 32-byte hex private key");
        let mut signers: Vec<PrivateKeySigner> = Vec::new();
        for (i, key) in self.gas_wallets.private_keys.iter().enumerate() {
            let signer = key
                .0
                .trim()
                .parse::<PrivateKeySigner>()
                .map_err(|_| not_a_key(format!("gas_wallets.private_keys[{i}]")))?;
            signers.push(signer);
        }
        for (i, path) in self.gas_wallets.key_files.iter().enumerate() {
            let name = format!("gas_wallets.key_files[{i}]");
            // The error names the file, never its content.
            let text = std::fs::read_to_string(path).map_err(|e| {
                key_error(name.clone(), format!("cannot read {}: {e}", path.display()))
            })?;
            let signer = text
                .trim()
                .parse::<PrivateKeySigner>()
                .map_err(|_| not_a_key(name.clone()))?;
            signers.push(signer);
        }
        let mut seen = std::collections::BTreeSet::new();
        signers.retain(|s| seen.insert(s.address()));
        Ok(signers)
    }
}

/// `X402D_SERVER__LISTEN=…` sets `server.listen`; `X402D_NETWORKS__0__RPC_URLS='["…"]'` sets an array
/// element's key. Values are read as TOML when they parse as such, else as strings. Variables
/// without `__` are not overrides (they are there for `$VAR` references).
fn apply_env_overrides(
    root: &mut toml::Value,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix("X402D_") else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut node = &mut *root;
        for (k, seg) in segments.iter().enumerate() {
            let last = k + 1 == segments.len();
            let here = segments[..=k].join(".");
            node = match node {
                toml::Value::Table(t) => {
                    if last {
                        t.insert(seg.clone(), value.clone());
                        break;
                    }
                    t.entry(seg.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                }
                toml::Value::Array(a) => {
                    let idx: usize = seg.parse().map_err(|_| {
                        key_error(format!("{name} ({here})"), "expected an array index")
                    })?;
                    let slot = a.get_mut(idx).ok_or_else(|| {
                        key_error(format!("{name} ({here})"), "array index out of range")
                    })?;
                    if last {
                        *slot = value.clone();
                        break;
                    }
                    slot
                }
                _ => {
                    return Err(key_error(
                        format!("{name} ({here})"),
                        "is not a table or array",
                    ));
                }
            };
        }
    }
    Ok(())
}

/// Replaces `$VAR` and `${VAR}` in every string by the variable's value; a missing variable is an
/// error naming the key.
fn expand_vars(
    v: &mut toml::Value,
    path: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains('$') => {
            *s = expand_string(s, env)
                .map_err(|var| key_error(path, format!("environment variable {var} is not set")))?;
        }
        toml::Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                expand_vars(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand_vars(item, &p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once('$') {
        out.push_str(before);
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            match braced.split_once('}') {
                Some(split) => split,
                None => return Err(format!("${{{braced} (unclosed)")),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            // `end` is where a char starts (or the end): `split_at_checked` cannot fail here.
            after.split_at_checked(end).unwrap_or((after, ""))
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(env.get(name).ok_or_else(|| name.to_owned())?);
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

impl DialConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.prices;
        for (key, price) in [
            ("messages_send", &p.messages_send),
            ("sms_send", &p.sms_send),
            ("numbers_buy", &p.numbers_buy),
            ("numbers_renew", &p.numbers_renew),
            ("esim_checkout", &p.esim_checkout),
            ("verifications_start", &p.verifications_start),
            ("numbers_mine_send", &p.numbers_mine_send),
        ] {
            crate::protocol::primitives::dollars_to_atomic(price, 6)
                .map_err(|e| key_error(format!("dial.prices.{key}"), e))?;
        }
        if self.public_url.is_none() {
            return Err(key_error(
                "dial.public_url",
                "is required: the public base URL of Dial (e.g. \"https://dial.example.com\"); \
                 resource URLs and SIWE sign-ins are checked against it",
            ));
        }
        for (key, url) in [
            ("dial.facilitator_url", &self.facilitator_url),
            ("dial.public_url", &self.public_url),
        ] {
            if let Some(url) = url
                && !reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            {
                return Err(key_error(key, format!("{url:?} is not an http(s) URL")));
            }
        }
        if self.max_timeout_seconds < 30 {
            return Err(key_error(
                "dial.max_timeout_seconds",
                "must be at least 30 (settlement needs time)",
            ));
        }
        if self.rate_limit_per_minute == 0 {
            return Err(key_error(
                "dial.rate_limit_per_minute",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_without_eip712_version_must_be_permit2_only() {
        let base = "[server]\npublic = true\n[[networks]]\nchain_id = 8453\nrpc_urls = [\"http://127.0.0.1:1\"]\n[[networks.tokens]]\naddress = \"0x1111111111111111111111111111111111111111\"\nname = \"Plain\"\ndecimals = 6\n";
        let e = Config::from_toml(base, &Default::default()).unwrap_err();
        assert!(
            e.to_string().contains("networks[0].tokens[0].version"),
            "{e}"
        );
        let permit2_only = format!("{base}transfer_methods = [\"permit2\"]\n");
        assert!(Config::from_toml(&permit2_only, &Default::default()).is_ok());
        let none = format!("{base}transfer_methods = []\n");
        let e = Config::from_toml(&none, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("transfer_methods"), "{e}");
        let unknown = format!("{base}transfer_methods = [\"erc7710\"]\n");
        assert!(Config::from_toml(&unknown, &Default::default()).is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn expands_secrets_and_applies_overrides() {
        let text = r#"
            [server]
            listen = "127.0.0.1:1"
            [[networks]]
            chain_id = 84532
            rpc_urls = ["http://127.0.0.1:8545"]
            [gas_wallets]
            private_keys = ["${GAS_KEY}"]
        "#;
        let c = Config::from_toml(
            text,
            &env(&[
                ("GAS_KEY", KEY),
                ("X402D_SERVER__LISTEN", "\"127.0.0.1:9\""),
                ("X402D_NETWORKS__0__RPC_URLS", "[\"http://127.0.0.1:1\"]"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9);
        assert_eq!(
            c.networks[0].rpc_urls,
            vec!["http://127.0.0.1:1".to_string()]
        );
        assert_eq!(c.gas_wallet_signers().unwrap().len(), 1);
        assert!(
            !format!("{c:?}").contains(&KEY[4..]),
            "secret leaked into Debug"
        );
    }

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../x402d.example.toml");
        let c = Config::from_toml(text, &env(&[("X402D_GAS_KEY", KEY)])).unwrap();
        assert_eq!(c.networks[0].chain_id, 84532);
        assert_eq!(c.server.body_limit_bytes, 65536);
        let dial = c.dial.expect("the example enables Dial");
        assert_eq!(dial.prices.esim_checkout, "2.45");
        assert_eq!(dial.public_url.as_deref(), Some("https://dial.example"));
        assert!(matches!(dial.provider, DialProvider::Sandbox));
    }

    #[test]
    fn dial_prices_and_provider_are_checked() {
        let no_url = "[dial]\npay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"\n";
        let missing = Config::from_toml(no_url, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("dial.public_url"), "{missing}");
        let no_host = Config::from_toml(&format!("{no_url}public_url = \"http://\"\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(no_host.contains("dial.public_url"), "{no_host}");
        let base = &format!("{no_url}public_url = \"https://dial.example\"\n");
        let bad_price = Config::from_toml(
            &format!("{base}[dial.prices]\nsms_send = \"five\"\n"),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_price.contains("dial.prices.sms_send"), "{bad_price}");
        let bad_kind = Config::from_toml(
            &format!("{base}[dial.provider]\nkind = \"carrier-pigeon\"\n"),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_kind.contains("dial.provider"), "{bad_kind}");
        let twilio = Config::from_toml(
            &format!("{base}[dial.provider]\nkind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"$TOK\"\nfrom_number = \"+15005550006\"\n"),
            &env(&[("TOK", "t0k")]),
        )
        .unwrap();
        match twilio.dial.unwrap().provider {
            DialProvider::Twilio(t) => {
                assert_eq!(t.auth_token.0, "t0k");
                assert_eq!(format!("{:?}", t.auth_token), "Secret(***)");
            }
            DialProvider::Sandbox => panic!("expected twilio"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("listne"), "{unknown}");
        let missing = Config::from_toml("[gas_wallets]\nprivate_keys = [\"$NOPE\"]\n", &env(&[]))
            .unwrap_err();
        assert!(
            missing.to_string().contains("gas_wallets.private_keys[0]")
                && missing.to_string().contains("NOPE"),
            "{missing}"
        );
        let bad_addr = Config::from_toml(
            "[[networks]]\nchain_id = 1\nrpc_urls = [\"http://x\"]\n[[networks.tokens]]\naddress = \"0x12\"\nname = \"T\"\nversion = \"1\"\ndecimals = 6\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            bad_addr
                .to_string()
                .contains("networks[0].tokens[0].address"),
            "{bad_addr}"
        );
        let bad_key = Config::from_toml("[gas_wallets]\nprivate_keys = [\"0x1234\"]\n", &env(&[]))
            .unwrap_err();
        assert!(
            bad_key.to_string().contains("gas_wallets.private_keys[0]"),
            "{bad_key}"
        );
    }

    #[test]
    fn gas_wallet_key_files_are_read_and_their_errors_name_the_key_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("gas1");
        let key = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
        std::fs::write(&good, format!("0x{key}\n")).unwrap();
        let text = format!(
            "[gas_wallets]\nprivate_keys = [\"{key}\"]\nkey_files = [\"{}\"]\n",
            good.display()
        );
        let c = Config::from_toml(&text, &env(&[])).unwrap();
        assert_eq!(
            c.gas_wallet_signers().unwrap().len(),
            1,
            "the same wallet counts once"
        );
        let bad = dir.path().join("gas2");
        std::fs::write(&bad, "not a key SECRETISH").unwrap();
        let text = format!("[gas_wallets]\nkey_files = [\"{}\"]\n", bad.display());
        let e = Config::from_toml(&text, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("gas_wallets.key_files[0]"), "{e}");
        assert!(!e.contains("SECRETISH"), "{e}");
        let missing = format!(
            "[gas_wallets]\nkey_files = [\"{}/nope\"]\n",
            dir.path().display()
        );
        let e = Config::from_toml(&missing, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gas_wallets.key_files[0]"), "{e}");
    }

    #[test]
    fn fee_policy_keys_are_checked() {
        let base =
            "[[networks]]\nchain_id = 8453\nrpc_urls = [\"http://127.0.0.1:1\"]\n[networks.fees]\n";
        let e = Config::from_toml(&format!("{base}max_fee_per_gas_wei = 0\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("networks[0].fees.max_fee_per_gas_wei"), "{e}");
        let e = Config::from_toml(&format!("{base}base_fee_multiplier = 0.5\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("networks[0].fees.base_fee_multiplier"), "{e}");
        let ok = Config::from_toml(
            &format!("{base}max_fee_per_gas_wei = 5000000000\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(ok.networks[0].fees.max_fee_per_gas_wei, Some(5_000_000_000));
    }
}
