//! The paying side: sign an EIP-3009 authorization or a Permit2 witness transfer (`exact` with
//! Permit2, `upto`) for a requirement and wrap it in a v1 or v2 payload. Used by `x402d pay`, the
//! tests and the benchmarks.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use serde_json::{Value, json};

use crate::exact::authorization_digest;
use crate::exact::permit2::Scheme;
use crate::protocol::wire::{
    Eip3009Authorization, ExactEvmPayload, Permit2Authorization, Permit2Payload, Permit2Permitted,
    Permit2Witness, RequirementsV1, RequirementsV2,
};
use crate::protocol::{AtomicAmount, ChainId};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("requirement has no EIP-712 domain in extra (name, version)")]
    MissingDomain,
    #[error("network {0:?} is not an EVM CAIP-2 id")]
    Network(String),
    #[error("signing failed: {0}")]
    Signer(String),
    #[error("an upto requirement must name extra.facilitatorAddress")]
    MissingFacilitator,
}

/// What to sign: the time window and nonce are the client's choice.
#[derive(Debug, Clone)]
pub struct AuthorizationTerms {
    pub to: Address,
    pub value: AtomicAmount,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
}

impl AuthorizationTerms {
    /// The usual terms for a requirement: `validAfter = now - 600`, `validBefore = now + timeout`,
    /// a random nonce.
    pub fn for_requirement(
        pay_to: Address,
        amount: AtomicAmount,
        max_timeout_seconds: u64,
        now: u64,
    ) -> Self {
        AuthorizationTerms {
            to: pay_to,
            value: amount,
            valid_after: now.saturating_sub(600),
            valid_before: now + max_timeout_seconds,
            nonce: B256::random(),
        }
    }
}

/// Signs `terms` as `signer` for the token `asset` with EIP-712 domain (name, version) on `chain`.
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    chain: ChainId,
    asset: Address,
    name: &str,
    version: &str,
    terms: &AuthorizationTerms,
) -> Result<ExactEvmPayload, SignError> {
    let authorization = Eip3009Authorization {
        from: signer.address(),
        to: terms.to,
        value: terms.value,
        valid_after: U256::from(terms.valid_after),
        valid_before: U256::from(terms.valid_before),
        nonce: terms.nonce,
    };
    let digest = authorization_digest(
        domain_separator(chain, asset, name, version),
        &authorization,
    );
    let signature = signer
        .sign_hash_sync(&digest)
        .map_err(|e| SignError::Signer(e.to_string()))?;
    Ok(ExactEvmPayload {
        signature: Bytes::from(signature.as_bytes().to_vec()),
        authorization,
    })
}

/// The EIP-712 domain separator of a token.
pub fn domain_separator(chain: ChainId, asset: Address, name: &str, version: &str) -> B256 {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain.0)),
        Some(asset),
        None,
    )
    .separator()
}

/// Signs a Permit2 witness transfer of `authorization` (its `from` is the signer's address) for
/// `scheme`'s proxy, under Permit2's domain at `permit2` on `chain`.
pub fn sign_permit2(
    signer: &PrivateKeySigner,
    chain: ChainId,
    permit2: Address,
    scheme: Scheme,
    mut authorization: Permit2Authorization,
) -> Result<Permit2Payload, SignError> {
    authorization.from = signer.address();
    let digest = crate::exact::permit2::digest(chain.0, permit2, &authorization, scheme);
    let signature = signer
        .sign_hash_sync(&digest)
        .map_err(|e| SignError::Signer(e.to_string()))?;
    Ok(Permit2Payload {
        signature: Bytes::from(signature.as_bytes().to_vec()),
        permit2_authorization: authorization,
    })
}

/// Signs a Permit2 payment for a v2 requirement (`exact` with `assetTransferMethod: "permit2"`,
/// or `upto`: then `req.amount` is the maximum and `extra.facilitatorAddress` the wallet bound),
/// with the canonical Permit2 and proxies, a random nonce and `deadline = now + timeout`.
pub fn sign_permit2_for_v2(
    signer: &PrivateKeySigner,
    req: &RequirementsV2,
    now: u64,
) -> Result<Permit2Payload, SignError> {
    use crate::chain::bindings::{EXACT_PERMIT2_PROXY, PERMIT2, UPTO_PERMIT2_PROXY};
    let chain =
        ChainId::from_caip2(&req.network).ok_or_else(|| SignError::Network(req.network.clone()))?;
    let (scheme, spender, facilitator) = if req.scheme == "upto" {
        let facilitator = req
            .extra
            .as_ref()
            .and_then(|e| e.facilitator_address)
            .ok_or(SignError::MissingFacilitator)?;
        (Scheme::Upto, UPTO_PERMIT2_PROXY, Some(facilitator))
    } else {
        (Scheme::Exact, EXACT_PERMIT2_PROXY, None)
    };
    let authorization = Permit2Authorization {
        from: signer.address(),
        permitted: Permit2Permitted {
            token: req.asset,
            amount: req.amount,
        },
        spender,
        nonce: U256::from_be_bytes(B256::random().0),
        deadline: U256::from(now + req.max_timeout_seconds),
        witness: Permit2Witness {
            to: req.pay_to,
            facilitator,
            valid_after: U256::from(now.saturating_sub(600)),
        },
    };
    sign_permit2(signer, chain, PERMIT2, scheme, authorization)
}

