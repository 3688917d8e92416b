//! `/mcp`: Dial's paid routes as MCP tools over Streamable HTTP (rmcp), per the x402 MCP
//! transport. A tool call is a transport adapter, not a second implementation: it becomes an
//! in-process request to the same axum routes (route table, prices, validation, paywall,
//! providers), and their answer is translated back. Payment arrives in
//! `params._meta["x402/payment"]` (the PaymentPayload object), the receipt leaves in
//! `result._meta["x402/payment-response"]`; an unpaid call is `isError: true` with the
//! PaymentRequired in `structuredContent` and as JSON text in `content[0].text`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, header, request::Parts};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, MetaObject, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::Dial;
use super::catalogue::{PAID_ROUTES, PaidRoute};
use super::paywall::{PAYMENT_RESPONSE, PAYMENT_SIGNATURE, X_PAYMENT, X_PAYMENT_RESPONSE};
use crate::protocol::codec::{decode_header, encode_header};
use crate::protocol::mcp::{PAYMENT as PAYMENT_META, PAYMENT_RESPONSE as PAYMENT_RESPONSE_META};

/// Where the MCP server listens on the Dial listener.
pub const PATH: &str = "/mcp";

/// The free tool: Dial's own listing of routes and prices.
const DISCOVERY_TOOL: &str = "discovery";
const DISCOVERY_PATH: &str = "/api/v1/discovery";
/// Free, owner-only: the texts that arrived at the caller's numbers.
const READ_MESSAGES_TOOL: &str = "read_messages";
/// Free, payer-only: a verification rental's status and code.
const GET_VERIFICATION_TOOL: &str = "get_verification";

/// The owner-only tools take the bearer token as an argument (or the HTTP `Authorization` of
/// the MCP request): a SIWE session, or a verification's read token.
fn token_property() -> Value {
    json!({"type": "string", "description": "Bearer token: a SIWE session from POST /api/v1/auth/siwe, or the readToken of a paid verification (else the MCP request's Authorization header is used)"})
}

/// A route offered as a tool, and the tool's name.
pub fn tool_routes() -> impl Iterator<Item = (&'static str, &'static PaidRoute)> {
    PAID_ROUTES
        .iter()
        .filter(|r| r.always_paid)
        .filter_map(|r| r.tool.map(|t| (t, r)))
}

/// The MCP tool list: one per tool route, with the route's input schema, plus `discovery`.
pub fn tools(dial: &Dial) -> Vec<Tool> {
    let mut tools: Vec<Tool> = tool_routes()
        .map(|(name, route)| {
            let price = route.offer_price(&dial.config.prices);
            let per = if price.metered.is_some() {
                " per segment"
            } else {
                ""
            };
            let description = format!(
                "{} (${} USDC{per}, paid with x402: call once for the offer, then again with \
                 _meta[\"{PAYMENT_META}\"])",
                route.summary, price.dollars
            );
            Tool::new(name, description, schema_object((route.input)()))
        })
        .collect();
    tools.push(Tool::new(
        READ_MESSAGES_TOOL,
        "Texts received at your numbers, oldest first, with a cursor for the next page (free; \
         owner only)",
        schema_object(json!({"type": "object", "properties": {
            "token": token_property(),
            "number": {"type": "string", "description": "Only this number (E.164)"},
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"},
            "cursor": {"type": "string", "description": "nextCursor of the previous page"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100}
        }, "additionalProperties": false})),
    ));
    tools.push(Tool::new(
        GET_VERIFICATION_TOOL,
        "A verification rental's status (waiting, received, expired) and its code once the text \
         arrived; wait up to 30 s for it (free; the payer only)",
        schema_object(json!({"type": "object", "properties": {
            "token": token_property(),
            "verificationId": {"type": "string"},
            "wait": {"type": "integer", "minimum": 0, "maximum": super::inbound::MAX_WAIT_SECS}
        }, "required": ["verificationId"], "additionalProperties": false})),
    ));
    tools.push(Tool::new(
        DISCOVERY_TOOL,
        "Every Dial route and tool with its price and payment offers (free)",
        schema_object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
    ));
    tools
}

