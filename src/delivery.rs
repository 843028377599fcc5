//! The delivery vocabulary, a leaf every task shares and that imports none of them: an
//! [`Event`] encoded once, a confirmed [`Subscription`], a connection's bounded [`SendQueue`]
//! and the [`SessionHandle`] the router, presence and replies push frames through.
//!
//! The queue is a `VecDeque` behind a short lock plus a `Notify`, all in the session's one
//! shared allocation: an idle connection holds no queue buffer at all (a tokio mpsc channel
//! would keep a 32-slot block and its own allocation per connection). Pushing never waits: a
//! client that does not read is ended with `too_slow` instead, and nobody else is delayed.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::auth::{PresenceKey, Principal};
use crate::config::tuning::{HARD_LIMIT_FACTOR, LARGE_BODY, STUCK_AFTER};
use crate::metrics::{Metrics, Tally};
use crate::protocol::DisconnectReason;

/// What every recipient of one event or broadcast shares, encoded once.
#[derive(Debug)]
pub struct Message {
    /// `{"event":..,"data":..}}` or a broadcast's payload followed by `}`: what follows a
    /// subscription's prefix, the frame's closing brace included.
    pub body: Bytes,
    /// When it was published, seconds since the Unix epoch (for the latency histogram).
    pub created_at: f64,
    /// Where it stands in its stream's history, for clients of the extended protocol.
    pub position: Position,
}

/// A message's place in a stream's history: what an extended-protocol client is told with it
/// (`stream_id`, `epoch`, `offset`) and may ask to replay after (CONTRACT §8).
#[derive(Debug, Clone)]
pub enum Position {
    /// Not history (presence snapshots, replies).
    None,
    /// An outbox event's offset; the epoch is the database's, the stream id the
    /// subscription's own ([`Positions::outbox_stream_id`]).
    Outbox(i64),
    /// A broadcast of stream ingress, kept in this process's memory (`crate::resume::rings`):
    /// its stream, its offset there, and `,"stream_id":..,"epoch":..,"offset":N}` ready to
    /// close a frame with.
    Stream {
        stream: Arc<str>,
        offset: i64,
        suffix: Bytes,
    },
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
    /// Extended protocol only: where its streams stand, and live frames held during a replay.
    pub positions: Option<Box<Positions>>,
    /// Cleared on unsubscribe or revocation: frames still queued for it are dropped.
    active: AtomicBool,
}

impl Subscription {
    pub fn new(
        identifier: Arc<str>,
        session: SessionHandle,
        principal: &Principal,
        positions: Option<Box<Positions>>,
    ) -> Arc<Subscription> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Subscription {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            prefix: crate::protocol::reply::message_prefix(&identifier),
            identifier,
            session,
            presence: PresenceKey::from(principal),
            positions,
            active: AtomicBool::new(true),
        })
    }

    /// Queues a live event or broadcast for this subscription (held back during a replay,
    /// dropped when the client already has it, see [`Positions`]).
    pub fn deliver(self: &Arc<Self>, message: &Arc<Message>) {
        match &self.positions {
            // Borrowed: written at once, it costs no reference counting.
            None => self.session.send_message(self, message),
            Some(positions) => {
                let frame = Outbound::Message {
                    sub: self.clone(),
                    message: message.clone(),
                };
                positions.deliver(&self.session, &message.position, frame)
            }
        }
    }

    /// Asks the CPU for this subscription's memory, ahead of [`Subscription::deliver`] (a
    /// fan-out's recipients are far apart in memory; each costs a cache miss otherwise).
    pub fn prefetch(self: &Arc<Self>) {
        let at: *const u8 = Arc::as_ptr(self).cast();
        prefetch(at);
        prefetch(at.wrapping_add(64));
    }

    /// Asks the CPU for what [`Subscription::deliver`] reads of its queue and prefix (after
    /// [`Subscription::prefetch`]: this reads the subscription).
    pub fn prefetch_queue(&self) {
        prefetch(std::ptr::from_ref(&self.session.queue.queue).cast());
        prefetch(self.prefix.as_ptr());
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Ends delivery to this subscription: frames still queued for it are dropped.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }
}

/// A hint to the CPU that `at` is about to be read.
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Where one stream of an extended-protocol subscription stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Live delivery to this subscription covers every offset above this one: a replay never
    /// needs to go beyond it.
    pub live_from: i64,
    /// The client already has everything up to here: live frames at or below it are dropped.
    pub floor: i64,
}

