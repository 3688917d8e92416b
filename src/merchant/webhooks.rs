//! Owners' webhooks: a URL per number that each arriving text is POSTed to, signed with the
//! owner's secret (HMAC-SHA256 over `timestamp.body`), retried with backoff, every attempt
//! recorded; a URL failing for a day is disabled. Webhook URLs never reach private addresses
//! unless the operator lists them (`dial.webhook_allow_private`): checked when a URL is set, and
//! again when each connection is made (a name may resolve elsewhere by then).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::Dial;
use super::api::{bad_request, internal, parse_json};
use super::inbound::message_json;
use super::paywall::DialError;
use super::siwe::format_rfc3339;
use super::sms::PhoneNumber;
use super::store::{Attempt, Delivery};

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "x-dial-signature";
/// The delivery's id: the same message retried keeps it, so receivers can drop repeats.
pub const DELIVERY_HEADER: &str = "x-dial-delivery";
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// How long a taken delivery is leased to the node trying it.
const LEASE_MS: i64 = 60_000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which addresses a webhook may reach: public ones, and those the operator listed.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// From `dial.webhook_allow_private`: addresses or CIDR ranges.
    pub fn parse(entries: &[String]) -> Result<AddressPolicy, String> {
        let allowed = entries
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{e:?} is not an IP address or CIDR range"))
            })
            .collect::<Result<_, _>>()?;
        Ok(AddressPolicy { allowed })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, shared,
/// documentation, benchmarking, multicast or reserved; IPv4 inside IPv6 is judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
                || (a == 192 && b == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                // NAT64 and the old IPv4-compatible form reach IPv4 space we cannot judge here.
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)
                || v6.segments()[..6].iter().all(|s| *s == 0))
        }
    }
}

/// Resolves names for webhook calls, keeping only addresses the policy permits: the check is
/// made on the address actually connected to, so DNS rebinding cannot get around it.
struct GuardedResolver(AddressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no address webhooks may reach").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client of every delivery: bounded in time, no redirects (a redirect could point
/// anywhere), guarded resolution.
pub fn client(policy: &AddressPolicy) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
        .build()
}

/// Checks a webhook URL as given by its owner; resolves its host to see where it points.
pub async fn check_url(url: &str, policy: &AddressPolicy) -> Result<url::Url, String> {
    if url.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("the URL must be http or https".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    let host = parsed
        .host()
        .ok_or_else(|| "the URL has no host".to_owned())?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("{name} does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    match addrs.iter().find(|ip| !policy.permits(**ip)) {
        Some(ip) => Err(format!(
            "the URL reaches {ip}, a private or reserved address; webhooks go to public addresses only"
        )),
        None if addrs.is_empty() => Err("the URL's host resolves to no address".into()),
        None => Ok(parsed),
    }
}

/// `t=…,v1=…` for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never reached.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        alloy::hex::encode(mac.finalize().into_bytes())
    )
}

/// How long to wait after `attempts` failed tries (the first retry after `base_ms`, doubling).
pub fn backoff_ms(base_ms: u64, attempts: i64) -> i64 {
    let shift = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let wait = base_ms.saturating_mul(1u64 << shift).min(MAX_BACKOFF_MS);
    i64::try_from(wait).unwrap_or(i64::MAX)
}

