//! Chatwoot's own record of who is online, kept in its Redis for the Rails code that reads it
//! (auto-assignment picks only online agents, e-mail notifications are suppressed for online
//! agents, `contacts/active` lists online contacts). Chatwoot's ActionCable writes it; with the
//! gateway in its place, the gateway does:
//!
//! `ZADD ONLINE_PRESENCE::<account_id>::USERS <unix seconds> <user id>` (contacts:
//! `ONLINE_PRESENCE::<account_id>::CONTACTS`, member = the contact's id), for every subscriber
//! at its subscribe, on `update_presence`, and at every heartbeat while connected (at most
//! every 10 s; Chatwoot counts a score within its last 20 s as online). One pipeline per batch,
//! written by a task of its own: presence hands the keys over and never waits for Redis.
//!
//! On when `CABLE_REDIS_URL` is set (`CABLE_CHATWOOT_PRESENCE=false` turns it off). A Redis
//! failure is logged and the next batch tries a new connection; presence in PostgreSQL, and so
//! the gateway's own `presence.update`, is unaffected.

use std::collections::HashSet;

use tokio::sync::mpsc;

use crate::auth::PresenceKey;
use crate::config::tuning::CHATWOOT_MAX_BATCHES;

/// The sorted set Chatwoot keeps an account's online users or contacts in.
pub fn key(account_id: i64, is_user: bool) -> String {
    let kind = if is_user { "USERS" } else { "CONTACTS" };
    format!("ONLINE_PRESENCE::{account_id}::{kind}")
}

/// The handle presence hands keys to; the writing happens in [`ChatwootPresence::run`], so the
/// presence task never waits for Redis (measured: with the write inside the answer batch, a
/// storm of 5,000 subscribes into one account took 3.8–4.4 s to confirm instead of 0.74 s,
/// the answers being delayed and, the online set having grown meanwhile, larger).
pub struct ChatwootPresence {
    keys: mpsc::UnboundedSender<HashSet<PresenceKey>>,
}

/// The writer's half: batches waiting to be written.
pub struct Writer {
    client: redis::Client,
    keys: mpsc::UnboundedReceiver<HashSet<PresenceKey>>,
}

impl ChatwootPresence {
    pub fn new(client: redis::Client) -> (ChatwootPresence, Writer) {
        let (keys, waiting) = mpsc::unbounded_channel();
        (
            ChatwootPresence { keys },
            Writer {
                client,
                keys: waiting,
            },
        )
    }

    /// Records `keys` as online now (written shortly after, never waited for).
    pub fn seen(&self, keys: &[PresenceKey]) {
        if !keys.is_empty() {
            let _ = self.keys.send(keys.iter().copied().collect());
        }
    }

    /// The writer task: whatever waits is written in one pipeline, with the time of writing.
    /// A Redis failure is logged, and the next batch tries a new connection.
    pub async fn run(writer: Writer) {
        let Writer { client, mut keys } = writer;
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut waiting = Vec::new();
        while keys.recv_many(&mut waiting, CHATWOOT_MAX_BATCHES).await > 0 {
            let batch: Vec<_> = waiting.drain(..).flatten().collect();
            let now = crate::clock::unix_seconds();
            let mut pipeline = redis::pipe();
            for k in &batch {
                pipeline
                    .cmd("ZADD")
                    .arg(key(k.account_id, k.is_user))
                    .arg(now)
                    .arg(k.id)
                    .ignore();
            }
            let result = async {
                if connection.is_none() {
                    connection = Some(client.get_multiplexed_async_connection().await?);
                }
                let conn = connection.as_mut().expect("connected above");
                pipeline.query_async::<()>(conn).await
            }
            .await;
            if let Err(e) = result {
                connection = None;
                tracing::warn!(error = %e, "Chatwoot presence: could not write ONLINE_PRESENCE keys");
            }
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