/// What an extended-protocol subscription keeps beside the plain one.
///
/// Live frames are held (not queued) while history is being replayed for it, so that the
/// replay goes first and nothing is sent twice: a replay covers `(position, live_from]`, live
/// delivery everything after `live_from`, and frames the client already had (at or below its
/// position, which may be ahead of this process) are dropped. Restored subscriptions start
/// held: their client asks for history right after the `welcome`.
pub struct Positions {
    /// The stream id of this subscription's outbox events (stable per identifier).
    pub outbox_stream_id: Box<str>,
    /// `,"stream_id":"<id>","epoch":"<epoch>","offset":` (the offset and `}` follow).
    pub outbox_suffix: Bytes,
    /// The most frames held before the client counts as too slow.
    hold_limit: usize,
    state: Mutex<PositionState>,
}

struct PositionState {
    held: Option<Vec<Outbound>>,
    /// Held since it was restored, for a history request that has not come yet.
    awaiting: bool,
    outbox: Mark,
    /// By ingress stream name (a subscription streams at most two).
    streams: Vec<(Arc<str>, Mark)>,
}

impl PositionState {
    fn mark(&mut self, position: &Position) -> Option<(&mut Mark, i64)> {
        match position {
            Position::None => None,
            Position::Outbox(offset) => Some((&mut self.outbox, *offset)),
            Position::Stream { stream, offset, .. } => self
                .streams
                .iter_mut()
                .find(|(name, _)| name == stream)
                .map(|(_, mark)| (mark, *offset)),
        }
    }
}

impl Positions {
    pub fn new(outbox_stream_id: String, epoch: &str, hold_limit: usize) -> Box<Positions> {
        let quoted = |s: &str| serde_json::to_string(s).expect("a string always serializes");
        let outbox_suffix = format!(
            r#","stream_id":{},"epoch":{},"offset":"#,
            quoted(&outbox_stream_id),
            quoted(epoch)
        );
        Box::new(Positions {
            outbox_stream_id: outbox_stream_id.into(),
            outbox_suffix: outbox_suffix.into(),
            hold_limit,
            state: Mutex::new(PositionState {
                held: None,
                awaiting: false,
                outbox: Mark::default(),
                streams: Vec::new(),
            }),
        })
    }

    /// Where live delivery starts (called as the subscription goes live, under the router's
    /// lock, so nothing at or below these offsets reaches it live).
    pub fn start(&self, outbox: i64, streams: Vec<(Arc<str>, i64)>, held: bool) {
        let mut state = self.state.lock();
        state.outbox = Mark {
            live_from: outbox,
            floor: 0,
        };
        state.streams = streams
            .into_iter()
            .map(|(name, live_from)| {
                (
                    name,
                    Mark {
                        live_from,
                        floor: 0,
                    },
                )
            })
            .collect();
        if held {
            state.held.get_or_insert_with(Vec::new);
            state.awaiting = true;
        }
    }

    fn deliver(&self, session: &SessionHandle, position: &Position, frame: Outbound) {
        let mut state = self.state.lock();
        if let Some((mark, offset)) = state.mark(position) {
            if offset <= mark.floor {
                return;
            }
        }
        match &mut state.held {
            Some(held) if held.len() >= self.hold_limit => {
                drop(state);
                session.too_slow();
            }
            Some(held) => held.push(frame),
            None => session.send(frame),
        }
    }

    /// Holds live frames back (a replay is about to be sent).
    pub fn hold(&self) {
        let mut state = self.state.lock();
        state.held.get_or_insert_with(Vec::new);
        state.awaiting = false;
    }

    /// Lets live frames flow if they are still held for a history request that never came.
    pub fn release_if_awaiting(&self, session: &SessionHandle) {
        if self.state.lock().awaiting {
            self.release(session);
        }
    }

    /// The marks of the outbox and of each ingress stream, as they are now.
    pub fn marks(&self) -> (Mark, Vec<(Arc<str>, Mark)>) {
        let state = self.state.lock();
        (state.outbox, state.streams.clone())
    }

    /// Records a replay: the client now has everything of the outbox (or of `stream`) above
    /// `from`, and everything up to `floor`.
    pub fn replayed(&self, stream: Option<&str>, from: i64, floor: i64) {
        let mut state = self.state.lock();
        let mark = match stream {
            None => Some(&mut state.outbox),
            Some(stream) => state
                .streams
                .iter_mut()
                .find(|(name, _)| &**name == stream)
                .map(|(_, mark)| mark),
        };
        if let Some(mark) = mark {
            mark.live_from = mark.live_from.min(from);
            mark.floor = mark.floor.max(floor);
        }
    }

