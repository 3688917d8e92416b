//! The HTTP surface: routes, body limits, and the mapping of errors to status codes.

pub mod ops;
pub mod server;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::facilitator::access::AccessError;
use crate::facilitator::{Facilitator, FacilitatorError};
use crate::limits::{RateLimitBackend, Verdict};
use crate::protocol::discovery::DiscoveryItem;
use crate::protocol::{BadRequest, FacilitatorRequest, Reason, parse_facilitator_request};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub facilitator: Arc<Facilitator>,
    /// This process's own merchant's routes, listed first in the Bazaar.
    pub local_discovery: Arc<Vec<DiscoveryItem>>,
    /// This process's Dial, whose refunds the operator sees in `/status`.
    pub dial: Option<Arc<crate::merchant::Dial>>,
}

/// The facilitator routes' per-IP limit.
#[derive(Clone)]
struct IpLimit {
    per_minute: u32,
    backend: Arc<dyn RateLimitBackend<IpAddr>>,
}

/// How the facilitator's routes are guarded, and what the Bazaar lists of this process's own.
pub struct RouterOptions {
    pub body_limit: usize,
    /// What the Bazaar lists besides what settled payments declared (Dial's routes).
    pub local_discovery: Vec<DiscoveryItem>,
    pub ip_limit_per_minute: Option<u32>,
    /// Where the per-IP counts live (this process, or a Redis all nodes share).
    pub limits: crate::limits::Limits,
    /// `/settle` requests in progress at once; more are shed with 503 at once (not queued).
    pub max_concurrent_settles: usize,
    /// A `/settle` still running after this is answered 503 (the facilitator's own wait ends
    /// well before; this bounds anything else that could hold a connection).
    pub settle_deadline: std::time::Duration,
    /// Serve `/ready`, `/metrics`, `/status` and the operator page here too (false: they are on
    /// the admin listener only, see [`admin_router`]).
    pub ops_routes: bool,
    /// This process's Dial, for the operator's view of its refunds.
    pub dial: Option<Arc<crate::merchant::Dial>>,
}

/// The facilitator's router. The server wraps it (and Dial's routes) in [`ops::observed`].
pub fn router(facilitator: Arc<Facilitator>, options: RouterOptions) -> Router {
    let RouterOptions {
        body_limit,
        local_discovery,
        ip_limit_per_minute,
        limits,
        max_concurrent_settles,
        settle_deadline,
        ops_routes,
        dial,
    } = options;
    let guarded_settle = post(settle).layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                |e: tower::BoxError| async move {
                    if e.is::<tower::timeout::error::Elapsed>() {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "settle_timeout",
                            "the settlement took too long to answer; retry with the same payload",
                        )
                    } else {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "overloaded",
                            "too many settlements in progress; retry shortly with the same payload",
                        )
                    }
                },
            ))
            .load_shed()
            .concurrency_limit(max_concurrent_settles.max(1))
            .timeout(settle_deadline),
    );
    let routes = Router::new()
        .route("/verify", post(verify))
        .route("/settle", guarded_settle)
        .route("/supported", get(supported))
        .route("/discovery/resources", get(discovery))
        .route("/health", get(health));
    let routes = if ops_routes {
        with_ops_routes(routes)
    } else {
        routes
    };
    let routes = routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(AppState {
            facilitator,
            local_discovery: Arc::new(local_discovery),
            dial,
        });
    match ip_limit_per_minute {
        None => routes,
        Some(per_minute) => routes.layer(axum::middleware::from_fn_with_state(
            IpLimit {
                per_minute,
                backend: limits.backend("ip", per_minute),
            },
            limit_ip,
        )),
    }
}

/// What an operator reads: readiness, metrics, status and the operator page.
fn with_ops_routes(routes: Router<AppState>) -> Router<AppState> {
    routes
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/status", get(ops::status))
        .route("/", get(ops::operator_page))
}

/// The admin listener's router (`server.admin_listen`): the operator's routes and `/health`,
/// kept off the public listener.
pub fn admin_router(
    facilitator: Arc<Facilitator>,
    dial: Option<Arc<crate::merchant::Dial>>,
) -> Router {
    with_ops_routes(Router::new().route("/health", get(health)))
        .fallback(not_found)
        .with_state(AppState {
            facilitator,
            local_discovery: Arc::new(Vec::new()),
            dial,
        })
}

/// 429 with `Retry-After` past the per-IP rate; `X-RateLimit-Remaining` on every answer.
async fn limit_ip(
    State(limit): State<IpLimit>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let verdict = limit.backend.check(ip).await;
    let mut response = match verdict {
        Verdict::Allowed { .. } => next.run(request).await,
        Verdict::Limited { retry_after_secs } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests a minute from this address; retry in {retry_after_secs} s",
                limit.per_minute
            ),
        )
        .into_response(),
    };
    crate::limits::annotate(response.headers_mut(), verdict);
    response
}

