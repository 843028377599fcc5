//! Who receives which event: the routing rules, as pure functions.
//!
//! Only subscriptions of the event's `account_id` are ever considered. Then:
//!
//! 1. `stream` set → the subscriptions streaming that name. A subscription streams its own
//!    `pubsub_token`; a user subscription also streams `account_<its account id>`.
//! 2. else `user_id` set → only user subscriptions of that user.
//! 3. else `inbox_id` set → user subscriptions of administrators and of members of that inbox,
//!    plus contact subscriptions whose contact session is in `contact_inbox_ids`.
//! 4. else → every user subscription, plus the contact sessions in `contact_inbox_ids`.
//! 5. Whatever rule selected it, a contact subscription never receives a `private` event, nor
//!    any event outside [`CONTACT_EVENTS`].
//! 6. Typing events ([`TYPING_EVENTS`]) never reach their actor's own subscriptions.
//!
//! Broadcasts from the stream ingress (Rails' adapters, `POST /_broadcast`) carry no routing
//! columns, only a stream name and a payload:
//!
//! 7. A broadcast on a stream reaches the subscriptions streaming it (as in rule 1), except
//!    that a contact subscription never receives a typing event whose `data.is_private` is
//!    true, nor any payload whose `data.private` is true ([`contacts_may_receive`]). Every
//!    other payload passes, whatever its event (Chatwoot sends contacts e.g.
//!    `conversation.updated` this way).
//!
//! [`receives`] is the whole rule for one subscription. The [`crate::router`] does not call
//! it per subscription (that would cost O(all connections) per event): it looks up only the
//! index entries rules 1–4 name and applies [`entitled`] (rules 5 and 6) to those. Its tests
//! check that both give the same audience.

use crate::auth::Principal;
use crate::delivery::Event;

/// Events a contact subscription may ever receive (rule 5).
pub const CONTACT_EVENTS: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];

/// Events never echoed to their actor (rule 6).
pub const TYPING_EVENTS: [&str; 2] = ["conversation.typing_on", "conversation.typing_off"];

/// The stream every user subscription of an account streams besides its own token.
pub fn account_stream(account_id: i64) -> String {
    format!("account_{account_id}")
}

/// The account whose stream `stream` is (`account_<id>`, exactly as [`account_stream`]
/// spells it), if it is one.
pub fn account_of_stream(stream: &str) -> Option<i64> {
    stream
        .strip_prefix("account_")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|id| account_stream(*id) == stream)
}

/// The streams a subscription streams: its own token, and for a user `account_<id>`.
pub fn streams(principal: &Principal, token: &str) -> Vec<String> {
    let mut streams = vec![token.to_string()];
    if principal.is_user() {
        streams.push(account_stream(principal.account_id()));
    }
    streams
}

/// Whether a subscription of `principal` with `token` receives `event` (rules 1–6).
pub fn receives(principal: &Principal, token: &str, event: &Event) -> bool {
    principal.account_id() == event.account_id
        && addressed(principal, token, event)
        && entitled(principal, event)
}

/// Rules 1–4: whether the event is addressed to this subscription of its account.
fn addressed(principal: &Principal, token: &str, event: &Event) -> bool {
    if let Some(stream) = &event.stream {
        return stream == token
            || (principal.is_user() && *stream == account_stream(principal.account_id()));
    }
    match principal {
        Principal::User {
            user_id,
            membership,
            ..
        } => match (event.user_id, event.inbox_id) {
            (Some(addressee), _) => addressee == *user_id,
            (None, Some(inbox_id)) => {
                membership.administrator || membership.inbox_ids.contains(&inbox_id)
            }
            (None, None) => true,
        },
        Principal::Contact(contact) => {
            event.user_id.is_none()
                && event
                    .contact_inbox_ids
                    .binary_search(&contact.contact_inbox_id)
                    .is_ok()
        }
    }
}

/// Rules 5 and 6, applied to every subscription an event is addressed to.
pub fn entitled(principal: &Principal, event: &Event) -> bool {
    let typing = is_typing(event);
    match principal {
        Principal::Contact(contact) => {
            !event.private
                && CONTACT_EVENTS.contains(&event.event.as_str())
                && !(typing && event.actor_contact_inbox_id == Some(contact.contact_inbox_id))
        }
        Principal::User { user_id, .. } => !(typing && event.actor_user_id == Some(*user_id)),
    }
}

/// Whether rule 6 applies to `event`.
pub fn is_typing(event: &Event) -> bool {
    TYPING_EVENTS.contains(&event.event.as_str())
}

/// The parts of a broadcast payload rule 7 reads; everything else is ignored.
#[derive(serde::Deserialize)]
struct Markers {
    #[serde(default)]
    event: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<DataMarkers>,
}

#[derive(serde::Deserialize)]
struct DataMarkers {
    #[serde(default)]
    is_private: Option<serde_json::Value>,
    #[serde(default)]
    private: Option<serde_json::Value>,
}