/// Whether a v2 offer is paid with a Permit2 signature.
pub fn is_permit2_offer(req: &RequirementsV2) -> bool {
    req.scheme == "upto"
        || req
            .extra
            .as_ref()
            .and_then(|e| e.asset_transfer_method.as_deref())
            == Some("permit2")
}

/// Signs a payment for a v2 requirement.
pub fn sign_for_v2(
    signer: &PrivateKeySigner,
    req: &RequirementsV2,
    now: u64,
) -> Result<ExactEvmPayload, SignError> {
    let chain =
        ChainId::from_caip2(&req.network).ok_or_else(|| SignError::Network(req.network.clone()))?;
    let extra = req.extra.as_ref().ok_or(SignError::MissingDomain)?;
    let (Some(name), Some(version)) = (&extra.name, &extra.version) else {
        return Err(SignError::MissingDomain);
    };
    let terms =
        AuthorizationTerms::for_requirement(req.pay_to, req.amount, req.max_timeout_seconds, now);
    sign_authorization(signer, chain, req.asset, name, version, &terms)
}

/// A v2 payment payload (the JSON that `PAYMENT-SIGNATURE` carries in base64).
pub fn payload_v2(accepted: &RequirementsV2, payload: &impl serde::Serialize) -> Value {
    json!({"x402Version": 2, "accepted": accepted, "payload": payload})
}

/// A v1 payment payload (the JSON that `X-PAYMENT` carries in base64).
pub fn payload_v1(req: &RequirementsV1, payload: &ExactEvmPayload) -> Value {
    json!({"x402Version": 1, "scheme": req.scheme, "network": req.network, "payload": payload})
}

/// A facilitator `/verify` or `/settle` body.
pub fn facilitator_body(version: u8, payment_payload: Value, requirements: Value) -> Value {
    json!({"x402Version": version, "paymentPayload": payment_payload, "paymentRequirements": requirements})
}

/// What `x402d pay` (and the tests and bench) asks for.
#[derive(Debug, Clone)]
pub struct PayRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub body: Option<String>,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Only offers on this network (CAIP-2 or v1 name).
    pub network: Option<String>,
    /// Only offers in this token.
    pub asset: Option<Address>,
    /// The most the client will pay, in dollars.
    pub max_amount: String,
    /// Pay with x402 v1 (`X-PAYMENT`) even when the server offers v2.
    pub force_v1: bool,
    /// Only offers of this scheme (`exact`, `upto`); `None`: the first `exact` or `upto` offer.
    pub scheme: Option<String>,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct PayOutcome {
    pub status: u16,
    pub body: String,
    /// The offer paid, if a payment was made.
    pub paid: Option<RequirementsV2>,
    /// The decoded `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`.
    pub receipt: Option<crate::protocol::wire::SettleResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the 402 answer is unreadable: {0}")]
    BadPaymentRequired(String),
    #[error("no offer matches (offered: {0})")]
    NoOffer(String),
    #[error("the price {price} is above --max-amount {max}; not paying")]
    TooExpensive { price: String, max: String },
    #[error("--max-amount: {0}")]
    MaxAmount(String),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Decimals of a token: the built-in USDC has 6, as do the EIP-3009 tokens x402 is used with.
fn decimals_of(_req: &RequirementsV2) -> u8 {
    6
}

/// Requests `url`; on a 402, picks an offer it may pay, signs an EIP-3009 authorization for it,
/// retries with the payment header, and returns the answer with the decoded settlement receipt.
pub async fn pay(
    http: &reqwest::Client,
    signer: &PrivateKeySigner,
    req: &PayRequest,
) -> Result<PayOutcome, PayError> {
    use crate::protocol::decode_header;
    use crate::protocol::wire::PaymentRequiredV2;

    let send = |payment: Option<(&'static str, String)>| {
        let mut r = http.request(req.method.clone(), &req.url);
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        if let Some(body) = &req.body {
            r = r
                .header("content-type", "application/json")
                .body(body.clone());
        }
        if let Some((name, value)) = payment {
            r = r.header(name, value);
        }
        r.send()
    };
    let first = send(None).await?;
    if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
        let status = first.status().as_u16();
        return Ok(PayOutcome {
            status,
            body: first.text().await?,
            paid: None,
            receipt: None,
        });
    }
    let header = first
        .headers()
        .get("payment-required")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = first.text().await?;
    let (offers, resource, v1_only): (Vec<RequirementsV2>, Option<Value>, bool) = match header {
        Some(h) => {
            let pr: PaymentRequiredV2 =
                decode_header(&h).map_err(|e| PayError::BadPaymentRequired(e.to_string()))?;
            let resource = serde_json::to_value(&pr.resource).ok();
            (pr.accepts, resource, false)
        }
        None => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| PayError::BadPaymentRequired(e.to_string()))?;
            if v["x402Version"] == 1 {
                let accepts: Vec<RequirementsV1> = serde_json::from_value(v["accepts"].clone())
                    .map_err(|e| PayError::BadPaymentRequired(e.to_string()))?;
                let as_v2 = accepts.iter().filter_map(v1_as_v2).collect();
                (as_v2, None, true)
            } else {
                let pr: PaymentRequiredV2 = serde_json::from_value(v)
                    .map_err(|e| PayError::BadPaymentRequired(e.to_string()))?;
                let resource = serde_json::to_value(&pr.resource).ok();
                (pr.accepts, resource, false)
            }
        }
    };
    let signed = choose_and_sign(signer, req, offers, resource, v1_only)?;
    let paid = send(Some((
        signed.header,
        crate::protocol::encode_header(&signed.payload),
    )))
    .await?;
    finish(paid, signed.offer).await
}

