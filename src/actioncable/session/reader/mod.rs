//! The reader: owns the socket's read half and processes commands strictly in order, one
//! at a time (a subscribe's token lookup finishes before the next command is looked at).
//! What bad input gets comes from [`crate::actioncable::protocol::bad_input`], applied in [`Reader::bad`].

mod restore;
mod subscribe;

use std::sync::Arc;

use tokio::io::AsyncRead;

use super::subscriptions::SessionSubscriptions;
use super::Services;
use crate::actioncable::protocol::reply;
use crate::actioncable::protocol::{BadInput, Command, HistoryRequest, Verdict};
use crate::auth::jwt::ConnectionIdentity;
use crate::auth::Principal;
use crate::config::tuning::{HARD_LIMIT_FACTOR, HISTORY_RATE};
use crate::connection::messages::{Messages, Next};
use crate::connection::rate::RateLimit;
use crate::delivery::{CloseReason, Outbound, Positions, SessionHandle, Subscription};
use crate::ingress::postgres::PgAdapter;

pub struct Reader<R> {
    messages: Messages<R>,
    services: Arc<Services>,
    session: SessionHandle,
    rate: RateLimit,
    /// History requests: each may read the database, so they have a budget of their own.
    history_rate: RateLimit,
    rejects: u32,
    /// The session id, on an extended-protocol connection.
    sid: Option<Arc<str>>,
    /// Who the connection is, when it carries a signed token (boxed: most connections carry
    /// none, and this struct lives as long as the connection).
    identity: Option<Box<ConnectionIdentity>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// `early`: what the client sent right behind its upgrade request, read first.
    pub fn new(
        read: R,
        early: Vec<u8>,
        services: Arc<Services>,
        session: SessionHandle,
        sid: Option<Arc<str>>,
        identity: Option<ConnectionIdentity>,
    ) -> Self {
        Reader {
            messages: Messages::new(read, services.plumbing.limits.max_frame_size, early),
            rate: RateLimit::new(services.plumbing.limits.max_command_rate),
            history_rate: RateLimit::with_burst(
                HISTORY_RATE,
                services.plumbing.limits.max_subscriptions as f64,
            ),
            services,
            session,
            rejects: 0,
            sid,
            identity: identity.map(Box::new),
        }
    }

    /// Who the connection is, when it carries a signed token.
    pub fn identity(&self) -> Option<&ConnectionIdentity> {
        self.identity.as_deref()
    }

    /// Counts bad input and says whether it ends the connection. Rejects are answered (and
    /// counted) by the subscribe that found them.
    fn bad(&self, kind: BadInput) -> Option<CloseReason> {
        let metrics = &self.services.plumbing.metrics;
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
            let message = match self.messages.next_message(&self.session).await {
                Next::Text(message) => message,
                Next::Bad(fault) => match self.bad(fault.into()) {
                    Some(reason) => return reason,
                    None => continue,
                },
                Next::End(reason) => return reason,
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
            // Boxed: an idle connection waits in `next()` above, and its task should not carry
            // the space of every command's handling beside it.
            if let Some(reason) = Box::pin(self.handle_text(&text, subs)).await {
                return reason;
            }
        }
    }

