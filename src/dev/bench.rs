//! `x402d bench`: load tests against a local chain this command sets up itself, driven by `wrk`
//! (a C load generator: a Python or Node client saturates long before the service does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::{facilitator_body, payload_v2, sign_for_v2};
use crate::config::Config;
use crate::dev::chain::{DevChain, DevChainError};
use crate::dev::openloop::OpenLoopReport;
use crate::facilitator::unix_now;
use crate::http::server::{RunningServer, ServeError};
use crate::protocol::AtomicAmount;
use crate::protocol::wire::{ExactExtra, RequirementsV2};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Chain(#[from] DevChainError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("config: {0}")]
    Config(String),
    #[error("wrk: {0}")]
    Wrk(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A new database for one run on the PostgreSQL server of `url` (its path names any database
/// the user may connect to); returns its URL.
async fn fresh_postgres(url: &str) -> Result<String, BenchError> {
    let name = format!("x402d_bench_{}_{}", unix_now(), std::process::id());
    let (made, _) = on_database(url, &name)?;
    run_on(url, format!("CREATE DATABASE {name}")).await?;
    Ok(made)
}

/// Drops the database `url` names, from a connection to the server's `postgres` database.
async fn drop_postgres(url: &str) -> Result<(), BenchError> {
    let (admin, name) = on_database(url, "postgres")?;
    run_on(
        &admin,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
}

/// `url` (`postgres://host/database[?query]`) naming database `name` instead, its query kept,
/// and the database it named.
fn on_database(url: &str, name: &str) -> Result<(String, String), BenchError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let Some((server, named)) = base.rsplit_once('/').filter(|(s, _)| s.contains("://")) else {
        return Err(BenchError::Config(format!(
            "{url} is not postgres://host/database"
        )));
    };
    let other = if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    };
    Ok((other, named.to_owned()))
}

/// Runs one statement on a connection of its own to `url`.
async fn run_on(url: &str, sql: String) -> Result<(), BenchError> {
    use sqlx::Connection;
    let err = |e: sqlx::Error| BenchError::Config(format!("{url}: {e}"));
    let mut c = sqlx::postgres::PgConnection::connect(url)
        .await
        .map_err(err)?;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut c)
        .await
        .map_err(err)?;
    Ok(())
}

/// What a wrk run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkReport {
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers that were not 200 with the expected body.
    pub unexpected: u64,
    pub socket_errors: u64,
    /// The unexpected answers by outcome: the status and the answer's reason
    /// ([`outcome_label`]), so a shortfall says what went wrong.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, u64>,
}

/// The label an unexpected answer is counted under: its HTTP status and the reason it gives
/// (`errorReason`, `invalidReason` or `error`, cut to 60 characters), as the wrk script does.
pub fn outcome_label(status: u16, body: &str) -> String {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["errorReason", "invalidReason", "error"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|r| r.as_str()).map(str::to_owned))
        });
    match reason {
        Some(r) => format!("{status} {}", r.chars().take(60).collect::<String>()),
        None => status.to_string(),
    }
}

/// Options of `x402d bench verify`.
#[derive(Debug, Clone)]
pub struct VerifyLoad {
    /// Another facilitator to load instead of one this command starts.
    pub external: Option<External>,
    pub payments: usize,
    pub payers: usize,
    pub connections: u32,
    pub threads: u32,
    pub duration_s: u64,
    /// Synthetic settled payments in the ledger before the node starts.
    pub history: u64,
    /// A PostgreSQL server for the ledger (a fresh database on it); default a SQLite file.
    pub ledger_url: Option<String>,
    /// Open loop at this many requests per second instead of wrk's fixed connections.
    pub rate: Option<f64>,
}

/// A facilitator this command did not start, x402d or another, serving the chain an
/// `x402d dev --env-out` file describes (`x402d dev --chain-only` makes one): its RPC, token,
/// payee and funded payers sign the very payloads the built-in run uses.
#[derive(Debug, Clone)]
pub struct External {
    pub url: String,
    pub env_file: PathBuf,
    /// The facilitator's process on this machine, whose peak RSS the report then gives.
    pub pid: Option<u32>,
}

/// What a bench needs of an `--env-out` file (the public contract of `x402d dev`).
#[derive(Deserialize)]
pub(super) struct EnvFile {
    pub(super) rpc_url: String,
    network: String,
    pub(super) usdc: Address,
    eip712_name: String,
    eip712_version: String,
    pay_to: Address,
    payer_keys: Vec<String>,
    /// Dial's base URL (absent when dev ran `--chain-only`).
    #[serde(default)]
    pub(super) merchant_url: Option<String>,
}

impl EnvFile {
    /// Reads an `x402d dev --env-out` file.
    pub(super) fn read(path: &Path) -> Result<EnvFile, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Config(format!("--env {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            BenchError::Config(format!(
                "--env {} is not an `x402d dev --env-out` file: {e}",
                path.display()
            ))
        })
    }

    /// The funded payers' keys.
    pub(super) fn payers(&self) -> Result<Vec<PrivateKeySigner>, BenchError> {
        self.payer_keys
            .iter()
            .map(|k| k.parse::<PrivateKeySigner>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BenchError::Config(format!("a payer key in --env: {e}")))
    }
}

/// Where a run's payloads go and what they pay.
struct Target {
    url: String,
    rpc_url: String,
    requirement: RequirementsV2,
    payers: Vec<PrivateKeySigner>,
}

impl External {
    fn target(&self) -> Result<Target, BenchError> {
        let env = EnvFile::read(&self.env_file)?;
        let payers = env.payers()?;
        Ok(Target {
            url: self.url.trim_end_matches('/').to_owned(),
            rpc_url: env.rpc_url,
            requirement: cent_to(
                env.network,
                env.usdc,
                env.pay_to,
                env.eip712_name,
                env.eip712_version,
            ),
            payers,
        })
    }
}

/// A requirement of one cent (of a 6-decimal token) to `pay_to`.
fn cent_to(
    network: String,
    asset: Address,
    pay_to: Address,
    name: String,
    version: String,
) -> RequirementsV2 {
    RequirementsV2 {
        scheme: "exact".into(),
        network,
        amount: AtomicAmount::from_u64(10_000),
        asset,
        pay_to,
        max_timeout_seconds: 3600,
        extra: Some(ExactExtra {
            name: Some(name),
            version: Some(version),
            asset_transfer_method: None,
            facilitator_address: None,
        }),
    }
}

/// What the chain shows of a run: every transaction mined in its blocks.
#[derive(Debug, Clone, Default)]
pub(super) struct ChainTally {
    pub transactions: usize,
    pub reverted: usize,
    pub gas_used: u64,
    /// `AuthorizationUsed` logs of the token: payments that moved.
    pub authorizations_used: usize,
    /// Senders of successful transactions.
    pub senders: usize,
}

