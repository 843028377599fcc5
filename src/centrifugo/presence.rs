//! Presence of Centrifugo channels (docs/reference.md §11), shared by every process of the
//! database: who is subscribed to a channel whose namespace keeps presence, with `join` and
//! `leave` pushes to the subscribers that asked for them, on every process.
//!
//! A client's subscription is a row of `cable_channel_presence` (channel, client, user,
//! `conn_info` from its token's `info`). Joining inserts it and leaving deletes it, each
//! statement announcing the change on [`CHANNEL`] (`pg_notify`, sent at commit), so every
//! process hears every join and leave once, in commit order, and pushes it to its own
//! subscribers of the channel. Each process refreshes `seen_at` of its clients' rows every
//! third of `CABLE_PRESENCE_TTL`; any process serving Centrifugo sweeps the rows past it (a
//! process that died), and the sweep announces their leave.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sqlx::PgPool;

use super::protocol;
use crate::delivery::{Outbound, Subscription};

/// The notification channel of joins and leaves.
pub const CHANNEL: &str = "cable_channel_presence";
/// The largest `conn_info` kept (a notification carries at most 8000 bytes).
pub const MAX_CONN_INFO: usize = 4096;

/// One client's presence in a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub channel: String,
    pub client: String,
    pub user: String,
    pub conn_info: Option<Value>,
}

impl Member {
    /// Centrifugo's `ClientInfo`: `{"client","user","conn_info"?}`.
    pub fn info(&self) -> Value {
        let mut info = json!({"client": self.client, "user": self.user});
        if let Some(conn_info) = &self.conn_info {
            info["conn_info"] = conn_info.clone();
        }
        info
    }
}

/// A local subscriber of a presence channel: its subscription, and whether it gets join
/// and leave pushes.
struct Watcher {
    sub: Arc<Subscription>,
    pushes: bool,
}

/// This process's side of channel presence.
pub struct ChannelPresence {
    pool: PgPool,
    ttl: Duration,
    /// This process's members, refreshed by [`ChannelPresence::run`].
    members: Mutex<HashMap<(String, String), Member>>,
    /// This process's subscribers of presence channels, by channel.
    watchers: Mutex<HashMap<String, Vec<Watcher>>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    channel: String,
    client: String,
    user_id: String,
    conn_info: Option<Value>,
}

impl From<Row> for Member {
    fn from(row: Row) -> Member {
        Member {
            channel: row.channel,
            client: row.client,
            user: row.user_id,
            conn_info: row.conn_info,
        }
    }
}

/// A change as announced: `{"kind":"join"|"leave","channel":..,"client":..,"user":..,"conn_info":..}`.
const ANNOUNCE: &str = "json_build_object('kind', $kind, 'channel', channel, 'client', client,
                                           'user', user_id, 'conn_info', conn_info)::text";

impl ChannelPresence {
    pub fn new(pool: PgPool, ttl: Duration) -> Arc<ChannelPresence> {
        Arc::new(ChannelPresence {
            pool,
            ttl,
            members: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        })
    }

