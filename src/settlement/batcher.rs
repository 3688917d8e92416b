//! The batcher of one chain: takes due payments from the queue, simulates each (one batched RPC
//! request; a refusal costs no gas), and hands batches to the least-loaded ready lane. It sends at
//! once when a lane is idle and gathers while every lane has transactions in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::fees::Quote;
use super::tx::{self, ItemCalls};
use super::{ChainCtx, Item, LaneHandle, LaneHealth, StepError, ms_from_now, reconciler};
use crate::ledger::{QueueClaim, Transition};

/// The longest an item that could not be judged is deferred.
const DEFER_AT_MOST: Duration = Duration::from_secs(60);

/// Deferral of an item that could not be judged for the `deferrals`-th time: doubling from one
/// second, with up to as much again of jitter so items deferred together do not all come back in
/// the same round, at most [`DEFER_AT_MOST`]. The count lives in the batcher (and the delay in
/// the ledger's `not_before`), so the delay is the `deferrals`-th of backon's sequence.
fn backoff(deferrals: u32) -> Duration {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .with_max_delay(DEFER_AT_MOST)
        .with_jitter()
        .without_max_times()
        .build()
        // Past the 6th the delay is the cap anyway; the bound keeps the walk short.
        .nth(deferrals.min(6) as usize)
        .map_or(DEFER_AT_MOST, |d| d.min(DEFER_AT_MOST))
}

/// After a failed round (the ledger or the node is unreachable): from half a second, doubling
/// with jitter up to 5 s (at most 10 s with the jitter), for as long as it fails: the batcher
/// never gives up, but an outage is not hammered. A successful round starts over.
const ROUND_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(500))
    .with_max_delay(Duration::from_secs(5))
    .with_jitter()
    .without_max_times();

