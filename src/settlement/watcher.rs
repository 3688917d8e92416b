//! Following what was mined: a lane's receipts matched to its batch's payments by their
//! `AuthorizationUsed` logs, and every settled payment followed through confirmations and the
//! finality window, where a replaced block hash or a vanished receipt is a reorg.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use alloy::network::ReceiptResponse;
use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::TransactionReceipt;
use alloy::serde::WithOtherFields;
use alloy::sol_types::SolEvent;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::json;

use super::{ChainCtx, StepError, reconciler};
use crate::chain::bindings::IEip3009Token;
use crate::chain::{RpcCall, RpcError};
use crate::ledger::{Method, MinedTx, Payment, PaymentState, Transition, TxStatus};

/// A receipt with the fields alloy does not model (the OP Stack's `l1Fee`).
pub(crate) type Receipt = WithOtherFields<TransactionReceipt>;

/// A `Transfer` log.
pub(crate) struct TransferLog {
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

/// Every `Transfer` in a receipt, with the token that logged it.
fn all_transfers(receipt: &Receipt) -> impl Iterator<Item = (Address, TransferLog)> + '_ {
    receipt.inner.inner.logs().iter().filter_map(|l| {
        let e = IEip3009Token::Transfer::decode_log(&l.inner).ok()?;
        Some((
            l.address(),
            TransferLog {
                from: e.data.from,
                to: e.data.to,
                value: e.data.value,
            },
        ))
    })
}

/// Every `Transfer` of `token` in a receipt.
pub(crate) fn transfers(
    receipt: &Receipt,
    token: Address,
) -> impl Iterator<Item = TransferLog> + '_ {
    all_transfers(receipt)
        .filter(move |(t, _)| *t == token)
        .map(|(_, l)| l)
}

/// A receipt's `Transfer` logs, each matched to at most one payment: a batch may hold two
/// payments of the same amount between the same accounts, and each needs its own log.
struct TransferMoves(Vec<(Address, TransferLog)>);

impl TransferMoves {
    fn of(receipt: &Receipt) -> Self {
        TransferMoves(all_transfers(receipt).collect())
    }

    /// Consumes the `Transfer(from, to, value)` of `token`, if the receipt has one left.
    fn take(&mut self, token: Address, from: Address, to: Address, value: U256) -> bool {
        let found = self
            .0
            .iter()
            .position(|(t, l)| *t == token && l.from == from && l.to == to && l.value == value);
        found.map(|i| self.0.swap_remove(i)).is_some()
    }

    /// Whether a `Transfer` of `token` from `from` is left (a Permit2 item that ran but moved
    /// another amount, or to someone else).
    fn moved_from(&self, token: Address, from: Address) -> bool {
        self.0.iter().any(|(t, l)| *t == token && l.from == from)
    }

    /// What the receipt moved from the payment's payer, for the failure message.
    fn describe(&self, p: &Payment) -> String {
        let seen: Vec<String> = self
            .0
            .iter()
            .filter(|(t, l)| *t == p.asset && l.from == p.payer)
            .map(|(_, l)| format!("{} to {}", l.value, l.to))
            .collect();
        format!(
            "the authorization was used, but the receipt has no Transfer of {} from {} to {} \
             (it moved {}): the token did not pay the amount signed for",
            p.amount,
            p.payer,
            p.pay_to,
            if seen.is_empty() {
                "nothing from the payer".to_owned()
            } else {
                seen.join(", ")
            }
        )
    }
}

/// (token, authorizer, nonce) of every `AuthorizationUsed` log in a receipt.
fn authorizations_used(receipt: &Receipt) -> HashSet<(Address, Address, B256)> {
    receipt
        .inner
        .inner
        .logs()
        .iter()
        .filter_map(|l| {
            let e = IEip3009Token::AuthorizationUsed::decode_log(&l.inner).ok()?;
            Some((l.address(), e.data.authorizer, e.data.nonce))
        })
        .collect()
}

