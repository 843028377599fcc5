//! Pings for every connection of the process from one timer: `{"type":"ping","message":<unix
//! seconds>}` every [`PING_INTERVAL`] per connection, spread over [`SLOTS`] ticks so that they
//! do not all go out in the same instant.
//!
//! Each tick encodes its frame once and hands it to every connection of its slot like any
//! other delivery ([`SessionHandle::send`]): written straight to an idle socket, without
//! waking the connection's task (a timer per connection would wake every task every 3 s),
//! or queued behind what is waiting.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::tuning::PING_INTERVAL;
use crate::delivery::{push_text, CloseReason, Outbound, SessionHandle};
use crate::protocol::reply;

/// Ticks per ping interval.
pub const SLOTS: usize = 30;

struct Slot {
    sessions: HashMap<u64, SessionHandle>,
    /// The last value sent from this slot: values only grow, even if the clock steps back.
    last: u64,
}

pub struct Pings {
    slots: Vec<Mutex<Slot>>,
}

impl Default for Pings {
    fn default() -> Self {
        Pings {
            slots: (0..SLOTS)
                .map(|_| {
                    Mutex::new(Slot {
                        sessions: HashMap::new(),
                        last: 0,
                    })
                })
                .collect(),
        }
    }
}

impl Pings {
    fn slot(&self, id: u64) -> &Mutex<Slot> {
        &self.slots[(id % SLOTS as u64) as usize]
    }

    /// Pings `session` from now on, until [`Pings::remove`].
    pub fn add(&self, session: &SessionHandle) {
        let id = session.queue.id;
        self.slot(id).lock().sessions.insert(id, session.clone());
    }

    pub fn remove(&self, session: &SessionHandle) {
        let id = session.queue.id;
        self.slot(id).lock().sessions.remove(&id);
    }

    /// Closes every session (shutdown): every open connection is pinged, so every one is
    /// here.
    pub fn close_all(&self, reason: CloseReason) {
        for slot in &self.slots {
            for session in slot.lock().sessions.values() {
                session.queue.close(reason.clone());
            }
        }
    }

    /// Pings one slot's sessions.
    fn tick(&self, slot: usize, batch: &mut Vec<SessionHandle>) {
        let now = crate::clock::unix_seconds();
        let value = {
            let mut slot = self.slots[slot].lock();
            slot.last = now.max(slot.last + 1);
            batch.extend(slot.sessions.values().cloned());
            slot.last
        };
        if batch.is_empty() {
            return;
        }
        let mut frame = Vec::new();
        push_text(&mut frame, &reply::ping(value));
        let frame = Bytes::from(frame);
        for session in batch.drain(..) {
            session.send(Outbound::Raw(frame.clone()));
        }
    }

    /// The timer, forever (a task of the process).
    pub async fn run(self: std::sync::Arc<Self>) {
        let step = PING_INTERVAL / SLOTS as u32;
        let mut tick = tokio::time::interval(step.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut slot = 0;
        loop {
            tick.tick().await;
            self.tick(slot, &mut batch);
            slot = (slot + 1) % SLOTS;
        }
    }
}
