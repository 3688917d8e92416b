//! Dial's handlers: what each paid route delivers, the SIWE login and the caller's numbers.

use std::sync::Arc;

use alloy::primitives::{Address, Bytes as EvmBytes, keccak256};
use alloy::sol_types::SolCall;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Query, Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Dial;
use super::catalogue::{ESIM_PACKAGES, Product, paid_route};
use super::paywall::{DialError, Metered, Paid, Price, Priced, ProviderRef};
use super::providers::NUMBER_COUNTRIES;
use super::siwe::{STATEMENT, SiweMessage, eip191_digest, format_rfc3339};
use super::sms::{PhoneNumber, check_body};
use super::store::{NewMessage, NewVerification, NumberStatus, StoreError};
use crate::chain::RpcCall;
use crate::chain::bindings::IErc1271;
use crate::exact::signature::{SignatureClass, classify, recover};

/// How long a SIWE nonce may wait for its signature.
const SIWE_TTL_SECS: i64 = 600;
/// How long a bearer token lives.
const SESSION_TTL_SECS: i64 = 24 * 3600;

/// A validated request, parsed once before payment and handed to the handler.
#[derive(Debug, Clone)]
pub enum Order {
    Send {
        from: Option<String>,
        to: String,
        body: String,
        segments: usize,
        owner: Option<String>,
    },
    BuyNumber {
        country: String,
    },
    Renew {
        phone_number: String,
    },
    Esim {
        package_id: String,
    },
    Verification {
        service: String,
    },
}

fn now_secs() -> i64 {
    crate::clock::now_ms() / 1000
}

pub(super) fn bad_request(message: impl AsRef<str>) -> DialError {
    DialError::new(StatusCode::BAD_REQUEST, "invalid_request", message.as_ref())
}

