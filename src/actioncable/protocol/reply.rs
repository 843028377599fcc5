//! Outbound frames: every message type and disconnect reason spelled in one place.

use std::sync::Arc;

use bytes::Bytes;

pub use crate::delivery::DisconnectReason;

pub const WELCOME: &str = r#"{"type":"welcome"}"#;

/// `{"type":"disconnect","reason":..,"reconnect":..}`: always both keys, because the official
/// client never reconnects when `reconnect` is missing.
pub fn disconnect(reason: DisconnectReason) -> Bytes {
    format!(
        r#"{{"type":"disconnect","reason":"{}","reconnect":{}}}"#,
        reason.as_str(),
        reason.reconnect()
    )
    .into()
}

fn quoted(raw_identifier: &str) -> String {
    serde_json::to_string(raw_identifier).expect("a string always serializes")
}

/// `{"identifier":<raw id>,"type":<kind>}`: the answers that name a subscription.
fn typed(raw_identifier: &str, kind: &str) -> Bytes {
    format!(
        r#"{{"identifier":{},"type":"{kind}"}}"#,
        quoted(raw_identifier)
    )
    .into()
}

/// The extended protocol's welcome: the session id, and what was restored, if anything.
pub fn welcome_ext(sid: &str, restored: Option<&[Arc<str>]>) -> Bytes {
    let mut frame = format!(r#"{{"type":"welcome","sid":{}"#, quoted(sid));
    if let Some(ids) = restored {
        frame.push_str(r#","restored":true,"restored_ids":"#);
        frame.push_str(&serde_json::to_string(ids).expect("strings always serialize"));
    }
    frame.push('}');
    frame.into()
}

pub fn confirm_history(raw_identifier: &str) -> Bytes {
    typed(raw_identifier, "confirm_history")
}

pub fn reject_history(raw_identifier: &str) -> Bytes {
    typed(raw_identifier, "reject_history")
}

pub fn confirm(raw_identifier: &str) -> Bytes {
    typed(raw_identifier, "confirm_subscription")
}

pub fn reject(raw_identifier: &str) -> Bytes {
    typed(raw_identifier, "reject_subscription")
}

/// `{"identifier":"<escaped raw id>","message":` — computed once per subscription; a message
/// frame is this prefix, then the shared message bytes (and, for the extended protocol, the
/// position), then [`MESSAGE_SUFFIX`].
pub fn message_prefix(raw_identifier: &str) -> Bytes {
    format!(r#"{{"identifier":{},"message":"#, quoted(raw_identifier)).into()
}

/// What closes a message frame.
pub const MESSAGE_SUFFIX: &[u8] = b"}";

/// The fields of a message's position in the extended protocol, in the order they follow
/// the message: `,"stream_id":"..","epoch":"..","offset":N`.
pub const POSITION_KEYS: [&str; 3] = [r#","stream_id":"#, r#","epoch":"#, r#","offset":"#];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_echoed_exactly() {
        let raw = "{\"channel\":\"RoomChannel\",  \"pubsub_token\":\"a\\\"b\"}";
        let frame: serde_json::Value = serde_json::from_slice(&confirm(raw)).unwrap();
        assert_eq!(frame["identifier"].as_str().unwrap(), raw);
        assert_eq!(frame["type"], "confirm_subscription");
        let mut composed = message_prefix(raw).to_vec();
        composed.extend_from_slice(b"{\"event\":\"x\"}");
        composed.extend_from_slice(MESSAGE_SUFFIX);
        let frame: serde_json::Value = serde_json::from_slice(&composed).unwrap();
        assert_eq!(frame["identifier"].as_str().unwrap(), raw);
        assert_eq!(frame["message"]["event"], "x");
    }

    #[test]
    fn welcome_of_the_extended_protocol() {
        let plain: serde_json::Value = serde_json::from_slice(&welcome_ext("s1", None)).unwrap();
        assert_eq!(plain, serde_json::json!({"type": "welcome", "sid": "s1"}));
        let ids: Vec<Arc<str>> = vec!["{\"a\":1}".into()];
        let restored: serde_json::Value =
            serde_json::from_slice(&welcome_ext("s2", Some(&ids))).unwrap();
        assert_eq!(
            restored,
            serde_json::json!({"type": "welcome", "sid": "s2", "restored": true,
                               "restored_ids": ["{\"a\":1}"]})
        );
    }

    #[test]
    fn disconnect_always_has_both_keys() {
        let frame: serde_json::Value =
            serde_json::from_slice(&disconnect(DisconnectReason::TooSlow)).unwrap();
        assert_eq!(frame["reason"], "too_slow");
        assert_eq!(frame["reconnect"], true);
        let frame: serde_json::Value =
            serde_json::from_slice(&disconnect(DisconnectReason::InvalidRequest)).unwrap();
        assert_eq!(frame["reconnect"], false);
    }
}
