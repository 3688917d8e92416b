//! The edge: a `/verify` or `/settle` body parsed once into a typed request, or a 400 naming the
//! problem.

use alloy::primitives::{Address, B256, keccak256};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::primitives::{AtomicAmount, X402Version};
use super::wire::{
    ExactEvmPayload, ExactExtra, PaymentPayloadV1, PaymentPayloadV2, Permit2Payload,
    RequirementsV1, RequirementsV2,
};

/// Shortest signature we accept: a plain ECDSA signature; smart-wallet signatures are longer.
pub const MIN_SIGNATURE_LEN: usize = 65;

/// A request that cannot be parsed: answered 400 with `{error: code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BadRequest {
    pub code: &'static str,
    pub message: String,
}

impl BadRequest {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        BadRequest {
            code,
            message: message.into(),
        }
    }
}

/// The requirements the merchant set, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    pub scheme: String,
    pub network: String,
    pub amount: AtomicAmount,
    pub asset: Address,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    pub extra: ExactExtra,
}

impl From<RequirementsV2> for Requirements {
    fn from(r: RequirementsV2) -> Self {
        Requirements {
            scheme: r.scheme,
            network: r.network,
            amount: r.amount,
            asset: r.asset,
            pay_to: r.pay_to,
            max_timeout_seconds: r.max_timeout_seconds,
            extra: r.extra.unwrap_or_default(),
        }
    }
}

impl From<RequirementsV1> for Requirements {
    fn from(r: RequirementsV1) -> Self {
        Requirements {
            scheme: r.scheme,
            network: r.network,
            amount: r.max_amount_required,
            asset: r.asset,
            pay_to: r.pay_to,
            max_timeout_seconds: r.max_timeout_seconds,
            extra: r.extra.unwrap_or_default(),
        }
    }
}

/// What the client put in `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentBody {
    /// A signed EIP-3009 authorization.
    Eip3009(ExactEvmPayload),
    /// A Permit2 `permitWitnessTransferFrom` signature (`exact` with Permit2, or `upto`).
    Permit2(Permit2Payload),
    /// The payload's scheme is not one we know; only the payer was looked for, to fill answers.
    UnknownScheme { payer: Option<Address> },
}

/// A parsed `/verify` or `/settle` request.
#[derive(Debug, Clone)]
pub struct FacilitatorRequest {
    pub version: X402Version,
    /// The scheme and network the payload claims (v2: from `accepted`).
    pub payload_scheme: String,
    pub payload_network: String,
    pub requirements: Requirements,
    pub body: PaymentBody,
    /// `extensions["payment-identifier"]`, when the client sent one.
    pub payment_identifier: Option<PaymentIdentifier>,
    /// What the resource server declared for the Bazaar (`extensions.bazaar`), or why it was
    /// refused; `None` when nothing was declared.
    pub discovery: Option<Result<super::discovery::Declaration, String>>,
}

/// A client's id for one payment (`extensions["payment-identifier"].info.id`), with the digest of
/// the payload that carried it: the same id with another payload is a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIdentifier {
    /// 16–128 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// keccak256 of the payload as canonical JSON (keys sorted, no spaces), so a re-encoding of
    /// the same payload is the same payload.
    pub payload_digest: B256,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    x402_version: Option<serde_json::Value>,
    #[serde(borrow)]
    payment_payload: Option<&'a RawValue>,
    #[serde(borrow)]
    payment_requirements: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionProbe {
    x402_version: Option<serde_json::Value>,
}

/// Parses a facilitator request body.
pub fn parse_facilitator_request(body: &[u8]) -> Result<FacilitatorRequest, BadRequest> {
    let envelope: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| BadRequest::new("invalid_json", format!("body is not a JSON object: {e}")))?;
    let payload = envelope
        .payment_payload
        .ok_or_else(|| BadRequest::new("invalid_payload", "missing field paymentPayload"))?;
    let requirements = envelope.payment_requirements.ok_or_else(|| {
        BadRequest::new(
            "invalid_payment_requirements",
            "missing field paymentRequirements",
        )
    })?;
    let probe: VersionProbe = serde_json::from_str(payload.get())
        .map_err(|e| BadRequest::new("invalid_payload", format!("paymentPayload: {e}")))?;
    let version = match probe.x402_version {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(X402Version::from_number),
        _ => None,
    }
    .ok_or_else(|| {
        BadRequest::new(
            "invalid_x402_version",
            "paymentPayload.x402Version must be 1 or 2",
        )
    })?;
    if let Some(top) = envelope.x402_version
        && top.as_u64() != Some(u64::from(version.number()))
    {
        return Err(BadRequest::new(
            "invalid_x402_version",
            format!(
                "x402Version {top} differs from paymentPayload.x402Version {}",
                version.number()
            ),
        ));
    }
    match version {
        X402Version::V1 => parse_v1(payload, requirements),
        X402Version::V2 => parse_v2(payload, requirements),
    }
}

