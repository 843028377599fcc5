//! A connection's bounded send queue and its close state, and the [`SessionHandle`] others
//! push frames through.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::write::{write_now, Direct, Pushed, Rest};
use super::DisconnectReason;
use super::{Message, Subscription};
use crate::config::tuning::{HARD_LIMIT_FACTOR, STUCK_AFTER};
use crate::metrics::Metrics;

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
    /// A message for one subscription (a presence answer or push): its prefix, then `body`,
    /// which already ends with the subscription's suffix (joined once for every recipient,
    /// so that a large body is written from shared bytes). Dropped if the subscription ended
    /// meanwhile.
    Reply { sub: Arc<Subscription>, body: Bytes },
    /// The answer to a client's ping.
    Pong(Bytes),
    /// Bytes already framed: what a direct write left unwritten (see [`SendQueue::push`]).
    Raw(Bytes),
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
    /// Its session was restored on another connection (extended protocol): the client is
    /// already elsewhere, so the socket is closed without a `disconnect`.
    Replaced,
}

impl CloseReason {
    /// The label used in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Disconnect(reason) => reason.as_str(),
            CloseReason::ClientClosed(_) => "client_closed",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::Replaced => "session_restored",
        }
    }
}

/// A connection's bounded send queue and its close state, shared by its reader, its writer
/// and everyone who delivers to it.
pub struct SendQueue {
    pub id: u64,
    reason: OnceLock<CloseReason>,
    notify: Notify,
    pub(super) queue: Mutex<QueueState>,
    queued: Notify,
    /// Notified each time the writer takes what is queued (a replay waits on it).
    taken: Notify,
    capacity: usize,
    /// When the writer's current socket write began ([`millis`] + 1), or 0 when it is not
    /// waiting on the socket.
    writing_since: AtomicU64,
}

/// The queue proper, and whether the writer task owns the socket right now.
pub(super) struct QueueState {
    frames: VecDeque<Outbound>,
    /// The writer has taken frames (or is writing the welcome, a ping or the farewell) and
    /// not yet found the queue empty again: nobody else may write to the socket.
    writer_busy: bool,
    /// The socket, when frames may be written to it straight from the delivering thread.
    direct: Option<Direct>,
    /// A ping due (its value), sent in the same write as the next frame written straight to
    /// the socket, or on its own a moment later ([`crate::actioncable::session::pings`]).
    ping: Option<NonZeroU32>,
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
            // Busy until the writer has written the welcome and found nothing queued.
            queue: Mutex::new(QueueState {
                frames: VecDeque::new(),
                writer_busy: true,
                direct: None,
                ping: None,
            }),
            queued: Notify::new(),
            taken: Notify::new(),
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

    /// Lets frames be written to `socket` straight from the delivering thread (see
    /// [`SendQueue::push`]), a due ping (as `ping` writes it) along with the next one.
    pub fn attach(&self, socket: Arc<tokio::net::TcpStream>, ping: super::PingFrame) {
        use std::os::fd::AsRawFd;
        self.queue.lock().direct = Some(Direct {
            fd: socket.as_raw_fd(),
            _open: socket,
            ping,
        });
    }

    /// Whether the client has sent bytes the connection's reader has not read yet (false
    /// without a socket attached).
    pub fn input_pending(&self) -> bool {
        self.queue
            .lock()
            .direct
            .as_ref()
            .is_some_and(|d| d.unread() > 0)
    }

    /// Makes a ping due: it goes out with the next frame written straight to the socket, if
    /// one comes before [`SendQueue::take_ping`].
    pub fn defer_ping(&self, value: NonZeroU32) {
        self.queue.lock().ping = Some(value);
    }

    /// The ping still due, if no frame took it along.
    pub fn take_ping(&self) -> Option<NonZeroU32> {
        self.queue.lock().ping.take()
    }

    /// The socket's descriptor (`i32::MAX` when none is attached): a fan-out writes in this
    /// order, which is about the order in which the kernel allocated the sockets.
    pub fn socket_order(&self) -> i32 {
        self.queue.lock().direct.as_ref().map_or(i32::MAX, |d| d.fd)
    }

    /// Whether the writer task owns the socket now (tests wait for it to let go).
    #[cfg(test)]
    pub fn writer_busy(&self) -> bool {
        self.queue.lock().writer_busy
    }

    /// The session has ended: lets go of the socket (so that it closes) and of every frame
    /// still queued (frames hold their subscription, which holds this queue).
    pub fn detach(&self) {
        let mut queue = self.queue.lock();
        queue.writer_busy = true;
        queue.direct = None;
        let frames = std::mem::take(&mut queue.frames);
        drop(queue);
        drop(frames);
    }

