//! The RoomChannel action `typing` (docs/reference.md §10): `perform('typing', {conversation_id,
//! status: 'on'|'off', is_private})`.
//!
//! The typing event is written to the outbox as one statement that also checks the
//! subscriber may see the conversation (an administrator, a member of its inbox, or its own
//! contact session). The outbox then delivers it like any other event, on every gateway
//! process of the database, with the rules of a conversation-scoped event: the account's
//! administrators and the inbox's members, the conversation's contact session unless it is
//! private, never the typist's own subscriptions (`actor_*`). A conversation the subscriber
//! cannot see writes nothing: the action is ignored and counted.
//!
//! The reader awaits the statement before the next command, so a client's `on` and `off`
//! commit (and arrive) in the order it sent them.

use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::auth::Principal;

/// What a `typing` action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Typing {
    /// The conversation's `display_id` in the subscription's account.
    pub conversation: i64,
    pub on: bool,
    pub private: bool,
}

/// Why a `typing` action wrote nothing (the `result` label of `cable_commands_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Ignored {
    /// `conversation_id`, `status` or `is_private` missing or of the wrong kind.
    BadParams,
    /// No such conversation in the account, or the subscriber may not see it.
    NotVisible,
    /// The database did not answer.
    Unavailable,
}

impl Ignored {
    pub fn label(self) -> &'static str {
        self.into()
    }
}

impl Typing {
    /// The action's data (`action` included, ignored here).
    pub fn parse(data: &Map<String, Value>) -> Result<Typing, Ignored> {
        let conversation = crate::ids::numeric_id(data.get("conversation_id"))
            .ok()
            .flatten()
            .ok_or(Ignored::BadParams)?;
        let on = match data.get("status").and_then(Value::as_str) {
            Some("on") => true,
            Some("off") => false,
            _ => return Err(Ignored::BadParams),
        };
        let private = match data.get("is_private") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(private)) => *private,
            Some(_) => return Err(Ignored::BadParams),
        };
        Ok(Typing {
            conversation,
            on,
            private,
        })
    }

    pub fn event(self) -> &'static str {
        if self.on {
            "conversation.typing_on"
        } else {
            "conversation.typing_off"
        }
    }
}

/// One statement: the visibility check, the event's `data` in Chatwoot's shape, and its
/// audience columns. `$5` (the typist's contact session) is NULL for a user.
const PUBLISH: &str = "
INSERT INTO cable_events
       (account_id, event, data, inbox_id, contact_inbox_ids, private,
        actor_user_id, actor_contact_inbox_id)
SELECT c.account_id::bigint, $3,
       jsonb_build_object(
         'conversation', jsonb_build_object('id', c.display_id, 'inbox_id', c.inbox_id,
                                            'account_id', c.account_id),
         'user', jsonb_build_object('id', $4::bigint,
                                    'type', CASE WHEN $5::bigint IS NULL THEN 'user'
                                                 ELSE 'contact' END),
         'is_private', $6::boolean,
         'account_id', c.account_id),
       c.inbox_id::bigint,
       CASE WHEN c.contact_inbox_id IS NULL THEN NULL
            ELSE ARRAY[c.contact_inbox_id::bigint] END,
       $6::boolean, $7::bigint, $5::bigint
  FROM conversations c
 WHERE c.account_id = $1::bigint AND c.display_id = $2::bigint
   AND CASE WHEN $5::bigint IS NULL THEN $8::boolean OR c.inbox_id = ANY($9::bigint[])
            ELSE c.contact_inbox_id = $5::bigint END";

/// What a connection needs to write typing events: the outbox's database, and nothing else
/// of it.
#[derive(Clone)]
pub struct Publisher {
    pool: PgPool,
}

impl Publisher {
    pub fn new(pool: PgPool) -> Publisher {
        Publisher { pool }
    }

    /// Writes the typing event of `principal` to the outbox, if it may see the conversation.
    pub async fn publish(&self, principal: &Principal, typing: Typing) -> Result<(), Ignored> {
        publish(&self.pool, principal, typing).await
    }
}

/// Writes the typing event of `principal` to the outbox, if it may see the conversation.
async fn publish(pool: &PgPool, principal: &Principal, typing: Typing) -> Result<(), Ignored> {
    let (id, contact_inbox, actor_user, administrator, inboxes): (_, _, _, _, &[i64]) =
        match principal {
            Principal::User {
                user_id,
                membership,
                ..
            } => (
                *user_id,
                None,
                Some(*user_id),
                membership.administrator,
                &membership.inbox_ids,
            ),
            Principal::Contact(contact) => (
                contact.contact_id,
                Some(contact.contact_inbox_id),
                None,
                false,
                &[],
            ),
        };
    let written = sqlx::query(PUBLISH)
        .bind(principal.account_id())
        .bind(typing.conversation)
        .bind(typing.event())
        .bind(id)
        .bind(contact_inbox)
        .bind(typing.private)
        .bind(actor_user)
        .bind(administrator)
        .bind(inboxes)
        .execute(pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not publish a typing event");
            Ignored::Unavailable
        })?;
    if written.rows_affected() == 0 {
        return Err(Ignored::NotVisible);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(data: Value) -> Result<Typing, Ignored> {
        Typing::parse(data.as_object().unwrap())
    }

    #[test]
    fn parses_the_action() {
        assert_eq!(
            parse(json!({"action": "typing", "conversation_id": "12", "status": "on"})),
            Ok(Typing {
                conversation: 12,
                on: true,
                private: false
            })
        );
        assert_eq!(
            parse(json!({"conversation_id": 3, "status": "off", "is_private": true})),
            Ok(Typing {
                conversation: 3,
                on: false,
                private: true
            })
        );
        for bad in [
            json!({"status": "on"}),
            json!({"conversation_id": "x", "status": "on"}),
            json!({"conversation_id": 1, "status": "maybe"}),
            json!({"conversation_id": 1}),
            json!({"conversation_id": 1, "status": "on", "is_private": "yes"}),
            json!({"conversation_id": 1.5, "status": "on"}),
        ] {
            assert_eq!(parse(bad.clone()), Err(Ignored::BadParams), "{bad}");
        }
    }
}