impl Dial {
    /// Tries every delivery due at `now` once; returns how many were delivered.
    pub(crate) async fn deliver_due(&self, now: i64) -> usize {
        let due = match self
            .store
            .take_due_deliveries(now, now + LEASE_MS, 20)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "webhook deliveries unreadable");
                return 0;
            }
        };
        let mut delivered = 0;
        for d in due {
            match self.attempt(&d, now).await {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, delivery = d.id, "webhook delivery not recorded")
                }
            }
        }
        let failing_before = now.saturating_sub(
            i64::try_from(
                self.config
                    .webhook_disable_after_seconds
                    .saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
        );
        match self
            .store
            .disable_failing_webhooks(failing_before, now)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(disabled = n, "webhooks failing for too long were disabled"),
            Err(e) => tracing::warn!(error = %e, "failing webhooks not checked"),
        }
        delivered
    }

    async fn attempt(&self, d: &Delivery, now: i64) -> Result<bool, super::store::StoreError> {
        let (Some(message), Some(secret)) = (
            self.store.inbound(d.inbound_id).await?,
            self.store.owner_secret(&d.owner).await?,
        ) else {
            return Ok(false);
        };
        let body = serde_json::to_vec(&json!({
            "type": "message.received",
            "deliveryId": d.id,
            "data": message_json(&message),
        }))
        .unwrap_or_default();
        let started = Instant::now();
        // The URL is checked again: an IP literal never passes through the resolver.
        let outcome = match check_url(&d.url, &self.webhook_policy).await {
            Err(e) => Err(e),
            Ok(url) => self
                .webhook_client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature(&secret, now / 1000, &body))
                .header(DELIVERY_HEADER, d.id.to_string())
                .body(body)
                .send()
                .await
                .map_err(|e| e.without_url().to_string()),
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (http_status, error, delivered) = match outcome {
            Ok(r) if r.status().is_success() => (Some(i64::from(r.status().as_u16())), None, true),
            Ok(r) => (
                Some(i64::from(r.status().as_u16())),
                Some(format!("answered {}", r.status())),
                false,
            ),
            Err(e) => (None, Some(e), false),
        };
        self.store
            .record_attempt(
                d.id,
                &Attempt {
                    at: now,
                    http_status,
                    error: error.clone(),
                    duration_ms,
                },
            )
            .await?;
        let next_at = now + backoff_ms(self.config.webhook_retry_base_ms, d.attempts);
        self.store
            .finish_attempt(d, delivered, next_at, now)
            .await?;
        self.counters
            .webhooks
            .with_label_values(&[if delivered { "delivered" } else { "failed" }])
            .inc();
        if let Some(e) = error {
            tracing::info!(delivery = d.id, attempt = d.attempts + 1, error = %e, "webhook attempt failed");
        }
        Ok(delivered)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WebhookBody {
    phone_number: String,
    url: Option<String>,
}

/// `PUT /api/v1/numbers/mine/webhook`: sets (or with `"url": null` removes) a number's webhook.
/// The owner's signing secret is created with the first webhook and shown in that answer only.
pub async fn set_webhook(
    State(dial): State<Arc<Dial>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DialError> {
    let owner = dial.session(&headers).await?;
    let b: WebhookBody = parse_json(&body)?;
    let number = PhoneNumber::parse(&b.phone_number)
        .map_err(|e| bad_request(format!("phoneNumber: {e}")))?;
    let url = match &b.url {
        None => None,
        Some(u) => Some(
            check_url(u, &dial.webhook_policy)
                .await
                .map_err(|e| DialError::new(StatusCode::BAD_REQUEST, "webhook_url_refused", e))?
                .to_string(),
        ),
    };
    if !dial
        .store
        .set_webhook(&owner, number.as_str(), url.as_deref())
        .await
        .map_err(internal)?
    {
        return Err(DialError::new(
            StatusCode::FORBIDDEN,
            "not_owner",
            "you do not own this number (or it was released)",
        ));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw);
    let fresh = format!("whsec_{}", alloy::hex::encode(raw));
    let created = url.is_some()
        && dial
            .store
            .create_owner_secret(&owner, &fresh)
            .await
            .map_err(internal)?;
    let mut answer = json!({"success": true, "phoneNumber": number.as_str(), "webhookUrl": url,
        "signature": {"header": SIGNATURE_HEADER, "scheme": "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">",
                      "toleranceSeconds": 300}});
    if created {
        answer["secret"] = json!(fresh);
        answer["secretNote"] = json!("shown once: store it now");
    }
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    number: Option<String>,
}

/// `GET /api/v1/numbers/mine/webhook-deliveries`: the owner's latest deliveries and every
/// attempt of each.
pub async fn my_deliveries(
    State(dial): State<Arc<Dial>>,
    headers: HeaderMap,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DialError> {
    let owner = dial.session(&headers).await?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let deliveries = dial
        .store
        .deliveries_of(&owner, q.number.as_deref(), 100)
        .await
        .map_err(internal)?;
    let list: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|(d, attempts)| {
            json!({"id": d.id, "phoneNumber": d.phone_number, "url": d.url, "status": d.status,
                   "attempts": attempts.iter().map(|a| json!({
                       "at": format_rfc3339(a.at / 1000), "httpStatus": a.http_status,
                       "error": a.error, "durationMs": a.duration_ms})).collect::<Vec<_>>(),
                   "nextAttemptAt": (d.status == "pending").then(|| format_rfc3339(d.next_attempt_at / 1000)),
                   "createdAt": format_rfc3339(d.created_at / 1000)})
        })
        .collect();
    Ok(Json(json!({"success": true, "deliveries": list})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_listed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.10",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let policy = AddressPolicy::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("10.9.9.9".parse().unwrap()));
        assert!(!policy.permits("192.168.1.1".parse().unwrap()));
        assert!(AddressPolicy::parse(&["localhost".into()]).is_err());
    }

    #[test]
    fn signatures_cover_timestamp_and_body_and_backoff_doubles_to_an_hour() {
        let a = signature("whsec_x", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, signature("whsec_x", 1_700_000_001, b"{}"));
        assert_ne!(a, signature("whsec_x", 1_700_000_000, b"{ }"));
        assert_ne!(a, signature("whsec_y", 1_700_000_000, b"{}"));
        assert_eq!(backoff_ms(1000, 0), 1000);
        assert_eq!(backoff_ms(1000, 3), 8000);
        assert_eq!(backoff_ms(5000, 40), 3_600_000);
    }
}