fn parse_v1(payload: &RawValue, requirements: &RawValue) -> Result<FacilitatorRequest, BadRequest> {
    let p: PaymentPayloadV1 = typed(payload, "invalid_payload", "paymentPayload")?;
    let r: RequirementsV1 = typed(
        requirements,
        "invalid_payment_requirements",
        "paymentRequirements",
    )?;
    let body = parse_body(&p.scheme, &p.payload)?;
    Ok(FacilitatorRequest {
        version: X402Version::V1,
        payload_scheme: p.scheme,
        payload_network: p.network,
        requirements: r.into(),
        body,
        payment_identifier: None,
        discovery: None,
    })
}

fn parse_v2(payload: &RawValue, requirements: &RawValue) -> Result<FacilitatorRequest, BadRequest> {
    let p: PaymentPayloadV2 = typed(payload, "invalid_payload", "paymentPayload")?;
    let r: RequirementsV2 = typed(
        requirements,
        "invalid_payment_requirements",
        "paymentRequirements",
    )?;
    let body = parse_body(&p.accepted.scheme, &p.payload)?;
    let payment_identifier = match payment_identifier(p.extensions.as_ref())? {
        None => None,
        Some(id) => Some(PaymentIdentifier {
            id,
            payload_digest: canonical_digest(payload)?,
        }),
    };
    let discovery = if p
        .extensions
        .as_ref()
        .is_some_and(|e| e.get("bazaar").is_some())
    {
        // Read as plain JSON: the declaration keeps fields our typed wire does not model.
        let payload_value: serde_json::Value =
            serde_json::from_str(payload.get()).unwrap_or_default();
        let requirements_value: serde_json::Value =
            serde_json::from_str(requirements.get()).unwrap_or_default();
        super::discovery::declaration(
            payload_value.get("resource"),
            p.extensions.as_ref(),
            &requirements_value,
        )
        .transpose()
    } else {
        None
    };
    Ok(FacilitatorRequest {
        version: X402Version::V2,
        payload_scheme: p.accepted.scheme,
        payload_network: p.accepted.network,
        requirements: r.into(),
        body,
        payment_identifier,
        discovery,
    })
}

fn parse_body(scheme: &str, payload: &RawValue) -> Result<PaymentBody, BadRequest> {
    if scheme != "exact" && scheme != "upto" {
        return Ok(PaymentBody::UnknownScheme {
            payer: best_effort_payer(payload),
        });
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Permit2Probe<'a> {
        #[serde(borrow, default)]
        permit2_authorization: Option<&'a RawValue>,
    }
    let probe: Permit2Probe<'_> = serde_json::from_str(payload.get())
        .map_err(|e| BadRequest::new("invalid_payload", format!("paymentPayload.payload: {e}")))?;
    if probe.permit2_authorization.is_some() || scheme == "upto" {
        let p: Permit2Payload = typed(payload, "invalid_payload", "paymentPayload.payload")?;
        check_signature_len(&p.signature)?;
        return Ok(PaymentBody::Permit2(p));
    }
    let exact: ExactEvmPayload = typed(payload, "invalid_payload", "paymentPayload.payload")?;
    check_signature_len(&exact.signature)?;
    Ok(PaymentBody::Eip3009(exact))
}

fn check_signature_len(signature: &[u8]) -> Result<(), BadRequest> {
    if signature.len() < MIN_SIGNATURE_LEN {
        return Err(BadRequest::new(
            "invalid_payload",
            format!(
                "paymentPayload.payload.signature is {} bytes; at least {MIN_SIGNATURE_LEN} are required",
                signature.len()
            ),
        ));
    }
    Ok(())
}