/// A payment made for one of the offered requirements: the offer, the header it goes in, and the
/// PaymentPayload (the header carries it base64-encoded, MCP's `_meta` as the object).
pub struct Signed {
    pub offer: RequirementsV2,
    pub header: &'static str,
    pub payload: Value,
}

/// Picks the first offer `req` allows and signs it (EIP-3009 or Permit2) under `--max-amount`.
///
/// # Errors
/// No offer matches, the price is above the maximum, or signing failed.
pub fn choose_and_sign(
    signer: &PrivateKeySigner,
    req: &PayRequest,
    offers: Vec<RequirementsV2>,
    resource: Option<Value>,
    v1_only: bool,
) -> Result<Signed, PayError> {
    use crate::protocol::primitives::{atomic_to_dollars, dollars_to_atomic};

    let offered: Vec<String> = offers
        .iter()
        .map(|o| format!("{} {} {}", o.network, o.asset, o.amount))
        .collect();
    let matches_network = |o: &RequirementsV2| match &req.network {
        None => true,
        Some(n) => &o.network == n || v1_name(&o.network).as_deref() == Some(n.as_str()),
    };
    let offer = offers
        .into_iter()
        .find(|o| {
            (o.scheme == "exact" || (o.scheme == "upto" && !req.force_v1))
                && req.scheme.as_ref().is_none_or(|s| *s == o.scheme)
                && matches_network(o)
                && req.asset.is_none_or(|a| a == o.asset)
                && (!req.force_v1 || v1_name(&o.network).is_some())
        })
        .ok_or_else(|| PayError::NoOffer(offered.join("; ")))?;
    let decimals = decimals_of(&offer);
    let max = dollars_to_atomic(&req.max_amount, decimals).map_err(PayError::MaxAmount)?;
    if offer.amount > max {
        return Err(PayError::TooExpensive {
            price: format!("${}", atomic_to_dollars(offer.amount, decimals)),
            max: format!("${}", req.max_amount),
        });
    }
    let now = crate::clock::unix_now();
    if is_permit2_offer(&offer) {
        // Permit2 is v2 only. For upto the price is a maximum: the server charges at most it.
        let signed = sign_permit2_for_v2(signer, &offer, now)?;
        let mut p = payload_v2(&offer, &signed);
        if let Some(r) = resource {
            p["resource"] = r;
        }
        return Ok(Signed {
            offer,
            header: "payment-signature",
            payload: p,
        });
    }
    let signed = sign_for_v2(signer, &offer, now)?;
    let (name, payload) = if req.force_v1 || v1_only {
        let v1 = RequirementsV1 {
            scheme: offer.scheme.clone(),
            network: v1_name(&offer.network).unwrap_or_else(|| offer.network.clone()),
            max_amount_required: offer.amount,
            resource: req.url.clone(),
            description: String::new(),
            mime_type: "application/json".into(),
            output_schema: None,
            pay_to: offer.pay_to,
            max_timeout_seconds: offer.max_timeout_seconds,
            asset: offer.asset,
            extra: offer.extra.clone(),
        };
        ("x-payment", payload_v1(&v1, &signed))
    } else {
        let mut p = payload_v2(&offer, &signed);
        if let Some(r) = resource {
            p["resource"] = r;
        }
        ("payment-signature", p)
    };
    Ok(Signed {
        offer,
        header: name,
        payload,
    })
}

