//! Restoring a session by `sid` (extended protocol): its subscriptions live again, each token
//! checked afresh, before the welcome.

use std::sync::Arc;

use tokio::io::AsyncRead;

use super::Reader;

use super::super::subscriptions::SessionSubscriptions;
use crate::actioncable::channel::SubscribeError;
use crate::actioncable::protocol::reply;
use crate::config::tuning::{RESTORE_HOLD, RESTORE_HOLD_RECHECK, RESTORE_HOLD_UNREAD};
use crate::delivery::{Outbound, Subscription};
use crate::metrics::ReasonLabels;

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Restores the subscriptions of session `sid` (extended protocol), checking each token
    /// afresh: the identifiers restored (held until the client's history request), or `None`
    /// when there is no such session. A subscription whose token is no longer valid is
    /// rejected (after the welcome).
    pub async fn restore(
        &mut self,
        sid: &str,
        subs: &mut SessionSubscriptions,
    ) -> Option<Vec<Arc<str>>> {
        let services = self.services.clone();
        let metrics = &services.plumbing.metrics;
        let started = std::time::Instant::now();
        let identifiers = match services.sessions.take(sid).await {
            Ok(Some(identifiers)) => identifiers,
            Ok(None) => {
                metrics
                    .session_restores
                    .get_or_create(&ReasonLabels { reason: "unknown" })
                    .inc();
                return None;
            }
            Err(e) => {
                tracing::warn!(session = self.session.queue.id, error = %e, "restoring a session failed; starting a new one");
                metrics
                    .session_restores
                    .get_or_create(&ReasonLabels { reason: "failed" })
                    .inc();
                return None;
            }
        };
        let mut restored = Vec::new();
        for raw in identifiers
            .into_iter()
            .take(services.plumbing.limits.max_subscriptions)
        {
            if subs.get(&raw).is_some() {
                continue;
            }
            let outcome = crate::actioncable::channel::subscribe(
                &services.auth,
                &raw,
                subs.len(),
                services.plumbing.limits.max_subscriptions,
                self.identity.as_deref(),
                true,
            )
            .await;
            match outcome {
                Ok((token, identifier, principal)) => {
                    let sub = self
                        .go_live(identifier.raw, token, principal, false, true, subs)
                        .await;
                    restored.push(sub.clone());
                }
                Err(SubscribeError::Reject(kind, why)) => {
                    tracing::info!(
                        session = self.session.queue.id,
                        kind = kind.label(),
                        reason = why,
                        "restored subscription rejected"
                    );
                    self.session.send(Outbound::Frame(reply::reject(&raw)));
                    metrics.subscribe_rejected(why);
                }
                // Left out of restored_ids: the client subscribes to it again.
                Err(SubscribeError::Unavailable(e)) => {
                    tracing::warn!(session = self.session.queue.id, error = %e, "database unavailable while restoring a subscription");
                }
            }
        }
        metrics
            .session_restores
            .get_or_create(&ReasonLabels { reason: "restored" })
            .inc();
        tracing::debug!(
            session = self.session.queue.id,
            restored = restored.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "session restored"
        );
        self.save(subs);
        // A client that never asks for history still gets its live events.
        let waiting: Vec<Arc<Subscription>> = restored.clone();
        let session = self.session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESTORE_HOLD).await;
            let unread_until = tokio::time::Instant::now() + RESTORE_HOLD_UNREAD;
            while session.queue.input_pending() && tokio::time::Instant::now() < unread_until {
                tokio::time::sleep(RESTORE_HOLD_RECHECK).await;
            }
            for sub in waiting {
                if let Some(positions) = &sub.positions {
                    positions.release_if_awaiting(&session);
                }
            }
        });
        Some(
            restored
                .into_iter()
                .map(|sub| sub.identifier.clone())
                .collect(),
        )
    }
}
