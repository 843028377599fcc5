//! Chatwoot's own record of who is online, kept in its Redis for the Rails code that reads it
//! (auto-assignment picks only online agents, e-mail notifications are suppressed for online
//! agents, `contacts/active` lists online contacts). Chatwoot's ActionCable writes it; with the
//! gateway in its place, the gateway does:
//!
//! `ZADD ONLINE_PRESENCE::<account_id>::USERS <unix seconds> <user id>` (contacts:
//! `ONLINE_PRESENCE::<account_id>::CONTACTS`, member = the contact's id), for every subscriber
//! at its subscribe, on `update_presence`, and at every heartbeat while connected (at most
//! every 10 s; Chatwoot counts a score within its last 20 s as online). One pipeline per batch.
//!
//! On when `CABLE_REDIS_URL` is set (`CABLE_CHATWOOT_PRESENCE=false` turns it off). A Redis
//! failure is logged and the next batch tries a new connection; presence in PostgreSQL, and so
//! the gateway's own `presence.update`, is unaffected.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use crate::auth::PresenceKey;

/// The sorted set Chatwoot keeps an account's online users or contacts in.
pub fn key(account_id: i64, is_user: bool) -> String {
    let kind = if is_user { "USERS" } else { "CONTACTS" };
    format!("ONLINE_PRESENCE::{account_id}::{kind}")
}

pub struct ChatwootPresence {
    client: redis::Client,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl ChatwootPresence {
    pub fn new(client: redis::Client) -> ChatwootPresence {
        ChatwootPresence {
            client,
            connection: Mutex::new(None),
        }
    }

    /// Records `keys` as online now.
    pub async fn seen(&self, keys: &HashSet<PresenceKey>) {
        if keys.is_empty() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut pipeline = redis::pipe();
        for k in keys {
            pipeline
                .cmd("ZADD")
                .arg(key(k.account_id, k.is_user))
                .arg(now)
                .arg(k.id)
                .ignore();
        }
        let mut slot = self.connection.lock().await;
        let result = async {
            if slot.is_none() {
                *slot = Some(self.client.get_multiplexed_async_connection().await?);
            }
            let connection = slot.as_mut().expect("connected above");
            pipeline.query_async::<()>(connection).await
        }
        .await;
        if let Err(e) = result {
            // A new connection next time.
            *slot = None;
            tracing::warn!(error = %e, "Chatwoot presence: could not write ONLINE_PRESENCE keys");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_chatwoots() {
        assert_eq!(key(7, true), "ONLINE_PRESENCE::7::USERS");
        assert_eq!(key(7, false), "ONLINE_PRESENCE::7::CONTACTS");
    }
}
