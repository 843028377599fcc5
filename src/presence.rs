//! Presence: who is online in each account, shared by every gateway process through the
//! `cable_presence` table.
//!
//! - A subscriber is online from its subscribe until `CABLE_PRESENCE_TTL` after its last sign
//!   of life. A live connection is a sign of life: every process refreshes `seen_at` for all
//!   of its live subscriptions in one statement per heartbeat (TTL / 3), so a browser that
//!   throttles background timers cannot flap an agent offline. A connection is alive until
//!   the moment it ends, not just until its last heartbeat: the presence task watches the
//!   subscriptions it answered and, when one ends, refreshes its principal's row once more
//!   (an update only; it never brings anyone online), so the TTL counts from the departure.
//!   (Ends are noticed at each sweep, so this costs one scan of this process's subscriptions
//!   per sweep period.) A process that dies without a word cannot do that; its subscribers
//!   go offline up to one heartbeat period earlier than TTL after its death.
//! - Online means "has a row". A row is inserted by whichever process first sees the principal
//!   and deleted by whichever process's sweeper first finds it past the TTL. PostgreSQL hands
//!   each insert and each delete to exactly one statement, and that statement announces the
//!   change (`NOTIFY cable_presence, '<account id>'`) in the same transaction: every change is
//!   announced exactly once, however many processes run.
//! - Every process LISTENs for those announcements and pushes a fresh snapshot to its own user
//!   subscriptions of the account, coalesced to about one push per second per account and
//!   bounded in bytes: after a push of B bytes (snapshot × recipients) the account's next push
//!   waits max(1 s, B / `CABLE_PRESENCE_PUSH_BUDGET`). The snapshot is encoded once per push.
//! - Answers (`presence.update` after a confirm, and to `update_presence`) are batched: the
//!   principals asking are marked seen in one statement, then one snapshot query per account
//!   is encoded once for user subscriptions and once for contact subscriptions. Answers are
//!   never delayed by the push budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::router::{Router, Subscription};
use crate::session::Outbound;

/// Whose presence a subscription keeps alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PresenceKey {
    pub account_id: i64,
    /// A user id, or a contact id (not the contact session's id).
    pub id: i64,
    pub is_user: bool,
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

/// `users` and `contacts` of one account's snapshot.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub users: BTreeMap<i64, &'static str>,
    pub contacts: BTreeMap<i64, &'static str>,
}

impl Snapshot {
    /// The body of a `presence.update` message (after a subscription's prefix).
    pub fn body(&self, account_id: i64, for_user: bool) -> Bytes {
        let users: Map<String, Value> = self
            .users
            .iter()
            .map(|(id, s)| (id.to_string(), json!(s)))
            .collect();
        let mut data = json!({ "account_id": account_id, "users": users });
        if for_user {
            let contacts: Map<String, Value> = self
                .contacts
                .iter()
                .map(|(id, s)| (id.to_string(), json!(s)))
                .collect();
            data["contacts"] = Value::Object(contacts);
        }
        let mut body = json!({ "event": "presence.update", "data": data }).to_string();
        body.push('}');
        body.into()
    }
}

/// The channel presence changes are announced on (payload: the account id).
pub const CHANNEL: &str = "cable_presence";
/// How often changed accounts are checked for a due push.
const PUSH_CHECK: Duration = Duration::from_millis(100);

/// `keys` as the three parallel arrays the statements unnest, sorted by primary key: every
/// process then locks rows in the same order, so concurrent heartbeats of overlapping sets
/// (the same agent connected to two processes) cannot deadlock each other.
fn columns(keys: &HashSet<PresenceKey>) -> (Vec<i64>, Vec<String>, Vec<i64>) {
    let mut sorted: Vec<(i64, &'static str, i64)> = keys
        .iter()
        .map(|k| (k.account_id, if k.is_user { "u" } else { "c" }, k.id))
        .collect();
    sorted.sort_unstable();
    let accounts = sorted.iter().map(|k| k.0).collect();
    let kinds = sorted.iter().map(|k| k.1.to_string()).collect();
    let ids = sorted.iter().map(|k| k.2).collect();
    (accounts, kinds, ids)
}

fn availability(value: i32) -> &'static str {
    match value {
        1 => "offline",
        2 => "busy",
        _ => "online",
    }
}

