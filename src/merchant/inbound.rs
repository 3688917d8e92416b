//! Texts that arrive: Twilio's signed incoming-message webhook, the sandbox's injector, the
//! owner's inbox (`numbers/mine/messages`) and verification codes (`verifications/{id}`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Dial;
use super::api::{bad_request, internal, parse_json};
use super::paywall::DialError;
use super::siwe::format_rfc3339;
use super::sms::{PhoneNumber, count_segments};
use super::store::{InboundMessage, MessageFilter, NewInbound, Verification};
use crate::clock::now_ms;

/// Where Twilio posts incoming messages (configure it as the number's "A message comes in" URL,
/// under `dial.public_url`).
pub const TWILIO_PATH: &str = "/api/v1/inbound/twilio";
/// The sandbox's injector: "texts" one of Dial's numbers (only with the sandbox provider).
pub const SANDBOX_PATH: &str = "/api/v1/dev/inbound";

/// The longest a text, or a sender, may be: a 10-segment concatenated SMS is 1,530 characters.
const MAX_INBOUND_BODY: usize = 1_600;
const MAX_SENDER: usize = 64;
/// The longest `?wait=` a verification read may hold the request.
pub const MAX_WAIT_SECS: u64 = 30;

/// Whether `signature` is Twilio's `X-Twilio-Signature` for a POST to `url` with `params`:
/// base64 of HMAC-SHA1, keyed by the auth token, over the URL followed by every parameter's
/// name and value, sorted by name.
pub fn twilio_signature_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return false;
    };
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    // Constant time: the comparison does not say how much of a forged signature was right.
    mac.verify_slice(&expected).is_ok()
}

/// Codes as known services write them; anything else: the first group of 4 to 8 digits.
static SERVICE_CODES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        ("whatsapp", r"(\d{3}-\d{3})"),
        ("google", r"G-(\d{4,8})"),
        ("telegram", r"(?i)code:?\s*(\d{5,6})"),
    ]
    .into_iter()
    .filter_map(|(s, p)| Regex::new(p).ok().map(|r| (s, r)))
    .collect()
});
static DIGITS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:^|[^0-9])([0-9]{4,8})(?:[^0-9]|$)").ok());

/// The verification code in `text`, for `service` (matched case-insensitively by name).
pub fn extract_code(service: &str, text: &str) -> Option<String> {
    let service = service.to_ascii_lowercase();
    let known = SERVICE_CODES
        .iter()
        .filter(|(s, _)| service.contains(s))
        .find_map(|(_, r)| r.captures(text).and_then(|c| c.get(1)));
    known
        .or_else(|| DIGITS.as_ref()?.captures(text)?.get(1))
        .map(|m| m.as_str().to_owned())
}

/// What became of an arriving text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Stored for a number's owner.
    Number,
    /// Stored, and the code of a waiting verification read from it.
    Verification,
    /// The provider sent this message before: nothing recorded twice.
    Duplicate,
    /// No number or waiting verification has this recipient: stored for the operator only.
    Unmatched,
}

impl Arrival {
    fn as_str(self) -> &'static str {
        match self {
            Arrival::Number => "number",
            Arrival::Verification => "verification",
            Arrival::Duplicate => "duplicate",
            Arrival::Unmatched => "unmatched",
        }
    }
}

/// One text as the provider hands it over.
pub struct Incoming<'a> {
    pub provider: &'a str,
    pub provider_id: &'a str,
    pub to: &'a str,
    pub from: &'a str,
    pub body: &'a str,
    pub segments: Option<usize>,
}

fn check_sender(from: &str) -> Result<(), DialError> {
    // A sender is a number, a short code or an alphanumeric id ("WhatsApp"): printable, short.
    if from.is_empty() || from.chars().count() > MAX_SENDER || from.chars().any(char::is_control) {
        return Err(bad_request(
            "from must be 1-64 printable characters (a number, short code or sender id)",
        ));
    }
    Ok(())
}

