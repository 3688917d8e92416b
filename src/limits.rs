//! Request limits: `N` requests a minute per client (an IP, an API key), allowed as a burst of `N`
//! and replenished evenly (one every `60/N` seconds), counted by `governor`'s GCRA. Used by Dial's
//! routes (per IP) and the facilitator's (per IP and per API key). Below every room: imports none.
//!
//! The state sits behind [`RateLimitBackend`], so the middleware does not know where it is kept:
//! [`InProcess`] (each node counts its own clients) or [`Shared`] (one count per client for every
//! node using the same Redis, the same GCRA in a Lua script on Redis's clock). [`Limits`] hands out
//! whichever the configuration asks for.

use std::fmt::Display;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Where this process keeps its limits: its own memory, or a Redis every node shares.
#[derive(Clone)]
pub enum Limits {
    Local,
    /// The Redis, and the namespace its keys start with (deployments sharing one Redis).
    Redis(redis::Client, Arc<str>),
}

impl Limits {
    /// `redis_url` set: counts shared through that Redis (it is not contacted until the first
    /// request). The configuration checked the URL; one that still does not open counts locally.
    pub fn new(redis_url: Option<&str>, namespace: &str) -> Self {
        match redis_url.map(redis::Client::open) {
            None => Limits::Local,
            Some(Ok(client)) => Limits::Redis(client, namespace.into()),
            Some(Err(e)) => {
                tracing::error!(error = %e, "server.redis_url does not open: limits are per node");
                Limits::Local
            }
        }
    }

    /// Whether the shared Redis answers a PING within `within` (`None`: no Redis configured).
    pub async fn probe(&self, within: Duration) -> Option<Result<(), String>> {
        let Limits::Redis(client, _) = self else {
            return None;
        };
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        Some(match tokio::time::timeout(within, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        })
    }

    /// A limiter of `per_minute` per client; `scope` keeps one route family's counts apart from
    /// another's in the shared store (`"ip"`, `"dial-ip"`, `"key"`).
    pub fn backend<K>(&self, scope: &'static str, per_minute: u32) -> Arc<dyn RateLimitBackend<K>>
    where
        K: Display + Hash + Eq + Clone + Send + Sync + 'static,
    {
        match self {
            Limits::Local => Arc::new(InProcess::new(per_minute)),
            Limits::Redis(client, namespace) => Arc::new(Shared::new(
                client.clone(),
                format!("{namespace}:rl:{scope}"),
                per_minute,
            )),
        }
    }
}

/// GCRA on Redis: the key holds the theoretical arrival time (ms, Redis's own clock so that
/// nodes with skewed clocks agree). A request is served when, after adding one emission interval,
/// the arrival time is at most `burst × interval` ahead of now. Returns {allowed, remaining or
/// wait in ms}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > burst * interval then
  return {0, ahead - burst * interval}
end
redis.call('SET', KEYS[1], new_tat, 'PX', ahead)
return {1, math.floor((burst * interval - ahead) / interval)}
"#;

/// How long a node counts locally after Redis failed, before trying Redis again.
const REDIS_RETRY: Duration = Duration::from_secs(5);

/// The shared backend: one count per client across every node on the same Redis. When Redis
/// cannot be reached the node counts in its own memory (each node then allows the rate on its
/// own: degraded, never unlimited, and never a refusal caused by the outage) and tries Redis
/// again after [`REDIS_RETRY`].
pub struct Shared<K: Hash + Eq + Clone> {
    client: redis::Client,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
    /// `{namespace}:rl:{scope}`: the start of every key of this limiter.
    prefix: String,
    per_minute: u32,
    fallback: InProcess<K>,
    down_until: Mutex<Option<Instant>>,
}

impl<K: Hash + Eq + Clone + Display> Shared<K> {
    pub fn new(client: redis::Client, prefix: String, per_minute: u32) -> Self {
        Shared {
            client,
            connection: tokio::sync::OnceCell::new(),
            script: redis::Script::new(GCRA),
            prefix,
            per_minute: per_minute.max(1),
            fallback: InProcess::new(per_minute),
            down_until: Mutex::new(None),
        }
    }

    async fn shared_check(&self, client: &K) -> Result<Verdict, redis::RedisError> {
        let connection = self
            .connection
            .get_or_try_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(1);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        let mut connection = connection.clone();
        let interval_ms = 60_000 / u64::from(self.per_minute);
        let (allowed, n): (u8, u64) = self
            .script
            .key(format!("{}:{}:{client}", self.prefix, self.per_minute))
            .arg(interval_ms.max(1))
            .arg(self.per_minute)
            .invoke_async(&mut connection)
            .await?;
        Ok(if allowed == 1 {
            Verdict::Allowed {
                remaining: u32::try_from(n).unwrap_or(u32::MAX),
            }
        } else {
            Verdict::Limited {
                retry_after_secs: n.div_ceil(1000).max(1),
            }
        })
    }
}

impl<K> RateLimitBackend<K> for Shared<K>
where
    K: Display + Hash + Eq + Clone + Send + Sync,
{
    fn check(&self, client: K) -> BoxFuture<'_, Verdict> {
        Box::pin(async move {
            let down = self
                .down_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|until| Instant::now() < until);
            if !down {
                match self.shared_check(&client).await {
                    Ok(verdict) => return verdict,
                    Err(e) => {
                        tracing::warn!(error = %e, limiter = %self.prefix, retry_in = ?REDIS_RETRY,
                            "Redis unreachable: rate limits are counted per node until it is back");
                        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now() + REDIS_RETRY);
                    }
                }
            }
            self.fallback.check_now(client)
        })
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
