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

/// The outbox stream id of a subscription: stable per identifier, so a client's positions
/// (kept per stream id) stay apart for each of its subscriptions and survive reconnects.
pub fn outbox_stream_id(raw_identifier: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(raw_identifier.as_bytes());
    format!("cable_events/{}", hex::encode(&digest[..6]))
}
