//! Reading the `cable_events` outbox: lossless, exactly once, in commit order, with positions
//! every gateway process of the database agrees on.
//!
//! # The doorbell
//! A statement trigger on `cable_events` runs `NOTIFY cable_events` (no payload). PostgreSQL
//! delivers it at commit, to the LISTEN connection ([`crate::listen`]), which rings this
//! process's appender ([`append_task`]), and rings it once more each time it (re)connects. A
//! notification only wakes; the rows hold the data. A lost notification therefore costs
//! latency (both tasks also poll every `CABLE_OUTBOX_POLL`), never an event, and payloads have
//! no 8000-byte limit.
//!
//! # Rounds: one commit-order log for every process
//! `bigserial` ids are handed out at insert, not at commit, so "read everything with an id
//! above the last one seen" loses a row whose transaction commits after a higher id was read,
//! and a position made of ids alone would lose it the same way. Instead every row records the
//! transaction that inserted it (`xid`, default `pg_current_xact_id()`), and the outbox is cut
//! into *rounds* (`cable_rounds`): round r holds exactly the rows visible in its MVCC snapshot
//! `snapshot` that were not visible in `prev_snapshot`, the snapshot of round r-1:
//!
//! - a row of a transaction that was still running at `prev_snapshot` (its xid is in the
//!   in-progress list) or had not started yet (xid ≥ its `xmax`), and
//! - whose transaction is visible in `snapshot` (committed before it was taken).
//!
//! Rounds are appended by whichever process hears the doorbell first ([`append`]): under a
//! transaction-scoped advisory lock, so one at a time, each taking its snapshot after the
//! previous round committed. Consecutive snapshots therefore only grow, and every committed row
//! belongs to exactly one round, whatever order transactions commit in and however long one
//! stays open. A row's xid never changes and xid8 does not wrap around, so this holds across
//! PostgreSQL restarts too (transactions open during a crash are aborted and their rows never
//! become visible).
//!
//! # Offsets
//! The rows of round r, ordered by id, are offsets `first_offset ..= first_offset + count - 1`,
//! and round r+1 starts where r ends. An offset is thus a position in commit order that every
//! process computes alike from the database, at any time: live delivery attaches it to each
//! event and history replay ([`crate::resume::replay`]) starts after one. A round's snapshots
//! and count are written once and its rows are only ever deleted by pruning, long after.
//!
//! # Reading
//! Every process reads rounds in order ([`read`]), woken by `NOTIFY cable_rounds` (sent in the
//! appending transaction) or by its own appender, and dispatches each row with its offset.
//! The cursor is (round, last id, last offset), advanced per row, so a failed read is simply
//! retried and nothing is dispatched twice. A read fetches at most [`OUTBOX_PAGE`] rows.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_now;

use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::tuning::{OUTBOX_PAGE, OUTBOX_RETRY, PRUNE_PERIOD_MAX, PRUNE_PERIOD_MIN};
use crate::delivery::{Event, Message, Position};
use crate::metrics::{Metrics, ReasonLabels};
use crate::router::Router;

/// The channel the trigger notifies: rows were inserted.
pub const CHANNEL: &str = "cable_events";
/// The channel an appended round notifies.
pub const ROUNDS_CHANNEL: &str = "cable_rounds";
/// The advisory lock rounds are appended under ("cable_rn").
const APPEND_LOCK: i64 = 0x6361_626c_655f_726e;

/// The epoch of outbox positions, drawn once per database (`cable_epoch`).
pub async fn epoch(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT epoch FROM cable_epoch LIMIT 1")
        .fetch_one(pool)
        .await
}

/// Where the reader is: the round it is in, the last id and offset it dispatched there
/// (`after_id` is `i64::MAX` once the round is complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    round: i64,
    after_id: i64,
    offset: i64,
}

impl Cursor {
    /// Starts after the newest round: events of later rounds are read.
    pub async fn now(pool: &PgPool) -> Result<Cursor, sqlx::Error> {
        let (round, offset): (i64, i64) = sqlx::query_as(
            "SELECT round, first_offset + count - 1 FROM cable_rounds ORDER BY round DESC LIMIT 1",
        )
        .fetch_one(pool)
        .await?;
        Ok(Cursor {
            round,
            after_id: i64::MAX,
            offset,
        })
    }

