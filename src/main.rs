//! The `x402d` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "x402d",
    version,
    about = "Self-hosted x402 facilitator and settlement engine"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the facilitator.
    Serve {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
    /// Local development: anvil with the test USDC at its canonical address, funded wallets, and
    /// the service on port 3721.
    Dev {
        #[arg(long, default_value_t = 3721)]
        port: u16,
        #[arg(long, default_value_t = 84532)]
        chain_id: u64,
        #[arg(long, default_value_t = 8)]
        payers: usize,
        /// Write the environment (URLs, addresses, keys) as JSON to this file.
        #[arg(long)]
        env_out: Option<PathBuf>,
        /// Ledger database; default: a fresh SQLite file under x402d-data/ (the dev chain is new
        /// each run, so old records would describe a chain that no longer exists).
        #[arg(long)]
        ledger_url: Option<String>,
        /// Gas wallets to fund and settle from (each is a lane with its own nonce).
        #[arg(long, default_value_t = 1)]
        gas_wallets: usize,
        /// Serve the facilitator from this many nodes on ports --port, --port+1, … sharing one
        /// ledger (needs --ledger-url postgres://…) and one Redis; `facilitator_urls` in the
        /// --env-out file lists them all. Each gas wallet is sent from by one node at a time.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// The Redis the nodes share for rate limits (with --nodes above 1).
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// Start only the dev chain (contracts, funded gas wallets and payers) and write a ready
        /// config for `x402d serve` (its path is `config` in the --env-out file).
        #[arg(long)]
        chain_only: bool,
        /// Where to write the ready `x402d.toml` (default: under x402d-data/).
        #[arg(long)]
        config_out: Option<PathBuf>,
        /// Fork this chain's JSON-RPC endpoint instead of starting an empty chain: its real token
        /// is served (EIP-712 domain read from the chain), payers get balances through anvil's
        /// storage cheats, and the upstream is only read. The chain id is the upstream's.
        #[arg(long, value_name = "URL")]
        fork_url: Option<String>,
        /// The block to fork at (default: the upstream's latest).
        #[arg(long, value_name = "N", requires = "fork_url")]
        fork_block: Option<u64>,
        /// The token to serve on the fork (default: the chain's built-in USDC).
        #[arg(long, value_name = "ADDRESS", requires = "fork_url")]
        fork_token: Option<alloy::primitives::Address>,
    },
    /// Load tests against a local chain this command sets up (needs `wrk`).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Pay for an x402 resource: request it, sign the offered EIP-3009 authorization, retry, print
    /// the answer and the decoded settlement receipt.
    Pay {
        /// The URL of the paid resource.
        url: String,
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// A JSON request body.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// Extra header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Only pay on this network (CAIP-2 id or v1 name).
        #[arg(long)]
        network: Option<String>,
        /// Only pay in this token.
        #[arg(long)]
        asset: Option<String>,
        /// The most to pay, in dollars.
        #[arg(long, default_value = "1")]
        max_amount: String,
        /// Pay with x402 v1 (`X-PAYMENT`).
        #[arg(long)]
        v1: bool,
        /// Only pay offers of this scheme (`exact` or `upto`).
        #[arg(long)]
        scheme: Option<String>,
        /// A file holding the payer's private key (default: the X402D_PAYER_KEY variable).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// URL is an MCP server (Streamable HTTP): call TOOL, pay its x402 offer, print the
        /// tool's result and the receipt (`x402d pay --mcp URL TOOL --args JSON`).
        #[arg(long, requires = "tool")]
        mcp: bool,
        /// The MCP tool to call (with --mcp).
        tool: Option<String>,
        /// The tool's arguments, a JSON object (with --mcp).
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// Text one of Dial's numbers through the sandbox provider, as a carrier would deliver it
    /// (`x402d dev` runs the sandbox): it lands in `numbers/mine/messages`, the number's webhook
    /// and, on a verification number, as the code.
    Text {
        /// The Dial number receiving the text (E.164).
        #[arg(long)]
        to: String,
        /// Who sends it: a number, short code or sender id.
        #[arg(long, default_value = "+14155550123")]
        from: String,
        /// Dial's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3721")]
        dial_url: String,
        /// The provider message id (the same id twice is one message).
        #[arg(long)]
        id: Option<String>,
        /// The text.
        body: String,
    },
    /// Apply the ledger migrations (also done at start-up) and exit.
    Migrate {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
    /// Prune the ledger: payments settled or refused before the cut-off whose authorizations
    /// have expired, with their events, batches and transactions (what `ledger.retention_days`
    /// does hourly), and print what went as JSON.
    Prune {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
        /// Keep this many days (at least 2; default: `ledger.retention_days` of the config).
        #[arg(long)]
        older_than_days: Option<u32>,
        /// Append each pruned payment to this file as a JSON line before it is deleted.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Manage the API keys of `/verify` and `/settle` (stored hashed in the ledger).
    Keys {
        #[command(subcommand)]
        what: KeysCommand,
    },
    /// Deploy our batch-settlement contract on a configured network from its first gas wallet,
    /// at the same CREATE2 address on every chain (nothing is sent when it is already there),
    /// and print its address as JSON: set it as that network's `batch_settler`.
    DeploySettler {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
        /// The network's chain id (default: the config's only network).
        #[arg(long)]
        chain_id: Option<u64>,
    },
    /// Check a config file and print what it serves.
    CheckConfig {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it: this is the only time its text is shown.
    Create {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
        /// Who the key is for (shown by `list`).
        #[arg(long)]
        name: String,
        /// A payTo address the key may settle for (repeatable; none: any).
        #[arg(long = "pay-to", value_name = "ADDRESS")]
        pay_to: Vec<alloy::primitives::Address>,
        /// Requests per minute for this key.
        #[arg(long)]
        per_minute: Option<u32>,
        /// Atomic amount the key may settle per rolling 24 hours.
        #[arg(long, value_name = "ATOMIC")]
        daily_amount: Option<alloy::primitives::U256>,
    },
    /// List keys (ids, names, limits; never secrets).
    List {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
    /// Revoke a key by its id (takes effect within seconds on every node).
    Revoke {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Verify throughput and latency with distinct pre-signed payments.
    Verify {
        /// Load this facilitator (x402d or another) instead of one started here; needs --env.
        #[arg(long, requires = "env")]
        facilitator: Option<String>,
        /// The `x402d dev --env-out` file of the chain that facilitator serves (its RPC, token,
        /// payee and funded payers sign the payloads).
        #[arg(long, requires = "facilitator")]
        env: Option<PathBuf>,
        /// That facilitator's process on this machine: the report gives its peak RSS.
        #[arg(long, requires = "facilitator")]
        pid: Option<u32>,
        #[arg(long, default_value_t = 20_000)]
        payments: usize,
        #[arg(long, default_value_t = 64)]
        payers: usize,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Synthetic settled payments put into the ledger before the node starts (what months
        /// of history cost; not with --facilitator).
        #[arg(long, default_value_t = 0, conflicts_with = "facilitator")]
        history: u64,
        /// A PostgreSQL server for the ledger (`postgres://user@host/db`; a fresh database is
        /// made on it for the run). Default: a SQLite file.
        #[arg(long, conflicts_with = "facilitator")]
        ledger_url: Option<String>,
        /// Open loop: send this many requests per second whatever the answers take (latency
        /// counts from when each was due) instead of wrk's fixed connections.
        #[arg(long)]
        rate: Option<f64>,
        /// Write an SVG chart of latency and answers per second over the run (needs --rate).
        #[arg(long, requires = "rate")]
        svg: Option<PathBuf>,
        /// Write the figures as a Markdown table to this file too.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Settlement throughput and latency with distinct pre-signed payments.
    Settle {
        /// Load this facilitator (x402d or another) instead of one started here; needs --env.
        #[arg(long, requires = "env")]
        facilitator: Option<String>,
        /// The `x402d dev --env-out` file of the chain that facilitator serves (its RPC, token,
        /// payee and funded payers sign the payloads).
        #[arg(long, requires = "facilitator")]
        env: Option<PathBuf>,
        /// That facilitator's process on this machine: the report gives its peak RSS.
        #[arg(long, requires = "facilitator")]
        pid: Option<u32>,
        #[arg(long, default_value_t = 40_000)]
        payments: usize,
        #[arg(long, default_value_t = 256)]
        payers: usize,
        #[arg(long, default_value_t = 256)]
        connections: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Seconds between blocks (0: mine each transaction at once).
        #[arg(long, default_value_t = 0)]
        block_time: u64,
        /// Gas wallets (lanes) settling.
        #[arg(long, default_value_t = 1)]
        gas_wallets: usize,
        /// An extra `[settlement]` key of the server under load (`KEY=VALUE`, repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Facilitator nodes sharing one ledger, each loaded by its share of the connections.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// A PostgreSQL server for the shared ledger (`postgres://user@host/db`; a fresh database
        /// is made on it for the run). Required above one node.
        #[arg(long)]
        ledger_url: Option<String>,
        /// The share (0 to 0.95) of requests repeating a payment just sent (the `settle-dup`
        /// scenario: client retries and replays, each to be answered like its original).
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Synthetic settled payments put into the ledger before the nodes start (what months
        /// of history cost; not with --facilitator).
        #[arg(long, default_value_t = 0, conflicts_with = "facilitator")]
        history: u64,
        /// Send batches through our batch settler (deployed on the bench chain) instead of
        /// Multicall3.
        #[arg(long, conflicts_with = "facilitator")]
        batch_settler: bool,
        /// Open loop: send this many requests per second whatever the answers take (latency
        /// counts from when each was due) instead of wrk's fixed connections.
        #[arg(long)]
        rate: Option<f64>,
        /// Write an SVG chart of latency and answers per second over the run (needs --rate).
        #[arg(long, requires = "rate")]
        svg: Option<PathBuf>,
        /// Write the figures as a Markdown table to this file too.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Fill an empty ledger with synthetic settled payments (USDC on Base Sepolia, expired,
    /// spread over 120 days ending three days ago) to measure start-up, pruning and load on a
    /// ledger with months of history.
    History {
        /// `sqlite://file.db` or `postgres://…` (migrated first; must hold no payment).
        #[arg(long)]
        ledger_url: String,
        #[arg(long)]
        rows: u64,
    },
    /// Seconds to heal: from a reorg to the payee made whole, from an outside send to the next
    /// settlement, from a dropped pool to the payment settled.
    Recovery {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Write the figures as a Markdown table to this file too.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// The paid SMS flow end to end: buyers ask Dial to send an SMS, pay its 402 and wait for
    /// the settled answer (starts an `x402d dev` of its own unless given one's --env).
    Merchant {
        /// The `x402d dev --env-out` file of a running dev: its Dial is loaded.
        #[arg(long)]
        env: Option<PathBuf>,
        /// That dev's process: the report gives its peak RSS.
        #[arg(long, requires = "env")]
        pid: Option<u32>,
        /// Buyers paying at once, each with its own payer.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 15)]
        duration: u64,
        /// Write the figures as a Markdown table to this file too.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Gas per payment against batch size (shared, already-funded payee).
    Gas {
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
        sizes: Vec<usize>,
        /// How the payments move: `eip3009` (USDC) or `permit2` (a plain ERC-20).
        #[arg(long, value_enum, default_value = "eip3009")]
        method: x402d::dev::bench::GasMethod,
        /// What batches go through, each measured in turn.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "multicall3,settler"
        )]
        contracts: Vec<x402d::dev::bench::BatchContract>,
        /// The cost on Base is stated at this L2 gas price (gwei, base fee + tip).
        #[arg(long, default_value_t = 0.01)]
        l2_gwei: f64,
        /// ... this L1 base fee (gwei).
        #[arg(long, default_value_t = 1.0)]
        l1_gwei: f64,
        /// ... this L1 blob base fee (gwei).
        #[arg(long, default_value_t = 0.001)]
        blob_gwei: f64,
        /// ... and this ETH price in US dollars.
        #[arg(long, default_value_t = 3000.0)]
        eth_usd: f64,
        /// Write the figures as a Markdown table to this file too.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

fn write_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("X402D_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stdout carries results (`bench` JSON, `pay` bodies); logs go to stderr.
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// What `x402d pay` paid and the settlement receipt, on stderr.
fn report_payment(
    paid: Option<&x402d::protocol::wire::RequirementsV2>,
    receipt: Option<&x402d::protocol::wire::SettleResponse>,
) -> anyhow::Result<()> {
    if let Some(offer) = paid {
        eprintln!(
            "paid {} (atomic) of {} on {} to {}",
            offer.amount, offer.asset, offer.network, offer.pay_to
        );
    }
    if let Some(receipt) = receipt {
        eprintln!("receipt: {}", serde_json::to_string(receipt)?);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve { config } => {
            let config = x402d::config::Config::load(&config)?;
            let server = x402d::http::server::RunningServer::start(&config).await?;
            tracing::info!(url = %server.url(), "x402d serving");
            server
                .serve_until(x402d::http::server::shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("stopped");
        }
        Command::Dev {
            port,
            chain_id,
            payers,
            env_out,
            ledger_url,
            gas_wallets,
            nodes,
            redis_url,
            chain_only,
            config_out,
            fork_url,
            fork_block,
            fork_token,
        } => {
            let run = x402d::clock::unix_now();
            let ledger_url =
                ledger_url.unwrap_or_else(|| format!("sqlite://x402d-data/dev-{run}.db"));
            let opts = x402d::dev::mode::DevOptions {
                port,
                chain_id,
                payers,
                env_out,
                ledger_url,
                gas_wallets,
                nodes,
                redis_url: (nodes > 1).then_some(redis_url),
                chain_only,
                config_out: config_out
                    .unwrap_or_else(|| PathBuf::from(format!("x402d-data/dev-{run}.toml"))),
                fork_url,
                fork_block,
                fork_token,
            };
            let stack = x402d::dev::mode::start(&opts).await?;
            println!("{}", x402d::dev::mode::next_steps(&stack.env));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut others = Vec::new();
            for node in stack.others {
                let mut stopped = stopped.clone();
                others.push(tokio::spawn(node.serve_until(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })));
            }
            match stack.server {
                Some(server) => {
                    server
                        .serve_until(x402d::http::server::shutdown_signal())
                        .await?
                }
                None => x402d::http::server::shutdown_signal().await,
            }
            let _ = stop.send(true);
            for node in others {
                node.await??;
            }
            drop(stack.chain);
            tracing::info!("stopped");
        }
        Command::Bench {
            what:
                BenchCommand::Verify {
                    facilitator,
                    env,
                    pid,
                    payments,
                    payers,
                    connections,
                    threads,
                    duration,
                    history,
                    ledger_url,
                    rate,
                    svg,
                    markdown,
                },
        } => {
            let opts = x402d::dev::bench::VerifyLoad {
                external: external(facilitator, env, pid),
                payments,
                payers,
                connections,
                threads,
                duration_s: duration,
                history,
                ledger_url,
                rate,
            };
            let report = x402d::dev::bench::verify_load(&opts).await?;
            if let (Some(path), Some(open)) = (&svg, &report.open_loop) {
                let title = format!("x402d /verify, open loop at {}/s", open.verify.rate);
                write_file(
                    path,
                    &x402d::dev::openloop::svg(&title, &open.verify.timeline),
                )?;
            }
            if let Some(path) = &markdown {
                write_file(path, &report.markdown())?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Settle {
                    facilitator,
                    env,
                    pid,
                    payments,
                    payers,
                    connections,
                    threads,
                    duration,
                    block_time,
                    gas_wallets,
                    set,
                    nodes,
                    ledger_url,
                    duplicates,
                    history,
                    batch_settler,
                    rate,
                    svg,
                    markdown,
                },
        } => {
            let block_time = (block_time > 0).then_some(block_time);
            let settlement = set
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| format!("{} = {}", k.trim(), v.trim()))
                        .with_context(|| format!("--set {kv:?} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join("\n");
            let opts = x402d::dev::bench::SettleLoad {
                external: external(facilitator, env, pid),
                payments,
                payers,
                connections,
                threads,
                duration_s: duration,
                block_time,
                gas_wallets,
                settlement,
                nodes,
                ledger_url,
                duplicates,
                history,
                batch_settler,
                rate,
            };
            let report = x402d::dev::bench::settle_load(&opts).await?;
            if let (Some(path), Some(open)) = (&svg, report.open_loop.first()) {
                let title = format!("x402d /settle, open loop at {}/s", open.rate);
                write_file(path, &x402d::dev::openloop::svg(&title, &open.timeline))?;
            }
            if let Some(path) = &markdown {
                write_file(path, &report.markdown())?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what: BenchCommand::History { ledger_url, rows },
        } => x402d::dev::bench::fill_history(&ledger_url, rows, None).await?,
        Command::Bench {
            what:
                BenchCommand::Merchant {
                    env,
                    pid,
                    connections,
                    duration,
                    markdown,
                },
        } => {
            let opts = x402d::dev::merchant_bench::MerchantLoad {
                env_file: env,
                pid,
                connections,
                duration_s: duration,
            };
            let report = x402d::dev::merchant_bench::merchant_load(&opts).await?;
            if let Some(path) = &markdown {
                write_file(path, &report.markdown())?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what: BenchCommand::Recovery { rounds, markdown },
        } => {
            let report = x402d::dev::bench::recovery(rounds).await?;
            if let Some(path) = &markdown {
                write_file(path, &x402d::dev::bench::RecoveryReport::markdown(&report))?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Gas {
                    sizes,
                    method,
                    contracts,
                    l2_gwei,
                    l1_gwei,
                    blob_gwei,
                    eth_usd,
                    markdown,
                },
        } => {
            let wei = |gwei: f64| (gwei * 1e9).round() as u128;
            let cost = x402d::dev::bench::BaseCost {
                l2_gas_price_wei: wei(l2_gwei),
                l1: x402d::chain::l1fee::L1FeeInputs::assumed_base(wei(l1_gwei), wei(blob_gwei)),
                eth_usd,
            };
            let mut points = Vec::new();
            for contract in contracts {
                points.extend(
                    x402d::dev::bench::gas_per_batch(&sizes, method, contract, &cost).await?,
                );
            }
            let report = x402d::dev::bench::GasReport {
                prices: cost,
                points,
            };
            if let Some(path) = &markdown {
                write_file(path, &report.markdown())?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Text {
            to,
            from,
            dial_url,
            id,
            body,
        } => {
            let url = format!(
                "{}{}",
                dial_url.trim_end_matches('/'),
                x402d::merchant::inbound::SANDBOX_PATH
            );
            let response = reqwest::Client::new()
                .post(&url)
                .json(&serde_json::json!({"to": to, "from": from, "body": body, "id": id}))
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let status = response.status();
            println!("{}", response.text().await.unwrap_or_default());
            if !status.is_success() {
                anyhow::bail!("Dial answered {status}");
            }
        }
        Command::Pay {
            url,
            method,
            data,
            headers,
            network,
            asset,
            max_amount,
            v1,
            scheme,
            key_file,
            mcp,
            tool,
            args,
        } => {
            let key = match key_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => std::env::var("X402D_PAYER_KEY").context(
                    "set X402D_PAYER_KEY to the payer's private key, or pass --key-file",
                )?,
            };
            let signer: alloy::signers::local::PrivateKeySigner = key
                .trim()
                .parse()
                .context("the payer key is not a hex private key")?;
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .with_context(|| format!("header {h:?} is not `Name: value`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let asset = asset
                .map(|a| x402d::protocol::primitives::parse_address(&a))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--asset: {e}"))?;
            let request = x402d::client::PayRequest {
                method: method.parse().context("bad -X method")?,
                url,
                body: data,
                headers,
                network,
                asset,
                max_amount,
                force_v1: v1,
                scheme,
            };
            if let (true, Some(tool)) = (mcp, tool) {
                let arguments: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&args).context("--args must be a JSON object")?;
                let outcome =
                    x402d::client::pay_mcp(&signer, &request.url, &tool, arguments, &request)
                        .await?;
                report_payment(outcome.paid.as_ref(), outcome.receipt.as_ref())?;
                println!("{}", serde_json::to_string(&outcome.result)?);
                if outcome.result["isError"] == true {
                    std::process::exit(1);
                }
                return Ok(());
            }
            let outcome = x402d::client::pay(&reqwest::Client::new(), &signer, &request).await?;
            eprintln!("HTTP {}", outcome.status);
            report_payment(outcome.paid.as_ref(), outcome.receipt.as_ref())?;
            println!("{}", outcome.body);
            if outcome.status >= 400 {
                std::process::exit(1);
            }
        }
        Command::DeploySettler { config, chain_id } => {
            let config = x402d::config::Config::load(&config)?;
            let network = match chain_id {
                Some(id) => config.networks.iter().find(|n| n.chain_id == id),
                None if config.networks.len() == 1 => config.networks.first(),
                None => anyhow::bail!("the config has several networks: say which with --chain-id"),
            }
            .context("no such network in the config")?;
            let rpc = network
                .rpc_urls
                .first()
                .context("the network has no rpc_urls")?;
            let signer = config
                .gas_wallet_signers()?
                .into_iter()
                .next()
                .context("the config has no gas wallet to deploy from")?;
            let deployed = x402d::chain::settler::deploy(rpc, signer).await?;
            println!("{}", serde_json::to_string_pretty(&deployed)?);
        }
        Command::Migrate { config } => {
            let config = x402d::config::Config::load(&config)?;
            x402d::ledger::Ledger::connect(&config.ledger.url.0).await?;
            println!("ledger migrations applied");
            if config.dial.is_some() {
                x402d::merchant::store::Store::connect(&config.ledger.url.0).await?;
                println!("dial migrations applied");
            }
        }
        Command::Prune {
            config,
            older_than_days,
            archive,
        } => {
            let config = x402d::config::Config::load(&config)?;
            let days = older_than_days
                .or(config.ledger.retention_days)
                .context("say how much to keep: --older-than-days N or ledger.retention_days")?;
            anyhow::ensure!(days >= 2, "--older-than-days must be at least 2");
            let ledger = x402d::ledger::Ledger::connect(&config.ledger.url.0).await?;
            let mut file = match &archive {
                Some(path) => Some(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("--archive {}", path.display()))?,
                )),
                None => None,
            };
            let report = ledger
                .prune(
                    std::time::Duration::from_secs(u64::from(days) * 86_400),
                    file.as_mut().map(|f| f as &mut dyn x402d::ledger::Archive),
                )
                .await?;
            if let Some(mut f) = file {
                std::io::Write::flush(&mut f)?;
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Keys { what } => keys(what).await?,
        Command::CheckConfig { config } => {
            let config = x402d::config::Config::load(&config)?;
            let chains = x402d::chain::Chains::from_config(&config)?;
            for n in chains.networks() {
                for t in &n.tokens {
                    println!(
                        "{} serves {} ({} v{}, {} decimals)",
                        n.chain_id, t.address, t.name, t.version, t.decimals
                    );
                }
            }
        }
    }
    Ok(())
}

async fn keys(what: KeysCommand) -> anyhow::Result<()> {
    let ledger_of = |config: &std::path::Path| -> anyhow::Result<String> {
        Ok(x402d::config::Config::load(config)?.ledger.url.0)
    };
    match what {
        KeysCommand::Create {
            config,
            name,
            pay_to,
            per_minute,
            daily_amount,
        } => {
            let ledger = x402d::ledger::Ledger::connect(&ledger_of(&config)?).await?;
            let key = x402d::facilitator::access::new_key(
                &name,
                x402d::facilitator::access::KeyLimits {
                    pay_to_allowlist: pay_to,
                    per_minute,
                    daily_amount,
                },
            );
            ledger.insert_api_key(&key.record).await?;
            eprintln!(
                "created key {} for {name:?}; keep it now, it is not shown again:",
                key.record.id
            );
            println!("{}", key.text);
        }
        KeysCommand::List { config } => {
            let ledger = x402d::ledger::Ledger::connect(&ledger_of(&config)?).await?;
            for k in ledger.api_keys().await? {
                let pay_to = if k.pay_to_allowlist.is_empty() {
                    "any".to_owned()
                } else {
                    k.pay_to_allowlist
                        .iter()
                        .map(|a| a.to_checksum(None))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{}\t{}\t{}\tpay_to={pay_to}\tper_minute={}\tdaily_amount={}",
                    k.id,
                    if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    k.name,
                    k.per_minute.map_or("default".to_owned(), |n| n.to_string()),
                    k.daily_amount.map_or("none".to_owned(), |a| a.to_string()),
                );
            }
        }
        KeysCommand::Revoke { config, id } => {
            let ledger = x402d::ledger::Ledger::connect(&ledger_of(&config)?).await?;
            if !ledger.revoke_api_key(&id).await? {
                anyhow::bail!("no active key {id:?}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `--facilitator` with its `--env` (clap requires them together) and `--pid`.
fn external(
    facilitator: Option<String>,
    env: Option<PathBuf>,
    pid: Option<u32>,
) -> Option<x402d::dev::bench::External> {
    Some(x402d::dev::bench::External {
        url: facilitator?,
        env_file: env?,
        pid,
    })
}
