//! Stream broadcasts (Rails' adapters, `POST /_broadcast` through the outbox): by stream
//! name to the subscriptions that stream it here (channel subscriptions of that name
//! included), with rule 7 for contacts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::fanout::stream_audience;
use super::index::Registry;
use super::Router;
use crate::delivery::{tallied, Message, Position};

impl Router {
    /// Queues a broadcast on every subscription streaming `stream` (its own token, or
    /// `account_<id>` for the user subscriptions of that account), contact subscriptions only
    /// if `contacts` ([`crate::routing`] rule 7), and keeps it in the stream's history. `body`
    /// is the payload. Returns how many received it.
    pub fn broadcast(
        &self,
        stream: &str,
        body: Bytes,
        created_at: f64,
        contacts: bool,
        scratch: &mut Vec<u64>,
    ) -> usize {
        self.broadcast_checked(
            stream,
            || Ok::<_, ()>((body, contacts)),
            created_at,
            scratch,
        )
        .unwrap_or(0)
    }

    /// Like [`Router::broadcast`], with the payload checked and encoded by `check` (body, and
    /// whether contacts may see it) only if someone here streams `stream`: one lookup of the
    /// audience, and nothing parsed for a stream nobody streams. `Ok(0)` when nobody does;
    /// `check`'s error otherwise.
    pub fn broadcast_checked<E>(
        &self,
        stream: &str,
        check: impl FnOnce() -> Result<(Bytes, bool), E>,
        created_at: f64,
        scratch: &mut Vec<u64>,
    ) -> Result<usize, E> {
        let registry = self.registry.read();
        if !stream_audience(&registry, stream, scratch) {
            return Ok(0);
        }
        let (body, contacts) = check()?;
        let message = self.history.record(stream, body, created_at, contacts);
        Ok(self.deliver_to_stream(&registry, scratch, &message, contacts))
    }

    /// Queues a broadcast read from the outbox, like [`Router::broadcast`] but at its outbox
    /// offset (no stream history of this process's: the outbox is its history). Like
    /// [`Router::dispatch`], it records the offset as dispatched under the registry's lock.
    pub fn broadcast_outbox(
        &self,
        stream: &str,
        message: &Arc<Message>,
        contacts: bool,
        scratch: &mut Vec<u64>,
    ) -> usize {
        let registry = self.registry.read();
        if let Position::Outbox(offset) = message.position {
            self.outbox_offset.store(offset, Ordering::Release);
        }
        if !stream_audience(&registry, stream, scratch) {
            return 0;
        }
        self.deliver_to_stream(&registry, scratch, message, contacts)
    }

    /// Delivers `message` to the subscriptions `ids` found by [`stream_audience`].
    fn deliver_to_stream(
        &self,
        registry: &Registry,
        ids: &[u64],
        message: &Arc<Message>,
        contacts: bool,
    ) -> usize {
        let mut delivered = 0;
        tallied(&self.metrics, || {
            for id in ids {
                if let Some(entry) = registry.entries.get(id) {
                    if contacts || entry.principal.is_user() {
                        entry.sub.deliver(message);
                        delivered += 1;
                    }
                } else if let Some(entry) = registry.channel_entries.get(id) {
                    // A channel is no contact's: rule 7 does not apply.
                    entry.sub.deliver(message);
                    delivered += 1;
                }
            }
        });
        delivered
    }
}
