//! Outbound frames: every message type and disconnect reason spelled in one place.

use bytes::Bytes;

pub const WELCOME: &str = r#"{"type":"welcome"}"#;

/// Why the server ends a connection, as sent in the `disconnect` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Authentication failed for the connection as a whole.
    Unauthorized,
    /// The server is going away or a dependency is briefly unavailable; come back.
    ServerRestart,
    /// An operator or a revoked token ended it.
    Remote,
    /// The client did not read fast enough.
    TooSlow,
    /// Protocol abuse (oversized frames, floods).
    InvalidRequest,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::ServerRestart => "server_restart",
            DisconnectReason::Remote => "remote",
            DisconnectReason::TooSlow => "too_slow",
            DisconnectReason::InvalidRequest => "invalid_request",
        }
    }

    /// Whether the client is told to come back.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            DisconnectReason::ServerRestart | DisconnectReason::TooSlow | DisconnectReason::Remote
        )
    }
}

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

pub fn ping(unix_seconds: u64) -> Bytes {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#).into()
}

fn quoted(raw_identifier: &str) -> String {
    serde_json::to_string(raw_identifier).expect("a string always serializes")
}

pub fn confirm(raw_identifier: &str) -> Bytes {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        quoted(raw_identifier)
    )
    .into()
}

pub fn reject(raw_identifier: &str) -> Bytes {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        quoted(raw_identifier)
    )
    .into()
}

/// `{"identifier":"<escaped raw id>","message":` — computed once per subscription; a message
/// frame is this prefix, then the shared message bytes, then `}`.
pub fn message_prefix(raw_identifier: &str) -> Bytes {
    format!(r#"{{"identifier":{},"message":"#, quoted(raw_identifier)).into()
}

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
        composed.extend_from_slice(b"{\"event\":\"x\"}}");
        let frame: serde_json::Value = serde_json::from_slice(&composed).unwrap();
        assert_eq!(frame["identifier"].as_str().unwrap(), raw);
        assert_eq!(frame["message"]["event"], "x");
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
