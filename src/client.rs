//! The paying side: sign an EIP-3009 authorization for a requirement and wrap it in a v1 or v2
//! payload. Used by `x402d pay`, the tests and the benchmarks.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use serde_json::{Value, json};

use crate::exact::authorization_digest;
use crate::protocol::wire::{
    Eip3009Authorization, ExactEvmPayload, RequirementsV1, RequirementsV2,
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
pub fn payload_v2(accepted: &RequirementsV2, payload: &ExactEvmPayload) -> Value {
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