impl Dial {
    /// Stores an arriving text for whoever it is for, reads a verification code from it, queues
    /// the owner's webhook and wakes long-polling readers.
    pub async fn receive(&self, m: &Incoming<'_>) -> Result<(Arrival, i64), DialError> {
        let to = PhoneNumber::parse(m.to).map_err(|e| bad_request(format!("to: {e}")))?;
        check_sender(m.from)?;
        if m.body.chars().count() > MAX_INBOUND_BODY || m.provider_id.is_empty() {
            return Err(bad_request(format!(
                "a text has a provider id and at most {MAX_INBOUND_BODY} characters"
            )));
        }
        let now = now_ms();
        let number = self
            .store
            .number(to.as_str())
            .await
            .map_err(internal)?
            .filter(|(_, n)| n.lifecycle(now) != "released");
        let verification = match number {
            Some(_) => None,
            None => self
                .store
                .waiting_verification(to.as_str(), now)
                .await
                .map_err(internal)?,
        };
        let owner = number
            .as_ref()
            .map(|(o, _)| o.clone())
            .or_else(|| verification.as_ref().and_then(|v| v.owner.clone()));
        let stored = self
            .store
            .record_inbound(
                &NewInbound {
                    provider: m.provider,
                    provider_id: m.provider_id,
                    phone_number: to.as_str(),
                    sender: m.from,
                    body: m.body,
                    segments: m
                        .segments
                        .unwrap_or_else(|| count_segments(m.body).segments),
                    owner: owner.as_deref(),
                    verification_id: verification.as_ref().map(|v| v.verification_id.as_str()),
                },
                now,
            )
            .await
            .map_err(internal)?;
        let Some(stored) = stored else {
            return Ok((Arrival::Duplicate, 0));
        };
        self.counters.inbound.inc();
        let arrival = if let Some(v) = &verification {
            let code = extract_code(&v.service, m.body);
            self.store
                .verification_received(&v.verification_id, code.as_deref(), m.body, now)
                .await
                .map_err(internal)?;
            Arrival::Verification
        } else if number.is_some() {
            if self
                .store
                .enqueue_delivery(&stored, now)
                .await
                .map_err(internal)?
            {
                self.jobs_wake.notify_one();
            }
            Arrival::Number
        } else {
            Arrival::Unmatched
        };
        self.arrivals.notify_waiters();
        Ok((arrival, stored.id))
    }
}

fn twiml() -> Response {
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response()
}

/// `POST /api/v1/inbound/twilio`: Twilio's incoming-message webhook (form-encoded). Anything
/// without a valid `X-Twilio-Signature` is refused with 403 and recorded nowhere.
pub async fn twilio_inbound(
    State(dial): State<Arc<Dial>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DialError> {
    let Some(auth_token) = dial.twilio_auth_token.as_deref() else {
        return Err(DialError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Twilio is not this Dial's provider",
        ));
    };
    let refused = || {
        DialError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "X-Twilio-Signature is missing or does not match this request",
        )
    };
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // Twilio signs the URL it was configured with: ours is dial.public_url, never the Host.
    let url = match uri.query() {
        Some(q) => format!("{}{TWILIO_PATH}?{q}", dial.paywall.public_url.base()),
        None => format!("{}{TWILIO_PATH}", dial.paywall.public_url.base()),
    };
    if !twilio_signature_valid(auth_token, &url, &params, signature) {
        tracing::warn!("an inbound webhook with a bad Twilio signature was refused");
        return Err(refused());
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(sid), Some(from), Some(to)) = (get("MessageSid"), get("From"), get("To")) else {
        return Err(bad_request("MessageSid, From and To are required"));
    };
    let segments = get("NumSegments").and_then(|n| n.parse().ok());
    dial.receive(&Incoming {
        provider: "twilio",
        provider_id: sid,
        to,
        from,
        body: get("Body").unwrap_or(""),
        segments,
    })
    .await?;
    Ok(twiml())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxText {
    to: String,
    from: String,
    body: String,
    /// The provider's message id; a new one when absent. The same id twice is one message.
    #[serde(default)]
    id: Option<String>,
}

