//! Our batch-settlement contract (contracts/src/X402BatchSettler.sol): its calldata, its answer,
//! and its deployment at one CREATE2 address on every chain.
//!
//! It carries a batch of EIP-3009 `transferWithAuthorization(…, v, r, s)` calls of one token in
//! 159 bytes per payment where Multicall3 `aggregate3` needs 480; a batch it cannot carry
//! (several tokens, smart-wallet signatures, deployments, Permit2) goes through Multicall3.

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256, address};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;

use super::bindings::IEip3009Token::transferWithAuthorization_0Call as Authorization;

/// The compiled contract (rebuilt and checked by contracts/check.sh).
pub const ARTIFACT: &str = include_str!("../../contracts/out/X402BatchSettler.json");

/// The deterministic deployment proxy (`salt ‖ initcode` in, CREATE2 out), at this address on
/// Base, Base Sepolia, most EVM chains, and on anvil by default.
pub const CREATE2_DEPLOYER: Address = address!("4e59b44847b379578588920ca78fbf26c0b4956c");

/// Our CREATE2 salt: with the same bytecode, the same address everywhere.
pub const SALT: B256 = B256::ZERO;

/// Bytes of one item in the calldata.
pub const ITEM_LEN: usize = 159;

/// Flags byte and token before the items.
const HEAD_LEN: usize = 21;

#[derive(Debug, thiserror::Error)]
pub enum SettlerError {
    #[error("contract artifact: {0}")]
    Artifact(String),
    #[error("chain: {0}")]
    Chain(String),
    #[error(
        "no CREATE2 deployer at {CREATE2_DEPLOYER} on this chain: deploy it first (https://github.com/Arachnid/deterministic-deployment-proxy)"
    )]
    NoDeployer,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    bytecode: String,
    deployed_bytecode: String,
}

fn artifact(json: &str) -> Result<Artifact, SettlerError> {
    serde_json::from_str(json).map_err(|e| SettlerError::Artifact(e.to_string()))
}

fn hex_code(hex: &str) -> Result<Bytes, SettlerError> {
    alloy::hex::decode(hex.trim_start_matches("0x"))
        .map(Into::into)
        .map_err(|e| SettlerError::Artifact(e.to_string()))
}

/// Creation bytecode of a compiled artifact of contracts/out.
pub fn creation_code(json: &str) -> Result<Bytes, SettlerError> {
    hex_code(&artifact(json)?.bytecode)
}

/// Runtime bytecode of a compiled artifact of contracts/out.
pub fn runtime_code(json: &str) -> Result<Bytes, SettlerError> {
    hex_code(&artifact(json)?.deployed_bytecode)
}

/// Where [`deploy`] puts the contract on any chain.
pub fn address() -> Result<Address, SettlerError> {
    Ok(CREATE2_DEPLOYER.create2_from_code(SALT, creation_code(ARTIFACT)?))
}

/// The calldata settling `items` (all of `token`), or `None` when one does not fit the packed
/// widths (a value of 2^96 or more, a time of 2^40 or more): such a batch goes through Multicall3.
/// `strict`: the contract reverts with the first failing item's revert data (what gas is
/// estimated on: a batch allowed to fail can be estimated far too low).
pub fn calldata(token: Address, items: &[Authorization], strict: bool) -> Option<Bytes> {
    let mut out = Vec::with_capacity(HEAD_LEN + ITEM_LEN * items.len());
    out.push(u8::from(strict));
    out.extend_from_slice(token.as_slice());
    for a in items {
        out.extend_from_slice(a.from.as_slice());
        out.extend_from_slice(a.to.as_slice());
        out.extend_from_slice(low_bytes::<12>(a.value)?.as_slice());
        out.extend_from_slice(low_bytes::<5>(a.validAfter)?.as_slice());
        out.extend_from_slice(low_bytes::<5>(a.validBefore)?.as_slice());
        out.extend_from_slice(a.nonce.as_slice());
        out.push(a.v);
        out.extend_from_slice(a.r.as_slice());
        out.extend_from_slice(a.s.as_slice());
    }
    Some(out.into())
}

/// The low `N` big-endian bytes of `v`, if `v` fits in them.
fn low_bytes<const N: usize>(v: U256) -> Option<[u8; N]> {
    let be = v.to_be_bytes::<32>();
    let (high, low) = be.split_at(32 - N);
    if high.iter().any(|b| *b != 0) {
        return None;
    }
    low.try_into().ok()
}

/// The items of a token's `transferWithAuthorization(…, v, r, s)` calldata, if every one is that.
pub fn authorizations<'a>(calls: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<Authorization>> {
    calls
        .into_iter()
        .map(|c| Authorization::abi_decode(c).ok())
        .collect()
}

/// Which of `n` items succeeded, from the contract's answer (a bitmap, bit i of word i / 256).
pub fn succeeded(answer: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let byte = (i / 256) * 32 + 31 - (i % 256) / 8;
            answer.get(byte).is_some_and(|b| b >> (i % 8) & 1 == 1)
        })
        .collect()
}

/// What the CREATE2 deployer is sent to put the contract at [`address`].
pub fn deployment_input() -> Result<Bytes, SettlerError> {
    let mut input = SALT.to_vec();
    input.extend_from_slice(&creation_code(ARTIFACT)?);
    Ok(input.into())
}

/// What [`deploy`] did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub address: Address,
    /// The deployment's transaction; none when the contract was already there.
    pub transaction: Option<B256>,
}