/// Reads blocks `from..=to` of `rpc_url`: their transactions, gas and `token`'s
/// `AuthorizationUsed` logs (whoever sent them: it works for any facilitator).
pub(super) async fn chain_tally(
    rpc_url: &str,
    token: Address,
    from: u64,
    to: u64,
) -> Result<ChainTally, BenchError> {
    use alloy::providers::Provider;
    use alloy::sol_types::SolEvent;
    let provider = provider(rpc_url)?;
    let blocks: Vec<_> = futures::stream::iter(from..=to)
        .map(|n| {
            let provider = provider.clone();
            async move { provider.get_block_receipts(n.into()).await }
        })
        .buffered(16)
        .collect()
        .await;
    let mut tally = ChainTally::default();
    let mut senders = std::collections::HashSet::new();
    let used = crate::chain::bindings::IEip3009Token::AuthorizationUsed::SIGNATURE_HASH;
    for receipts in blocks {
        let receipts = receipts
            .map_err(|e| BenchError::Config(format!("{rpc_url}: {e}")))?
            .unwrap_or_default();
        for r in receipts {
            tally.transactions += 1;
            tally.gas_used += r.gas_used;
            if r.status() {
                senders.insert(r.from);
            } else {
                tally.reverted += 1;
            }
            tally.authorizations_used += r
                .inner
                .logs()
                .iter()
                .filter(|l| l.address() == token && l.topics().first() == Some(&used))
                .count();
        }
    }
    tally.senders = senders.len();
    Ok(tally)
}

/// An HTTP provider on `rpc_url`.
fn provider(rpc_url: &str) -> Result<impl alloy::providers::Provider + Clone, BenchError> {
    let url = rpc_url
        .parse()
        .map_err(|e| BenchError::Config(format!("{rpc_url}: {e}")))?;
    Ok(alloy::providers::ProviderBuilder::new().connect_http(url))
}

pub(super) async fn head(rpc_url: &str) -> Result<u64, BenchError> {
    use alloy::providers::Provider;
    provider(rpc_url)?
        .get_block_number()
        .await
        .map_err(|e| BenchError::Config(format!("{rpc_url}: {e}")))
}

/// The bench's payee.
const PAY_TO: Address = Address::repeat_byte(0x77);

/// Fills the ledger at `url` (migrating it first) with `rows` synthetic settled payments of
/// `token` (default Base Sepolia's USDC) on the bench chain, printing progress on stderr.
pub async fn fill_history(url: &str, rows: u64, token: Option<Address>) -> Result<(), BenchError> {
    let token = token.unwrap_or(crate::chain::builtin_usdc(84532).map_or(Address::ZERO, |u| u.0));
    let err = |e: crate::ledger::LedgerError| BenchError::Config(format!("history: {e}"));
    let ledger = crate::ledger::Ledger::connect(url).await.map_err(err)?;
    let began = std::time::Instant::now();
    ledger
        .fill_synthetic_history(rows, 84532, token, PAY_TO, |done| {
            eprintln!(
                "history: {done}/{rows} payments ({:.0} s)",
                began.elapsed().as_secs_f64()
            );
        })
        .await
        .map_err(err)?;
    // Gigabytes just written sit dirty in the page cache; flushed now, not under the load (a
    // node with months of history has long since written them).
    let _ = tokio::process::Command::new("sync").status().await;
    Ok(())
}

/// This process's resident set (Linux; 0 elsewhere).
fn rss_mb() -> f64 {
    proc_status_mb("self", "VmRSS:")
}

/// The peak resident set of a process (Linux).
#[derive(Debug, Clone, Serialize)]
pub struct PeakRss {
    pub mb: f64,
    /// Whose: `"bench"` (this process, with the nodes it started and also its own payloads
    /// and parsing: an upper bound of the nodes') or `"pid N"` (a facilitator's own process,
    /// `--pid`).
    pub process: String,
}

impl PeakRss {
    /// The peak so far of the nodes a bench started in this process, or of `--pid`'s process
    /// when the bench loads a facilitator outside it (none without one of the two).
    fn measure(in_process: bool, external: Option<&External>) -> Option<PeakRss> {
        if in_process {
            return Some(PeakRss {
                mb: proc_status_mb("self", "VmHWM:"),
                process: "bench".into(),
            });
        }
        external?.pid.map(PeakRss::of_pid)
    }

    /// The peak so far of process `pid`.
    pub(super) fn of_pid(pid: u32) -> PeakRss {
        PeakRss {
            mb: proc_status_mb(&pid.to_string(), "VmHWM:"),
            process: format!("pid {pid}"),
        }
    }
}

/// A size in MB from a line of `/proc/<proc>/status` (0 when unreadable).
fn proc_status_mb(proc: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{proc}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// How a bench environment is set up ([`BenchEnv::start_cluster`]).
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub payers: usize,
    /// Seconds between blocks; `None`: a block per transaction.
    pub block_time: Option<u64>,
    /// `[settlement]` keys.
    pub settlement: &'a str,
    pub gas_wallets: usize,
    /// Facilitators on one ledger (above one: `ledger` must name a PostgreSQL server).
    pub nodes: usize,
    /// A PostgreSQL server, on which a fresh database is made for the run (default: a SQLite
    /// file).
    pub ledger: Option<&'a str>,
    /// Synthetic settled payments put in the ledger first (months of traffic), so that what
    /// history costs can be measured.
    pub history: u64,
    /// Batches go through our batch settler (on the bench chain) instead of Multicall3.
    pub batch_settler: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            payers: 1,
            block_time: None,
            settlement: "",
            gas_wallets: 1,
            nodes: 1,
            ledger: None,
            history: 0,
            batch_settler: false,
        }
    }
}

/// A chain, a facilitator on it, and funded payers.
pub struct BenchEnv {
    pub chain: DevChain,
    pub server: RunningServer,
    /// Further nodes on the same ledger ([`BenchEnv::start_cluster`]).
    pub others: Vec<RunningServer>,
    pub payers: Vec<PrivateKeySigner>,
    pub pay_to: Address,
    pub gas_keys: Vec<PrivateKeySigner>,
    /// What the first node's start-up cost on the ledger it was given.
    pub start: NodeStart,
    /// Holds the SQLite ledger (none with PostgreSQL), removed with the environment.
    _dir: BenchDir,
    /// The PostgreSQL database made for the run, dropped by [`BenchEnv::stop`].
    database: Option<String>,
}

/// The first node's start-up on a ledger holding `history_rows` settled payments (0: empty).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NodeStart {
    pub history_rows: u64,
    /// From the call to a node serving (ledger opened, keys indexed, lanes recovered).
    pub start_ms: f64,
    /// This process's resident memory once the node serves (the bench's own included).
    pub rss_mb: f64,
}

impl BenchEnv {
    /// Stops every node, then drops the PostgreSQL database made for the run (with synthetic
    /// history it is gigabytes).
    pub async fn stop(self) {
        self.server.stop().await;
        for o in self.others {
            o.stop().await;
        }
        if let Some(url) = self.database
            && let Err(e) = drop_postgres(&url).await
        {
            tracing::warn!(error = %e, "could not drop the bench database");
        }
    }

