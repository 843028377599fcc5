//! The SQL behind token lookups, always in bulk: the cache's batched loads and the
//! revalidation of every live subscription. Ids are cast to bigint so the same queries work on a Chatwoot
//! database (which mixes integer and bigint ids) and on our own migrations.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;

use super::jwt::Identity;
use super::{AuthError, ContactRecord, Membership, UserRecord};

fn db(e: sqlx::Error) -> AuthError {
    AuthError(Arc::new(e))
}

/// A user token looked up within one account.
#[derive(sqlx::FromRow)]
struct UserRow {
    token: String,
    account_id: i64,
    user_id: i64,
    /// NULL when the user is not in the account.
    role: Option<i32>,
    availability: Option<i32>,
    auto_offline: Option<bool>,
    inbox_ids: Option<Vec<i64>>,
}

impl UserRow {
    fn record(self) -> UserRecord {
        UserRecord {
            user_id: self.user_id,
            membership: self.role.map(|role| Membership {
                administrator: role == 1,
                availability: self.availability.unwrap_or(0),
                auto_offline: self.auto_offline.unwrap_or(true),
                inbox_ids: self.inbox_ids.unwrap_or_default().into(),
            }),
        }
    }
}

const USERS: &str = "
SELECT k.token, k.account_id, u.id::bigint AS user_id, au.role::int AS role,
       au.availability::int AS availability, au.auto_offline,
       CASE WHEN au.user_id IS NULL THEN NULL ELSE
         ARRAY(SELECT im.inbox_id::bigint FROM inbox_members im WHERE im.user_id = u.id ORDER BY 1)
       END AS inbox_ids
  FROM unnest($1::text[], $2::bigint[]) AS k(token, account_id)
  JOIN users u ON u.pubsub_token = k.token
  LEFT JOIN account_users au ON au.user_id = u.id AND au.account_id = k.account_id";

#[derive(sqlx::FromRow)]
struct ContactRow {
    token: String,
    contact_inbox_id: i64,
    contact_id: i64,
    inbox_id: i64,
    account_id: i64,
}

const CONTACTS: &str = "
SELECT ci.pubsub_token AS token, ci.id::bigint AS contact_inbox_id, ci.contact_id::bigint AS contact_id,
       ci.inbox_id::bigint AS inbox_id, c.account_id::bigint AS account_id
  FROM contact_inboxes ci
  JOIN contacts c ON c.id = ci.contact_id
 WHERE ci.pubsub_token = ANY($1::text[])";

/// Users by (token, account): present for every token that belongs to a user.
pub async fn users(
    pool: &PgPool,
    keys: &[(Arc<str>, i64)],
) -> Result<HashMap<(Arc<str>, i64), UserRecord>, AuthError> {
    let tokens: Vec<&str> = keys.iter().map(|(t, _)| &**t).collect();
    let accounts: Vec<i64> = keys.iter().map(|(_, a)| *a).collect();
    let rows: Vec<UserRow> = sqlx::query_as(USERS)
        .bind(tokens)
        .bind(accounts)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                (Arc::from(row.token.as_str()), row.account_id),
                row.record(),
            )
        })
        .collect())
}

/// Contact sessions by token.
pub async fn contacts(
    pool: &PgPool,
    tokens: &[Arc<str>],
) -> Result<HashMap<Arc<str>, ContactRecord>, AuthError> {
    let tokens: Vec<&str> = tokens.iter().map(|t| &**t).collect();
    let rows: Vec<ContactRow> = sqlx::query_as(CONTACTS)
        .bind(tokens)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let record = ContactRecord {
                contact_inbox_id: row.contact_inbox_id,
                contact_id: row.contact_id,
                inbox_id: row.inbox_id,
                account_id: row.account_id,
            };
            (Arc::from(row.token.as_str()), record)
        })
        .collect())
}

/// The pubsub token of each connection-token identity (docs/reference.md §10) that names someone: a
/// user who belongs to the account, or an existing contact session.
const IDENTITIES: &str = "
SELECT k.user_id, k.account_id, k.contact_inbox_id,
       COALESCE(u.pubsub_token, ci.pubsub_token)::text AS token
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS k(user_id, account_id, contact_inbox_id)
  LEFT JOIN users u ON u.id = k.user_id
       AND EXISTS (SELECT 1 FROM account_users au
                    WHERE au.user_id = u.id AND au.account_id = k.account_id)
  LEFT JOIN contact_inboxes ci ON ci.id = k.contact_inbox_id
 WHERE COALESCE(u.pubsub_token, ci.pubsub_token) <> ''";

#[derive(sqlx::FromRow)]
struct IdentityRow {
    user_id: Option<i64>,
    account_id: Option<i64>,
    contact_inbox_id: Option<i64>,
    token: String,
}

/// Pubsub tokens by connection-token identity.
pub async fn identities(
    pool: &PgPool,
    identities: &[Identity],
) -> Result<HashMap<Identity, Arc<str>>, AuthError> {
    let mut users = Vec::with_capacity(identities.len());
    let mut accounts = Vec::with_capacity(identities.len());
    let mut contacts = Vec::with_capacity(identities.len());
    for identity in identities {
        let (user, account, contact) = match *identity {
            Identity::User {
                user_id,
                account_id,
            } => (Some(user_id), Some(account_id), None),
            Identity::Contact { contact_inbox_id } => (None, None, Some(contact_inbox_id)),
        };
        users.push(user);
        accounts.push(account);
        contacts.push(contact);
    }
    let rows: Vec<IdentityRow> = sqlx::query_as(IDENTITIES)
        .bind(users)
        .bind(accounts)
        .bind(contacts)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let identity = match (row.user_id, row.account_id, row.contact_inbox_id) {
                (Some(user_id), Some(account_id), None) => Identity::User {
                    user_id,
                    account_id,
                },
                (None, None, Some(contact_inbox_id)) => Identity::Contact { contact_inbox_id },
                _ => return None,
            };
            Some((identity, Arc::from(row.token.as_str())))
        })
        .collect())
}

/// The accounts the user whose pubsub token is `token` belongs to, in ascending order (none
/// for a token that is no user's).
pub async fn accounts_of(pool: &PgPool, token: &str) -> Result<Vec<i64>, AuthError> {
    sqlx::query_scalar(
        "SELECT au.account_id::bigint
           FROM users u JOIN account_users au ON au.user_id = u.id
          WHERE u.pubsub_token = $1 AND u.pubsub_token <> ''
          ORDER BY 1",
    )
    .bind(token)
    .fetch_all(pool)
    .await
    .map_err(db)
}

/// The pubsub token of user `user_id` (`users.id`), if there is such a user with one: what a
/// Centrifugo connection naming the user by id acts with.
pub async fn user_token(pool: &PgPool, user_id: i64) -> Result<Option<String>, AuthError> {
    sqlx::query_scalar("SELECT pubsub_token::text FROM users WHERE id = $1 AND pubsub_token <> ''")
        .bind(user_id)
        .fetch_optional(pool)
        .await
        .map_err(db)
}
