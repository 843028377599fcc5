//! The reader: owns the socket's read half and processes commands strictly in order, one
//! at a time (a subscribe's token lookup finishes before the next command is looked at).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncRead;

use super::frame::{FrameError, FrameReader, OpCode};
use super::outbox::{CloseReason, Outbound, SessionLink};
use crate::auth::Principal;
use crate::channel::{RoomParams, SubscribeError};
use crate::gateway::Gateway;
use crate::protocol::reply;
use crate::protocol::{Command, DisconnectReason, Identifier, IdentifierError};
use crate::router::Subscription;

/// The subscriptions of one connection, by raw identifier. Whatever is left in it when the
/// connection ends is unregistered by [`SessionSubscriptions::clear`].
pub struct SessionSubscriptions {
    gateway: Arc<Gateway>,
    by_identifier: HashMap<Arc<str>, Arc<Subscription>>,
}

impl SessionSubscriptions {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        SessionSubscriptions {
            gateway,
            by_identifier: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_identifier.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_identifier.is_empty()
    }

    pub fn clear(&mut self) {
        for (_, sub) in self.by_identifier.drain() {
            self.gateway.router.unregister(sub.id, None);
        }
    }
}

/// A text message being assembled from fragments.
enum Partial {
    None,
    Text(Vec<u8>),
    Binary(usize),
}

/// Commands per second, with bursts of twice the rate.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> RateLimit {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The first characters of a token, for logs: tokens are never logged in full.
pub fn token_prefix(token: &str) -> String {
    let prefix: String = token.chars().take(4).collect();
    format!("{prefix}…")
}

pub struct Reader<R> {
    frames: FrameReader<R>,
    gateway: Arc<Gateway>,
    link: SessionLink,
    partial: Partial,
    rate: RateLimit,
    rejects: u32,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(read: R, gateway: Arc<Gateway>, link: SessionLink) -> Self {
        let rate = RateLimit::new(gateway.config.max_command_rate);
        Reader {
            frames: FrameReader::new(read, gateway.config.max_frame_size),
            gateway,
            link,
            partial: Partial::None,
            rate,
            rejects: 0,
        }
    }

