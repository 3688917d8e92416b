//! A per-client fixed-window request limit (in-process: each node counts its own clients).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked clients, expired windows are swept on the next request.
const SWEEP_AT: usize = 10_000;

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed { remaining: u32 },
    Limited { retry_after_secs: u64 },
}

pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Verdict {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Verdict::Limited {
                retry_after_secs: left.as_secs().max(1),
            };
        }
        entry.1 += 1;
        Verdict::Allowed {
            remaining: self.per_minute - entry.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_past_the_limit_waits_for_the_window() {
        let limiter = RateLimiter::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(ip, t0), Verdict::Allowed { remaining: 2 });
        assert_eq!(limiter.check_at(ip, t0), Verdict::Allowed { remaining: 1 });
        assert_eq!(limiter.check_at(ip, t0), Verdict::Allowed { remaining: 0 });
        assert_eq!(
            limiter.check_at(ip, t0 + Duration::from_secs(20)),
            Verdict::Limited {
                retry_after_secs: 40
            }
        );
        assert_eq!(
            limiter.check_at(other, t0),
            Verdict::Allowed { remaining: 2 }
        );
        assert_eq!(
            limiter.check_at(ip, t0 + Duration::from_secs(60)),
            Verdict::Allowed { remaining: 2 }
        );
    }
}
