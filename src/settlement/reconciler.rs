//! What becomes of a payment that cannot be sent now, that its transaction did not settle, or that a
//! reorg un-included. Each judgment ends in one ledger transition.

use alloy::primitives::{Address, B256};
use alloy::sol_types::{SolCall, SolEvent};
use serde_json::json;

use super::watcher::Receipt;
use super::{ChainCtx, StepError, ms_from_now};
use crate::chain::bindings::IEip3009Token;
use crate::chain::rpc::hex_result;
use crate::chain::{RpcCall, RpcError};
use crate::exact;
use crate::ledger::{Inclusion, Payment, Transition};
use crate::protocol::wire::Eip3009Authorization;
use crate::protocol::{PaymentBody, Reason, parse_facilitator_request};

/// A payment back in the queue this many times after broadcasts is failed.
const MAX_ATTEMPTS: u32 = 4;

/// The item's simulation reverted before any broadcast of this attempt: refused (its key freed)
/// if it was never in a broadcast transaction, failed if it was; settled if someone else settled
/// it. An RPC failure while diagnosing is returned, and the caller defers the item.
pub(super) async fn unsendable(ctx: &ChainCtx, p: &Payment, revert: &str) -> Result<(), StepError> {
    let (reason, message) = match stored_authorization(p) {
        Err(why) => (Reason::TransactionFailed, why),
        Ok(auth) => match ctx.network().token(p.asset) {
            None => (
                Reason::UnsupportedAsset,
                "asset is no longer served".to_owned(),
            ),
            Some(token) => {
                let invalid = exact::diagnose(ctx.network(), token, &auth, revert).await?;
                if invalid.reason == Reason::NonceAlreadyUsed
                    && let Some(at) = settled_elsewhere(ctx, p.asset, &auth).await?
                {
                    tracing::info!(payment = p.id, tx = %at.tx_hash, "authorization was settled by another transaction");
                    settle_at(ctx, p.id, at, "settled by a transaction we did not send").await?;
                    return Ok(());
                }
                (invalid.reason, invalid.message)
            }
        },
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
    let auth = match stored_authorization(p) {
        Ok(a) => a,
        Err(why) => {
            tracing::error!(payment = p.id, "reorged payment cannot be judged: {why}");
            return Ok(());
        }
    };
    if authorization_used(ctx, p.asset, auth.from, auth.nonce).await? {
        match settled_elsewhere(ctx, p.asset, &auth).await? {
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

/// The signed authorization a payment carries, from its stored request.
fn stored_authorization(p: &Payment) -> Result<Eip3009Authorization, String> {
    let request = parse_facilitator_request(p.request_json.as_bytes())
        .map_err(|e| format!("stored request of payment {} is unreadable: {e}", p.id))?;
    match request.body {
        PaymentBody::Eip3009(payload) => Ok(payload.authorization),
        #[allow(unreachable_patterns)]
        _ => Err(format!("payment {} is not EIP-3009", p.id)),
    }
}

async fn authorization_used(
    ctx: &ChainCtx,
    token: Address,
    from: Address,
    nonce: B256,
) -> Result<bool, StepError> {
    let call = RpcCall::call(
        token,
        IEip3009Token::authorizationStateCall {
            authorizer: from,
            nonce,
        }
        .abi_encode(),
    );
    let answer = ctx
        .network()
        .rpc
        .request(call)
        .await?
        .map_err(|e| RpcError::Malformed(format!("authorizationState: {}", e.message)))?;
    let bytes = hex_result(&answer)?;
    IEip3009Token::authorizationStateCall::abi_decode_returns(&bytes)
        .map_err(|e| RpcError::Malformed(format!("authorizationState: {e}")).into())
}

/// The transaction, ours or anyone's, that used this authorization to pay its payee.
pub(super) async fn settled_elsewhere(
    ctx: &ChainCtx,
    asset: Address,
    auth: &Eip3009Authorization,
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
    {
        let filter = json!([{
            "address": asset,
            "fromBlock": format!("0x{from_block:x}"),
            "toBlock": "latest",
            "topics": [
                IEip3009Token::AuthorizationUsed::SIGNATURE_HASH,
                B256::left_padding_from(auth.from.as_slice()),
                auth.nonce
            ],
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
            let pays = super::watcher::transfers(&receipt, asset)
                .any(|t| t.from == auth.from && t.to == auth.to && t.value == auth.value.0);
            if let (true, Some(block_number), Some(block_hash)) =
                (pays, receipt.block_number, receipt.block_hash)
            {
                return Ok(Some(Inclusion {
                    tx_hash: hash,
                    block_number,
                    block_hash,
                }));
            }
        }
    }
    Ok(None)
}
