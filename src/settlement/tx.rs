//! Building, pricing and signing settlement transactions.

use alloy::consensus::TxEnvelope;
use alloy::primitives::{Address, Bytes};
use alloy::sol_types::SolCall;
use serde_json::json;

use super::fees::Fees;
use crate::chain::bindings::{IMulticall3, MULTICALL3};
use crate::chain::settler;
pub use crate::chain::tx::{SignedTx, quantity, sign, with_margin};
use crate::chain::{RpcCall, RpcClient, RpcError};
use crate::ledger::Payment;

/// One payment's calls, as the batch will make them.
#[derive(Debug, Clone)]
pub struct ItemCalls {
    /// Where `transfer` goes: the token (EIP-3009) or a Permit2 proxy.
    pub target: Address,
    pub deploy: Option<(Address, Bytes)>,
    pub transfer: Bytes,
    /// The only gas wallet that may send it (the upto proxy checks `msg.sender`): such an item
    /// goes alone, straight to its target, never through Multicall3.
    pub sender: Option<Address>,
}

impl ItemCalls {
    pub fn of(p: &Payment) -> ItemCalls {
        ItemCalls {
            target: p.call_target,
            deploy: p.deploy.as_ref().map(|d| (d.factory, d.calldata.clone())),
            transfer: p.transfer_calldata.clone(),
            sender: p.sender,
        }
    }
}

/// Where a batch transaction goes and what it carries.
#[derive(Debug, Clone)]
pub struct BatchCall {
    pub to: Address,
    pub input: Bytes,
    /// The same batch with every call required to succeed: what we estimate gas on (an
    /// `allowFailure=true` batch can be estimated far too low: the inner calls then run out of gas
    /// silently while the transaction succeeds).
    pub strict_input: Bytes,
}

/// A batch of one plain transfer goes straight to the token (cheaper); EIP-3009 payments of one
/// token go through our batch settler when the chain has one (`settler`, packed calldata);
/// anything else goes through Multicall3 with `allowFailure=true` so one failed item cannot sink
/// the others.
pub fn batch_call(items: &[ItemCalls], settler: Option<Address>) -> BatchCall {
    if let [only] = items
        && only.deploy.is_none()
    {
        return BatchCall {
            to: only.target,
            input: only.transfer.clone(),
            strict_input: only.transfer.clone(),
        };
    }
    if let Some(call) = settler.and_then(|s| packed_call(s, items)) {
        return call;
    }
    let calls = |allow_failure: bool| {
        let mut calls = Vec::new();
        for item in items {
            if let Some((factory, data)) = &item.deploy {
                calls.push(IMulticall3::Call3 {
                    target: *factory,
                    allowFailure: true,
                    callData: data.clone(),
                });
            }
            calls.push(IMulticall3::Call3 {
                target: item.target,
                allowFailure: allow_failure,
                callData: item.transfer.clone(),
            });
        }
        Bytes::from(IMulticall3::aggregate3Call { calls }.abi_encode())
    };
    BatchCall {
        to: MULTICALL3,
        input: calls(true),
        strict_input: calls(false),
    }
}

/// The batch through our settler, if every item is a plain EIP-3009 transfer of one token that
/// fits its packed widths.
fn packed_call(settler: Address, items: &[ItemCalls]) -> Option<BatchCall> {
    let token = items.first()?.target;
    if items
        .iter()
        .any(|i| i.target != token || i.deploy.is_some() || i.sender.is_some())
    {
        return None;
    }
    let auths = settler::authorizations(items.iter().map(|i| i.transfer.as_ref()))?;
    Some(BatchCall {
        to: settler,
        input: settler::calldata(token, &auths, false)?,
        strict_input: settler::calldata(token, &auths, true)?,
    })
}

/// The simulation of one item: its transfer, after its deployment when it has one.
pub fn simulation(item: &ItemCalls) -> RpcCall {
    match (&item.deploy, item.sender) {
        (None, Some(sender)) => RpcCall::call_from(sender, item.target, item.transfer.clone()),
        (None, None) => RpcCall::call(item.target, item.transfer.clone()),
        (Some((factory, data)), _) => {
            let calls = vec![
                IMulticall3::Call3 {
                    target: *factory,
                    allowFailure: true,
                    callData: data.clone(),
                },
                IMulticall3::Call3 {
                    target: item.target,
                    allowFailure: false,
                    callData: item.transfer.clone(),
                },
            ];
            RpcCall::call(
                MULTICALL3,
                IMulticall3::aggregate3Call { calls }.abi_encode(),
            )
        }
    }
}

/// Gas for a batch when estimation is impossible: a generous per-item model (measured: ~50k per
/// item on FiatToken, ~92k for a batch of one, ~17k more for a new payee).
pub fn modelled_gas(items: &[ItemCalls]) -> u64 {
    let deploys = items.iter().filter(|i| i.deploy.is_some()).count() as u64;
    60_000 + 80_000 * items.len() as u64 + 300_000 * deploys
}

/// Intrinsic gas of a transaction.
pub const TX_BASE_GAS: u64 = 21_000;

/// Extra gas an item may need beyond what we learned: a payee with an empty balance slot costs ~17k
/// more than a funded one.
pub const NEW_PAYEE_ALLOWANCE: u64 = 25_000;

/// Gas for `n` plain items from the largest per-item gas seen in our receipts, with margin.
pub fn learned_gas(n: usize, per_item: u64) -> u64 {
    with_margin(TX_BASE_GAS + 10_000 + n as u64 * (per_item + NEW_PAYEE_ALLOWANCE))
}

