//! A small JSON-RPC client that sends batches in one HTTP request and fails over between endpoints.
//!
//! We use our own rather than alloy's provider on the verify path because it must send exactly the
//! calls we choose in one round trip, and tell a revert (an answer) from an unreachable node (503).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, Bytes};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::telemetry::{Metrics, RpcEndpointMetrics};

/// The node could not be reached or answered nonsense: our fault or the operator's, never the client's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("no RPC endpoint answered: {0}")]
    Unreachable(String),
    #[error("RPC endpoint answered malformed JSON-RPC: {0}")]
    Malformed(String),
}

/// An error object a node returned for one call (e.g. a revert).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallError {
    pub code: i64,
    pub message: String,
    #[serde(default)]
    pub data: Option<Value>,
}

impl CallError {
    /// The revert data carried by an `eth_call` error, when there is any.
    pub fn revert_data(&self) -> Option<Bytes> {
        let s = self.data.as_ref()?.as_str()?;
        alloy::hex::decode(s.strip_prefix("0x").unwrap_or(s))
            .ok()
            .map(Into::into)
    }

    /// The node judged the call (a revert), rather than failing to run it.
    pub fn is_revert(&self) -> bool {
        self.code == 3 || self.message.to_ascii_lowercase().contains("revert")
    }

    /// A human revert reason (`Error(string)` decoded), falling back to the node's message.
    pub fn reason(&self) -> String {
        self.revert_data()
            .and_then(|d| alloy::sol_types::decode_revert_reason(&d))
            .unwrap_or_else(|| self.message.clone())
    }
}

/// One call of a batch.
#[derive(Debug, Clone)]
pub struct RpcCall {
    pub method: &'static str,
    pub params: Value,
}

impl RpcCall {
    pub fn get_code(address: Address) -> Self {
        RpcCall {
            method: "eth_getCode",
            params: json!([address, "latest"]),
        }
    }

    pub fn call(to: Address, data: impl Into<Bytes>) -> Self {
        RpcCall {
            method: "eth_call",
            params: json!([{"to": to, "data": data.into()}, "latest"]),
        }
    }

    /// `eth_call` as `from` (a contract that checks `msg.sender`, such as the upto proxy).
    pub fn call_from(from: Address, to: Address, data: impl Into<Bytes>) -> Self {
        RpcCall {
            method: "eth_call",
            params: json!([{"from": from, "to": to, "data": data.into()}, "latest"]),
        }
    }

    pub fn chain_id() -> Self {
        RpcCall {
            method: "eth_chainId",
            params: json!([]),
        }
    }
}

/// A JSON-RPC endpoint set for one chain.
pub struct RpcClient {
    http: reqwest::Client,
    urls: Vec<reqwest::Url>,
    /// Per endpoint, same order as `urls`; empty when not instrumented.
    metrics: Vec<RpcEndpointMetrics>,
    /// The endpoint that answered last; we start there so a dead first URL costs one failure, not one per call.
    preferred: AtomicUsize,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct Response {
    id: u64,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<CallError>,
}

impl RpcClient {
    /// `urls` must be non-empty and valid (config validates them).
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, RpcError> {
        let urls = urls
            .iter()
            .map(|u| {
                // The error does not quote the URL: it may carry an API key.
                reqwest::Url::parse(u)
                    .map_err(|e| RpcError::Malformed(format!("an RPC URL does not parse: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RpcError::Unreachable(e.to_string()))?;
        Ok(RpcClient {
            http,
            urls,
            preferred: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            metrics: Vec::new(),
        })
    }

    /// Counts requests, errors and latency per endpoint into `metrics`.
    pub fn instrument(&mut self, metrics: &Metrics) {
        self.metrics = self.urls.iter().map(|u| metrics.rpc_endpoint(u)).collect();
    }

    pub fn urls(&self) -> &[reqwest::Url] {
        &self.urls
    }

    /// Sends `calls` as one JSON-RPC batch and returns each call's outcome, in order.
    pub async fn batch(
        &self,
        calls: &[RpcCall],
    ) -> Result<Vec<Result<Value, CallError>>, RpcError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let first_id = self
            .next_id
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"jsonrpc": "2.0", "id": first_id + i as u64, "method": c.method, "params": c.params}))
            .collect();
        let body = serde_json::to_vec(&body).map_err(|e| RpcError::Malformed(e.to_string()))?;
        let responses = self.post(body).await?;
        let mut out: Vec<Option<Result<Value, CallError>>> = vec![None; calls.len()];
        for r in responses {
            let Some(slot) =
                r.id.checked_sub(first_id)
                    .and_then(|i| out.get_mut(i as usize))
            else {
                return Err(RpcError::Malformed(format!("unexpected id {}", r.id)));
            };
            *slot = Some(match (r.result, r.error) {
                (_, Some(e)) => Err(e),
                (Some(v), None) => Ok(v),
                (None, None) => Ok(Value::Null),
            });
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| RpcError::Malformed("batch answer is missing a call".into())))
            .collect()
    }