/// Rule 7: whether contact subscriptions may receive this broadcast payload. `None` when the
/// payload is not JSON at all (it is then delivered to nobody).
pub fn contacts_may_receive(payload: &[u8]) -> Option<bool> {
    use serde_json::error::Category;
    let markers = match serde_json::from_slice::<Markers>(payload) {
        Ok(markers) => markers,
        // JSON of another shape (not an object, `data` not an object): nothing marks it
        // private, if it is JSON at all (parsing stopped at the wrong shape: check the rest).
        Err(e) if e.classify() == Category::Data => {
            return serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                .ok()
                .map(|_| true)
        }
        Err(_) => return None,
    };
    let yes = |v: &Option<serde_json::Value>| matches!(v, Some(serde_json::Value::Bool(true)));
    let Some(data) = markers.data else {
        return Some(true);
    };
    let typing = markers
        .event
        .as_ref()
        .and_then(|e| e.as_str())
        .is_some_and(|e| TYPING_EVENTS.contains(&e));
    Some(!(yes(&data.private) || (typing && yes(&data.is_private))))
}

#[cfg(test)]
mod tests {
    //! The rules as a table: every row is an event, and the parties it must reach; every
    //! party not listed must not receive it.

    use super::*;
    use crate::auth::ContactRecord;
    use crate::delivery::Message;
    use bytes::Bytes;

    /// Account 1: admin Alice (1), Bob (2, inbox 1), Carol (3, inbox 2); contact sessions
    /// Dave (10, inbox 1) and Erin (11, inbox 2). Account 2: admin Zed (9), contact Yan (20).
    fn parties() -> Vec<(&'static str, Principal, &'static str)> {
        let user = Principal::member;
        let contact = |account_id, contact_inbox_id, inbox_id| {
            Principal::Contact(ContactRecord {
                contact_inbox_id,
                contact_id: contact_inbox_id + 100,
                inbox_id,
                account_id,
            })
        };
        vec![
            ("alice", user(1, 1, true, &[]), "tok-alice"),
            ("bob", user(1, 2, false, &[1]), "tok-bob"),
            ("carol", user(1, 3, false, &[2]), "tok-carol"),
            ("dave", contact(1, 10, 1), "tok-dave"),
            ("erin", contact(1, 11, 2), "tok-erin"),
            ("zed", user(2, 9, true, &[]), "tok-zed"),
            ("yan", contact(2, 20, 3), "tok-yan"),
        ]
    }

    #[derive(Default)]
    struct E {
        account_id: i64,
        event: &'static str,
        inbox_id: Option<i64>,
        contacts: &'static [i64],
        user_id: Option<i64>,
        private: bool,
        actor_user: Option<i64>,
        actor_contact: Option<i64>,
        stream: Option<&'static str>,
    }

    fn event(e: E) -> Event {
        let mut contact_inbox_ids = e.contacts.to_vec();
        contact_inbox_ids.sort_unstable();
        Event {
            id: 1,
            account_id: e.account_id,
            event: e.event.into(),
            inbox_id: e.inbox_id,
            contact_inbox_ids,
            user_id: e.user_id,
            private: e.private,
            actor_user_id: e.actor_user,
            actor_contact_inbox_id: e.actor_contact,
            stream: e.stream.map(Into::into),
            message: std::sync::Arc::new(Message::new(
                Bytes::new(),
                0.0,
                crate::delivery::Position::None,
            )),
        }
    }

