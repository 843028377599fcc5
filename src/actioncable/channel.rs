//! RoomChannel, the only channel, and the subscribe policy: a raw identifier, the number of
//! subscriptions the connection holds, and token lookups → a [`Principal`] or a reject
//! ([`subscribe`]).
//!
//! - `user_id` present and not blank → a user subscription: the token must belong to that
//!   user and the user must belong to `account_id`.
//! - otherwise a contact subscription: the token must be a contact session's; `account_id`,
//!   if given, must be the contact's account.
//!
//! Ids may arrive as JSON numbers or numeric strings.
//!
//! On a connection with a signed token (docs/reference.md §10) `pubsub_token` may be omitted: the
//! subscription acts as the token's user or contact session. Whatever the identifier does say
//! (`pubsub_token`, `user_id`, `account_id`) must agree with the token.

use serde_json::{Map, Value};

use crate::actioncable::protocol::{BadInput, Identifier};
use crate::auth::jwt::{ConnectionIdentity, Identity};
use crate::auth::{AuthCache, AuthError, Principal};

pub const ROOM_CHANNEL: &str = "RoomChannel";

/// The answer to a subscribe that is not a confirm.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    /// Send `reject_subscription`: which kind of bad input, and why exactly (the `reason`
    /// label of `cable_subscribe_rejects_total` and of the log line).
    #[error("rejected: {1}")]
    Reject(BadInput, &'static str),
    /// The database could not answer: tell the client to reconnect; never reject.
    #[error(transparent)]
    Unavailable(#[from] AuthError),
}

/// What the identifier of a RoomChannel subscription asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomParams {
    pub pubsub_token: String,
    pub account_id: Option<i64>,
    pub user_id: Option<i64>,
}

fn bad(why: &'static str) -> SubscribeError {
    SubscribeError::Reject(BadInput::BadIdentifier, why)
}

fn invalid(why: &'static str) -> SubscribeError {
    SubscribeError::Reject(BadInput::InvalidToken, why)
}

/// The policy of a subscribe: `raw` parsed (the caller has already checked it is a JSON
/// object), the connection's subscription limit, then the token. Returns the token, the
/// parsed identifier and who subscribes.
///
/// `fresh` skips the token cache (a restored subscription: its token may have been revoked
/// while its client was away).
pub async fn subscribe(
    auth: &AuthCache,
    raw: &str,
    subscribed: usize,
    max_subscriptions: usize,
    connection: Option<&ConnectionIdentity>,
    fresh: bool,
) -> Result<(String, Identifier, Principal), SubscribeError> {
    let identifier = Identifier::parse(raw).map_err(|_| bad("no_channel"))?;
    let params = RoomParams::parse(&identifier, connection)?;
    if subscribed >= max_subscriptions {
        return Err(SubscribeError::Reject(
            BadInput::TooManySubscriptions,
            "too_many_subscriptions",
        ));
    }
    if fresh {
        let account = params.user_id.and(params.account_id);
        auth.forget(&params.pubsub_token, account).await;
    }
    let principal = params.authorize(auth).await?;
    Ok((params.pubsub_token, identifier, principal))
}

/// An id given as a number or a numeric string. `Ok(None)` for absent, null or blank.
fn id_param(params: &Map<String, Value>, key: &str) -> Result<Option<i64>, SubscribeError> {
    crate::ids::numeric_id(params.get(key)).map_err(|e| bad(e.label()))
}

impl RoomParams {
    /// The identifier's parameters; on a connection with a signed token, completed from it
    /// (and checked against it).
    pub fn parse(
        identifier: &Identifier,
        connection: Option<&ConnectionIdentity>,
    ) -> Result<RoomParams, SubscribeError> {
        if identifier.channel != ROOM_CHANNEL {
            return Err(bad("unknown_channel"));
        }
        let pubsub_token = match identifier.params.get("pubsub_token") {
            Some(Value::String(token)) if !token.is_empty() => Some(token.clone()),
            _ => None,
        };
        let account_id = id_param(&identifier.params, "account_id")?;
        let user_id = id_param(&identifier.params, "user_id")?;
        let Some(connection) = connection else {
            return Ok(RoomParams {
                pubsub_token: pubsub_token.ok_or(bad("pubsub_token_missing"))?,
                account_id,
                user_id,
            });
        };
        if pubsub_token.is_some_and(|token| *token != *connection.pubsub_token) {
            return Err(invalid("not_the_connections_token"));
        }
        let pubsub_token = connection.pubsub_token.to_string();
        match connection.identity {
            Identity::User {
                user_id: own_user,
                account_id: own_account,
            } => {
                if user_id.is_some_and(|id| id != own_user) {
                    return Err(invalid("not_the_connections_user"));
                }
                if account_id.is_some_and(|id| id != own_account) {
                    return Err(invalid("not_the_connections_account"));
                }
                Ok(RoomParams {
                    pubsub_token,
                    account_id: Some(own_account),
                    user_id: Some(own_user),
                })
            }
            // The contact's account is checked against `account_id` by `authorize`.
            Identity::Contact { .. } => {
                if user_id.is_some() {
                    return Err(invalid("not_the_connections_user"));
                }
                Ok(RoomParams {
                    pubsub_token,
                    account_id,
                    user_id: None,
                })
            }
        }
    }