    /// Reads and handles frames until the connection should end, and says why.
    pub async fn run(&mut self, subs: &mut SessionSubscriptions) -> CloseReason {
        loop {
            let frame = match self.frames.next().await {
                Ok(frame) => frame,
                Err(FrameError::TooLarge) => {
                    self.gateway.metrics.invalid_frame("too_large");
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
                Err(e) => {
                    tracing::debug!(session = self.link.state.id, error = %e, "read ended");
                    return CloseReason::ConnectionLost;
                }
            };
            let message = match (frame.opcode, frame.fin) {
                (OpCode::Close, _) => return CloseReason::ClientClosed(frame.payload.into()),
                (OpCode::Ping, _) => {
                    self.link.send(Outbound::Pong(frame.payload.into()));
                    None
                }
                (OpCode::Text, true) => Some(frame.payload),
                (OpCode::Text, false) => {
                    self.partial = Partial::Text(frame.payload);
                    None
                }
                (OpCode::Binary, fin) => {
                    self.partial = if fin {
                        Partial::None
                    } else {
                        Partial::Binary(frame.payload.len())
                    };
                    if fin {
                        self.gateway.metrics.invalid_frame("binary");
                    }
                    None
                }
                (OpCode::Continuation, fin) => {
                    match continue_message(&mut self.partial, &self.gateway, &frame.payload, fin) {
                        Ok(message) => message,
                        Err(reason) => return reason,
                    }
                }
                (OpCode::Pong, _) => None,
            };
            let Some(message) = message else { continue };
            if !self.rate.allow() {
                self.gateway.metrics.invalid_frame("rate_limited");
                tracing::info!(session = self.link.state.id, "command rate exceeded");
                return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
            }
            let Ok(text) = String::from_utf8(message) else {
                self.gateway.metrics.invalid_frame("invalid_utf8");
                continue;
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
        let metrics = &self.gateway.metrics;
        let command = match Command::parse(text) {
            Ok(command) => command,
            Err(e) => {
                tracing::debug!(session = self.link.state.id, error = %e, "ignored frame");
                metrics.invalid_frame(e.kind());
                return None;
            }
        };
        match command {
            // Boxed: a token lookup's state is large, and only a subscribe needs it; inline it
            // would make every idle connection's task that much bigger.
            Command::Subscribe { identifier } => {
                return Box::pin(self.subscribe(identifier, subs)).await
            }
            Command::Unsubscribe { identifier } => {
                match subs.by_identifier.remove(identifier.as_str()) {
                    Some(sub) => {
                        self.gateway.router.unregister(sub.id, None);
                        metrics.command("unsubscribe", "ok");
                    }
                    None => {
                        tracing::debug!(
                            session = self.link.state.id,
                            "unsubscribe for an unknown identifier"
                        );
                        metrics.command("unsubscribe", "unknown_identifier");
                    }
                }
            }
            Command::Message { identifier, data } => {
                match subs.by_identifier.get(identifier.as_str()) {
                    Some(sub) => match data.get("action").and_then(|a| a.as_str()) {
                        Some("update_presence") => {
                            self.gateway.presence.answer(sub.clone());
                            metrics.command("message", "ok");
                        }
                        _ => metrics.command("message", "unknown_action"),
                    },
                    None => {
                        tracing::debug!(
                            session = self.link.state.id,
                            "message for an unknown identifier"
                        );
                        metrics.command("message", "unknown_identifier");
                    }
                }
            }
        }
        None
    }

    /// Identifier → (token, identifier, principal), or why not.
    async fn authorize(
        gateway: &Gateway,
        identifier: Result<Identifier, IdentifierError>,
        held: usize,
    ) -> Result<(String, Identifier, Principal), SubscribeError> {
        let identifier = identifier.map_err(|_| SubscribeError::Reject("no channel"))?;
        let params = RoomParams::parse(&identifier)?;
        if held >= gateway.config.max_subscriptions {
            return Err(SubscribeError::Reject(
                "too many subscriptions on this connection",
            ));
        }
        let principal = params.authorize(&gateway.auth).await?;
        Ok((params.pubsub_token, identifier, principal))
    }

    async fn subscribe(
        &mut self,
        raw: String,
        subs: &mut SessionSubscriptions,
    ) -> Option<CloseReason> {
        let metrics = &self.gateway.metrics;
        match subs
            .by_identifier
            .get(raw.as_str())
            .map(|sub| sub.is_active())
        {
            Some(true) => {
                // The official client re-sends subscribe until confirmed; a second confirm
                // would make @anycable/core unsubscribe.
                metrics.command("subscribe", "duplicate");
                return None;
            }
            // Revoked meanwhile: this is a fresh attempt.
            Some(false) => {
                subs.by_identifier.remove(raw.as_str());
            }
            None => {}
        }
        let identifier = match Identifier::parse(&raw) {
            Err(IdentifierError::NotAnObject) => {
                metrics.invalid_frame("identifier_not_object");
                return None;
            }
            parsed => parsed,
        };
        let outcome = Self::authorize(&self.gateway, identifier, subs.len()).await;
        match outcome {
            Ok((token, identifier, principal)) => {
                tracing::debug!(
                    session = self.link.state.id,
                    token = %token_prefix(&token),
                    account_id = principal.account_id(),
                    user = principal.is_user(),
                    "subscription confirmed"
                );
                let sub = Subscription::new(identifier.raw.clone(), self.link.clone(), &principal);
                self.gateway.router.register(
                    sub.clone(),
                    principal,
                    token.into(),
                    reply::confirm(&raw),
                );
                subs.by_identifier.insert(identifier.raw, sub.clone());
                self.gateway.presence.answer(sub);
                metrics.command("subscribe", "confirmed");
                None
            }
            Err(SubscribeError::Reject(why)) => {
                tracing::debug!(session = self.link.state.id, why, "subscription rejected");
                self.link.send(Outbound::Frame(reply::reject(&raw)));
                metrics.command("subscribe", "rejected");
                self.rejects += 1;
                (self.rejects > self.gateway.config.max_rejects)
                    .then_some(CloseReason::Disconnect(DisconnectReason::Unauthorized))
            }
            Err(SubscribeError::Unavailable(e)) => {
                tracing::warn!(session = self.link.state.id, error = %e, "database unavailable during subscribe; asking the client to reconnect");
                metrics.command("subscribe", "unavailable");
                Some(CloseReason::Disconnect(DisconnectReason::ServerRestart))
            }
        }
    }
}

/// Adds a continuation frame; the whole message is bounded like a single frame.
fn continue_message(
    partial: &mut Partial,
    gateway: &Gateway,
    payload: &[u8],
    fin: bool,
) -> Result<Option<Vec<u8>>, CloseReason> {
    let limit = gateway.config.max_frame_size;
    let too_large = || {
        gateway.metrics.invalid_frame("too_large");
        CloseReason::Disconnect(DisconnectReason::InvalidRequest)
    };
    match partial {
        Partial::None => {
            gateway.metrics.invalid_frame("stray_continuation");
            Ok(None)
        }
        Partial::Binary(len) => {
            *len += payload.len();
            if *len > limit {
                return Err(too_large());
            }
            if fin {
                *partial = Partial::None;
                gateway.metrics.invalid_frame("binary");
            }
            Ok(None)
        }
        Partial::Text(buf) => {
            if buf.len() + payload.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(payload);
            if !fin {
                return Ok(None);
            }
            match std::mem::replace(partial, Partial::None) {
                Partial::Text(buf) => Ok(Some(buf)),
                _ => unreachable!("matched Text above"),
            }
        }
    }
}
