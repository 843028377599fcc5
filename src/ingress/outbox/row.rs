//! An outbox row as read ([`Row`]) and what it becomes ([`Outboxed`]): an event for the
//! routing rules, or a stream broadcast (a row with `payload`, as `POST /_broadcast` writes
//! them). Live reading and history replay decode rows alike, here.

use std::sync::Arc;

use bytes::Bytes;

use crate::clock::unix_now;
use crate::delivery::{Event, Message, Position};

/// The columns of a [`Row`], for a `cable_events` row `e`.
pub(crate) const EVENT_COLUMNS: &str = "e.id, e.account_id, e.event,
       CASE WHEN jsonb_typeof(e.data) = 'object' THEN
         (CASE WHEN e.data ? 'account_id' THEN e.data
               ELSE e.data || jsonb_build_object('account_id', e.account_id) END)::text
       END AS data,
       e.inbox_id, e.contact_inbox_ids, e.user_id, e.private, e.actor_user_id,
       e.actor_contact_inbox_id, e.stream, extract(epoch FROM e.created_at)::float8 AS created_at,
       CASE WHEN NOT e.data ? 'account_id' THEN octet_length(e.data::text) END AS stored_len,
       e.payload";

/// The rows of round `r` (a `cable_rounds` row), as a FROM item `e`.
pub(crate) const ROUND_ROWS: &str = "(
    SELECT e.* FROM cable_events e
     WHERE e.xid >= pg_snapshot_xmax(r.prev_snapshot) AND e.xid < pg_snapshot_xmax(r.snapshot)
       AND pg_visible_in_snapshot(e.xid, r.snapshot)
    UNION ALL
    SELECT e.* FROM cable_events e
     WHERE e.xid = ANY(ARRAY(SELECT pg_snapshot_xip(r.prev_snapshot)))
       AND pg_visible_in_snapshot(e.xid, r.snapshot)
  )";

/// The [`EVENT_COLUMNS`] of one outbox row (every field NULL where a round has no rows left).
#[derive(Debug, Default, sqlx::FromRow)]
pub(crate) struct Row {
    pub id: Option<i64>,
    pub account_id: Option<i64>,
    pub event: Option<String>,
    /// `data` with `account_id` added; NULL when it is not an object.
    pub data: Option<String>,
    pub inbox_id: Option<i64>,
    pub contact_inbox_ids: Option<Vec<i64>>,
    pub user_id: Option<i64>,
    pub private: Option<bool>,
    pub actor_user_id: Option<i64>,
    pub actor_contact_inbox_id: Option<i64>,
    pub stream: Option<String>,
    /// Unix seconds.
    pub created_at: Option<f64>,
    /// `data`'s length as stored, when `account_id` was added (else `data`'s own).
    pub stored_len: Option<i32>,
    /// Set on a stream broadcast: the JSON text delivered as the message.
    pub payload: Option<String>,
}

/// A stream broadcast read from the outbox.
#[derive(Debug)]
pub struct Broadcast {
    pub stream: String,
    /// Whether contact subscriptions may receive it ([`crate::routing::contacts_may_receive`]).
    pub contacts: bool,
    pub message: Arc<Message>,
}

/// What an outbox row is delivered as.
#[derive(Debug)]
pub enum Outboxed {
    Event(Event),
    Broadcast(Broadcast),
}