    /// The offset of the last event dispatched.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

const APPEND: &str = "
WITH last AS (
  SELECT round, snapshot, first_offset + count AS next FROM cable_rounds ORDER BY round DESC LIMIT 1
), cur AS (
  SELECT pg_current_snapshot() AS snap
), fresh AS (
  SELECT count(*)::int AS n FROM last, cur, LATERAL (
    SELECT 1 FROM cable_events e
     WHERE e.xid >= pg_snapshot_xmax(last.snapshot) AND e.xid < pg_snapshot_xmax(cur.snap)
       AND pg_visible_in_snapshot(e.xid, cur.snap)
    UNION ALL
    SELECT 1 FROM cable_events e
     WHERE e.xid = ANY(ARRAY(SELECT pg_snapshot_xip(last.snapshot)))
       AND pg_visible_in_snapshot(e.xid, cur.snap)
  ) rows
), appended AS (
  INSERT INTO cable_rounds (round, prev_snapshot, snapshot, first_offset, count)
  SELECT last.round + 1, last.snapshot, cur.snap, last.next, fresh.n FROM last, cur, fresh
   WHERE fresh.n > 0
  RETURNING round
)
SELECT round FROM appended, LATERAL (SELECT pg_notify('cable_rounds', '')) notified";

/// Appends a round holding every row that became visible since the newest round, if there is
/// any; returns its number. Safe to call from every process at once (see the module doc).
pub async fn append(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A process that hangs while holding the lock must not stall every other one for good.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *tx)
        .await?;
    // READ COMMITTED: this statement's snapshot is taken after the lock was granted, so it
    // sees the round the previous holder committed.
    let round: Option<i64> = sqlx::query_scalar(APPEND).fetch_optional(&mut *tx).await?;
    tx.commit().await?;
    Ok(round)
}

/// An outbox row as read, with its round: what [`event_from`] needs.
pub(crate) type Row = (
    i64,              // round
    i64,              // the round's first offset
    Option<i64>,      // id (NULL: a round without rows left)
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

/// The columns of a [`Row`] after the round's two, for a `cable_events` row `e`.
pub(crate) const EVENT_COLUMNS: &str = "e.id, e.account_id, e.event,
       CASE WHEN jsonb_typeof(e.data) = 'object' THEN
         (CASE WHEN e.data ? 'account_id' THEN e.data
               ELSE e.data || jsonb_build_object('account_id', e.account_id) END)::text
       END,
       e.inbox_id, e.contact_inbox_ids, e.user_id, e.private, e.actor_user_id,
       e.actor_contact_inbox_id, e.stream, extract(epoch FROM e.created_at)::float8,
       CASE WHEN NOT e.data ? 'account_id' THEN octet_length(e.data::text) END";

/// The rows of round `r` (a `cable_rounds` row), as a FROM item `e`.
pub(crate) const ROUND_ROWS: &str = "(
    SELECT e.* FROM cable_events e
     WHERE e.xid >= pg_snapshot_xmax(r.prev_snapshot) AND e.xid < pg_snapshot_xmax(r.snapshot)
       AND pg_visible_in_snapshot(e.xid, r.snapshot)
    UNION ALL
    SELECT e.* FROM cable_events e
     WHERE e.xid = ANY(ARRAY(SELECT pg_snapshot_xip(r.prev_snapshot)))
       AND pg_visible_in_snapshot(e.xid, r.snapshot)
  )";

/// Built once: the reader runs it on every doorbell.
static READ: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT r.round, r.first_offset, {EVENT_COLUMNS}
  FROM (SELECT * FROM cable_rounds WHERE round >= $1 ORDER BY round LIMIT $3) r
  LEFT JOIN LATERAL (
    SELECT * FROM {ROUND_ROWS} e WHERE r.round > $1 OR e.id > $2
  ) e ON true
 ORDER BY r.round, e.id
 LIMIT $3"
    )
});

