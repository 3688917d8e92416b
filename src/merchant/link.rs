//! How the merchant reaches a facilitator: this process's own, or any x402 facilitator over HTTP.
//! Both speak the same `/verify` and `/settle` bodies, so the paywall cannot tell them apart.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::facilitator::Facilitator;
use crate::protocol::parse_facilitator_request;
use crate::protocol::wire::{SettleResponse, SupportedResponse, VerifyResponse};

/// Why the facilitator gave no verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// It refused the request as malformed (its 400): the payment itself is at fault.
    #[error("the facilitator refused the request: {0}")]
    Rejected(String),
    /// It could not be reached or failed on its side (network error, 5xx): answered 502.
    #[error("the facilitator is unavailable: {0}")]
    Unavailable(String),
}

/// A facilitator's `/verify` and `/settle`, taking the JSON request body.
pub trait FacilitatorLink: Send + Sync {
    fn verify<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<VerifyResponse, LinkError>>;
    fn settle<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<SettleResponse, LinkError>>;
    /// `GET /supported`: what it settles, and the wallet an upto payment must bind.
    fn supported(&self) -> BoxFuture<'_, Result<SupportedResponse, LinkError>>;
}

/// The facilitator of this process, called directly.
pub struct InProcess(pub Arc<Facilitator>);

impl FacilitatorLink for InProcess {
    fn verify<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<VerifyResponse, LinkError>> {
        Box::pin(async move {
            let request =
                parse_facilitator_request(body).map_err(|e| LinkError::Rejected(e.to_string()))?;
            self.0
                .verify(&request)
                .await
                .map_err(|e| LinkError::Unavailable(e.to_string()))
        })
    }

    fn settle<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<SettleResponse, LinkError>> {
        Box::pin(async move {
            let request =
                parse_facilitator_request(body).map_err(|e| LinkError::Rejected(e.to_string()))?;
            self.0
                .settle(&request, body)
                .await
                .map_err(|e| LinkError::Unavailable(e.to_string()))
        })
    }

    fn supported(&self) -> BoxFuture<'_, Result<SupportedResponse, LinkError>> {
        Box::pin(async move { Ok(self.0.supported()) })
    }
}

/// Any x402 facilitator over HTTP (`dial.facilitator_url`).
pub struct OverHttp {
    base: String,
    client: reqwest::Client,
    /// Sent as `Authorization: Bearer …` when the facilitator wants a key.
    api_key: Option<String>,
}

impl OverHttp {
    pub fn new(base: &str, api_key: Option<String>) -> Result<OverHttp, LinkError> {
        let client = reqwest::Client::builder()
            // Settlement may wait for a receipt; the facilitator caps itself below this.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        Ok(OverHttp {
            base: base.trim_end_matches('/').to_owned(),
            client,
            api_key,
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, LinkError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        // 412 is a verdict with a body (a missing Permit2 approval), not a malformed request.
        if status == reqwest::StatusCode::PRECONDITION_FAILED
            && let Ok(answer) = serde_json::from_str(&text)
        {
            return Ok(answer);
        }
        if status.is_client_error() {
            return Err(LinkError::Rejected(format!("{status}: {text}")));
        }
        if !status.is_success() {
            return Err(LinkError::Unavailable(format!("{status}: {text}")));
        }
        serde_json::from_str(&text)
            .map_err(|e| LinkError::Unavailable(format!("unreadable answer: {e}")))
    }
}

impl FacilitatorLink for OverHttp {
    fn verify<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<VerifyResponse, LinkError>> {
        Box::pin(self.post("/verify", body))
    }

    fn settle<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Result<SettleResponse, LinkError>> {
        Box::pin(self.post("/settle", body))
    }

    fn supported(&self) -> BoxFuture<'_, Result<SupportedResponse, LinkError>> {
        Box::pin(async move {
            let mut request = self.client.get(format!("{}/supported", self.base));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request
                .send()
                .await
                .map_err(|e| LinkError::Unavailable(e.to_string()))?;
            response
                .error_for_status()
                .map_err(|e| LinkError::Unavailable(e.to_string()))?
                .json()
                .await
                .map_err(|e| LinkError::Unavailable(format!("unreadable /supported: {e}")))
        })
    }
}
