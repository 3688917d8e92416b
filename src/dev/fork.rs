//! `x402d dev --fork-url`: anvil forking a live chain (Base, Base Sepolia or any EVM chain), with
//! the real token already deployed there. No code is replaced: the token's EIP-712 name and
//! version are read from the chain (and checked against its `DOMAIN_SEPARATOR()`), payers are
//! funded by writing their balance slot (found by probing, as no two token layouts agree), and
//! the gas wallets get ETH.

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::{Eip712Domain, SolCall, SolValue};

use super::chain::{DevChainError, chain_err};
use crate::chain::bindings::IEip3009Token;

alloy::sol! {
    interface IErc20Metadata {
        function decimals() external view returns (uint8);
        function symbol() external view returns (string);
    }
}

/// What the forked chain says of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkedToken {
    pub address: Address,
    pub name: String,
    pub version: String,
    pub decimals: u8,
    pub symbol: String,
}

/// Where a token keeps `balanceOf(account)`: the mapping's slot and the key order of its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceSlot {
    pub slot: u64,
    /// Solidity hashes `key ‖ slot`; Vyper (before 0.3.8 layouts) hashes `slot ‖ key`.
    pub vyper: bool,
}

impl BalanceSlot {
    fn key(self, account: Address) -> U256 {
        let hashed = if self.vyper {
            keccak256((U256::from(self.slot), account).abi_encode())
        } else {
            keccak256((account, U256::from(self.slot)).abi_encode())
        };
        U256::from_be_bytes(hashed.0)
    }
}

/// Slots probed for the balances mapping: every layout we know of puts it well below this
/// (FiatToken V2_2 uses 9; OpenZeppelin ERC-20 0).
const PROBED_SLOTS: u64 = 64;

async fn view<C: SolCall>(
    p: &DynProvider,
    to: Address,
    call: C,
) -> Result<C::Return, DevChainError> {
    let tx = TransactionRequest::default()
        .with_to(to)
        .with_input(call.abi_encode());
    let out = p.call(tx).await.map_err(chain_err)?;
    C::abi_decode_returns(&out).map_err(chain_err)
}

/// Reads `token`'s EIP-712 domain from the chain and checks it: the separator computed from
/// `name()`, `version()`, the chain id and the address must be the token's `DOMAIN_SEPARATOR()`,
/// or payments signed against it would never verify.
///
/// # Errors
/// When there is no contract at `token`, a read fails, or the separators differ.
pub async fn read_token(
    p: &DynProvider,
    chain_id: u64,
    token: Address,
) -> Result<ForkedToken, DevChainError> {
    if p.get_code_at(token).await.map_err(chain_err)?.is_empty() {
        return Err(chain_err(format!(
            "no contract at {token} on the forked chain (chain id {chain_id}): pass --fork-token"
        )));
    }
    let name = view(p, token, IEip3009Token::nameCall {}).await?;
    let version = view(p, token, IEip3009Token::versionCall {}).await?;
    let decimals = view(p, token, IErc20Metadata::decimalsCall {}).await?;
    let symbol = view(p, token, IErc20Metadata::symbolCall {}).await?;
    let on_chain: B256 = view(p, token, IEip3009Token::DOMAIN_SEPARATORCall {}).await?;
    let ours = Eip712Domain::new(
        Some(name.clone().into()),
        Some(version.clone().into()),
        Some(U256::from(chain_id)),
        Some(token),
        None,
    )
    .separator();
    if ours != on_chain {
        return Err(chain_err(format!(
            "{token}: DOMAIN_SEPARATOR() is {on_chain}, but name {name:?}, version {version:?} \
             and chain id {chain_id} give {ours}: not an EIP-3009 token we can sign for"
        )));
    }
    Ok(ForkedToken {
        address: token,
        name,
        version,
        decimals,
        symbol,
    })
}

/// Finds `token`'s balances mapping by writing a marker into each candidate slot of a fresh
/// account and reading `balanceOf` back (every probe is undone).
///
/// # Errors
/// When no candidate slot moves the balance.
pub async fn probe_balance_slot(
    p: &DynProvider,
    token: Address,
) -> Result<BalanceSlot, DevChainError> {
    let probe = Address::random();
    // Below 2^255: FiatToken V2_2 keeps its blacklist flag in the top bit of the balance word.
    let marker = U256::from(0x5eed_1234_5678_u64);
    for slot in 0..PROBED_SLOTS {
        for vyper in [false, true] {
            let candidate = BalanceSlot { slot, vyper };
            let key = candidate.key(probe);
            let before = p.get_storage_at(token, key).await.map_err(chain_err)?;
            p.anvil_set_storage_at(token, key, B256::from(marker))
                .await
                .map_err(chain_err)?;
            let seen = view(p, token, IEip3009Token::balanceOfCall { account: probe }).await;
            p.anvil_set_storage_at(token, key, B256::from(before))
                .await
                .map_err(chain_err)?;
            if seen? == marker {
                return Ok(candidate);
            }
        }
    }
    Err(chain_err(format!(
        "could not find the balances mapping of {token} in its first {PROBED_SLOTS} storage slots"
    )))
}

/// Sets `account`'s token balance to `amount` through the storage cheat, and checks it took.
///
/// # Errors
/// When the write fails or `balanceOf` disagrees afterwards.
pub async fn set_token_balance(
    p: &DynProvider,
    token: Address,
    slot: BalanceSlot,
    account: Address,
    amount: U256,
) -> Result<(), DevChainError> {
    p.anvil_set_storage_at(token, slot.key(account), B256::from(amount))
        .await
        .map_err(chain_err)?;
    let seen = view(p, token, IEip3009Token::balanceOfCall { account }).await?;
    if seen != amount {
        return Err(chain_err(format!(
            "{token}: balance of {account} is {seen} after setting {amount}"
        )));
    }
    Ok(())
}