/// `authorization.from` of a payload we will not otherwise read, so that refusals still name the payer.
fn best_effort_payer(payload: &RawValue) -> Option<Address> {
    let v: serde_json::Value = serde_json::from_str(payload.get()).ok()?;
    let from = v
        .get("authorization")
        .or_else(|| v.get("permit2Authorization"))?
        .get("from")?
        .as_str()?;
    super::primitives::parse_address(from).ok()
}

fn payment_identifier(
    extensions: Option<&serde_json::Value>,
) -> Result<Option<String>, BadRequest> {
    let Some(id) = extensions
        .and_then(|e| e.get("payment-identifier"))
        .and_then(|e| e.get("info"))
        .and_then(|i| i.get("id"))
    else {
        return Ok(None);
    };
    let valid = id.as_str().filter(|s| {
        (16..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    match valid {
        Some(s) => Ok(Some(s.to_owned())),
        None => Err(BadRequest::new(
            "invalid_payload",
            "extensions.payment-identifier.info.id must be 16-128 characters of [A-Za-z0-9_-]",
        )),
    }
}

/// keccak256 of `raw` re-encoded as canonical JSON (serde_json's map is sorted by key).
fn canonical_digest(raw: &RawValue) -> Result<B256, BadRequest> {
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| BadRequest::new("invalid_payload", format!("paymentPayload: {e}")))?;
    Ok(keccak256(value.to_string()))
}

/// Deserialises `raw` into `T`, naming the failing field path in the error.
fn typed<T: DeserializeOwned>(
    raw: &RawValue,
    code: &'static str,
    what: &str,
) -> Result<T, BadRequest> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            what.to_owned()
        } else {
            format!("{what}.{path}")
        };
        BadRequest::new(code, format!("{at}: {}", e.into_inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2_body(nonce: &str, sig: &str) -> String {
        let req = r#"{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x1111111111111111111111111111111111111111","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}"#;
        format!(
            r#"{{"x402Version":2,"paymentPayload":{{"x402Version":2,"accepted":{req},"payload":{{"signature":"{sig}","authorization":{{"from":"0x2222222222222222222222222222222222222222","to":"0x1111111111111111111111111111111111111111","value":"10000","validAfter":"0","validBefore":"99999999999","nonce":"{nonce}"}}}}}},"paymentRequirements":{req}}}"#
        )
    }

    fn sig65() -> String {
        format!("0x{}", "ab".repeat(65))
    }

    #[test]
    fn parses_a_v2_request() {
        let nonce = format!("0x{}", "01".repeat(32));
        let r = parse_facilitator_request(v2_body(&nonce, &sig65()).as_bytes()).unwrap();
        assert_eq!(r.version, X402Version::V2);
        assert_eq!(r.requirements.amount, AtomicAmount::from_u64(10_000));
        assert!(matches!(r.body, PaymentBody::Eip3009(_)));
    }

    #[test]
    fn short_nonce_and_signature_are_bad_requests() {
        let short_nonce = format!("0x{}", "01".repeat(31));
        let e = parse_facilitator_request(v2_body(&short_nonce, &sig65()).as_bytes()).unwrap_err();
        assert!(e.message.contains("nonce"), "{e}");
        let nonce = format!("0x{}", "01".repeat(32));
        let sig32 = format!("0x{}", "ab".repeat(32));
        let e = parse_facilitator_request(v2_body(&nonce, &sig32).as_bytes()).unwrap_err();
        assert!(e.message.contains("signature"), "{e}");
    }

    #[test]
    fn unknown_version_is_named() {
        let e = parse_facilitator_request(
            br#"{"paymentPayload":{"x402Version":3},"paymentRequirements":{}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_x402_version");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_facilitator_request(&bytes);
        }

        #[test]
        fn mutated_valid_bodies_never_panic(pos in 0usize..900, byte in any::<u8>()) {
            let nonce = format!("0x{}", "01".repeat(32));
            let mut body = v2_body(&nonce, &sig65()).into_bytes();
            let i = pos % body.len();
            body[i] = byte;
            let _ = parse_facilitator_request(&body);
        }
    }
}
