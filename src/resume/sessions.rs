//! Sessions of the extended protocol, in `cable_sessions`, so that any process of the database
//! can restore one by its `sid`.
//!
//! - A session's row holds the raw identifiers of its subscriptions. It is written when they
//!   change ([`Sessions::save`]), refreshed every `CABLE_SESSION_TTL / 3` while the connection
//!   lives, and given `CABLE_SESSION_TTL` more when it closes: a process that dies leaves rows
//!   that expire on their own. Writes go through one task, batched, off the command path.
//! - [`Sessions::take`] marks a row `taken` and returns its identifiers, once: a sid is
//!   restored at most once. It also notifies `cable_sessions` with the sid, and the process
//!   still holding the old socket (its client reconnected before the socket was seen dead)
//!   closes it ([`Sessions::taken`]). A taken row is never written again.
//! - Expired rows are deleted by the outbox pruner.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::config::tuning::{OUTBOX_RETRY, SESSION_MAX_BATCH};
use crate::delivery::{CloseReason, SendQueue};

/// The channel a restore notifies with the sid it took.
pub const CHANNEL: &str = "cable_sessions";

enum Write {
    Save(Arc<str>, Vec<Arc<str>>),
    Closed(Arc<str>),
}

pub struct Sessions {
    pool: PgPool,
    ttl: Duration,
    live: Mutex<HashMap<Arc<str>, Weak<SendQueue>>>,
    writes: mpsc::UnboundedSender<Write>,
}

impl Sessions {
    /// The sessions, and the task that writes them (to be spawned).
    pub fn new(
        pool: PgPool,
        ttl: Duration,
    ) -> (Arc<Sessions>, impl std::future::Future<Output = ()>) {
        let (writes, queued) = mpsc::unbounded_channel();
        let sessions = Arc::new(Sessions {
            pool,
            ttl,
            live: Mutex::new(HashMap::new()),
            writes,
        });
        let task = Arc::downgrade(&sessions);
        (sessions, write_task(task, queued))
    }

    /// A connection of this process now holds `sid`.
    pub fn opened(&self, sid: &Arc<str>, queue: &Arc<SendQueue>) {
        self.live.lock().insert(sid.clone(), Arc::downgrade(queue));
    }

    /// The subscriptions of `sid` are now these.
    pub fn save(&self, sid: &Arc<str>, identifiers: Vec<Arc<str>>) {
        let _ = self.writes.send(Write::Save(sid.clone(), identifiers));
    }

    /// The connection holding `sid` closed: restorable for `CABLE_SESSION_TTL` from now.
    pub fn closed(&self, sid: &Arc<str>) {
        self.live.lock().remove(sid);
        let _ = self.writes.send(Write::Closed(sid.clone()));
    }

    /// Takes the session `sid` for restoring: its subscriptions' raw identifiers, or `None`
    /// when there is no such session, it expired or it was already taken.
    pub async fn take(&self, sid: &str) -> Result<Option<Vec<String>>, sqlx::Error> {
        let taken: Option<sqlx::types::Json<Vec<String>>> = sqlx::query_scalar(
            "WITH taken AS (
               UPDATE cable_sessions SET taken = true
                WHERE sid = $1 AND NOT taken AND expires_at > now()
               RETURNING sid, subscriptions
             )
             SELECT subscriptions FROM taken,
                    LATERAL (SELECT pg_notify('cable_sessions', taken.sid)) notified",
        )
        .bind(sid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.map(|json| json.0))
    }

    /// Another connection restored `sid` (a `cable_sessions` notification): the old socket,
    /// if this process holds it, is closed.
    pub fn taken(&self, sid: &str) {
        let queue = self
            .live
            .lock()
            .remove(sid)
            .and_then(|queue| queue.upgrade());
        if let Some(queue) = queue {
            tracing::info!(
                session = queue.id,
                "session restored elsewhere; closing its old socket"
            );
            queue.close(CloseReason::Replaced);
        }
    }

    fn live_sids(&self) -> Vec<String> {
        let mut live = self.live.lock();
        live.retain(|_, queue| queue.strong_count() > 0);
        live.keys().map(|sid| sid.to_string()).collect()
    }
}

/// Writes saves and closes in batches; refreshes the live sessions every TTL / 3.
async fn write_task(sessions: Weak<Sessions>, mut queued: mpsc::UnboundedReceiver<Write>) {
    let Some((pool, ttl)) = sessions.upgrade().map(|s| (s.pool.clone(), s.ttl)) else {
        return;
    };
    let mut refresh = tokio::time::interval((ttl / 3).max(Duration::from_secs(1)));
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = queued.recv_many(&mut batch, SESSION_MAX_BATCH) => {
                if n == 0 {
                    return;
                }
            }
            _ = refresh.tick() => {
                let Some(sessions) = sessions.upgrade() else { return };
                let live = sessions.live_sids();
                drop(sessions);
                if !live.is_empty() {
                    if let Err(e) = extend(&pool, &live, ttl).await {
                        tracing::warn!(error = %e, "refreshing sessions failed");
                    }
                }
                continue;
            }
        }
        // Saves: the last one per sid wins (one statement cannot update a row twice).
        let mut saves: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
        let mut closed = Vec::new();
        for write in batch.drain(..) {
            match write {
                Write::Save(sid, identifiers) => {
                    saves.insert(sid, identifiers);
                }
                Write::Closed(sid) => closed.push(sid.to_string()),
            }
        }
        let (sids, subscriptions): (Vec<String>, Vec<String>) = saves
            .into_iter()
            .map(|(sid, ids)| {
                let json = serde_json::to_string(&ids).expect("strings always serialize");
                (sid.to_string(), json)
            })
            .unzip();
        loop {
            let result = async {
                if !sids.is_empty() {
                    save(&pool, &sids, &subscriptions, ttl).await?;
                }
                if !closed.is_empty() {
                    extend(&pool, &closed, ttl).await?;
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "writing sessions failed; retrying");
                    tokio::time::sleep(OUTBOX_RETRY).await;
                }
            }
        }
    }
}

async fn save(
    pool: &PgPool,
    sids: &[String],
    subscriptions: &[String],
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cable_sessions (sid, subscriptions, expires_at)
         SELECT s, j::jsonb, now() + make_interval(secs => $3)
           FROM unnest($1::text[], $2::text[]) AS u(s, j)
         ON CONFLICT (sid) DO UPDATE
           SET subscriptions = EXCLUDED.subscriptions, expires_at = EXCLUDED.expires_at
           WHERE NOT cable_sessions.taken",
    )
    .bind(sids)
    .bind(subscriptions)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

async fn extend(pool: &PgPool, sids: &[String], ttl: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cable_sessions SET expires_at = now() + make_interval(secs => $2)
          WHERE sid = ANY($1) AND NOT taken",
    )
    .bind(sids)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
