//! The delivery vocabulary, a leaf every task shares and that imports none of them: an
//! [`Event`] encoded once, a confirmed [`Subscription`], a connection's bounded [`SendQueue`]
//! and the [`SessionHandle`] the router, presence and replies push frames through.
//!
//! The queue is a `VecDeque` behind a short lock plus a `Notify`, all in the session's one
//! shared allocation: an idle connection holds no queue buffer at all (a tokio mpsc channel
//! would keep a 32-slot block and its own allocation per connection). Pushing never waits: a
//! client that does not read is ended with `too_slow` instead, and nobody else is delayed.
//!
//! # Files
//! - `subscription.rs`: a confirmed [`Subscription`], and its prefetch hints.
//! - `positions.rs`: what an extended-protocol subscription keeps beside it ([`Positions`]).
//! - `queue.rs`: a connection's [`SendQueue`], its close reason, and the [`SessionHandle`].
//! - `write.rs`: frames written straight to the socket from the delivering thread.
//! - `encode.rs`: frames as they go on the wire.
//! - `tally.rs`: messages written counted per thread, added to the metrics once per fan-out.

mod close;
mod encode;
mod positions;
mod queue;
mod subscription;
mod tally;
mod write;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

pub use close::DisconnectReason;
pub use encode::{encode, encode_head, joined, push_header, push_text};
pub use positions::{Mark, Positions};
pub use queue::{CloseReason, Outbound, SendQueue, SessionHandle};
pub use subscription::{Framing, Reframe, Replies, Subscription};
pub use tally::tallied;

/// Appends a connection's ping frame with `value` (its wire protocol's shape), without
/// allocating: what a delivery written straight to the socket takes along when one is due.
pub type PingFrame = fn(&mut Vec<u8>, std::num::NonZeroU32);

/// What every recipient of one event or broadcast shares, encoded once: a JSON value that
/// each wire protocol frames for each subscription (see [`Subscription`]: its prefix, the
/// body, the message's position where the protocol tells it, its suffix).
#[derive(Debug)]
pub struct Message {
    /// `{"event":..,"data":..}`, or a broadcast's payload as sent.
    pub body: Bytes,
    /// When it was published, seconds since the Unix epoch (for the latency histogram, and
    /// the topic WebSocket's `timestamp`).
    pub created_at: f64,
    /// Where it stands in its stream's history, for clients of the extended protocol.
    pub position: Position,
    /// What a protocol that frames messages itself ([`Reframe`]) derived from this one, made
    /// by its first recipient and shared by the others: encoded once per message, not once
    /// per delivery. Empty unless such a subscriber received it.
    pub derived: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Message {
    pub fn new(body: Bytes, created_at: f64, position: Position) -> Message {
        Message {
            body,
            created_at,
            position,
            derived: OnceLock::new(),
        }
    }

    /// What `derive` makes of this message, made once and kept for its other recipients (a
    /// value of another type kept by another protocol is not replaced: `derive` then runs
    /// for each, which is correct, only not shared).
    pub fn derived<T: Send + Sync + 'static>(
        &self,
        derive: impl Fn(&Message) -> T,
    ) -> Derived<'_, T> {
        let kept = self.derived.get_or_init(|| Box::new(derive(self)));
        match kept.downcast_ref::<T>() {
            Some(value) => Derived::Kept(value),
            None => Derived::Made(derive(self)),
        }
    }
}

/// What [`Message::derived`] gives: the shared value, or one made for this call only.
pub enum Derived<'a, T> {
    Kept(&'a T),
    Made(T),
}

impl<T> std::ops::Deref for Derived<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Derived::Kept(value) => value,
            Derived::Made(value) => value,
        }
    }
}

/// A message's place in a stream's history: what a client of a protocol with positions is
/// told with it (a stream id, an epoch, an offset) and may ask to replay after
/// (docs/reference.md §8).
#[derive(Debug, Clone)]
pub enum Position {
    /// Not history (presence snapshots, replies).
    None,
    /// An outbox event's offset; the epoch is the database's, the stream id the
    /// subscription's own ([`Positions::outbox_stream_id`]).
    Outbox(i64),
    /// A broadcast of stream ingress, kept in this process's memory (`crate::resume::rings`):
    /// its stream, its ring's id ([`RingId`]), and its offset there.
    Stream {
        stream: Arc<str>,
        ring: Arc<RingId>,
        offset: i64,
    },
}

/// One stream's history in one process's memory, as its positions name it: its epoch, and
/// the stream's name and the epoch as JSON strings (quoted once, not per delivery).
#[derive(Debug)]
pub struct RingId {
    pub epoch: Arc<str>,
    pub quoted_stream: Box<str>,
    pub quoted_epoch: Box<str>,
}

impl RingId {
    pub fn new(stream: &str, epoch: Arc<str>) -> RingId {
        RingId {
            quoted_stream: quoted(stream).into(),
            quoted_epoch: quoted(&epoch).into(),
            epoch,
        }
    }
}

/// `s` as a JSON string.
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// How a wire protocol tells a message's position, between the body and its suffix: the key
/// of each field (with the comma before it), `None` for a field it does not tell. The
/// values follow their keys: the stream id and epoch as JSON strings, the offset as digits.
#[derive(Debug)]
pub struct PositionStyle {
    pub stream_id: Option<&'static str>,
    pub epoch: Option<&'static str>,
    pub offset: &'static str,
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

impl PositionStyle {
    /// Appends what precedes the offset's digits, given the stream id and the epoch as JSON
    /// strings.
    pub fn push_head(&self, buf: &mut Vec<u8>, quoted_stream: &str, quoted_epoch: &str) {
        for part in self.head(quoted_stream, quoted_epoch) {
            buf.extend_from_slice(part);
        }
    }

    /// What precedes the offset's digits, in parts (nothing allocated).
    pub fn head<'a>(&self, quoted_stream: &'a str, quoted_epoch: &'a str) -> [&'a [u8]; 5] {
        let (stream_key, stream) = match self.stream_id {
            Some(key) => (key.as_bytes(), quoted_stream.as_bytes()),
            None => (&b""[..], &b""[..]),
        };
        let (epoch_key, epoch) = match self.epoch {
            Some(key) => (key.as_bytes(), quoted_epoch.as_bytes()),
            None => (&b""[..], &b""[..]),
        };
        [stream_key, stream, epoch_key, epoch, self.offset.as_bytes()]
    }
}