pub struct Presence {
    pool: PgPool,
    ttl: Duration,
    metrics: Arc<Metrics>,
    push_budget: u64,
    answers: mpsc::UnboundedSender<Arc<Subscription>>,
    queue: Mutex<Option<mpsc::UnboundedReceiver<Arc<Subscription>>>>,
    /// Accounts whose online set changed and that await a push.
    dirty: Mutex<HashSet<i64>>,
}

impl Presence {
    pub fn new(pool: PgPool, ttl: Duration, push_budget: u64, metrics: Arc<Metrics>) -> Presence {
        let (answers, queue) = mpsc::unbounded_channel();
        Presence {
            pool,
            ttl,
            metrics,
            push_budget: push_budget.max(1),
            answers,
            queue: Mutex::new(Some(queue)),
            dirty: Mutex::new(HashSet::new()),
        }
    }

    /// Marks `sub`'s principal seen and answers it with a `presence.update`.
    pub fn answer(&self, sub: Arc<Subscription>) {
        let _ = self.answers.send(sub);
    }

    /// Refreshes `seen_at` of `keys` (one statement).
    /// New rows (principals coming online) are announced on [`CHANNEL`].
    pub async fn mark_seen(&self, keys: &HashSet<PresenceKey>) -> Result<(), sqlx::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let (accounts, kinds, ids) = columns(keys);
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
        Ok(())
    }

    /// Refreshes `seen_at` of the rows of `keys` that exist (one statement): the last sign of
    /// life of subscriptions that just ended. Never inserts, so never announces.
    pub async fn touch(&self, keys: &HashSet<PresenceKey>) -> Result<(), sqlx::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let (accounts, kinds, ids) = columns(keys);
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
        Ok(())
    }

    /// Deletes rows past the TTL and announces each account that lost someone. Returns how
    /// many rows went.
    pub async fn sweep(&self) -> Result<u64, sqlx::Error> {
        let gone: Vec<(i64, String)> = sqlx::query_as(
            "WITH gone AS (
               DELETE FROM cable_presence WHERE seen_at < now() - make_interval(secs => $1)
               RETURNING account_id)
             SELECT account_id, pg_notify('cable_presence', account_id::text)::text FROM gone",
        )
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

    /// Announcements may have been missed (the LISTEN connection was down): push every
    /// account this process serves.
    pub fn resync(&self, router: &Router) {
        self.dirty.lock().extend(router.accounts());
    }

    /// The account's online set as of now.
    pub async fn snapshot(&self, account_id: i64) -> Result<Snapshot, sqlx::Error> {
        let rows: Vec<(String, i64, i32)> = sqlx::query_as(
            "SELECT 'u'::text, au.user_id::bigint, au.availability::int
               FROM account_users au
              WHERE au.account_id = $1
                AND (au.auto_offline = false OR EXISTS (
                      SELECT 1 FROM cable_presence p
                       WHERE p.account_id = $1 AND p.kind = 'u' AND p.principal_id = au.user_id))
             UNION ALL
             SELECT 'c'::text, p.principal_id, 0
               FROM cable_presence p
              WHERE p.account_id = $1 AND p.kind = 'c'",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        let mut snapshot = Snapshot::default();
        for (kind, id, value) in rows {
            if kind == "u" {
                snapshot.users.insert(id, availability(value));
            } else {
                snapshot.contacts.insert(id, "online");
            }
        }
        Ok(snapshot)
    }

    /// Answers a batch: one upsert, one snapshot per account, one encoding per audience.
    async fn answer_batch(&self, batch: Vec<Arc<Subscription>>) {
        let keys: HashSet<PresenceKey> = batch.iter().map(|s| s.presence).collect();
        if let Err(e) = self.mark_seen(&keys).await {
            tracing::warn!(error = %e, "presence: could not mark subscribers seen");
        }
        let mut bodies: HashMap<(i64, bool), Bytes> = HashMap::new();
        let mut snapshots: HashMap<i64, Option<Snapshot>> = HashMap::new();
        for sub in batch {
            if !sub.is_active() {
                continue;
            }
            let account_id = sub.presence.account_id;
            if let std::collections::hash_map::Entry::Vacant(slot) = snapshots.entry(account_id) {
                let snapshot = self.snapshot(account_id).await;
                if let Err(e) = &snapshot {
                    tracing::warn!(error = %e, account_id, "presence: snapshot failed");
                }
                slot.insert(snapshot.ok());
            }
            let Some(snapshot) = &snapshots[&account_id] else {
                continue;
            };
            let body = bodies
                .entry((account_id, sub.presence.is_user))
                .or_insert_with(|| snapshot.body(account_id, sub.presence.is_user))
                .clone();
            sub.session.send(Outbound::Reply {
                sub: sub.clone(),
                body,
            });
        }
    }

    /// Pushes a fresh snapshot to this process's user subscriptions of every changed account
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
            let snapshot = match self.snapshot(account_id).await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    tracing::warn!(error = %e, account_id, "presence: push snapshot failed; will retry");
                    self.dirty.lock().insert(account_id);
                    continue;
                }
            };
            let body = snapshot.body(account_id, true);
            let bytes = (body.len() * recipients.len()) as f64;
            for sub in recipients {
                sub.session.send(Outbound::Reply {
                    sub: sub.clone(),
                    body: body.clone(),
                });
            }
            let wait = Duration::from_secs_f64((bytes / self.push_budget as f64).max(1.0));
            next_push.insert(account_id, Instant::now() + wait);
            self.metrics.presence_pushes.inc();
            pushed += 1;
        }
        pushed
    }

    /// The presence task: answers, the heartbeat for every live subscription, the sweeper and
    /// the pushes.
    pub async fn run(gateway: Arc<Gateway>) {
        let presence = &gateway.presence;
        let Some(mut queue) = presence.queue.lock().take() else {
            return;
        };
        let every = |period: Duration| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let ttl = presence.ttl;
        let mut heartbeat =
            every((ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(10)));
        let mut sweep = every((ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)));
        let mut push = every(PUSH_CHECK);
        let mut next_push = HashMap::new();
        // Subscriptions answered here, until they end (see the module doc).
        let mut watched: HashMap<u64, Arc<Subscription>> = HashMap::new();
        loop {
            tokio::select! {
                first = queue.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match queue.try_recv() {
                            Ok(sub) => batch.push(sub),
                            Err(_) => break,
                        }
                    }
                    for sub in &batch {
                        if sub.is_active() {
                            watched.entry(sub.id).or_insert_with(|| sub.clone());
                        }
                    }
                    presence.answer_batch(batch).await;
                }
                _ = heartbeat.tick() => {
                    let keys: HashSet<PresenceKey> =
                        gateway.router.snapshot().iter().map(|(_, p, _)| PresenceKey::from(p)).collect();
                    if let Err(e) = presence.mark_seen(&keys).await {
                        tracing::warn!(error = %e, "presence: heartbeat failed");
                    }
                }
                _ = sweep.tick() => {
                    let mut departed = HashSet::new();
                    watched.retain(|_, sub| {
                        let live = sub.is_active();
                        if !live {
                            departed.insert(sub.presence);
                        }
                        live
                    });
                    if let Err(e) = presence.touch(&departed).await {
                        tracing::warn!(error = %e, "presence: could not mark departures seen");
                    }
                    if let Err(e) = presence.sweep().await {
                        tracing::warn!(error = %e, "presence: sweep failed");
                    }
                }
                _ = push.tick() => {
                    presence.push_due(&gateway.router, &mut next_push).await;
                }
            }
        }
    }
}
