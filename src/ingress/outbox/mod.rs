//! Reading the `cable_events` outbox: lossless, exactly once, in commit order, with positions
//! every gateway process of the database agrees on.
//!
//! # The doorbell
//! A statement trigger on `cable_events` runs `NOTIFY cable_events` (no payload). PostgreSQL
//! delivers it at commit, to the LISTEN connection ([`crate::listen`]), which rings this
//! process's [`Appender`], and rings it once more each time it (re)connects. A
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
//!
//! # Broadcasts
//! A row with `payload` set is a stream broadcast ([`Broadcast`]): `POST /_broadcast` on any
//! process writes one per broadcast, and every process's reader delivers it to the
//! subscriptions streaming its `stream` there, as the Rails adapters' broadcasts are
//! delivered. It thereby reaches every process, in commit order, with an outbox offset that
//! every process honours, and its history survives restarts like any event's.

mod rounds;
mod row;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{FromRow, PgPool};
use tokio::sync::Notify;

use crate::clock::unix_now;
use crate::config::tuning::{OUTBOX_PAGE, OUTBOX_RETRY, PRUNE_PERIOD_MAX, PRUNE_PERIOD_MIN};
use crate::metrics::{Metrics, ReasonLabels};
use crate::router::Router;

pub use rounds::{append, Appender, APPEND};
pub use row::{Broadcast, Outboxed};
pub(crate) use row::{Row, EVENT_COLUMNS, ROUND_ROWS};

/// The channel the trigger notifies: rows were inserted.
pub const CHANNEL: &str = "cable_events";
/// The channel an appended round notifies.
pub const ROUNDS_CHANNEL: &str = "cable_rounds";

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

/// Reads every row of the rounds after `cursor` and hands what each delivers to `dispatch`,
/// advancing the cursor row by row. On error the read can simply be retried: nothing already
/// dispatched is dispatched again.
pub async fn read(
    pool: &PgPool,
    cursor: &mut Cursor,
    metrics: &Metrics,
    max_data: usize,
    mut dispatch: impl FnMut(Outboxed),
) -> Result<usize, sqlx::Error> {
    use sqlx::Row as _;
    let mut total = 0;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(READ.as_str()))
            .bind(cursor.round)
            .bind(cursor.after_id)
            .bind(OUTBOX_PAGE)
            .fetch_all(pool)
            .await?;
        let full = rows.len() as i64 >= OUTBOX_PAGE;
        let mut page = 0;
        for pg_row in rows {
            let round: i64 = pg_row.try_get("round")?;
            if round != cursor.round {
                cursor.round = round;
                cursor.offset = pg_row.try_get::<i64, _>("first_offset")? - 1;
            }
            let row = Row::from_row(&pg_row)?;
            let Some(id) = row.id else {
                // A round whose rows were pruned: nothing left in it.
                cursor.after_id = i64::MAX;
                continue;
            };
            cursor.after_id = id;
            cursor.offset += 1;
            page += 1;
            metrics.events_read.inc();
            match row.decode(cursor.offset, max_data) {
                Ok(outboxed) => {
                    let created_at = match &outboxed {
                        Outboxed::Event(event) => event.message.created_at,
                        Outboxed::Broadcast(broadcast) => broadcast.message.created_at,
                    };
                    metrics
                        .outbox_lag
                        .observe((unix_now() - created_at).max(0.0));
                    dispatch(outboxed);
                }
                Err(reason) => {
                    tracing::warn!(event_id = id, reason, "skipping malformed outbox row");
                    metrics
                        .events_skipped
                        .get_or_create(&ReasonLabels { reason })
                        .inc();
                }
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
        let dispatch = |outboxed: Outboxed| match outboxed {
            Outboxed::Event(event) => {
                router.dispatch(&Arc::new(event), &mut scratch);
            }
            Outboxed::Broadcast(broadcast) => {
                router.broadcast_outbox(
                    &broadcast.stream,
                    &broadcast.message,
                    broadcast.contacts,
                    &mut scratch,
                );
            }
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
