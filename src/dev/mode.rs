//! `x402d dev`: a local chain, funded wallets and the service, in one command. Uses the same
//! server start-up as `serve`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use serde::Serialize;

use crate::chain::bindings::{EXACT_PERMIT2_PROXY, PERMIT2, UPTO_PERMIT2_PROXY};
use crate::config::Config;
use crate::dev::chain::{DevChain, PLAIN_TOKEN_DECIMALS, PLAIN_TOKEN_NAME, PLAIN_TOKEN_SYMBOL};
use crate::http::server::RunningServer;

/// Options of `x402d dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub port: u16,
    pub chain_id: u64,
    pub payers: usize,
    pub env_out: Option<PathBuf>,
    /// The ledger (and Dial's records); a fresh file per run by default.
    pub ledger_url: String,
    /// Gas wallets to fund and settle from (each is a lane).
    pub gas_wallets: usize,
    /// Nodes serving the facilitator on one ledger (ports `port`, `port + 1`, …); above 1 the
    /// ledger must be PostgreSQL. Dial runs on the first.
    pub nodes: usize,
    /// The Redis the nodes share (rate limits), when there are several.
    pub redis_url: Option<String>,
    /// Start only the chain (contracts, funded wallets) and write a config for `x402d serve`.
    pub chain_only: bool,
    /// Where the ready `x402d.toml` is written.
    pub config_out: PathBuf,
    /// Fork this chain instead of starting an empty one (`chain_id` is then the upstream's).
    pub fork_url: Option<String>,
    /// The block to fork at (default: the upstream's latest).
    pub fork_block: Option<u64>,
    /// The token to serve on the fork (default: the chain's built-in USDC).
    pub fork_token: Option<alloy::primitives::Address>,
}

/// The environment `x402d dev` created, as `--env-out` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct DevEnvironment {
    pub rpc_url: String,
    pub chain_id: u64,
    pub network: String,
    pub usdc: String,
    pub eip712_name: String,
    pub eip712_version: String,
    pub facilitator_url: String,
    /// Every node's URL, the first being `facilitator_url`.
    pub facilitator_urls: Vec<String>,
    pub merchant_url: String,
    pub pay_to: String,
    pub gas_wallets: Vec<String>,
    pub payer_keys: Vec<String>,
    /// The gas wallets' private keys (a dev chain's throwaway keys), in the order of `gas_wallets`.
    pub gas_wallet_keys: Vec<String>,
    /// A ready `x402d.toml` for `x402d serve` against this chain (keys inline: dev chain only).
    pub config: String,
    /// Whether this process serves x402d itself (false with `--chain-only`).
    pub serving: bool,
    /// The chain this one forks (`--fork-url`), if any.
    pub forked_from: Option<String>,
    /// The block it was forked at, when one was asked for.
    pub fork_block: Option<u64>,
    /// Every token on the chain a payer holds, and how each can be paid (the USDC first).
    pub tokens: Vec<DevToken>,
    /// Permit2 and the x402 Permit2 proxies (every payer has approved Permit2 for every token).
    pub permit2: DevPermit2,
    /// The wallet Dial pays refunds from (funded with gas and the dev USDC).
    pub refund_wallet: String,
    /// Our batch settler on the chain (its address on every chain; `x402d deploy-settler`).
    pub batch_settler: String,
}

/// A token of the dev chain, as `--env-out` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevToken {
    pub address: String,
    pub name: String,
    /// The EIP-712 domain version; `None` for a token without an EIP-712 domain.
    pub version: Option<String>,
    pub decimals: u8,
    pub symbol: String,
    /// `extra.assetTransferMethod` values a payment in this token can use.
    pub transfer_methods: Vec<String>,
}

/// Where Permit2 and the x402 Permit2 proxies are on the dev chain.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevPermit2 {
    pub address: String,
    pub exact_proxy: String,
    pub upto_proxy: String,
}

/// A running dev environment; dropping it stops anvil.
pub struct DevStack {
    pub chain: DevChain,
    /// `None` with `--chain-only`.
    pub server: Option<RunningServer>,
    /// The other nodes, with `--nodes` above 1.
    pub others: Vec<RunningServer>,
    pub env: DevEnvironment,
}

/// USDC minted to each dev payer: $1,000 (and as many of the plain token).
const PAYER_FUNDS: u64 = 1_000_000_000;

