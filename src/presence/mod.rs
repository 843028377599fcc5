//! Presence: who is online in each account, shared by every gateway process through the
//! `cable_presence` table.
//!
//! - A subscriber is online from its subscribe until `CABLE_PRESENCE_TTL` after its last sign
//!   of life. A live connection is a sign of life: every process refreshes `seen_at` for all
//!   of its live subscriptions every heartbeat (TTL / 3; one statement per 1,000 of them),
//!   so a browser that throttles background timers cannot flap an agent offline. A
//!   connection is alive until the moment it ends, not just until its last heartbeat: the
//!   presence task watches the subscriptions it answered and, when one ends, refreshes its
//!   principal's row once more (an update only; it never brings anyone online), so the TTL
//!   counts from the departure.
//!   (Ends are noticed at each sweep, so this costs one scan of this process's subscriptions
//!   per sweep period.) A process that dies without a word cannot do that; its subscribers
//!   go offline up to one heartbeat period earlier than TTL after its death.
//! - Online means "has a row". A row is inserted by whichever process first sees the principal
//!   and deleted by whichever process's sweeper first finds it past the TTL. PostgreSQL hands
//!   each insert and each delete to exactly one statement, and that statement announces the
//!   change (`NOTIFY cable_presence, '<account id>'`) in the same transaction: every change is
//!   announced exactly once, however many processes run.
//! - Every process LISTENs for those announcements and pushes a fresh online set to its own user
//!   subscriptions of the account, coalesced to about one push per second per account and
//!   bounded in bytes: after a push of B bytes (online set × recipients) the account's next push
//!   waits max(1 s, B / `CABLE_PRESENCE_PUSH_BUDGET`). The online set is encoded once per push.
//! - Answers (`presence.update` after a confirm, and to `update_presence`) are batched: the
//!   principals asking are marked seen in one statement, then one online-set query per account
//!   is encoded once for user subscriptions and once for contact subscriptions. Answers are
//!   never delayed by the push budget.
//!
//! The rules themselves (who is in an online set, when a row expires, every period) are pure
//! functions in [`rules`]; this module holds the SQL and the task that applies them.

pub mod chatwoot;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::PresenceKey;
use crate::config::tuning::{PRESENCE_CHUNK, PRESENCE_MAX_BATCH, PRESENCE_PUSH_CHECK};
use crate::delivery::joined;
use crate::delivery::Subscription;
use crate::metrics::Metrics;
use crate::router::Router;
use chatwoot::ChatwootPresence;
use rules::{AccountUser, OnlineSet};

/// The channel presence changes are announced on (payload: the account id).
pub const CHANNEL: &str = "cable_presence";

/// `keys` (in [`PresenceKey::lock_order`]) as the three parallel arrays the statements unnest.
fn columns(keys: &[PresenceKey]) -> (Vec<i64>, Vec<&'static str>, Vec<i64>) {
    let accounts = keys.iter().map(|k| k.account_id).collect();
    let kinds = keys
        .iter()
        .map(|k| if k.is_user { "u" } else { "c" })
        .collect();
    let ids = keys.iter().map(|k| k.id).collect();
    (accounts, kinds, ids)
}

/// The presence state sessions and the LISTEN connection reach; [`Presence::run`] is its task.
pub struct Presence {
    pool: PgPool,
    ttl: Duration,
    metrics: Arc<Metrics>,
    push_budget: u64,
    answers: mpsc::UnboundedSender<Arc<Subscription>>,
    /// Accounts whose online set changed and that await a push.
    dirty: Mutex<HashSet<i64>>,
    /// Chatwoot's ONLINE_PRESENCE keys in Redis, when they are kept.
    chatwoot: Option<ChatwootPresence>,
}

/// The queue of subscriptions waiting for an answer, owned by the presence task.
pub struct Answers(mpsc::UnboundedReceiver<Arc<Subscription>>);

impl Presence {
    pub fn new(
        pool: PgPool,
        ttl: Duration,
        push_budget: u64,
        metrics: Arc<Metrics>,
        chatwoot: Option<ChatwootPresence>,
    ) -> (Arc<Presence>, Answers) {
        let (answers, queue) = mpsc::unbounded_channel();
        let presence = Presence {
            pool,
            ttl,
            metrics,
            push_budget: push_budget.max(1),
            answers,
            dirty: Mutex::new(HashSet::new()),
            chatwoot,
        };
        (Arc::new(presence), Answers(queue))
    }

    /// Marks `sub`'s principal seen and answers it with a `presence.update`.
    pub fn answer(&self, sub: Arc<Subscription>) {
        let _ = self.answers.send(sub);
    }

    /// A sign of life of `keys` (in [`PresenceKey::lock_order`]): their rows in PostgreSQL,
    /// and Chatwoot's keys in Redis.
    async fn seen(&self, keys: &[PresenceKey]) -> Result<(), sqlx::Error> {
        if let Some(chatwoot) = &self.chatwoot {
            chatwoot.seen(keys);
        }
        self.mark_seen(keys).await
    }

