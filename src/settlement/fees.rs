//! EIP-1559 fee policy per chain: the next block's base fee times a multiplier plus a tip taken from
//! `eth_feeHistory` (never below a floor), under a hard `max_fee_per_gas` ceiling; and the rule for
//! pricing a replacement at the same nonce.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy::rpc::types::FeeHistory;
use serde_json::json;

pub use crate::chain::tx::Fees;
use crate::chain::{RpcCall, RpcClient, RpcError};

/// What the policy says about sending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    Send(Fees),
    /// The next block's base fee (plus the minimum tip) is above the ceiling: nothing may be sent.
    AboveCeiling {
        base_fee: u128,
        ceiling: u128,
    },
}

/// One chain's fee policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeePolicy {
    /// `max_fee_per_gas = next base fee × this + tip` (headroom for rising base fees).
    pub base_fee_multiplier: f64,
    /// The tip: this percentile of the recent blocks' tips.
    pub tip_percentile: f64,
    /// The tip is never below this (wei).
    pub min_tip: u128,
    /// Never pay more than this per gas (wei); `None`: no ceiling.
    pub max_fee_per_gas: Option<u128>,
}

impl Default for FeePolicy {
    fn default() -> Self {
        FeePolicy {
            base_fee_multiplier: 2.0,
            tip_percentile: 50.0,
            // 0.001 gwei: what Base's blocks usually carry.
            min_tip: 1_000_000,
            max_fee_per_gas: None,
        }
    }
}

/// Both fee fields must rise by at least this much (in per mille) for a node to accept a
/// replacement: geth and reth refuse less than 10 %; 12.5 % also clears the stricter pools.
pub const REPLACEMENT_BUMP_PER_MILLE: u128 = 125;

fn bumped(v: u128) -> u128 {
    // Rounded up, so a tiny fee still rises.
    v.saturating_mul(1000 + REPLACEMENT_BUMP_PER_MILLE)
        .div_ceil(1000)
}

impl FeePolicy {
    /// The fees for the next block, from its base fee and recent tips.
    pub fn quote(&self, next_base_fee: u128, recent_tips: &[u128]) -> Quote {
        let tip = percentile(recent_tips, self.tip_percentile).max(self.min_tip);
        let multiplier_per_mille = (self.base_fee_multiplier.max(1.0) * 1000.0) as u128;
        let wanted = next_base_fee
            .saturating_mul(multiplier_per_mille)
            .div_ceil(1000)
            .saturating_add(tip);
        match self.max_fee_per_gas {
            Some(ceiling) if next_base_fee.saturating_add(self.min_tip) > ceiling => {
                Quote::AboveCeiling {
                    base_fee: next_base_fee,
                    ceiling,
                }
            }
            Some(ceiling) => {
                let max_fee = wanted.min(ceiling);
                Quote::Send(Fees {
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: tip.min(max_fee - next_base_fee),
                })
            }
            None => Quote::Send(Fees {
                max_fee_per_gas: wanted,
                max_priority_fee_per_gas: tip,
            }),
        }
    }

    /// The fees of a replacement for a transaction sent with `old`, given what the market asks
    /// now: both fields at least 12.5 % above `old`, and at least `now`. `None` when that would
    /// break the ceiling (the old transaction is then rebroadcast as it is).
    pub fn bump(&self, old: Fees, now: Option<Fees>) -> Option<Fees> {
        let now = now.unwrap_or(old);
        let max_fee = bumped(old.max_fee_per_gas).max(now.max_fee_per_gas);
        let tip = bumped(old.max_priority_fee_per_gas)
            .max(now.max_priority_fee_per_gas)
            .min(max_fee);
        if tip < bumped(old.max_priority_fee_per_gas) {
            return None;
        }
        if let Some(ceiling) = self.max_fee_per_gas
            && max_fee > ceiling
        {
            return None;
        }
        Some(Fees {
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: tip,
        })
    }
}

fn percentile(values: &[u128], p: f64) -> u128 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// How long a quote is reused: fees move per block (Base: 2 s), and every batch asks.
const QUOTE_TTL: Duration = Duration::from_millis(500);

/// A chain's policy with a short-lived cache of its last quote.
#[derive(Debug)]
pub struct FeeOracle {
    pub policy: FeePolicy,
    cache: Mutex<Option<(Instant, Quote)>>,
}