    /// A chain (mining every `block_time` seconds, or on each transaction), a facilitator with a
    /// funded gas wallet and a ledger in a temporary directory, and `payers` funded payers.
    /// `settlement` adds `[settlement]` keys.
    pub async fn start(
        payers: usize,
        block_time: Option<u64>,
        settlement: &str,
    ) -> Result<BenchEnv, BenchError> {
        BenchEnv::start_with(payers, block_time, settlement, 1).await
    }

    /// As [`BenchEnv::start`], settling from `gas_wallets` funded wallets.
    pub async fn start_with(
        payers: usize,
        block_time: Option<u64>,
        settlement: &str,
        gas_wallets: usize,
    ) -> Result<BenchEnv, BenchError> {
        BenchEnv::start_cluster(&Setup {
            payers,
            block_time,
            settlement,
            gas_wallets,
            ..Setup::default()
        })
        .await
    }

    /// The environment `setup` describes: with several nodes, all on one ledger.
    pub async fn start_cluster(setup: &Setup<'_>) -> Result<BenchEnv, BenchError> {
        let Setup {
            payers,
            block_time,
            settlement,
            gas_wallets,
            nodes,
            ledger,
            history,
            batch_settler,
        } = *setup;
        let chain = DevChain::start(84532, block_time).await?;
        let mut env = BTreeMap::new();
        let mut refs = Vec::new();
        let mut gas_keys = Vec::new();
        for i in 0..gas_wallets.max(1) {
            let gas = PrivateKeySigner::random();
            chain
                .fund_eth(gas.address(), U256::from(10u128.pow(21)))
                .await?;
            env.insert(
                format!("BENCH_GAS_KEY_{i}"),
                alloy::hex::encode(gas.to_bytes()),
            );
            refs.push(format!("\"$BENCH_GAS_KEY_{i}\""));
            gas_keys.push(gas);
        }
        let dir = tempdir()?;
        let ledger_url = match ledger {
            Some(server) => fresh_postgres(server).await?,
            None if nodes > 1 => {
                return Err(BenchError::Config(
                    "several nodes need --ledger-url postgres://…".into(),
                ));
            }
            None => format!("sqlite://{}/ledger.db", dir.display()),
        };
        let text = format!(
            "[server]\npublic = true\nlisten = \"127.0.0.1:0\"\n{{node}}[[networks]]\nchain_id = 84532\nrpc_urls = [\"{}\"]\n{settler}[[networks.tokens]]\naddress = \"{}\"\nname = \"{}\"\ndecimals = {}\ntransfer_methods = [\"permit2\"]\n[gas_wallets]\nprivate_keys = [{}]\n[ledger]\nurl = \"{ledger_url}\"\n[settlement]\n{settlement}\n",
            chain.rpc_url(),
            chain.plain_token,
            super::chain::PLAIN_TOKEN_NAME,
            super::chain::PLAIN_TOKEN_DECIMALS,
            refs.join(", "),
            settler = if batch_settler {
                format!("batch_settler = \"{}\"\n", chain.batch_settler)
            } else {
                String::new()
            },
        );
        if history > 0 {
            fill_history(&ledger_url, history, Some(chain.usdc)).await?;
        }
        let mut servers = Vec::new();
        let mut start = NodeStart {
            history_rows: history,
            ..NodeStart::default()
        };
        for i in 0..nodes.max(1) {
            let text = text.replace("{node}", &format!("node_id = \"bench-{i}\"\n"));
            let config =
                Config::from_toml(&text, &env).map_err(|e| BenchError::Config(e.to_string()))?;
            let began = std::time::Instant::now();
            servers.push(RunningServer::start(&config).await?);
            if i == 0 {
                start.start_ms = began.elapsed().as_secs_f64() * 1000.0;
                start.rss_mb = rss_mb();
            }
        }
        let server = servers.remove(0);
        // Several mints in flight at once (the provider hands out the funder's nonces in order).
        let funded: Vec<PrivateKeySigner> = futures::stream::iter((0..payers).map(|_| async {
            let p = PrivateKeySigner::random();
            chain
                .mint(chain.usdc, p.address(), U256::from(1_000_000_000_000u64))
                .await
                .map(|_| p)
        }))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
        let pay_to = PAY_TO;
        // An already-funded payee, as a merchant's address is: its balance slot is warm.
        chain.mint(chain.usdc, pay_to, U256::from(1u64)).await?;
        Ok(BenchEnv {
            chain,
            server,
            others: servers,
            payers: funded,
            pay_to,
            gas_keys,
            start,
            _dir: dir,
            database: ledger.is_some().then_some(ledger_url),
        })
    }

    /// A requirement of one cent to the bench payee.
    pub fn requirement(&self) -> RequirementsV2 {
        cent_to(
            "eip155:84532".into(),
            self.chain.usdc,
            self.pay_to,
            self.chain.usdc_name.clone(),
            "2".into(),
        )
    }

    /// `n` distinct signed `/verify`-shaped bodies, one JSON per line.
    pub fn signed_bodies(&self, n: usize) -> Result<String, BenchError> {
        Ok(self.signed(n)?.0)
    }

    /// `n` distinct payments as `/verify` bodies, and as the JSON-RPC `eth_call` the node runs to
    /// simulate each (what one verification costs the node), one per line each.
    pub fn signed(&self, n: usize) -> Result<(String, String), BenchError> {
        signed_payments(&self.requirement(), &self.payers, n)
    }
}

/// `n` distinct payments of `req` from `payers` in turn, as `/verify` bodies and as the
/// `eth_call` that simulates each, one per line each.
fn signed_payments(
    req: &RequirementsV2,
    payers: &[PrivateKeySigner],
    n: usize,
) -> Result<(String, String), BenchError> {
    if payers.is_empty() {
        return Err(BenchError::Config("no payers to sign with".into()));
    }
    let requirements = serde_json::to_value(req).map_err(|e| BenchError::Config(e.to_string()))?;
    let (mut bodies, mut calls) = (String::new(), String::new());
    for i in 0..n {
        let payer = &payers[i % payers.len()];
        let payload =
            sign_for_v2(payer, req, unix_now()).map_err(|e| BenchError::Config(e.to_string()))?;
        // The call x402d simulates for a plain key's signature.
        let sig = alloy::primitives::Signature::from_raw(&payload.signature)
            .map_err(|e| BenchError::Config(e.to_string()))?;
        let data = crate::exact::transfer_vrs(&payload.authorization, &sig);
        calls.push_str(
            &serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "eth_call",
                "params": [{"to": req.asset, "data": data}, "latest"]})
            .to_string(),
        );
        calls.push('\n');
        bodies.push_str(
            &facilitator_body(2, payload_v2(req, &payload), requirements.clone()).to_string(),
        );
        bodies.push('\n');
    }
    Ok((bodies, calls))
}

