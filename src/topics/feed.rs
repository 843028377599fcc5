//! The topic WebSocket on the core: one router subscription per account of the user (a
//! [`Feed`]), each framing what the router gives it ([`Reframe`]): the events a RoomChannel
//! subscription of the user in that account would receive, sent when one of the connection's
//! topics matches, in the envelope of docs/reference.md §12 with the concrete topic.
//!
//! What every subscriber of a message shares is derived once per message ([`View`]: its
//! subject and its envelope without the topic, kept in [`Message::derived`]); a delivery adds
//! a few hash lookups (the connection's [`Topics`]) and its concrete topic.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::envelope::Envelope;
use super::topic::{Scope, Subject, Topics};
use crate::connection::writer::{Farewell, Goodbye};
use crate::delivery::{
    push_header, CloseReason, DisconnectReason, Framing, Message, Reframe, Replies, Subscription,
};

const OP_PING: u8 = crate::ws::OpCode::Ping as u8;

/// The close code of a connection whose token stopped being valid (revoked, removed from an
/// account, expired).
pub const CLOSE_REVOKED: u16 = 4001;
/// The close code of a server that is going away (the client may come back at once).
pub const CLOSE_RESTART: u16 = 1012;
/// How many messages a connection remembers having sent, so that one that reaches several
/// of its subscriptions is sent once (see [`Connection::first_time`]).
const RECENT: usize = 8;

/// What one connection's subscriptions share: whose it is, its topics, what it sent last.
pub struct Connection {
    pub user_id: i64,
    pub topics: RwLock<Topics>,
    /// The last messages sent that name no account (a broadcast on the user's own stream
    /// reaches the subscription of each of the user's accounts); held, so that their address
    /// cannot be reused by another message while they are remembered.
    recent: Mutex<VecDeque<Arc<Message>>>,
}

