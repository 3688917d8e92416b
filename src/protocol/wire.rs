//! The JSON shapes of x402 v1 and v2, as sent and received.

use alloy::primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::primitives::{
    AtomicAmount, X402Version, deserialize_address, deserialize_b256, deserialize_hex_bytes,
    deserialize_uint, deserialize_uint_or_hex, serialize_uint,
};

/// `extra` of an exact-EVM requirement: the token's EIP-712 domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_transfer_method: Option<String>,
    /// upto: the facilitator wallet the payer binds in the witness (from `/supported`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_some_address"
    )]
    pub facilitator_address: Option<Address>,
}

/// A v2 payment requirement (one entry of `accepts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV2 {
    pub scheme: String,
    pub network: String,
    pub amount: AtomicAmount,
    #[serde(deserialize_with = "deserialize_address")]
    pub asset: Address,
    #[serde(deserialize_with = "deserialize_address")]
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<ExactExtra>,
}

/// A v1 payment requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV1 {
    pub scheme: String,
    pub network: String,
    pub max_amount_required: AtomicAmount,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mime_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    #[serde(deserialize_with = "deserialize_address")]
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    #[serde(deserialize_with = "deserialize_address")]
    pub asset: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<ExactExtra>,
}

/// What a v2 402 answer describes as the paid resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// The v2 `PAYMENT-REQUIRED` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV2 {
    pub x402_version: X402Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: ResourceInfo,
    pub accepts: Vec<RequirementsV2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

/// The v1 402 body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    pub x402_version: X402Version,
    #[serde(default)]
    pub error: String,
    pub accepts: Vec<RequirementsV1>,
}

/// A v1 payment payload (`X-PAYMENT`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    pub x402_version: X402Version,
    pub scheme: String,
    pub network: String,
    pub payload: Box<RawValue>,
}

/// A v2 payment payload (`PAYMENT-SIGNATURE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    pub x402_version: X402Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    pub accepted: RequirementsV2,
    pub payload: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

/// The exact-EVM payload: a signed EIP-3009 authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmPayload {
    #[serde(deserialize_with = "deserialize_hex_bytes")]
    pub signature: Bytes,
    pub authorization: Eip3009Authorization,
}

/// The fields of `TransferWithAuthorization`, as the wire carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Eip3009Authorization {
    #[serde(deserialize_with = "deserialize_address")]
    pub from: Address,
    #[serde(deserialize_with = "deserialize_address")]
    pub to: Address,
    pub value: AtomicAmount,
    #[serde(
        deserialize_with = "deserialize_uint",
        serialize_with = "serialize_uint"
    )]
    pub valid_after: U256,
    #[serde(
        deserialize_with = "deserialize_uint",
        serialize_with = "serialize_uint"
    )]
    pub valid_before: U256,
    #[serde(deserialize_with = "deserialize_b256")]
    pub nonce: B256,
}

/// A Permit2 payload (`exact` with `assetTransferMethod: "permit2"`, or `upto`): a
/// `permitWitnessTransferFrom` signature and what it signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Payload {
    #[serde(deserialize_with = "deserialize_hex_bytes")]
    pub signature: Bytes,
    pub permit2_authorization: Permit2Authorization,
}

/// The fields of `PermitWitnessTransferFrom` plus the owner, as the wire carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Authorization {
    #[serde(deserialize_with = "deserialize_address")]
    pub from: Address,
    pub permitted: Permit2Permitted,
    #[serde(deserialize_with = "deserialize_address")]
    pub spender: Address,
    /// Permit2's unordered nonce (decimal, or `0x` hex as some clients send it).
    #[serde(
        deserialize_with = "deserialize_uint_or_hex",
        serialize_with = "serialize_uint"
    )]
    pub nonce: U256,
    #[serde(
        deserialize_with = "deserialize_uint_or_hex",
        serialize_with = "serialize_uint"
    )]
    pub deadline: U256,
    pub witness: Permit2Witness,
}

/// `permitted`: the token and the most that may move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Permitted {
    #[serde(deserialize_with = "deserialize_address")]
    pub token: Address,
    pub amount: AtomicAmount,
}

/// The witness the proxies bind: the recipient, the earliest time, and (upto) the facilitator
/// allowed to settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Witness {
    #[serde(deserialize_with = "deserialize_address")]
    pub to: Address,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_some_address"
    )]
    pub facilitator: Option<Address>,
    #[serde(
        deserialize_with = "deserialize_uint_or_hex",
        serialize_with = "serialize_uint"
    )]
    pub valid_after: U256,
}

fn deserialize_some_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Address>, D::Error> {
    deserialize_address(d).map(Some)
}

/// `POST /verify` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// `POST /settle` answer. `transaction` and `network` are always present (empty on failure): the Go
/// and TypeScript clients reject an answer without them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default)]
    pub transaction: String,
    #[serde(default)]
    pub network: String,
    /// The atomic amount settled, on success (the SDKs read it; `upto` needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

/// One entry of `GET /supported`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: X402Version,
    pub scheme: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// `GET /supported` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportedResponse {
    pub kinds: Vec<SupportedKind>,
    pub extensions: Vec<String>,
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
}
