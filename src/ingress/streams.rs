//! Broadcasts as Rails sends them: a stream name and a payload, from ActionCable's Redis
//! adapter ([`super::redis`]) and, as they are added, its PostgreSQL adapter and AnyCable's
//! HTTP broadcast API.
//!
//! A broadcast is delivered to the subscriptions streaming its name on this process (a
//! subscription streams its own `pubsub_token`; user subscriptions also `account_<id>`), each
//! framed by its wire protocol (ActionCable: `{"identifier":<raw id>,"message":<payload>}`):
//! the payload is spliced in as it came, the bytes shared by every recipient, never
//! re-serialized. Contact subscriptions are held to
//! rule 7 of [`crate::routing`] (no private typing, nothing `private`), read once per broadcast.
//!
//! A payload that is not JSON, or larger than `CABLE_MAX_BROADCAST_SIZE`, is skipped and
//! counted (`cable_broadcasts_skipped_total{ingress,reason}`), logged at most once a minute per
//! ingress and reason; nothing else is affected. Unlike the outbox, a broadcast sent while an
//! ingress connection is down is lost, as it is with Rails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::tuning::SKIP_WARN_EVERY;
use crate::metrics::Metrics;
use crate::router::Router;

/// Why a broadcast was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Skip {
    NotJson,
    TooLarge,
    /// A notification on a channel name several streams share (PostgreSQL cut their long
    /// names to the same 63 bytes): whose it is cannot be told.
    AmbiguousChannel,
}

impl Skip {
    pub fn label(self) -> &'static str {
        self.into()
    }
}

pub struct Streams {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    max_size: usize,
    warned: Mutex<HashMap<(&'static str, Skip), Instant>>,
}

impl Streams {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, max_size: usize) -> Streams {
        Streams {
            router,
            metrics,
            max_size,
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers a broadcast that arrived through `ingress`. Returns how many subscriptions
    /// received it (0 when none streams it here: nothing is parsed then).
    pub fn deliver(
        &self,
        ingress: &'static str,
        stream: &str,
        payload: &[u8],
    ) -> Result<usize, Skip> {
        self.metrics.broadcast(ingress);
        let created_at = crate::clock::unix_now();
        let mut scratch = Vec::new();
        let check = || {
            if payload.len() > self.max_size {
                return Err(Skip::TooLarge);
            }
            let contacts = crate::routing::contacts_may_receive(payload).ok_or(Skip::NotJson)?;
            Ok((Bytes::copy_from_slice(payload), contacts))
        };
        self.router
            .broadcast_checked(stream, check, created_at, &mut scratch)
            .map_err(|skip| self.skip(ingress, stream, skip))
    }

    /// Counts (and logs, at most once a minute) a broadcast skipped before delivery.
    pub fn skip(&self, ingress: &'static str, stream: &str, skip: Skip) -> Skip {
        self.metrics.broadcast_skipped(ingress, skip.label());
        let now = Instant::now();
        let mut warned = self.warned.lock();
        let due = warned
            .get(&(ingress, skip))
            .is_none_or(|at| now.duration_since(*at) >= SKIP_WARN_EVERY);
        if due {
            warned.insert((ingress, skip), now);
            drop(warned);
            tracing::warn!(
                ingress,
                reason = skip.label(),
                stream = %crate::auth::token_prefix(stream),
                "skipping broadcasts (logged at most once a minute per ingress and reason)"
            );
        }
        skip
    }
}