/// An error answer: `{error, message}` with a status.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (429).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            crate::limits::annotate(
                response.headers_mut(),
                crate::limits::Verdict::Limited {
                    retry_after_secs: secs,
                },
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"x402d\""),
            );
        }
        response
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message)
    }
}

impl From<FacilitatorError> for ApiError {
    fn from(e: FacilitatorError) -> Self {
        match e {
            FacilitatorError::ChainUnavailable(e) => {
                tracing::warn!(error = %e, "chain unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "chain_unavailable",
                    e.to_string(),
                )
            }
            FacilitatorError::Ledger(e) => {
                tracing::error!(error = %e, "ledger unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ledger_unavailable",
                    "the payment ledger is unavailable",
                )
            }
            FacilitatorError::SettlementUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "settlement_unavailable",
                "this facilitator has no gas wallet configured",
            ),
            e @ FacilitatorError::GasWalletsDry { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "gas_wallets_dry",
                e.to_string(),
            ),
            FacilitatorError::Access(e) => access_error(e),
            e @ FacilitatorError::PaymentIdentifierConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "payment_identifier_conflict",
                e.to_string(),
            ),
        }
    }
}

fn access_error(e: AccessError) -> ApiError {
    let (status, code) = match &e {
        AccessError::Missing | AccessError::Invalid => (StatusCode::UNAUTHORIZED, "unauthorized"),
        AccessError::PayToNotAllowed(_) => (StatusCode::FORBIDDEN, "pay_to_not_allowed"),
        AccessError::BudgetExhausted { .. } => (StatusCode::FORBIDDEN, "budget_exhausted"),
        AccessError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        AccessError::Ledger(_) => {
            tracing::error!(error = %e, "ledger unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable")
        }
    };
    let retry_after = match &e {
        AccessError::RateLimited {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        _ => None,
    };
    ApiError {
        retry_after,
        ..ApiError::new(status, code, e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, r.body_text())
    }
}

async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse_facilitator_request(&body?)?;
    let caller = state
        .facilitator
        .authorize(bearer(&headers), &request)
        .await?;
    let answer = state.facilitator.verify(&request).await?;
    // Catalogued only once the payment settles (see `Facilitator::catalogue`).
    let bazaar = bazaar_response(&request, false);
    // A missing Permit2 approval is a precondition the payer must meet first: 412, as the x402
    // Permit2 rules ask; the body is the usual invalid answer.
    let allowance = Reason::Permit2AllowanceRequired.wire_name(request.version);
    let status = if answer.invalid_reason.as_deref() == Some(allowance) {
        StatusCode::PRECONDITION_FAILED
    } else {
        StatusCode::OK
    };
    Ok(annotated(
        (status, Json(answer)).into_response(),
        bazaar,
        caller.rate,
    ))
}

async fn settle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let request = parse_facilitator_request(&body)?;
    let caller = state
        .facilitator
        .authorize(bearer(&headers), &request)
        .await?;
    let answer = state
        .facilitator
        .settle_as(&request, &body, caller.key.as_ref())
        .await?;
    let bazaar = bazaar_response(&request, answer.success);
    Ok(annotated(Json(answer).into_response(), bazaar, caller.rate))
}

/// The `bazaar` entry of `EXTENSION-RESPONSES`, when the payment declared one.
fn bazaar_response(request: &FacilitatorRequest, settled: bool) -> Option<serde_json::Value> {
    match request.discovery.as_ref()? {
        Err(why) => Some(json!({"status": "rejected", "rejectedReason": why})),
        Ok(_) if settled => Some(json!({"status": "success"})),
        Ok(_) => Some(json!({"status": "processing"})),
    }
}

/// Adds `EXTENSION-RESPONSES` (base64 JSON keyed by extension) when there is something to say,
/// and the key's rate headers when it has a rate.
fn annotated(
    mut response: Response,
    bazaar: Option<serde_json::Value>,
    rate: Option<Verdict>,
) -> Response {
    if let Some(v) = rate {
        crate::limits::annotate(response.headers_mut(), v);
    }
    if let Some(b) = bazaar {
        let encoded = crate::protocol::encode_header(&json!({ "bazaar": b }));
        if let Ok(v) = axum::http::HeaderValue::from_str(&encoded) {
            response.headers_mut().insert("extension-responses", v);
        }
    }
    response
}

#[derive(serde::Deserialize)]
struct DiscoveryQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /discovery/resources?type&limit&offset`.
async fn discovery(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<DiscoveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    if let Some(k) = q.kind.as_deref()
        && k != "http"
        && k != "mcp"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "type must be http or mcp",
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = state
        .facilitator
        .discovery_page(
            q.kind.as_deref(),
            limit,
            q.offset.unwrap_or(0),
            &state.local_discovery,
        )
        .await?;
    Ok(Json(page).into_response())
}

/// The `Authorization` header's bytes, if sent.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
}

async fn supported(State(state): State<AppState>) -> Response {
    Json(state.facilitator.supported()).into_response()
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
