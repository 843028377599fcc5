//! Topics of the topic WebSocket (docs/reference.md §12): their grammar, what an event's
//! concrete topic is, and a connection's topics indexed so that matching an event costs a
//! few hash lookups, however many topics the connection has.
//!
//! A topic is `account_id:<A>:<resource>:<id>` (customer level) or
//! `user_id:<U>:<resource>:<id>` (agent level), `*` standing for any resource or any id.
//! An event's resource is its name before the first `.`; its id is `data.id`, for
//! `conversation.typing_*` the conversation's (`data.conversation.id`), and for `presence.*`
//! the account's (`data.account_id`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::Value;

/// The longest topic accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Who a topic is about: an account (its administrators) or one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Account(i64),
    User(i64),
}

/// One position of a topic: a value, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Any,
    Is(Box<str>),
}

impl Part {
    fn as_str(&self) -> &str {
        match self {
            Part::Any => "*",
            Part::Is(value) => value,
        }
    }
}

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub scope: Scope,
    pub resource: Part,
    pub id: Part,
}

/// Why a topic does not parse (the client gets `bad_topic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadTopic {
    #[error("longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("not <account_id|user_id>:<number>:<resource>:<id>")]
    Shape,
    #[error("the account or user id is not a positive number")]
    Owner,
    #[error("a resource or id that is empty or holds characters other than letters, digits, '_', '-', '.'")]
    Part,
}

fn part(text: &str) -> Result<Part, BadTopic> {
    if text == "*" {
        return Ok(Part::Any);
    }
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(Part::Is(text.into()))
    } else {
        Err(BadTopic::Part)
    }
}

impl Topic {
    pub fn parse(text: &str) -> Result<Topic, BadTopic> {
        if text.len() > MAX_TOPIC_LEN {
            return Err(BadTopic::TooLong);
        }
        let mut parts = text.split(':');
        let (Some(kind), Some(owner), Some(resource), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(BadTopic::Shape);
        };
        let owner = owner
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0 && !owner.starts_with('+') && !owner.starts_with('0'))
            .ok_or(BadTopic::Owner)?;
        let scope = match kind {
            "account_id" => Scope::Account(owner),
            "user_id" => Scope::User(owner),
            _ => return Err(BadTopic::Shape),
        };
        Ok(Topic {
            scope,
            resource: part(resource)?,
            id: part(id)?,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Account(id) => write!(f, "account_id:{id}"),
            Scope::User(id) => write!(f, "user_id:{id}"),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.scope,
            self.resource.as_str(),
            self.id.as_str()
        )
    }
}

/// What an event is about, as topics name it: its resource and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub resource: Box<str>,
    /// `None` when the event carries no id (it then matches only `*` ids).
    pub id: Option<Box<str>>,
}

impl Subject {
    /// The subject of event `name` with `data`.
    pub fn of(name: &str, data: &Value) -> Subject {
        let resource = name.split('.').next().unwrap_or(name);
        let id = if crate::routing::TYPING_EVENTS.contains(&name) {
            data.get("conversation").and_then(|c| c.get("id"))
        } else if resource == "presence" {
            data.get("account_id")
        } else {
            data.get("id")
        };
        Subject {
            resource: resource.into(),
            id: id.and_then(id_text),
        }
    }

    /// The concrete topic of this subject in `scope`, e.g. `account_id:1:message:42`.
    pub fn topic(&self, scope: Scope) -> String {
        format!(
            "{scope}:{}:{}",
            self.resource,
            self.id.as_deref().unwrap_or("*")
        )
    }
}

