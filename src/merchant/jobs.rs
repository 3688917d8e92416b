//! Dial's background work, one pass at a time: numbers past their month into grace and past
//! their grace released at the provider (once), verification rentals past their window expired
//! and refunded, due webhook deliveries tried, refunds paid. Every step is a compare-and-set
//! on the store, so any number of nodes may run it.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Dial;

/// A release claimed longer ago than this without finishing is tried again (the provider's
/// release is idempotent).
const STALE_RELEASE_MS: i64 = 5 * 60_000;

/// What Dial counts, in the app's registry.
pub struct Counters {
    pub inbound: IntCounter,
    pub webhooks: IntCounterVec,
    pub refunds_paid: IntCounter,
    pub refunds: IntGaugeVec,
}

impl Counters {
    /// The series, registered in `registry` when given (start-up: the names are constants).
    pub fn new(registry: Option<&Registry>) -> Counters {
        let counters = Counters {
            inbound: IntCounter::new(
                "x402d_dial_inbound_messages_total",
                "Texts received at Dial's numbers (duplicates from the provider not counted)",
            )
            .expect("a valid metric name"),
            webhooks: IntCounterVec::new(
                Opts::new(
                    "x402d_dial_webhook_attempts_total",
                    "Webhook delivery attempts by outcome (delivered, failed)",
                ),
                &["outcome"],
            )
            .expect("a valid metric name"),
            refunds_paid: IntCounter::new(
                "x402d_dial_refunds_paid_total",
                "Refunds whose transfer back to the payer was mined",
            )
            .expect("a valid metric name"),
            refunds: IntGaugeVec::new(
                Opts::new(
                    "x402d_dial_refunds",
                    "Refunds by status (owed, signed, confirmed)",
                ),
                &["status"],
            )
            .expect("a valid metric name"),
        };
        // Every label set exists from the start: a rate of zero is a series, not a gap.
        for outcome in ["delivered", "failed"] {
            counters.webhooks.with_label_values(&[outcome]);
        }
        for status in ["owed", "signed", "confirmed"] {
            counters.refunds.with_label_values(&[status]);
        }
        if let Some(r) = registry {
            for c in [
                Box::new(counters.inbound.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(counters.webhooks.clone()),
                Box::new(counters.refunds_paid.clone()),
                Box::new(counters.refunds.clone()),
            ] {
                if let Err(e) = r.register(c) {
                    tracing::warn!(error = %e, "a Dial series is not registered");
                }
            }
        }
        counters
    }
}

impl Dial {
    /// Runs [`Dial::run_due`] every `dial.jobs_interval_ms`, and at once when woken (a text
    /// arrived for a webhook, a refund became owed).
    pub(crate) fn spawn_jobs(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let dial = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.jobs_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                let Some(d) = dial.upgrade() else { return };
                d.run_due(crate::clock::now_ms()).await;
                let wake = d.jobs_wake.clone();
                drop(d);
                let _ = tokio::time::timeout(every, wake.notified()).await;
            }
        })
    }

    /// One pass of the background work as of `now` (milliseconds; tests pass a later time to
    /// see expiry without waiting).
    pub async fn run_due(&self, now: i64) {
        if let Err(e) = self.store.numbers_into_grace(now).await {
            tracing::warn!(error = %e, "numbers not moved into grace");
        }
        self.release_numbers(now).await;
        self.expire_verifications(now).await;
        self.deliver_due(now).await;
        self.pay_refunds(now).await;
        if let Ok(counts) = self.store.refund_counts().await {
            for status in ["owed", "signed", "confirmed"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                self.counters.refunds.with_label_values(&[status]).set(n);
            }
        }
    }

    async fn release_numbers(&self, now: i64) {
        let grace_ms = i64::try_from(self.config.number_grace_seconds.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let claimed = match self
            .store
            .claim_releases(now, grace_ms, STALE_RELEASE_MS)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "numbers to release unreadable");
                return;
            }
        };
        for n in claimed {
            match self.numbers.release(&n.provider_id).await {
                Ok(()) => {
                    if let Err(e) = self.store.mark_released(&n.phone_number, now).await {
                        tracing::warn!(error = %e, number = %n.phone_number, "released but not recorded (retried)");
                    } else {
                        tracing::info!(number = %n.phone_number, "number released at the provider");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, number = %n.phone_number, "release failed (retried)")
                }
            }
        }
    }

    async fn expire_verifications(&self, now: i64) {
        let expired = match self.store.expire_verifications(now).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "verifications not expired");
                return;
            }
        };
        for v in expired {
            let Some(receipt) = v.receipt_id else {
                continue;
            };
            match self
                .store
                .owe_refund(
                    receipt,
                    "no code was received within the verification window",
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(verification = %v.verification_id, receipt, "no code received: refund owed")
                }
                Err(e) => {
                    tracing::error!(error = %e, verification = %v.verification_id, "refund not recorded")
                }
            }
        }
    }
}