    /// Queues the held frames (those the client does not already have) and delivers live
    /// again.
    pub fn release(&self, session: &SessionHandle) {
        let mut state = self.state.lock();
        state.awaiting = false;
        let Some(held) = state.held.take() else {
            return;
        };
        for frame in held {
            if let Outbound::Message { message, .. } = &frame {
                if let Some((mark, offset)) = state.mark(&message.position) {
                    if offset <= mark.floor {
                        continue;
                    }
                }
            }
            session.send(frame);
        }
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
    queue: Mutex<QueueState>,
    queued: Notify,
    /// Notified each time the writer takes what is queued (a replay waits on it).
    taken: Notify,
    capacity: usize,
    /// When the writer's current socket write began ([`millis`] + 1), or 0 when it is not
    /// waiting on the socket.
    writing_since: AtomicU64,
}

/// The queue proper, and whether the writer task owns the socket right now.
struct QueueState {
    frames: VecDeque<Outbound>,
    /// The writer has taken frames (or is writing the welcome, a ping or the farewell) and
    /// not yet found the queue empty again: nobody else may write to the socket.
    writer_busy: bool,
    /// The socket, when frames may be written to it straight from the delivering thread.
    direct: Option<Direct>,
    /// A ping due (its value), sent in the same write as the next frame written straight to
    /// the socket, or on its own a moment later ([`crate::session::pings`]).
    ping: Option<NonZeroU32>,
}

/// The socket as delivering threads write to it: its descriptor, kept open by the stream
/// held beside it. A delivery reads the descriptor from the queue's own memory, and touches
/// neither the stream nor tokio's readiness for it: two cache lines fewer per recipient
/// (tokio's `try_io` was 4.3% of a fan-out's profile, a quarter of the gateway's own share,
/// BENCHMARKS.md). Readiness it leaves stale is harmless: the writer's `try_write` clears it
/// when the socket is full (`session::socket`).
struct Direct {
    fd: std::os::fd::RawFd,
    _open: Arc<tokio::net::TcpStream>,
}

impl Direct {
    /// Writes what the socket takes now, without waiting: how many bytes (0 when it is full
    /// or broken; the writer finds out which).
    fn send(&self, buf: &[u8]) -> usize {
        // SAFETY: the descriptor stays open while `_open` holds its stream, and `buf` is a
        // valid slice for the call.
        let sent = unsafe {
            libc::send(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(sent).unwrap_or(0)
    }

    /// [`Direct::send`] of `head` then `tail`, in one call.
    fn send_parts(&self, head: &[u8], tail: &[u8]) -> usize {
        let parts = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: tail.as_ptr() as *mut libc::c_void,
                iov_len: tail.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = parts.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = parts.len() as _;
        // SAFETY: as in `send`; the iovecs point into slices valid for the call, and the
        // kernel only reads them.
        let sent =
            unsafe { libc::sendmsg(self.fd, &message, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        usize::try_from(sent).unwrap_or(0)
    }
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
    /// [`SendQueue::push`]).
    pub fn attach(&self, socket: Arc<tokio::net::TcpStream>) {
        use std::os::fd::AsRawFd;
        self.queue.lock().direct = Some(Direct {
            fd: socket.as_raw_fd(),
            _open: socket,
        });
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

const OP_TEXT: u8 = 0x1;
const OP_PONG: u8 = 0xA;

/// Appends an unmasked, final frame header (server frames are never masked).
pub fn push_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if len < 65536 {
        buf.push(126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a ping frame, `{"type":"ping","message":<value>}`, without allocating.
pub fn push_ping(buf: &mut Vec<u8>, value: NonZeroU32) {
    let mut digits = [0u8; 10];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{value}"));
    let len = cursor.position() as usize;
    let digits = &digits[..len];
    const HEAD: &[u8] = br#"{"type":"ping","message":"#;
    push_header(buf, OP_TEXT, HEAD.len() + digits.len() + 1);
    buf.extend_from_slice(HEAD);
    buf.extend_from_slice(digits);
    buf.push(b'}');
}

pub fn push_text(buf: &mut Vec<u8>, payload: &[u8]) {
    push_header(buf, OP_TEXT, payload.len());
    buf.extend_from_slice(payload);
}

/// An extended-protocol message: the prefix, the body without its closing brace, then the
/// position (`,"stream_id":..,"epoch":..,"offset":N}`) in `parts`.
fn push_positioned(buf: &mut Vec<u8>, prefix: &[u8], body: &[u8], parts: &[&[u8]]) {
    let body = &body[..body.len().saturating_sub(1)];
    let len = prefix.len() + body.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    push_header(buf, OP_TEXT, len);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(body);
    for part in parts {
        buf.extend_from_slice(part);
    }
}

/// Appends `frame` to `buf` as it goes on the wire (nothing for a subscription that ended);
/// counts a delivered message and its latency.
pub fn encode(buf: &mut Vec<u8>, frame: Outbound, metrics: &Metrics) {
    match frame {
        Outbound::Frame(bytes) => push_text(buf, &bytes),
        Outbound::Raw(bytes) => buf.extend_from_slice(&bytes),
        Outbound::Pong(bytes) => {
            push_header(buf, OP_PONG, bytes.len());
            buf.extend_from_slice(&bytes);
        }
        Outbound::Reply { sub, body } => {
            if sub.is_active() {
                push_header(buf, OP_TEXT, sub.prefix.len() + body.len());
                buf.extend_from_slice(&sub.prefix);
                buf.extend_from_slice(&body);
            }
        }
        Outbound::Message { sub, message } => encode_message(buf, &sub, &message, metrics),
    }
}

/// [`encode`], except that a large body ([`LARGE_BODY`]) is not copied: the frame's header
/// (and prefix) are appended to `buf`, and the body is returned, to be written after `buf`
/// from the bytes every recipient shares.
pub fn encode_head(buf: &mut Vec<u8>, frame: Outbound, metrics: &Metrics) -> Option<Bytes> {
    match frame {
        Outbound::Raw(bytes) if bytes.len() >= LARGE_BODY => Some(bytes),
        Outbound::Frame(bytes) if bytes.len() >= LARGE_BODY => {
            push_header(buf, OP_TEXT, bytes.len());
            Some(bytes)
        }
        Outbound::Reply { sub, body } if body.len() >= LARGE_BODY => {
            if !sub.is_active() {
                return None;
            }
            push_header(buf, OP_TEXT, sub.prefix.len() + body.len());
            buf.extend_from_slice(&sub.prefix);
            Some(body)
        }
        frame => {
            encode(buf, frame, metrics);
            None
        }
    }
}

/// Appends one subscription's message (nothing when the subscription ended) and counts it.
fn encode_message(buf: &mut Vec<u8>, sub: &Subscription, message: &Message, metrics: &Metrics) {
    if !sub.is_active() {
        return;
    }
    match (&sub.positions, &message.position) {
        (Some(positions), Position::Outbox(offset)) => {
            // Digits on the stack: no allocation per delivery.
            let mut digits = [0u8; 20];
            let mut cursor = std::io::Cursor::new(&mut digits[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{offset}"));
            let len = cursor.position() as usize;
            push_positioned(
                buf,
                &sub.prefix,
                &message.body,
                &[&positions.outbox_suffix, &digits[..len], b"}"],
            );
        }
        (Some(_), Position::Stream { suffix, .. }) => {
            push_positioned(buf, &sub.prefix, &message.body, &[suffix]);
        }
        _ => {
            push_header(buf, OP_TEXT, sub.prefix.len() + message.body.len());
            buf.extend_from_slice(&sub.prefix);
            buf.extend_from_slice(&message.body);
        }
    }
    count_sent(
        metrics,
        (crate::clock::unix_now() - message.created_at).max(0.0),
    );
}

thread_local! {
    /// What this thread has written since [`tallied`] began, while it runs.
    static TALLY: std::cell::RefCell<Option<Tally>> = const { std::cell::RefCell::new(None) };
}

/// Counts one message written: into this thread's tally inside [`tallied`], else at once.
fn count_sent(metrics: &Metrics, latency: f64) {
    TALLY.with(|tally| match tally.borrow_mut().as_mut() {
        Some(tally) => tally.add(latency),
        None => {
            let mut one = Tally::default();
            one.add(latency);
            metrics.add_sent(&one);
        }
    })
}

/// Runs `deliver` (one thread's part of a fan-out) with the messages it writes counted
/// locally, and adds them to `metrics` once when it returns (or unwinds).
pub fn tallied<R>(metrics: &Metrics, deliver: impl FnOnce() -> R) -> R {
    struct Flush<'a>(&'a Metrics);
    impl Drop for Flush<'_> {
        fn drop(&mut self) {
            if let Some(tally) = TALLY.with(|tally| tally.borrow_mut().take()) {
                self.0.add_sent(&tally);
            }
        }
    }
    if TALLY.with(|tally| tally.borrow().is_some()) {
        return deliver(); // already inside one: its end adds these too
    }
    TALLY.with(|tally| *tally.borrow_mut() = Some(Tally::default()));
    let _flush = Flush(metrics);
    deliver()
}

/// A frame on its way into a queue: a message stays borrowed while it may still be written
/// at once, and is owned (its subscription and message counted as referenced) only if it
/// has to wait.
pub enum Pushed<'a> {
    Owned(Outbound),
    Message(&'a Arc<Subscription>, &'a Arc<Message>),
}

impl Pushed<'_> {
    fn into_owned(self) -> Outbound {
        match self {
            Pushed::Owned(frame) => frame,
            Pushed::Message(sub, message) => Outbound::Message {
                sub: sub.clone(),
                message: message.clone(),
            },
        }
    }
}

/// What a direct write left for the writer, already framed, in order.
enum Rest {
    Nothing,
    One(Outbound),
    /// The rest of the head, then the whole large body.
    Two(Outbound, Outbound),
}

/// Writes `frame` to `socket` without waiting, after the `ping` that is due if any (one write
/// for both); returns what the socket did not take. A large body goes out from its shared
/// bytes (one `sendmsg` with the head), and what the socket leaves of it is queued as a slice
/// of them, not a copy.
fn write_now(
    socket: &Direct,
    ping: Option<NonZeroU32>,
    frame: Pushed<'_>,
    metrics: &Metrics,
) -> Rest {
    /// Frames are encoded into one buffer per thread, kept up to this size.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        if let Some(value) = ping {
            push_ping(&mut buf, value);
        }
        let tail = match frame {
            Pushed::Owned(frame) => encode_head(&mut buf, frame, metrics),
            Pushed::Message(sub, message) => {
                encode_message(&mut buf, sub, message, metrics);
                None
            }
        };
        let rest = match tail {
            None if buf.is_empty() => Rest::Nothing,
            None => {
                let written = socket.send(&buf);
                match buf.get(written..) {
                    Some(rest) if !rest.is_empty() => {
                        Rest::One(Outbound::Raw(Bytes::copy_from_slice(rest)))
                    }
                    _ => Rest::Nothing,
                }
            }
            Some(tail) => {
                let written = socket.send_parts(&buf, &tail);
                if written < buf.len() {
                    Rest::Two(
                        Outbound::Raw(Bytes::copy_from_slice(&buf[written..])),
                        Outbound::Raw(tail),
                    )
                } else if written - buf.len() < tail.len() {
                    Rest::One(Outbound::Raw(tail.slice(written - buf.len()..)))
                } else {
                    Rest::Nothing
                }
            }
        };
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        rest
    })
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

    /// Ends the session: its client does not read fast enough.
    pub fn too_slow(&self) {
        if self.queue.close_reason().is_none() {
            self.metrics.too_slow.inc();
        }
        self.queue
            .close(CloseReason::Disconnect(DisconnectReason::TooSlow));
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    #[test]
    fn a_fan_out_counts_once_at_its_end_and_nothing_is_lost() {
        let metrics = Metrics::new();
        count_sent(&metrics, 0.001);
        assert_eq!(metrics.messages_sent.get(), 1, "outside a fan-out: at once");
        tallied(&metrics, || {
            count_sent(&metrics, 0.001);
            tallied(&metrics, || count_sent(&metrics, 0.002)); // nested: the outer one adds it
            assert_eq!(metrics.messages_sent.get(), 1, "inside: not yet");
        });
        assert_eq!(metrics.messages_sent.get(), 3);
        // A fan-out that unwinds still adds what it wrote.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tallied(&metrics, || {
                count_sent(&metrics, 0.001);
                panic!("a delivery panicked");
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(metrics.messages_sent.get(), 4);
        count_sent(&metrics, 0.001);
        assert_eq!(
            metrics.messages_sent.get(),
            5,
            "and the thread counts at once again"
        );
    }
}
