//! History replay (the `history` command, and `history` inside a subscribe): what a
//! subscription missed, from the outbox's rounds or from stream ingress memory, exactly once
//! and in order, then `confirm_history`, then live delivery with no gap and no duplicate.
//!
//! # How "exactly once, no gap" holds
//! While the replay is prepared and sent, the subscription's live frames are held
//! ([`crate::delivery::Positions`]). When it went live, the subscription learned the offset
//! live delivery started after (`live_from`, read under the router's lock, so exact): live
//! delivery covers everything after it, so a replay covers `(position, live_from]`, and the
//! client's own position may be ahead of this process (it came from another one that read
//! further): frames at or below it are dropped. Then the held frames go out, then live ones.
//!
//! # What it costs
//! An outbox replay reads the rounds and rows between the two offsets, numbers them (offsets
//! are positions among *all* rows of a round) and returns only the subscription's account's
//! rows; the routing rules ([`crate::routing::receives`]) then apply exactly as to live events.
//! It reads in pages of [`OUTBOX_PAGE`] offsets, one query each, and waits for the client's
//! queue to drain between pages, so a long replay is paced by its client and holds no pool
//! connection while it waits. A request reaching back over more than `CABLE_HISTORY_MAX_SPAN`
//! offsets is refused up front (`reject_history`), as is a position the database no longer
//! holds or of another epoch.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::Principal;
use crate::config::tuning::OUTBOX_PAGE;
use crate::delivery::{Outbound, Subscription};
use crate::ingress::outbox::{event_from, malformed, Row, EVENT_COLUMNS, ROUND_ROWS};
use crate::metrics::Metrics;
use crate::protocol::{reply, HistoryRequest};
use crate::router::Router;

use super::rings::Kept;

/// What history replay needs of the process.
pub struct History {
    pub pool: PgPool,
    /// The database's epoch of outbox positions.
    pub epoch: Arc<str>,
    pub max_span: i64,
    pub max_event_size: usize,
    pub metrics: Arc<Metrics>,
}

/// Why a request gets `reject_history`.
#[derive(Debug)]
enum Refusal {
    Epoch,
    Unavailable,
    TooLong,
    Stream,
    Database(sqlx::Error),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Epoch => "epoch",
            Refusal::Unavailable => "not_kept",
            Refusal::TooLong => "too_long",
            Refusal::Stream => "stream_not_kept",
            Refusal::Database(_) => "database",
        }
    }
}

/// One history page, bounds included, in one query. Parameters: `$1` the client's position,
/// `$2` where live delivery starts (`live_from`), `$3` the account, `$4` `since` (NULL for a
/// position), `$5` the page's span in offsets, `$6` `CABLE_HISTORY_MAX_SPAN`, `$7` where a
/// later page continues (NULL for the first). Every row starts with the bounds (oldest and
/// newest offsets kept, and the replay's `(lo, hi]`); a row without an event (offset NULL)
/// carries them alone. Nothing but the bounds is read when the request cannot be honoured.
static REPLAY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH bounds AS (
  SELECT (SELECT first_offset FROM cable_rounds ORDER BY round LIMIT 1) AS oldest,
         (SELECT first_offset + count - 1 FROM cable_rounds ORDER BY round DESC LIMIT 1) AS newest,
         (SELECT first_offset - 1 FROM cable_rounds WHERE created_at >= to_timestamp($4)
           ORDER BY created_at, round LIMIT 1) AS since_from
), span AS (
  SELECT oldest, newest,
         COALESCE($7, CASE WHEN $4::float8 IS NULL THEN $1 ELSE COALESCE(since_from, newest) END) AS lo,
         LEAST($2, newest) AS hi
    FROM bounds
), ok AS (
  SELECT lo, LEAST(hi, lo + $5) AS page_hi FROM span
   WHERE hi - lo <= $6 AND ($4::float8 IS NOT NULL OR (lo + 1 >= oldest AND lo <= newest))
), r AS (
  SELECT c.* FROM cable_rounds c, ok
   WHERE c.round >= COALESCE((SELECT round FROM cable_rounds WHERE first_offset <= ok.lo + 1
                               ORDER BY first_offset DESC, round DESC LIMIT 1), 0)
     AND c.first_offset <= ok.page_hi
), numbered AS (
  SELECT e.id, e.account_id,
         r.first_offset - 1 + row_number() OVER (PARTITION BY r.round ORDER BY e.id) AS off
    FROM r CROSS JOIN LATERAL (SELECT e.id, e.account_id FROM {ROUND_ROWS} e) e
), events AS (
  SELECT n.off, {EVENT_COLUMNS}
    FROM numbered n JOIN cable_events e ON e.id = n.id, ok
   WHERE n.off > ok.lo AND n.off <= ok.page_hi AND n.account_id = $3
     AND ($4::float8 IS NULL OR e.created_at >= to_timestamp($4))
)
SELECT span.oldest, span.newest, span.lo, span.hi, events.*
  FROM span LEFT JOIN events ON true
 ORDER BY events.off"
    )
});

/// A history page's bounds, and its events as outbox [`Row`]s with their offsets.
fn page_from(rows: Vec<sqlx::postgres::PgRow>) -> Result<(Bounds, Vec<Row>), sqlx::Error> {
    use sqlx::Row as _;
    let mut bounds = Bounds::default();
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        bounds = Bounds {
            oldest: row.try_get::<Option<i64>, _>(0)?.unwrap_or(1),
            newest: row.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
            lo: row.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
            hi: row.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
        };
        let Some(offset) = row.try_get::<Option<i64>, _>(4)? else {
            continue;
        };
        events.push((
            0,
            offset,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
            row.try_get(10)?,
            row.try_get(11)?,
            row.try_get(12)?,
            row.try_get(13)?,
            row.try_get(14)?,
            row.try_get(15)?,
            row.try_get(16)?,
            row.try_get(17)?,
        ));
    }
    Ok((bounds, events))
}

