//! The life of a payment: one enum of states and one enum of transitions, each transition naming
//! the states it may leave and the one it enters, with its evidence. [`super::Ledger::transition`]
//! applies them compare-and-set; nothing else writes a payment's state.
//!
//! ```text
//! received → queued ⇄ (deferred) → in_batch(tx) → included(block) → confirmed → final
//!               ↑           │              │               │             │
//!               │           ↓              ↓               └── reorg ────┤→ queued (resubmitted)
//!               │       refused       failed(reason)                     └→ lost(reason)
//!               └── a new submission of a refused key
//! ```
//! A refusal before any broadcast (`refused`) frees the key: the same authorization may be
//! submitted again once it became payable. A failure after a broadcast (`failed`) is final.

use std::str::FromStr;

use alloy::primitives::B256;

use super::LedgerError;

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentState {
    /// Claimed and waiting for a batch (perhaps deferred until `not_before`).
    Queued,
    /// In a signed (maybe broadcast) transaction whose receipt has not been seen: "pending".
    InBatch,
    /// Its `AuthorizationUsed` log is in a mined block; waiting for confirmations.
    Included,
    /// Deep enough to answer success; still watched for reorgs until final.
    Confirmed,
    /// Past the finality window.
    Final,
    /// Refused before any broadcast; the key is free again.
    Refused,
    /// Failed after a broadcast; final.
    Failed,
    /// Un-included by a reorg after its authorization expired: the payee was not paid.
    Lost,
}

use PaymentState::*;

impl PaymentState {
    pub const ALL: [PaymentState; 8] = [
        Queued, InBatch, Included, Confirmed, Final, Refused, Failed, Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Queued => "queued",
            InBatch => "in_batch",
            Included => "included",
            Confirmed => "confirmed",
            Final => "final",
            Refused => "refused",
            Failed => "failed",
            Lost => "lost",
        }
    }

    /// A `/settle` waiting on the payment can answer.
    pub fn is_terminal(self) -> bool {
        matches!(self, Confirmed | Final | Refused | Failed | Lost)
    }

    /// The payee has the money (as far as the chain tells now).
    pub fn is_settled(self) -> bool {
        matches!(self, Confirmed | Final)
    }

    /// The payment holds its key: a second arrival joins it instead of starting afresh.
    pub fn holds_key(self) -> bool {
        self != Refused
    }
}

impl FromStr for PaymentState {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, LedgerError> {
        PaymentState::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown payment state {s:?}")))
    }
}

/// Where a transaction was mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inclusion {
    pub tx_hash: B256,
    pub block_number: u64,
    pub block_hash: B256,
}

/// A move of a payment, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Into a signed transaction (written before the broadcast).
    Batched { batch_id: i64, tx_hash: B256 },
    /// Its batch was signed again (replacement fees or a fresh nonce).
    Resigned { tx_hash: B256 },
    /// Its `AuthorizationUsed` log is in this mined transaction.
    Included {
        at: Inclusion,
        /// Already deep enough to answer success.
        confirmed: bool,
    },
    /// Deep enough.
    Confirmed,
    /// Past the finality window.
    Finalized,
    /// Settled by a transaction we did not send, or re-included elsewhere after a reorg.
    SettledAt { at: Inclusion, why: String },
    /// Back to the queue: its transaction did not settle it, or a reorg un-included it.
    Requeued {
        why: String,
        /// Counts towards the attempt limit (it was in a broadcast transaction).
        after_broadcast: bool,
        /// Not picked before this time (ms).
        not_before: i64,
    },
    /// Stays queued, tried again later: it could not be judged now.
    Deferred { why: String, not_before: i64 },
    /// Refused before any broadcast: the key is free.
    Refused { reason: String, message: String },
    /// Failed after a broadcast: final.
    Failed { reason: String, message: String },
    /// A reorg un-included it after its authorization expired.
    Lost { reason: String, message: String },
}

