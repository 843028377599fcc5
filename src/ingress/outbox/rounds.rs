//! Cutting rounds: the one statement that appends a round, and this process's [`Appender`],
//! through which the doorbell and history requests ask for one.
//!
//! # A round's time
//! A round is stamped after the append lock was granted and its snapshot taken
//! (`clock_timestamp()`), and never earlier than the round before it: every row of a round was
//! committed before its time, and times follow round order on every process. (Stamping with
//! `now()`, the start of the appending transaction, taken before the lock wait, let a later
//! round carry an earlier time than the one before it; a lookup by time then skipped a round.)
//! Lookups by time still pick rounds by number (`min(round)`), so rounds stamped by an older
//! gateway during a rolling upgrade cannot mislead them either.
//!
//! # Coalesced appends
//! A history request must see every event committed before it arrived, so it asks for a round
//! to be cut first ([`Appender::cut`]). Many requests at once (a reconnect storm) share one
//! append: a caller returns once an append that *began after it called* has committed, and
//! whoever finds one still to run runs it for everyone waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::tuning::OUTBOX_RETRY;

/// The advisory lock rounds are appended under ("cable_rn").
const APPEND_LOCK: i64 = 0x6361_626c_655f_726e;

/// Appends the next round if any row became visible since the newest one, in one statement
/// run under the append lock (see the module doc of [`super`]).
pub const APPEND: &str = "
WITH last AS (
  SELECT round, snapshot, first_offset + count AS next, created_at
    FROM cable_rounds ORDER BY round DESC LIMIT 1
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
  INSERT INTO cable_rounds (round, prev_snapshot, snapshot, first_offset, count, created_at)
  SELECT last.round + 1, last.snapshot, cur.snap, last.next, fresh.n,
         GREATEST(clock_timestamp(), last.created_at)
    FROM last, cur, fresh
   WHERE fresh.n > 0
  RETURNING round
)
SELECT round FROM appended, LATERAL (SELECT pg_notify('cable_rounds', '')) notified";

/// [`APPEND`] under the append lock, as one implicit transaction sent in one round trip: the
/// lock (with a timeout: a process that hangs while holding it must not stall every other one
/// for good), then the append, whose READ COMMITTED snapshot is taken after the lock was
/// granted, so it sees the round the previous holder committed. (Sent as five statements
/// — begin, timeout, lock, append, commit — each waited for, the append added tens of
/// milliseconds to every event's delivery on a loaded machine.)
static APPEND_LOCKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SET LOCAL lock_timeout = '5s'; SELECT FROM pg_advisory_xact_lock({APPEND_LOCK}); {APPEND}"
    )
});

/// Appends a round holding every row that became visible since the newest round, if there is
/// any; returns its number. Safe to call from every process at once (see the module doc).
pub async fn append(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    use sqlx::Row as _;
    // The lock's statement returns a row without columns; the append's, one with `round`.
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(APPEND_LOCKED.as_str()))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .find(|row| !row.is_empty())
        .map(|row| row.try_get::<i64, _>("round"))
        .transpose()
}

/// This process's way to cut rounds: coalesced, and ringing its reader after each one.
pub struct Appender {
    pool: PgPool,
    /// This process's reader, rung after each round appended here.
    reader: Arc<Notify>,
    running: tokio::sync::Mutex<()>,
    /// Appends begun and committed, counted under `running`.
    begun: AtomicU64,
    committed: AtomicU64,
}

impl Appender {
    pub fn new(pool: PgPool, reader: Arc<Notify>) -> Arc<Appender> {
        Arc::new(Appender {
            pool,
            reader,
            running: tokio::sync::Mutex::new(()),
            begun: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        })
    }

    /// Returns once every row committed before the call belongs to a round: an append that
    /// began after the call has committed (this caller's, or one it waited for).
    pub async fn cut(&self) -> Result<(), sqlx::Error> {
        // The first append to begin from now on has this number; any later one does too.
        let wanted = self.begun.load(Ordering::Acquire) + 1;
        let _running = self.running.lock().await;
        if self.committed.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        if append(&self.pool).await?.is_some() {
            self.reader.notify_one();
        }
        self.committed.store(number, Ordering::Release);
        Ok(())
    }

    /// Appends rounds: on the doorbell (rows were committed) or every `poll`.
    pub async fn run(self: Arc<Self>, doorbell: Arc<Notify>, poll: Duration) {
        loop {
            if let Err(e) = self.cut().await {
                tracing::warn!(error = %e, "appending an outbox round failed; retrying");
                tokio::time::sleep(OUTBOX_RETRY).await;
                continue;
            }
            tokio::select! {
                _ = doorbell.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
