//! The SQL behind token lookups, always in bulk: the cache's batched loads and the
//! revalidation of every live subscription. Ids are cast to bigint so the same queries work on a Chatwoot
//! database (which mixes integer and bigint ids) and on our own migrations.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;

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