/// An id as topics spell it: a number's digits, or a string that is a valid topic part.
fn id_text(value: &Value) -> Option<Box<str>> {
    match value {
        Value::Number(n) => Some(n.to_string().into()),
        Value::String(s) => match part(s) {
            Ok(Part::Is(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// A connection's topics, indexed by scope, then resource, then id (`*` kept as such: it is
/// no valid part, so it cannot be confused with one): an event is matched with at most four
/// lookups per scope, and without allocating.
#[derive(Debug, Default)]
pub struct Topics {
    by_scope: HashMap<Scope, HashMap<Box<str>, HashSet<Box<str>>>>,
    len: usize,
}

impl Topics {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `topic`; `false` if it was there already.
    pub fn insert(&mut self, topic: &Topic) -> bool {
        let added = self
            .by_scope
            .entry(topic.scope)
            .or_default()
            .entry(topic.resource.as_str().into())
            .or_default()
            .insert(topic.id.as_str().into());
        self.len += usize::from(added);
        added
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.by_scope
            .get(&topic.scope)
            .and_then(|resources| resources.get(topic.resource.as_str()))
            .is_some_and(|ids| ids.contains(topic.id.as_str()))
    }

    /// Removes `topic`; `false` if it was not there.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let Some(resources) = self.by_scope.get_mut(&topic.scope) else {
            return false;
        };
        let Some(ids) = resources.get_mut(topic.resource.as_str()) else {
            return false;
        };
        let removed = ids.remove(topic.id.as_str());
        if ids.is_empty() {
            resources.remove(topic.resource.as_str());
        }
        if resources.is_empty() {
            self.by_scope.remove(&topic.scope);
        }
        self.len -= usize::from(removed);
        removed
    }

    /// The scopes that have topics (each is one audience the connection belongs to).
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.by_scope.keys().copied()
    }

    /// Whether a topic of `scope` matches `subject`.
    pub fn matches(&self, scope: Scope, subject: &Subject) -> bool {
        let Some(resources) = self.by_scope.get(&scope) else {
            return false;
        };
        [&*subject.resource, "*"].into_iter().any(|resource| {
            resources.get(resource).is_some_and(|ids| {
                ids.contains("*") || subject.id.as_deref().is_some_and(|id| ids.contains(id))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_parse_and_print_back() {
        for text in [
            "account_id:1:message:42",
            "user_id:7:*:*",
            "account_id:12:conversation:*",
            "user_id:3:*:abc-1_2.x",
        ] {
            assert_eq!(Topic::parse(text).unwrap().to_string(), text);
        }
        let topic = Topic::parse("account_id:1:message:*").unwrap();
        assert_eq!(topic.scope, Scope::Account(1));
        assert_eq!(topic.resource, Part::Is("message".into()));
        assert_eq!(topic.id, Part::Any);
    }

    #[test]
    fn bad_topics_say_why() {
        let cases = [
            ("", BadTopic::Shape),
            ("account_id:1:message", BadTopic::Shape),
            ("account_id:1:message:1:extra", BadTopic::Shape),
            ("customer_id:1:message:1", BadTopic::Shape),
            ("account_id:*:message:1", BadTopic::Owner),
            ("account_id:0:message:1", BadTopic::Owner),
            ("account_id:-1:message:1", BadTopic::Owner),
            ("account_id:01:message:1", BadTopic::Owner),
            ("account_id:+1:message:1", BadTopic::Owner),
            ("user_id:99999999999999999999:message:1", BadTopic::Owner),
            ("account_id:1::1", BadTopic::Part),
            ("account_id:1:message:", BadTopic::Part),
            ("account_id:1:mes sage:1", BadTopic::Part),
            ("account_id:1:message:4*", BadTopic::Part),
        ];
        for (text, why) in cases {
            assert_eq!(Topic::parse(text), Err(why), "{text}");
        }
        let long = format!("account_id:1:message:{}", "1".repeat(MAX_TOPIC_LEN));
        assert_eq!(Topic::parse(&long), Err(BadTopic::TooLong));
    }

    #[test]
    fn an_events_subject_is_its_resource_and_id() {
        let message = Subject::of("message.created", &json!({"id": 42, "content": "hi"}));
        assert_eq!(message.resource.as_ref(), "message");
        assert_eq!(message.id.as_deref(), Some("42"));
        assert_eq!(message.topic(Scope::Account(1)), "account_id:1:message:42");
        let typing = Subject::of(
            "conversation.typing_on",
            &json!({"conversation": {"id": 9}, "user": {"id": 3}}),
        );
        assert_eq!(
            (typing.resource.as_ref(), typing.id.as_deref()),
            ("conversation", Some("9"))
        );
        let by_string = Subject::of("contact.updated", &json!({"id": "c-1"}));
        assert_eq!(by_string.id.as_deref(), Some("c-1"));
        let none = Subject::of("notification.created", &json!({"id": {"nested": 1}}));
        assert_eq!(none.id, None);
        assert_eq!(none.topic(Scope::User(2)), "user_id:2:notification:*");
    }

    #[test]
    fn wildcards_match_in_either_position_and_nothing_else_does() {
        let mut topics = Topics::default();
        for text in [
            "account_id:1:message:*",
            "account_id:1:*:9",
            "user_id:7:conversation:5",
        ] {
            assert!(topics.insert(&Topic::parse(text).unwrap()));
        }
        assert!(!topics.insert(&Topic::parse("account_id:1:message:*").unwrap()));
        assert_eq!(topics.len(), 3);
        let subject = |name: &str, id: i64| Subject::of(name, &json!({"id": id}));
        let account = Scope::Account(1);
        assert!(topics.matches(account, &subject("message.created", 1)));
        assert!(topics.matches(account, &subject("conversation.updated", 9)));
        assert!(!topics.matches(account, &subject("conversation.updated", 8)));
        assert!(!topics.matches(Scope::Account(2), &subject("message.created", 1)));
        let user = Scope::User(7);
        assert!(topics.matches(user, &subject("conversation.updated", 5)));
        assert!(!topics.matches(user, &subject("conversation.updated", 6)));
        assert!(!topics.matches(user, &subject("message.created", 5)));
        assert!(topics.remove(&Topic::parse("account_id:1:message:*").unwrap()));
        assert!(!topics.matches(account, &subject("message.created", 1)));
        assert!(!topics.remove(&Topic::parse("account_id:1:message:*").unwrap()));
        assert_eq!(topics.len(), 2);
        assert_eq!(topics.scopes().count(), 2);
        let mut all = Topics::default();
        all.insert(&Topic::parse("user_id:7:*:*").unwrap());
        let no_id = Subject::of("notification.created", &json!({"users": {}}));
        assert!(all.matches(user, &no_id));
        let presence = Subject::of("presence.update", &json!({"account_id": 3, "users": {}}));
        assert_eq!(presence.topic(account), "account_id:1:presence:3");
    }
}