pub(super) fn internal(e: StoreError) -> DialError {
    tracing::error!(error = %e, "dial store failed");
    DialError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the dial store is unavailable",
    )
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DialError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesSendBody {
    #[serde(default)]
    from: Option<String>,
    to: String,
    body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsSendBody {
    to: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountryBody {
    #[serde(default)]
    country: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RenewBody {
    phone_number: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EsimBody {
    package_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerificationBody {
    service: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MineSendBody {
    from: String,
    to: String,
    body: String,
}

fn send_order(
    from: Option<&str>,
    to: &str,
    body: &str,
    owner: Option<String>,
) -> Result<Order, DialError> {
    let from = from
        .map(|f| PhoneNumber::parse(f).map(|p| p.as_str().to_owned()))
        .transpose()
        .map_err(|e| bad_request(format!("from: {e}")))?;
    let to = PhoneNumber::parse(to).map_err(|e| bad_request(format!("to: {e}")))?;
    let count = check_body(body).map_err(bad_request)?;
    Ok(Order::Send {
        from,
        to: to.as_str().to_owned(),
        body: body.to_owned(),
        segments: count.segments,
        owner,
    })
}

fn country_order(country: Option<String>, product: Product) -> Result<Order, DialError> {
    let country = match (product, country) {
        (Product::NumbersBuyUs, None) => "US".to_owned(),
        (Product::NumbersBuyUs, Some(c)) if c == "US" => c,
        (Product::NumbersBuyUs, Some(c)) => {
            return Err(bad_request(format!(
                "{c:?}: this route sells US numbers only"
            )));
        }
        (_, None) => return Err(bad_request("country is required (ISO 3166-1 alpha-2)")),
        (_, Some(c)) => c,
    };
    if product == Product::NumbersBuyIntl && country == "US" {
        return Err(bad_request("use /api/v1/numbers/buy/us for US numbers"));
    }
    if !NUMBER_COUNTRIES.iter().any(|(c, _)| *c == country) {
        let known: Vec<&str> = NUMBER_COUNTRIES.iter().map(|(c, _)| *c).collect();
        return Err(bad_request(format!(
            "no numbers in {country:?}; available: {}",
            known.join(", ")
        )));
    }
    Ok(Order::BuyNumber { country })
}

impl Dial {
    /// Parses and checks a paid route's body; nothing is charged when this fails. Without a
    /// payer (before the offer) ownership is not checked yet, only that the thing exists.
    async fn order(
        &self,
        product: Product,
        body: &[u8],
        payer: Option<Address>,
    ) -> Result<Order, DialError> {
        match product {
            Product::MessagesSend => {
                let b: MessagesSendBody = parse_json(body)?;
                send_order(b.from.as_deref(), &b.to, &b.body, None)
            }
            Product::SmsSend => {
                let b: SmsSendBody = parse_json(body)?;
                send_order(None, &b.to, &b.message, None)
            }
            Product::NumbersBuy | Product::NumbersBuyUs | Product::NumbersBuyIntl => {
                let b: CountryBody = parse_json(body)?;
                country_order(b.country, product)
            }
            Product::NumbersRenew => {
                let b: RenewBody = parse_json(body)?;
                let owner = payer.map(owner_text);
                match self.store.number(&b.phone_number).await.map_err(internal)? {
                    None => Err(DialError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such number",
                    )),
                    Some((o, _)) if owner.as_ref().is_some_and(|owner| *owner != o) => {
                        Err(DialError::new(
                            StatusCode::FORBIDDEN,
                            "not_owner",
                            "only the number's owner can renew it",
                        ))
                    }
                    Some((_, n))
                        if n.status == NumberStatus::Released
                            || n.status == NumberStatus::Releasing =>
                    {
                        Err(DialError::new(
                            StatusCode::GONE,
                            "number_released",
                            "this number was released after its grace period; buy a new one",
                        ))
                    }
                    Some(_) => Ok(Order::Renew {
                        phone_number: b.phone_number,
                    }),
                }
            }
            Product::EsimCheckout => {
                let b: EsimBody = parse_json(body)?;
                if ESIM_PACKAGES.iter().any(|p| p.id == b.package_id) {
                    Ok(Order::Esim {
                        package_id: b.package_id,
                    })
                } else {
                    Err(bad_request(format!(
                        "unknown packageId {:?} (see GET /api/v1/esim/packages)",
                        b.package_id
                    )))
                }
            }
            Product::VerificationsStart => {
                let b: VerificationBody = parse_json(body)?;
                let ok = (1..=64).contains(&b.service.len())
                    && b.service
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_. ".contains(&c));
                if ok {
                    Ok(Order::Verification { service: b.service })
                } else {
                    Err(bad_request(
                        "service must be 1-64 letters, digits, '-', '_', '.' or spaces",
                    ))
                }
            }
            Product::NumbersMineSend => Err(bad_request("this route is priced by its handler")),
        }
    }

    /// Delivers an order; the answer body and the provider's id for the receipt.
    async fn execute(
        &self,
        order: Order,
        receipt_id: Option<i64>,
        owner: &str,
    ) -> Result<(Value, Option<String>), DialError> {
        let provider_failed = |e: super::providers::ProviderError| {
            DialError::new(StatusCode::BAD_GATEWAY, "provider_failed", e.to_string())
        };
        match order {
            Order::Send {
                from,
                to,
                body,
                segments,
                owner: sender_owner,
            } => {
                let from = from.unwrap_or_else(|| self.default_sender.clone());
                let sent = self
                    .sms
                    .send(&from, &to, &body)
                    .await
                    .map_err(provider_failed)?;
                self.store
                    .record_message(&NewMessage {
                        message_id: &sent.message_id,
                        provider: self.sms.name(),
                        sender: Some(&from),
                        recipient: &to,
                        body: &body,
                        segments,
                        status: &sent.status,
                        owner: sender_owner.as_deref(),
                        receipt_id,
                    })
                    .await
                    .map_err(internal)?;
                Ok((
                    json!({"success": true, "messageId": sent.message_id, "to": to, "segments": segments, "status": sent.status}),
                    Some(sent.message_id),
                ))
            }
            Order::BuyNumber { country } => {
                for _ in 0..3 {
                    let bought = self.numbers.buy(&country).await.map_err(provider_failed)?;
                    if let Some(expires_at) = self
                        .store
                        .add_number(
                            &bought.phone_number,
                            &country,
                            owner,
                            self.numbers.name(),
                            &bought.provider_id,
                            self.config.number_text_quota,
                            receipt_id,
                        )
                        .await
                        .map_err(internal)?
                    {
                        return Ok((
                            json!({"success": true, "phoneNumber": bought.phone_number, "country": country,
                                   "expiresAt": format_rfc3339(expires_at / 1000), "textQuota": self.config.number_text_quota}),
                            Some(bought.provider_id),
                        ));
                    }
                }
                Err(DialError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_failed",
                    "no free number could be allocated",
                ))
            }
            Order::Renew { phone_number } => {
                let expires_at = self
                    .store
                    .renew_number(&phone_number)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        DialError::new(StatusCode::NOT_FOUND, "not_found", "no such number")
                    })?;
                Ok((
                    json!({"success": true, "phoneNumber": phone_number, "expiresAt": format_rfc3339(expires_at / 1000)}),
                    None,
                ))
            }
            Order::Esim { package_id } => {
                let esim = self
                    .esims
                    .issue(&package_id)
                    .await
                    .map_err(provider_failed)?;
                self.store
                    .record_esim(&package_id, &esim.iccid, &esim.activation_code, receipt_id)
                    .await
                    .map_err(internal)?;
                Ok((
                    json!({"success": true, "packageId": package_id, "iccid": esim.iccid,
                           "activationCode": esim.activation_code, "qrPayload": esim.activation_code}),
                    Some(esim.iccid),
                ))
            }
            Order::Verification { service } => {
                let v = self
                    .verifications
                    .start(&service)
                    .await
                    .map_err(provider_failed)?;
                // The payer reads the code with this token (or a SIWE session of the paying
                // wallet); only its hash is kept.
                let mut raw = [0u8; 24];
                rand::rng().fill(&mut raw);
                let read_token = format!("vrt_{}", alloy::hex::encode(raw));
                let window = i64::try_from(self.config.verification_window_seconds)
                    .unwrap_or(i64::MAX / 2000);
                let expires_at = crate::clock::now_ms().saturating_add(window.saturating_mul(1000));
                self.store
                    .record_verification(&NewVerification {
                        verification_id: &v.verification_id,
                        service: &service,
                        phone_number: &v.phone_number,
                        receipt_id,
                        owner,
                        read_token_hash: &token_hash(&read_token),
                        expires_at,
                    })
                    .await
                    .map_err(internal)?;
                Ok((
                    json!({"success": true, "verificationId": v.verification_id, "phoneNumber": v.phone_number,
                           "service": service, "expiresAt": format_rfc3339(expires_at / 1000),
                           "readToken": read_token,
                           "codeUrl": self.paywall.public_url.base().to_owned() + "/api/v1/verifications/" + &v.verification_id}),
                    Some(v.verification_id),
                ))
            }
        }
    }

    /// The address a bearer token belongs to.
    pub(super) async fn session(&self, headers: &HeaderMap) -> Result<String, DialError> {
        let unauthorized = |m: &str| DialError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let token = bearer(headers).ok_or_else(|| {
            unauthorized("a bearer token from POST /api/v1/auth/siwe is required")
        })?;
        self.store
            .session_address(&token_hash(token))
            .await
            .map_err(internal)?
            .ok_or_else(|| unauthorized("the bearer token is unknown or expired"))
    }

    /// `Ok` when `signature` is `address`'s over `digest`: a plain key, or ERC-1271 for a contract.
    async fn signature_is_valid(
        &self,
        chain_id: u64,
        address: Address,
        digest: alloy::primitives::B256,
        signature: &EvmBytes,
    ) -> bool {
        if let Ok(SignatureClass::Ecdsa(sig)) = classify(signature)
            && recover(&sig, digest) == Some(address)
        {
            return true;
        }
        let Some(network) = self
            .chains
            .networks()
            .iter()
            .find(|n| n.chain_id.0 == chain_id)
        else {
            return false;
        };
        let call = IErc1271::isValidSignatureCall {
            hash: digest,
            signature: signature.clone(),
        };
        let calls = [
            RpcCall::get_code(address),
            RpcCall::call(address, call.abi_encode()),
        ];
        match network.rpc.batch(&calls).await {
            Ok(results) => {
                let has_code = matches!(results.first(), Some(Ok(Value::String(c))) if c.len() > 2);
                let magic = matches!(results.get(1), Some(Ok(Value::String(r))) if r.starts_with("0x1626ba7e"));
                has_code && magic
            }
            Err(e) => {
                tracing::warn!(error = %e, "ERC-1271 check failed to reach the chain");
                false
            }
        }
    }
}

fn owner_text(a: Address) -> String {
    a.to_string().to_lowercase()
}

/// The token of an `Authorization: Bearer …` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

pub(super) fn token_hash(token: &str) -> String {
    alloy::hex::encode(keccak256(token.as_bytes()))
}

impl Priced for Dial {
    fn price_of(&self, path: &str) -> Option<Price> {
        let route = paid_route(path).filter(|r| r.always_paid)?;
        Some(route.offer_price(&self.config.prices))
    }

    fn prepare<'a>(
        &'a self,
        path: &'a str,
        body: &'a [u8],
        payer: Option<Address>,
    ) -> BoxFuture<'a, Result<Extensions, Response>> {
        Box::pin(async move {
            let route = paid_route(path).ok_or_else(|| {
                DialError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
            })?;
            let order = self
                .order(route.product, body, payer)
                .await
                .map_err(IntoResponse::into_response)?;
            let mut extensions = Extensions::new();
            if let Order::Send { segments, .. } = &order {
                // What an upto payment is charged: the segments this message takes.
                extensions.insert(Metered(u32::try_from(*segments).unwrap_or(u32::MAX)));
            }
            extensions.insert(order);
            Ok(extensions)
        })
    }
}

