//! What becomes of a payment that cannot be sent now, that its transaction did not settle, or that a
//! reorg un-included. Each judgment ends in one ledger transition.

use alloy::primitives::{B256, U256};
use alloy::sol_types::{SolCall, SolEvent};
use serde_json::json;

use super::watcher::Receipt;
use super::{ChainCtx, StepError, ms_from_now};
use crate::chain::bindings::{IEip3009Token, IPermit2};
use crate::chain::rpc::hex_result;
use crate::chain::{RpcCall, RpcError};
use crate::exact;
use crate::exact::permit2::{Permit2Payment, Scheme};
use crate::ledger::{Inclusion, Method, Payment, Transition};
use crate::protocol::wire::{Eip3009Authorization, Permit2Payload};
use crate::protocol::{PaymentBody, Reason, parse_facilitator_request};

/// A payment back in the queue this many times after broadcasts is failed.
const MAX_ATTEMPTS: u32 = 4;

/// The item's simulation reverted before any broadcast of this attempt: refused (its key freed)
/// if it was never in a broadcast transaction, failed if it was; settled if someone else settled
/// it. An RPC failure while diagnosing is returned, and the caller defers the item.
pub(super) async fn unsendable(ctx: &ChainCtx, p: &Payment, revert: &str) -> Result<(), StepError> {
    let (reason, message) = match (stored(p), ctx.network().token(p.asset)) {
        (Err(why), _) => (Reason::TransactionFailed, why),
        (Ok(_), None) => (
            Reason::UnsupportedAsset,
            "asset is no longer served".to_owned(),
        ),
        (Ok(signed), Some(token)) => {
            let invalid = match &signed {
                Signed::Eip3009(auth) => {
                    exact::diagnose(ctx.network(), token, auth, revert).await?
                }
                Signed::Permit2(payload, scheme) => {
                    let payment = permit2_payment(ctx, token, p, payload, *scheme);
                    exact::permit2::diagnose(payment, revert).await?
                }
            };
            let used = matches!(
                invalid.reason,
                Reason::NonceAlreadyUsed | Reason::Permit2NonceUsed
            );
            if used && let Some(at) = settled_elsewhere(ctx, p).await? {
                tracing::info!(payment = p.id, tx = %at.tx_hash, "authorization was settled by another transaction");
                settle_at(ctx, p.id, at, "settled by a transaction we did not send").await?;
                return Ok(());
            }
            (invalid.reason, invalid.message)
        }
    };
    let reason = reason.code().to_owned();
    let t = if p.attempts == 0 {
        Transition::Refused { reason, message }
    } else {
        Transition::Failed { reason, message }
    };
    ctx.ledger.transition(&[p.id], &t).await?;
    ctx.waiters.notify(p.id);
    Ok(())
}

/// Payments their (mined, dropped or refused) transaction did not settle: back to the queue, where
/// the batcher judges them afresh (and finds them settled if someone else did), within a bounded
/// number of attempts.
pub(super) async fn unsettled(
    ctx: &ChainCtx,
    payments: &[Payment],
    why: &str,
) -> Result<(), StepError> {
    let (spent, again): (Vec<&Payment>, Vec<&Payment>) = payments
        .iter()
        .partition(|p| p.attempts + 1 >= MAX_ATTEMPTS);
    let again: Vec<i64> = again.iter().map(|p| p.id).collect();
    ctx.ledger
        .transition(
            &again,
            &Transition::Requeued {
                why: why.to_owned(),
                after_broadcast: true,
                not_before: 0,
            },
        )
        .await?;
    let spent: Vec<i64> = spent.iter().map(|p| p.id).collect();
    let failed = ctx
        .ledger
        .transition(
            &spent,
            &Transition::Failed {
                reason: Reason::TransactionFailed.code().to_owned(),
                message: format!("not settled after {MAX_ATTEMPTS} transactions: {why}"),
            },
        )
        .await?;
    ctx.waiters.notify_all(&failed);
    if !again.is_empty() {
        ctx.wake.notify_one();
    }
    Ok(())
}

