//! Typed ledger rows. The database stores addresses, hashes and amounts as lower-case 0x hex text
//! (the same on both backends); they are converted here, once, and nowhere else.

use std::str::FromStr;

use alloy::primitives::{Address, B256, Bytes, U256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::LedgerError;
use super::state::PaymentState;

/// Status of a settlement transaction (one signed attempt at one nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Signed and stored, not yet known to be broadcast.
    Signed,
    Broadcast,
    Mined,
    /// Mined but reverted as a whole.
    Reverted,
    /// Never mined: the node refused it, or its nonce went to a transaction we did not send.
    Dropped,
    /// Another attempt for the same batch was mined, or it was signed again at a fresh nonce.
    Replaced,
    /// Mined, then un-included by a reorg.
    Reorged,
}

impl TxStatus {
    const ALL: [TxStatus; 7] = [
        TxStatus::Signed,
        TxStatus::Broadcast,
        TxStatus::Mined,
        TxStatus::Reverted,
        TxStatus::Dropped,
        TxStatus::Replaced,
        TxStatus::Reorged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Signed => "signed",
            TxStatus::Broadcast => "broadcast",
            TxStatus::Mined => "mined",
            TxStatus::Reverted => "reverted",
            TxStatus::Dropped => "dropped",
            TxStatus::Replaced => "replaced",
            TxStatus::Reorged => "reorged",
        }
    }
}

impl FromStr for TxStatus {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, LedgerError> {
        TxStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown tx status {s:?}")))
    }
}

/// The contract call that deploys a counterfactual (ERC-6492) wallet before its transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub factory: Address,
    pub calldata: Bytes,
}

/// How a payment's transfer runs on chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The token's `transferWithAuthorization`; the receipt shows `AuthorizationUsed`.
    Eip3009,
    /// Permit2 through the x402 exact proxy; the receipt shows the token's `Transfer`.
    Permit2,
    /// Permit2 through the x402 upto proxy, sent by the gas wallet the witness names.
    Upto,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Eip3009 => "eip3009",
            Method::Permit2 => "permit2",
            Method::Upto => "upto",
        }
    }
}

impl FromStr for Method {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "eip3009" => Ok(Method::Eip3009),
            "permit2" => Ok(Method::Permit2),
            "upto" => Ok(Method::Upto),
            _ => Err(()),
        }
    }
}

/// A payment to claim.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub chain_id: u64,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
    pub pay_to: Address,
    pub amount: U256,
    pub valid_before: u64,
    /// Identifies the exact signed payload, to tell a retry from a different payload for the same key.
    pub payload_digest: B256,
    pub x402_version: u8,
    pub network: String,
    pub request_json: String,
    pub deploy: Option<Deploy>,
    pub transfer_calldata: Bytes,
    /// The API key that submitted it (`None`: an anonymous caller of a public node).
    pub api_key: Option<String>,
    pub method: Method,
    /// The contract `transfer_calldata` is for: the token, or a Permit2 proxy.
    pub call_target: Address,
    /// The gas wallet that must send it (upto binds one); `None`: any lane, in any batch.
    pub sender: Option<Address>,
}

/// A payment as stored.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: i64,
    pub chain_id: u64,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
    pub pay_to: Address,
    pub amount: U256,
    pub valid_before: u64,
    pub payload_digest: B256,
    pub request_json: String,
    pub deploy: Option<Deploy>,
    pub transfer_calldata: Bytes,
    pub method: Method,
    /// The contract `transfer_calldata` is for: the token, or a Permit2 proxy.
    pub call_target: Address,
    /// The gas wallet that must send it; `None`: any lane, in any batch.
    pub sender: Option<Address>,
    pub state: PaymentState,
    pub fail_reason: Option<String>,
    pub fail_message: Option<String>,
    pub batch_id: Option<i64>,
    pub tx_hash: Option<B256>,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    /// Times it went back to the queue after being in a broadcast transaction.
    pub attempts: u32,
    pub created_at: i64,
}

/// A signed settlement transaction to record.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub chain_id: u64,
    pub wallet: Address,
    pub nonce: u64,
    pub raw_tx: Bytes,
    pub tx_hash: B256,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// A settlement transaction as stored.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub id: i64,
    pub batch_id: i64,
    pub chain_id: u64,
    pub wallet: Address,
    pub nonce: u64,
    pub raw_tx: Bytes,
    pub tx_hash: B256,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    pub status: TxStatus,
    pub gas_used: Option<u64>,
    pub effective_gas_price: Option<u128>,
    pub l1_fee: Option<U256>,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub created_at: i64,
}

impl Transaction {
    /// What it cost the gas wallet, in wei: L2 execution plus the L1 data fee where there is one.
    pub fn cost_wei(&self) -> Option<U256> {
        let gas = U256::from(self.gas_used?);
        let price = U256::from(self.effective_gas_price?);
        Some(gas * price + self.l1_fee.unwrap_or_default())
    }
}

/// What a mined transaction's receipt said.
#[derive(Debug, Clone)]
pub struct MinedTx {
    pub succeeded: bool,
    pub block_number: u64,
    pub block_hash: B256,
    pub gas_used: u64,
    pub effective_gas_price: u128,
    /// The OP Stack L1 data fee, when the receipt carries one.
    pub l1_fee: Option<U256>,
}

/// Lower-case 0x hex, the stored form of addresses, hashes and byte strings.
pub(super) fn hex(b: &[u8]) -> String {
    format!("0x{}", alloy::hex::encode(b))
}

