//! Dial, the embedded merchant: paid SMS and phone-number endpoints behind the x402 paywall. It
//! reaches the facilitator only through [`link::FacilitatorLink`] (in-process or over HTTP), so it is
//! also a plain x402 resource server.

mod api;
pub mod catalogue;
mod discovery;
pub mod inbound;
mod jobs;
pub mod link;
pub mod mcp;
pub mod paywall;
pub mod providers;
mod refunds;
pub mod siwe;
pub mod sms;
pub mod store;
pub mod webhooks;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::cors::{Any, CorsLayer};

use crate::chain::Chains;
use crate::config::{Config, DialConfig, DialProvider};
use crate::facilitator::Facilitator;
use crate::limits::{RateLimitBackend, Verdict};
use link::{FacilitatorLink, InProcess, OverHttp};
use paywall::{OfferAsset, Paywall, PaywallState, PublicUrl, dial_error};
use providers::{EsimProvider, NumberProvider, Sandbox, SmsProvider, Twilio, VerificationProvider};
use store::Store;

/// Why Dial could not start.
#[derive(Debug, thiserror::Error)]
pub enum DialStartError {
    #[error("dial store: {0}")]
    Store(#[from] store::StoreError),
    #[error("dial facilitator: {0}")]
    Link(#[from] link::LinkError),
    #[error("dial provider: {0}")]
    Provider(#[from] providers::ProviderError),
    #[error("dial chains: {0}")]
    Chains(#[from] crate::chain::RpcError),
    #[error("dial needs a facilitator: set dial.facilitator_url or run it inside x402d serve")]
    NoFacilitator,
    #[error("dial.public_url: {0}")]
    PublicUrl(String),
    #[error("dial.webhook_allow_private: {0}")]
    WebhookPolicy(String),
    #[error("dial.refund_private_key: {0}")]
    RefundKey(String),
    #[error("dial webhook client: {0}")]
    WebhookClient(#[from] reqwest::Error),
}

/// The running module.
pub struct Dial {
    config: DialConfig,
    paywall: Arc<Paywall>,
    store: Store,
    chains: Chains,
    sms: Arc<dyn SmsProvider>,
    numbers: Arc<dyn NumberProvider>,
    esims: Arc<dyn EsimProvider>,
    verifications: Arc<dyn VerificationProvider>,
    default_sender: String,
    limiter: Arc<dyn RateLimitBackend<IpAddr>>,
    /// Set with the Twilio provider: what its inbound webhooks are signed with.
    twilio_auth_token: Option<String>,
    webhook_policy: webhooks::AddressPolicy,
    webhook_client: reqwest::Client,
    refund_wallet: Option<alloy::signers::local::PrivateKeySigner>,
    counters: jobs::Counters,
    /// Wakes the background work early (a delivery queued, a refund owed).
    jobs_wake: Arc<tokio::sync::Notify>,
    /// Wakes long-polling readers when a text arrives.
    arrivals: tokio::sync::Notify,
}

impl Dial {
    /// Builds Dial from the `[dial]` section and starts its background work; `local` is this
    /// process's facilitator, used unless `dial.facilitator_url` names another; Dial's series
    /// go into `registry`.
    pub async fn start(
        config: &Config,
        dial: &DialConfig,
        local: Option<Arc<Facilitator>>,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Arc<Dial>, DialStartError> {
        let link: Arc<dyn FacilitatorLink> = match (&dial.facilitator_url, local) {
            (Some(url), _) => Arc::new(OverHttp::new(
                url,
                dial.facilitator_api_key.as_ref().map(|k| k.0.clone()),
            )?),
            (None, Some(f)) => Arc::new(InProcess(f)),
            (None, None) => return Err(DialStartError::NoFacilitator),
        };
        let public_url = PublicUrl::parse(dial.public_url.as_deref().ok_or_else(|| {
            DialStartError::PublicUrl("is required (the public base URL of Dial)".into())
        })?)
        .map_err(DialStartError::PublicUrl)?;
        let chains = Chains::from_config(config)?;
        // The facilitator's upto wallets, per network: Dial offers upto where it has one.
        let upto: Vec<(String, alloy::primitives::Address)> = match link.supported().await {
            Ok(s) => s
                .kinds
                .iter()
                .filter(|k| k.scheme == "upto")
                .filter_map(|k| {
                    let wallet = k.extra.as_ref()?.get("facilitatorAddress")?.as_str()?;
                    Some((k.network.clone(), wallet.parse().ok()?))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "the facilitator's /supported is unreadable: Dial offers no upto");
                Vec::new()
            }
        };
        let assets = chains
            .networks()
            .iter()
            .flat_map(|n| {
                n.tokens.iter().map(|t| OfferAsset {
                    chain_id: n.chain_id,
                    v1_name: n.v1_name.clone(),
                    asset: t.address,
                    name: t.name.clone(),
                    version: t.version.clone(),
                    decimals: t.decimals,
                    upto_facilitator: upto
                        .iter()
                        .find(|(network, _)| *network == n.chain_id.caip2())
                        .map(|(_, wallet)| *wallet)
                        .filter(|_| t.accepts(crate::protocol::TransferMethod::Permit2)),
                })
            })
            // Dial sells in the built-in USDC only: an operator's other tokens are for the facilitator.
            .filter(|a| {
                crate::chain::builtin_usdc(a.chain_id.0).is_some_and(|(usdc, _, _)| usdc == a.asset)
            })
            .collect();
        let store = Store::connect(&config.ledger.url.0).await?;
        let (sms, numbers, default_sender, twilio_auth_token): (
            Arc<dyn SmsProvider>,
            Arc<dyn NumberProvider>,
            String,
            Option<String>,
        ) = match &dial.provider {
            DialProvider::Sandbox => (
                Arc::new(Sandbox),
                Arc::new(Sandbox),
                "+15550000000".into(),
                None,
            ),
            DialProvider::Twilio(t) => {
                let twilio = Arc::new(Twilio::new(t.clone())?);
                let from = twilio.from_number().to_owned();
                let token = twilio.auth_token().to_owned();
                (twilio.clone(), twilio, from, Some(token))
            }
        };
        let webhook_policy = webhooks::AddressPolicy::parse(&dial.webhook_allow_private)
            .map_err(DialStartError::WebhookPolicy)?;
        let refund_wallet = dial
            .refund_private_key
            .as_ref()
            .map(|k| {
                k.0.trim()
                    .trim_start_matches("0x")
                    .parse::<alloy::signers::local::PrivateKeySigner>()
                    .map_err(|_| {
                        DialStartError::RefundKey("is not a private key (32 bytes of hex)".into())
                    })
            })
            .transpose()?;
        let jobs_wake = Arc::new(tokio::sync::Notify::new());
        let paywall = Arc::new(Paywall {
            link,
            store: store.clone(),
            assets,
            pay_to: dial.pay_to,
            max_timeout_seconds: dial.max_timeout_seconds,
            public_url,
            body_limit: config.server.body_limit_bytes,
            jobs_wake: jobs_wake.clone(),
        });
        let dial = Arc::new(Dial {
            config: dial.clone(),
            paywall,
            store,
            chains,
            sms,
            numbers,
            esims: Arc::new(Sandbox),
            verifications: Arc::new(Sandbox),
            default_sender,
            limiter: crate::limits::Limits::new(
                config.server.redis_url.as_deref(),
                &config.server.redis_namespace,
            )
            .backend("dial-ip", dial.rate_limit_per_minute),
            twilio_auth_token,
            webhook_client: webhooks::client(&webhook_policy)?,
            webhook_policy,
            refund_wallet,
            counters: jobs::Counters::new(registry),
            jobs_wake,
            arrivals: tokio::sync::Notify::new(),
        });
        if let Some(w) = &dial.refund_wallet {
            tracing::info!(wallet = %w.address(), "dial refunds are paid from this wallet");
        }
        // The task holds a weak reference: it ends when Dial is dropped.
        dial.spawn_jobs();
        Ok(dial)
    }

    /// Dial's paid routes (and MCP tools) as Bazaar entries.
    pub fn discovery_items(&self) -> Vec<crate::protocol::discovery::DiscoveryItem> {
        discovery::catalogue(self)
    }

    /// Dial's routes and `/mcp`, with the paywall on the priced ones, the per-IP limit and CORS
    /// on all.
    pub fn router(self: &Arc<Self>) -> Router {
        let routes = self.routes();
        let mcp = mcp::service(self, routes.clone());
        let expose = [
            HeaderName::from_static(paywall::PAYMENT_REQUIRED),
            HeaderName::from_static(paywall::PAYMENT_RESPONSE),
            HeaderName::from_static(paywall::X_PAYMENT_RESPONSE),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static(MCP_SESSION_ID),
            header::RETRY_AFTER,
        ];
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::ACCEPT,
                HeaderName::from_static(paywall::PAYMENT_SIGNATURE),
                HeaderName::from_static(paywall::X_PAYMENT),
                HeaderName::from_static(MCP_SESSION_ID),
                HeaderName::from_static("mcp-protocol-version"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers(expose);
        routes
            .route_service(mcp::PATH, mcp)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                rate_limit,
            ))
            .layer(DefaultBodyLimit::max(self.paywall.body_limit))
            .layer(cors)
    }

    /// The routes themselves, with their paywall: what HTTP clients and MCP tools both reach.
    fn routes(self: &Arc<Self>) -> Router {
        let paywall_state = PaywallState {
            paywall: self.paywall.clone(),
            priced: self.clone(),
        };
        let mut paid = Router::new();
        for route in catalogue::PAID_ROUTES.iter().filter(|r| r.always_paid) {
            paid = paid.route(route.path, post(api::paid));
        }
        let paid = paid.route_layer(axum::middleware::from_fn_with_state(
            paywall_state,
            paywall::layer,
        ));
        let free = Router::new()
            .route(
                "/api/v1/auth/siwe",
                get(api::siwe_nonce).post(api::siwe_login),
            )
            .route("/api/v1/numbers/mine", get(api::my_numbers))
            .route("/api/v1/numbers/mine/send", post(api::my_send))
            .route("/api/v1/numbers/mine/messages", get(inbound::my_messages))
            .route(
                "/api/v1/numbers/mine/webhook",
                axum::routing::put(webhooks::set_webhook),
            )
            .route(
                "/api/v1/numbers/mine/webhook-deliveries",
                get(webhooks::my_deliveries),
            )
            .route("/api/v1/verifications/{id}", get(inbound::get_verification))
            .route(inbound::TWILIO_PATH, post(inbound::twilio_inbound))
            .route("/api/v1/esim/packages", get(api::esim_packages))
            .route("/api/v1/discovery", get(discovery::dial_discovery))
            .route("/.well-known/x402", get(discovery::well_known))
            .route("/openapi.json", get(discovery::openapi))
            .route("/api/health", get(api::health));
        // The sandbox's carrier: texts arrive where a newcomer can send them.
        let free = match self.config.provider {
            DialProvider::Sandbox => {
                free.route(inbound::SANDBOX_PATH, post(inbound::sandbox_inbound))
            }
            DialProvider::Twilio(_) => free,
        };
        paid.merge(free).with_state(self.clone())
    }
}

/// The Streamable HTTP session header (browsers must be allowed to send and read it).
const MCP_SESSION_ID: &str = "mcp-session-id";

/// The per-IP limit ([`crate::limits`]): 429 with `Retry-After` past it, `X-RateLimit-Remaining`
/// (what the client may still send at once) on every answer.
async fn rate_limit(State(dial): State<Arc<Dial>>, request: Request, next: Next) -> Response {
    // Twilio's webhook is signed and comes from Twilio's few addresses at the rate texts arrive:
    // a per-IP limit would drop texts (Twilio does not retry a refused message webhook).
    if request.uri().path() == inbound::TWILIO_PATH {
        return next.run(request).await;
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let verdict = dial.limiter.check(ip).await;
    match verdict {
        Verdict::Allowed { .. } => {
            let mut response = next.run(request).await;
            crate::limits::annotate(response.headers_mut(), verdict);
            response
        }
        Verdict::Limited { retry_after_secs } => {
            let mut response = dial_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &format!(
                    "more than {} requests in a minute; retry in {retry_after_secs} s",
                    dial.config.rate_limit_per_minute
                ),
            );
            crate::limits::annotate(response.headers_mut(), verdict);
            response
        }
    }
}