/// Deploys the contract through the CREATE2 deployer from `signer`'s account (idempotent: when its
/// code is already at [`address`], nothing is sent), and checks the code that is there.
pub async fn deploy(rpc_url: &str, signer: PrivateKeySigner) -> Result<Deployment, SettlerError> {
    let chain = |e: &dyn std::fmt::Display| SettlerError::Chain(e.to_string());
    let url: reqwest::Url = rpc_url.parse().map_err(|e| chain(&e))?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url);
    let at = address()?;
    let expected = runtime_code(ARTIFACT)?;
    let code = provider.get_code_at(at).await.map_err(|e| chain(&e))?;
    let transaction = if code.is_empty() {
        let deployer = provider
            .get_code_at(CREATE2_DEPLOYER)
            .await
            .map_err(|e| chain(&e))?;
        if deployer.is_empty() {
            return Err(SettlerError::NoDeployer);
        }
        let tx = TransactionRequest::default()
            .with_to(CREATE2_DEPLOYER)
            .with_input(deployment_input()?);
        let receipt = provider
            .send_transaction(tx)
            .await
            .map_err(|e| chain(&e))?
            .get_receipt()
            .await
            .map_err(|e| chain(&e))?;
        if !receipt.status() {
            return Err(SettlerError::Chain(format!(
                "the deployment {} reverted",
                receipt.transaction_hash
            )));
        }
        Some(receipt.transaction_hash)
    } else {
        None
    };
    let code = provider.get_code_at(at).await.map_err(|e| chain(&e))?;
    if code != expected {
        return Err(SettlerError::Chain(format!(
            "the code at {at} is not this build's batch settler"
        )));
    }
    Ok(Deployment {
        address: at,
        transaction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(i: u8) -> Authorization {
        Authorization {
            from: Address::repeat_byte(i),
            to: Address::repeat_byte(0xee),
            value: U256::from(1_000_000u64 + u64::from(i)),
            validAfter: U256::from(1_700_000_000u64),
            validBefore: U256::from(1_700_000_600u64),
            nonce: B256::repeat_byte(i ^ 0x55),
            v: 27 + (i & 1),
            r: B256::repeat_byte(0x11),
            s: B256::repeat_byte(0x22),
        }
    }

    #[test]
    fn items_are_packed_at_fixed_offsets() {
        let token = Address::repeat_byte(0x0c);
        let items = [auth(1), auth(2)];
        let data = calldata(token, &items, true).unwrap();
        assert_eq!(data.len(), HEAD_LEN + 2 * ITEM_LEN);
        assert_eq!(data[0], 1);
        assert_eq!(&data[1..21], token.as_slice());
        let second = &data[HEAD_LEN + ITEM_LEN..];
        assert_eq!(&second[..20], items[1].from.as_slice());
        assert_eq!(&second[20..40], items[1].to.as_slice());
        assert_eq!(U256::from_be_slice(&second[40..52]), items[1].value);
        assert_eq!(U256::from_be_slice(&second[52..57]), items[1].validAfter);
        assert_eq!(U256::from_be_slice(&second[57..62]), items[1].validBefore);
        assert_eq!(&second[62..94], items[1].nonce.as_slice());
        assert_eq!(second[94], items[1].v);
        assert_eq!(&second[95..127], items[1].r.as_slice());
        assert_eq!(&second[127..159], items[1].s.as_slice());
        assert_eq!(calldata(token, &items, false).unwrap()[0], 0);
    }

    #[test]
    fn what_does_not_fit_is_not_packed() {
        let token = Address::repeat_byte(0x0c);
        let mut big = auth(1);
        big.value = U256::from(1u8) << 96;
        assert!(calldata(token, &[auth(2), big], false).is_none());
        let mut forever = auth(1);
        forever.validBefore = U256::MAX;
        assert!(calldata(token, &[forever], false).is_none());
        let mut edge = auth(1);
        edge.value = (U256::from(1u8) << 96) - U256::from(1u8);
        edge.validBefore = (U256::from(1u8) << 40) - U256::from(1u8);
        assert!(calldata(token, &[edge], false).is_some());
    }

    #[test]
    fn only_vrs_authorizations_are_taken() {
        let vrs = auth(3).abi_encode();
        let bytes_sig = super::super::bindings::IEip3009Token::transferWithAuthorization_1Call {
            from: Address::ZERO,
            to: Address::ZERO,
            value: U256::ZERO,
            validAfter: U256::ZERO,
            validBefore: U256::ZERO,
            nonce: B256::ZERO,
            signature: Bytes::from(vec![0u8; 65]),
        }
        .abi_encode();
        let got = authorizations([vrs.as_slice()]).unwrap();
        assert_eq!(got[0].nonce, auth(3).nonce);
        assert!(authorizations([vrs.as_slice(), bytes_sig.as_slice()]).is_none());
    }

    #[test]
    fn the_bitmap_answers_each_item() {
        let mut answer = vec![0u8; 64];
        // Items 0, 9 and 256 succeeded.
        answer[31] |= 1;
        answer[30] |= 1 << 1;
        answer[63] |= 1;
        let got = succeeded(&answer, 258);
        let ok: Vec<usize> = (0..258).filter(|i| got[*i]).collect();
        assert_eq!(ok, vec![0, 9, 256]);
        assert_eq!(succeeded(&[], 2), vec![false, false]);
    }

    #[test]
    fn the_address_is_the_create2_of_the_artifact() {
        let a = address().unwrap();
        assert_ne!(a, Address::ZERO);
        assert_eq!(address().unwrap(), a);
    }
}