const WRK_SCRIPT: &str = r#"
local bodies = {}
for line in io.lines(os.getenv("X402D_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("X402D_BENCH_PATH")
local expect = os.getenv("X402D_BENCH_EXPECT")
local threads = {}
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  -- setup() ran in the main Lua state; each thread learns the count from the environment.
  nthreads = tonumber(os.getenv("X402D_BENCH_THREADS"))
  i = tid - nthreads
  unexpected = 0
  outcomes = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  i = i + nthreads
  if i > #bodies then i = tid end
  requests_sent = (requests_sent or 0) + 1
  return wrk.format(nil, path, nil, bodies[i])
end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, expect, 1, true) then
    unexpected = unexpected + 1
    -- The same label as outcome_label() in Rust: status and the answer's reason, if any.
    local reason = string.match(body, '"errorReason"%s*:%s*"([^"]*)"')
      or string.match(body, '"invalidReason"%s*:%s*"([^"]*)"')
      or string.match(body, '"error"%s*:%s*"([^"]*)"')
    local key = tostring(status) .. (reason and (" " .. string.sub(reason, 1, 60)) or "")
    outcomes[key] = (outcomes[key] or 0) + 1
  end
end
function done(summary, latency, requests)
  local bad = 0
  local merged = {}
  for _, t in ipairs(threads) do
    bad = bad + t:get("unexpected")
    for k, v in pairs(t:get("outcomes")) do merged[k] = (merged[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', (string.gsub(k, '[\\"]', '')), v))
  end
  local e = summary.errors
  io.write(string.format('X402D_BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"unexpected":%d,"socket_errors":%d,"outcomes":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, bad,
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
end
"#;

/// Runs wrk against `url` + `path`, cycling through the bodies in `bodies_file`; an answer counts as
/// expected when it is 200 and contains `expect`.
pub fn run_wrk(
    url: &str,
    path: &str,
    bodies_file: &Path,
    expect: &str,
    threads: u32,
    connections: u32,
    duration_s: u64,
) -> Result<WrkReport, BenchError> {
    let dir = bodies_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let script = dir.join("x402d-bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{duration_s}s"))
        .arg("--timeout")
        .arg("30s")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .env("X402D_BENCH_BODIES", bodies_file)
        .env("X402D_BENCH_PATH", path)
        .env("X402D_BENCH_EXPECT", expect)
        .env("X402D_BENCH_THREADS", threads.to_string())
        .output()
        .map_err(|e| BenchError::Wrk(format!("cannot run wrk (apt-get install wrk): {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("X402D_BENCH "))
        .ok_or_else(|| {
            BenchError::Wrk(format!(
                "no report in output: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        })?;
    #[derive(Deserialize)]
    struct Raw {
        requests: u64,
        duration_us: u64,
        p50_us: u64,
        p90_us: u64,
        p99_us: u64,
        max_us: u64,
        unexpected: u64,
        socket_errors: u64,
        #[serde(default)]
        outcomes: BTreeMap<String, u64>,
    }
    let raw: Raw =
        serde_json::from_str(line).map_err(|e| BenchError::Wrk(format!("{e}: {line}")))?;
    let duration_s = raw.duration_us as f64 / 1e6;
    Ok(WrkReport {
        requests: raw.requests,
        duration_s,
        requests_per_s: raw.requests as f64 / duration_s.max(1e-9),
        p50_ms: raw.p50_us as f64 / 1e3,
        p90_ms: raw.p90_us as f64 / 1e3,
        p99_ms: raw.p99_us as f64 / 1e3,
        max_ms: raw.max_us as f64 / 1e3,
        unexpected: raw.unexpected,
        socket_errors: raw.socket_errors,
        outcomes: raw.outcomes,
    })
}

/// One load run: how hard, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub threads: u32,
    pub connections: u32,
    pub duration_s: u64,
    /// `Some(r)`: open loop at `r` requests per second (connections and threads unused).
    pub rate: Option<f64>,
}

/// POSTs the lines of `bodies_file` to `url` + `path` as `pace` says: wrk's closed loop, or an
/// open loop at a fixed rate (whose report also has the timeline).
async fn load(
    url: String,
    path: &'static str,
    bodies_file: PathBuf,
    expect: &'static str,
    pace: Pace,
) -> Result<(WrkReport, Option<OpenLoopReport>), BenchError> {
    match pace.rate {
        None => tokio::task::spawn_blocking(move || {
            run_wrk(
                &url,
                path,
                &bodies_file,
                expect,
                pace.threads,
                pace.connections,
                pace.duration_s,
            )
            .map(|r| (r, None))
        })
        .await
        .map_err(|e| BenchError::Wrk(e.to_string()))?,
        Some(rate) => {
            let bodies: Vec<String> = std::fs::read_to_string(&bodies_file)?
                .lines()
                .map(str::to_owned)
                .collect();
            let target = format!("{}{path}", url.trim_end_matches('/'));
            let duration = std::time::Duration::from_secs(pace.duration_s);
            let r = super::openloop::run(&target, &bodies, expect, rate, duration).await?;
            Ok((r.load.clone(), Some(r)))
        }
    }
}

/// What `x402d bench verify` measured: x402d, and in the same run the node alone answering the
/// very `eth_call` each verification needs, at the same concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The facilitator loaded.
    pub facilitator: String,
    /// More requests were sent than there were distinct payloads: wrk went round again, and
    /// the figure is partly of repeated ones (raise `--payments`).
    pub payloads_exhausted: bool,
    pub verify: WrkReport,
    pub node_eth_call: WrkReport,
    /// x402d's verifications per second over the node's simulations per second (expected
    /// answers only: a fast refusal is not a verification).
    pub ratio_to_node: f64,
    /// The open loop's details (with `--rate`): the same rate for both, latency from when
    /// each request was due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopPair>,
    /// The node's start-up (a node this command started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_start: Option<NodeStart>,
    /// The facilitator's peak resident set after the load ([`PeakRss`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<PeakRss>,
}

impl VerifyReport {
    /// The figures as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| load | requests | per s | p50 | p90 | p99 | max | unexpected |\n|---|---|---|---|---|---|---|---|\n",
        );
        for (name, r) in [
            ("x402d /verify", &self.verify),
            ("node eth_call", &self.node_eth_call),
        ] {
            out.push_str(&format!("| {name} | {} |\n", r.markdown_cells()));
        }
        if let Some(open) = &self.open_loop {
            // Both were offered the same rate: the ratio says only that both kept up.
            out.push_str(&format!(
                "\nOpen loop: both offered {}/s; compare their latency.\n",
                open.verify.rate
            ));
        } else {
            out.push_str(&format!(
                "\nRatio of x402d to the node: {:.3}\n",
                self.ratio_to_node
            ));
        }
        if self.payloads_exhausted {
            out.push_str(
                "\nPayloads ran out and were sent again: part of the figure is of repeats.\n",
            );
        }
        out.push_str(&self.verify.outcomes_line("x402d"));
        out.push_str(&self.node_eth_call.outcomes_line("the node"));
        out.push_str(&rss_line(self.node_start.as_ref(), self.peak_rss.as_ref()));
        out
    }
}

impl WrkReport {
    /// Answers per second that were as expected.
    pub fn expected_per_s(&self) -> f64 {
        let good = self
            .requests
            .saturating_sub(self.unexpected + self.socket_errors);
        good as f64 / self.duration_s.max(1e-9)
    }

    fn markdown_cells(&self) -> String {
        format!(
            "{} | {:.1} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {}",
            self.requests,
            self.requests_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.unexpected + self.socket_errors
        )
    }

    /// What the unexpected answers were, as a sentence under a table (empty when there were
    /// none).
    pub(super) fn outcomes_line(&self, name: &str) -> String {
        let mut parts: Vec<String> = self
            .outcomes
            .iter()
            .map(|(label, n)| format!("{n} × `{label}`"))
            .collect();
        if self.socket_errors > 0 {
            parts.push(format!("{} socket errors", self.socket_errors));
        }
        if parts.is_empty() {
            return String::new();
        }
        format!("\nUnexpected answers from {name}: {}.\n", parts.join(", "))
    }
}

impl SettleReport {
    /// The figures as a Markdown table.
    pub fn markdown(&self) -> String {
        format!(
            "| answers | per s | p50 | p90 | p99 | max | unexpected | moved | transactions | reverted | mean batch | gas/payment |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {:.1} | {:.0} |\n{}",
            self.wrk.markdown_cells(),
            self.payments_confirmed,
            self.transactions,
            self.reverted_transactions,
            self.mean_batch_size,
            self.gas_per_payment,
            if self.payloads_exhausted {
                "\nPayloads ran out and were sent again: the rest were duplicates.\n"
            } else {
                ""
            }
        ) + &self.wrk.outcomes_line("the facilitator")
            + &rss_line(self.node_start.as_ref(), self.peak_rss.as_ref())
    }
}

/// The memory line under a report's table (nothing for a facilitator the bench did not start
/// and was not given the process of).
pub(super) fn rss_line(start: Option<&NodeStart>, peak: Option<&PeakRss>) -> String {
    let whose = |p: &PeakRss| {
        if p.process == "bench" {
            "bench process included".to_owned()
        } else {
            format!("the facilitator's process alone, {}", p.process)
        }
    };
    match (start, peak) {
        (Some(s), Some(p)) => format!(
            "\nStart-up {:.1} ms; RSS {:.1} MB once serving, peak {:.1} MB under the load ({}).\n",
            s.start_ms,
            s.rss_mb,
            p.mb,
            whose(p)
        ),
        (None, Some(p)) => format!("\nPeak RSS {:.1} MB under the load ({}).\n", p.mb, whose(p)),
        _ => String::new(),
    }
}

/// The open-loop runs of `x402d bench verify --rate`.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopPair {
    pub verify: OpenLoopReport,
    pub node_eth_call: OpenLoopReport,
}

/// `x402d bench verify`: verify throughput and latency at a fixed concurrency, then the node's
/// own rate for the same simulations.
pub async fn verify_load(opts: &VerifyLoad) -> Result<VerifyReport, BenchError> {
    let (env, target) = match &opts.external {
        Some(e) => (None, e.target()?),
        None => {
            let env = BenchEnv::start_cluster(&Setup {
                payers: opts.payers,
                ledger: opts.ledger_url.as_deref(),
                history: opts.history,
                ..Setup::default()
            })
            .await?;
            let target = Target {
                url: env.server.url(),
                rpc_url: env.chain.rpc_url(),
                requirement: env.requirement(),
                payers: env.payers.clone(),
            };
            (Some(env), target)
        }
    };
    let (bodies, calls) = signed_payments(&target.requirement, &target.payers, opts.payments)?;
    let dir = tempdir()?;
    let file = dir.join("bodies.jsonl");
    let calls_file = dir.join("eth-calls.jsonl");
    std::fs::write(&file, bodies)?;
    std::fs::write(&calls_file, calls)?;
    let pace = Pace {
        threads: opts.threads,
        connections: opts.connections,
        duration_s: opts.duration_s,
        rate: opts.rate,
    };
    let (verify, verify_open) = load(
        target.url.clone(),
        "/verify",
        file,
        "\"isValid\":true",
        pace,
    )
    .await?;
    // A simulation that passes answers `"result":"0x"` (the transfer returns nothing).
    let (node_eth_call, node_open) = load(
        target.rpc_url.clone(),
        "/",
        calls_file,
        "\"result\":\"0x\"",
        pace,
    )
    .await?;
    let open_loop = match (verify_open, node_open) {
        (Some(verify), Some(node_eth_call)) => Some(OpenLoopPair {
            verify,
            node_eth_call,
        }),
        _ => None,
    };
    let node_start = env.as_ref().map(|e| e.start);
    let peak_rss = PeakRss::measure(env.is_some(), opts.external.as_ref());
    if let Some(env) = env {
        env.stop().await;
    }
    let ratio_to_node = verify.expected_per_s() / node_eth_call.expected_per_s().max(1e-9);
    Ok(VerifyReport {
        facilitator: target.url,
        payloads_exhausted: verify.requests > opts.payments as u64,
        verify,
        node_eth_call,
        ratio_to_node,
        open_loop,
        node_start,
        peak_rss,
    })
}

/// Options of `x402d bench settle`.
#[derive(Debug, Clone)]
pub struct SettleLoad {
    /// Another facilitator to load instead of one this command starts (the chain, gas wallet and
    /// node settings are then its own).
    pub external: Option<External>,
    pub payments: usize,
    pub payers: usize,
    pub connections: u32,
    pub threads: u32,
    pub duration_s: u64,
    /// `None`: automine; `Some(s)`: a block every `s` seconds.
    pub block_time: Option<u64>,
    /// Gas wallets (lanes) settling.
    pub gas_wallets: usize,
    /// Extra `[settlement]` keys (TOML lines), to measure a setting.
    pub settlement: String,
    /// Facilitator nodes on one ledger, each loaded by its own share of the connections.
    pub nodes: usize,
    /// A PostgreSQL server for the shared ledger (a fresh database is made); required above one
    /// node.
    pub ledger_url: Option<String>,
    /// The share (0 to 1) of requests that repeat a payment sent a moment before (the
    /// `settle-dup` scenario: retries and replays); each should get the original's answer.
    pub duplicates: f64,
    /// Synthetic settled payments in the ledger before the nodes start.
    pub history: u64,
    /// Batches through our batch settler instead of Multicall3.
    pub batch_settler: bool,
    /// Open loop at this many requests per second in all (split evenly over the nodes) instead
    /// of wrk's fixed connections.
    pub rate: Option<f64>,
}

/// What `x402d bench settle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SettleReport {
    /// The facilitator loaded (the first node).
    pub facilitator: String,
    /// More requests were sent than there were distinct payloads: wrk went round again, and
    /// the rest were duplicates (raise `--payments`).
    pub payloads_exhausted: bool,
    /// The share of requests that repeated an earlier payment.
    pub duplicate_share: f64,
    pub wrk: WrkReport,
    pub block_time_s: Option<u64>,
    pub payments_confirmed: i64,
    pub transactions: usize,
    pub reverted_transactions: usize,
    pub mean_batch_size: f64,
    pub gas_per_payment: f64,
    pub gas_wallets: usize,
    /// Wallets that sent at least one mined transaction.
    pub wallets_used: usize,
    pub nodes: usize,
    /// Each node's own wrk run, when there are several (`wrk` above: their sum; percentiles the
    /// worst node's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_node: Vec<WrkReport>,
    /// With `--rate`: each node's open loop (latency from when each request was due, and the
    /// timeline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open_loop: Vec<OpenLoopReport>,
    /// The first node's start-up (a node this command started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_start: Option<NodeStart>,
    /// The facilitator's peak resident set after the load ([`PeakRss`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<PeakRss>,
}

/// `x402d bench settle`: settlement throughput and latency with distinct pre-signed payments;
/// transactions, gas and moved payments are read from the chain (so they mean the same for any
/// facilitator).
pub async fn settle_load(opts: &SettleLoad) -> Result<SettleReport, BenchError> {
    let (env, target, urls) = match &opts.external {
        Some(e) => {
            let target = e.target()?;
            let urls = vec![target.url.clone()];
            (None, target, urls)
        }
        None => {
            let settlement = format!("settle_timeout_seconds = 25\n{}", opts.settlement);
            let env = BenchEnv::start_cluster(&Setup {
                payers: opts.payers,
                block_time: opts.block_time,
                settlement: &settlement,
                gas_wallets: opts.gas_wallets,
                nodes: opts.nodes,
                ledger: opts.ledger_url.as_deref(),
                history: opts.history,
                batch_settler: opts.batch_settler,
            })
            .await?;
            let target = Target {
                url: env.server.url(),
                rpc_url: env.chain.rpc_url(),
                requirement: env.requirement(),
                payers: env.payers.clone(),
            };
            let mut urls = vec![env.server.url()];
            urls.extend(env.others.iter().map(RunningServer::url));
            (Some(env), target, urls)
        }
    };
    let (bodies, _) = signed_payments(&target.requirement, &target.payers, opts.payments)?;
    let dir = tempdir()?;
    // Each node gets its own payments (every n-th line) and its share of the connections.
    let n = urls.len();
    let lines = with_duplicates(bodies.lines().collect(), opts.duplicates);
    let first_block = head(&target.rpc_url).await? + 1;
    let mut runs = Vec::new();
    for (i, url) in urls.into_iter().enumerate() {
        let file = dir.join(format!("settle-bodies-{i}.jsonl"));
        let mine: Vec<&str> = lines.iter().skip(i).step_by(n).copied().collect();
        std::fs::write(&file, mine.join("\n") + "\n")?;
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let threads = (opts.threads / n32).max(1);
        let pace = Pace {
            threads,
            connections: (opts.connections / n32).max(threads),
            duration_s: opts.duration_s,
            rate: opts.rate.map(|r| r / n as f64),
        };
        runs.push(load(url, "/settle", file, "\"success\":true", pace));
    }
    let mut per_node = Vec::new();
    let mut open_loop = Vec::new();
    for r in futures::future::join_all(runs).await {
        let (report, open) = r?;
        per_node.push(report);
        open_loop.extend(open);
    }
    let wrk = combined(&per_node);
    let payloads_exhausted = wrk.requests > lines.len() as u64;
    if payloads_exhausted {
        tracing::warn!(
            requests = wrk.requests,
            payments = opts.payments,
            "wrk wrapped around the payments: raise --payments or lower --duration"
        );
    }
    // What was still in flight when wrk stopped lands within a block or two.
    tokio::time::sleep(std::time::Duration::from_secs(
        opts.block_time.unwrap_or(0) * 2 + 1,
    ))
    .await;
    let last_block = head(&target.rpc_url).await?;
    let chain = chain_tally(
        &target.rpc_url,
        target.requirement.asset,
        first_block,
        last_block,
    )
    .await?;
    let node_start = env.as_ref().map(|e| e.start);
    let peak_rss = PeakRss::measure(env.is_some(), opts.external.as_ref());
    if let Some(env) = env {
        env.stop().await;
    }
    let moved = chain.authorizations_used;
    Ok(SettleReport {
        facilitator: target.url,
        payloads_exhausted,
        duplicate_share: opts.duplicates,
        nodes: n,
        per_node: if n > 1 { per_node } else { Vec::new() },
        open_loop,
        node_start,
        peak_rss,
        wrk,
        block_time_s: opts.block_time,
        payments_confirmed: i64::try_from(moved).unwrap_or(i64::MAX),
        transactions: chain.transactions,
        reverted_transactions: chain.reverted,
        mean_batch_size: moved as f64 / chain.transactions.max(1) as f64,
        gas_per_payment: chain.gas_used as f64 / moved.max(1) as f64,
        gas_wallets: if opts.external.is_some() {
            chain.senders
        } else {
            opts.gas_wallets
        },
        wallets_used: chain.senders,
    })
}

/// `lines` with repeats mixed in so that `share` of the result repeats a payment sent up to 16
/// lines before (close enough to race its original, or to follow it once settled).
fn with_duplicates(lines: Vec<&str>, share: f64) -> Vec<&str> {
    let share = share.clamp(0.0, 0.95);
    if share == 0.0 {
        return lines;
    }
    // `share` of the output repeats: one repeat per (1 - share) / share originals.
    let per_original = share / (1.0 - share);
    let mut out = Vec::with_capacity(lines.len() * 2);
    let mut owed = 0.0;
    for (i, line) in lines.iter().enumerate() {
        out.push(*line);
        owed += per_original;
        while owed >= 1.0 {
            owed -= 1.0;
            let back = (i * 7 + out.len()) % 16;
            out.push(lines.get(i.saturating_sub(back)).copied().unwrap_or(line));
        }
    }
    out
}

/// Several simultaneous wrk runs as one: counts and rates add up, latencies are the worst run's
/// (an upper bound of the merged percentile).
fn combined(runs: &[WrkReport]) -> WrkReport {
    let max = |f: fn(&WrkReport) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    WrkReport {
        requests: runs.iter().map(|r| r.requests).sum(),
        duration_s: max(|r| r.duration_s),
        requests_per_s: runs.iter().map(|r| r.requests_per_s).sum(),
        p50_ms: max(|r| r.p50_ms),
        p90_ms: max(|r| r.p90_ms),
        p99_ms: max(|r| r.p99_ms),
        max_ms: max(|r| r.max_ms),
        unexpected: runs.iter().map(|r| r.unexpected).sum(),
        socket_errors: runs.iter().map(|r| r.socket_errors).sum(),
        outcomes: runs.iter().fold(BTreeMap::new(), |mut all, r| {
            for (k, v) in &r.outcomes {
                *all.entry(k.clone()).or_insert(0) += v;
            }
            all
        }),
    }
}

/// What `x402d bench recovery` measured, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// From a rollback of a settled payment's block (and one new block) until the payee's balance
    /// is whole again.
    pub reorg_to_payee_whole_s: f64,
    /// From a transaction sent outside x402d with a lane's key until the next payment settles.
    pub outside_send_to_next_settlement_s: f64,
    /// From a transaction of ours dropped from the pool (mining paused, then resumed) until its
    /// payment settles: the lane rebroadcasts it after `rebroadcast_after` (1 s here).
    pub dropped_to_settled_s: f64,
}

impl RecoveryReport {
    /// Rounds of `x402d bench recovery` as a Markdown table.
    pub fn markdown(rounds: &[RecoveryReport]) -> String {
        let mut out = String::from(
            "| round | reorg → payee whole | outside send → next settlement | dropped pool → settled |\n|---|---|---|---|\n",
        );
        for (i, r) in rounds.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {:.2} s | {:.2} s | {:.2} s |\n",
                i + 1,
                r.reorg_to_payee_whole_s,
                r.outside_send_to_next_settlement_s,
                r.dropped_to_settled_s
            ));
        }
        out
    }
}

/// `x402d bench recovery`: how fast the engine heals after a reorg, an outside send and a
/// dropped pool (one gas wallet, automine; `rebroadcast_after` 1 s).
pub async fn recovery(rounds: usize) -> Result<Vec<RecoveryReport>, BenchError> {
    use alloy::providers::ext::AnvilApi;
    use alloy::providers::{Provider, ProviderBuilder};
    let err = |e: &dyn std::fmt::Display| BenchError::Config(e.to_string());
    let mut out = Vec::new();
    for _ in 0..rounds {
        let env = BenchEnv::start_with(3, None, "rebroadcast_after_seconds = 1", 1).await?;
        let http = reqwest::Client::new();
        let url = format!("{}/settle", env.server.url());
        let bodies: Vec<String> = env.signed_bodies(3)?.lines().map(str::to_owned).collect();
        let settle = |body: String| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| BenchError::Config(e.to_string()))?
                    .text()
                    .await
                    .map_err(|e| BenchError::Config(e.to_string()))
            }
        };
        let p = env.chain.provider();
        let balance = || env.chain.balance_of(env.chain.usdc, env.pay_to);
        settle(bodies[0].clone()).await?;
        let paid = balance().await?;
        p.anvil_rollback(Some(1)).await.map_err(|e| err(&e))?;
        p.evm_mine(None).await.map_err(|e| err(&e))?;
        let t = std::time::Instant::now();
        while balance().await? != paid {
            if t.elapsed() > std::time::Duration::from_secs(60) {
                return Err(BenchError::Config("the payee was never made whole".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let reorg = t.elapsed().as_secs_f64();

        let Some(key) = env.gas_keys.first().cloned() else {
            return Err(BenchError::Config("no gas key".into()));
        };
        let outside = ProviderBuilder::new()
            .wallet(alloy::network::EthereumWallet::from(key))
            .connect_http(env.chain.rpc_url().parse().map_err(|e| err(&e))?);
        let t = std::time::Instant::now();
        let send = alloy::rpc::types::TransactionRequest::default()
            .to(Address::repeat_byte(0x55))
            .value(U256::from(1));
        outside
            .send_transaction(send)
            .await
            .map_err(|e| err(&e))?
            .get_receipt()
            .await
            .map_err(|e| err(&e))?;
        let answer = settle(bodies[1].clone()).await?;
        if !answer.contains("\"success\":true") {
            return Err(BenchError::Config(format!(
                "after an outside send: {answer}"
            )));
        }
        let outside_s = t.elapsed().as_secs_f64();

        let ledger = env.server.facilitator.ledger().clone();
        let before = ledger.transactions(84532).await.map_err(|e| err(&e))?.len();
        p.anvil_set_auto_mine(false).await.map_err(|e| err(&e))?;
        let pending = tokio::spawn(settle(bodies[2].clone()));
        while ledger.transactions(84532).await.map_err(|e| err(&e))?.len() <= before {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        p.anvil_drop_all_transactions().await.map_err(|e| err(&e))?;
        p.anvil_set_auto_mine(true).await.map_err(|e| err(&e))?;
        let t = std::time::Instant::now();
        let answer = pending
            .await
            .map_err(|e| BenchError::Config(e.to_string()))??;
        if !answer.contains("\"success\":true") {
            return Err(BenchError::Config(format!(
                "after a dropped pool: {answer}"
            )));
        }
        out.push(RecoveryReport {
            reorg_to_payee_whole_s: reorg,
            outside_send_to_next_settlement_s: outside_s,
            dropped_to_settled_s: t.elapsed().as_secs_f64(),
        });
        env.stop().await;
    }
    Ok(out)
}

/// Gas of one batch of a given size.
#[derive(Debug, Clone, Serialize)]
pub struct GasPoint {
    pub contract: BatchContract,
    /// Payments sent at once; the rest of the figures are those of the largest transaction
    /// they went out in, of `batch_size` payments (the first arrival may go alone).
    pub payments: usize,
    pub batch_size: usize,
    pub transactions: usize,
    /// Of them, sent through our batch settler.
    pub via_settler: usize,
    /// Of the largest transaction.
    pub gas_used: u64,
    pub gas_per_payment: f64,
    /// Relative to a direct `transferWithAuthorization` (a batch of one).
    pub ratio_to_direct: f64,
    /// The signed transactions' bytes and their FastLZ-compressed size, per payment.
    pub bytes_per_payment: f64,
    pub fastlz_bytes_per_payment: f64,
    /// On Base at the stated prices ([`BaseCost`]): L2 execution, the L1 data fee and the sum,
    /// per payment, in wei and in US dollars.
    pub l2_fee_wei_per_payment: f64,
    pub l1_fee_wei_per_payment: f64,
    pub usd_per_payment: f64,
}

/// What `x402d bench gas` measured: the prices, and a point per contract and size.
#[derive(Debug, Clone, Serialize)]
pub struct GasReport {
    pub prices: BaseCost,
    pub points: Vec<GasPoint>,
}

impl GasReport {
    /// The figures as a Markdown table, with the prices they are stated at.
    pub fn markdown(&self) -> String {
        let gwei = |wei: u128| wei as f64 / 1e9;
        let mut out = format!(
            "Prices: L2 gas {} gwei, L1 base fee {} gwei, blob base fee {} gwei, ETH ${}.\n\n\
             | contract | sent | batch | gas/payment | ratio to direct | bytes/payment | FastLZ bytes/payment | L2 fee/payment (wei) | L1 fee/payment (wei) | USD/payment |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            gwei(self.prices.l2_gas_price_wei),
            gwei(self.prices.l1.l1_base_fee),
            gwei(self.prices.l1.blob_base_fee),
            self.prices.eth_usd,
        );
        for p in &self.points {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.3} | {:.0} | {:.1} | {:.3e} | {:.3e} | {:.6} |\n",
                clap::ValueEnum::to_possible_value(&p.contract)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
                p.payments,
                p.batch_size,
                p.gas_per_payment,
                p.ratio_to_direct,
                p.bytes_per_payment,
                p.fastlz_bytes_per_payment,
                p.l2_fee_wei_per_payment,
                p.l1_fee_wei_per_payment,
                p.usd_per_payment,
            ));
        }
        out
    }
}

/// The prices a cost on Base is stated at.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseCost {
    /// The L2 gas price paid (base fee + tip), wei.
    pub l2_gas_price_wei: u128,
    pub l1: crate::chain::l1fee::L1FeeInputs,
    pub eth_usd: f64,
}