    /// One call.
    pub async fn request(&self, call: RpcCall) -> Result<Result<Value, CallError>, RpcError> {
        let mut out = self.batch(std::slice::from_ref(&call)).await?;
        out.pop()
            .ok_or_else(|| RpcError::Malformed("empty answer".into()))
    }

    /// One call whose answer is decoded into an alloy RPC type (receipts, blocks, fee history).
    /// `null` decodes into `Option::None` where `T` is an option.
    pub async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        call: RpcCall,
    ) -> Result<Result<T, CallError>, RpcError> {
        let method = call.method;
        match self.request(call).await? {
            Ok(v) => serde_json::from_value(v)
                .map(Ok)
                .map_err(|e| RpcError::Malformed(format!("{method}: {e}"))),
            Err(e) => Ok(Err(e)),
        }
    }

    /// A batch whose answers are all decoded into `T`; a call's own error stays its own.
    pub async fn typed_batch<T: serde::de::DeserializeOwned>(
        &self,
        calls: &[RpcCall],
    ) -> Result<Vec<Result<T, CallError>>, RpcError> {
        self.batch(calls)
            .await?
            .into_iter()
            .zip(calls)
            .map(|(r, c)| match r {
                Ok(v) => serde_json::from_value(v)
                    .map(Ok)
                    .map_err(|e| RpcError::Malformed(format!("{}: {e}", c.method))),
                Err(e) => Ok(Err(e)),
            })
            .collect()
    }

    async fn post(&self, body: Vec<u8>) -> Result<Vec<Response>, RpcError> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for k in 0..self.urls.len() {
            let i = (start + k) % self.urls.len();
            let url = &self.urls[i];
            let m = self.metrics.get(i);
            if let Some(m) = m {
                m.requests.inc();
            }
            let started = std::time::Instant::now();
            let sent = self
                .http
                .post(url.clone())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    if let Some(m) = m {
                        m.http_errors.inc();
                    }
                    last_error = format!("{}: HTTP {}", redact(url), r.status());
                    continue;
                }
                Err(e) => {
                    if let Some(m) = m {
                        m.transport_errors.inc();
                    }
                    last_error = format!("{}: {}", redact(url), e.without_url());
                    continue;
                }
            };
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    if let Some(m) = m {
                        m.transport_errors.inc();
                    }
                    last_error = format!("{}: {}", redact(url), e.without_url());
                    continue;
                }
            };
            if let Some(m) = m {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            self.preferred.store(i, Ordering::Relaxed);
            return serde_json::from_slice::<Vec<Response>>(&bytes).map_err(|e| {
                if let Some(m) = m {
                    m.malformed.inc();
                }
                RpcError::Malformed(format!(
                    "{}: {e}: {}",
                    redact(url),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            });
        }
        Err(RpcError::Unreachable(last_error))
    }
}

/// Never prints the URLs whole: they may carry API keys.
impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("urls", &self.urls.iter().map(redact).collect::<Vec<_>>())
            .finish()
    }
}

/// An RPC URL for logs: scheme, host and port only (paths and queries often carry API keys).
pub fn redact(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// Decodes a hex string result into bytes.
pub fn hex_result(v: &Value) -> Result<Bytes, RpcError> {
    let s = v
        .as_str()
        .ok_or_else(|| RpcError::Malformed(format!("expected hex, got {v}")))?;
    alloy::hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .map(Into::into)
        .map_err(|e| RpcError::Malformed(format!("bad hex {s}: {e}")))
}
