//! `x402d bench merchant`: the paid SMS flow end to end, as a buyer meets it. Each connection
//! asks Dial to send an SMS, gets the 402 and its offer, signs an EIP-3009 authorization and
//! sends the request again with it; Dial verifies and settles through its facilitator before it
//! answers. One latency covers all of that; the chain says what moved.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::{
    BenchDir, BenchError, EnvFile, PeakRss, WrkReport, chain_tally, head, outcome_label, rss_line,
    tempdir,
};
use super::openloop::{Sample, summary};
use crate::client::{PayRequest, pay};

/// Options of `x402d bench merchant`.
#[derive(Debug, Clone)]
pub struct MerchantLoad {
    /// The `--env-out` file of a running `x402d dev` (its Dial is loaded); `None`: start one.
    pub env_file: Option<PathBuf>,
    /// That `x402d dev`'s process, for its peak RSS (known without asking when started here).
    pub pid: Option<u32>,
    /// Buyers paying at once, each with its own payer (round the env's payers).
    pub connections: usize,
    pub duration_s: u64,
}

/// What `x402d bench merchant` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MerchantReport {
    /// The paid route loaded.
    pub url: String,
    /// Each paid SMS: the 402, the signature and the paid request, timed together; expected
    /// is a 200 whose receipt says settled.
    pub load: WrkReport,
    /// `AuthorizationUsed` logs of the token in the run's blocks.
    pub payments_confirmed: usize,
    pub transactions: usize,
    pub reverted_transactions: usize,
    pub gas_per_payment: f64,
    /// The peak RSS of the `x402d dev` process (facilitator and Dial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss: Option<PeakRss>,
}

impl MerchantReport {
    /// The figures as a Markdown table.
    pub fn markdown(&self) -> String {
        let l = &self.load;
        format!(
            "| paid SMS | per s | p50 | p90 | p99 | max | unexpected | moved | transactions | reverted | gas/payment |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {:.1} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {} | {} | {:.0} |\n",
            l.requests,
            l.requests_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            l.unexpected + l.socket_errors,
            self.payments_confirmed,
            self.transactions,
            self.reverted_transactions,
            self.gas_per_payment
        ) + &l.outcomes_line("Dial")
            + &rss_line(None, self.peak_rss.as_ref())
    }
}

/// An `x402d dev` this bench started, stopped (SIGTERM, so it stops its anvil too) on drop.
struct OwnDev {
    child: std::process::Child,
    _dir: BenchDir,
}

impl OwnDev {
    /// Starts `x402d dev` (this executable) with `payers` payers on a free port and a ledger of
    /// its own; returns it with its env file once that is written.
    async fn start(payers: usize) -> Result<(OwnDev, PathBuf), BenchError> {
        let dir = tempdir()?;
        let env = dir.join("env.json");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("dev")
            .args(["--port", &port.to_string()])
            .args(["--payers", &payers.to_string()])
            .arg("--env-out")
            .arg(&env)
            .arg("--ledger-url")
            .arg(format!("sqlite://{}/dev.db", dir.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("dev.log"))?)
            .spawn()?;
        let mut own = OwnDev { child, _dir: dir };
        let began = Instant::now();
        while !env_written(&env) {
            if let Some(status) = own.child.try_wait()? {
                return Err(BenchError::Config(format!("x402d dev exited: {status}")));
            }
            if began.elapsed() > Duration::from_secs(120) {
                return Err(BenchError::Config(
                    "x402d dev did not start within 120 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((own, env))
    }
}

/// The env file is complete (dev writes it once everything serves).
fn env_written(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .is_some_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok())
}

impl Drop for OwnDev {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `x402d bench merchant`: `connections` buyers pay for SMS in a closed loop for `duration_s`.
pub async fn merchant_load(opts: &MerchantLoad) -> Result<MerchantReport, BenchError> {
    let (own, env_path, pid) = match &opts.env_file {
        Some(path) => (None, path.clone(), opts.pid),
        None => {
            let (dev, path) = OwnDev::start(opts.connections.max(1)).await?;
            let pid = dev.child.id();
            (Some(dev), path, Some(pid))
        }
    };
    let env = EnvFile::read(&env_path)?;
    let merchant = env.merchant_url.clone().ok_or_else(|| {
        BenchError::Config("the --env file names no Dial (merchant_url): not --chain-only".into())
    })?;
    let url = format!("{}/api/v1/sms/send", merchant.trim_end_matches('/'));
    let payers = env.payers()?;
    if payers.is_empty() {
        return Err(BenchError::Config("the --env file has no payers".into()));
    }
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| BenchError::Wrk(e.to_string()))?;
    let first_block = head(&env.rpc_url).await? + 1;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(opts.duration_s);
    let buyers = (0..opts.connections.max(1)).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        let signer = payers[i % payers.len()].clone();
        tokio::spawn(async move {
            let req = PayRequest {
                method: reqwest::Method::POST,
                url,
                body: Some(r#"{"to":"+14155550100","message":"x402d bench"}"#.into()),
                headers: Vec::new(),
                network: None,
                asset: None,
                max_amount: "10".into(),
                force_v1: false,
                scheme: Some("exact".into()),
            };
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let (ok, outcome) = match pay(&http, &signer, &req).await {
                    Ok(o) => {
                        let settled = o.receipt.as_ref().is_some_and(|r| r.success);
                        if o.status == 200 && settled {
                            (true, None)
                        } else {
                            (false, Some(outcome_label(o.status, &o.body)))
                        }
                    }
                    Err(e) => (
                        false,
                        Some(format!("client: {e}").chars().take(60).collect()),
                    ),
                };
                samples.push(Sample {
                    due_s: sent.duration_since(start).as_secs_f64(),
                    latency_ms: sent.elapsed().as_secs_f64() * 1e3,
                    ok,
                    socket_error: false,
                    outcome,
                });
            }
            samples
        })
    });
    let mut samples = Vec::new();
    for b in futures::future::join_all(buyers).await {
        samples.extend(b.map_err(|e| BenchError::Wrk(e.to_string()))?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let last_block = head(&env.rpc_url).await?;
    let chain = chain_tally(&env.rpc_url, env.usdc, first_block, last_block).await?;
    let peak_rss = pid.map(PeakRss::of_pid);
    drop(own);
    let moved = chain.authorizations_used;
    Ok(MerchantReport {
        url,
        load: summary(&samples, elapsed),
        payments_confirmed: moved,
        transactions: chain.transactions,
        reverted_transactions: chain.reverted,
        gas_per_payment: chain.gas_used as f64 / moved.max(1) as f64,
        peak_rss,
    })
}
