//! Operations routes and the per-request middleware: `/metrics`, `/ready`, `/status`, the operator
//! page at `/`, and request ids, spans and HTTP metrics for every route.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;
use crate::telemetry::Metrics;

/// The request id header, accepted from the caller when well-formed and always answered.
pub const REQUEST_ID: &str = "x-request-id";

/// The route label of requests no route matched (the raw path would be unbounded).
const UNMATCHED: &str = "unmatched";

/// A caller's request id is kept when it is 1 to 128 characters of `[A-Za-z0-9._:/+=-]`: enough for
/// UUIDs, trace ids and most proxies' ids, and nothing that could forge a log line.
pub fn well_formed_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(b))
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Gives every request an id (the caller's when well-formed), runs it inside a span carrying that
/// id, answers the id in `x-request-id`, and counts the request by route template and status.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| well_formed_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&new_request_id())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        });
    request.headers_mut().insert(REQUEST_ID, id.clone());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED, |r| r.as_str());
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        method = %request.method(),
        route,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    tracing::debug!(parent: &span, status = status.as_u16(), micros = elapsed.as_micros() as u64, "answered");
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.facilitator.refresh_gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.facilitator.metrics().render(),
    )
        .into_response()
}

/// `GET /ready`: 200 when every check passes, 503 naming the failed ones otherwise.
pub async fn ready(State(state): State<AppState>) -> Response {
    let r = state.facilitator.readiness().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// `GET /status`: what the operator page shows, as JSON.
pub async fn status(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(state.facilitator.status().await),
    )
        .into_response()
}

/// The operator page (`templates/operator.html`; askama escapes every value for HTML). The
/// served networks are rendered here so the page says something without JavaScript; its script
/// then polls `/status` and fills everything.
#[derive(askama::Template)]
#[template(path = "operator.html")]
struct OperatorPage {
    version: &'static str,
    networks: Vec<NetworkRow>,
}

struct NetworkRow {
    network: String,
    v1_name: String,
    tokens: String,
}

fn operator_html(networks: &[crate::chain::Network]) -> Result<String, askama::Error> {
    use askama::Template;
    OperatorPage {
        version: env!("CARGO_PKG_VERSION"),
        networks: networks
            .iter()
            .map(|n| NetworkRow {
                network: n.chain_id.caip2(),
                v1_name: n.v1_name.clone().unwrap_or_default(),
                tokens: n
                    .tokens
                    .iter()
                    .map(|t| t.symbol.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
    }
    .render()
}

/// `GET /`: the operator page (self-contained; polls `/status`).
pub async fn operator_page(State(state): State<AppState>) -> Response {
    match operator_html(state.facilitator.chains().networks()) {
        Ok(page) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            page,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "operator page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(well_formed_request_id(b"3f2a-11ee.b0c:trace/1+x="));
        assert!(!well_formed_request_id(b""));
        assert!(!well_formed_request_id(b"has space"));
        assert!(!well_formed_request_id(b"line\nbreak"));
        assert!(!well_formed_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(well_formed_request_id(id.as_bytes()));
    }

    #[test]
    fn the_operator_page_escapes_every_value() {
        use askama::Template;
        const HOSTILE: &str = "<script>'\"&";
        let page = OperatorPage {
            version: "0.0.0",
            networks: vec![NetworkRow {
                network: HOSTILE.into(),
                v1_name: HOSTILE.into(),
                tokens: HOSTILE.into(),
            }],
        }
        .render()
        .unwrap();
        assert!(!page.contains(HOSTILE), "{page}");
        assert_eq!(
            page.matches("&#60;script&#62;&#39;&#34;&#38;").count(),
            3,
            "{page}"
        );
        // The page's own script is there, untouched by the template.
        assert!(page.contains("setInterval(refresh, 2000);"));
        assert!(page.contains("`M${L},${T} V${H - B} H${W}`"));
    }
}
