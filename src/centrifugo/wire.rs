//! Centrifugo's side of the protocol-neutral core: how a channel's publications are framed
//! (`{"push":{"channel":..,"pub":{"data":<body>}}}`), what the core's answers look like (a
//! subscription the server ends gets an `unsubscribe` push), the server's ping (`{}`), and
//! how the server says goodbye (a close frame with Centrifugo's code and reason).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::json;

use super::protocol::{self, Disconnect};
use crate::connection::writer::{Farewell, Goodbye};
use crate::delivery::{push_header, DisconnectReason, Framing, Replies, Subscription};

const OP_TEXT: u8 = crate::ws::OpCode::Text as u8;

/// The unsubscribe push's code when the server ends a subscription (below 2500: the client
/// does not subscribe again by itself).
pub const UNSUBSCRIBED_BY_SERVER: u32 = 2000;

/// The framing of a subscription to `channel`.
pub fn framing(channel: &str) -> Framing {
    Framing {
        prefix: protocol::publication_prefix(channel),
        suffix: protocol::PUBLICATION_SUFFIX,
        replies: &Centrifugo,
        reframe: None,
    }
}

/// Centrifugo's answers for the core ([`Replies`]); a subscription's identifier is its
/// channel.
pub struct Centrifugo;

impl Replies for Centrifugo {
    fn ended(&self, sub: &Subscription) -> Option<Bytes> {
        Some(protocol::push(
            &sub.identifier,
            "unsubscribe",
            &json!({"code": UNSUBSCRIBED_BY_SERVER, "reason": "server unsubscribe"}),
        ))
    }

    fn history_done(&self, _channel: &str) -> Bytes {
        Bytes::new()
    }

    fn history_refused(&self, _channel: &str) -> Bytes {
        Bytes::new()
    }
}

/// One connection's goodbye: the disconnect the session chose (a code only this protocol
/// has, such as 3500 or 3012, or one a connect proxy gave), or the one the core's reason
/// maps to.
#[derive(Default)]
pub struct Goodbyes {
    chosen: OnceLock<(u16, Box<str>)>,
}

/// The longest close reason (a close frame's payload is at most 125 bytes with its code).
const MAX_REASON: usize = 120;

impl Goodbyes {
    /// Chooses the disconnect the connection ends with (the first choice wins).
    pub fn choose(&self, disconnect: Disconnect) {
        self.choose_code(disconnect.code, disconnect.reason);
    }

    /// Chooses a code and reason of someone else's (a connect proxy's), the reason cut to
    /// what a close frame holds.
    pub fn choose_code(&self, code: u16, reason: &str) {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self.chosen.set((code, reason[..end].into()));
    }
}

impl Farewell for Goodbyes {
    fn goodbye(&self, reason: DisconnectReason) -> Goodbye<'_> {
        if let Some((code, reason)) = self.chosen.get() {
            return Goodbye {
                text: None,
                close: Some((*code, reason)),
            };
        }
        let disconnect = match reason {
            DisconnectReason::ServerRestart => protocol::SHUTDOWN,
            DisconnectReason::TooSlow => protocol::SLOW,
            DisconnectReason::InvalidRequest => protocol::BAD_REQUEST_DISCONNECT,
            DisconnectReason::Unauthorized => protocol::INVALID_TOKEN,
            DisconnectReason::TokenExpired => protocol::CONNECTION_EXPIRED,
            DisconnectReason::Remote => protocol::FORCE_RECONNECT,
        };
        Goodbye {
            text: None,
            close: Some((disconnect.code, disconnect.reason)),
        }
    }
}

/// Seconds between the server's pings (`CABLE_CENTRIFUGO_PING`), set once at start.
static PING_SECONDS: AtomicU32 = AtomicU32::new(25);

pub fn set_ping_interval(seconds: u32) {
    PING_SECONDS.store(seconds.max(1), Ordering::Relaxed);
}

pub fn ping_interval() -> u32 {
    PING_SECONDS.load(Ordering::Relaxed)
}

/// The process's ping wheel offers every connection a ping about every 3 s, with the time in
/// seconds ([`crate::connection::pings`]); a Centrifugo connection takes one in each
/// `ping` seconds (its ping is `{}`), so the client sees one every `ping` ± 3 s, well within
/// what centrifuge-js waits (`ping` + 10 s).
pub fn push_ping(buf: &mut Vec<u8>, value: NonZeroU32) {
    let every = ping_interval();
    if every <= 3 || value.get() % every < 3 {
        push_header(buf, OP_TEXT, protocol::PING.len());
        buf.extend_from_slice(protocol::PING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodbyes_say_the_chosen_code_or_the_reasons() {
        let goodbyes = Goodbyes::default();
        assert_eq!(
            goodbyes.goodbye(DisconnectReason::ServerRestart).close,
            Some((3001, "shutdown"))
        );
        goodbyes.choose(protocol::NO_PONG);
        goodbyes.choose(protocol::INVALID_TOKEN);
        assert_eq!(
            goodbyes.goodbye(DisconnectReason::InvalidRequest).close,
            Some((3012, "no pong"))
        );
    }

    #[test]
    fn a_ping_goes_out_once_in_each_interval() {
        set_ping_interval(25);
        let sent: Vec<u32> = (1000..1100)
            .step_by(3)
            .filter(|t| {
                let mut buf = Vec::new();
                push_ping(&mut buf, NonZeroU32::new(*t).unwrap());
                !buf.is_empty()
            })
            .collect();
        assert!(
            sent.windows(2)
                .all(|w| w[1] - w[0] >= 22 && w[1] - w[0] <= 28),
            "{sent:?}"
        );
        assert_eq!(sent.len(), 4);
    }
}
