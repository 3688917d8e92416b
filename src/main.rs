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
    },
    /// Load tests against a local chain this command sets up (needs `wrk`).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Apply the ledger migrations (also done at start-up) and exit.
    Migrate {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
    /// Check a config file and print what it serves.
    CheckConfig {
        #[arg(long, short, default_value = "x402d.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Verify throughput and latency with distinct pre-signed payments.
    Verify {
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
    },
    /// Settlement throughput and latency with distinct pre-signed payments.
    Settle {
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
    },
    /// Gas per payment against batch size (shared, already-funded payee).
    Gas {
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
        sizes: Vec<usize>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("X402D_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve { config } => {
            let config = x402d::config::Config::load(&config)?;
            let server = x402d::server::RunningServer::start(&config).await?;
            tracing::info!(url = %server.url(), "x402d serving");
            server
                .serve_until(x402d::server::shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("stopped");
        }
        Command::Dev {
            port,
            chain_id,
            payers,
            env_out,
        } => {
            let opts = x402d::devmode::DevOptions {
                port,
                chain_id,
                payers,
                env_out,
            };
            let stack = x402d::devmode::start(&opts).await?;
            println!("{}", x402d::devmode::next_steps(&stack.env));
            stack
                .server
                .serve_until(x402d::server::shutdown_signal())
                .await?;
            drop(stack.chain);
            tracing::info!("stopped");
        }
        Command::Bench {
            what:
                BenchCommand::Verify {
                    payments,
                    payers,
                    connections,
                    threads,
                    duration,
                },
        } => {
            let opts = x402d::bench::VerifyLoad {
                payments,
                payers,
                connections,
                threads,
                duration_s: duration,
            };
            let report = x402d::bench::verify_load(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Settle {
                    payments,
                    payers,
                    connections,
                    threads,
                    duration,
                    block_time,
                },
        } => {
            let block_time = (block_time > 0).then_some(block_time);
            let opts = x402d::bench::SettleLoad {
                payments,
                payers,
                connections,
                threads,
                duration_s: duration,
                block_time,
            };
            let report = x402d::bench::settle_load(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench {
            what: BenchCommand::Gas { sizes },
        } => {
            let points = x402d::bench::gas_per_batch(&sizes).await?;
            println!("{}", serde_json::to_string_pretty(&points)?);
        }
        Command::Migrate { config } => {
            let config = x402d::config::Config::load(&config)?;
            x402d::ledger::Ledger::connect(&config.ledger.url.0).await?;
            println!("ledger migrations applied");
        }
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