/// How the payments of `x402d bench gas` move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GasMethod {
    /// USDC's `transferWithAuthorization`.
    Eip3009,
    /// The plain ERC-20 through Permit2 and the x402 exact proxy.
    Permit2,
}

/// What `x402d bench gas` sends batches through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchContract {
    /// Multicall3 `aggregate3`.
    Multicall3,
    /// Our packed batch settler (contracts/src/X402BatchSettler.sol).
    Settler,
}

/// `x402d bench gas`: gas per payment against batch size, shared already-funded payee.
pub async fn gas_per_batch(
    sizes: &[usize],
    method: GasMethod,
    contract: BatchContract,
    cost: &BaseCost,
) -> Result<Vec<GasPoint>, BenchError> {
    let mut points: Vec<GasPoint> = Vec::new();
    let mut direct = None;
    for &n in sizes {
        let settlement =
            format!("batch_max_items = {n}\nbatch_window_ms = 3000\nsettle_timeout_seconds = 25");
        let env = BenchEnv::start_cluster(&Setup {
            payers: n,
            settlement: &settlement,
            batch_settler: contract == BatchContract::Settler,
            ..Setup::default()
        })
        .await?;
        let mut req = env.requirement();
        if method == GasMethod::Permit2 {
            let plain = env.chain.plain_token;
            env.chain
                .fund_token(plain, env.pay_to, U256::from(1u64))
                .await?;
            for payer in &env.payers {
                env.chain
                    .fund_token(plain, payer.address(), U256::from(1_000_000_000u64))
                    .await?;
                env.chain.approve_permit2(payer, plain).await?;
            }
            req.asset = plain;
            req.extra = Some(ExactExtra {
                asset_transfer_method: Some("permit2".into()),
                ..Default::default()
            });
        }
        let requirements =
            serde_json::to_value(&req).map_err(|e| BenchError::Config(e.to_string()))?;
        let http = reqwest::Client::new();
        let url = format!("{}/settle", env.server.url());
        let mut calls = Vec::new();
        for payer in &env.payers {
            let payload = match method {
                GasMethod::Eip3009 => {
                    sign_for_v2(payer, &req, unix_now()).map(|p| payload_v2(&req, &p))
                }
                GasMethod::Permit2 => crate::client::sign_permit2_for_v2(payer, &req, unix_now())
                    .map(|p| payload_v2(&req, &p)),
            }
            .map_err(|e| BenchError::Config(e.to_string()))?;
            let body = facilitator_body(2, payload, requirements.clone());
            calls.push(http.post(&url).json(&body).send());
        }
        for r in futures::future::join_all(calls).await {
            let answer: serde_json::Value = r
                .map_err(|e| BenchError::Wrk(e.to_string()))?
                .json()
                .await
                .map_err(|e| BenchError::Wrk(e.to_string()))?;
            if answer["success"] != true {
                return Err(BenchError::Wrk(format!("settlement failed: {answer}")));
            }
        }
        let ledger = env.server.facilitator.ledger();
        let txs = ledger
            .transactions(84532)
            .await
            .map_err(|e| BenchError::Config(e.to_string()))?;
        // The batcher sends the first arrival at once (its lane is idle) and gathers the rest, so
        // the figures are those of the largest transaction: batches of equal size compare.
        let mut largest = None;
        for t in txs.iter().filter(|t| t.gas_used.is_some()) {
            let items = ledger
                .batch_payments(t.batch_id)
                .await
                .map_err(|e| BenchError::Config(e.to_string()))?
                .len();
            if largest.as_ref().is_none_or(|(k, _)| items > *k) {
                largest = Some((items, t));
            }
        }
        let Some((items, tx)) = largest else {
            return Err(BenchError::Wrk(format!(
                "no transaction mined for {n} payments"
            )));
        };
        let via_settler = txs
            .iter()
            .filter_map(|t| crate::settlement::tx::decode(&t.raw_tx))
            .filter(|u| u.to == env.chain.batch_settler)
            .count();
        let gas = tx.gas_used.unwrap_or_default();
        let k = items.max(1) as f64;
        let per = gas as f64 / k;
        let base = *direct.get_or_insert(if items == 1 { per } else { 0.0 });
        let l1 = crate::chain::l1fee::l1_fee_fjord(&tx.raw_tx, &cost.l1)
            .to_string()
            .parse::<f64>()
            .unwrap_or(f64::NAN);
        let l2_per = per * cost.l2_gas_price_wei as f64;
        let l1_per = l1 / k;
        points.push(GasPoint {
            contract,
            payments: n,
            batch_size: items,
            transactions: txs.len(),
            via_settler,
            gas_used: gas,
            gas_per_payment: per,
            ratio_to_direct: if base > 0.0 { per / base } else { f64::NAN },
            bytes_per_payment: tx.raw_tx.len() as f64 / k,
            fastlz_bytes_per_payment: f64::from(crate::chain::l1fee::fastlz_len(&tx.raw_tx)) / k,
            l2_fee_wei_per_payment: l2_per,
            l1_fee_wei_per_payment: l1_per,
            usd_per_payment: (l2_per + l1_per) / 1e18 * cost.eth_usd,
        });
        env.stop().await;
    }
    Ok(points)
}

