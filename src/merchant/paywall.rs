//! The x402 paywall: an axum layer any route can use. For a priced route it answers 402 with the
//! offers, or takes a payment in the order irreversible work needs: validate the request (400, no
//! charge) → verify → settle → run the handler → answer with the settlement receipt.

use std::future::Future;
use std::sync::Arc;

use alloy::primitives::{Address, keccak256};
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::link::{FacilitatorLink, LinkError};
use super::store::{NewReceipt, Receipt, ReceiptStatus, Store};
use crate::client::facilitator_body;
use crate::protocol::primitives::dollars_to_atomic;
use crate::protocol::wire::{
    ExactEvmPayload, ExactExtra, PaymentPayloadV1, PaymentPayloadV2, PaymentRequiredV2,
    Permit2Payload, RequirementsV1, RequirementsV2, ResourceInfo, SettleResponse,
};
use crate::protocol::{ChainId, X402Version, decode_header, encode_header};

pub const PAYMENT_REQUIRED: &str = "payment-required";
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
pub const PAYMENT_RESPONSE: &str = "payment-response";
pub const X_PAYMENT: &str = "x-payment";
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";

/// Largest answer body kept for replaying a paid request.
const MAX_STORED_RESPONSE: usize = 1 << 20;

/// A token the merchant accepts, on one network.
#[derive(Debug, Clone)]
pub struct OfferAsset {
    pub chain_id: ChainId,
    pub v1_name: Option<String>,
    pub asset: Address,
    pub name: String,
    pub version: String,
    pub decimals: u8,
    /// The facilitator wallet an upto payment in this token binds, when the facilitator offers
    /// upto for it (Permit2 on this chain, from its `/supported`).
    pub upto_facilitator: Option<Address>,
}

/// A route's price as the paywall needs it.
#[derive(Debug, Clone)]
pub struct Price {
    /// Dollars, as a decimal string (per unit when metered).
    pub dollars: String,
    pub description: String,
    /// Metered: `dollars` is per unit, and the route is also offered as `upto` for at most this
    /// many units; an upto payment is charged for the units its request uses ([`Metered`]).
    pub metered: Option<u32>,
}

/// The units a request will use (a message's segments), put in the extensions by `prepare`: what
/// an upto payment is charged for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered(pub u32);

/// Proof of payment, handed to the handler in the request's extensions.
#[derive(Debug, Clone)]
pub struct Paid {
    pub payer: Address,
    pub receipt_id: i64,
    pub transaction: String,
    pub network: String,
}

/// A provider's id for what a handler delivered, put in the response's extensions for the receipt.
#[derive(Debug, Clone)]
pub struct ProviderRef(pub String);

/// What the owner of the routes tells the paywall.
pub trait Priced: Send + Sync + 'static {
    /// The price of a route (by its path template); `None`: free, or priced by its handler.
    fn price_of(&self, path: &str) -> Option<Price>;
    /// Checks a request before any money moves; what it returns reaches the handler's extensions.
    /// `payer` is `None` before an offer is made: a request that can never succeed is refused
    /// then, not after the client has paid (checks that need the payer wait for it).
    fn prepare<'a>(
        &'a self,
        path: &'a str,
        body: &'a [u8],
        payer: Option<Address>,
    ) -> futures::future::BoxFuture<'a, Result<Extensions, Response>>;
}

/// The paywall: offers, the facilitator and the receipts.
pub struct Paywall {
    pub link: Arc<dyn FacilitatorLink>,
    pub store: Store,
    pub assets: Vec<OfferAsset>,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    pub public_url: PublicUrl,
    pub body_limit: usize,
    /// Wakes Dial's background work (a refund just became owed).
    pub jobs_wake: Arc<tokio::sync::Notify>,
}

/// Dial's public base URL (`dial.public_url`). Resource URLs and the SIWE domain and URI come from
/// it and never from a request's `Host`, which any client (or a site relaying a victim's sign-in)
/// chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    base: String,
    authority: String,
    host: String,
    origin: String,
}

