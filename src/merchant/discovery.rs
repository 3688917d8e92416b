//! Discovery, generated from the same route table as the paywall: Dial's own listing, the Bazaar
//! catalogue shape, `/.well-known/x402` and OpenAPI.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Dial;
use super::catalogue::{FREE_ROUTES, PAID_ROUTES, PaidRoute};
use super::mcp;
use super::paywall::Price;
use crate::protocol::X402Version;
use crate::protocol::discovery::DiscoveryItem;

fn price_of(dial: &Dial, route: &PaidRoute) -> Price {
    route.offer_price(&dial.config.prices)
}

/// `GET /api/v1/discovery`: every route, with prices and offers for the paid ones.
pub async fn dial_discovery(State(dial): State<Arc<Dial>>) -> Response {
    let paid: Vec<Value> = PAID_ROUTES
        .iter()
        .map(|r| {
            let price = price_of(&dial, r);
            json!({"method": "POST", "path": r.path, "url": dial.paywall.resource_url(r.path),
                   "price": format!("${}", price.dollars), "description": r.summary,
                   "paid": if r.always_paid { "always" } else { "past the monthly quota" },
                   "input": (r.input)(), "output": (r.output)(), "accepts": dial.paywall.offers(&price)})
        })
        .collect();
    let free: Vec<Value> = FREE_ROUTES
        .iter()
        .map(|r| json!({"method": r.method.to_uppercase(), "path": r.path, "description": r.summary, "bearer": r.bearer}))
        .collect();
    let tools: Vec<Value> = mcp::tool_routes()
        .map(|(tool, r)| json!({"toolName": tool, "path": r.path, "price": format!("${}", price_of(&dial, r).dollars)}))
        .collect();
    let mcp = json!({"url": dial.paywall.resource_url(mcp::PATH), "transport": "streamable-http", "tools": tools});
    Json(json!({"success": true, "service": "Dial", "x402Version": 2, "paid": paid, "free": free, "mcp": mcp}))
        .into_response()
}

/// Dial's paid routes as Bazaar entries, then its paid MCP tools as `mcp` entries keyed by (the
/// `/mcp` URL, tool name) (the facilitator's `GET /discovery/resources` lists them first, beside
/// what settled payments declared).
pub fn catalogue(dial: &Dial) -> Vec<DiscoveryItem> {
    let now = crate::clock::rfc3339(crate::clock::now_ms() / 1000);
    let accepts = |r: &PaidRoute| -> Vec<Value> {
        dial.paywall
            .offers(&price_of(dial, r))
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect()
    };
    let routes = PAID_ROUTES.iter().map(|r| DiscoveryItem {
        resource: dial.paywall.resource_url(r.path),
        kind: "http".to_owned(),
        x402_version: X402Version::V2,
        accepts: accepts(r),
        last_updated: now.clone(),
        metadata: json!({"method": "POST", "description": r.summary, "serviceName": "Dial",
                         "input": (r.input)(), "output": (r.output)()}),
    });
    let tools = mcp::tool_routes().map(|(tool, r)| DiscoveryItem {
        resource: dial.paywall.resource_url(mcp::PATH),
        kind: "mcp".to_owned(),
        x402_version: X402Version::V2,
        accepts: accepts(r),
        last_updated: now.clone(),
        metadata: json!({"description": r.summary, "serviceName": "Dial", "toolName": tool,
                         "input": {"type": "mcp", "toolName": tool, "inputSchema": (r.input)(),
                                   "transport": "streamable-http"},
                         "output": (r.output)()}),
    });
    routes.chain(tools).collect()
}

/// `GET /.well-known/x402`.
pub async fn well_known(State(dial): State<Arc<Dial>>) -> Response {
    let resources: Vec<String> = PAID_ROUTES
        .iter()
        .map(|r| dial.paywall.resource_url(r.path))
        .collect();
    Json(
        json!({"version": 1, "x402Version": 2, "resources": resources,
                "discovery": dial.paywall.resource_url("/discovery/resources"),
                "openapi": dial.paywall.resource_url("/openapi.json")}),
    )
    .into_response()
}

/// `GET /openapi.json`: OpenAPI 3.1 of every Dial route.
pub async fn openapi(State(dial): State<Arc<Dial>>) -> Response {
    let error = json!({"type": "object", "required": ["success", "error", "message"],
        "properties": {"success": {"const": false}, "error": {"type": "string"}, "message": {"type": "string"}}});
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for r in PAID_ROUTES {
        let price = price_of(&dial, r);
        paths.entry(r.path.to_owned()).or_default().insert(
            "post".into(),
            json!({
                "summary": r.summary,
                "x-x402-price": format!("${}", price.dollars),
                "x-x402-always-paid": r.always_paid,
                "requestBody": {"required": true, "content": {"application/json": {"schema": (r.input)()}}},
                "responses": {
                    "200": {"description": "done; PAYMENT-RESPONSE carries the settlement", "content": {"application/json": {"schema": (r.output)()}}},
                    "400": {"description": "invalid request, nothing charged", "content": {"application/json": {"schema": error}}},
                    "402": {"description": "payment required; PAYMENT-REQUIRED carries the offers"},
                    "429": {"description": "rate limited; see Retry-After"},
                    "502": {"description": "facilitator unreachable, or paid but not fulfilled (refund owed)"}
                }
            }),
        );
    }
    for r in FREE_ROUTES {
        let mut op = json!({"summary": r.summary, "responses": {"200": {"description": "ok"}}});
        if r.bearer {
            op["security"] = json!([{"bearer": []}]);
        }
        paths
            .entry(r.path.to_owned())
            .or_default()
            .insert(r.method.into(), op);
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Dial", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Paid SMS and phone numbers over x402. Paid routes answer 402 with PAYMENT-REQUIRED; pay with PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1)."},
        "servers": [{"url": dial.paywall.public_url.base()}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "from POST /api/v1/auth/siwe"}}},
        "paths": paths,
    }))
    .into_response()
}
