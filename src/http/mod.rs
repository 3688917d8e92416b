//! The HTTP surface: routes, body limits, and the mapping of errors to status codes.

pub mod ops;
pub mod server;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::facilitator::{Facilitator, FacilitatorError};
use crate::protocol::{BadRequest, parse_facilitator_request};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub facilitator: Arc<Facilitator>,
}

/// The facilitator's router. The server wraps it (and Dial's routes) in [`ops::observed`].
pub fn router(facilitator: Arc<Facilitator>, body_limit: usize) -> Router {
    Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .route("/supported", get(supported))
        .route("/health", get(health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/status", get(ops::status))
        .route("/", get(ops::operator_page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(AppState { facilitator })
}

/// An error answer: `{error, message}` with a status.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
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
        }
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse_facilitator_request(&body?)?;
    let answer = state.facilitator.verify(&request).await?;
    Ok(Json(answer).into_response())
}

async fn settle(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let request = parse_facilitator_request(&body)?;
    let answer = state.facilitator.settle(&request, &body).await?;
    Ok(Json(answer).into_response())
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