/// The receipt's facts as the ledger stores them; `None` while it has no block.
fn mined_of(receipt: &Receipt) -> Option<MinedTx> {
    let l1_fee = receipt
        .other
        .get("l1Fee")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<U256>().ok());
    Some(MinedTx {
        succeeded: receipt.status(),
        block_number: receipt.block_number()?,
        block_hash: receipt.block_hash()?,
        gas_used: receipt.gas_used(),
        effective_gas_price: receipt.effective_gas_price(),
        l1_fee,
    })
}

/// The receipts of these hashes (`None` where the node has none).
pub(super) async fn receipts(
    ctx: &ChainCtx,
    hashes: &[B256],
) -> Result<Vec<Option<Receipt>>, RpcError> {
    let calls: Vec<RpcCall> = hashes
        .iter()
        .map(|h| RpcCall {
            method: "eth_getTransactionReceipt",
            params: json!([h]),
        })
        .collect();
    ctx.network()
        .rpc
        .typed_batch::<Option<Receipt>>(&calls)
        .await?
        .into_iter()
        .map(|r| r.map_err(|e| RpcError::Malformed(format!("receipt: {}", e.message))))
        .collect()
}

/// Records a mined transaction of ours: the batch's payments whose authorization it used are
/// included (or confirmed), the rest go to the reconciler. Returns false while the receipt has no
/// block yet.
pub(super) async fn on_receipt(
    ctx: &ChainCtx,
    tx_id: i64,
    batch_id: i64,
    receipt: &Receipt,
) -> Result<bool, StepError> {
    let Some(mined) = mined_of(receipt) else {
        return Ok(false);
    };
    let used = authorizations_used(receipt);
    let payments = ctx.ledger.batch_payments(batch_id).await?;
    let no_deploys = payments.iter().all(|p| p.deploy.is_none());
    let mut settled = Vec::new();
    let mut unsettled: Vec<Payment> = Vec::new();
    let mut mismatched: Vec<(i64, String)> = Vec::new();
    let mut moves = TransferMoves::of(receipt);
    // EIP-3009 items first: their `AuthorizationUsed` says which ran, so their `Transfer`s are
    // matched before a Permit2 item, known only by its `Transfer`, could take one of them.
    let (eip3009, permit2): (Vec<Payment>, Vec<Payment>) = payments
        .into_iter()
        .filter(|p| p.state == PaymentState::InBatch)
        .partition(|p| p.method == Method::Eip3009);
    for p in eip3009 {
        if !used.contains(&(p.asset, p.payer, p.nonce)) {
            unsettled.push(p);
        } else if moves.take(p.asset, p.payer, p.pay_to, p.amount) {
            settled.push(p.id);
        } else {
            mismatched.push((p.id, moves.describe(&p)));
        }
    }
    for p in permit2 {
        // Permit2 logs nothing of its own: the item ran if the token moved for it. A zero upto
        // charge moves nothing, and rides alone in its transaction, so success is its proof.
        let zero_alone = p.amount.is_zero() && mined.succeeded && p.sender.is_some();
        if moves.take(p.asset, p.payer, p.pay_to, p.amount) || zero_alone {
            settled.push(p.id);
        } else if mined.succeeded && moves.moved_from(p.asset, p.payer) {
            mismatched.push((p.id, moves.describe(&p)));
        } else {
            unsettled.push(p);
        }
    }
    let plain = unsettled.is_empty() && mismatched.is_empty() && no_deploys;
    if mined.succeeded && plain && !settled.is_empty() {
        let per_item = mined.gas_used.saturating_sub(super::tx::TX_BASE_GAS) / settled.len() as u64;
        let mut learned = ctx
            .learned_item_gas
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *learned = Some(learned.map_or(per_item, |g| g.max(per_item)));
    }
    let confirmed = ctx.config.confirmations <= 1;
    ctx.newest_inclusion
        .fetch_max(mined.block_number, std::sync::atomic::Ordering::Relaxed);
    let moved = ctx
        .ledger
        .record_mined(tx_id, batch_id, &mined, &settled, confirmed)
        .await?;
    let label = [ctx.network_label.as_str()];
    ctx.metrics
        .batch_gas_used
        .with_label_values(&label)
        .observe(mined.gas_used as f64);
    ctx.metrics
        .effective_gas_price
        .with_label_values(&label)
        .set(mined.effective_gas_price as f64);
    if !moved.is_empty() {
        let cost = U256::from(mined.gas_used) * U256::from(mined.effective_gas_price)
            + mined.l1_fee.unwrap_or_default();
        let per_payment: f64 = (cost / U256::from(moved.len()))
            .to_string()
            .parse()
            .unwrap_or(f64::MAX);
        ctx.metrics
            .payment_gas_used
            .with_label_values(&label)
            .observe(mined.gas_used as f64 / moved.len() as f64);
        ctx.metrics
            .payment_cost_wei
            .with_label_values(&label)
            .set(per_payment);
    }
    tracing::debug!(tx = %receipt.transaction_hash, settled = moved.len(), unsettled = unsettled.len(),
        gas_used = mined.gas_used, "batch mined");
    ctx.waiters.notify_all(&moved);
    for (id, message) in mismatched {
        // The authorization is used on chain, so there is nothing to retry: failed, never success.
        tracing::error!(payment = id, tx = %receipt.transaction_hash, "{message}");
        let failed = ctx
            .ledger
            .transition(
                &[id],
                &Transition::Failed {
                    reason: crate::protocol::Reason::TransferEventMismatch
                        .code()
                        .to_owned(),
                    message,
                },
            )
            .await?;
        ctx.waiters.notify_all(&failed);
    }
    if !unsettled.is_empty() {
        let why = if mined.succeeded {
            "its transaction was mined without settling it"
        } else {
            "its transaction reverted"
        };
        reconciler::unsettled(ctx, &unsettled, why).await?;
    }
    Ok(true)
}