    fn audience(e: E) -> Vec<&'static str> {
        let event = event(e);
        parties()
            .into_iter()
            .filter(|(_, principal, token)| receives(principal, token, &event))
            .map(|(name, ..)| name)
            .collect()
    }

    const MSG: &str = "message.created";

    #[test]
    #[rustfmt::skip]
    fn the_routing_table() {
        let rows: Vec<(&str, E, &[&str])> = vec![
            // Rule 1: streams.
            ("own token, user", E { account_id: 1, event: MSG, stream: Some("tok-bob"), ..E::default() }, &["bob"]),
            ("own token, contact", E { account_id: 1, event: MSG, stream: Some("tok-dave"), ..E::default() }, &["dave"]),
            ("account stream: users only", E { account_id: 1, event: MSG, stream: Some("account_1"), ..E::default() }, &["alice", "bob", "carol"]),
            ("another account's stream name", E { account_id: 1, event: MSG, stream: Some("account_2"), ..E::default() }, &[]),
            ("a token of another account", E { account_id: 1, event: MSG, stream: Some("tok-zed"), ..E::default() }, &[]),
            ("stream wins over user_id", E { account_id: 1, event: MSG, stream: Some("tok-carol"), user_id: Some(2), ..E::default() }, &["carol"]),
            ("stream, contact, kind not allowed", E { account_id: 1, event: "conversation.updated", stream: Some("tok-dave"), ..E::default() }, &[]),
            ("stream, contact, private", E { account_id: 1, event: MSG, stream: Some("tok-dave"), private: true, ..E::default() }, &[]),
            // Rule 2: one user.
            ("user_id", E { account_id: 1, event: "notification.created", user_id: Some(2), ..E::default() }, &["bob"]),
            ("user_id beats inbox and contacts", E { account_id: 1, event: MSG, user_id: Some(3), inbox_id: Some(1), contacts: &[10], ..E::default() }, &["carol"]),
            ("user_id of another account", E { account_id: 1, event: MSG, user_id: Some(9), ..E::default() }, &[]),
            // Rule 3: inbox.
            ("inbox 1", E { account_id: 1, event: MSG, inbox_id: Some(1), contacts: &[10], ..E::default() }, &["alice", "bob", "dave"]),
            ("inbox 2", E { account_id: 1, event: MSG, inbox_id: Some(2), contacts: &[11], ..E::default() }, &["alice", "carol", "erin"]),
            ("inbox, no contacts listed", E { account_id: 1, event: MSG, inbox_id: Some(1), ..E::default() }, &["alice", "bob"]),
            ("inbox, a contact of another account listed", E { account_id: 1, event: MSG, inbox_id: Some(1), contacts: &[20], ..E::default() }, &["alice", "bob"]),
            // Rule 4: the account.
            ("account-wide", E { account_id: 1, event: "contact.created", ..E::default() }, &["alice", "bob", "carol"]),
            ("account-wide with contacts", E { account_id: 1, event: MSG, contacts: &[10, 11], ..E::default() }, &["alice", "bob", "carol", "dave", "erin"]),
            ("the other account", E { account_id: 2, event: MSG, contacts: &[20], ..E::default() }, &["zed", "yan"]),
            ("an account nobody is in", E { account_id: 3, event: MSG, contacts: &[10], ..E::default() }, &[]),
            // Rule 5: private and kinds.
            ("private note", E { account_id: 1, event: MSG, inbox_id: Some(1), contacts: &[10], private: true, ..E::default() }, &["alice", "bob"]),
            ("kind contacts never get", E { account_id: 1, event: "conversation.updated", inbox_id: Some(1), contacts: &[10], ..E::default() }, &["alice", "bob"]),
            ("every kind contacts may get", E { account_id: 1, event: "conversation.status_changed", contacts: &[10], ..E::default() }, &["alice", "bob", "carol", "dave"]),
            // Rule 6: typing.
            ("agent typing", E { account_id: 1, event: "conversation.typing_on", inbox_id: Some(1), contacts: &[10], actor_user: Some(2), ..E::default() }, &["alice", "dave"]),
            ("private typing", E { account_id: 1, event: "conversation.typing_on", inbox_id: Some(1), contacts: &[10], actor_user: Some(1), private: true, ..E::default() }, &["bob"]),
            ("contact typing", E { account_id: 1, event: "conversation.typing_off", inbox_id: Some(1), contacts: &[10], actor_contact: Some(10), ..E::default() }, &["alice", "bob"]),
            ("a non-typing event is echoed to its actor", E { account_id: 1, event: MSG, inbox_id: Some(1), contacts: &[10], actor_user: Some(2), ..E::default() }, &["alice", "bob", "dave"]),
        ];
        for (name, e, expected) in rows {
            assert_eq!(audience(e), expected, "{name}");
        }
    }

    #[test]
    fn contact_events_are_the_documented_seven() {
        for kind in CONTACT_EVENTS {
            let e = E {
                account_id: 1,
                event: kind,
                contacts: &[10],
                ..E::default()
            };
            assert!(audience(e).contains(&"dave"), "{kind}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn rule_7_what_contacts_may_receive_from_broadcasts() {
        let rows: [(&str, Option<bool>); 14] = [
            (r#"{"event":"message.created","data":{"id":1}}"#, Some(true)),
            (r#"{"event":"conversation.updated","data":{"id":1}}"#, Some(true)),
            (r#"{"event":"conversation.typing_on","data":{"is_private":false}}"#, Some(true)),
            (r#"{"event":"conversation.typing_on","data":{"is_private":true}}"#, Some(false)),
            (r#"{"event":"conversation.typing_off","data":{"is_private":true}}"#, Some(false)),
            (r#"{"event":"message.created","data":{"is_private":true}}"#, Some(true)),
            (r#"{"event":"message.created","data":{"private":true}}"#, Some(false)),
            (r#"{"event":"message.updated","data":{"private":false}}"#, Some(true)),
            (r#"{"data":{"private":true}}"#, Some(false)),
            (r#"{"event":"x","data":"not an object"}"#, Some(true)),
            (r#""just a string""#, Some(true)),
            (r#"[1,2]"#, Some(true)),
            (r#"{"event":"message.created","data":{"private":true}"#, None),
            ("not json", None),
        ];
        for (payload, want) in rows {
            assert_eq!(contacts_may_receive(payload.as_bytes()), want, "{payload}");
        }
    }
}