#[derive(Debug, Default, Clone, Copy)]
struct Bounds {
    oldest: i64,
    newest: i64,
    lo: i64,
    hi: i64,
}

impl History {
    /// Serves one history request for `sub` (an extended-protocol subscription; others are
    /// ignored). Answers `confirm_history` or `reject_history`; either way live delivery
    /// resumes.
    pub async fn serve(
        &self,
        router: &Router,
        sub: &Arc<Subscription>,
        principal: &Principal,
        token: &str,
        request: &HistoryRequest,
    ) {
        let Some(positions) = &sub.positions else {
            return;
        };
        positions.hold();
        match self.replay(router, sub, principal, token, request).await {
            Ok(()) => {
                sub.session
                    .send(Outbound::Frame(reply::confirm_history(&sub.identifier)));
                self.metrics.command("history", "confirmed");
            }
            Err(refusal) => {
                match &refusal {
                    Refusal::Database(e) => {
                        tracing::warn!(session = sub.session.queue.id, error = %e, "history replay failed")
                    }
                    other => tracing::debug!(
                        session = sub.session.queue.id,
                        reason = other.label(),
                        "history refused"
                    ),
                }
                sub.session
                    .send(Outbound::Frame(reply::reject_history(&sub.identifier)));
                self.metrics.command("history", "rejected");
            }
        }
        positions.release(&sub.session);
    }

    async fn replay(
        &self,
        router: &Router,
        sub: &Arc<Subscription>,
        principal: &Principal,
        token: &str,
        request: &HistoryRequest,
    ) -> Result<(), Refusal> {
        let positions = sub.positions.as_ref().expect("checked by serve");
        let (outbox_mark, stream_marks) = positions.marks();

        // Which positions name what; everything is checked before anything is sent.
        let mut outbox_position = None;
        let mut streams: Vec<(Arc<str>, i64, Vec<Kept>)> = Vec::new();
        for position in &request.streams {
            if position.stream_id == *positions.outbox_stream_id {
                if position.epoch != *self.epoch {
                    return Err(Refusal::Epoch);
                }
                outbox_position = Some(position.offset);
            } else if let Some((name, mark)) = stream_marks
                .iter()
                .find(|(name, _)| **name == position.stream_id)
            {
                let kept = router
                    .rings()
                    .after(name, &position.epoch, position.offset, mark.live_from)
                    .map_err(|_| Refusal::Stream)?;
                streams.push((name.clone(), position.offset, kept));
            }
            // A stream this subscription does not have: nothing of it is ours to replay.
        }
        if let Some(since) = request.since {
            for (name, mark) in &stream_marks {
                if !streams.iter().any(|(listed, ..)| listed == name) {
                    let kept = router.rings().since(name, since, mark.live_from);
                    streams.push((name.clone(), 0, kept));
                }
            }
        }
        // The outbox first, page by page (one query each, bounds included), then stream
        // ingress.
        let outbox = match (outbox_position, request.since) {
            (Some(position), _) => Some((position, None)),
            (None, Some(since)) => Some((0, Some(since))),
            (None, None) => None,
        };
        if let Some((position, since)) = outbox {
            let mut start: Option<i64> = None;
            let mut next: Option<i64> = None;
            loop {
                self.metrics.history_queries.inc();
                let rows = sqlx::query(sqlx::AssertSqlSafe(REPLAY.as_str()))
                    .bind(position)
                    .bind(outbox_mark.live_from)
                    .bind(principal.account_id())
                    .bind(since)
                    .bind(OUTBOX_PAGE)
                    .bind(self.max_span)
                    .bind(next)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Refusal::Database)?;
                let (bounds, rows) = page_from(rows).map_err(Refusal::Database)?;
                if start.is_none() {
                    if since.is_none()
                        && (bounds.lo + 1 < bounds.oldest || bounds.lo > bounds.newest)
                    {
                        return Err(Refusal::Unavailable);
                    }
                    if bounds.hi - bounds.lo > self.max_span {
                        return Err(Refusal::TooLong);
                    }
                    start = Some(bounds.lo);
                }
                for row in rows {
                    if malformed(&row, self.max_event_size).is_some() {
                        continue;
                    }
                    let offset = row.1;
                    let Some(event) = event_from(row, offset) else {
                        continue;
                    };
                    if crate::routing::receives(principal, token, &event) {
                        sub.session.send(Outbound::Message {
                            sub: sub.clone(),
                            message: event.message,
                        });
                        self.metrics.history_replayed.inc();
                    }
                }
                let page_end = (bounds.lo + OUTBOX_PAGE).min(bounds.hi);
                if page_end >= bounds.hi {
                    let floor = if since.is_none() { position } else { 0 };
                    positions.replayed(None, start.unwrap_or(bounds.lo), floor);
                    break;
                }
                next = Some(page_end);
                sub.session.queue.room().await;
            }
        }
        for (name, position, kept) in streams {
            for kept in kept {
                if kept.contacts || principal.is_user() {
                    sub.session.send(Outbound::Message {
                        sub: sub.clone(),
                        message: kept.message,
                    });
                    self.metrics.history_replayed.inc();
                }
            }
            positions.replayed(Some(&name), position, position);
        }
        Ok(())
    }
}
