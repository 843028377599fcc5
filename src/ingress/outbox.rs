//! Reading the `cable_events` outbox: lossless, exactly once, in commit order.
//!
//! # The doorbell
//! A statement trigger on `cable_events` runs `NOTIFY cable_events` (no payload). PostgreSQL
//! delivers it at commit, to the LISTEN connection ([`crate::listen`]), which rings the
//! reader's doorbell, and rings it once more each time it (re)connects. A notification only
//! wakes the reader; the rows hold the data. A lost notification therefore costs latency (the
//! reader also polls every `CABLE_OUTBOX_POLL`), never an event, and payloads have no
//! 8000-byte limit.
//!
//! # Why no row is skipped or read twice
//! `bigserial` ids are handed out at insert, not at commit, so "read everything with an id
//! above the last one seen" loses a row whose transaction commits after a higher id was read.
//! Instead every row records the id of the transaction that inserted it (`xid`, default
//! `pg_current_xact_id()`), and the reader remembers the MVCC snapshot of its previous read,
//! `prev`. Each read takes a new snapshot `cur` and fetches exactly the rows that are visible
//! in `cur` but were not visible in `prev`:
//!
//! - a row of a transaction that was still running at `prev` (its xid is in `prev`'s in-progress
//!   list) or had not started yet (xid ≥ `prev.xmax`), and
//! - whose transaction is visible in `cur` (committed before `cur` was taken).
//!
//! Every committed row becomes visible in exactly one snapshot interval (`prev`, `cur`], so it is
//! read exactly once, whatever order transactions commit in, however long one stays open, and
//! wherever the LISTEN connection was in the meantime: the snapshot, not the notification, is
//! the cursor. A row's transaction id never changes and xid8 does not wrap around, so this also
//! holds across a PostgreSQL restart (transactions open during a crash are aborted and their
//! rows never become visible). Aborted transactions leave nothing to wait for.
//!
//! # Order
//! Rows are dispatched in the order their transactions became visible to the reader; within one
//! read (transactions that committed between two reads), by id. Each subscription's queue keeps
//! that order to the socket.
//!
//! # Pages
//! A read fetches at most [`OUTBOX_PAGE`] rows at a time: later pages reuse `cur` (passed back as text)
//! and continue after the last id, so a backlog never has to fit in memory at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::tuning::{OUTBOX_PAGE, OUTBOX_RETRY, PRUNE_PERIOD_MAX, PRUNE_PERIOD_MIN};
use crate::delivery::{Event, Message};
use crate::metrics::{Metrics, ReasonLabels};
use crate::router::Router;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "cable_events";

/// Where the reader is: the MVCC snapshot of the previous complete read (everything visible in it
/// has been dispatched) and, while a read is under way, its snapshot and the last id dispatched.
#[derive(Debug, Clone)]
pub struct Cursor {
    snapshot: String,
    in_progress: Option<(String, i64)>,
}

impl Cursor {
    /// Starts at "now": events committed from here on are read.
    pub async fn now(pool: &PgPool) -> Result<Cursor, sqlx::Error> {
        let (snapshot,): (String,) = sqlx::query_as("SELECT pg_current_snapshot()::text")
            .fetch_one(pool)
            .await?;
        Ok(Cursor {
            snapshot,
            in_progress: None,
        })
    }
}

type Row = (
    String,           // cur snapshot
    Option<i64>,      // id
    Option<i64>,      // account_id
    Option<String>,   // event
    Option<String>,   // data, with account_id added; NULL when not an object
    Option<i64>,      // inbox_id
    Option<Vec<i64>>, // contact_inbox_ids
    Option<i64>,      // user_id
    Option<bool>,     // private
    Option<i64>,      // actor_user_id
    Option<i64>,      // actor_contact_inbox_id
    Option<String>,   // stream
    Option<f64>,      // created_at, unix seconds
    Option<i32>,      // data's length as stored, when account_id was added (else data's)
);

const READ: &str = "
WITH cur AS MATERIALIZED (
  SELECT COALESCE($2::text::pg_snapshot, pg_current_snapshot()) AS snap
), prev AS MATERIALIZED (
  SELECT $1::text::pg_snapshot AS snap
), fresh AS (
  SELECT e.* FROM cable_events e, prev
   WHERE e.xid >= pg_snapshot_xmax(prev.snap) AND e.id > $3
  UNION ALL
  SELECT e.* FROM cable_events e, prev
   WHERE e.xid IN (SELECT pg_snapshot_xip(prev.snap)) AND e.id > $3
)
SELECT cur.snap::text, f.id, f.account_id, f.event,
       CASE WHEN jsonb_typeof(f.data) = 'object' THEN
         (CASE WHEN f.data ? 'account_id' THEN f.data
               ELSE f.data || jsonb_build_object('account_id', f.account_id) END)::text
       END,
       f.inbox_id, f.contact_inbox_ids, f.user_id, f.private, f.actor_user_id,
       f.actor_contact_inbox_id, f.stream, extract(epoch FROM f.created_at)::float8,
       CASE WHEN NOT f.data ? 'account_id' THEN octet_length(f.data::text) END
  FROM cur
  LEFT JOIN LATERAL (
    SELECT * FROM fresh WHERE pg_visible_in_snapshot(fresh.xid, cur.snap) ORDER BY fresh.id LIMIT $4
  ) f ON true
 ORDER BY f.id";

