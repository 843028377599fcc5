//! A session's bounded send queue and the handle everyone else reaches it through.
//!
//! The queue is a `VecDeque` behind a short lock plus a `Notify`, all in the session's one
//! shared allocation: an idle connection holds no queue buffer at all (a tokio mpsc channel
//! would keep a 32-slot block and its own allocation per connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::protocol::DisconnectReason;
use crate::router::{Event, Subscription};

/// Something for the writer to put on the socket.
pub enum Outbound {
    /// A complete text frame (welcome, confirm, reject, replies).
    Frame(Bytes),
    /// An event for one subscription: its prefix, then the shared body. Dropped if the
    /// subscription ended while the frame was queued.
    Event {
        sub: Arc<Subscription>,
        event: Arc<Event>,
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

/// State shared by a session's reader, writer and the router.
pub struct SessionState {
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

/// A client whose socket has taken nothing for this long while `CABLE_SEND_QUEUE` frames wait
/// is too slow.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);
/// However fast the socket drains, a queue this many times `CABLE_SEND_QUEUE` is too long.
pub const HARD_LIMIT_FACTOR: usize = 16;

/// Milliseconds since this process first asked.
fn millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl SessionState {
    pub fn new(capacity: usize) -> Arc<SessionState> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(SessionState {
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

    /// Resolves once [`SessionState::close`] was called.
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

/// How the router and replies reach a session: its bounded queue, in its shared state.
#[derive(Clone)]
pub struct SessionLink {
    pub state: Arc<SessionState>,
    metrics: Arc<Metrics>,
}

impl SessionLink {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> SessionLink {
        SessionLink {
            state: SessionState::new(capacity),
            metrics,
        }
    }

    /// Queues a frame without ever waiting. A full queue means the client does not read
    /// fast enough: the session is ended with `too_slow`, and nobody else is delayed.
    pub fn send(&self, frame: Outbound) {
        if !self.state.push(frame) {
            if self.state.close_reason().is_none() {
                self.metrics.too_slow.inc();
            }
            self.state
                .close(CloseReason::Disconnect(DisconnectReason::TooSlow));
        }
    }
}