/// Starts anvil, places the contracts, funds the gas wallets and the payers, writes a ready config,
/// and (unless `chain_only`) starts the service with it.
pub async fn start(opts: &DevOptions) -> anyhow::Result<DevStack> {
    let nodes = opts.nodes.max(1);
    if nodes > 1 && opts.ledger_url.starts_with("sqlite:") {
        anyhow::bail!(
            "--nodes {nodes} needs a ledger every node reaches: --ledger-url postgres://…"
        );
    }
    if nodes > 1 && opts.chain_only {
        anyhow::bail!("--nodes and --chain-only do not go together");
    }
    if usize::from(opts.port) + nodes - 1 > usize::from(u16::MAX) {
        anyhow::bail!("--port {} and {nodes} nodes pass port 65535", opts.port);
    }
    let chain = match &opts.fork_url {
        None => DevChain::start(opts.chain_id, None).await?,
        Some(url) => DevChain::fork(url, opts.fork_block, opts.fork_token).await?,
    };
    let chain_id = chain.chain_id;
    let mut gas = Vec::new();
    for _ in 0..opts.gas_wallets.max(1) {
        let g = PrivateKeySigner::random();
        chain
            .fund_eth(g.address(), U256::from(10u128.pow(20)))
            .await?;
        gas.push(g);
    }
    let mut payer_keys = Vec::new();
    for _ in 0..opts.payers {
        let p = PrivateKeySigner::random();
        chain
            .fund_usdc(p.address(), U256::from(PAYER_FUNDS))
            .await?;
        chain
            .fund_token(chain.plain_token, p.address(), U256::from(PAYER_FUNDS))
            .await?;
        // Ready for Permit2 payments in either token: the one-time approval a wallet would send.
        chain.approve_permit2(&p, chain.usdc).await?;
        chain.approve_permit2(&p, chain.plain_token).await?;
        payer_keys.push(format!("0x{}", alloy::hex::encode(p.to_bytes())));
    }
    let gas_wallet_keys: Vec<String> = gas
        .iter()
        .map(|g| format!("0x{}", alloy::hex::encode(g.to_bytes())))
        .collect();
    let pay_to = PrivateKeySigner::random().address();
    // Dial's refunds are paid, on the dev chain too: a wallet with gas and $1,000.
    let refund = PrivateKeySigner::random();
    chain
        .fund_eth(refund.address(), U256::from(10u128.pow(19)))
        .await?;
    chain
        .fund_usdc(refund.address(), U256::from(PAYER_FUNDS))
        .await?;
    let url = format!("http://127.0.0.1:{}", opts.port);
    let keys = gas_wallet_keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // On a fork the token is described as the chain says, not as the built-in table does.
    let mut tokens = if chain.fork.is_some() {
        format!(
            "builtin_tokens = false\n[[networks.tokens]]\naddress = \"{address}\"\nname = {name}\nversion = {version}\ndecimals = {decimals}\n",
            address = chain.usdc,
            name = toml::Value::String(chain.usdc_name.clone()),
            version = toml::Value::String(chain.usdc_version.clone()),
            decimals = chain.usdc_decimals,
        )
    } else {
        String::new()
    };
    // The plain ERC-20 is served through Permit2 only: it has no EIP-3009.
    tokens.push_str(&format!(
        "[[networks.tokens]]\naddress = \"{}\"\nname = \"{}\"\nsymbol = \"{}\"\ndecimals = {}\ntransfer_methods = [\"permit2\"]\n",
        chain.plain_token,
        super::chain::PLAIN_TOKEN_NAME,
        super::chain::PLAIN_TOKEN_SYMBOL,
        super::chain::PLAIN_TOKEN_DECIMALS,
    ));
    let text = format!(
        "# Written by `x402d dev` for its dev chain (throwaway keys; never use them elsewhere).\n\
         [server]\npublic = true\nlisten = \"127.0.0.1:{port}\"\n{cluster}[[networks]]\nchain_id = {chain_id}\nrpc_urls = [\"{rpc}\"]\n{tokens}\
         [exact]\neip6492_factories = [\"{factory}\"]\n[gas_wallets]\nprivate_keys = [{keys}]\n\
         [ledger]\nurl = \"{ledger}\"\n[dial]\npay_to = \"{pay_to}\"\npublic_url = \"{url}\"\nrefund_private_key = \"0x{refund_key}\"\n\
         # Local tests and benches call Dial from one address at load (the default is 60 a minute).\n\
         rate_limit_per_minute = 1000000\n",
        refund_key = alloy::hex::encode(refund.to_bytes()),
        cluster = if nodes > 1 {
            format!(
                "node_id = \"dev-0\"\n{}",
                opts.redis_url
                    .as_ref()
                    .map(|r| format!("redis_url = {}\n", toml::Value::String(r.clone())))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        },
        ledger = opts.ledger_url,
        port = opts.port,
        rpc = chain.rpc_url(),
        factory = chain.wallet_factory,
    );
    if let Some(dir) = opts
        .config_out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.config_out, &text)?;
    let server = if opts.chain_only {
        None
    } else {
        let config = Config::from_toml(&text, &BTreeMap::new())?;
        Some(RunningServer::start(&config).await?)
    };
    // Further nodes: the same chain, wallets and ledger under their own name and port, the
    // Redis shared; Dial stays on the first (its jobs and refunds run in one place).
    let mut others = Vec::new();
    for i in 1..nodes {
        // At most `last_port`, checked above.
        let port = opts
            .port
            .saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
        let node_text = node_config(&text, i, port, opts.redis_url.as_deref());
        let config = Config::from_toml(&node_text, &BTreeMap::new())?;
        others.push(RunningServer::start(&config).await?);
    }
    let url = server.as_ref().map_or(url, RunningServer::url);
    let mut facilitator_urls = vec![url.clone()];
    facilitator_urls.extend(others.iter().map(RunningServer::url));
    let env = DevEnvironment {
        rpc_url: chain.rpc_url(),
        chain_id,
        network: format!("eip155:{chain_id}"),
        usdc: chain.usdc.to_checksum(None),
        eip712_name: chain.usdc_name.clone(),
        eip712_version: chain.usdc_version.clone(),
        facilitator_url: url.clone(),
        facilitator_urls,
        merchant_url: url,
        pay_to: pay_to.to_checksum(None),
        gas_wallets: gas.iter().map(|g| g.address().to_checksum(None)).collect(),
        payer_keys,
        gas_wallet_keys,
        config: opts.config_out.display().to_string(),
        serving: server.is_some(),
        forked_from: chain.fork.as_ref().map(|f| f.upstream.clone()),
        fork_block: chain.fork.as_ref().and_then(|f| f.block),
        tokens: vec![
            DevToken {
                address: chain.usdc.to_checksum(None),
                name: chain.usdc_name.clone(),
                version: Some(chain.usdc_version.clone()),
                decimals: chain.usdc_decimals,
                symbol: chain.usdc_symbol.clone(),
                transfer_methods: vec!["eip3009".into(), "permit2".into()],
            },
            DevToken {
                address: chain.plain_token.to_checksum(None),
                name: PLAIN_TOKEN_NAME.into(),
                version: None,
                decimals: PLAIN_TOKEN_DECIMALS,
                symbol: PLAIN_TOKEN_SYMBOL.into(),
                transfer_methods: vec!["permit2".into()],
            },
        ],
        permit2: DevPermit2 {
            address: PERMIT2.to_checksum(None),
            exact_proxy: EXACT_PERMIT2_PROXY.to_checksum(None),
            upto_proxy: UPTO_PERMIT2_PROXY.to_checksum(None),
        },
        refund_wallet: refund.address().to_checksum(None),
        batch_settler: chain.batch_settler.to_checksum(None),
    };
    if let Some(path) = &opts.env_out {
        std::fs::write(path, serde_json::to_string_pretty(&env)?)?;
    }
    Ok(DevStack {
        chain,
        server,
        others,
        env,
    })
}