impl Connection {
    pub fn new(user_id: i64) -> Arc<Connection> {
        Arc::new(Connection {
            user_id,
            topics: RwLock::new(Topics::default()),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// Whether `message` was not sent on this connection yet; remembers it.
    fn first_time(&self, message: &Arc<Message>) -> bool {
        let mut recent = self.recent.lock();
        if recent.iter().any(|sent| Arc::ptr_eq(sent, message)) {
            return false;
        }
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(message.clone());
        true
    }
}

/// One account's subscription of a topic connection.
pub struct Feed {
    connection: Arc<Connection>,
    account_id: i64,
}

/// What every topic subscriber of one message shares: what it is about, its account, and
/// its envelope without the topic. `None` for a message that is not `{event, data}` with
/// `data` an object (a broadcast of another shape): topics cannot name it.
pub struct View {
    subject: Subject,
    /// `data.account_id`, when it names one.
    account_id: Option<i64>,
    envelope: Envelope,
}

#[derive(Deserialize)]
struct Raw<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl View {
    /// `body` is `{"event":..,"data":{..}}`; `created_at` is its timestamp (seconds since
    /// the epoch).
    pub fn of(body: &[u8], created_at: f64) -> Option<View> {
        let raw: Raw = serde_json::from_slice(body).ok()?;
        let data: Value = serde_json::from_str(raw.data.get()).ok()?;
        if !data.is_object() || raw.event.is_empty() {
            return None;
        }
        Some(View {
            subject: Subject::of(&raw.event, &data),
            account_id: crate::ids::numeric_id(data.get("account_id"))
                .ok()
                .flatten(),
            envelope: Envelope::new(&raw.event, created_at, raw.data.get()),
        })
    }
}

impl Feed {
    /// The framing of account `account_id`'s subscription of `connection`.
    pub fn framing(connection: Arc<Connection>, account_id: i64) -> Framing {
        Framing {
            prefix: Bytes::new(),
            suffix: b"",
            replies: &TopicReplies,
            reframe: Some(Box::new(Feed {
                connection,
                account_id,
            })),
        }
    }

    /// The frame of `view` if a topic of the connection matches it: the user's own topics
    /// first, then the account's.
    fn frame(&self, view: &View) -> Option<Bytes> {
        if view.account_id.is_some_and(|id| id != self.account_id) {
            // Another account's: its own subscription frames it, if the user is in it.
            return None;
        }
        let topics = self.connection.topics.read();
        let scope = [
            Scope::User(self.connection.user_id),
            Scope::Account(self.account_id),
        ]
        .into_iter()
        .find(|scope| topics.matches(*scope, &view.subject))?;
        drop(topics);
        Some(view.envelope.with_topic(&view.subject.topic(scope)).into())
    }
}

impl Reframe for Feed {
    fn message(&self, _sub: &Subscription, message: &Arc<Message>) -> Option<Bytes> {
        let view = message.derived(|message| View::of(&message.body, message.created_at));
        let view = view.as_ref()?;
        let frame = self.frame(view)?;
        // Only a message that names no account can reach several of the connection's
        // subscriptions.
        if view.account_id.is_none() && !self.connection.first_time(message) {
            return None;
        }
        Some(frame)
    }

    fn reply(&self, _sub: &Subscription, body: &Bytes) -> Option<Bytes> {
        // A presence snapshot: one per account and push, not worth keeping.
        self.frame(&View::of(body, crate::clock::unix_now())?)
    }
}

/// What the topic WebSocket answers for the core: a subscription the server ends (its token
/// was revoked, or the user left the account) closes the connection with
/// [`CLOSE_REVOKED`]; it has no history to answer for.
pub struct TopicReplies;

impl Replies for TopicReplies {
    fn ended(&self, sub: &Subscription) -> Option<Bytes> {
        sub.session
            .queue
            .close(CloseReason::Disconnect(DisconnectReason::Remote));
        None
    }

    fn history_done(&self, _identifier: &str) -> Bytes {
        Bytes::new()
    }

    fn history_refused(&self, _identifier: &str) -> Bytes {
        Bytes::new()
    }
}

impl Farewell for TopicReplies {
    /// Only a close frame, with a code a plain WebSocket client can act on.
    fn goodbye(&self, reason: DisconnectReason) -> Goodbye<'_> {
        let close = match reason {
            DisconnectReason::ServerRestart => Some((CLOSE_RESTART, "server restart")),
            DisconnectReason::Remote => Some((CLOSE_REVOKED, "token revoked")),
            DisconnectReason::TokenExpired => Some((CLOSE_REVOKED, "token expired")),
            DisconnectReason::Unauthorized => Some((CLOSE_REVOKED, "unauthorized")),
            DisconnectReason::InvalidRequest => Some((1008, "invalid request")),
            // Nothing more would reach it in time.
            DisconnectReason::TooSlow => None,
        };
        Goodbye { text: None, close }
    }
}

/// Appends a WebSocket ping with `value`'s digits (every WebSocket client answers it by
/// itself; an application never sees it).
pub fn push_ping(buf: &mut Vec<u8>, value: NonZeroU32) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value.get()).as_bytes();
    push_header(buf, OP_PING, digits.len());
    buf.extend_from_slice(digits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::topic::Topic;

    fn feed(connection: &Arc<Connection>, account_id: i64) -> Feed {
        Feed {
            connection: connection.clone(),
            account_id,
        }
    }

    #[test]
    fn a_view_is_the_events_subject_account_and_envelope() {
        let view = View::of(
            br#"{"event":"message.created","data":{"id":42,"account_id":3,"content":"hi"}}"#,
            0.0,
        )
        .unwrap();
        assert_eq!(view.subject.resource.as_ref(), "message");
        assert_eq!(view.subject.id.as_deref(), Some("42"));
        assert_eq!(view.account_id, Some(3));
        for not_an_event in [
            &br#"{"event":"x","data":[1]}"#[..],
            br#"{"data":{}}"#,
            br#"{"event":"","data":{}}"#,
            br#"{"message":"plain"}"#,
            b"not json",
        ] {
            assert!(View::of(not_an_event, 0.0).is_none());
        }
    }

    #[test]
    fn the_users_topic_comes_first_and_other_accounts_are_left_to_their_feed() {
        let connection = Connection::new(7);
        connection
            .topics
            .write()
            .insert(&Topic::parse("account_id:3:*:*").unwrap());
        let view = |body: &[u8]| View::of(body, 0.0).unwrap();
        let event = view(br#"{"event":"message.created","data":{"id":1,"account_id":3}}"#);
        let frame = feed(&connection, 3).frame(&event).unwrap();
        let value: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(value["topic"], "account_id:3:message:1");
        assert!(feed(&connection, 4).frame(&event).is_none());
        connection
            .topics
            .write()
            .insert(&Topic::parse("user_id:7:message:*").unwrap());
        let frame = feed(&connection, 3).frame(&event).unwrap();
        let value: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(value["topic"], "user_id:7:message:1");
    }

    #[test]
    fn a_message_naming_no_account_is_sent_once_per_connection() {
        let connection = Connection::new(7);
        connection
            .topics
            .write()
            .insert(&Topic::parse("user_id:7:*:*").unwrap());
        let message = Arc::new(Message::new(
            Bytes::from_static(br#"{"event":"notification.created","data":{"id":5}}"#),
            0.0,
            crate::delivery::Position::None,
        ));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let session = crate::delivery::SessionHandle::new(8, metrics);
        let principal = crate::auth::Principal::member(1, 7, false, &[]);
        let sub = Subscription::new(
            "t".into(),
            Feed::framing(connection.clone(), 1),
            session,
            &principal,
            None,
        );
        assert!(feed(&connection, 1).message(&sub, &message).is_some());
        assert!(feed(&connection, 2).message(&sub, &message).is_none());
        let other = Arc::new(Message::new(
            message.body.clone(),
            0.0,
            crate::delivery::Position::None,
        ));
        assert!(feed(&connection, 2).message(&sub, &other).is_some());
    }
}