impl PublicUrl {
    /// # Errors
    /// When `url` is not an absolute http(s) URL with a host.
    pub fn parse(url: &str) -> Result<PublicUrl, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{url:?} is not an http(s) URL"));
        }
        let host = u.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
        let authority = match u.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(PublicUrl {
            base: u.as_str().trim_end_matches('/').to_owned(),
            authority,
            host: host.to_owned(),
            origin: u.origin().ascii_serialization(),
        })
    }

    /// The base URL without a trailing `/` (`https://dial.example`): the SIWE `URI`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `host[:port]` (`dial.example`): the SIWE `domain` (EIP-4361: an RFC 3986 authority).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host alone (`dial.example`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The RFC 6454 origin (`https://dial.example`), as a browser's `Origin` header names it.
    pub fn origin(&self) -> String {
        self.origin.clone()
    }
}

/// State of the paywall layer.
#[derive(Clone)]
pub struct PaywallState {
    pub paywall: Arc<Paywall>,
    pub priced: Arc<dyn Priced>,
}

/// The layer: `axum::middleware::from_fn_with_state(state, paywall::layer)` on priced routes
/// (as a `route_layer`, so the path template is known).
pub async fn layer(State(state): State<PaywallState>, request: Request, next: Next) -> Response {
    let path = match request.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None => request.uri().path().to_owned(),
    };
    let Some(price) = state.priced.price_of(&path) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.paywall.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return dial_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            );
        }
    };
    let priced = state.priced.clone();
    let prepare_path = path.clone();
    let prepare_body = body.clone();
    let run_parts = parts.clone();
    let run_body = body.clone();
    state
        .paywall
        .charge(
            &parts,
            &path,
            &price,
            &body,
            move |payer| async move { priced.prepare(&prepare_path, &prepare_body, payer).await },
            move |paid, extensions| async move {
                let mut request = Request::from_parts(run_parts, Body::from(run_body));
                request.extensions_mut().extend(extensions);
                request.extensions_mut().insert(paid);
                next.run(request).await
            },
        )
        .await
}

/// A Dial error: a status, a machine-readable code and a sentence for people.
#[derive(Debug, Clone)]
pub struct DialError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl DialError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        DialError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for DialError {
    fn into_response(self) -> Response {
        dial_error(self.status, self.code, &self.message)
    }
}

/// The envelope of every Dial error: `{success:false, error, message}`.
pub fn dial_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "error": error, "message": message})),
    )
        .into_response()
}

/// A payment as it arrived, parsed and matched to one of our offers.
struct Offered {
    version: X402Version,
    payload_json: Value,
    /// The offer accepted: what `/verify` is asked about (for upto, the maximum).
    offer: RequirementsV2,
    requirement_json: Value,
    network: String,
    asset: Address,
    amount: String,
    decimals: u8,
    payer: Address,
    /// The authorization's nonce as text (EIP-3009 `bytes32`, Permit2 `uint256`).
    nonce: String,
    /// An upto payment: charged at settle time for what the request uses.
    upto: bool,
}

impl Paywall {
    /// The offers for a price: one per accepted token.
    pub fn offers(&self, price: &Price) -> Vec<RequirementsV2> {
        let mut offers = Vec::new();
        for a in &self.assets {
            let Ok(amount) = dollars_to_atomic(&price.dollars, a.decimals) else {
                continue;
            };
            let offer =
                |scheme: &str, amount, facilitator_address: Option<Address>| RequirementsV2 {
                    scheme: scheme.into(),
                    network: a.chain_id.caip2(),
                    amount,
                    asset: a.asset,
                    pay_to: self.pay_to,
                    max_timeout_seconds: self.max_timeout_seconds,
                    extra: Some(ExactExtra {
                        name: Some(a.name.clone()),
                        version: Some(a.version.clone()),
                        asset_transfer_method: facilitator_address.map(|_| "permit2".to_owned()),
                        facilitator_address,
                    }),
                };
            offers.push(offer("exact", amount, None));
            if let (Some(units), Some(facilitator)) = (price.metered, a.upto_facilitator) {
                let max =
                    crate::protocol::AtomicAmount(amount.0 * alloy::primitives::U256::from(units));
                offers.push(offer("upto", max, Some(facilitator)));
            }
        }
        offers
    }