    /// `sub` (of `member.channel`) joins: its row is written and announced, and it hears the
    /// channel's joins and leaves from now on if `pushes`.
    pub async fn join(
        &self,
        mut member: Member,
        sub: &Arc<Subscription>,
        pushes: bool,
    ) -> Result<(), sqlx::Error> {
        // Too large for an announcement: left out, here and in the row.
        member.conn_info = member
            .conn_info
            .filter(|info| info.to_string().len() <= MAX_CONN_INFO);
        self.watchers
            .lock()
            .entry(member.channel.clone())
            .or_default()
            .push(Watcher {
                sub: sub.clone(),
                pushes,
            });
        self.members.lock().insert(
            (member.channel.clone(), member.client.clone()),
            member.clone(),
        );
        let announce = ANNOUNCE.replace("$kind", "'join'");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH joined AS (
               INSERT INTO cable_channel_presence (channel, client, user_id, conn_info, seen_at)
               VALUES ($1, $2, $3, $4, now())
               ON CONFLICT (channel, client) DO UPDATE SET seen_at = now()
               RETURNING channel, client, user_id, conn_info, (xmax = 0) AS inserted)
             SELECT pg_notify('{CHANNEL}', {announce}) FROM joined WHERE inserted"
        )))
        .bind(&member.channel)
        .bind(&member.client)
        .bind(&member.user)
        .bind(&member.conn_info)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `client` leaves `channel` (unsubscribed, or its connection ended).
    pub async fn leave(&self, channel: &str, client: &str, sub_id: u64) {
        self.members
            .lock()
            .remove(&(channel.to_string(), client.to_string()));
        {
            let mut watchers = self.watchers.lock();
            if let Some(list) = watchers.get_mut(channel) {
                list.retain(|w| w.sub.id != sub_id);
                if list.is_empty() {
                    watchers.remove(channel);
                }
            }
        }
        let announce = ANNOUNCE.replace("$kind", "'leave'");
        let left = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH left_ AS (
               DELETE FROM cable_channel_presence WHERE channel = $1 AND client = $2
               RETURNING channel, client, user_id, conn_info)
             SELECT pg_notify('{CHANNEL}', {announce}) FROM left_"
        )))
        .bind(channel)
        .bind(client)
        .execute(&self.pool)
        .await;
        if let Err(e) = left {
            // Its row expires with the TTL instead, and the sweep announces the leave.
            tracing::warn!(error = %e, channel, "channel presence: leave not written");
        }
    }

    /// Who is in `channel`, on every process.
    pub async fn members(&self, channel: &str) -> Result<Vec<Member>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT channel, client, user_id, conn_info FROM cable_channel_presence
              WHERE channel = $1 AND seen_at > now() - make_interval(secs => $2)
              ORDER BY client",
        )
        .bind(channel)
        .bind(self.ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Member::from).collect())
    }

    /// A join or leave announced by any process: pushed to this process's subscribers of
    /// the channel that asked for them.
    pub fn announced(&self, payload: &str) {
        let Ok(change) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        let (Some(kind), Some(channel), Some(client), Some(user)) = (
            change["kind"].as_str(),
            change["channel"].as_str(),
            change["client"].as_str(),
            change["user"].as_str(),
        ) else {
            return;
        };
        if kind != "join" && kind != "leave" {
            return;
        }
        let member = Member {
            channel: channel.to_string(),
            client: client.to_string(),
            user: user.to_string(),
            conn_info: Some(change["conn_info"].clone()).filter(|v| !v.is_null()),
        };
        let frame: Bytes = protocol::push(channel, kind, &json!({"info": member.info()}));
        let watchers = self.watchers.lock();
        for watcher in watchers.get(channel).into_iter().flatten() {
            if watcher.pushes && watcher.sub.is_active() {
                watcher.sub.session.send(Outbound::Frame(frame.clone()));
            }
        }
    }

    /// Refreshes this process's rows (re-writing any a sweep took meanwhile) and sweeps the
    /// expired ones of every process, for ever.
    pub async fn run(self: Arc<Self>) {
        let every = (self.ttl / 3).max(Duration::from_millis(500));
        let mut refresh = tokio::time::interval(every);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "channel presence: refresh failed");
                    }
                }
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "channel presence: sweep failed");
                    }
                }
            }
        }
    }

    async fn refresh(&self) -> Result<(), sqlx::Error> {
        let members: Vec<Member> = self.members.lock().values().cloned().collect();
        if members.is_empty() {
            return Ok(());
        }
        let mut channels = Vec::with_capacity(members.len());
        let mut clients = Vec::with_capacity(members.len());
        let mut users = Vec::with_capacity(members.len());
        let mut infos = Vec::with_capacity(members.len());
        for member in members {
            channels.push(member.channel);
            clients.push(member.client);
            users.push(member.user);
            infos.push(member.conn_info.map(|info| info.to_string()));
        }
        sqlx::query(
            "INSERT INTO cable_channel_presence (channel, client, user_id, conn_info, seen_at)
             SELECT c, k, u, i::jsonb, now()
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(c, k, u, i)
              ORDER BY c, k
             ON CONFLICT (channel, client) DO UPDATE SET seen_at = now()",
        )
        .bind(channels)
        .bind(clients)
        .bind(users)
        .bind(infos)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sweep(&self) -> Result<(), sqlx::Error> {
        let announce = ANNOUNCE.replace("$kind", "'leave'");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH gone AS (
               DELETE FROM cable_channel_presence
                WHERE seen_at <= now() - make_interval(secs => $1)
               RETURNING channel, client, user_id, conn_info)
             SELECT pg_notify('{CHANNEL}', {announce}) FROM gone"
        )))
        .bind(self.ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The result of `presence`: `{"presence":{"<client>":{"client","user","conn_info"?},..}}`.
pub fn presence_result(members: &[Member]) -> Value {
    let presence: serde_json::Map<String, Value> = members
        .iter()
        .map(|member| (member.client.clone(), member.info()))
        .collect();
    json!({ "presence": presence })
}

/// The result of `presence_stats`: `{"num_clients":N,"num_users":M}`.
pub fn stats_result(members: &[Member]) -> Value {
    let users: std::collections::HashSet<&str> =
        members.iter().map(|member| member.user.as_str()).collect();
    json!({"num_clients": members.len(), "num_users": users.len()})
}