    /// Delivers a frame; `false` when the client is too slow for it.
    ///
    /// When nothing is queued and the writer task is not using the socket, the frame is
    /// written right here, without waking the connection's task: the socket almost always
    /// takes it whole. What it does not take is queued (already framed) for the writer, which
    /// then owns the socket until the queue is empty again, so frames never interleave.
    ///
    /// A burst (one transaction of thousands of events) may queue more than `capacity`
    /// frames for a client that reads perfectly well; only a client whose socket is stuck,
    /// or whose queue reaches the hard limit, is too slow.
    fn push(&self, frame: Pushed<'_>, metrics: &Metrics) -> bool {
        {
            let mut guard = self.queue.lock();
            let queue = &mut *guard;
            let (frame, tail) = match &queue.direct {
                Some(socket)
                    if queue.frames.is_empty()
                        && !queue.writer_busy
                        && self.reason.get().is_none() =>
                {
                    match write_now(socket, queue.ping.take(), frame, metrics) {
                        Rest::Nothing => return true,
                        Rest::One(rest) => (rest, None),
                        Rest::Two(head, tail) => (head, Some(tail)),
                    }
                }
                _ => (frame.into_owned(), None),
            };
            let len = queue.frames.len();
            if len >= self.capacity && (self.stuck() || len >= self.capacity * HARD_LIMIT_FACTOR) {
                return false;
            }
            queue.frames.push_back(frame);
            queue.frames.extend(tail);
        }
        self.queued.notify_one();
        true
    }

    /// The writer's one wait: moves every queued frame into `batch` (which must be empty),
    /// waiting for one if none is queued, or says why the session is closing once it is. The
    /// writer owns the socket from then until it finds the queue empty again. Swapping
    /// buffers keeps the lock short and leaves the queue's capacity with the writer, which
    /// decides what to keep.
    ///
    /// One wait instead of a `select!` over the queue and the close: an idle connection's
    /// task holds this future for its whole life.
    pub async fn take_queued(&self, batch: &mut VecDeque<Outbound>) -> Result<(), CloseReason> {
        loop {
            if let Some(reason) = self.reason.get() {
                return Err(reason.clone());
            }
            {
                let mut queue = self.queue.lock();
                if !queue.frames.is_empty() {
                    std::mem::swap(&mut queue.frames, batch);
                    queue.writer_busy = true;
                    drop(queue);
                    self.taken.notify_waiters();
                    return Ok(());
                }
                queue.writer_busy = false;
            }
            // A push or a close after the checks above leaves a permit: nothing is missed.
            self.queued.notified().await;
        }
    }

    /// Waits until fewer than half the queue's capacity are queued (or the session ends), so
    /// that a long replay is paced by the client instead of overflowing its queue.
    pub async fn room(&self) {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.queue.lock().frames.len() < self.capacity / 2 + 1 || self.reason.get().is_some()
            {
                return;
            }
            tokio::select! {
                _ = taken => {}
                _ = self.closed() => return,
            }
        }
    }

    /// What is queued now, without waiting (the farewell): the writer owns the socket for
    /// good.
    pub fn take_now(&self) -> VecDeque<Outbound> {
        let mut queue = self.queue.lock();
        queue.writer_busy = true;
        std::mem::take(&mut queue.frames)
    }

    /// Asks the session to end. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_waiters();
            self.queued.notify_one();
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
        if !self.queue.push(Pushed::Owned(frame), &self.metrics) {
            self.too_slow();
        }
    }

    /// [`SessionHandle::send`] for one subscription's message, borrowed until it must wait.
    pub fn send_message(&self, sub: &Arc<Subscription>, message: &Arc<Message>) {
        if !self
            .queue
            .push(Pushed::Message(sub, message), &self.metrics)
        {
            self.too_slow();
        }
    }

    /// Queues a message that `sub`'s protocol framed itself ([`super::Reframe`]): `frame` is
    /// the whole text; dropped if `sub` ends before it is written. Counted as delivered
    /// (with its latency from `created_at`) now.
    pub fn send_framed(&self, sub: &Arc<Subscription>, frame: Bytes, created_at: f64) {
        self.send(Outbound::Reply {
            sub: sub.clone(),
            body: frame,
        });
        super::tally::count_sent(
            &self.metrics,
            (crate::clock::unix_now() - created_at).max(0.0),
        );
    }

    /// Ends the session: its client does not read fast enough.
    pub fn too_slow(&self) {
        if self.queue.close_reason().is_none() {
            self.metrics.too_slow.inc();
        }
        self.queue
            .close(CloseReason::Disconnect(DisconnectReason::TooSlow));
    }
}