    /// Refreshes `seen_at` of `keys` (in [`PresenceKey::lock_order`]; one statement per
    /// [`PRESENCE_CHUNK`], so a heartbeat of a busy process never builds the arrays of all its
    /// subscribers at once). New rows (principals coming online) are announced on [`CHANNEL`].
    pub async fn mark_seen(&self, keys: &[PresenceKey]) -> Result<(), sqlx::Error> {
        for chunk in keys.chunks(PRESENCE_CHUNK) {
            let (accounts, kinds, ids) = columns(chunk);
            sqlx::query(
                "WITH seen AS (
                   INSERT INTO cable_presence (account_id, kind, principal_id, seen_at)
                   SELECT a, k, i, now() FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS t(a, k, i)
                   ON CONFLICT (account_id, kind, principal_id) DO UPDATE SET seen_at = excluded.seen_at
                   RETURNING account_id, (xmax = 0) AS inserted)
                 SELECT pg_notify('cable_presence', account_id::text)
                   FROM (SELECT DISTINCT account_id FROM seen WHERE inserted) AS online",
            )
            .bind(accounts)
            .bind(kinds)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Refreshes `seen_at` of the rows of `keys` (in [`PresenceKey::lock_order`]) that exist,
    /// one statement per [`PRESENCE_CHUNK`]: the last sign of life of subscriptions that just
    /// ended. Never inserts, so never announces.
    pub async fn touch(&self, keys: &[PresenceKey]) -> Result<(), sqlx::Error> {
        for chunk in keys.chunks(PRESENCE_CHUNK) {
            let (accounts, kinds, ids) = columns(chunk);
            sqlx::query(
                "UPDATE cable_presence p SET seen_at = now()
                   FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS t(a, k, i)
                  WHERE p.account_id = t.a AND p.kind = t.k::char(1) AND p.principal_id = t.i",
            )
            .bind(accounts)
            .bind(kinds)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Deletes rows past the TTL and announces each account that lost someone. Returns how
    /// many rows went.
    pub async fn sweep(&self) -> Result<u64, sqlx::Error> {
        static SWEEP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH gone AS (
                   DELETE FROM cable_presence p WHERE {}
                   RETURNING account_id)
                 SELECT account_id, pg_notify('cable_presence', account_id::text)::text FROM gone",
                rules::expired_sql("$1")
            )
        });
        let gone: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(SWEEP.as_str()))
            .bind(self.ttl.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        Ok(gone.len() as u64)
    }

    /// An announcement arrived: `payload` is the account id whose online set changed.
    pub fn changed(&self, payload: &str) {
        match payload.parse::<i64>() {
            Ok(account_id) => {
                self.dirty.lock().insert(account_id);
            }
            Err(_) => tracing::debug!(payload, "presence: ignoring a malformed announcement"),
        }
    }

    /// Announcements may have been missed (the LISTEN connection was down): `accounts`, those
    /// this process serves now, get a push. Taken at the moment of reconnecting, not at the
    /// next push: a subscription made meanwhile is answered by its own answer, and a push
    /// computed before that answer marked it online would reach it first, without itself.
    pub fn resync(&self, accounts: Vec<i64>) {
        self.dirty.lock().extend(accounts);
    }