/// `POST /api/v1/dev/inbound` (sandbox only): a text to one of Dial's numbers, as a carrier
/// would deliver it.
pub async fn sandbox_inbound(
    State(dial): State<Arc<Dial>>,
    body: Bytes,
) -> Result<Response, DialError> {
    let t: SandboxText = parse_json(&body)?;
    let id =
        t.id.unwrap_or_else(|| super::providers::random_id("SMsandbox"));
    let (arrival, stored) = dial
        .receive(&Incoming {
            provider: "sandbox",
            provider_id: &id,
            to: &t.to,
            from: &t.from,
            body: &t.body,
            segments: None,
        })
        .await?;
    if arrival == Arrival::Unmatched {
        return Err(DialError::new(
            StatusCode::NOT_FOUND,
            "unknown_number",
            "no number or waiting verification has this recipient",
        ));
    }
    Ok(Json(
        json!({"success": true, "messageId": id, "deliveredTo": arrival.as_str(),
                   "id": stored}),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    number: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>, DialError> {
    value
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
                .map_err(|_| bad_request(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Cursors are opaque to clients: `c` and the last id seen.
fn parse_cursor(cursor: Option<&str>) -> Result<i64, DialError> {
    match cursor {
        None => Ok(0),
        Some(c) => c
            .strip_prefix('c')
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad_request("cursor is not one this service returned")),
    }
}

pub fn message_json(m: &InboundMessage) -> Value {
    json!({"id": format!("c{}", m.id), "phoneNumber": m.phone_number, "from": m.sender, "body": m.body,
           "segments": m.segments, "receivedAt": format_rfc3339(m.received_at / 1000),
           "verificationId": m.verification_id})
}

/// `GET /api/v1/numbers/mine/messages`: the owner's texts in arrival order, `limit` (1-100,
/// default 50) at a time; `nextCursor` continues after the last one.
pub async fn my_messages(
    State(dial): State<Arc<Dial>>,
    headers: HeaderMap,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DialError> {
    let owner = dial.session(&headers).await?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let number = q
        .number
        .as_deref()
        .map(PhoneNumber::parse)
        .transpose()
        .map_err(|e| bad_request(format!("number: {e}")))?;
    if let Some(n) = &number {
        match dial.store.number(n.as_str()).await.map_err(internal)? {
            Some((o, _)) if o == owner => {}
            _ => {
                return Err(DialError::new(
                    StatusCode::FORBIDDEN,
                    "not_owner",
                    "you do not own this number",
                ));
            }
        }
    }
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => 50,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return Err(bad_request("limit must be 1-100")),
    };
    let filter = MessageFilter {
        phone_number: number.as_ref().map(PhoneNumber::as_str),
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
        after_id: parse_cursor(q.cursor.as_deref())?,
        limit,
    };
    let messages = dial
        .store
        .messages_of(&owner, &filter)
        .await
        .map_err(internal)?;
    let next = (messages.len() as i64 == limit)
        .then(|| messages.last().map(|m| format!("c{}", m.id)))
        .flatten();
    Ok(Json(json!({"success": true,
                   "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
                   "nextCursor": next}))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait: Option<String>,
}

/// A verification's status as its reader sees it at `now`.
fn verification_status(v: &Verification, now: i64) -> &str {
    if v.status == "waiting" && v.expires_at <= now {
        "expired"
    } else {
        &v.status
    }
}

/// `GET /api/v1/verifications/{id}`: the rental's status and, once a text arrived, its code and
/// text. Readable by the payer's SIWE session or the read token of the paid answer; `?wait=N`
/// holds the request up to N seconds (at most 30) for the code.
pub async fn get_verification(
    State(dial): State<Arc<Dial>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DialError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let wait = match q.wait.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(n)) => n.min(MAX_WAIT_SECS),
        Some(Err(_)) => return Err(bad_request("wait must be a number of seconds")),
    };
    let token = super::api::bearer(&headers).ok_or_else(|| {
        DialError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required: the readToken of the paid answer or a SIWE session",
        )
    })?;
    let mut v = dial
        .store
        .verification(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            DialError::new(StatusCode::NOT_FOUND, "not_found", "no such verification")
        })?;
    let by_read_token = v.read_token_hash.as_deref() == Some(&super::api::token_hash(token));
    if !by_read_token {
        let reader = dial.session(&headers).await?;
        if v.owner.as_deref() != Some(reader.as_str()) {
            return Err(DialError::new(
                StatusCode::FORBIDDEN,
                "not_owner",
                "only the wallet that paid for this verification can read it",
            ));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    while v.status == "waiting" && tokio::time::Instant::now() < deadline {
        let arrived = dial.arrivals.notified();
        // Another node may store the text: look again at least every second.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
            arrived,
        )
        .await;
        v = dial
            .store
            .verification(&id)
            .await
            .map_err(internal)?
            .unwrap_or(v);
    }
    let now = now_ms();
    let refund = match v.receipt_id {
        Some(r) => dial.store.refund_of_receipt(r).await.map_err(internal)?,
        None => None,
    };
    Ok(Json(
        json!({"success": true, "verificationId": v.verification_id, "service": v.service,
                   "phoneNumber": v.phone_number, "status": verification_status(&v, now),
                   "code": v.code, "text": v.message_text,
                   "receivedAt": v.received_at.map(|t| format_rfc3339(t / 1000)),
                   "expiresAt": format_rfc3339(v.expires_at / 1000),
                   "refund": refund.as_ref().map(super::refunds::refund_json)}),
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's documented example (its signature-validation snippets): this URL, these
    /// parameters and auth token `12345` sign to `GvWf1cFY/Q7PnoempGyD5oXAezc=`.
    #[test]
    fn twilio_signature_matches_the_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(twilio_signature_valid(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!twilio_signature_valid(
            "12346",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!twilio_signature_valid(
            "12345",
            url,
            &params,
            "not base64!"
        ));
    }

    #[test]
    fn codes_by_service_pattern_else_the_first_group_of_four_to_eight_digits() {
        assert_eq!(
            extract_code(
                "WhatsApp",
                "Your WhatsApp code 123-456. Don't share it, 2024"
            ),
            Some("123-456".into())
        );
        assert_eq!(
            extract_code("google", "G-482913 is your Google verification code."),
            Some("482913".into())
        );
        assert_eq!(
            extract_code("acme", "Call 12 or 123: your code is 90210, valid 10 min"),
            Some("90210".into())
        );
        // A 9-digit run is no code; the group after it is.
        assert_eq!(
            extract_code("acme", "ref 123456789 code 4321"),
            Some("4321".into())
        );
        assert_eq!(extract_code("acme", "no digits here, 12 or 123"), None);
        assert_eq!(
            extract_code("acme", "١٢٣٤ is not ASCII; 5678 is"),
            Some("5678".into())
        );
    }
}