fn schema_object(schema: Value) -> serde_json::Map<String, Value> {
    match schema {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The rmcp handler: the Dial routes it calls into, and the tool list (built once).
#[derive(Clone)]
struct DialTools {
    routes: Router,
    tools: Arc<Vec<Tool>>,
    body_limit: usize,
}

/// The `/mcp` service over `routes` (Dial's routes without the outer layers: a tool call has
/// already passed the rate limit as the POST that carried it).
pub fn service(
    dial: &Dial,
    routes: Router,
) -> StreamableHttpService<impl ServerHandler, NeverSessionManager> {
    let handler = DialTools {
        routes,
        tools: Arc::new(tools(dial)),
        body_limit: dial.paywall.body_limit,
    };
    let public = dial.paywall.public_url.clone();
    // DNS-rebinding defence (MCP transport security): the Host must be one we serve under, and a
    // browser Origin must be listed; a request without Origin (an agent, not a page) passes.
    let mut hosts = dial.config.mcp_allowed_hosts.clone();
    if hosts.is_empty() {
        hosts.push(public.host().to_owned());
    }
    let mut origins = dial.config.mcp_allowed_origins.clone();
    if origins.is_empty() {
        origins.push(public.origin());
    }
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        // Stateless JSON answers: any node can serve any call, nothing to keep per session.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(dial.paywall.body_limit);
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

impl ServerHandler for DialTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("dial", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Paid SMS and phone numbers over x402. A paid tool called without payment \
                 answers isError with the x402 PaymentRequired; sign one of its accepts and call \
                 again with the PaymentPayload in _meta[\"x402/payment\"]. The settlement comes \
                 back in _meta[\"x402/payment-response\"].",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let mut arguments = request.arguments.unwrap_or_default();
        let token = match arguments.remove("token") {
            Some(Value::String(t)) => Some(t),
            Some(_) => return Err(ErrorData::invalid_params("token must be a string", None)),
            None => None,
        };
        let (method, path) = match request.name.as_ref() {
            DISCOVERY_TOOL => (Method::GET, DISCOVERY_PATH.to_owned()),
            READ_MESSAGES_TOOL => (
                Method::GET,
                with_query(
                    "/api/v1/numbers/mine/messages",
                    &arguments,
                    &["number", "since", "until", "cursor", "limit"],
                )?,
            ),
            GET_VERIFICATION_TOOL => {
                let id = arguments
                    .get("verificationId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ErrorData::invalid_params("verificationId is required", None))?;
                let id =
                    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
                (
                    Method::GET,
                    with_query(
                        &format!("/api/v1/verifications/{id}"),
                        &arguments,
                        &["wait"],
                    )?,
                )
            }
            name => match tool_routes().find(|(t, _)| *t == name) {
                Some((_, route)) => (Method::POST, route.path.to_owned()),
                None => {
                    return Err(ErrorData::invalid_params(
                        format!("unknown tool {name:?}"),
                        None,
                    ));
                }
            },
        };
        // rmcp moves the request's `_meta` to the context; read both so neither placement is lost.
        let payment = request
            .meta
            .as_ref()
            .and_then(|m| m.get(PAYMENT_META))
            .or_else(|| context.meta.get(PAYMENT_META))
            .cloned();
        let arguments = Value::Object(arguments);
        let http = context.extensions.get::<Parts>();
        let authorization = match token {
            Some(t) => Some(HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                ErrorData::invalid_params("token has characters a header cannot carry", None)
            })?),
            None => http.and_then(|p| p.headers.get(header::AUTHORIZATION).cloned()),
        };
        let mut call = self.routed(method, &path, &arguments, payment.as_ref(), http)?;
        if let Some(a) = authorization {
            call.headers_mut().insert(header::AUTHORIZATION, a);
        }
        let response = self
            .routes
            .clone()
            .oneshot(call)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(self.result(response).await.into())
    }
}

/// `path?k=v&…` from the listed string or integer arguments (others are refused).
fn with_query(
    path: &str,
    arguments: &serde_json::Map<String, Value>,
    keys: &[&str],
) -> Result<String, ErrorData> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in arguments {
        if k == "verificationId" {
            continue;
        }
        if !keys.contains(&k.as_str()) {
            return Err(ErrorData::invalid_params(
                format!("unknown argument {k:?}"),
                None,
            ));
        }
        match v {
            Value::String(s) => query.append_pair(k, s),
            Value::Number(n) => query.append_pair(k, &n.to_string()),
            _ => {
                return Err(ErrorData::invalid_params(
                    format!("{k} must be a string or a number"),
                    None,
                ));
            }
        };
    }
    let query = query.finish();
    Ok(if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    })
}

impl DialTools {
    /// The in-process request a tool call becomes.
    fn routed(
        &self,
        method: Method,
        path: &str,
        arguments: &Value,
        payment: Option<&Value>,
        http: Option<&Parts>,
    ) -> Result<Request<Body>, ErrorData> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::ACCEPT, "application/json");
        if method == Method::POST {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(payment) = payment {
            if !payment.is_object() {
                return Err(ErrorData::invalid_params(
                    format!("_meta[\"{PAYMENT_META}\"] must be the PaymentPayload object"),
                    None,
                ));
            }
            let v1 = payment.get("x402Version").and_then(Value::as_u64) == Some(1);
            let name = if v1 { X_PAYMENT } else { PAYMENT_SIGNATURE };
            let value = HeaderValue::from_str(&encode_header(payment))
                .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
            builder = builder.header(name, value);
        }
        let body = if method == Method::POST {
            Body::from(serde_json::to_vec(arguments).unwrap_or_default())
        } else {
            Body::empty()
        };
        let mut call = builder
            .body(body)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        // The caller's address, for what the routes log and limit by.
        if let Some(connect) = http.and_then(|p| {
            p.extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .cloned()
        }) {
            call.extensions_mut().insert(connect);
        }
        Ok(call)
    }

    /// The route's answer as a tool result: 2xx is the tool's output, anything else (the 402
    /// offer, a refused request, a failed settlement) is `isError` with the route's JSON, never
    /// the tool's output.
    async fn result(&self, response: axum::response::Response) -> CallToolResult {
        let status = response.status();
        let receipt = [PAYMENT_RESPONSE, X_PAYMENT_RESPONSE]
            .iter()
            .find_map(|h| response.headers().get(*h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| decode_header::<Value>(v).ok());
        let text = match axum::body::to_bytes(response.into_body(), self.body_limit * 4).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                json!({"success": false, "error": "internal", "message": e.to_string()}).to_string()
            }
        };
        let structured = serde_json::from_str::<Value>(&text).ok();
        let mut result = if status.is_success() {
            CallToolResult::success(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::error(vec![ContentBlock::text(text)])
        };
        result.structured_content = structured;
        if let Some(receipt) = receipt {
            let mut meta = MetaObject::new();
            meta.insert(PAYMENT_RESPONSE_META.to_owned(), receipt);
            result.meta = Some(meta);
        }
        result
    }
}