    /// The absolute URL of a path, under `dial.public_url`.
    pub fn resource_url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url.base())
    }

    /// The v2 `PaymentRequired` of a route.
    pub fn payment_required(
        &self,
        path: &str,
        price: &Price,
        error: Option<String>,
    ) -> PaymentRequiredV2 {
        PaymentRequiredV2 {
            x402_version: X402Version::V2,
            error,
            resource: ResourceInfo {
                url: self.resource_url(path),
                description: Some(price.description.clone()),
                mime_type: Some("application/json".into()),
            },
            accepts: self.offers(price),
            extensions: None,
        }
    }

    /// The 402 answer: `PAYMENT-REQUIRED` header, the same JSON in the body (or an HTML page for a
    /// browser), and the settlement receipt when a settlement failed.
    fn answer_402(
        &self,
        parts: &Parts,
        path: &str,
        price: &Price,
        error: Option<String>,
        settled: Option<(X402Version, &SettleResponse)>,
    ) -> Response {
        let required = self.payment_required(path, price, error);
        let encoded = encode_header(&required);
        let page = is_browser(&parts.headers)
            .then(|| paywall_page(&required))
            .and_then(|page| {
                page.map_err(|e| tracing::warn!(error = %e, "paywall page did not render"))
                    .ok()
            });
        let mut response = if let Some(page) = page {
            (StatusCode::PAYMENT_REQUIRED, Html(page)).into_response()
        } else {
            (StatusCode::PAYMENT_REQUIRED, axum::Json(&required)).into_response()
        };
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            response.headers_mut().insert(PAYMENT_REQUIRED, v);
        }
        if let Some((version, settle)) = settled {
            attach_receipt(&mut response, version, settle);
        }
        response
    }

    /// Takes a payment for one request and runs `execute` once it is settled.
    pub async fn charge<P, PF, E, EF>(
        &self,
        parts: &Parts,
        path: &str,
        price: &Price,
        body: &Bytes,
        prepare: P,
        execute: E,
    ) -> Response
    where
        P: FnOnce(Option<Address>) -> PF,
        PF: Future<Output = Result<Extensions, Response>>,
        E: FnOnce(Paid, Extensions) -> EF,
        EF: Future<Output = Response>,
    {
        let offered = match self.read_payment(parts, path, price) {
            Ok(Some(o)) => o,
            // Validation before the offer: a bad request is refused, never priced.
            Ok(None) => {
                return match prepare(None).await {
                    Ok(_) => self.answer_402(parts, path, price, None, None),
                    Err(response) => response,
                };
            }
            Err(message) => return self.answer_402(parts, path, price, Some(message), None),
        };
        let payer = offered.payer;
        let payer_text = payer.to_checksum(None).to_lowercase();
        let key = format!(
            "{}:{}:{}:{}",
            offered.network,
            offered.asset.to_string().to_lowercase(),
            payer_text,
            offered.nonce
        );
        let request_hash = request_hash(parts, body);
        let existing = match self.store.receipt_by_key(&key).await {
            Ok(r) => r,
            Err(e) => return store_unavailable(e),
        };
        let retry_of = match existing {
            None => None,
            Some(r) => match self
                .replay(parts, path, price, &offered, &r, &request_hash)
                .await
            {
                Replay::Answer(response) => return response,
                Replay::SettleAgain(id) => Some(id),
            },
        };
        let extensions = match prepare(Some(payer)).await {
            Ok(e) => e,
            Err(response) => {
                if let Some(id) = retry_of {
                    // Hand the receipt back so the payment can be retried with a valid request.
                    let _ = self
                        .store
                        .move_receipt(
                            id,
                            &[ReceiptStatus::Settling],
                            ReceiptStatus::SettlementPending,
                        )
                        .await;
                }
                return response;
            }
        };
        // upto: verified for the maximum offered, settled for what this request uses.
        let (settle_requirement, charged) = match offered.charge(price, &extensions) {
            Ok(c) => c,
            Err(e) => return dial_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e),
        };
        let body = |requirement: &Value| {
            serde_json::to_vec(&facilitator_body(
                offered.version.number(),
                offered.payload_json.clone(),
                requirement.clone(),
            ))
        };
        let (facilitator_request, settle_request) =
            match (body(&offered.requirement_json), body(&settle_requirement)) {
                (Ok(v), Ok(s)) => (v, s),
                (Err(e), _) | (_, Err(e)) => {
                    return dial_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                    );
                }
            };
        let receipt_id = match retry_of {
            Some(id) => id,
            None => {
                match self.link.verify(&facilitator_request).await {
                    Ok(v) if v.is_valid => {}
                    Ok(v) => {
                        let reason = v.invalid_reason.unwrap_or_else(|| "invalid_payment".into());
                        return self.answer_402(parts, path, price, Some(reason), None);
                    }
                    Err(LinkError::Rejected(m)) => {
                        return self.answer_402(
                            parts,
                            path,
                            price,
                            Some(format!("invalid_payload: {m}")),
                            None,
                        );
                    }
                    Err(LinkError::Unavailable(m)) => {
                        return dial_error(StatusCode::BAD_GATEWAY, "facilitator_unavailable", &m);
                    }
                }
                let new = NewReceipt {
                    payment_key: &key,
                    payer: &payer_text,
                    route: path,
                    amount: &charged,
                    network: &offered.network,
                    asset: &offered.asset.to_string().to_lowercase(),
                    request_hash: &request_hash,
                };
                match self.store.open_receipt(&new).await {
                    Ok(Some(id)) => id,
                    Ok(None) => return in_progress(),
                    Err(e) => return store_unavailable(e),
                }
            }
        };
        let settled = match self.settle(&settle_request).await {
            Ok(s) => s,
            Err(m) => {
                // The payment may or may not land: keep the receipt retryable with the same header.
                let _ = self
                    .store
                    .finish_receipt(
                        receipt_id,
                        ReceiptStatus::SettlementPending,
                        None,
                        None,
                        None,
                        Some(&m),
                    )
                    .await;
                return dial_error(StatusCode::BAD_GATEWAY, "facilitator_unavailable", &m);
            }
        };
        if !settled.success {
            let reason = settled
                .error_reason
                .clone()
                .unwrap_or_else(|| "settlement_failed".into());
            let (status, tx) = if reason == "settlement_pending" {
                (
                    ReceiptStatus::SettlementPending,
                    Some(settled.transaction.as_str()),
                )
            } else {
                (ReceiptStatus::SettlementFailed, None)
            };
            let _ = self
                .store
                .finish_receipt(
                    receipt_id,
                    status,
                    tx.filter(|t| !t.is_empty()),
                    None,
                    None,
                    Some(&reason),
                )
                .await;
            return self.answer_402(
                parts,
                path,
                price,
                Some(reason),
                Some((offered.version, &settled)),
            );
        }
        if let Err(e) = self
            .store
            .finish_receipt(
                receipt_id,
                ReceiptStatus::Paid,
                Some(&settled.transaction),
                None,
                None,
                None,
            )
            .await
        {
            tracing::error!(error = %e, receipt = receipt_id, tx = %settled.transaction, "paid but the receipt could not be updated");
        }
        let paid = Paid {
            payer,
            receipt_id,
            transaction: settled.transaction.clone(),
            network: offered.network.clone(),
        };
        let response = execute(paid, extensions).await;
        self.fulfil(receipt_id, offered.version, &settled, response)
            .await
    }

    /// Settles, retrying once on `settlement_pending` as the facilitator contract asks. Not a
    /// backoff: `settlement_pending` is not a failure but the facilitator's own wait running out
    /// while the payment is in flight, and asking again at once joins the same claim and waits
    /// again there, so a client-side delay would only add latency.
    async fn settle(&self, request: &[u8]) -> Result<SettleResponse, String> {
        let mut answer = self.link.settle(request).await;
        if matches!(&answer, Ok(s) if s.error_reason.as_deref() == Some("settlement_pending")) {
            answer = self.link.settle(request).await;
        }
        match answer {
            Ok(s) => Ok(s),
            Err(LinkError::Rejected(m)) => Ok(SettleResponse {
                success: false,
                error_reason: Some("invalid_payload".into()),
                error_message: Some(m),
                payer: None,
                transaction: String::new(),
                network: String::new(),
                amount: None,
            }),
            Err(LinkError::Unavailable(m)) => Err(m),
        }
    }

    /// Records what the handler did with a paid request and adds the settlement receipt.
    async fn fulfil(
        &self,
        receipt_id: i64,
        version: X402Version,
        settled: &SettleResponse,
        response: Response,
    ) -> Response {
        let (parts, body) = response.into_parts();
        let provider = parts.extensions.get::<ProviderRef>().map(|p| p.0.clone());
        let bytes = axum::body::to_bytes(body, MAX_STORED_RESPONSE)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut response = if parts.status.is_success() {
            if let Err(e) = self
                .store
                .finish_receipt(
                    receipt_id,
                    ReceiptStatus::Fulfilled,
                    None,
                    provider.as_deref(),
                    Some(&text),
                    None,
                )
                .await
            {
                tracing::error!(error = %e, receipt = receipt_id, "fulfilled but the receipt could not be updated");
            }
            Response::from_parts(parts, Body::from(bytes))
        } else {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            // The payment is the refund's key: a second failure of the same payment owes nothing more.
            let refund = match self.store.owe_refund(receipt_id, &detail).await {
                Ok(_) => {
                    self.jobs_wake.notify_one();
                    json!({"status": "owed", "amount": settled.amount})
                }
                Err(e) => {
                    tracing::error!(error = %e, receipt = receipt_id, "refund owed but not recorded");
                    json!({"status": "unrecorded"})
                }
            };
            let mut answer = fulfillment_failed(receipt_id, &settled.transaction, &detail);
            answer["refund"] = refund;
            let stored = serde_json::to_string(&answer).unwrap_or_default();
            if let Err(e) = self
                .store
                .finish_receipt(
                    receipt_id,
                    ReceiptStatus::FulfillmentFailed,
                    None,
                    provider.as_deref(),
                    Some(&stored),
                    Some(&detail),
                )
                .await
            {
                tracing::error!(error = %e, receipt = receipt_id, "fulfilment failed and the receipt could not be updated");
            }
            tracing::warn!(receipt = receipt_id, tx = %settled.transaction, detail, "paid request not fulfilled: refund owed");
            (StatusCode::BAD_GATEWAY, axum::Json(answer)).into_response()
        };
        attach_receipt(&mut response, version, settled);
        response
    }

    /// A payment we have seen before: answer from the record, or settle it again if it never landed.
    async fn replay(
        &self,
        parts: &Parts,
        path: &str,
        price: &Price,
        offered: &Offered,
        receipt: &Receipt,
        request_hash: &str,
    ) -> Replay {
        if receipt.request_hash != request_hash || receipt.route != path {
            return Replay::Answer(self.answer_402(
                parts,
                path,
                price,
                Some("payment_already_used: this payment was made for another request".into()),
                None,
            ));
        }
        let settled = SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(receipt.payer.clone()),
            transaction: receipt.tx_hash.clone().unwrap_or_default(),
            network: receipt.network.clone(),
            amount: Some(receipt.amount.clone()),
        };
        match receipt.status {
            ReceiptStatus::Fulfilled | ReceiptStatus::FulfillmentFailed => {
                let status = if receipt.status == ReceiptStatus::Fulfilled {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let mut body = receipt.response_json.clone().unwrap_or_else(|| "{}".into());
                // A failed one answers with where its refund stands now.
                if receipt.status == ReceiptStatus::FulfillmentFailed
                    && let Ok(Some(refund)) = self.store.refund_of_receipt(receipt.id).await
                    && let Ok(mut v) = serde_json::from_str::<Value>(&body)
                {
                    v["refund"] = super::refunds::refund_json(&refund);
                    body = v.to_string();
                }
                let mut response =
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
                attach_receipt(&mut response, offered.version, &settled);
                Replay::Answer(response)
            }
            ReceiptStatus::Settling | ReceiptStatus::Paid => Replay::Answer(in_progress()),
            ReceiptStatus::SettlementPending | ReceiptStatus::SettlementFailed => {
                match self
                    .store
                    .move_receipt(
                        receipt.id,
                        &[
                            ReceiptStatus::SettlementPending,
                            ReceiptStatus::SettlementFailed,
                        ],
                        ReceiptStatus::Settling,
                    )
                    .await
                {
                    Ok(true) => Replay::SettleAgain(receipt.id),
                    Ok(false) => Replay::Answer(in_progress()),
                    Err(e) => Replay::Answer(store_unavailable(e)),
                }
            }
        }
    }

    /// Reads `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1) and matches it to an offer we made.
    /// `Ok(None)`: no payment sent; `Err`: a payment we cannot take, with the reason.
    fn read_payment(
        &self,
        parts: &Parts,
        path: &str,
        price: &Price,
    ) -> Result<Option<Offered>, String> {
        let (version, raw) = match (
            parts.headers.get(PAYMENT_SIGNATURE),
            parts.headers.get(X_PAYMENT),
        ) {
            (Some(v), _) => (X402Version::V2, v),
            (None, Some(v)) => (X402Version::V1, v),
            (None, None) => return Ok(None),
        };
        let raw = raw
            .to_str()
            .map_err(|_| "invalid_payload: the payment header is not ASCII".to_owned())?;
        let payload_json: Value =
            decode_header(raw).map_err(|e| format!("invalid_payload: {e}"))?;
        let invalid = |e: serde_json::Error| format!("invalid_payload: {e}");
        match version {
            X402Version::V2 => {
                let p: PaymentPayloadV2 =
                    serde_json::from_value(payload_json.clone()).map_err(invalid)?;
                let offer = self
                    .offers(price)
                    .into_iter()
                    .find(|o| *o == p.accepted)
                    .ok_or("invalid_payment_requirements: the accepted offer is not one this route makes")?;
                let upto = offer.scheme == "upto";
                let (payer, nonce) = if crate::client::is_permit2_offer(&offer) {
                    let p2: Permit2Payload =
                        serde_json::from_str(p.payload.get()).map_err(invalid)?;
                    let a = p2.permit2_authorization;
                    (a.from, a.nonce.to_string())
                } else {
                    let exact: ExactEvmPayload =
                        serde_json::from_str(p.payload.get()).map_err(invalid)?;
                    let a = exact.authorization;
                    (a.from, a.nonce.to_string())
                };
                let decimals = self
                    .assets
                    .iter()
                    .find(|a| a.asset == offer.asset && a.chain_id.caip2() == offer.network)
                    .map_or(6, |a| a.decimals);
                Ok(Some(Offered {
                    version,
                    requirement_json: serde_json::to_value(&offer).map_err(invalid)?,
                    network: offer.network.clone(),
                    asset: offer.asset,
                    amount: offer.amount.to_string(),
                    decimals,
                    payload_json,
                    payer,
                    nonce,
                    upto,
                    offer,
                }))
            }
            X402Version::V1 => {
                let p: PaymentPayloadV1 =
                    serde_json::from_value(payload_json.clone()).map_err(invalid)?;
                let asset = self
                    .assets
                    .iter()
                    .find(|a| {
                        a.v1_name.as_deref() == Some(p.network.as_str()) && p.scheme == "exact"
                    })
                    .ok_or_else(|| {
                        format!("unsupported_network: no v1 offer for {:?}", p.network)
                    })?;
                let amount = dollars_to_atomic(&price.dollars, asset.decimals)
                    .map_err(|e| format!("invalid_payment_requirements: {e}"))?;
                let requirement = RequirementsV1 {
                    scheme: "exact".into(),
                    network: p.network.clone(),
                    max_amount_required: amount,
                    resource: self.resource_url(path),
                    description: price.description.clone(),
                    mime_type: "application/json".into(),
                    output_schema: None,
                    pay_to: self.pay_to,
                    max_timeout_seconds: self.max_timeout_seconds,
                    asset: asset.asset,
                    extra: Some(ExactExtra {
                        name: Some(asset.name.clone()),
                        version: Some(asset.version.clone()),
                        asset_transfer_method: None,
                        facilitator_address: None,
                    }),
                };
                let exact: ExactEvmPayload =
                    serde_json::from_str(p.payload.get()).map_err(invalid)?;
                let offer = RequirementsV2 {
                    scheme: requirement.scheme.clone(),
                    network: asset.chain_id.caip2(),
                    amount,
                    asset: asset.asset,
                    pay_to: requirement.pay_to,
                    max_timeout_seconds: requirement.max_timeout_seconds,
                    extra: requirement.extra.clone(),
                };
                Ok(Some(Offered {
                    version,
                    requirement_json: serde_json::to_value(&requirement).map_err(invalid)?,
                    network: asset.chain_id.caip2(),
                    asset: asset.asset,
                    amount: amount.to_string(),
                    decimals: asset.decimals,
                    payload_json,
                    payer: exact.authorization.from,
                    nonce: exact.authorization.nonce.to_string(),
                    upto: false,
                    offer,
                }))
            }
        }
    }
}

