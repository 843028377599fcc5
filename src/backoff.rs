//! The wait between attempts to re-open a connection the process depends on (the LISTEN
//! connection, the Redis subscriber): 1 s, doubling per consecutive failure up to 30 s.
//! Only consecutive failures grow it: a connection that got live starts it over, or every
//! drop of a healthy connection would wait longer (up to 30 s of 503 from `/ready`).

use std::time::Duration;

use crate::config::tuning::{RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN};

#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(RECONNECT_BACKOFF_MIN)
    }
}

impl Backoff {
    /// The wait before the next attempt; `was_live` says whether the last attempt got its
    /// connection live.
    pub fn next(&mut self, was_live: bool) -> Duration {
        if was_live {
            self.0 = RECONNECT_BACKOFF_MIN;
        }
        let wait = self.0;
        self.0 = (self.0 * 2).min(RECONNECT_BACKOFF_MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_consecutive_failure_and_starts_over_after_a_live_connection() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = [false, false, false, false, false, false, true, false]
            .iter()
            .map(|live| backoff.next(*live).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 1, 2]);
    }
}