fn answer(result: Result<(Value, Option<String>), DialError>) -> Response {
    match result {
        Ok((body, provider_id)) => {
            let mut response = Json(body).into_response();
            if let Some(id) = provider_id {
                response.extensions_mut().insert(ProviderRef(id));
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Every always-paid route: the paywall has validated the order and settled the payment.
pub async fn paid(
    State(dial): State<Arc<Dial>>,
    Extension(order): Extension<Order>,
    Extension(paid): Extension<Paid>,
) -> Response {
    answer(
        dial.execute(order, Some(paid.receipt_id), &owner_text(paid.payer))
            .await,
    )
}

/// `POST /api/v1/numbers/mine/send`: free within the number's monthly quota, then paid per text.
pub async fn my_send(
    State(dial): State<Arc<Dial>>,
    request: Request,
) -> Result<Response, DialError> {
    let (parts, body) = request.into_parts();
    let owner = dial.session(&parts.headers).await?;
    let body = axum::body::to_bytes(body, dial.paywall.body_limit)
        .await
        .map_err(|_| {
            DialError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            )
        })?;
    let b: MineSendBody = parse_json(&body)?;
    let order = send_order(Some(&b.from), &b.to, &b.body, Some(owner.clone()))?;
    match dial.store.number(&b.from).await.map_err(internal)? {
        Some((o, _)) if o == owner => {}
        _ => {
            return Err(DialError::new(
                StatusCode::FORBIDDEN,
                "not_owner",
                "you do not own this number",
            ));
        }
    }
    let charged = |charged: bool| {
        move |(mut body, id): (Value, Option<String>)| {
            body["charged"] = json!(charged);
            (body, id)
        }
    };
    if dial
        .store
        .take_quota(&b.from, &owner)
        .await
        .map_err(internal)?
    {
        return Ok(answer(
            dial.execute(order, None, &owner).await.map(charged(false)),
        ));
    }
    let route = paid_route("/api/v1/numbers/mine/send").ok_or_else(|| {
        DialError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "route table is missing numbers/mine/send",
        )
    })?;
    let price = Price {
        dollars: route.price(&dial.config.prices).to_owned(),
        description: format!("{} (monthly quota used up)", route.summary),
        metered: None,
    };
    let paywall = dial.paywall.clone();
    Ok(paywall
        .charge(
            &parts,
            route.path,
            &price,
            &body,
            |_payer| async { Ok(Extensions::new()) },
            |paid, _| async move {
                answer(
                    dial.execute(order, Some(paid.receipt_id), &owner)
                        .await
                        .map(charged(true)),
                )
            },
        )
        .await)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiweQuery {
    address: Option<String>,
    chain_id: Option<String>,
}

/// `GET /api/v1/auth/siwe?address=&chainId=`: a single-use nonce and the message to sign.
pub async fn siwe_nonce(
    State(dial): State<Arc<Dial>>,
    Query(q): Query<SiweQuery>,
) -> Result<Response, DialError> {
    let address = q
        .address
        .as_deref()
        .ok_or_else(|| bad_request("address is required"))?;
    let address = crate::protocol::primitives::parse_address(address)
        .map_err(|e| bad_request(format!("address: {e}")))?;
    let chain_id = match q.chain_id.as_deref().map(str::parse::<u64>) {
        Some(Ok(c)) if c > 0 => c,
        _ => return Err(bad_request("chainId is required (a positive integer)")),
    };
    let nonce: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(17)
        .map(char::from)
        .collect();
    let public_url = &dial.paywall.public_url;
    let now = now_secs();
    let message = SiweMessage {
        domain: public_url.authority().to_owned(),
        address,
        statement: Some(STATEMENT.into()),
        uri: public_url.base().to_owned(),
        version: "1".into(),
        chain_id,
        nonce: nonce.clone(),
        issued_at: now,
        expiration_time: Some(now + SIWE_TTL_SECS),
        not_before: None,
    };
    if let Err(e) = dial
        .store
        .add_siwe_nonce(&nonce, &owner_text(address), chain_id, SIWE_TTL_SECS * 1000)
        .await
    {
        return Err(internal(e));
    }
    Ok(Json(
        json!({"success": true, "nonce": nonce, "message": message.to_text(),
                "expiresAt": format_rfc3339(now + SIWE_TTL_SECS)}),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiweLogin {
    message: String,
    signature: String,
}

/// `POST /api/v1/auth/siwe`: a signed message we issued → a bearer token.
pub async fn siwe_login(State(dial): State<Arc<Dial>>, body: Bytes) -> Result<Response, DialError> {
    let login: SiweLogin = parse_json(&body)?;
    let refused = |m: &str| DialError::new(StatusCode::UNAUTHORIZED, "invalid_siwe", m);
    let message = match SiweMessage::parse(&login.message) {
        Ok(m) => m,
        Err(e) => return Err(bad_request(format!("message: {e}"))),
    };
    let signature = match alloy::hex::decode(login.signature.trim_start_matches("0x")) {
        Ok(s) if !s.is_empty() => EvmBytes::from(s),
        _ => return Err(bad_request("signature must be 0x-prefixed hex")),
    };
    // The domain and URI are checked against dial.public_url only: a request's Host is the
    // client's to choose.
    let public_url = &dial.paywall.public_url;
    if message.domain != public_url.authority() {
        return Err(refused(&format!(
            "the message is for {:?}, not this service",
            message.domain
        )));
    }
    if message.uri.trim_end_matches('/') != public_url.base() {
        return Err(refused("the message URI is not this service"));
    }
    let now = now_secs();
    if message.issued_at > now + 60 {
        return Err(refused("the message is issued in the future"));
    }
    if message.expiration_time.is_some_and(|t| t <= now) {
        return Err(refused("the message has expired"));
    }
    if message.not_before.is_some_and(|t| t > now) {
        return Err(refused("the message is not valid yet"));
    }
    let digest = eip191_digest(&login.message);
    if !dial
        .signature_is_valid(message.chain_id, message.address, digest, &signature)
        .await
    {
        return Err(refused("the signature is not the address's"));
    }
    let address = owner_text(message.address);
    match dial
        .store
        .consume_siwe_nonce(&message.nonce, &address, message.chain_id)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(refused("the nonce is unknown, already used or expired")),
        Err(e) => return Err(internal(e)),
    }
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw);
    let token = format!("dial_{}", alloy::hex::encode(raw));
    let expires_at = now + SESSION_TTL_SECS;
    if let Err(e) = dial
        .store
        .add_session(&token_hash(&token), &address, expires_at * 1000)
        .await
    {
        return Err(internal(e));
    }
    Ok(Json(
        json!({"success": true, "token": token, "address": message.address.to_checksum(None),
                "expiresAt": format_rfc3339(expires_at)}),
    )
    .into_response())
}

/// `GET /api/v1/numbers/mine`: the caller's numbers, and nobody else's.
pub async fn my_numbers(
    State(dial): State<Arc<Dial>>,
    headers: HeaderMap,
) -> Result<Response, DialError> {
    let owner = dial.session(&headers).await?;
    let now = crate::clock::now_ms();
    let grace_ms =
        i64::try_from(dial.config.number_grace_seconds.saturating_mul(1000)).unwrap_or(0);
    let numbers: Vec<Value> = dial
        .store
        .numbers_of(&owner)
        .await
        .map_err(internal)?
        .iter()
        .map(|n| {
            let webhook = n.webhook_url.as_ref().map(|url| {
                let state = match (n.webhook_disabled_at, n.webhook_failing_since) {
                    (Some(_), _) => "disabled",
                    (None, Some(_)) => "failing",
                    (None, None) => "ok",
                };
                json!({"url": url, "status": state,
                       "failingSince": n.webhook_failing_since.map(|t| format_rfc3339(t / 1000)),
                       "disabledAt": n.webhook_disabled_at.map(|t| format_rfc3339(t / 1000)),
                       "note": n.webhook_disabled_at.map(|_| "deliveries failed for too long: set the webhook again to resume")})
            });
            json!({"phoneNumber": n.phone_number, "country": n.country,
                   "status": n.lifecycle(now),
                   "expiresAt": format_rfc3339(n.expires_at / 1000),
                   "releasesAt": format_rfc3339((n.expires_at + grace_ms) / 1000),
                   "textsUsed": n.texts_used, "textQuota": n.texts_quota,
                   "webhook": webhook})
        })
        .collect();
    Ok(Json(json!({"success": true, "numbers": numbers})).into_response())
}

pub async fn esim_packages() -> Response {
    Json(json!({"success": true, "packages": ESIM_PACKAGES})).into_response()
}

pub async fn health(State(dial): State<Arc<Dial>>) -> Result<Response, DialError> {
    dial.store.ping().await.map_err(internal)?;
    Ok(Json(json!({"success": true, "status": "ok", "sms": dial.sms.name(), "numbers": dial.numbers.name()}))
        .into_response())
}