/// Payments whose transaction the node refused for a fee cap below the block's base fee: back to
/// the queue without counting an attempt (the payments did nothing wrong), after a short pause so
/// the next quote sees the new base fee.
pub(super) async fn repriced(
    ctx: &ChainCtx,
    payments: &[Payment],
    why: &str,
) -> Result<(), StepError> {
    let ids: Vec<i64> = payments.iter().map(|p| p.id).collect();
    ctx.ledger
        .transition(
            &ids,
            &Transition::Requeued {
                why: format!("fees rose past the quote ({why}); priced again"),
                after_broadcast: false,
                not_before: ms_from_now(std::time::Duration::from_millis(500)),
            },
        )
        .await?;
    ctx.wake.notify_one();
    Ok(())
}

/// A settled payment whose block a reorg replaced and whose transaction has no receipt now.
pub(super) async fn unincluded(ctx: &ChainCtx, p: &Payment) -> Result<(), StepError> {
    let signed = match stored(p) {
        Ok(a) => a,
        Err(why) => {
            tracing::error!(payment = p.id, "reorged payment cannot be judged: {why}");
            return Ok(());
        }
    };
    if authorization_used(ctx, p, &signed).await? {
        match settled_elsewhere(ctx, p).await? {
            Some(at) => settle_at(ctx, p.id, at, "re-included after a reorg").await?,
            // Used on chain but its log is beyond our look-back: it stays settled as recorded.
            None => tracing::warn!(
                payment = p.id,
                "reorged authorization is used on chain, its transaction was not found"
            ),
        }
        return Ok(());
    }
    let now = crate::clock::unix_now();
    let label = ctx.network_label.as_str();
    if p.valid_before > now.saturating_add(ctx.config.valid_before_buffer_seconds) {
        let moved = ctx
            .ledger
            .transition(
                &[p.id],
                &Transition::Requeued {
                    why: "a reorg un-included its transaction; resubmitted".into(),
                    after_broadcast: false,
                    not_before: ms_from_now(std::time::Duration::ZERO),
                },
            )
            .await?;
        if !moved.is_empty() {
            ctx.metrics.reorgs_handled.with_label_values(&[label]).inc();
            tracing::warn!(
                payment = p.id,
                "reorg: settlement un-included; resubmitting the authorization"
            );
            ctx.wake.notify_one();
        }
    } else {
        let moved = ctx
            .ledger
            .transition(
                &[p.id],
                &Transition::Lost {
                    reason: Reason::TransactionFailed.code().to_owned(),
                    message: format!(
                        "a reorg un-included its settlement after the authorization expired (validBefore {})",
                        p.valid_before
                    ),
                },
            )
            .await?;
        if !moved.is_empty() {
            ctx.metrics.payments_lost.with_label_values(&[label]).inc();
            tracing::error!(payment = p.id, payer = %p.payer, pay_to = %p.pay_to, amount = %p.amount,
                "payment LOST: a reorg un-included it after its authorization expired");
        }
    }
    ctx.waiters.notify(p.id);
    Ok(())
}

async fn settle_at(ctx: &ChainCtx, id: i64, at: Inclusion, why: &str) -> Result<(), StepError> {
    ctx.ledger
        .transition(
            &[id],
            &Transition::SettledAt {
                at,
                why: why.to_owned(),
            },
        )
        .await?;
    ctx.waiters.notify(id);
    Ok(())
}

/// What a payment's payer signed, from its stored request.
enum Signed {
    Eip3009(Eip3009Authorization),
    Permit2(Permit2Payload, Scheme),
}

fn stored(p: &Payment) -> Result<Signed, String> {
    let request = parse_facilitator_request(p.request_json.as_bytes())
        .map_err(|e| format!("stored request of payment {} is unreadable: {e}", p.id))?;
    match request.body {
        PaymentBody::Eip3009(payload) => Ok(Signed::Eip3009(payload.authorization)),
        PaymentBody::Permit2(payload) => {
            let scheme = if p.method == Method::Upto {
                Scheme::Upto
            } else {
                Scheme::Exact
            };
            Ok(Signed::Permit2(payload, scheme))
        }
        PaymentBody::UnknownScheme { .. } => Err(format!("payment {} has no known scheme", p.id)),
    }
}

/// A stored Permit2 payment as the checks see it, charging what the ledger recorded.
fn permit2_payment<'a>(
    ctx: &'a ChainCtx,
    token: &'a crate::chain::Token,
    p: &Payment,
    payload: &'a Permit2Payload,
    scheme: Scheme,
) -> Permit2Payment<'a> {
    Permit2Payment {
        network: ctx.network(),
        token,
        payload,
        scheme,
        charge: p.amount,
    }
}

