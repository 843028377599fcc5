//! Inbound commands: `{"command":..,"identifier":"<json string>","data":..}`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::BadInput;
use crate::resume::{HistoryRequest, StreamPosition};

use crate::config::tuning::MAX_HISTORY_STREAMS;

/// A client command, decoded. The identifier stays the raw string the client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        identifier: String,
        /// Extended protocol: replay what was missed before going live.
        history: Option<HistoryRequest>,
    },
    /// Extended protocol: replay what a subscription missed.
    History {
        identifier: String,
        history: HistoryRequest,
    },
    /// Extended protocol: the client's answer to a ping (accepted silently).
    Pong,
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
            Command::History { .. } => "history",
            Command::Pong => "pong",
        }
    }

    /// The raw identifier the command names (`pong` names none).
    pub fn identifier(&self) -> Option<&str> {
        match self {
            Command::Subscribe { identifier, .. }
            | Command::Unsubscribe { identifier }
            | Command::Message { identifier, .. }
            | Command::History { identifier, .. } => Some(identifier),
            Command::Pong => None,
        }
    }
}

/// A `history` object as the extended protocol sends it.
fn parse_history(value: Value) -> Result<HistoryRequest, CommandError> {
    let Value::Object(mut history) = value else {
        return Err(CommandError::BadHistory);
    };
    let since = match history.remove("since") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_f64().ok_or(CommandError::BadHistory)?),
        Some(_) => return Err(CommandError::BadHistory),
    };
    let streams = match history.remove("streams") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(streams)) if streams.len() <= MAX_HISTORY_STREAMS => streams
            .into_iter()
            .map(|(stream_id, position)| {
                let epoch = match position.get("epoch") {
                    Some(Value::String(epoch)) => epoch.clone(),
                    _ => return Err(CommandError::BadHistory),
                };
                let offset = position
                    .get("offset")
                    .and_then(Value::as_i64)
                    .filter(|offset| *offset >= 0)
                    .ok_or(CommandError::BadHistory)?;
                Ok(StreamPosition {
                    stream_id,
                    epoch,
                    offset,
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(CommandError::BadHistory),
    };
    Ok(HistoryRequest { since, streams })
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
    #[error("history is not an object of since and stream positions")]
    BadHistory,
}

impl From<CommandError> for BadInput {
    fn from(e: CommandError) -> BadInput {
        match e {
            CommandError::Malformed => BadInput::Malformed,
            CommandError::UnknownCommand => BadInput::UnknownCommand,
            CommandError::MissingIdentifier => BadInput::MissingIdentifier,
            CommandError::BadData => BadInput::BadData,
            CommandError::BadHistory => BadInput::BadHistory,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    command: Option<Value>,
    identifier: Option<Value>,
    data: Option<Value>,
    history: Option<Value>,
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
        if command == "pong" {
            return Ok(Command::Pong);
        }
        if !matches!(
            command.as_str(),
            "subscribe" | "unsubscribe" | "message" | "history"
        ) {
            return Err(CommandError::UnknownCommand);
        }
        let identifier = match envelope.identifier {
            Some(Value::String(identifier)) => identifier,
            _ => return Err(CommandError::MissingIdentifier),
        };
        Ok(match command.as_str() {
            "subscribe" => Command::Subscribe {
                identifier,
                history: envelope.history.map(parse_history).transpose()?,
            },
            "unsubscribe" => Command::Unsubscribe { identifier },
            "history" => Command::History {
                identifier,
                history: parse_history(envelope.history.ok_or(CommandError::BadHistory)?)?,
            },
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
                identifier: r#"{"channel":"RoomChannel", "pubsub_token":"t"}"#.into(),
                history: None,
            })
        );
    }

    #[test]
    fn history_in_subscribe_and_alone() {
        let raw = r#"{"command":"subscribe","identifier":"{}","history":{"since":1700000000,"streams":{"s":{"epoch":"e","offset":7}}}}"#;
        let expected = HistoryRequest {
            since: Some(1_700_000_000.0),
            streams: vec![StreamPosition {
                stream_id: "s".into(),
                epoch: "e".into(),
                offset: 7,
            }],
        };
        assert_eq!(
            Command::parse(raw),
            Ok(Command::Subscribe {
                identifier: "{}".into(),
                history: Some(expected.clone()),
            })
        );
        let raw = r#"{"command":"history","identifier":"{}","history":{"since":1700000000,"streams":{"s":{"epoch":"e","offset":7}}}}"#;
        assert_eq!(
            Command::parse(raw),
            Ok(Command::History {
                identifier: "{}".into(),
                history: expected,
            })
        );
        assert_eq!(Command::parse(r#"{"command":"pong"}"#), Ok(Command::Pong));
        for bad in [
            r#"{"command":"history","identifier":"{}"}"#,
            r#"{"command":"history","identifier":"{}","history":[]}"#,
            r#"{"command":"history","identifier":"{}","history":{"since":"x"}}"#,
            r#"{"command":"history","identifier":"{}","history":{"streams":{"s":{"offset":1}}}}"#,
            r#"{"command":"history","identifier":"{}","history":{"streams":{"s":{"epoch":"e","offset":-1}}}}"#,
            r#"{"command":"subscribe","identifier":"{}","history":{"streams":{"s":{"epoch":"e","offset":1.5}}}}"#,
        ] {
            assert_eq!(Command::parse(bad), Err(CommandError::BadHistory), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_HISTORY_STREAMS)
            .map(|i| format!(r#""s{i}":{{"epoch":"e","offset":1}}"#))
            .collect();
        let raw = format!(
            r#"{{"command":"history","identifier":"{{}}","history":{{"streams":{{{}}}}}}}"#,
            many.join(",")
        );
        assert_eq!(Command::parse(&raw), Err(CommandError::BadHistory));
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