impl Offered {
    /// The requirement `/settle` gets and the amount charged (atomic, as text): the offer as it
    /// is, or for upto the per-unit price times the units the request uses (never above the
    /// maximum the payer signed; a handler that metered nothing is charged the maximum).
    fn charge(&self, price: &Price, extensions: &Extensions) -> Result<(Value, String), String> {
        if !self.upto {
            return Ok((self.requirement_json.clone(), self.amount.clone()));
        }
        let unit = dollars_to_atomic(&price.dollars, self.decimals)?;
        let units = extensions
            .get::<Metered>()
            .map(|m| m.0)
            .or(price.metered)
            .unwrap_or(1);
        let charge = (unit.0 * alloy::primitives::U256::from(units)).min(self.offer.amount.0);
        let mut requirement = self.offer.clone();
        requirement.amount = crate::protocol::AtomicAmount(charge);
        let json = serde_json::to_value(&requirement).map_err(|e| e.to_string())?;
        Ok((json, charge.to_string()))
    }
}

enum Replay {
    Answer(Response),
    SettleAgain(i64),
}

fn request_hash(parts: &Parts, body: &[u8]) -> String {
    let mut data = format!("{} {}\n", parts.method, parts.uri.path()).into_bytes();
    data.extend_from_slice(body);
    alloy::hex::encode(keccak256(data))
}