pub async fn estimate_gas(
    rpc: &RpcClient,
    from: Address,
    to: Address,
    input: &Bytes,
) -> Result<Option<u64>, RpcError> {
    let call = RpcCall {
        method: "eth_estimateGas",
        params: json!([{"from": from, "to": to, "data": input}]),
    };
    Ok(match rpc.request(call).await? {
        Ok(v) => Some(quantity(&v)? as u64),
        Err(_) => None,
    })
}

/// What a stored settlement transaction calls, with what gas and fees: enough to sign it again
/// (a replacement, or the same batch at a fresh nonce).
#[derive(Debug, Clone)]
pub struct Unsigned {
    pub to: Address,
    pub input: Bytes,
    pub gas_limit: u64,
    pub fees: Fees,
}

/// Decodes a stored raw EIP-1559 transaction.
pub fn decode(raw: &[u8]) -> Option<Unsigned> {
    use alloy::eips::eip2718::Decodable2718;
    match TxEnvelope::decode_2718(&mut &raw[..]).ok()? {
        TxEnvelope::Eip1559(signed) => {
            let tx = signed.tx();
            Some(Unsigned {
                to: tx.to.to().copied()?,
                input: tx.input.clone(),
                gas_limit: tx.gas_limit,
                fees: Fees {
                    max_fee_per_gas: tx.max_fee_per_gas,
                    max_priority_fee_per_gas: tx.max_priority_fee_per_gas,
                },
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;

    #[test]
    fn a_single_plain_transfer_goes_direct() {
        let item = ItemCalls {
            target: Address::repeat_byte(1),
            deploy: None,
            transfer: Bytes::from(vec![1, 2]),
            sender: None,
        };
        let call = batch_call(std::slice::from_ref(&item), None);
        assert_eq!(call.to, item.target);
        let two = batch_call(&[item.clone(), item], None);
        assert_eq!(two.to, MULTICALL3);
        assert_ne!(two.input, two.strict_input);
    }

    #[test]
    fn eip3009_batches_of_one_token_take_the_settler_and_the_rest_multicall3() {
        use crate::chain::bindings::IEip3009Token::{
            transferWithAuthorization_0Call as Vrs, transferWithAuthorization_1Call as Sig,
        };
        use alloy::primitives::{B256, U256};
        let token = Address::repeat_byte(1);
        let vrs = |i: u8| ItemCalls {
            target: token,
            deploy: None,
            transfer: Vrs {
                from: Address::repeat_byte(i),
                to: Address::repeat_byte(2),
                value: U256::from(1000u64),
                validAfter: U256::ZERO,
                validBefore: U256::from(2_000_000_000u64),
                nonce: B256::repeat_byte(i),
                v: 27,
                r: B256::repeat_byte(3),
                s: B256::repeat_byte(4),
            }
            .abi_encode()
            .into(),
            sender: None,
        };
        let settler_at = Address::repeat_byte(0x5e);
        let packed = batch_call(&[vrs(1), vrs(2)], Some(settler_at));
        assert_eq!(packed.to, settler_at);
        assert_eq!(packed.input.len(), 21 + 2 * settler::ITEM_LEN);
        assert_eq!((packed.input[0], packed.strict_input[0]), (0, 1));
        // Without a settler, or with anything it cannot carry: Multicall3.
        assert_eq!(batch_call(&[vrs(1), vrs(2)], None).to, MULTICALL3);
        let mut other_token = vrs(3);
        other_token.target = Address::repeat_byte(9);
        assert_eq!(
            batch_call(&[vrs(1), other_token], Some(settler_at)).to,
            MULTICALL3
        );
        let mut wallet = vrs(4);
        wallet.transfer = Sig {
            from: Address::repeat_byte(4),
            to: Address::repeat_byte(2),
            value: U256::from(1000u64),
            validAfter: U256::ZERO,
            validBefore: U256::from(2_000_000_000u64),
            nonce: B256::repeat_byte(4),
            signature: vec![0u8; 100].into(),
        }
        .abi_encode()
        .into();
        assert_eq!(
            batch_call(&[vrs(1), wallet], Some(settler_at)).to,
            MULTICALL3
        );
        let mut deploying = vrs(5);
        deploying.deploy = Some((Address::repeat_byte(7), Bytes::from(vec![1])));
        assert_eq!(
            batch_call(&[vrs(1), deploying], Some(settler_at)).to,
            MULTICALL3
        );
    }

    #[test]
    fn margin() {
        assert_eq!(with_margin(100_000), 145_000);
    }

    #[test]
    fn a_signed_transaction_decodes_back_to_what_was_signed() {
        let signer = PrivateKeySigner::random();
        let fees = Fees {
            max_fee_per_gas: 7,
            max_priority_fee_per_gas: 3,
        };
        let to = Address::repeat_byte(9);
        let signed = sign(
            &signer,
            8453,
            4,
            100_000,
            fees,
            to,
            Bytes::from(vec![1, 2, 3]),
        )
        .unwrap();
        let back = decode(&signed.raw).unwrap();
        assert_eq!((back.to, back.gas_limit, back.fees), (to, 100_000, fees));
        assert_eq!(back.input, Bytes::from(vec![1, 2, 3]));
        assert!(decode(&[0x02, 0x01]).is_none());
    }
}
