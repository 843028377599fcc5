//! Subscription identifiers: the raw string the client sent (the key clients look
//! subscriptions up by, echoed byte for byte) and its decoded form.

use std::sync::Arc;

use serde_json::{Map, Value};

/// A decoded identifier: a JSON object with a string `channel`.
#[derive(Debug, Clone)]
pub struct Identifier {
    /// Exactly as the client sent it.
    pub raw: Arc<str>,
    pub channel: String,
    pub params: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("identifier is not a JSON object")]
    NotAnObject,
    #[error("identifier has no string \"channel\"")]
    NoChannel,
}

impl Identifier {
    pub fn parse(raw: &str) -> Result<Identifier, IdentifierError> {
        let params: Map<String, Value> =
            serde_json::from_str(raw).map_err(|_| IdentifierError::NotAnObject)?;
        let channel = match params.get("channel") {
            Some(Value::String(channel)) => channel.clone(),
            _ => return Err(IdentifierError::NoChannel),
        };
        Ok(Identifier {
            raw: raw.into(),
            channel,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_raw_bytes() {
        let raw = "{ \"pubsub_token\": \"x\",\"channel\":\"RoomChannel\" }";
        let id = Identifier::parse(raw).unwrap();
        assert_eq!(&*id.raw, raw);
        assert_eq!(id.channel, "RoomChannel");
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(
            Identifier::parse("[]").unwrap_err(),
            IdentifierError::NotAnObject
        );
        assert_eq!(
            Identifier::parse("\"x\"").unwrap_err(),
            IdentifierError::NotAnObject
        );
        assert_eq!(
            Identifier::parse("{}").unwrap_err(),
            IdentifierError::NoChannel
        );
        assert_eq!(
            Identifier::parse("{\"channel\":1}").unwrap_err(),
            IdentifierError::NoChannel
        );
    }
}