fn in_progress() -> Response {
    let mut r = dial_error(
        StatusCode::CONFLICT,
        "payment_in_progress",
        "this payment is being processed; retry shortly with the same header",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn store_unavailable(e: super::store::StoreError) -> Response {
    tracing::error!(error = %e, "dial store unavailable");
    dial_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the receipt store is unavailable; nothing was charged",
    )
}

fn fulfillment_failed(receipt_id: i64, transaction: &str, detail: &str) -> Value {
    json!({
        "success": false,
        "error": "fulfillment_failed",
        "message": format!("the payment settled but the request could not be fulfilled ({detail}); the amount is refunded to the payer"),
        "transaction": transaction,
        "receiptId": receipt_id,
    })
}

/// Adds the settlement receipt header of the payment's version.
fn attach_receipt(response: &mut Response, version: X402Version, settle: &SettleResponse) {
    let name = match version {
        X402Version::V2 => PAYMENT_RESPONSE,
        X402Version::V1 => X_PAYMENT_RESPONSE,
    };
    if let Ok(v) = HeaderValue::from_str(&encode_header(settle)) {
        response.headers_mut().insert(name, v);
    }
}

fn is_browser(headers: &HeaderMap) -> bool {
    let get = |h| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    get(header::ACCEPT).contains("text/html") && get(header::USER_AGENT).contains("Mozilla")
}

/// The page a browser gets instead of a bare 402 (`templates/paywall.html`; askama escapes every
/// value for HTML).
#[derive(askama::Template)]
#[template(path = "paywall.html")]
struct PaywallPage<'a> {
    description: &'a str,
    url: &'a str,
    offers: Vec<OfferRow<'a>>,
}

