//! The history of stream ingress (Rails' adapters, the broadcast API) kept in this process's
//! memory: per stream, the last `CABLE_HISTORY_LIMIT` broadcasts for `CABLE_HISTORY_TTL`.
//!
//! Unlike the outbox, a broadcast exists only where it was heard: only the process that heard
//! it can replay it. So each stream's ring has an epoch of its own, drawn when the ring is made
//! (a random per-process part and a counter): a position from another process, or from a ring
//! that was dropped meanwhile, names another epoch and is refused (`reject_history`).
//! Offsets count from 1 per ring. A ring is dropped once it is empty and no subscription here
//! streams its name ([`Rings::sweep`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::delivery::{Message, Position, RingId};
use crate::router::StreamHistory;

/// One broadcast kept for replay.
#[derive(Clone)]
pub struct Kept {
    pub message: Arc<Message>,
    /// Whether contact subscriptions may receive it ([`crate::routing`] rule 7).
    pub contacts: bool,
    at: Instant,
}

struct Ring {
    id: Arc<RingId>,
    next: i64,
    kept: VecDeque<Kept>,
}

impl Ring {
    fn evict(&mut self, limit: usize, ttl: Duration, now: Instant) {
        while self.kept.len() > limit
            || self
                .kept
                .front()
                .is_some_and(|k| now.duration_since(k.at) > ttl)
        {
            self.kept.pop_front();
        }
    }

    /// The offset of the oldest broadcast kept (`next` when none is).
    fn oldest(&self) -> i64 {
        self.next - self.kept.len() as i64
    }
}

/// Why a position cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Another process's, or a ring since dropped.
    Epoch,
    /// Older than what is kept.
    Evicted,
}

pub struct Rings {
    limit: usize,
    ttl: Duration,
    process: String,
    made: AtomicU64,
    rings: Mutex<HashMap<Arc<str>, Ring>>,
}

impl Rings {
    pub fn new(limit: usize, ttl: Duration) -> Rings {
        Rings {
            limit,
            ttl,
            process: super::sid::random_hex(4),
            made: AtomicU64::new(0),
            rings: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a broadcast on `stream` (`body`: its payload) and gives it its position.
    pub fn record(
        &self,
        stream: &str,
        body: Bytes,
        created_at: f64,
        contacts: bool,
    ) -> Arc<Message> {
        let now = Instant::now();
        let mut rings = self.rings.lock();
        let ring = match rings.get_mut(stream) {
            Some(ring) => ring,
            None => {
                let n = self.made.fetch_add(1, Ordering::Relaxed);
                let epoch: Arc<str> = format!("{}-{n}", self.process).into();
                rings.entry(stream.into()).or_insert(Ring {
                    id: Arc::new(RingId::new(stream, epoch)),
                    next: 1,
                    kept: VecDeque::new(),
                })
            }
        };
        let offset = ring.next;
        ring.next += 1;
        let message = Arc::new(Message::new(
            body,
            created_at,
            Position::Stream {
                stream: stream.into(),
                ring: ring.id.clone(),
                offset,
            },
        ));
        if self.limit > 0 {
            ring.kept.push_back(Kept {
                message: message.clone(),
                contacts,
                at: now,
            });
        }
        ring.evict(self.limit, self.ttl, now);
        message
    }

    /// The offset of the last broadcast on `stream` (0 when there was none).
    pub fn last(&self, stream: &str) -> i64 {
        self.rings
            .lock()
            .get(stream)
            .map_or(0, |ring| ring.next - 1)
    }

    /// The broadcasts on `stream` after `offset` of `epoch`, up to `upto`; refused when the
    /// ring is not that epoch's or no longer holds everything after `offset`.
    pub fn after(
        &self,
        stream: &str,
        epoch: &str,
        offset: i64,
        upto: i64,
    ) -> Result<Vec<Kept>, Unknown> {
        let now = Instant::now();
        let mut rings = self.rings.lock();
        let ring = rings.get_mut(stream).ok_or(Unknown::Epoch)?;
        if &*ring.id.epoch != epoch {
            return Err(Unknown::Epoch);
        }
        ring.evict(self.limit, self.ttl, now);
        if offset + 1 < ring.oldest() || offset >= ring.next {
            return Err(Unknown::Evicted);
        }
        let oldest = ring.oldest();
        Ok(ring
            .kept
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let at = oldest + *i as i64;
                at > offset && at <= upto
            })
            .map(|(_, kept)| kept.clone())
            .collect())
    }

