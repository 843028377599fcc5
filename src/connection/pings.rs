//! Pings for every connection of the process from one timer: a ping frame of the
//! connection's wire protocol carrying unix seconds (ActionCable's
//! `{"type":"ping","message":<unix seconds>}`) every [`PING_INTERVAL`] per connection,
//! spread over [`PING_SLOTS`] ticks so that they do not all go out in the same instant.
//!
//! A tick makes a ping due on every connection of its slot ([`SendQueue::defer_ping`]). A
//! connection that is written to within [`PING_DEFER`] ticks (a busy one: events) gets its
//! ping in the same socket write as that frame, which costs the kernel about what the frame
//! alone does; [`PING_DEFER`] ticks later, the pings still due are sent on their own, encoded
//! once, like any other delivery ([`SessionHandle::send`]): written straight to an idle
//! socket, without waking the connection's task (a timer per connection would wake every
//! task every 3 s), or queued behind what is waiting. So a ping goes out between its tick and
//! [`PING_DEFER`] ticks after it: 3 s apart on an idle connection, 2.7–3.3 s on a busy one
//! (`@rails/actioncable` calls a connection stale after 6 s without one).
//!
//! [`SendQueue::defer_ping`]: crate::delivery::SendQueue::defer_ping

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::tuning::{PING_DEFER, PING_INTERVAL, PING_SLOTS};
use crate::delivery::{CloseReason, Outbound, PingFrame, SessionHandle};

struct Slot {
    /// Each session with its wire protocol's ping frame.
    sessions: HashMap<u64, (SessionHandle, PingFrame)>,
    /// The last value sent from this slot: values only grow, even if the clock steps back.
    last: u64,
}

pub struct Pings {
    slots: Vec<Mutex<Slot>>,
}

impl Default for Pings {
    fn default() -> Self {
        Pings {
            slots: (0..PING_SLOTS)
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
        &self.slots[(id % PING_SLOTS as u64) as usize]
    }

    /// Pings `session` with `ping`'s frames from now on, until [`Pings::remove`].
    pub fn add(&self, session: &SessionHandle, ping: PingFrame) {
        let id = session.queue.id;
        self.slot(id)
            .lock()
            .sessions
            .insert(id, (session.clone(), ping));
    }

    pub fn remove(&self, session: &SessionHandle) {
        let id = session.queue.id;
        self.slot(id).lock().sessions.remove(&id);
    }

    /// Closes every session (shutdown): every open connection is pinged, so every one is
    /// here.
    pub fn close_all(&self, reason: CloseReason) {
        for slot in &self.slots {
            for (session, _) in slot.lock().sessions.values() {
                session.queue.close(reason.clone());
            }
        }
    }

    /// Makes a ping due on one slot's sessions.
    fn tick(&self, slot: usize) {
        let now = crate::clock::unix_seconds();
        let slot = &mut *self.slots[slot].lock();
        slot.last = now.max(slot.last + 1);
        // Unix seconds fit 32 bits until 2106.
        let value =
            NonZeroU32::new(slot.last.min(u64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        for (session, _) in slot.sessions.values() {
            session.queue.defer_ping(value);
        }
    }

    /// Sends the pings of one slot that no frame took along: each frame encoded once per
    /// value and wire protocol.
    fn flush(&self, slot: usize, batch: &mut Vec<(SessionHandle, PingFrame)>) {
        batch.extend(self.slots[slot].lock().sessions.values().cloned());
        let mut frames: Vec<(NonZeroU32, PingFrame, Bytes)> = Vec::new();
        for (session, ping) in batch.drain(..) {
            let Some(value) = session.queue.take_ping() else {
                continue;
            };
            let encoded = frames
                .iter()
                .find(|(v, p, _)| *v == value && std::ptr::fn_addr_eq(*p, ping));
            let bytes = match encoded {
                Some((.., bytes)) => bytes.clone(),
                None => {
                    let mut buf = Vec::new();
                    ping(&mut buf, value);
                    let bytes = Bytes::from(buf);
                    frames.push((value, ping, bytes.clone()));
                    bytes
                }
            };
            session.send(Outbound::Raw(bytes));
        }
    }

    /// The timer, forever (a task of the process).
    pub async fn run(self: std::sync::Arc<Self>) {
        let step = PING_INTERVAL / PING_SLOTS as u32;
        let mut tick = tokio::time::interval(step.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut slot = 0;
        loop {
            tick.tick().await;
            self.tick(slot);
            self.flush((slot + PING_SLOTS - PING_DEFER) % PING_SLOTS, &mut batch);
            slot = (slot + 1) % PING_SLOTS;
        }
    }
}
