//! The most recent disconnects of this process, for the inspector: a bounded ring written
//! by every session as it ends (one short lock per closed connection).

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::tuning::DISCONNECTS_KEPT;

/// One ended connection.
#[derive(Debug, Clone, Serialize)]
pub struct Disconnect {
    /// When it ended (seconds since the epoch).
    pub at: f64,
    pub reason: &'static str,
    pub duration_ms: u64,
    pub subscriptions: usize,
    /// Who held it (its first subscription): `user 2` or `contact 1`, with the account.
    pub who: Option<String>,
    pub account_id: Option<i64>,
    /// The first subscription's token as a 4-character prefix.
    pub token: Option<String>,
}

#[derive(Default)]
pub struct DisconnectLog {
    recent: Mutex<VecDeque<Disconnect>>,
}

impl DisconnectLog {
    pub fn record(&self, disconnect: Disconnect) {
        let mut recent = self.recent.lock();
        if recent.len() == DISCONNECTS_KEPT {
            recent.pop_front();
        }
        recent.push_back(disconnect);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Disconnect> {
        self.recent.lock().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest() {
        let log = DisconnectLog::default();
        for n in 0..(DISCONNECTS_KEPT as u64 + 5) {
            log.record(Disconnect {
                at: n as f64,
                reason: "client_closed",
                duration_ms: n,
                subscriptions: 0,
                who: None,
                account_id: None,
                token: None,
            });
        }
        let recent = log.recent();
        assert_eq!(recent.len(), DISCONNECTS_KEPT);
        assert_eq!(recent[0].duration_ms, DISCONNECTS_KEPT as u64 + 4);
        assert_eq!(recent[DISCONNECTS_KEPT - 1].duration_ms, 5);
    }
}
