//! How an event goes out on the topic WebSocket (issue 28):
//! `{"event_type":"message.created","timestamp":"2026-01-20T10:30:00.000000Z","topic":"account_id:1:message:42","data":{..}}`.
//! Everything but the topic is the same for every recipient of an event, so it is encoded
//! once per event ([`Envelope`]: what goes before the topic, and after it); a delivery adds
//! only its concrete topic between them.

use bytes::Bytes;

/// An event's envelope without its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `{"event_type":..,"timestamp":..,"topic":"`
    pub head: Bytes,
    /// `","data":..}`
    pub tail: Bytes,
}

impl Envelope {
    /// `data` is the event's JSON object as on `/cable`; `created_at` is seconds since the
    /// epoch (the event's `created_at`, or when a broadcast was received).
    pub fn new(event: &str, created_at: f64, data: &str) -> Envelope {
        let event = serde_json::to_string(event).expect("a string always serializes");
        let head = format!(
            r#"{{"event_type":{event},"timestamp":"{}","topic":""#,
            timestamp(created_at)
        );
        let tail = format!(r#"","data":{data}}}"#);
        Envelope {
            head: head.into(),
            tail: tail.into(),
        }
    }

    /// The whole frame's text for `topic` (topics hold no character JSON escapes).
    pub fn with_topic(&self, topic: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + topic.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&self.tail);
        out
    }
}

/// ISO 8601 in UTC with six fractional digits and `Z`, e.g. `2026-01-20T10:30:00.000000Z`.
pub fn timestamp(seconds: f64) -> String {
    let micros = (seconds * 1e6).round() as i64;
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(timestamp(0.0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(1_768_905_000.0), "2026-01-20T10:30:00.000000Z");
        assert_eq!(
            timestamp(1_768_905_000.123456),
            "2026-01-20T10:30:00.123456Z"
        );
    }

    #[test]
    fn an_envelope_is_the_events_json_around_its_topic() {
        let envelope = Envelope::new(
            "message.created",
            1_768_905_000.5,
            r#"{"id":42,"content":"say \"hi\""}"#,
        );
        let frame = envelope.with_topic("account_id:1:message:42");
        let value: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event_type": "message.created",
                "timestamp": "2026-01-20T10:30:00.500000Z",
                "topic": "account_id:1:message:42",
                "data": {"id": 42, "content": "say \"hi\""},
            })
        );
        let other = envelope.with_topic("user_id:7:message:42");
        assert_eq!(&other[..envelope.head.len()], &envelope.head[..]);
    }
}