pub(super) fn u64_of(row: &AnyRow, col: &str) -> Result<u64, LedgerError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| LedgerError::Corrupt(format!("{col} is negative")))
}

pub(super) fn opt_u64_of(row: &AnyRow, col: &str) -> Result<Option<u64>, LedgerError> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u64::try_from(v).ok()))
}

pub(super) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn parsed<T: FromStr>(row: &AnyRow, col: &str) -> Result<T, LedgerError> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|_| LedgerError::Corrupt(format!("{col} {s:?}")))
}

pub(super) fn opt_parsed<T: FromStr>(row: &AnyRow, col: &str) -> Result<Option<T>, LedgerError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| {
        s.parse()
            .map_err(|_| LedgerError::Corrupt(format!("{col} {s:?}")))
    })
    .transpose()
}

fn bytes_of(row: &AnyRow, col: &str) -> Result<Bytes, LedgerError> {
    let s: String = row.try_get(col)?;
    alloy::hex::decode(s.trim_start_matches("0x"))
        .map(Into::into)
        .map_err(|e| LedgerError::Corrupt(format!("{col}: {e}")))
}

pub(super) const PAYMENT_COLUMNS: &str = "id, chain_id, asset, payer, nonce, pay_to, amount, valid_before, payload_digest, request_json, \
     deploy_target, deploy_calldata, transfer_calldata, state, fail_reason, fail_message, batch_id, tx_hash, block_number, \
     block_hash, attempts, created_at, method, call_target, sender";

pub(super) const TX_COLUMNS: &str = "id, batch_id, chain_id, wallet, nonce, raw_tx, tx_hash, gas_limit, max_fee_per_gas, \
     max_priority_fee_per_gas, status, gas_used, effective_gas_price, l1_fee, block_number, block_hash, created_at";

pub(super) fn payment_of(row: &AnyRow) -> Result<Payment, LedgerError> {
    let deploy = match opt_parsed::<Address>(row, "deploy_target")? {
        Some(factory) => Some(Deploy {
            factory,
            calldata: bytes_of(row, "deploy_calldata")?,
        }),
        None => None,
    };
    let asset: Address = parsed(row, "asset")?;
    Ok(Payment {
        id: row.try_get("id")?,
        chain_id: u64_of(row, "chain_id")?,
        asset,
        payer: parsed(row, "payer")?,
        nonce: parsed(row, "nonce")?,
        pay_to: parsed(row, "pay_to")?,
        amount: parsed(row, "amount")?,
        valid_before: u64_of(row, "valid_before")?,
        payload_digest: parsed(row, "payload_digest")?,
        request_json: row.try_get("request_json")?,
        deploy,
        transfer_calldata: bytes_of(row, "transfer_calldata")?,
        method: parsed(row, "method")?,
        call_target: opt_parsed(row, "call_target")?.unwrap_or(asset),
        sender: opt_parsed(row, "sender")?,
        state: parsed(row, "state")?,
        fail_reason: row.try_get("fail_reason")?,
        fail_message: row.try_get("fail_message")?,
        batch_id: row.try_get("batch_id")?,
        tx_hash: opt_parsed(row, "tx_hash")?,
        block_number: opt_u64_of(row, "block_number")?,
        block_hash: opt_parsed(row, "block_hash")?,
        attempts: u32::try_from(u64_of(row, "attempts")?).unwrap_or(u32::MAX),
        created_at: row.try_get("created_at")?,
    })
}

pub(super) fn transaction_of(row: &AnyRow) -> Result<Transaction, LedgerError> {
    Ok(Transaction {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        chain_id: u64_of(row, "chain_id")?,
        wallet: parsed(row, "wallet")?,
        nonce: u64_of(row, "nonce")?,
        // A damaged copy must not hide the row: the transaction is still watched by its hash.
        raw_tx: bytes_of(row, "raw_tx").unwrap_or_else(|e| {
            tracing::error!(error = %e, "a stored settlement transaction's raw bytes are unreadable");
            Bytes::new()
        }),
        tx_hash: parsed(row, "tx_hash")?,
        gas_limit: u64_of(row, "gas_limit")?,
        max_fee_per_gas: parsed(row, "max_fee_per_gas")?,
        max_priority_fee_per_gas: parsed(row, "max_priority_fee_per_gas")?,
        status: parsed(row, "status")?,
        gas_used: opt_u64_of(row, "gas_used")?,
        effective_gas_price: opt_parsed(row, "effective_gas_price")?,
        l1_fee: opt_parsed(row, "l1_fee")?,
        block_number: opt_u64_of(row, "block_number")?,
        block_hash: opt_parsed(row, "block_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in TxStatus::ALL {
            assert_eq!(s.as_str().parse::<TxStatus>().unwrap(), s);
        }
    }

    #[test]
    fn cost_includes_the_l1_fee() {
        let t = Transaction {
            id: 1,
            batch_id: 1,
            chain_id: 8453,
            wallet: Address::ZERO,
            nonce: 0,
            raw_tx: Bytes::new(),
            tx_hash: B256::ZERO,
            gas_limit: 0,
            max_fee_per_gas: 0,
            max_priority_fee_per_gas: 0,
            status: TxStatus::Mined,
            gas_used: Some(100),
            effective_gas_price: Some(3),
            l1_fee: Some(U256::from(7)),
            block_number: None,
            block_hash: None,
            created_at: 0,
        };
        assert_eq!(t.cost_wei(), Some(U256::from(307)));
    }
}
