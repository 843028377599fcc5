//! A subscribe: the identifier, the subscription limit, the token (cache, then PostgreSQL),
//! the LISTEN lease of its streams, then live with its confirm (and a replay, if it asks).

use tokio::io::AsyncRead;

use super::Reader;

use super::super::subscriptions::SessionSubscriptions;
use std::sync::Arc;

use crate::actioncable::channel::SubscribeError;
use crate::actioncable::protocol::reply;
use crate::actioncable::protocol::{BadInput, HistoryRequest, Identifier, IdentifierError};
use crate::auth::{token_prefix, AuthError};
use crate::config::tuning::{SUBSCRIBE_DB_PATIENCE, SUBSCRIBE_RETRY};
use crate::delivery::{CloseReason, Outbound};

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(super) async fn subscribe(
        &mut self,
        raw: String,
        history: Option<HistoryRequest>,
        subs: &mut SessionSubscriptions,
    ) -> Option<CloseReason> {
        let services = self.services.clone();
        let metrics = &services.plumbing.metrics;
        match subs.get(&raw).map(|sub| sub.is_active()) {
            Some(true) => {
                // The official client re-sends subscribe until confirmed; a second confirm
                // would make @anycable/core unsubscribe.
                metrics.command("subscribe", "duplicate");
                return None;
            }
            // Revoked meanwhile: this is a fresh attempt.
            Some(false) => subs.forget(&raw),
            None => {}
        }
        if let Err(IdentifierError::NotAnObject) = Identifier::parse(&raw) {
            return self.bad(BadInput::IdentifierNotObject);
        }
        // A database that does not answer (a restart, a failover) is waited for a while:
        // see `SUBSCRIBE_DB_PATIENCE`.
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_DB_PATIENCE;
        let outcome = loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                crate::actioncable::channel::subscribe(
                    &services.auth,
                    &raw,
                    subs.len(),
                    services.plumbing.limits.max_subscriptions,
                    self.identity.as_deref(),
                    false,
                ),
            )
            .await;
            match attempt {
                Ok(Err(SubscribeError::Unavailable(_)))
                    if tokio::time::Instant::now() + SUBSCRIBE_RETRY < deadline =>
                {
                    metrics.command("subscribe", "retried");
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                }
                Ok(outcome) => break outcome,
                Err(_) => {
                    break Err(SubscribeError::Unavailable(AuthError(Arc::new(
                        sqlx::Error::PoolTimedOut,
                    ))))
                }
            }
        };
        match outcome {
            Ok((token, identifier, principal)) => {
                tracing::debug!(
                    session = self.session.queue.id,
                    token = %token_prefix(&token),
                    account_id = principal.account_id(),
                    user = principal.is_user(),
                    "subscription confirmed"
                );
                let sub = self
                    .go_live(
                        identifier.raw,
                        token.clone(),
                        principal.clone(),
                        true,
                        history.is_some(),
                        subs,
                    )
                    .await;
                metrics.command("subscribe", "confirmed");
                self.save(subs);
                if let Some(history) = history {
                    self.history(&sub, &principal, &token, &history).await;
                }
                None
            }
            Err(SubscribeError::Reject(kind, why)) => {
                let token = Identifier::parse(&raw).ok().and_then(|identifier| {
                    identifier
                        .params
                        .get("pubsub_token")?
                        .as_str()
                        .map(token_prefix)
                });
                tracing::info!(
                    session = self.session.queue.id,
                    kind = kind.label(),
                    reason = why,
                    token = token.as_deref().unwrap_or("-"),
                    "subscription rejected"
                );
                self.session.send(Outbound::Frame(reply::reject(&raw)));
                metrics.command("subscribe", "rejected");
                metrics.subscribe_rejected(why);
                self.rejects += 1;
                if self.rejects > services.plumbing.limits.max_rejects {
                    return self.bad(BadInput::TooManyRejects);
                }
                None
            }
            Err(SubscribeError::Unavailable(e)) => {
                tracing::warn!(session = self.session.queue.id, error = %e, "database unavailable during subscribe; asking the client to reconnect");
                metrics.command("subscribe", "unavailable");
                Some(CloseReason::Disconnect(
                    crate::actioncable::protocol::DisconnectReason::ServerRestart,
                ))
            }
        }
    }
}