    /// The broadcasts on `stream` published at or after `since` (unix seconds), up to `upto`.
    pub fn since(&self, stream: &str, since: f64, upto: i64) -> Vec<Kept> {
        let now = Instant::now();
        let mut rings = self.rings.lock();
        let Some(ring) = rings.get_mut(stream) else {
            return Vec::new();
        };
        ring.evict(self.limit, self.ttl, now);
        let oldest = ring.oldest();
        ring.kept
            .iter()
            .enumerate()
            .filter(|(i, kept)| oldest + *i as i64 <= upto && kept.message.created_at >= since)
            .map(|(_, kept)| kept.clone())
            .collect()
    }

    /// Drops expired broadcasts, and rings left empty that `streamed` says nobody here
    /// streams any longer.
    pub fn sweep(&self, streamed: impl Fn(&str) -> bool) {
        let now = Instant::now();
        let mut rings = self.rings.lock();
        rings.retain(|stream, ring| {
            ring.evict(self.limit, self.ttl, now);
            !ring.kept.is_empty() || streamed(stream)
        });
    }
}

impl StreamHistory for Rings {
    fn last(&self, stream: &str) -> i64 {
        Rings::last(self, stream)
    }

    fn record(&self, stream: &str, body: Bytes, created_at: f64, contacts: bool) -> Arc<Message> {
        Rings::record(self, stream, body, created_at, contacts)
    }

    fn sweep(&self, streamed: &dyn Fn(&str) -> bool) {
        Rings::sweep(self, streamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: i64) -> Bytes {
        Bytes::from(format!("{{\"n\":{n}}}"))
    }

    fn offsets(kept: &[Kept]) -> Vec<i64> {
        kept.iter()
            .map(|k| match &k.message.position {
                Position::Stream { offset, .. } => *offset,
                _ => panic!("a stream position"),
            })
            .collect()
    }

    #[test]
    fn replays_after_a_position_of_its_epoch_only() {
        let rings = Rings::new(3, Duration::from_secs(60));
        for n in 1..=5 {
            rings.record("s", body(n), 0.0, true);
        }
        let epoch = match &rings.record("s", body(6), 0.0, true).position {
            Position::Stream { ring, offset, .. } => {
                assert_eq!(*offset, 6);
                assert_eq!(&*ring.quoted_stream, "\"s\"");
                assert_eq!(*ring.quoted_epoch, crate::delivery::quoted(&ring.epoch));
                ring.epoch.to_string()
            }
            _ => panic!("a stream position"),
        };
        // Kept: 4, 5, 6.
        assert_eq!(
            offsets(&rings.after("s", &epoch, 4, 6).unwrap()),
            vec![5, 6]
        );
        assert_eq!(
            offsets(&rings.after("s", &epoch, 3, 5).unwrap()),
            vec![4, 5]
        );
        assert_eq!(rings.after("s", &epoch, 2, 6).err(), Some(Unknown::Evicted));
        assert_eq!(rings.after("s", &epoch, 9, 6).err(), Some(Unknown::Evicted));
        assert_eq!(
            rings.after("s", "other-0", 4, 6).err(),
            Some(Unknown::Epoch)
        );
        assert_eq!(rings.after("t", &epoch, 4, 6).err(), Some(Unknown::Epoch));
        assert_eq!(rings.last("s"), 6);
        assert_eq!(rings.last("t"), 0);
    }

    #[test]
    fn a_dropped_ring_comes_back_with_another_epoch() {
        let rings = Rings::new(10, Duration::ZERO);
        let first = rings.record("s", body(1), 0.0, true);
        std::thread::sleep(Duration::from_millis(2));
        rings.sweep(|_| false);
        let second = rings.record("s", body(1), 0.0, true);
        let epoch = |m: &Message| match &m.position {
            Position::Stream { ring, .. } => ring.epoch.clone(),
            _ => panic!(),
        };
        assert_ne!(epoch(&first), epoch(&second));
    }
}