/// Node `i`'s config from the first node's: its name, port and the shared Redis; no Dial.
fn node_config(first: &str, i: usize, port: u16, redis_url: Option<&str>) -> String {
    let mut out = String::new();
    let mut in_dial = false;
    for line in first.lines() {
        if line.starts_with('[') {
            in_dial = line == "[dial]";
        }
        if in_dial || line.starts_with("node_id = ") || line.starts_with("redis_url = ") {
            continue;
        }
        if line.starts_with("listen = ") {
            out.push_str(&format!(
                "listen = \"127.0.0.1:{port}\"\nnode_id = \"dev-{i}\"\n"
            ));
            if let Some(r) = redis_url {
                out.push_str(&format!(
                    "redis_url = {}\n",
                    toml::Value::String(r.to_owned())
                ));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What to try next, printed by `x402d dev`.
pub fn next_steps(env: &DevEnvironment) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "x402d".into());
    let key = env.payer_keys.first().map(String::as_str).unwrap_or("0x…");
    let forked = env
        .forked_from
        .as_ref()
        .map_or(String::new(), |u| match env.fork_block {
            Some(b) => format!(", a fork of {u} at block {b}"),
            None => format!(", a fork of {u}"),
        });
    if !env.serving {
        return format!(
            "x402d dev --chain-only: the dev chain is running\n  chain        {rpc} (chain id {id}, USDC {usdc}{forked})\n  gas wallets  {gas}\n  config       {config}\n\nServe against it:\n  {exe} serve --config {config}\n\nCtrl-C stops the chain.\n",
            rpc = env.rpc_url,
            id = env.chain_id,
            usdc = env.usdc,
            gas = env.gas_wallets.join(", "),
            config = env.config,
        );
    }
    format!(
        "x402d dev is running\n  facilitator  {f}  (POST /verify, POST /settle, GET /supported)\n  Dial         {m}/api/v1/…  (paid SMS and numbers, pays {pay_to})\n  chain        {rpc} (chain id {id}, USDC {usdc}{forked})\n  gas wallets  {gas}\n  payers       {n} funded with $1,000 and 1,000 TT each, Permit2 approved (keys in --env-out)\n\nTry:\n  curl -s {f}/supported\n  curl -s {m}/api/v1/discovery\n  curl -si -X POST {m}/api/v1/sms/send -H 'content-type: application/json' -d '{{\"to\":\"+14155550100\",\"message\":\"hi\"}}'   # 402 + offer\n\nPay for it (a payer key from this chain):\n  X402D_PAYER_KEY={key} {exe} pay -X POST -d '{{\"to\":\"+14155550100\",\"message\":\"hello from x402\"}}' {m}/api/v1/sms/send\n\nCtrl-C stops everything.\n",
        f = env.facilitator_url,
        m = env.merchant_url,
        pay_to = env.pay_to,
        rpc = env.rpc_url,
        id = env.chain_id,
        usdc = env.usdc,
        gas = env.gas_wallets.join(", "),
        n = env.payer_keys.len(),
    )
}