impl Transition {
    /// The states this transition may leave.
    pub fn from_states(&self) -> &'static [PaymentState] {
        match self {
            Transition::Batched { .. } => &[Queued],
            Transition::Resigned { .. } => &[InBatch],
            Transition::Included { .. } => &[InBatch],
            Transition::Confirmed => &[Included],
            Transition::Finalized => &[Confirmed],
            Transition::SettledAt { .. } => &[Queued, InBatch, Included, Confirmed],
            Transition::Requeued { .. } => &[InBatch, Included, Confirmed],
            Transition::Deferred { .. } => &[Queued],
            Transition::Refused { .. } => &[Queued],
            Transition::Failed { .. } => &[Queued, InBatch],
            Transition::Lost { .. } => &[InBatch, Included, Confirmed],
        }
    }

    /// The state it enters.
    pub fn to_state(&self) -> PaymentState {
        match self {
            Transition::Batched { .. } | Transition::Resigned { .. } => InBatch,
            Transition::Included {
                confirmed: false, ..
            } => Included,
            Transition::Included {
                confirmed: true, ..
            }
            | Transition::Confirmed
            | Transition::SettledAt { .. } => Confirmed,
            Transition::Finalized => Final,
            Transition::Requeued { .. } | Transition::Deferred { .. } => Queued,
            Transition::Refused { .. } => Refused,
            Transition::Failed { .. } => Failed,
            Transition::Lost { .. } => Lost,
        }
    }

    /// The history line recorded with it.
    pub fn detail(&self) -> Option<String> {
        match self {
            Transition::Batched { tx_hash, .. } | Transition::Resigned { tx_hash } => {
                Some(format!("{tx_hash}"))
            }
            Transition::Included { at, .. } => Some(format!(
                "{} in block {} ({})",
                at.tx_hash, at.block_number, at.block_hash
            )),
            Transition::SettledAt { at, why } => Some(format!(
                "{why}: {} in block {}",
                at.tx_hash, at.block_number
            )),
            Transition::Requeued { why, .. } | Transition::Deferred { why, .. } => {
                Some(why.clone())
            }
            Transition::Refused { reason, message }
            | Transition::Failed { reason, message }
            | Transition::Lost { reason, message } => Some(format!("{reason}: {message}")),
            Transition::Confirmed | Transition::Finalized => None,
        }
    }

    /// The event name in the history (a deferral is recorded as such, though it stays queued).
    pub fn event_name(&self) -> &'static str {
        match self {
            Transition::Deferred { .. } => "deferred",
            Transition::Resigned { .. } => "resigned",
            t => t.to_state().as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in PaymentState::ALL {
            assert_eq!(s.as_str().parse::<PaymentState>().unwrap(), s);
        }
        assert!("settled".parse::<PaymentState>().is_err());
    }

    #[test]
    fn only_a_refusal_frees_the_key_and_terminal_states_answer() {
        for s in PaymentState::ALL {
            assert_eq!(s.holds_key(), s != Refused, "{s:?}");
        }
        assert!(
            !InBatch.is_terminal(),
            "a late receipt is pending, never failed"
        );
        assert!(!Included.is_terminal());
        assert!(Confirmed.is_terminal() && Lost.is_terminal());
    }

    #[test]
    fn no_transition_leaves_a_final_state_and_a_refusal_needs_no_broadcast() {
        let at = Inclusion {
            tx_hash: B256::ZERO,
            block_number: 1,
            block_hash: B256::ZERO,
        };
        let all = [
            Transition::Batched {
                batch_id: 1,
                tx_hash: B256::ZERO,
            },
            Transition::Resigned {
                tx_hash: B256::ZERO,
            },
            Transition::Included {
                at,
                confirmed: false,
            },
            Transition::Confirmed,
            Transition::Finalized,
            Transition::SettledAt {
                at,
                why: String::new(),
            },
            Transition::Requeued {
                why: String::new(),
                after_broadcast: true,
                not_before: 0,
            },
            Transition::Deferred {
                why: String::new(),
                not_before: 0,
            },
            Transition::Refused {
                reason: String::new(),
                message: String::new(),
            },
            Transition::Failed {
                reason: String::new(),
                message: String::new(),
            },
            Transition::Lost {
                reason: String::new(),
                message: String::new(),
            },
        ];
        for t in &all {
            for from in t.from_states() {
                assert!(
                    !matches!(from, Final | Refused | Failed | Lost),
                    "{t:?} leaves {from:?}"
                );
            }
        }
        let refused = Transition::Refused {
            reason: String::new(),
            message: String::new(),
        };
        assert_eq!(refused.from_states(), &[Queued]);
    }
}