/// Settled payments whose block is this shallow are re-checked at every new head; deeper ones
/// every [`DEEP_CHECK_EVERY`] (a deep reorg is rare, and checking costs one call per block).
const SHALLOW_DEPTH: u64 = 64;
const DEEP_CHECK_EVERY: Duration = Duration::from_secs(30);

/// After a failed finality check: from one second, doubling with jitter up to 5 s (at most 10 s
/// with the jitter), for as long as it fails. A successful check starts over.
const CHECK_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_secs(1))
    .with_max_delay(Duration::from_secs(5))
    .with_jitter()
    .without_max_times();

/// Follows a chain's settled payments: confirmations, finality, reorgs.
pub(super) async fn run_finality(ctx: std::sync::Arc<ChainCtx>) {
    let tick = ctx.config.receipt_poll.max(Duration::from_millis(100));
    let mut last_head: Option<Tip> = None;
    let mut last_deep = Instant::now();
    let mut after_failure = CHECK_RETRY.build();
    loop {
        // The poll tick (a new head is looked for at the receipt poll rate), not a retry.
        tokio::time::sleep(tick).await;
        let deep = last_deep.elapsed() >= DEEP_CHECK_EVERY;
        match check(&ctx, &mut last_head, deep).await {
            Ok(()) => {
                after_failure = CHECK_RETRY.build();
                if deep {
                    last_deep = Instant::now();
                }
            }
            Err(e) => {
                ctx.count_ledger_error(&e);
                let delay = after_failure.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(network = %ctx.network_label, error = %e, retry_in = ?delay, "finality check failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockHead {
    number: alloy::primitives::U64,
    hash: B256,
    parent_hash: B256,
}

/// The head the last check saw.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tip {
    number: u64,
    hash: B256,
}

/// Whether the chain from `last` to `head` may have been reorganised: the new blocks are read
/// (a few calls in one request) and must link by parent hash to the last head seen. Checking the
/// links costs one call per new block instead of one per block holding a payment of ours (up to 64
/// calls at every new head before; settle throughput on automine rose ~5 % on this machine).
async fn reorg_possible(
    ctx: &ChainCtx,
    last: Option<Tip>,
    head: &BlockHead,
) -> Result<bool, StepError> {
    let Some(last) = last else {
        return Ok(true);
    };
    let head_number = head.number.to::<u64>();
    if head_number <= last.number {
        return Ok(head.hash != last.hash);
    }
    if head_number - last.number > SHALLOW_DEPTH {
        return Ok(true);
    }
    let calls: Vec<RpcCall> = (last.number + 1..head_number)
        .map(|n| RpcCall {
            method: "eth_getBlockByNumber",
            params: json!([format!("0x{n:x}"), false]),
        })
        .collect();
    let mut parent = last.hash;
    for r in ctx
        .network()
        .rpc
        .typed_batch::<Option<BlockHead>>(&calls)
        .await?
    {
        match r.map_err(|e| RpcError::Malformed(e.message))? {
            Some(b) if b.parent_hash == parent => parent = b.hash,
            _ => return Ok(true),
        }
    }
    Ok(head.parent_hash != parent)
}

async fn check(ctx: &ChainCtx, last_head: &mut Option<Tip>, deep: bool) -> Result<(), StepError> {
    let rpc = &ctx.network().rpc;
    let head: BlockHead = rpc
        .typed(RpcCall {
            method: "eth_getBlockByNumber",
            params: json!(["latest", false]),
        })
        .await?
        .map_err(|e| RpcError::Malformed(e.message))?;
    if last_head.is_some_and(|t| t.hash == head.hash) && !deep {
        return Ok(());
    }
    let head_number = head.number.to::<u64>();
    let tip = Tip {
        number: head_number,
        hash: head.hash,
    };
    // A payment recorded in a block above the last head seen sits in a block the parent links
    // below never covered: its hash is compared too.
    let unseen_inclusion = last_head.is_some_and(|t| {
        ctx.newest_inclusion
            .load(std::sync::atomic::Ordering::Relaxed)
            > t.number
    });
    if !deep && !unseen_inclusion && !reorg_possible(ctx, *last_head, &head).await? {
        confirm(ctx, head_number).await?;
        *last_head = Some(tip);
        return Ok(());
    }
    let settled = ctx.ledger.settled_blocks(ctx.chain_id()).await?;
    // The hash each block number of ours has now.
    let numbers: Vec<u64> = settled
        .iter()
        .map(|s| s.block_number)
        .filter(|n| deep || head_number.saturating_sub(*n) < SHALLOW_DEPTH)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let calls: Vec<RpcCall> = numbers
        .iter()
        .map(|n| RpcCall {
            method: "eth_getBlockByNumber",
            params: json!([format!("0x{n:x}"), false]),
        })
        .collect();
    let mut now_hash: BTreeMap<u64, Option<B256>> = BTreeMap::new();
    for (n, r) in numbers
        .iter()
        .zip(rpc.typed_batch::<Option<BlockHead>>(&calls).await?)
    {
        let block = r.map_err(|e| RpcError::Malformed(e.message))?;
        now_hash.insert(*n, block.map(|b| b.hash));
    }
    let suspect: Vec<B256> = settled
        .iter()
        .filter(|s| {
            now_hash
                .get(&s.block_number)
                .is_some_and(|current| current.is_none() || *current != s.block_hash)
        })
        .filter_map(|s| s.tx_hash)
        .collect();
    if !suspect.is_empty() {
        reorged(ctx, &suspect).await?;
        // Depths are judged again on the next tick, on the chain as it is after the reorg.
        return Ok(());
    }
    confirm(ctx, head_number).await?;
    // Finality only after a deep check has just looked at every block of the window.
    if deep && let Some(max) = head_number.checked_sub(ctx.config.finality_blocks) {
        let ids = ctx
            .ledger
            .mined_up_to(ctx.chain_id(), PaymentState::Confirmed, max)
            .await?;
        ctx.ledger.transition(&ids, &Transition::Finalized).await?;
    }
    *last_head = Some(tip);
    Ok(())
}

/// Included payments deep enough are confirmed (with one confirmation they are confirmed when
/// their receipt is read).
async fn confirm(ctx: &ChainCtx, head_number: u64) -> Result<(), StepError> {
    let confirmations = ctx.config.confirmations.max(1);
    if confirmations == 1 {
        return Ok(());
    }
    if let Some(max) = head_number.checked_sub(confirmations - 1) {
        let ids = ctx
            .ledger
            .mined_up_to(ctx.chain_id(), PaymentState::Included, max)
            .await?;
        let confirmed = ctx.ledger.transition(&ids, &Transition::Confirmed).await?;
        ctx.waiters.notify_all(&confirmed);
    }
    Ok(())
}

/// Transactions whose block changed: re-included elsewhere (new evidence), or gone (each payment to
/// the reconciler, the lane told to resynchronise its nonce).
async fn reorged(ctx: &ChainCtx, hashes: &[B256]) -> Result<(), StepError> {
    let found = receipts(ctx, hashes).await?;
    for (hash, receipt) in hashes.iter().zip(found) {
        let tx = ctx.ledger.transaction_by_hash(*hash).await?;
        match receipt.as_ref().and_then(mined_of) {
            Some(mined) => {
                tracing::warn!(tx = %hash, block = mined.block_number, "reorg: settlement transaction re-included in another block");
                if let Some(t) = &tx {
                    ctx.ledger
                        .record_mined(t.id, t.batch_id, &mined, &[], true)
                        .await?;
                }
                let at = crate::ledger::Inclusion {
                    tx_hash: *hash,
                    block_number: mined.block_number,
                    block_hash: mined.block_hash,
                };
                let ids: Vec<i64> = ctx
                    .ledger
                    .payments_of_tx(*hash)
                    .await?
                    .iter()
                    .filter(|p| matches!(p.state, PaymentState::Included | PaymentState::Confirmed))
                    .map(|p| p.id)
                    .collect();
                ctx.ledger
                    .transition(
                        &ids,
                        &Transition::SettledAt {
                            at,
                            why: "re-included after a reorg".into(),
                        },
                    )
                    .await?;
            }
            None => {
                tracing::warn!(tx = %hash, "reorg: settlement transaction no longer on chain");
                if let Some(t) = &tx {
                    ctx.ledger.set_tx_status(t.id, TxStatus::Reorged).await?;
                    if let Some(lane) = ctx.lane_of(t.wallet) {
                        lane.resync
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                for p in ctx.ledger.payments_of_tx(*hash).await? {
                    if matches!(p.state, PaymentState::Included | PaymentState::Confirmed) {
                        reconciler::unincluded(ctx, &p).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OP Stack receipt (Base) carries the L1 data fee beside the L2 fields; anvil's do not.
    #[test]
    fn the_l1_fee_of_an_op_stack_receipt_is_part_of_the_cost() {
        let receipt: Receipt = serde_json::from_value(serde_json::json!({
            "type": "0x2", "status": "0x1", "cumulativeGasUsed": "0x5208", "logs": [],
            "logsBloom": format!("0x{}", "0".repeat(512)),
            "transactionHash": format!("0x{}", "11".repeat(32)), "transactionIndex": "0x0",
            "blockHash": format!("0x{}", "22".repeat(32)), "blockNumber": "0x10",
            "gasUsed": "0x5208", "effectiveGasPrice": "0x3b9aca00",
            "from": format!("0x{}", "33".repeat(20)), "to": format!("0x{}", "44".repeat(20)),
            "contractAddress": null,
            "l1Fee": "0x2540be400", "l1GasUsed": "0x640", "l1GasPrice": "0x1"
        }))
        .unwrap();
        let mined = mined_of(&receipt).unwrap();
        assert_eq!(mined.block_number, 16);
        assert_eq!(mined.gas_used, 21_000);
        assert_eq!(mined.effective_gas_price, 1_000_000_000);
        assert_eq!(mined.l1_fee, Some(U256::from(10_000_000_000u64)));
        assert!(mined.succeeded);
        assert_eq!(authorizations_used(&receipt).len(), 0);
    }
}