/// Whether the chain has used (or cancelled) the payment's nonce.
async fn authorization_used(
    ctx: &ChainCtx,
    p: &Payment,
    signed: &Signed,
) -> Result<bool, StepError> {
    let (to, data) = match signed {
        Signed::Eip3009(auth) => (
            p.asset,
            IEip3009Token::authorizationStateCall {
                authorizer: auth.from,
                nonce: auth.nonce,
            }
            .abi_encode(),
        ),
        Signed::Permit2(payload, _) => {
            let a = &payload.permit2_authorization;
            (
                ctx.network().permit2.permit2,
                IPermit2::nonceBitmapCall {
                    owner: a.from,
                    wordPos: a.nonce >> 8,
                }
                .abi_encode(),
            )
        }
    };
    let answer = ctx
        .network()
        .rpc
        .request(RpcCall::call(to, data))
        .await?
        .map_err(|e| RpcError::Malformed(format!("nonce state: {}", e.message)))?;
    let bytes = hex_result(&answer)?;
    match signed {
        Signed::Eip3009(_) => IEip3009Token::authorizationStateCall::abi_decode_returns(&bytes)
            .map_err(|e| RpcError::Malformed(format!("authorizationState: {e}")).into()),
        Signed::Permit2(payload, _) => {
            let word = IPermit2::nonceBitmapCall::abi_decode_returns(&bytes)
                .map_err(|e| RpcError::Malformed(format!("nonceBitmap: {e}")))?;
            let bit = payload.permit2_authorization.nonce & U256::from(0xffu8);
            Ok(word & (U256::from(1u8) << bit.to::<usize>()) != U256::ZERO)
        }
    }
}

/// The transaction, ours or anyone's, that used this payment's authorization to pay its payee:
/// found by its `AuthorizationUsed` log (EIP-3009), or by a `Transfer` from the payer to the payee
/// of the amount in a transaction that ran the payment's proxy (Permit2 logs nothing itself).
pub(super) async fn settled_elsewhere(
    ctx: &ChainCtx,
    p: &Payment,
) -> Result<Option<Inclusion>, StepError> {
    let rpc = &ctx.network().rpc;
    let head = super::tx::quantity(
        &rpc.request(RpcCall {
            method: "eth_blockNumber",
            params: json!([]),
        })
        .await?
        .map_err(|e| RpcError::Malformed(e.message))?,
    )? as u64;
    let from_block = head.saturating_sub(ctx.config.log_lookback_blocks);
    let topics = match p.method {
        Method::Eip3009 => json!([
            IEip3009Token::AuthorizationUsed::SIGNATURE_HASH,
            B256::left_padding_from(p.payer.as_slice()),
            p.nonce
        ]),
        Method::Permit2 | Method::Upto => json!([
            IEip3009Token::Transfer::SIGNATURE_HASH,
            B256::left_padding_from(p.payer.as_slice()),
            B256::left_padding_from(p.pay_to.as_slice())
        ]),
    };
    let filter = json!([{
        "address": p.asset,
        "fromBlock": format!("0x{from_block:x}"),
        "toBlock": "latest",
        "topics": topics,
    }]);
    let logs: Vec<alloy::rpc::types::Log> = rpc
        .typed(RpcCall {
            method: "eth_getLogs",
            params: filter,
        })
        .await?
        .map_err(|e| RpcError::Malformed(format!("eth_getLogs: {}", e.message)))?;
    for log in logs {
        let Some(hash) = log.transaction_hash else {
            continue;
        };
        let receipt: Option<Receipt> = rpc
            .typed(RpcCall {
                method: "eth_getTransactionReceipt",
                params: json!([hash]),
            })
            .await?
            .map_err(|e| RpcError::Malformed(e.message))?;
        let Some(receipt) = receipt else { continue };
        let pays = super::watcher::transfers(&receipt, p.asset)
            .any(|t| t.from == p.payer && t.to == p.pay_to && t.value == p.amount);
        let through_proxy = p.method == Method::Eip3009
            || receipt
                .inner
                .inner
                .logs()
                .iter()
                .any(|l| l.address() == p.call_target);
        if let (true, true, Some(block_number), Some(block_hash)) = (
            pays,
            through_proxy,
            receipt.block_number,
            receipt.block_hash,
        ) {
            return Ok(Some(Inclusion {
                tx_hash: hash,
                block_number,
                block_hash,
            }));
        }
    }
    Ok(None)
}
