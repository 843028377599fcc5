//! Who is subscribing: token lookups against PostgreSQL ([`store`]) behind a coalescing
//! cache ([`cache`]).
//!
//! The authenticated party is a [`Principal`]: an agent (user) in one account, or a contact
//! session (a `contact_inboxes` row).

pub mod batch;
pub mod cache;
pub mod jwt;
pub mod store;

use std::sync::Arc;

pub use cache::AuthCache;

/// A database failure during authentication. Never cached, never turned into a reject: the
/// client is told to reconnect instead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("database unavailable: {0}")]
pub struct AuthError(pub Arc<sqlx::Error>);

impl AuthError {
    /// The lookup task is gone (the process is shutting down).
    pub fn gone() -> AuthError {
        AuthError(Arc::new(sqlx::Error::PoolClosed))
    }
}

/// The first characters of a token, for logs: tokens are never logged in full.
pub fn token_prefix(token: &str) -> String {
    let prefix: String = token.chars().take(4).collect();
    format!("{prefix}…")
}

/// What a user token resolves to within one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: i64,
    /// `None` when the user does not belong to the account asked about.
    pub membership: Option<Membership>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub administrator: bool,
    /// `account_users.availability`: 0 online, 1 offline, 2 busy.
    pub availability: i32,
    pub auto_offline: bool,
    /// Every inbox the user is a member of.
    pub inbox_ids: Arc<[i64]>,
}

/// What a contact token resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactRecord {
    pub contact_inbox_id: i64,
    pub contact_id: i64,
    pub inbox_id: i64,
    pub account_id: i64,
}

/// The authenticated party of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User {
        account_id: i64,
        user_id: i64,
        membership: Membership,
    },
    Contact(ContactRecord),
}

impl Principal {
    /// For unit tests: a user of `account_id`, online, a member of `inbox_ids`.
    #[cfg(test)]
    pub fn member(account_id: i64, user_id: i64, administrator: bool, inbox_ids: &[i64]) -> Self {
        Principal::User {
            account_id,
            user_id,
            membership: Membership {
                administrator,
                availability: 0,
                auto_offline: true,
                inbox_ids: inbox_ids.into(),
            },
        }
    }

    pub fn account_id(&self) -> i64 {
        match self {
            Principal::User { account_id, .. } => *account_id,
            Principal::Contact(contact) => contact.account_id,
        }
    }

    pub fn is_user(&self) -> bool {
        matches!(self, Principal::User { .. })
    }
}

/// Whose presence a subscription keeps alive: a user, or a contact (not the contact session),
/// in one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PresenceKey {
    pub account_id: i64,
    /// A user id, or a contact id (not the contact session's id).
    pub id: i64,
    pub is_user: bool,
}

impl PresenceKey {
    /// Sorts `keys` as the `cable_presence` table's primary key orders them (account, kind with
    /// contacts' `'c'` before users' `'u'`, id) and drops repeats. Every statement over many
    /// rows takes them in this order, so the heartbeats of two processes holding the same
    /// agent cannot deadlock each other.
    pub fn lock_order(keys: &mut Vec<PresenceKey>) {
        keys.sort_unstable_by_key(|k| (k.account_id, k.is_user, k.id));
        keys.dedup();
    }
}

impl From<&Principal> for PresenceKey {
    fn from(principal: &Principal) -> Self {
        match principal {
            Principal::User {
                account_id,
                user_id,
                ..
            } => PresenceKey {
                account_id: *account_id,
                id: *user_id,
                is_user: true,
            },
            Principal::Contact(contact) => PresenceKey {
                account_id: contact.account_id,
                id: contact.contact_id,
                is_user: false,
            },
        }
    }
}