struct OfferRow<'a> {
    network: &'a str,
    amount: String,
    token: &'a str,
    asset: String,
}

fn paywall_page(required: &PaymentRequiredV2) -> Result<String, askama::Error> {
    use askama::Template;
    PaywallPage {
        description: required.resource.description.as_deref().unwrap_or(""),
        url: &required.resource.url,
        offers: required
            .accepts
            .iter()
            .map(|o| OfferRow {
                network: &o.network,
                amount: o.amount.to_string(),
                token: o
                    .extra
                    .as_ref()
                    .and_then(|e| e.name.as_deref())
                    .unwrap_or(""),
                asset: o.asset.to_string(),
            })
            .collect(),
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>'\"&";

    #[test]
    fn the_paywall_page_escapes_every_value() {
        let required = PaymentRequiredV2 {
            x402_version: X402Version::V2,
            error: None,
            resource: ResourceInfo {
                url: format!("https://dial.example/{HOSTILE}"),
                description: Some(HOSTILE.into()),
                mime_type: None,
            },
            accepts: vec![RequirementsV2 {
                scheme: "exact".into(),
                network: HOSTILE.into(),
                amount: dollars_to_atomic("0.05", 6).unwrap(),
                asset: Address::repeat_byte(0x0c),
                pay_to: Address::repeat_byte(0x01),
                max_timeout_seconds: 60,
                extra: Some(ExactExtra {
                    name: Some(HOSTILE.into()),
                    version: Some("2".into()),
                    asset_transfer_method: None,
                    facilitator_address: None,
                }),
            }],
            extensions: None,
        };
        let page = paywall_page(&required).unwrap();
        assert!(!page.contains(HOSTILE), "{page}");
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&#60;script&#62;&#39;&#34;&#38;"), "{page}");
        // network, token, description and the URL twice.
        assert_eq!(
            page.matches("&#60;script&#62;&#39;&#34;&#38;").count(),
            5,
            "{page}"
        );
    }
}
