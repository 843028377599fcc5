//! Inbound commands: `{"command":..,"identifier":"<json string>","data":..}`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::BadInput;

/// A client command, decoded. The identifier stays the raw string the client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        identifier: String,
    },
    Unsubscribe {
        identifier: String,
    },
    Message {
        identifier: String,
        data: Map<String, Value>,
    },
}

impl Command {
    /// The metrics label of this command.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Message { .. } => "message",
        }
    }

    pub fn identifier(&self) -> &str {
        match self {
            Command::Subscribe { identifier }
            | Command::Unsubscribe { identifier }
            | Command::Message { identifier, .. } => identifier,
        }
    }
}

/// Why an inbound text frame is not a command. The connection stays open for all of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("frame is not a JSON object")]
    Malformed,
    #[error("unknown command")]
    UnknownCommand,
    #[error("identifier missing or not a string")]
    MissingIdentifier,
    #[error("data is neither an object nor a string holding one")]
    BadData,
}

impl From<CommandError> for BadInput {
    fn from(e: CommandError) -> BadInput {
        match e {
            CommandError::Malformed => BadInput::Malformed,
            CommandError::UnknownCommand => BadInput::UnknownCommand,
            CommandError::MissingIdentifier => BadInput::MissingIdentifier,
            CommandError::BadData => BadInput::BadData,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    command: Option<Value>,
    identifier: Option<Value>,
    data: Option<Value>,
}

impl Command {
    /// Decodes one text frame.
    ///
    /// `data` is accepted as a JSON string holding an object (the official client) or as a
    /// plain object (the Chatwoot Flutter SDK).
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        // serde would also read a struct from a JSON array; a command is an object.
        if !text.trim_start().starts_with('{') {
            return Err(CommandError::Malformed);
        }
        let envelope: Envelope = serde_json::from_str(text).map_err(|_| CommandError::Malformed)?;
        let command = match envelope.command {
            Some(Value::String(command)) => command,
            _ => return Err(CommandError::UnknownCommand),
        };
        if !matches!(command.as_str(), "subscribe" | "unsubscribe" | "message") {
            return Err(CommandError::UnknownCommand);
        }
        let identifier = match envelope.identifier {
            Some(Value::String(identifier)) => identifier,
            _ => return Err(CommandError::MissingIdentifier),
        };
        Ok(match command.as_str() {
            "subscribe" => Command::Subscribe { identifier },
            "unsubscribe" => Command::Unsubscribe { identifier },
            _ => Command::Message {
                identifier,
                data: parse_data(envelope.data)?,
            },
        })
    }
}

fn parse_data(data: Option<Value>) -> Result<Map<String, Value>, CommandError> {
    match data {
        Some(Value::Object(map)) => Ok(map),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(CommandError::BadData),
        },
        _ => Err(CommandError::BadData),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_keeps_the_raw_identifier() {
        let raw = r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\", \"pubsub_token\":\"t\"}"}"#;
        assert_eq!(
            Command::parse(raw),
            Ok(Command::Subscribe {
                identifier: r#"{"channel":"RoomChannel", "pubsub_token":"t"}"#.into()
            })
        );
    }

    #[test]
    fn message_data_as_string_or_object() {
        let as_string =
            r#"{"command":"message","identifier":"{}","data":"{\"action\":\"update_presence\"}"}"#;
        let as_object =
            r#"{"command":"message","identifier":"{}","data":{"action":"update_presence"}}"#;
        let (Ok(Command::Message { data: a, .. }), Ok(Command::Message { data: b, .. })) =
            (Command::parse(as_string), Command::parse(as_object))
        else {
            panic!("both forms must parse");
        };
        assert_eq!(a, b);
        assert_eq!(a["action"], "update_presence");
    }

    #[test]
    fn bad_input_is_classified() {
        assert_eq!(Command::parse("not json"), Err(CommandError::Malformed));
        assert_eq!(Command::parse("[1]"), Err(CommandError::Malformed));
        assert_eq!(
            Command::parse(r#"{"command":"dance","identifier":"{}"}"#),
            Err(CommandError::UnknownCommand)
        );
        assert_eq!(
            Command::parse(r#"{"command":"subscribe"}"#),
            Err(CommandError::MissingIdentifier)
        );
        assert_eq!(
            Command::parse(r#"{"command":"subscribe","identifier":{}}"#),
            Err(CommandError::MissingIdentifier)
        );
        assert_eq!(
            Command::parse(r#"{"command":"message","identifier":"{}","data":"[]"}"#),
            Err(CommandError::BadData)
        );
        assert_eq!(
            Command::parse(r#"{"command":"message","identifier":"{}"}"#),
            Err(CommandError::BadData)
        );
    }
}