/// The paid answer with its decoded settlement receipt.
async fn finish(paid: reqwest::Response, offer: RequirementsV2) -> Result<PayOutcome, PayError> {
    use crate::protocol::decode_header;
    let status = paid.status().as_u16();
    let receipt = ["payment-response", "x-payment-response"]
        .iter()
        .find_map(|h| paid.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| decode_header(v).ok());
    Ok(PayOutcome {
        status,
        body: paid.text().await?,
        paid: Some(offer),
        receipt,
    })
}

/// The v1 name of a CAIP-2 network we know.
fn v1_name(caip2: &str) -> Option<String> {
    let id = ChainId::from_caip2(caip2)?;
    crate::chain::builtin_v1_name(id.0).map(str::to_owned)
}

fn v1_as_v2(r: &RequirementsV1) -> Option<RequirementsV2> {
    let chain = crate::chain::builtin_chain_of_v1_name(&r.network)?;
    Some(RequirementsV2 {
        scheme: r.scheme.clone(),
        network: ChainId(chain).caip2(),
        amount: r.max_amount_required,
        asset: r.asset,
        pay_to: r.pay_to,
        max_timeout_seconds: r.max_timeout_seconds,
        extra: r.extra.clone(),
    })
}

/// What an MCP tool call answered, after paying when it asked to be paid.
#[derive(Debug, Clone)]
pub struct McpOutcome {
    /// The last `CallToolResult`, as JSON (`content`, `structuredContent`, `isError`, `_meta`).
    pub result: Value,
    /// The offer paid, if a payment was made.
    pub paid: Option<RequirementsV2>,
    /// `_meta["x402/payment-response"]`: the settlement receipt.
    pub receipt: Option<crate::protocol::wire::SettleResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum McpPayError {
    #[error("MCP: {0}")]
    Mcp(String),
    #[error(transparent)]
    Pay(#[from] PayError),
}

/// Calls `tool` on the MCP server at `url` (Streamable HTTP) with `arguments`; when the result is
/// the x402 PaymentRequired (`isError` with it in `structuredContent` or `content[0].text`), pays
/// one of its offers under `req.max_amount` and calls again with the PaymentPayload in
/// `_meta["x402/payment"]`: the terminal twin of [`pay`] over the x402 MCP transport.
///
/// # Errors
/// The server is unreachable or not MCP, or the offer cannot be paid.
pub async fn pay_mcp(
    signer: &PrivateKeySigner,
    url: &str,
    tool: &str,
    arguments: serde_json::Map<String, Value>,
    req: &PayRequest,
) -> Result<McpOutcome, McpPayError> {
    use rmcp::ServiceExt;
    use rmcp::model::{CallToolRequestParams, MetaObject, RequestMetaObject};

    let mcp = |e: &dyn std::fmt::Display| McpPayError::Mcp(e.to_string());
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url);
    let client = ().serve(transport).await.map_err(|e| mcp(&e))?;
    let call = |payment: Option<Value>| {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments.clone());
        if let Some(payment) = payment {
            let mut meta = MetaObject::new();
            meta.insert(crate::protocol::mcp::PAYMENT.to_owned(), payment);
            params.meta = Some(RequestMetaObject(meta));
        }
        client.call_tool(params)
    };
    let first = call(None).await.map_err(|e| mcp(&e))?;
    let outcome = match payment_required_of(&first) {
        None => McpOutcome {
            result: serde_json::to_value(&first).unwrap_or_default(),
            paid: None,
            receipt: None,
        },
        Some(required) => {
            let resource = serde_json::to_value(&required.resource).ok();
            let signed = choose_and_sign(signer, req, required.accepts, resource, false)?;
            let paid = call(Some(signed.payload)).await.map_err(|e| mcp(&e))?;
            let receipt = paid
                .meta
                .as_ref()
                .and_then(|m| m.get(crate::protocol::mcp::PAYMENT_RESPONSE))
                .and_then(|r| serde_json::from_value(r.clone()).ok());
            McpOutcome {
                result: serde_json::to_value(&paid).unwrap_or_default(),
                paid: Some(signed.offer),
                receipt,
            }
        }
    };
    let _ = client.cancel().await;
    Ok(outcome)
}

/// The x402 PaymentRequired an MCP tool answered with, if it did (structured, else the text).
fn payment_required_of(
    result: &rmcp::model::CallToolResult,
) -> Option<crate::protocol::wire::PaymentRequiredV2> {
    if result.is_error != Some(true) {
        return None;
    }
    let structured = result.structured_content.clone();
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .and_then(|t| serde_json::from_str::<Value>(&t.text).ok());
    structured
        .into_iter()
        .chain(text)
        .filter(|v| v.get("accepts").is_some())
        .find_map(|v| serde_json::from_value(v).ok())
}
