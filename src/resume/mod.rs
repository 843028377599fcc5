//! AnyCable's extended protocol (`actioncable-v1-ext-json`, docs/reference.md §8): sessions a client
//! restores by `sid` on any process ([`sessions`]), positions on every event, and history
//! replay ([`replay`]) from the outbox's rounds ([`crate::ingress::outbox`]) or from stream
//! ingress memory ([`rings`]).
//!
//! A plain `actioncable-v1-json` connection touches none of it: no session row, no position
//! bytes, no held frames.

pub mod replay;
pub mod rings;
pub mod sessions;
pub mod sid;

/// What a client asks to have replayed (docs/reference.md §8): everything after each listed stream's
/// position, and for streams not listed, everything published at or after `since`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryRequest {
    /// Unix seconds.
    pub since: Option<f64>,
    pub streams: Vec<StreamPosition>,
}

/// A position a client holds: the stream id, the epoch and the offset it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub stream_id: String,
    pub epoch: String,
    pub offset: i64,
}

/// The outbox stream id of a subscription: stable per identifier, so a client's positions
/// (kept per stream id) stay apart for each of its subscriptions and survive reconnects.
pub fn outbox_stream_id(raw_identifier: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(raw_identifier.as_bytes());
    format!("cable_events/{}", hex::encode(&digest[..6]))
}
