//! The delivery vocabulary, a leaf every task shares and that imports none of them: an
//! [`Event`] encoded once, a confirmed [`Subscription`], a connection's bounded [`SendQueue`]
//! and the [`SessionHandle`] the router, presence and replies push frames through.
//!
//! The queue is a `VecDeque` behind a short lock plus a `Notify`, all in the session's one
//! shared allocation: an idle connection holds no queue buffer at all (a tokio mpsc channel
//! would keep a 32-slot block and its own allocation per connection). Pushing never waits: a
//! client that does not read is ended with `too_slow` instead, and nobody else is delayed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::auth::{PresenceKey, Principal};
use crate::config::tuning::{HARD_LIMIT_FACTOR, STUCK_AFTER};
use crate::metrics::Metrics;
use crate::protocol::DisconnectReason;

/// What every recipient of one event or broadcast shares, encoded once.
#[derive(Debug)]
pub struct Message {
    /// `{"event":..,"data":..}}` or a broadcast's payload followed by `}`: what follows a
    /// subscription's prefix, the frame's closing brace included.
    pub body: Bytes,
    /// When it was published, seconds since the Unix epoch (for the latency histogram).
    pub created_at: f64,
}

/// An outbox event: its shared [`Message`], with what the routing rules read.
#[derive(Debug)]
pub struct Event {
    /// The outbox row's id.
    pub id: i64,
    pub account_id: i64,
    pub event: String,
    pub inbox_id: Option<i64>,
    /// Sorted, without duplicates.
    pub contact_inbox_ids: Vec<i64>,
    pub user_id: Option<i64>,
    pub private: bool,
    pub actor_user_id: Option<i64>,
    pub actor_contact_inbox_id: Option<i64>,
    pub stream: Option<String>,
    pub message: Arc<Message>,
}

/// One confirmed subscription, as the session's writer sees it.
pub struct Subscription {
    pub id: u64,
    /// `{"identifier":"<escaped raw id>","message":` (see [`crate::protocol::reply::message_prefix`]).
    pub prefix: Bytes,
    pub identifier: Arc<str>,
    pub session: SessionHandle,
    /// Whose presence this subscription keeps alive.
    pub presence: PresenceKey,
    /// Cleared on unsubscribe or revocation: frames still queued for it are dropped.
    active: AtomicBool,
}

impl Subscription {
    pub fn new(
        identifier: Arc<str>,
        session: SessionHandle,
        principal: &Principal,
    ) -> Arc<Subscription> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Subscription {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            prefix: crate::protocol::reply::message_prefix(&identifier),
            identifier,
            session,
            presence: PresenceKey::from(principal),
            active: AtomicBool::new(true),
        })
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Ends delivery to this subscription: frames still queued for it are dropped.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }
}

/// Something for the writer to put on the socket.
pub enum Outbound {
    /// A complete text frame (welcome, confirm, reject, replies).
    Frame(Bytes),
    /// An event or broadcast for one subscription: its prefix, then the shared body. Dropped
    /// if the subscription ended while the frame was queued.
    Message {
        sub: Arc<Subscription>,
        message: Arc<Message>,
    },
    /// A message for one subscription only (a presence answer): its prefix, then `body`
    /// (closing brace included). Dropped if the subscription ended meanwhile.
    Reply { sub: Arc<Subscription>, body: Bytes },
    /// The answer to a client's ping.
    Pong(Bytes),
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server ends it with a `disconnect` frame.
    Disconnect(DisconnectReason),
    /// The client sent a close frame (its payload is echoed).
    ClientClosed(Bytes),
    /// The socket ended or broke without a close frame.
    ConnectionLost,
}

impl CloseReason {
    /// The label used in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Disconnect(reason) => reason.as_str(),
            CloseReason::ClientClosed(_) => "client_closed",
            CloseReason::ConnectionLost => "connection_lost",
        }
    }
}

/// A connection's bounded send queue and its close state, shared by its reader, its writer
/// and everyone who delivers to it.
pub struct SendQueue {
    pub id: u64,
    reason: OnceLock<CloseReason>,
    notify: Notify,
    queue: Mutex<VecDeque<Outbound>>,
    queued: Notify,
    capacity: usize,
    /// When the writer's current socket write began ([`millis`] + 1), or 0 when it is not
    /// waiting on the socket.
    writing_since: AtomicU64,
}

/// Milliseconds since this process first asked.
fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl SendQueue {
    pub fn new(capacity: usize) -> Arc<SendQueue> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(SendQueue {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reason: OnceLock::new(),
            notify: Notify::new(),
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            capacity: capacity.max(1),
            writing_since: AtomicU64::new(0),
        })
    }

    /// The writer is about to wait on the socket.
    pub fn write_started(&self) {
        self.writing_since.store(millis() + 1, Ordering::Relaxed);
    }

    /// The socket took the write.
    pub fn write_finished(&self) {
        self.writing_since.store(0, Ordering::Relaxed);
    }

    /// Whether a socket write has been waiting longer than [`STUCK_AFTER`].
    fn stuck(&self) -> bool {
        let since = self.writing_since.load(Ordering::Relaxed);
        since != 0 && millis().saturating_sub(since - 1) > STUCK_AFTER.as_millis() as u64
    }

    /// Queues a frame; `false` when the client is too slow for it.
    ///
    /// A burst (one transaction of thousands of events) may queue more than `capacity`
    /// frames for a client that reads perfectly well; only a client whose socket is stuck,
    /// or whose queue reaches the hard limit, is too slow.
    fn push(&self, frame: Outbound) -> bool {
        {
            let mut queue = self.queue.lock();
            let len = queue.len();
            if len >= self.capacity && (self.stuck() || len >= self.capacity * HARD_LIMIT_FACTOR) {
                return false;
            }
            queue.push_back(frame);
        }
        self.queued.notify_one();
        true
    }

    /// Moves every queued frame into `batch` (which must be empty), waiting for one if none is
    /// queued. Swapping buffers keeps the lock short and leaves the queue's capacity with
    /// the writer, which decides what to keep.
    pub async fn take_queued(&self, batch: &mut VecDeque<Outbound>) {
        loop {
            {
                let mut queue = self.queue.lock();
                if !queue.is_empty() {
                    std::mem::swap(&mut *queue, batch);
                    return;
                }
            }
            self.queued.notified().await;
        }
    }

    /// What is queued now, without waiting.
    pub fn take_now(&self) -> VecDeque<Outbound> {
        std::mem::take(&mut *self.queue.lock())
    }

    /// Asks the session to end. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_waiters();
        }
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.get()
    }

    /// Resolves once [`SendQueue::close`] was called.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason.get() {
                return reason.clone();
            }
            notified.await;
        }
    }
}

/// How the router, presence and replies reach a session: its bounded queue.
#[derive(Clone)]
pub struct SessionHandle {
    pub queue: Arc<SendQueue>,
    metrics: Arc<Metrics>,
}

impl SessionHandle {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> SessionHandle {
        SessionHandle {
            queue: SendQueue::new(capacity),
            metrics,
        }
    }

    /// Queues a frame without ever waiting. A full queue means the client does not read
    /// fast enough: the session is ended with `too_slow`, and nobody else is delayed.
    pub fn send(&self, frame: Outbound) {
        if !self.queue.push(frame) {
            if self.queue.close_reason().is_none() {
                self.metrics.too_slow.inc();
            }
            self.queue
                .close(CloseReason::Disconnect(DisconnectReason::TooSlow));
        }
    }
}