    async fn handle_text(
        &mut self,
        text: &str,
        subs: &mut SessionSubscriptions,
    ) -> Option<CloseReason> {
        let metrics = &self.services.plumbing.metrics;
        let command = match Command::parse(text) {
            Ok(command) => command,
            Err(e) => {
                tracing::debug!(session = self.session.queue.id, error = %e, "ignored frame");
                return self.bad(e.into());
            }
        };
        match command {
            Command::Subscribe {
                identifier,
                history,
            } => {
                let history = history.filter(|_| self.sid.is_some());
                return self.subscribe(identifier, history, subs).await;
            }
            Command::Unsubscribe { identifier } => {
                if subs.unsubscribe(&identifier) {
                    metrics.command("unsubscribe", "ok");
                    self.save(subs);
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
                    Some("typing") => {
                        let sub = sub.clone();
                        typing(&self.services, &sub, &data).await;
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
            // The extended protocol's; a plain client sending them gets what any unknown
            // command gets.
            Command::History { .. } | Command::Pong if self.sid.is_none() => {
                return self.bad(BadInput::UnknownCommand);
            }
            Command::Pong => metrics.command("pong", "ok"),
            Command::History {
                identifier,
                history,
            } => {
                let live = subs
                    .get(&identifier)
                    .filter(|sub| sub.is_active())
                    .cloned()
                    .and_then(|sub| Some((self.services.router.principal_of(sub.id)?, sub)));
                match live {
                    Some(((principal, token), sub)) => {
                        self.history(&sub, &principal, &token, &history).await;
                    }
                    None => {
                        self.session
                            .send(Outbound::Frame(reply::reject_history(&identifier)));
                        metrics.command("history", "unknown_identifier");
                    }
                }
            }
        }
        None
    }

    /// Serves a history request within the connection's history budget; beyond it,
    /// `reject_history` at once (and live frames flow again).
    async fn history(
        &mut self,
        sub: &Arc<Subscription>,
        principal: &Principal,
        token: &str,
        history: &HistoryRequest,
    ) {
        if !self.history_rate.allow() {
            self.services
                .plumbing
                .metrics
                .command("history", "rate_limited");
            self.session
                .send(Outbound::Frame(reply::reject_history(&sub.identifier)));
            if let Some(positions) = &sub.positions {
                positions.release(&sub.session);
            }
            return;
        }
        let services = self.services.clone();
        serve_history(&services, sub, principal, token, history).await;
    }

    /// Writes the session's subscriptions (extended protocol only).
    fn save(&self, subs: &SessionSubscriptions) {
        if let Some(sid) = &self.sid {
            self.services.sessions.save(sid, subs.identifiers());
        }
    }

    /// Makes an authorized subscription live: its streams LISTENed to (Rails' PostgreSQL
    /// adapter) before anything else, registered with the router (confirm queued if given,
    /// live frames held if `hold`), its presence answered.
    async fn go_live(
        &mut self,
        raw: Arc<str>,
        token: String,
        principal: Principal,
        confirm: bool,
        hold: bool,
        subs: &mut SessionSubscriptions,
    ) -> Arc<Subscription> {
        let services = self.services.clone();
        let streams = crate::routing::streams(&principal, &token);
        let lease = PgAdapter::lease_for(services.rails_postgres.as_ref(), streams).await;
        let positions = self.sid.as_ref().map(|_| {
            Positions::new(
                &super::actioncable::EXT_POSITIONS,
                crate::resume::outbox_stream_id(&raw),
                &services.history.epoch,
                services.plumbing.limits.send_queue * HARD_LIMIT_FACTOR,
            )
        });
        let confirm = confirm.then(|| reply::confirm(&raw));
        let framing = super::actioncable::framing(&raw);
        let sub = Subscription::new(raw, framing, self.session.clone(), &principal, positions);
        services
            .router
            .register(sub.clone(), principal, token.into(), confirm, lease, hold);
        subs.insert(sub.clone());
        services.presence.answer(sub.clone());
        sub
    }
}

/// Serves a history request (boxed: its state is large and only the extended protocol needs
/// it).
async fn serve_history(
    services: &Services,
    sub: &Arc<Subscription>,
    principal: &Principal,
    token: &str,
    history: &HistoryRequest,
) {
    Box::pin(services.history.serve(sub, principal, token, history)).await;
}

/// The `typing` action ([`crate::typing`]); what it wrote or why not is counted as the
/// result of the `typing` command.
async fn typing(
    services: &Services,
    sub: &Arc<Subscription>,
    data: &serde_json::Map<String, serde_json::Value>,
) {
    let outcome = match (
        crate::typing::Typing::parse(data),
        services.router.principal_of(sub.id),
    ) {
        (Err(ignored), _) => Err(ignored),
        // Revoked meanwhile.
        (_, None) => Err(crate::typing::Ignored::NotVisible),
        (Ok(typing), Some((principal, _))) => services.typing.publish(&principal, typing).await,
    };
    let result = match outcome {
        Ok(()) => "ok",
        Err(ignored) => {
            tracing::debug!(
                session = sub.session.queue.id,
                result = ignored.label(),
                "typing ignored"
            );
            ignored.label()
        }
    };
    services.plumbing.metrics.command("typing", result);
}
