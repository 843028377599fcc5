//! The reader: frames in, each command handled in order, and which token runs out first.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::{Ends, Reader};
use crate::centrifugo::protocol::{self, Error, Line, Method};
use crate::connection::frame::WireFault;
use crate::connection::messages::Next;
use crate::delivery::{CloseReason, DisconnectReason, Outbound};

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Tells the connection's task which token runs out first.
    pub(super) fn watch_deadline(&self) {
        let connection = self.exp.map(|exp| (exp, protocol::CONNECTION_EXPIRED));
        let subscriptions = self
            .sub_exps
            .values()
            .map(|exp| (*exp, protocol::SUBSCRIPTION_EXPIRED));
        let first = connection
            .into_iter()
            .chain(subscriptions)
            .min_by_key(|(exp, _)| *exp);
        self.expiry.send_replace(first);
    }

    pub(super) fn send(&self, frame: Bytes) {
        self.session.send(Outbound::Frame(frame));
    }

    pub(super) fn error(&self, id: u32, error: Error) {
        self.send(protocol::error_reply(id, error));
    }

    pub(super) async fn run(&mut self) -> CloseReason {
        let metrics = self.services.plumbing.metrics.clone();
        loop {
            let message = match self.messages.next_message(&self.session).await {
                Next::Text(message) => message,
                Next::Bad(WireFault::FrameViolation) => {
                    metrics.invalid_frame("protocol_violation");
                    return CloseReason::ConnectionLost;
                }
                Next::Bad(fault) => {
                    // Too large, or binary: the JSON protocol is text only.
                    metrics.invalid_frame(if fault == WireFault::TooLarge {
                        "too_large"
                    } else {
                        "binary"
                    });
                    self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
                Next::End(reason) => return reason,
            };
            if self.client.is_some() {
                self.seen
                    .store(crate::clock::unix_seconds(), Ordering::Relaxed);
            }
            if !self.rate.allow() {
                metrics.invalid_frame("rate_limited");
                self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
            }
            let lines = match protocol::parse(&message) {
                Ok(lines) => lines,
                Err(why) => {
                    tracing::debug!(session = self.session.queue.id, error = %why, "bad frame");
                    metrics.invalid_frame("centrifugo_bad_frame");
                    self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
            };
            for line in lines {
                if let Err(disconnect) = Box::pin(self.handle(line)).await {
                    self.goodbyes.choose(disconnect);
                    let reason = if disconnect.code == protocol::INVALID_TOKEN.code {
                        DisconnectReason::Unauthorized
                    } else {
                        DisconnectReason::InvalidRequest
                    };
                    return CloseReason::Disconnect(reason);
                }
            }
        }
    }

    pub(super) async fn handle(&mut self, line: Line) -> Ends {
        let metrics = self.services.plumbing.metrics.clone();
        let (id, method, params) = match line {
            Line::Pong => return Ok(()),
            Line::Unknown { id } => {
                metrics.command("centrifugo", "method_not_found");
                self.error(id, protocol::METHOD_NOT_FOUND);
                return Ok(());
            }
            Line::Command { id, method, params } => (id, method, params),
        };
        if self.client.is_none() != (method == Method::Connect) {
            // A command before the connect, or a second connect.
            return Err(protocol::BAD_REQUEST_DISCONNECT);
        }
        let outcome = match method {
            Method::Connect => self.connect(id, &params).await,
            Method::Subscribe => self.subscribe(id, &params).await,
            Method::Unsubscribe => self.unsubscribe(id, &params).await,
            Method::Presence | Method::PresenceStats => self.presence(id, method, &params).await,
            Method::Publish => self.publish(id, &params).await,
            Method::Refresh => self.refresh(id, &params),
            Method::Send => Ok(()),
            Method::SubRefresh => self.sub_refresh(id, &params),
            Method::History | Method::Rpc => {
                self.error(id, protocol::NOT_AVAILABLE);
                Ok(())
            }
        };
        metrics.command(
            method.key(),
            if outcome.is_ok() { "ok" } else { "disconnect" },
        );
        outcome
    }
}