    /// The account's online set as of now ([`rules::online_set`]). Only users who may be in
    /// it are read: those with a row, and those whose `auto_offline` is false.
    pub async fn online_set(&self, account_id: i64) -> Result<OnlineSet, sqlx::Error> {
        static ONLINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let live = rules::live_sql("$2");
            format!(
                "SELECT 'u'::text, au.user_id::bigint, au.availability::int, au.auto_offline,
                        p.principal_id IS NOT NULL
                   FROM account_users au
                   LEFT JOIN cable_presence p
                     ON p.account_id = $1 AND p.kind = 'u' AND p.principal_id = au.user_id
                        AND {live}
                  WHERE au.account_id = $1 AND (au.auto_offline = false OR p.principal_id IS NOT NULL)
                 UNION ALL
                 SELECT 'c'::text, p.principal_id, 0, true, true
                   FROM cable_presence p
                  WHERE p.account_id = $1 AND p.kind = 'c' AND {live}"
            )
        });
        let rows: Vec<(String, i64, i32, bool, bool)> =
            sqlx::query_as(sqlx::AssertSqlSafe(ONLINE.as_str()))
                .bind(account_id)
                .bind(self.ttl.as_secs_f64())
                .fetch_all(&self.pool)
                .await?;
        let mut users = Vec::new();
        let mut contacts = Vec::new();
        for (kind, id, availability, auto_offline, online) in rows {
            if kind == "u" {
                users.push(AccountUser {
                    user_id: id,
                    availability,
                    auto_offline,
                    online,
                });
            } else {
                contacts.push(id);
            }
        }
        Ok(rules::online_set(&users, &contacts))
    }

    /// The last sign of life of every subscription on this process (shutdown: they are about
    /// to leave, and reconnect elsewhere).
    pub async fn depart_all(&self, router: &Router) -> Result<(), sqlx::Error> {
        self.touch(&router.presence_keys()).await
    }

    /// Answers a batch: one upsert, one online set per account, one encoding per audience.
    async fn answer_batch(&self, batch: Vec<Arc<Subscription>>) {
        let mut keys: Vec<PresenceKey> = batch.iter().map(|s| s.presence).collect();
        PresenceKey::lock_order(&mut keys);
        if let Err(e) = self.seen(&keys).await {
            tracing::warn!(error = %e, "presence: could not mark subscribers seen");
        }
        let mut bodies: HashMap<(i64, bool, &'static [u8]), Bytes> = HashMap::new();
        let mut sets: HashMap<i64, Option<OnlineSet>> = HashMap::new();
        for sub in batch {
            if !sub.is_active() {
                continue;
            }
            let account_id = sub.presence.account_id;
            if let std::collections::hash_map::Entry::Vacant(slot) = sets.entry(account_id) {
                let set = self.online_set(account_id).await;
                if let Err(e) = &set {
                    tracing::warn!(error = %e, account_id, "presence: online set query failed");
                }
                slot.insert(set.ok());
            }
            let Some(set) = &sets[&account_id] else {
                continue;
            };
            let body = bodies
                .entry((account_id, sub.presence.is_user, sub.suffix))
                .or_insert_with(|| joined(&set.body(account_id, sub.presence.is_user), sub.suffix))
                .clone();
            sub.reply(body);
        }
    }

    /// Pushes a fresh online set to this process's user subscriptions of every changed account
    /// whose budget allows it now. Returns the accounts pushed.
    async fn push_due(&self, router: &Router, next_push: &mut HashMap<i64, Instant>) -> usize {
        let now = Instant::now();
        let due: Vec<i64> = {
            let mut dirty = self.dirty.lock();
            let due: Vec<i64> = dirty
                .iter()
                .copied()
                .filter(|a| next_push.get(a).is_none_or(|at| *at <= now))
                .collect();
            for account_id in &due {
                dirty.remove(account_id);
            }
            due
        };
        next_push.retain(|_, at| *at > now);
        let mut pushed = 0;
        for account_id in due {
            let mut recipients = Vec::new();
            router.for_each_user_subscription(account_id, |sub| recipients.push(sub.clone()));
            if recipients.is_empty() {
                continue;
            }
            let set = match self.online_set(account_id).await {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(error = %e, account_id, "presence: online set query for a push failed; will retry");
                    self.dirty.lock().insert(account_id);
                    continue;
                }
            };
            let body = set.body(account_id, true);
            let bytes = (body.len() * recipients.len()) as u64;
            // Joined with each wire protocol's suffix once, not once per recipient.
            let mut framed: HashMap<&'static [u8], Bytes> = HashMap::new();
            for sub in recipients {
                let body = framed
                    .entry(sub.suffix)
                    .or_insert_with(|| joined(&body, sub.suffix))
                    .clone();
                sub.reply(body);
            }
            next_push.insert(
                account_id,
                Instant::now() + rules::push_wait(bytes, self.push_budget),
            );
            self.metrics.presence_pushes.inc();
            pushed += 1;
        }
        pushed
    }

    /// The presence task: answers, the heartbeat for every live subscription, the sweeper and
    /// the pushes.
    pub async fn run(self: Arc<Self>, answers: Answers, router: Arc<Router>) {
        let Answers(mut queue) = answers;
        let every = |period: Duration| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let mut heartbeat = every(rules::heartbeat_period(self.ttl));
        let mut sweep = every(rules::sweep_period(self.ttl));
        let mut push = every(PRESENCE_PUSH_CHECK);
        let mut next_push = HashMap::new();
        // Subscriptions answered here, until they end (see the module doc).
        let mut watched: HashMap<u64, Arc<Subscription>> = HashMap::new();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                taken = queue.recv_many(&mut batch, PRESENCE_MAX_BATCH) => {
                    if taken == 0 {
                        return;
                    }
                    let batch = std::mem::take(&mut batch);
                    for sub in &batch {
                        if sub.is_active() {
                            watched.entry(sub.id).or_insert_with(|| sub.clone());
                        }
                    }
                    self.answer_batch(batch).await;
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = self.seen(&router.presence_keys()).await {
                        tracing::warn!(error = %e, "presence: heartbeat failed");
                    }
                }
                _ = sweep.tick() => {
                    let mut departed = Vec::new();
                    watched.retain(|_, sub| {
                        let live = sub.is_active();
                        if !live {
                            departed.push(sub.presence);
                        }
                        live
                    });
                    PresenceKey::lock_order(&mut departed);
                    if let Err(e) = self.touch(&departed).await {
                        tracing::warn!(error = %e, "presence: could not mark departures seen");
                    }
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "presence: sweep failed");
                    }
                }
                _ = push.tick() => {
                    self.push_due(&router, &mut next_push).await;
                }
            }
        }
    }
}
