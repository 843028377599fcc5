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

mod encode;
mod positions;
mod queue;
mod subscription;
mod tally;
mod write;

use std::sync::Arc;

use bytes::Bytes;

pub use encode::{encode, encode_head, push_header, push_ping, push_text};
pub use positions::{Mark, Positions};
pub use queue::{CloseReason, Outbound, SendQueue, SessionHandle};
pub use subscription::Subscription;
pub use tally::tallied;

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
/// (`stream_id`, `epoch`, `offset`) and may ask to replay after (docs/reference.md §8).
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