impl Row {
    /// Builds what the row delivers, encoded once, at `offset`; or why it is skipped (logged
    /// and counted by the caller). The table's CHECK constraints refuse an empty event and
    /// `data` that is not an object at insert; rows from before them may still hold them.
    /// The size limit applies to `data` as the backend stored it (before `account_id` is
    /// added), or to a broadcast's payload.
    pub(crate) fn decode(self, offset: i64, max_data: usize) -> Result<Outboxed, &'static str> {
        let created_at = self.created_at.unwrap_or_else(unix_now);
        if let Some(payload) = self.payload {
            let stream = self.stream.ok_or("broadcast_without_stream")?;
            if payload.len() > max_data {
                return Err("too_large");
            }
            let contacts =
                crate::routing::contacts_may_receive(payload.as_bytes()).ok_or("not_json")?;
            return Ok(Outboxed::Broadcast(Broadcast {
                stream,
                contacts,
                message: Arc::new(Message::new(
                    Bytes::from(payload),
                    created_at,
                    Position::Outbox(offset),
                )),
            }));
        }
        let event = self.event.ok_or("empty_event")?;
        if event.is_empty() {
            return Err("empty_event");
        }
        let data = self.data.ok_or("data_not_object")?;
        let stored_len = self
            .stored_len
            .map_or(data.len(), |len| len.max(0) as usize);
        if stored_len > max_data {
            return Err("too_large");
        }
        let (id, account_id) = (self.id.unwrap_or(0), self.account_id.unwrap_or(0));
        let mut body = String::with_capacity(data.len() + event.len() + 24);
        body.push_str("{\"event\":");
        body.push_str(&serde_json::to_string(&event).expect("a string always serializes"));
        body.push_str(",\"data\":");
        body.push_str(&data);
        body.push('}');
        let mut contact_inbox_ids = self.contact_inbox_ids.unwrap_or_default();
        contact_inbox_ids.sort_unstable();
        contact_inbox_ids.dedup();
        Ok(Outboxed::Event(Event {
            id,
            account_id,
            event,
            inbox_id: self.inbox_id,
            contact_inbox_ids,
            user_id: self.user_id,
            private: self.private.unwrap_or(false),
            actor_user_id: self.actor_user_id,
            actor_contact_inbox_id: self.actor_contact_inbox_id,
            stream: self.stream,
            message: Arc::new(Message::new(
                Bytes::from(body),
                created_at,
                Position::Outbox(offset),
            )),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_row(data: &str) -> Row {
        Row {
            id: Some(7),
            account_id: Some(1),
            event: Some("message.created".into()),
            data: Some(data.into()),
            ..Row::default()
        }
    }

    #[test]
    fn an_event_is_encoded_once_with_its_offset() {
        let Ok(Outboxed::Event(event)) = event_row(r#"{"id":1,"account_id":1}"#).decode(42, 100)
        else {
            panic!("an event");
        };
        assert_eq!(
            &event.message.body[..],
            br#"{"event":"message.created","data":{"id":1,"account_id":1}}"#
        );
        assert!(matches!(event.message.position, Position::Outbox(42)));
    }

    #[test]
    fn malformed_rows_are_named() {
        let mut empty = event_row("{}");
        empty.event = Some(String::new());
        assert_eq!(empty.decode(1, 100).unwrap_err(), "empty_event");
        let mut not_object = event_row("{}");
        not_object.data = None;
        assert_eq!(not_object.decode(1, 100).unwrap_err(), "data_not_object");
        assert_eq!(
            event_row(&"x".repeat(101)).decode(1, 100).unwrap_err(),
            "too_large"
        );
        let mut stored = event_row("{}");
        stored.stored_len = Some(101);
        assert_eq!(stored.decode(1, 100).unwrap_err(), "too_large");
    }

    #[test]
    fn a_broadcast_row_carries_its_payload_as_the_message() {
        let broadcast = |payload: &str, stream: Option<&str>| Row {
            payload: Some(payload.into()),
            stream: stream.map(str::to_string),
            ..Row::default()
        };
        let Ok(Outboxed::Broadcast(b)) = broadcast(r#"{"x":1}"#, Some("s")).decode(5, 100) else {
            panic!("a broadcast");
        };
        assert_eq!((b.stream.as_str(), b.contacts), ("s", true));
        assert_eq!(&b.message.body[..], br#"{"x":1}"#);
        let private = r#"{"event":"message.created","data":{"private":true}}"#;
        let Ok(Outboxed::Broadcast(b)) = broadcast(private, Some("s")).decode(5, 100) else {
            panic!("a broadcast");
        };
        assert!(!b.contacts);
        assert_eq!(
            broadcast("{oops", Some("s")).decode(5, 100).unwrap_err(),
            "not_json"
        );
        assert_eq!(
            broadcast("1", None).decode(5, 100).unwrap_err(),
            "broadcast_without_stream"
        );
        assert_eq!(
            broadcast(&"1".repeat(101), Some("s"))
                .decode(5, 100)
                .unwrap_err(),
            "too_large"
        );
    }
}
