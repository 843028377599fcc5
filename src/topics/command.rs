//! What a topic client sends and what each part of it gets (issue 28): `{"type":"subscribe",
//! "topics":[..]}` and `{"type":"unsubscribe","topics":[..]}`. A message that is not one of
//! them gets `bad_request` and the connection stays; within a good one, each topic is judged
//! on its own (`bad_topic`, and, when the connection applies it, `permission_denied` or
//! `limit_exceeded`).

use serde::Deserialize;

use super::topic::{BadTopic, Topic};

/// The most topics one message may name (a connection's limit is checked separately).
pub const MAX_TOPICS_PER_MESSAGE: usize = 100;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub kind: Kind,
    /// Each topic as sent, parsed or refused, in the order sent, duplicates removed.
    pub topics: Vec<(String, Result<Topic, BadTopic>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Subscribe,
    Unsubscribe,
}

/// Why a message is not a command (the client gets `bad_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("not a JSON object with \"type\" and \"topics\"")]
    Malformed,
    #[error("\"type\" is neither \"subscribe\" nor \"unsubscribe\"")]
    UnknownType,
    #[error("\"topics\" is not an array of strings")]
    Topics,
    #[error("more than {MAX_TOPICS_PER_MESSAGE} topics in one message")]
    TooMany,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    topics: serde_json::Value,
}

impl Command {
    pub fn parse(text: &[u8]) -> Result<Command, BadRequest> {
        let raw: Raw = serde_json::from_slice(text).map_err(|_| BadRequest::Malformed)?;
        let kind = match raw.kind.as_str() {
            "subscribe" => Kind::Subscribe,
            "unsubscribe" => Kind::Unsubscribe,
            _ => return Err(BadRequest::UnknownType),
        };
        let serde_json::Value::Array(items) = raw.topics else {
            return Err(BadRequest::Topics);
        };
        if items.len() > MAX_TOPICS_PER_MESSAGE {
            return Err(BadRequest::TooMany);
        }
        let mut topics: Vec<(String, Result<Topic, BadTopic>)> = Vec::with_capacity(items.len());
        for item in items {
            let serde_json::Value::String(text) = item else {
                return Err(BadRequest::Topics);
            };
            if topics.iter().all(|(seen, _)| *seen != text) {
                let parsed = Topic::parse(&text);
                topics.push((text, parsed));
            }
        }
        Ok(Command { kind, topics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_and_unsubscribe_judge_each_topic() {
        let command = Command::parse(
            br#"{"type":"subscribe","topics":["account_id:1:message:*","nope","account_id:1:message:*"]}"#,
        )
        .unwrap();
        assert_eq!(command.kind, Kind::Subscribe);
        assert_eq!(command.topics.len(), 2, "a repeated topic counts once");
        assert!(command.topics[0].1.is_ok());
        assert_eq!(
            command.topics[1],
            ("nope".to_string(), Err(BadTopic::Shape))
        );
        let command =
            Command::parse(br#"{"topics":["user_id:2:*:*"],"type":"unsubscribe","extra":1}"#)
                .unwrap();
        assert_eq!(command.kind, Kind::Unsubscribe);
        assert_eq!(command.topics[0].1, Topic::parse("user_id:2:*:*"));
        let empty = Command::parse(br#"{"type":"subscribe","topics":[]}"#).unwrap();
        assert!(empty.topics.is_empty());
    }

    #[test]
    fn bad_requests_say_why() {
        let many = format!(
            r#"{{"type":"subscribe","topics":[{}]}}"#,
            vec![r#""user_id:1:*:*""#; MAX_TOPICS_PER_MESSAGE + 1].join(",")
        );
        let cases: [(&[u8], BadRequest); 8] = [
            (b"not json", BadRequest::Malformed),
            (b"[]", BadRequest::Malformed),
            (br#"{"type":"subscribe"}"#, BadRequest::Malformed),
            (br#"{"topics":[]}"#, BadRequest::Malformed),
            (
                br#"{"type":"publish","topics":[]}"#,
                BadRequest::UnknownType,
            ),
            (
                br#"{"type":"subscribe","topics":"user_id:1:*:*"}"#,
                BadRequest::Topics,
            ),
            (br#"{"type":"subscribe","topics":[1]}"#, BadRequest::Topics),
            (many.as_bytes(), BadRequest::TooMany),
        ];
        for (text, why) in cases {
            assert_eq!(
                Command::parse(text),
                Err(why),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
