//! The wall clock, as the protocol and the metrics spell it: seconds since the Unix epoch
//! (0 if the clock is before it).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds with a fraction (event stamps, latencies).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Now, in whole seconds (pings, token expiry, presence scores).
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
