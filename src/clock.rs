//! The one clock. Lives below every room (nothing here imports another room), so the ledger, the
//! facilitator, settlement, telemetry and Dial all read the same time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds added to the system time by [`advance`].
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Moves this process's clock forward, for tests of time windows (expiry, ageing) that must not
/// sleep. Never called by x402d itself.
pub fn advance(by: Duration) {
    OFFSET_MS.fetch_add(
        i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
        Ordering::Relaxed,
    );
}

/// Undoes every [`advance`].
pub fn reset() {
    OFFSET_MS.store(0, Ordering::Relaxed);
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
        .saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    u64::try_from(system_ms() / 1000).unwrap_or(0)
}

/// Unix seconds as RFC 3339 in UTC (`2026-11-18T11:06:40Z`); outside the years 0000–9999, the
/// plain number.
pub fn rfc3339(unix: i64) -> String {
    utc_rfc3339(unix).unwrap_or_else(|| unix.to_string())
}

/// Unix seconds as RFC 3339 in UTC, if representable.
pub fn utc_rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    system_ms()
}
