//! Token lookups that miss the cache, batched: whatever misses arrive while earlier lookups
//! are running go to PostgreSQL together, as one query per kind (`unnest` of the tokens).
//!
//! A reconnect storm of 15,000 clients with 15,000 different tokens then costs tens of
//! queries, not 15,000 round trips queued behind a 10-connection pool (where the wait alone
//! ran past the pool's acquire timeout and turned a busy database into "reconnect"
//! answers). At most [`AUTH_BATCHES_IN_FLIGHT`] batches run at once, so lookups never take the whole pool
//! from the outbox reader and presence.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::jwt::Identity;
use super::{store, AuthError, ContactRecord, UserRecord};
use crate::config::tuning::{AUTH_BATCHES_IN_FLIGHT, AUTH_MAX_BATCH};
use crate::metrics::Metrics;

type Reply<T> = oneshot::Sender<Result<Option<T>, AuthError>>;

enum Lookup {
    User {
        token: Arc<str>,
        account_id: i64,
        reply: Reply<UserRecord>,
    },
    Contact {
        token: Arc<str>,
        reply: Reply<ContactRecord>,
    },
    /// A connection token's identity, resolved to its pubsub token.
    Identity {
        identity: Identity,
        reply: Reply<Arc<str>>,
    },
}

#[derive(Clone)]
pub struct Batcher {
    lookups: mpsc::UnboundedSender<Lookup>,
}

impl Batcher {
    /// The batcher and its task, for the caller to spawn (and stop). Lookups made while the
    /// task is not running wait; once it is gone they fail as "database unavailable".
    pub fn new(
        pool: PgPool,
        metrics: Arc<Metrics>,
    ) -> (
        Batcher,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (lookups, queue) = mpsc::unbounded_channel();
        (Batcher { lookups }, run(pool, metrics, queue))
    }

    pub async fn user(
        &self,
        token: &str,
        account_id: i64,
    ) -> Result<Option<UserRecord>, AuthError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.lookups.send(Lookup::User {
            token: token.into(),
            account_id,
            reply,
        });
        answer.await.unwrap_or_else(|_| Err(AuthError::gone()))
    }

    pub async fn contact(&self, token: &str) -> Result<Option<ContactRecord>, AuthError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.lookups.send(Lookup::Contact {
            token: token.into(),
            reply,
        });
        answer.await.unwrap_or_else(|_| Err(AuthError::gone()))
    }

    pub async fn identity(&self, identity: Identity) -> Result<Option<Arc<str>>, AuthError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.lookups.send(Lookup::Identity { identity, reply });
        answer.await.unwrap_or_else(|_| Err(AuthError::gone()))
    }
}

async fn run(pool: PgPool, metrics: Arc<Metrics>, mut queue: mpsc::UnboundedReceiver<Lookup>) {
    let slots = Arc::new(Semaphore::new(AUTH_BATCHES_IN_FLIGHT));
    loop {
        // A free slot first: lookups arriving while none is free wait in the queue, and the
        // next batch takes them all at once.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, AUTH_MAX_BATCH).await == 0 {
            return;
        }
        let (pool, metrics) = (pool.clone(), metrics.clone());
        tokio::spawn(async move {
            answer(&pool, &metrics, batch).await;
            drop(slot);
        });
    }
}

async fn answer(pool: &PgPool, metrics: &Metrics, batch: Vec<Lookup>) {
    let mut users = Vec::new();
    let mut contacts = Vec::new();
    let mut identities = Vec::new();
    for lookup in batch {
        match lookup {
            Lookup::User {
                token,
                account_id,
                reply,
            } => users.push(((token, account_id), reply)),
            Lookup::Contact { token, reply } => contacts.push((token, reply)),
            Lookup::Identity { identity, reply } => identities.push((identity, reply)),
        }
    }
    let user_keys: Vec<(Arc<str>, i64)> = users.iter().map(|(key, _)| key.clone()).collect();
    let contact_keys: Vec<Arc<str>> = contacts.iter().map(|(key, _)| key.clone()).collect();
    let identity_keys: Vec<Identity> = identities.iter().map(|(key, _)| *key).collect();
    let (found_users, found_contacts, found_identities) = tokio::join!(
        async {
            if user_keys.is_empty() {
                return Ok(HashMap::new());
            }
            metrics.auth_queries.inc();
            store::users(pool, &user_keys).await
        },
        async {
            if contact_keys.is_empty() {
                return Ok(HashMap::new());
            }
            metrics.auth_queries.inc();
            store::contacts(pool, &contact_keys).await
        },
        async {
            if identity_keys.is_empty() {
                return Ok(HashMap::new());
            }
            metrics.auth_queries.inc();
            store::identities(pool, &identity_keys).await
        },
    );
    reply_all(users, found_users);
    reply_all(contacts, found_contacts);
    reply_all(identities, found_identities);
}

fn reply_all<K: std::hash::Hash + Eq, T: Clone>(
    waiting: Vec<(K, Reply<T>)>,
    found: Result<HashMap<K, T>, AuthError>,
) {
    for (key, reply) in waiting {
        let answer = match &found {
            Ok(found) => Ok(found.get(&key).cloned()),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(answer);
    }
}
