//! Operations routes and the per-request middleware: `/metrics`, `/ready`, `/status`, the operator
//! page at `/`, and request ids, spans and HTTP metrics for every route ([`observed`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;
use tower_http::LatencyUnit;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

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

/// Makes the id of a request that came without a well-formed one: 32 hex digits.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&new_request_id())
            .ok()
            .map(RequestId::new)
    }
}

/// `SetRequestId` keeps whatever id the caller sent, so a malformed one is dropped first and the
/// request then gets a new one like a request that sent none.
fn drop_malformed_request_id(mut request: Request) -> Request {
    let malformed = request
        .headers()
        .get(REQUEST_ID)
        .is_some_and(|v| !well_formed_request_id(v.as_bytes()));
    if malformed {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// The span every request runs in: its id, method and route template (never the raw path, which
/// the caller chooses).
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |r| r.as_str());
    tracing::info_span!("request", request_id = id, method = %request.method(), route)
}

/// Wraps every route of `app` (the facilitator's and Dial's): an id for each request (the
/// caller's when well-formed, answered in `x-request-id`), a span carrying it, and [`observe`]'s
/// metrics.
pub fn observed(app: Router, metrics: Arc<Metrics>) -> Router {
    let header = HeaderName::from_static(REQUEST_ID);
    app.layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(drop_malformed_request_id))
            .layer(SetRequestIdLayer::new(header.clone(), NewRequestId))
            .layer(PropagateRequestIdLayer::new(header))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    // Quiet at the start, and no error line per 5xx: `/ready` answers 503 to
                    // every probe while a chain is down, and the cause is logged where it is known.
                    .on_request(())
                    .on_failure(())
                    .on_response(
                        DefaultOnResponse::new()
                            .level(Level::DEBUG)
                            .latency_unit(LatencyUnit::Micros),
                    ),
            )
            .layer(axum::middleware::from_fn_with_state(metrics, observe)),
    )
}

/// Counts every request by route template and status, and times it by route template.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED, |r| r.as_str());
    let response = next.run(request).await;
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
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
    let mut status = state.facilitator.status().await;
    if let Some(dial) = &state.dial {
        status["dial"] = dial.operator_status().await;
    }
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(status),
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
            version: HOSTILE,
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
            4,
            "the version, network, v1 name and tokens: {page}"
        );
        // The only raw `<script` is the page's own tag.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        // The page's own script is there, untouched by the template.
        assert!(page.contains("setInterval(refresh, 2000);"));
        assert!(page.contains("`M${L},${T} V${H - B} H${W}`"));
    }
}
