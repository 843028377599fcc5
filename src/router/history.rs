//! Stream ingress history as the router sees it: an interface, so that the router needs
//! nothing of where the history lives (`crate::resume::rings`).

use std::sync::Arc;

use bytes::Bytes;

use crate::delivery::Message;

/// The history of stream ingress as the router consults it, under its own lock, so that a
/// broadcast's position and where an extended-protocol subscription's live delivery starts
/// are taken in one order (`crate::resume::rings` is the implementation).
pub trait StreamHistory: Send + Sync {
    /// The offset of the stream's last broadcast kept (0 when none).
    fn last(&self, stream: &str) -> i64;
    /// Keeps a broadcast (`body`: the payload followed by `}`) and gives it its position.
    fn record(&self, stream: &str, body: Bytes, created_at: f64, contacts: bool) -> Arc<Message>;
    /// Drops what expired, and the history of streams `streamed` says nobody here streams.
    fn sweep(&self, streamed: &dyn Fn(&str) -> bool);
}
