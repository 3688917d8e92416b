//! EIP-1559 transactions as both settlement and Dial's refunds sign them.

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;

use super::RpcError;

/// The two fee fields of an EIP-1559 transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// A JSON-RPC quantity (`0x…`).
pub fn quantity(v: &Value) -> Result<u128, RpcError> {
    let s = v
        .as_str()
        .ok_or_else(|| RpcError::Malformed(format!("expected a quantity, got {v}")))?;
    u128::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| RpcError::Malformed(format!("quantity {s}: {e}")))
}

/// A signed transaction: its raw bytes and hash.
#[derive(Debug, Clone)]
pub struct SignedTx {
    pub raw: Bytes,
    pub hash: B256,
}

/// Signs an EIP-1559 call.
pub fn sign(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    gas_limit: u64,
    fees: Fees,
    to: Address,
    input: Bytes,
) -> Result<SignedTx, alloy::signers::Error> {
    let mut tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: TxKind::Call(to),
        value: U256::ZERO,
        access_list: Default::default(),
        input,
    };
    let signature = signer.sign_transaction_sync(&mut tx)?;
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    Ok(SignedTx {
        raw: envelope.encoded_2718().into(),
        hash: *envelope.tx_hash(),
    })
}

/// Adds the safety margin to an estimate: 25% plus 20k.
pub fn with_margin(estimate: u64) -> u64 {
    estimate.saturating_add(estimate / 4).saturating_add(20_000)
}
