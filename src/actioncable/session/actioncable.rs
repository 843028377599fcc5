//! ActionCable's side of the protocol-neutral core: how a subscription's messages are framed
//! (its identifier before the body, `}` after, and in the extended protocol the position
//! between them), what the core's answers look like on this wire, and how the server says
//! goodbye (a `disconnect` frame, then the close frame).

use std::num::NonZeroU32;

use crate::connection::writer::{Farewell, Goodbye};
use crate::delivery::{
    push_header, DisconnectReason, Framing, PositionStyle, Replies, Subscription,
};

const OP_TEXT: u8 = crate::ws::OpCode::Text as u8;
use crate::actioncable::protocol::reply;

/// ActionCable's answers for the core ([`Replies`]).
pub struct ActionCable;

impl Replies for ActionCable {
    fn ended(&self, sub: &Subscription) -> Option<bytes::Bytes> {
        Some(reply::reject(&sub.identifier))
    }

    fn history_done(&self, identifier: &str) -> bytes::Bytes {
        reply::confirm_history(identifier)
    }

    fn history_refused(&self, identifier: &str) -> bytes::Bytes {
        reply::reject_history(identifier)
    }
}

impl Farewell for ActionCable {
    /// `disconnect` with the reason, then a close frame with 1000; a client too slow to
    /// read gets only the `disconnect` (nothing more would reach it in time).
    fn goodbye(&self, reason: DisconnectReason) -> Goodbye<'_> {
        Goodbye {
            text: Some(reply::disconnect(reason)),
            close: (reason != DisconnectReason::TooSlow).then_some((1000, "")),
        }
    }
}

/// The frame of subscription `raw_identifier`'s messages:
/// `{"identifier":"<raw>","message":<body>}`.
pub fn framing(raw_identifier: &str) -> Framing {
    Framing {
        prefix: reply::message_prefix(raw_identifier),
        suffix: reply::MESSAGE_SUFFIX,
        replies: &ActionCable,
        reframe: None,
    }
}

/// Appends a ping frame, `{"type":"ping","message":<value>}`, without allocating.
pub fn push_ping(buf: &mut Vec<u8>, value: NonZeroU32) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value.get()).as_bytes();
    const HEAD: &[u8] = br#"{"type":"ping","message":"#;
    push_header(buf, OP_TEXT, HEAD.len() + digits.len() + 1);
    buf.extend_from_slice(HEAD);
    buf.extend_from_slice(digits);
    buf.push(b'}');
}

/// How the extended protocol tells a message's position:
/// `,"stream_id":"..","epoch":"..","offset":N` before the closing `}`.
pub static EXT_POSITIONS: PositionStyle = PositionStyle {
    stream_id: Some(reply::POSITION_KEYS[0]),
    epoch: Some(reply::POSITION_KEYS[1]),
    offset: reply::POSITION_KEYS[2],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_the_identifier_exactly() {
        let raw = r#"{"channel":"RoomChannel","pubsub_token":"a\"b"}"#;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let session = crate::delivery::SessionHandle::new(8, metrics);
        let principal = crate::auth::Principal::member(1, 1, false, &[]);
        let sub = Subscription::new(raw.into(), framing(raw), session, &principal, None);
        for (frame, kind) in [
            (ActionCable.ended(&sub).unwrap(), "reject_subscription"),
            (ActionCable.history_done(raw), "confirm_history"),
            (ActionCable.history_refused(raw), "reject_history"),
        ] {
            let frame: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            assert_eq!(frame["identifier"], raw);
            assert_eq!(frame["type"], kind);
        }
    }

    #[test]
    fn a_positioned_message_is_one_json_object() {
        let raw = r#"{"channel":"RoomChannel"}"#;
        let frame = framing(raw);
        let mut bytes = frame.prefix.to_vec();
        bytes.extend_from_slice(br#"{"event":"x","data":{}}"#);
        EXT_POSITIONS.push_head(&mut bytes, r#""cable_events/1""#, r#""e""#);
        bytes.extend_from_slice(b"42");
        bytes.extend_from_slice(frame.suffix);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"identifier": raw, "message": {"event": "x", "data": {}},
                               "stream_id": "cable_events/1", "epoch": "e", "offset": 42})
        );
    }
}