/// Why an outbox row is skipped (logged and counted; the reader goes on). The table's CHECK
/// constraints refuse the first two at insert; rows from before them may still hold them.
/// The size limit applies to `data` as the backend stored it, before `account_id` is added.
fn malformed(row: &Row, max_data: usize) -> Option<&'static str> {
    let stored_len = |data: &String| row.13.map_or(data.len(), |len| len.max(0) as usize);
    match row {
        (_, _, _, Some(event), ..) if event.is_empty() => Some("empty_event"),
        (_, _, _, _, None, ..) => Some("data_not_object"),
        (_, _, _, _, Some(data), ..) if stored_len(data) > max_data => Some("too_large"),
        _ => None,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Builds the event once: the body every recipient's prefix is followed by.
fn event_from(row: Row) -> Option<Event> {
    let (
        _,
        id,
        account_id,
        event,
        data,
        inbox_id,
        contact_inbox_ids,
        user_id,
        private,
        actor_user_id,
        actor_contact_inbox_id,
        stream,
        created_at,
        _,
    ) = row;
    let (id, account_id, event, data) = (id?, account_id?, event?, data?);
    let mut body = String::with_capacity(data.len() + event.len() + 24);
    body.push_str("{\"event\":");
    body.push_str(&serde_json::to_string(&event).expect("a string always serializes"));
    body.push_str(",\"data\":");
    body.push_str(&data);
    body.push_str("}}");
    let mut contact_inbox_ids = contact_inbox_ids.unwrap_or_default();
    contact_inbox_ids.sort_unstable();
    contact_inbox_ids.dedup();
    Some(Event {
        id,
        account_id,
        event,
        inbox_id,
        contact_inbox_ids,
        user_id,
        private: private.unwrap_or(false),
        actor_user_id,
        actor_contact_inbox_id,
        stream,
        message: Arc::new(Message {
            body: Bytes::from(body),
            created_at: created_at.unwrap_or_else(unix_now),
        }),
    })
}

/// Reads every row that became visible since `cursor` and hands each event to `dispatch`,
/// then advances the cursor. On error the read can simply be retried: the cursor remembers the
/// page it was on, so nothing already dispatched is dispatched again.
pub async fn read(
    pool: &PgPool,
    cursor: &mut Cursor,
    metrics: &Metrics,
    max_data: usize,
    mut dispatch: impl FnMut(Event),
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let (cur, after) = match &cursor.in_progress {
            Some((cur, after)) => (Some(cur.clone()), *after),
            None => (None, 0),
        };
        let rows: Vec<Row> = sqlx::query_as(READ)
            .bind(&cursor.snapshot)
            .bind(&cur)
            .bind(after)
            .bind(OUTBOX_PAGE)
            .fetch_all(pool)
            .await?;
        let Some(snapshot) = rows.first().map(|row| row.0.clone()) else {
            return Ok(total);
        };
        let mut page = 0;
        for row in rows {
            let Some(id) = row.1 else { continue };
            cursor.in_progress = Some((snapshot.clone(), id));
            page += 1;
            metrics.events_read.inc();
            if let Some(reason) = malformed(&row, max_data) {
                tracing::warn!(event_id = id, reason, "skipping malformed outbox row");
                metrics
                    .events_skipped
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                continue;
            }
            if let Some(event) = event_from(row) {
                metrics
                    .outbox_lag
                    .observe((unix_now() - event.message.created_at).max(0.0));
                dispatch(event);
            }
        }
        total += page;
        if page < OUTBOX_PAGE as usize {
            // Complete: everything visible in `snapshot` has been dispatched.
            cursor.snapshot = snapshot;
            cursor.in_progress = None;
            return Ok(total);
        }
    }
}

/// The reader task: waits for the doorbell (or `poll`), reads, dispatches to the router.
pub async fn run(
    pool: PgPool,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    mut cursor: Cursor,
    doorbell: Arc<Notify>,
    poll: Duration,
    max_data: usize,
) {
    let mut scratch = Vec::new();
    loop {
        let dispatch = |event: Event| {
            router.dispatch(&Arc::new(event), &mut scratch);
        };
        if let Err(e) = read(&pool, &mut cursor, &metrics, max_data, dispatch).await {
            tracing::warn!(error = %e, "outbox read failed; retrying");
            tokio::time::sleep(OUTBOX_RETRY).await;
            continue;
        }
        tokio::select! {
            _ = doorbell.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Deletes events older than `retention`, every `retention / 10` (within bounds).
pub async fn prune(pool: PgPool, metrics: Arc<Metrics>, retention: Duration) {
    let period = (retention / 10).clamp(PRUNE_PERIOD_MIN, PRUNE_PERIOD_MAX);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match sqlx::query(
            "DELETE FROM cable_events WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&pool)
        .await
        {
            Ok(done) => {
                metrics.events_pruned.inc_by(done.rows_affected());
            }
            Err(e) => tracing::warn!(error = %e, "pruning old events failed"),
        }
    }
}