pub(super) fn tempdir() -> Result<BenchDir, std::io::Error> {
    let dir = std::env::temp_dir().join(format!(
        "x402d-bench-{}-{}",
        std::process::id(),
        alloy::primitives::B256::random()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(BenchDir(dir))
}

/// A scratch directory of one run, removed with everything in it when dropped (on an error
/// too): a ledger with synthetic history is gigabytes.
#[derive(Debug)]
pub struct BenchDir(PathBuf);

impl std::ops::Deref for BenchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_labelled_by_status_and_reason() {
        assert_eq!(
            outcome_label(
                200,
                r#"{"success":false,"errorReason":"insufficient_funds"}"#
            ),
            "200 insufficient_funds"
        );
        assert_eq!(
            outcome_label(
                400,
                r#"{"isValid":false,"invalidReason":"invalid_network"}"#
            ),
            "400 invalid_network"
        );
        assert_eq!(
            outcome_label(429, r#"{"error":"rate limited"}"#),
            "429 rate limited"
        );
        assert_eq!(outcome_label(502, "Bad Gateway"), "502");
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(100));
        assert_eq!(outcome_label(500, &long).chars().count(), 4 + 60);
    }

    #[test]
    fn duplicates_are_the_share_asked_and_follow_their_original() {
        let names: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        let lines: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = with_duplicates(lines.clone(), 0.2);
        assert_eq!(out.len(), 1250);
        let mut seen = std::collections::HashSet::new();
        let mut repeats = 0;
        for l in &out {
            if !seen.insert(*l) {
                repeats += 1;
            }
        }
        assert_eq!((seen.len(), repeats), (1000, 250));
        // A repeat never comes before its original: the first occurrences are in order.
        let mut first = Vec::new();
        let mut s2 = std::collections::HashSet::new();
        for l in &out {
            if s2.insert(*l) {
                first.push(*l);
            }
        }
        assert_eq!(first, lines);
        assert_eq!(with_duplicates(lines.clone(), 0.0), lines);
    }
}