impl FeeOracle {
    pub fn new(policy: FeePolicy) -> Self {
        FeeOracle {
            policy,
            cache: Mutex::new(None),
        }
    }

    /// The current quote, from `eth_feeHistory` over the last five blocks.
    pub async fn quote(&self, rpc: &RpcClient) -> Result<Quote, RpcError> {
        if let Some((at, q)) = *self.cache.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < QUOTE_TTL
        {
            return Ok(q);
        }
        let call = RpcCall {
            method: "eth_feeHistory",
            params: json!(["0x5", "latest", [self.policy.tip_percentile]]),
        };
        let history: FeeHistory = rpc
            .typed(call)
            .await?
            .map_err(|e| RpcError::Malformed(format!("eth_feeHistory refused: {}", e.message)))?;
        let next_base = history
            .base_fee_per_gas
            .last()
            .copied()
            .ok_or_else(|| RpcError::Malformed("eth_feeHistory without base fees".into()))?;
        let tips: Vec<u128> = history
            .reward
            .iter()
            .flatten()
            .filter_map(|r| r.first().copied())
            .filter(|t| *t > 0)
            .collect();
        let q = self.policy.quote(next_base, &tips);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), q));
        Ok(q)
    }

    /// Forgets the cached quote (the next asks the node).
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ceiling: Option<u128>) -> FeePolicy {
        FeePolicy {
            base_fee_multiplier: 2.0,
            tip_percentile: 50.0,
            min_tip: 10,
            max_fee_per_gas: ceiling,
        }
    }

    #[test]
    fn quote_is_base_times_multiplier_plus_the_median_tip_with_a_floor() {
        let q = policy(None).quote(1_000, &[5, 100, 200]);
        assert_eq!(
            q,
            Quote::Send(Fees {
                max_fee_per_gas: 2_100,
                max_priority_fee_per_gas: 100
            })
        );
        let floor = policy(None).quote(1_000, &[1, 2]);
        assert_eq!(
            floor,
            Quote::Send(Fees {
                max_fee_per_gas: 2_010,
                max_priority_fee_per_gas: 10
            })
        );
    }

    #[test]
    fn the_ceiling_caps_the_fee_and_stops_sending_below_the_base_fee() {
        let capped = policy(Some(1_500)).quote(1_000, &[100]);
        assert_eq!(
            capped,
            Quote::Send(Fees {
                max_fee_per_gas: 1_500,
                max_priority_fee_per_gas: 100
            })
        );
        let tight = policy(Some(1_050)).quote(1_000, &[100]);
        assert_eq!(
            tight,
            Quote::Send(Fees {
                max_fee_per_gas: 1_050,
                max_priority_fee_per_gas: 50
            })
        );
        assert_eq!(
            policy(Some(900)).quote(1_000, &[100]),
            Quote::AboveCeiling {
                base_fee: 1_000,
                ceiling: 900
            }
        );
    }

    #[test]
    fn a_replacement_raises_both_fields_by_at_least_an_eighth() {
        let old = Fees {
            max_fee_per_gas: 1_000,
            max_priority_fee_per_gas: 8,
        };
        let b = policy(None).bump(old, None).unwrap();
        assert!(b.max_fee_per_gas * 1000 >= old.max_fee_per_gas * 1125);
        assert!(b.max_priority_fee_per_gas * 1000 >= old.max_priority_fee_per_gas * 1125);
        assert_eq!((b.max_fee_per_gas, b.max_priority_fee_per_gas), (1_125, 9));
        // The market moved more than an eighth: follow the market.
        let market = Fees {
            max_fee_per_gas: 5_000,
            max_priority_fee_per_gas: 50,
        };
        assert_eq!(policy(None).bump(old, Some(market)), Some(market));
        // Never above the ceiling: no replacement then.
        assert_eq!(policy(Some(1_100)).bump(old, None), None);
        assert!(policy(Some(1_125)).bump(old, None).is_some());
        // Tiny fees still rise.
        let tiny = Fees {
            max_fee_per_gas: 1,
            max_priority_fee_per_gas: 1,
        };
        let t = policy(None).bump(tiny, None).unwrap();
        assert_eq!((t.max_fee_per_gas, t.max_priority_fee_per_gas), (2, 2));
    }
}