/// Why an outbox row is skipped (logged and counted; the reader goes on). The table's CHECK
/// constraints refuse the first two at insert; rows from before them may still hold them.
/// The size limit applies to `data` as the backend stored it, before `account_id` is added.
pub(crate) fn malformed(row: &Row, max_data: usize) -> Option<&'static str> {
    let stored_len = |data: &String| row.14.map_or(data.len(), |len| len.max(0) as usize);
    match row {
        (_, _, _, _, Some(event), ..) if event.is_empty() => Some("empty_event"),
        (_, _, _, _, _, None, ..) => Some("data_not_object"),
        (_, _, _, _, _, Some(data), ..) if stored_len(data) > max_data => Some("too_large"),
        _ => None,
    }
}

/// Builds the event once, at `offset`: the body every recipient's prefix is followed by.
pub(crate) fn event_from(row: Row, offset: i64) -> Option<Event> {
    let (
        _,
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
            position: Position::Outbox(offset),
        }),
    })
}

/// Reads every row of the rounds after `cursor` and hands each event to `dispatch`, advancing
/// the cursor row by row. On error the read can simply be retried: nothing already dispatched
/// is dispatched again.
pub async fn read(
    pool: &PgPool,
    cursor: &mut Cursor,
    metrics: &Metrics,
    max_data: usize,
    mut dispatch: impl FnMut(Event),
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(READ.as_str()))
            .bind(cursor.round)
            .bind(cursor.after_id)
            .bind(OUTBOX_PAGE)
            .fetch_all(pool)
            .await?;
        let full = rows.len() as i64 >= OUTBOX_PAGE;
        let mut page = 0;
        for row in rows {
            if row.0 != cursor.round {
                cursor.round = row.0;
                cursor.offset = row.1 - 1;
            }
            let Some(id) = row.2 else {
                // A round whose rows were pruned: nothing left in it.
                cursor.after_id = i64::MAX;
                continue;
            };
            cursor.after_id = id;
            cursor.offset += 1;
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
            if let Some(event) = event_from(row, cursor.offset) {
                metrics
                    .outbox_lag
                    .observe((unix_now() - event.message.created_at).max(0.0));
                dispatch(event);
            }
        }
        total += page;
        if !full {
            // Every round there is has been read to its end.
            cursor.after_id = i64::MAX;
            return Ok(total);
        }
    }
}

/// Appends rounds: on the doorbell (rows were committed) or every `poll`, and rings `rounds`
/// (this process's reader) after each one it appended.
pub async fn append_task(pool: PgPool, doorbell: Arc<Notify>, rounds: Arc<Notify>, poll: Duration) {
    loop {
        match append(&pool).await {
            Ok(Some(_)) => rounds.notify_one(),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "appending an outbox round failed; retrying");
                tokio::time::sleep(OUTBOX_RETRY).await;
                continue;
            }
        }
        tokio::select! {
            _ = doorbell.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// The reader task: waits for a round (or `poll`), reads, dispatches to the router.
pub async fn run(
    pool: PgPool,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    mut cursor: Cursor,
    rounds: Arc<Notify>,
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
            _ = rounds.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Deletes events and rounds older than `retention` (the newest round always stays: the next
/// one starts from it), and expired sessions, every `retention / 10` (within bounds).
pub async fn prune(pool: PgPool, metrics: Arc<Metrics>, retention: Duration) {
    let period = (retention / 10).clamp(PRUNE_PERIOD_MIN, PRUNE_PERIOD_MAX);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let events = sqlx::query(
            "DELETE FROM cable_events WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&pool)
        .await;
        match events {
            Ok(done) => {
                metrics.events_pruned.inc_by(done.rows_affected());
            }
            Err(e) => tracing::warn!(error = %e, "pruning old events failed"),
        }
        let rounds = sqlx::query(
            "DELETE FROM cable_rounds
              WHERE created_at < now() - make_interval(secs => $1)
                AND round < (SELECT max(round) FROM cable_rounds)",
        )
        .bind(retention.as_secs_f64())
        .execute(&pool)
        .await;
        if let Err(e) = rounds {
            tracing::warn!(error = %e, "pruning old rounds failed");
        }
        let sessions = sqlx::query("DELETE FROM cable_sessions WHERE expires_at < now()")
            .execute(&pool)
            .await;
        if let Err(e) = sessions {
            tracing::warn!(error = %e, "pruning expired sessions failed");
        }
    }
}