    /// Checks the token against PostgreSQL (through the cache).
    pub async fn authorize(&self, auth: &AuthCache) -> Result<Principal, SubscribeError> {
        match self.user_id {
            Some(user_id) => {
                let account_id = self.account_id.ok_or(bad("account_id_missing"))?;
                let user = auth
                    .user(&self.pubsub_token, account_id)
                    .await?
                    .ok_or(invalid("unknown_token"))?;
                if user.user_id != user_id {
                    return Err(invalid("token_of_another_user"));
                }
                let membership = user.membership.ok_or(invalid("user_not_in_account"))?;
                Ok(Principal::User {
                    account_id,
                    user_id,
                    membership,
                })
            }
            None => {
                let contact = auth
                    .contact(&self.pubsub_token)
                    .await?
                    .ok_or(invalid("unknown_token"))?;
                if self
                    .account_id
                    .is_some_and(|account_id| account_id != contact.account_id)
                {
                    return Err(invalid("contact_of_another_account"));
                }
                Ok(Principal::Contact(contact))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(raw: &str) -> Result<RoomParams, SubscribeError> {
        RoomParams::parse(&Identifier::parse(raw).unwrap(), None)
    }

    fn on_connection(raw: &str, identity: Identity) -> Result<RoomParams, &'static str> {
        let connection = ConnectionIdentity {
            identity,
            exp: 0,
            pubsub_token: "own".into(),
        };
        RoomParams::parse(&Identifier::parse(raw).unwrap(), Some(&connection)).map_err(
            |e| match e {
                SubscribeError::Reject(_, why) => why,
                SubscribeError::Unavailable(_) => "unavailable",
            },
        )
    }

    #[test]
    fn a_signed_connection_completes_and_checks_the_identifier() {
        let user = Identity::User {
            user_id: 2,
            account_id: 1,
        };
        let contact = Identity::Contact {
            contact_inbox_id: 5,
        };
        assert_eq!(
            on_connection(r#"{"channel":"RoomChannel"}"#, user),
            Ok(RoomParams {
                pubsub_token: "own".into(),
                account_id: Some(1),
                user_id: Some(2)
            })
        );
        assert_eq!(
            on_connection(
                r#"{"channel":"RoomChannel","pubsub_token":"own","user_id":"2"}"#,
                user
            )
            .map(|p| p.account_id),
            Ok(Some(1))
        );
        for (raw, identity, why) in [
            (
                r#"{"channel":"RoomChannel","user_id":3}"#,
                user,
                "not_the_connections_user",
            ),
            (
                r#"{"channel":"RoomChannel","account_id":9}"#,
                user,
                "not_the_connections_account",
            ),
            (
                r#"{"channel":"RoomChannel","pubsub_token":"other"}"#,
                user,
                "not_the_connections_token",
            ),
            (
                r#"{"channel":"RoomChannel","user_id":2}"#,
                contact,
                "not_the_connections_user",
            ),
        ] {
            assert_eq!(on_connection(raw, identity), Err(why), "{raw}");
        }
        assert_eq!(
            on_connection(r#"{"channel":"RoomChannel","account_id":4}"#, contact).map(|p| (
                p.pubsub_token,
                p.account_id,
                p.user_id
            )),
            Ok(("own".into(), Some(4), None))
        );
    }

    #[test]
    fn ids_as_numbers_or_strings() {
        let a =
            params(r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":1,"user_id":2}"#)
                .unwrap();
        let b = params(
            r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":"1","user_id":"2"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.user_id, Some(2));
    }

    #[test]
    fn blank_user_id_means_contact() {
        for raw in [
            r#"{"channel":"RoomChannel","pubsub_token":"t","user_id":""}"#,
            r#"{"channel":"RoomChannel","pubsub_token":"t","user_id":null}"#,
            r#"{"channel":"RoomChannel","pubsub_token":"t"}"#,
        ] {
            assert_eq!(params(raw).unwrap().user_id, None, "{raw}");
        }
    }

    #[test]
    fn rejects_bad_params() {
        for raw in [
            r#"{"channel":"OtherChannel","pubsub_token":"t"}"#,
            r#"{"channel":"RoomChannel"}"#,
            r#"{"channel":"RoomChannel","pubsub_token":""}"#,
            r#"{"channel":"RoomChannel","pubsub_token":"t","user_id":"abc"}"#,
            r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":[1]}"#,
            r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":1.5}"#,
        ] {
            assert!(
                matches!(
                    params(raw),
                    Err(SubscribeError::Reject(BadInput::BadIdentifier, _))
                ),
                "{raw}"
            );
        }
    }
}
