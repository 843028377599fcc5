//! The reader: owns the socket's read half and processes commands strictly in order, one
//! at a time (a subscribe's token lookup finishes before the next command is looked at).
//! What bad input gets comes from [`crate::protocol::bad_input`], applied in [`Reader::bad`].

use std::sync::Arc;

use tokio::io::AsyncRead;

use super::frame::{Inbound, Messages, ReadEnd};
use super::rate::RateLimit;
use super::subscriptions::SessionSubscriptions;
use super::Services;
use crate::auth::token_prefix;
use crate::channel::SubscribeError;
use crate::delivery::{CloseReason, Outbound, SessionHandle, Subscription};
use crate::protocol::reply;
use crate::protocol::{BadInput, Command, Identifier, IdentifierError, Verdict};
use crate::router::Held;

pub struct Reader<R> {
    messages: Messages<R>,
    services: Arc<Services>,
    session: SessionHandle,
    rate: RateLimit,
    rejects: u32,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(read: R, services: Arc<Services>, session: SessionHandle) -> Self {
        Reader {
            messages: Messages::new(read, services.limits.max_frame_size),
            rate: RateLimit::new(services.limits.max_command_rate),
            services,
            session,
            rejects: 0,
        }
    }

    /// Counts bad input and says whether it ends the connection. Rejects are answered (and
    /// counted) by the subscribe that found them.
    fn bad(&self, kind: BadInput) -> Option<CloseReason> {
        let metrics = &self.services.metrics;
        match kind.verdict() {
            Verdict::Ignore => {
                metrics.invalid_frame(kind.label());
                None
            }
            Verdict::Reject => None,
            Verdict::Disconnect(reason) => {
                metrics.invalid_frame(kind.label());
                tracing::info!(
                    session = self.session.queue.id,
                    reason = kind.label(),
                    "disconnecting for bad input"
                );
                Some(CloseReason::Disconnect(reason))
            }
            Verdict::Drop => {
                metrics.invalid_frame(kind.label());
                Some(CloseReason::ConnectionLost)
            }
        }
    }

    /// Reads and handles messages until the connection should end, and says why.
    pub async fn run(&mut self, subs: &mut SessionSubscriptions) -> CloseReason {
        loop {
            let message = match self.messages.next().await {
                Ok(Inbound::Text(message)) => message,
                Ok(Inbound::Ping(payload)) => {
                    self.session.send(Outbound::Pong(payload.into()));
                    continue;
                }
                Ok(Inbound::Close(payload)) => return CloseReason::ClientClosed(payload.into()),
                Ok(Inbound::Nothing) => continue,
                Ok(Inbound::Bad(kind)) | Err(ReadEnd::Bad(kind)) => match self.bad(kind) {
                    Some(reason) => return reason,
                    None => continue,
                },
                Err(ReadEnd::Io(e)) => {
                    tracing::debug!(session = self.session.queue.id, error = %e, "read ended");
                    return CloseReason::ConnectionLost;
                }
            };
            if !self.rate.allow() {
                if let Some(reason) = self.bad(BadInput::RateLimited) {
                    return reason;
                }
            }
            let Ok(text) = String::from_utf8(message) else {
                match self.bad(BadInput::InvalidUtf8) {
                    Some(reason) => return reason,
                    None => continue,
                }
            };
            if let Some(reason) = self.handle_text(&text, subs).await {
                return reason;
            }
        }
    }

    async fn handle_text(
        &mut self,
        text: &str,
        subs: &mut SessionSubscriptions,
    ) -> Option<CloseReason> {
        let metrics = &self.services.metrics;
        let command = match Command::parse(text) {
            Ok(command) => command,
            Err(e) => {
                tracing::debug!(session = self.session.queue.id, error = %e, "ignored frame");
                return self.bad(e.into());
            }
        };
        match command {
            // Boxed: a token lookup's state is large, and only a subscribe needs it; inline it
            // would make every idle connection's task that much bigger.
            Command::Subscribe { identifier } => {
                return Box::pin(self.subscribe(identifier, subs)).await
            }
            Command::Unsubscribe { identifier } => {
                if subs.unsubscribe(&identifier) {
                    metrics.command("unsubscribe", "ok");
                } else {
                    tracing::debug!(
                        session = self.session.queue.id,
                        "unsubscribe for an unknown identifier"
                    );
                    metrics.command("unsubscribe", "unknown_identifier");
                }
            }
            Command::Message { identifier, data } => match subs.get(&identifier) {
                Some(sub) => match data.get("action").and_then(|a| a.as_str()) {
                    Some("update_presence") => {
                        self.services.presence.answer(sub.clone());
                        metrics.command("message", "ok");
                    }
                    _ => metrics.command("message", "unknown_action"),
                },
                None => {
                    tracing::debug!(
                        session = self.session.queue.id,
                        "message for an unknown identifier"
                    );
                    metrics.command("message", "unknown_identifier");
                }
            },
        }
        None
    }

    async fn subscribe(
        &mut self,
        raw: String,
        subs: &mut SessionSubscriptions,
    ) -> Option<CloseReason> {
        let services = self.services.clone();
        let metrics = &services.metrics;
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
        let outcome = crate::channel::subscribe(
            &services.auth,
            &raw,
            subs.len(),
            services.limits.max_subscriptions,
        )
        .await;
        match outcome {
            Ok((token, identifier, principal)) => {
                tracing::debug!(
                    session = self.session.queue.id,
                    token = %token_prefix(&token),
                    account_id = principal.account_id(),
                    user = principal.is_user(),
                    "subscription confirmed"
                );
                // Rails' PostgreSQL adapter: its streams are LISTENed to before the confirm.
                let held: Option<Held> = match &services.rails_postgres {
                    Some(adapter) => {
                        let streams = crate::routing::streams(&principal, &token);
                        Some(Box::new(adapter.acquire(streams).await))
                    }
                    None => None,
                };
                let sub = Subscription::new(identifier.raw, self.session.clone(), &principal);
                services.router.register(
                    sub.clone(),
                    principal,
                    token.into(),
                    reply::confirm(&raw),
                    held,
                );
                subs.insert(sub.clone());
                services.presence.answer(sub);
                metrics.command("subscribe", "confirmed");
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
                if self.rejects > services.limits.max_rejects {
                    return self.bad(BadInput::TooManyRejects);
                }
                None
            }
            Err(SubscribeError::Unavailable(e)) => {
                tracing::warn!(session = self.session.queue.id, error = %e, "database unavailable during subscribe; asking the client to reconnect");
                metrics.command("subscribe", "unavailable");
                Some(CloseReason::Disconnect(
                    crate::protocol::DisconnectReason::ServerRestart,
                ))
            }
        }
    }
}
