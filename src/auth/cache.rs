//! A moka cache in front of [`super::store`] (through [`super::batch`]).
//!
//! - Loads are coalesced: N concurrent lookups of one key run one query (`try_get_with`).
//! - Valid tokens are kept for `CABLE_AUTH_CACHE_TTL`, unknown ones for the shorter
//!   `CABLE_AUTH_NEGATIVE_TTL`.
//! - A database error is returned to every waiter and never cached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::batch::Batcher;
use super::jwt::Identity;
use super::{AuthError, ContactRecord, UserRecord};
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User { token: Box<str>, account_id: i64 },
    Contact { token: Box<str> },
    Identity(Identity),
}

#[derive(Debug, Clone)]
enum Found {
    User(Option<UserRecord>),
    Contact(Option<ContactRecord>),
    Token(Option<Arc<str>>),
}

impl Found {
    fn is_some(&self) -> bool {
        match self {
            Found::User(found) => found.is_some(),
            Found::Contact(found) => found.is_some(),
            Found::Token(found) => found.is_some(),
        }
    }
}

struct Ttl {
    positive: Duration,
    negative: Duration,
}

impl Expiry<Key, Found> for Ttl {
    fn expire_after_create(&self, _key: &Key, value: &Found, _now: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

#[derive(Clone)]
pub struct AuthCache {
    batcher: Batcher,
    cache: Cache<Key, Found>,
    metrics: Arc<Metrics>,
}

impl AuthCache {
    pub fn new(
        batcher: Batcher,
        metrics: Arc<Metrics>,
        positive: Duration,
        negative: Duration,
        capacity: u64,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .expire_after(Ttl { positive, negative })
            .build();
        AuthCache {
            batcher,
            cache,
            metrics,
        }
    }

    pub async fn user(
        &self,
        token: &str,
        account_id: i64,
    ) -> Result<Option<UserRecord>, AuthError> {
        let key = Key::User {
            token: token.into(),
            account_id,
        };
        match self.get(key).await? {
            Found::User(found) => Ok(found),
            _ => unreachable!("user keys hold user records"),
        }
    }

    pub async fn contact(&self, token: &str) -> Result<Option<ContactRecord>, AuthError> {
        let key = Key::Contact {
            token: token.into(),
        };
        match self.get(key).await? {
            Found::Contact(found) => Ok(found),
            _ => unreachable!("contact keys hold contact records"),
        }
    }

    /// The pubsub token a connection token's identity acts with (docs/reference.md §10); `None` when
    /// it names nobody (no such user in that account, no such contact session).
    pub async fn identity(&self, identity: Identity) -> Result<Option<Arc<str>>, AuthError> {
        match self.get(Key::Identity(identity)).await? {
            Found::Token(found) => Ok(found),
            _ => unreachable!("identity keys hold tokens"),
        }
    }

    /// Forgets what is cached of `token` (for `account_id`, when a user's), so that the next
    /// lookup asks the database: a restored subscription is checked afresh.
    pub async fn forget(&self, token: &str, account_id: Option<i64>) {
        let key = match account_id {
            Some(account_id) => Key::User {
                token: token.into(),
                account_id,
            },
            None => Key::Contact {
                token: token.into(),
            },
        };
        self.cache.invalidate(&key).await;
    }

    /// Forgets every cached lookup (tests, and after revalidation finds a change).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    async fn get(&self, key: Key) -> Result<Found, AuthError> {
        let loaded = AtomicBool::new(false);
        let load = async {
            loaded.store(true, Ordering::Relaxed);
            match &key {
                Key::User { token, account_id } => {
                    self.batcher.user(token, *account_id).await.map(Found::User)
                }
                Key::Contact { token } => self.batcher.contact(token).await.map(Found::Contact),
                Key::Identity(identity) => self.batcher.identity(*identity).await.map(Found::Token),
            }
        };
        let result = self.cache.try_get_with(key.clone(), load).await;
        if loaded.load(Ordering::Relaxed) {
            self.metrics.auth_cache_misses.inc();
        } else {
            self.metrics.auth_cache_hits.inc();
        }
        result.map_err(|e: Arc<AuthError>| (*e).clone())
    }
}