/// How often payments stranded in a finished batch are looked for (also once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(super) async fn run(ctx: Arc<ChainCtx>) {
    let mut deferrals: HashMap<i64, u32> = HashMap::new();
    let mut swept: Option<std::time::Instant> = None;
    let mut after_failure = ROUND_RETRY.build();
    loop {
        if swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            match sweep(&ctx).await {
                Ok(()) => swept = Some(std::time::Instant::now()),
                Err(e) => {
                    ctx.count_ledger_error(&e);
                    tracing::warn!(network = %ctx.network_label, error = %e, "sweep failed");
                }
            }
        }
        let idle_lane = ctx.lanes.iter().any(|l| {
            l.shared.health() == LaneHealth::Ready && l.shared.load.load(Ordering::Relaxed) == 0
        });
        if !idle_lane {
            // Every lane has transactions in flight: gather what arrives for up to the window, or
            // until a lane frees up (new payments do not cut the gathering short).
            let _ = tokio::time::timeout(ctx.config.batch_window, ctx.lane_freed.notified()).await;
        }
        match round(&ctx, &mut deferrals).await {
            Ok(more) => {
                after_failure = ROUND_RETRY.build();
                if more {
                    continue;
                }
            }
            Err(e) => {
                ctx.count_ledger_error(&e);
                let delay = after_failure.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(network = %ctx.network_label, error = %e, retry_in = ?delay, "batcher round failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
        // A poll tick, not a retry: with nothing woken, look at the queue again each second
        // (deferred items come due by time, and nothing notifies that).
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = ctx.lane_freed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn sweep(ctx: &ChainCtx) -> Result<(), StepError> {
    let stranded = ctx.ledger.stranded_in_batch(ctx.chain_id()).await?;
    if !stranded.is_empty() {
        tracing::warn!(network = %ctx.network_label, payments = stranded.len(), "payments left in a finished batch go back to the queue");
        reconciler::unsettled(ctx, &stranded, "its batch ended without settling it").await?;
    }
    Ok(())
}

/// How long this node's claim on the queued payments it takes holds: long enough to sign and
/// record their batch, short so that payments a node took and could not send (its lane went
/// to another node, it died) wait little.
const CLAIM_TTL: Duration = Duration::from_secs(2);

/// Lanes that can take a batch now, least loaded first.
fn ready_lanes(ctx: &ChainCtx) -> Vec<usize> {
    let mut ready: Vec<(usize, usize)> = ctx
        .lanes
        .iter()
        .enumerate()
        .filter(|(_, l)| l.shared.health() == LaneHealth::Ready)
        .map(|(i, l)| (l.shared.load.load(Ordering::Relaxed), i))
        .filter(|(load, _)| *load < ctx.config.max_in_flight)
        .collect();
    ready.sort_unstable();
    ready.into_iter().map(|(_, i)| i).collect()
}

/// One round: returns true when it handed out full batches and more may be waiting.
async fn round(ctx: &ChainCtx, deferrals: &mut HashMap<i64, u32>) -> Result<bool, StepError> {
    let lanes = ready_lanes(ctx);
    if lanes.is_empty() {
        let queued = ctx.ledger.pending_summary(ctx.chain_id()).await?.queued;
        let why = ctx
            .lanes
            .iter()
            .map(|l| format!("{}: {}", l.shared.wallet, l.shared.health()))
            .collect::<Vec<_>>()
            .join("; ");
        let busy = ctx.lanes.iter().all(|l| {
            matches!(
                l.shared.health(),
                LaneHealth::Ready | LaneHealth::Elsewhere(_) | LaneHealth::HandingOver
            )
        });
        ctx.set_waiting((queued > 0 && !busy).then(|| format!("no gas wallet can send ({why})")));
        return Ok(false);
    }
    if let Quote::AboveCeiling { base_fee, ceiling } = ctx.fees.quote(&ctx.network().rpc).await? {
        ctx.set_waiting(Some(format!(
            "fee ceiling: the base fee {base_fee} wei is above max_fee_per_gas {ceiling} wei"
        )));
        return Ok(false);
    }
    if let Some(budget) = ctx.daily_budget_wei {
        let spent = ctx
            .ledger
            .spent_since(ctx.chain_id(), crate::clock::now_ms() - 86_400_000)
            .await?;
        if spent >= budget {
            ctx.set_waiting(Some(format!(
                "daily gas budget: {spent} wei spent in 24 h, budget {budget} wei"
            )));
            return Ok(false);
        }
    }
    ctx.set_waiting(None);
    let max = ctx.config.batch_max_items;
    let want = max * lanes.len();
    let exclude = ctx
        .assigned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let items = ctx
        .ledger
        .queued_due(
            ctx.chain_id(),
            want,
            &exclude,
            &QueueClaim {
                node: &ctx.config.node,
                ttl: CLAIM_TTL.min(ctx.config.lane_lease),
            },
        )
        .await?;
    if items.is_empty() {
        return Ok(false);
    }
    let full = items.len() == want;
    let good = simulate(ctx, items, deferrals).await?;
    // An item bound to one gas wallet (upto) goes alone to that wallet's lane, if it is ready;
    // otherwise it waits in the queue for a later round.
    let (bound, free): (Vec<Item>, Vec<Item>) =
        good.into_iter().partition(|(_, c)| c.sender.is_some());
    for item in bound {
        let lane = lanes
            .iter()
            .filter_map(|&i| ctx.lanes.get(i))
            .find(|l| Some(l.shared.wallet) == item.1.sender);
        if let Some(lane) = lane {
            hand_over(ctx, lane, vec![item]).await;
        }
    }
    let mut lanes = lanes.into_iter().cycle();
    for chunk in under_gas(free, |(_, c)| c, max, ctx.config.batch_max_gas) {
        let Some(lane) = lanes.next().and_then(|i| ctx.lanes.get(i)) else {
            break;
        };
        hand_over(ctx, lane, chunk).await;
    }
    Ok(full)
}

/// Splits items, in order, into batches of at most `max_items` whose modelled gas stays under
/// `max_gas` (an item too large alone still goes, alone).
fn under_gas<T>(
    items: Vec<T>,
    calls_of: impl Fn(&T) -> &ItemCalls,
    max_items: usize,
    max_gas: u64,
) -> Vec<Vec<T>> {
    let mut batches: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut calls: Vec<ItemCalls> = Vec::new();
    for item in items {
        calls.push(calls_of(&item).clone());
        let fits = current.len() < max_items && tx::modelled_gas(&calls) <= max_gas;
        if !fits && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            calls = vec![calls_of(&item).clone()];
        }
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Gives a batch to a lane; its payments stay out of later rounds until the lane is done.
async fn hand_over(ctx: &ChainCtx, lane: &LaneHandle, batch: Vec<Item>) {
    let ids: Vec<i64> = batch.iter().map(|(p, _)| p.id).collect();
    ctx.assigned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(ids.iter().copied());
    lane.shared.load.fetch_add(1, Ordering::Relaxed);
    if lane.batches.send(batch).await.is_err() {
        lane.shared.load.fetch_sub(1, Ordering::Relaxed);
        ctx.unassign(ids);
    }
}

/// Simulates every item alone (one request for all); the ones that would fail are judged and
/// leave the queue, the ones that cannot be judged now are deferred with backoff. Returns the
/// items worth sending.
async fn simulate(
    ctx: &ChainCtx,
    items: Vec<crate::ledger::Payment>,
    deferrals: &mut HashMap<i64, u32>,
) -> Result<Vec<Item>, StepError> {
    let parsed: Vec<Item> = items
        .into_iter()
        .map(|p| {
            let c = ItemCalls::of(&p);
            (p, c)
        })
        .collect();
    let sims: Vec<_> = parsed.iter().map(|(_, c)| tx::simulation(c)).collect();
    let results = ctx.network().rpc.batch(&sims).await?;
    let mut good = Vec::with_capacity(parsed.len());
    for ((p, c), r) in parsed.into_iter().zip(results) {
        let judged = match r {
            Ok(_) => {
                deferrals.remove(&p.id);
                good.push((p, c));
                continue;
            }
            Err(e) if e.is_revert() => reconciler::unsendable(ctx, &p, &e.reason()).await,
            Err(e) => Err(StepError::Rpc(crate::chain::RpcError::Malformed(e.message))),
        };
        if let Err(e) = judged {
            // This item alone waits; the rest of the batch goes on.
            let n = deferrals.entry(p.id).or_insert(0);
            *n += 1;
            let delay = backoff(*n);
            tracing::warn!(payment = p.id, error = %e, retry_in = ?delay, "payment cannot be judged now; deferred");
            ctx.ledger
                .transition(
                    &[p.id],
                    &Transition::Deferred {
                        why: e.to_string(),
                        not_before: ms_from_now(delay),
                    },
                )
                .await?;
        } else {
            deferrals.remove(&p.id);
        }
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u8, deploy: bool) -> (u8, ItemCalls) {
        let address = alloy::primitives::Address::repeat_byte(id);
        let calls = ItemCalls {
            target: address,
            deploy: deploy.then(|| (address, alloy::primitives::Bytes::from(vec![id]))),
            transfer: alloy::primitives::Bytes::from(vec![id]),
            sender: None,
        };
        (id, calls)
    }

    #[test]
    fn batches_stay_under_the_item_and_gas_bounds_in_order() {
        let plain: Vec<_> = (0..250).map(|i| item(i, false)).collect();
        let sizes: Vec<usize> = under_gas(plain, |(_, c)| c, 100, 8_000_000)
            .iter()
            .map(Vec::len)
            .collect();
        // 60k + 80k × n ≤ 8M: 99 plain items.
        assert_eq!(sizes, vec![99, 99, 52]);
        let mixed: Vec<_> = (0..40).map(|i| item(i, i % 2 == 0)).collect();
        let batches = under_gas(mixed, |(_, c)| c, 100, 8_000_000);
        assert!(batches.len() > 1);
        for b in &batches {
            let calls: Vec<ItemCalls> = b.iter().map(|(_, c)| c.clone()).collect();
            assert!(tx::modelled_gas(&calls) <= 8_000_000);
        }
        let ids: Vec<u8> = batches.iter().flatten().map(|(i, _)| *i).collect();
        assert_eq!(ids, (0..40).collect::<Vec<_>>(), "nothing lost, order kept");
        // A bound below one item: each goes alone.
        let alone = under_gas((0..3).map(|i| item(i, true)).collect(), |(_, c)| c, 100, 1);
        assert_eq!(alone.len(), 3);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs = |s| Duration::from_secs(s);
        for _ in 0..100 {
            // Each delay is the doubled one plus less than as much again of jitter.
            assert!((secs(1)..secs(2)).contains(&backoff(0)));
            assert!((secs(2)..secs(4)).contains(&backoff(1)));
            assert!((secs(8)..secs(16)).contains(&backoff(3)));
            assert!((secs(32)..=secs(60)).contains(&backoff(5)));
            assert_eq!(backoff(6), secs(60));
            assert_eq!(backoff(u32::MAX), secs(60));
        }
        // The jitter spreads items deferred together.
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(3)).collect();
        assert!(spread.len() > 1, "{spread:?}");
    }
}
