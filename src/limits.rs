//! Request limits: `N` requests a minute per client (an IP, an API key), allowed as a burst of `N`
//! and replenished evenly (one every `60/N` seconds), counted by `governor`'s GCRA. Used by Dial's
//! routes (per IP) and the facilitator's (per IP and per API key). Below every room: imports none.
//!
//! The state sits behind [`RateLimitBackend`], so the middleware does not know where it is kept.
//! Today it is [`InProcess`]: each node counts its own clients. A cluster can put a shared store
//! (Redis, say) behind the same trait so that every node sees one count per client.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// How often the in-process limiter forgets clients whose budget is full again: a client idle for
/// a minute is indistinguishable from a new one, so dropping it changes no verdict, and memory
/// stays bounded by the clients seen in the last minute or two.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Served; `remaining` more requests would be served right now.
    Allowed { remaining: u32 },
    /// Refused; the next request is served in `retry_after_secs` (at least 1).
    Limited { retry_after_secs: u64 },
}

/// Where the per-client counts live. Object-safe so Dial holds any backend as one type; a
/// backend that cannot reach its store decides itself whether to fail open or closed.
pub trait RateLimitBackend<K>: Send + Sync {
    /// Counts one request from `client` and says whether to serve it.
    fn check(&self, client: K) -> BoxFuture<'_, Verdict>;
}

type Keyed<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, StateInformationMiddleware>;

/// The in-process backend: a `governor` keyed limiter, swept of idle clients every minute.
pub struct InProcess<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: Keyed<K, C>,
    next_sweep: Mutex<C::Instant>,
}

impl<K: Hash + Eq + Clone> InProcess<K> {
    /// `per_minute` requests a minute per client, all of them allowed at once.
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> InProcess<K, C> {
    fn with_clock(per_minute: u32, clock: C) -> Self {
        // The config refuses 0 (`dial.rate_limit_per_minute`); 1 is the closest meaningful limit.
        let burst = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let next_sweep = Mutex::new(clock.now() + SWEEP_EVERY.into());
        // `StateInformationMiddleware`: an allowed answer carries the remaining burst.
        let limiter: Keyed<K, C> = RateLimiter::new(
            Quota::per_minute(burst),
            DefaultKeyedStateStore::default(),
            clock,
        );
        InProcess {
            limiter,
            next_sweep,
        }
    }

    /// Counts one request from `client` now.
    pub fn check_now(&self, client: K) -> Verdict {
        self.sweep_if_due();
        match self.limiter.check_key(&client) {
            Ok(snapshot) => Verdict::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Rounded up: a client told to come back sooner would only be refused again.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Verdict::Limited {
                    retry_after_secs: secs.max(1),
                }
            }
        }
    }

    fn sweep_if_due(&self) {
        let now = self.limiter.clock().now();
        // `try_lock`: one request sweeps, the others go on counting rather than wait for it.
        let Ok(mut next) = self.next_sweep.try_lock() else {
            return;
        };
        if now < *next {
            return;
        }
        *next = now + SWEEP_EVERY.into();
        drop(next);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

impl<K, C> RateLimitBackend<K> for InProcess<K, C>
where
    K: Hash + Eq + Clone + Send + Sync,
    C: Clock + Send + Sync,
    C::Instant: Send,
{
    fn check(&self, client: K) -> BoxFuture<'_, Verdict> {
        let verdict = self.check_now(client);
        Box::pin(std::future::ready(verdict))
    }
}

/// Writes a verdict's headers: `X-RateLimit-Remaining` always, `Retry-After` when limited.
pub fn annotate(headers: &mut axum::http::HeaderMap, verdict: Verdict) {
    use axum::http::{HeaderValue, header};
    match verdict {
        Verdict::Allowed { remaining } => {
            headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        }
        Verdict::Limited { retry_after_secs } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn the_request_past_the_burst_waits_for_the_next_cell() {
        let clock = FakeRelativeClock::default();
        // 3 a minute: a burst of 3, then one every 20 s.
        let limiter = InProcess::with_clock(3, clock.clone());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(limiter.check_now(ip), Verdict::Allowed { remaining: 2 });
        assert_eq!(limiter.check_now(ip), Verdict::Allowed { remaining: 1 });
        assert_eq!(limiter.check_now(ip), Verdict::Allowed { remaining: 0 });
        clock.advance(Duration::from_millis(5_500));
        assert_eq!(
            limiter.check_now(ip),
            Verdict::Limited {
                retry_after_secs: 15
            },
            "14.5 s to the next cell, rounded up"
        );
        assert_eq!(limiter.check_now(other), Verdict::Allowed { remaining: 2 });
        clock.advance(Duration::from_millis(14_500));
        assert_eq!(limiter.check_now(ip), Verdict::Allowed { remaining: 0 });
        assert_eq!(
            limiter.check_now(ip),
            Verdict::Limited {
                retry_after_secs: 20
            }
        );
        clock.advance(Duration::from_secs(60));
        assert_eq!(limiter.check_now(ip), Verdict::Allowed { remaining: 2 });
    }

    #[test]
    fn a_wait_under_a_second_is_answered_as_one() {
        let clock = FakeRelativeClock::default();
        let limiter = InProcess::with_clock(600, clock.clone());
        let ip: IpAddr = "::1".parse().unwrap();
        for _ in 0..600 {
            assert!(matches!(limiter.check_now(ip), Verdict::Allowed { .. }));
        }
        assert_eq!(
            limiter.check_now(ip),
            Verdict::Limited {
                retry_after_secs: 1
            },
            "100 ms to the next cell"
        );
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limiter = InProcess::with_clock(60, clock.clone());
        for last in 0..=255u8 {
            limiter.check_now(IpAddr::from([10, 0, 0, last]));
        }
        assert_eq!(limiter.limiter.len(), 256);
        // Each client's budget is full again after one second; the sweep runs after a minute.
        clock.advance(SWEEP_EVERY);
        let newcomer = IpAddr::from([10, 0, 1, 0]);
        assert_eq!(
            limiter.check_now(newcomer),
            Verdict::Allowed { remaining: 59 }
        );
        assert_eq!(limiter.limiter.len(), 1, "only the newcomer is left");
    }
}
