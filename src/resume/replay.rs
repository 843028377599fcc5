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

/// The outbox part of a request: replay offsets `(from, to]`, only rows created at or after
/// `since` when set; afterwards the client has everything up to `floor`.
struct OutboxReplay {
    from: i64,
    to: i64,
    since: Option<f64>,
    floor: i64,
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

fn replay_statement() -> String {
    format!(
        "WITH r AS (
  SELECT * FROM cable_rounds
   WHERE round >= COALESCE((SELECT round FROM cable_rounds WHERE first_offset <= $1 + 1
                             ORDER BY first_offset DESC, round DESC LIMIT 1), 0)
     AND first_offset <= $2
), numbered AS (
  SELECT e.id, e.account_id,
         r.first_offset - 1 + row_number() OVER (PARTITION BY r.round ORDER BY e.id) AS off
    FROM r CROSS JOIN LATERAL (SELECT e.id, e.account_id FROM {ROUND_ROWS} e) e
)
SELECT 0::bigint, n.off, {EVENT_COLUMNS}
  FROM numbered n JOIN cable_events e ON e.id = n.id
 WHERE n.off > $1 AND n.off <= $2 AND n.account_id = $3
   AND ($4::float8 IS NULL OR e.created_at >= to_timestamp($4))
 ORDER BY n.off"
    )
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
        let outbox = match (outbox_position, request.since) {
            (Some(position), _) => Some(self.bounds(position, None, outbox_mark.live_from).await?),
            (None, Some(since)) => Some(self.bounds(0, Some(since), outbox_mark.live_from).await?),
            (None, None) => None,
        };

        // The outbox first, page by page, then stream ingress.
        if let Some(replay) = &outbox {
            let statement = replay_statement();
            let mut from = replay.from;
            while from < replay.to {
                let to = (from + OUTBOX_PAGE).min(replay.to);
                self.metrics.history_queries.inc();
                let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(statement.as_str()))
                    .bind(from)
                    .bind(to)
                    .bind(principal.account_id())
                    .bind(replay.since)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Refusal::Database)?;
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
                from = to;
                sub.session.queue.room().await;
            }
            positions.replayed(None, replay.from, replay.floor);
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

    /// Checks an outbox request against what the database keeps: after `position`, or (with
    /// `since`) from the first round made at or after it, up to `live_from`.
    async fn bounds(
        &self,
        position: i64,
        since: Option<f64>,
        live_from: i64,
    ) -> Result<OutboxReplay, Refusal> {
        self.metrics.history_queries.inc();
        let (oldest, newest, first_since): (Option<i64>, Option<i64>, Option<i64>) =
            sqlx::query_as(
                "SELECT min(first_offset), max(first_offset + count - 1),
                        min(first_offset) FILTER (WHERE created_at >= to_timestamp($1))
                   FROM cable_rounds",
            )
            .bind(since)
            .fetch_one(&self.pool)
            .await
            .map_err(Refusal::Database)?;
        let (oldest, newest) = (oldest.unwrap_or(1), newest.unwrap_or(0));
        let (from, floor) = match since {
            None => {
                if position + 1 < oldest || position > newest {
                    return Err(Refusal::Unavailable);
                }
                (position, position)
            }
            // Nothing made since then: nothing to replay.
            Some(_) => (first_since.map_or(newest, |first| first - 1), 0),
        };
        let to = live_from.min(newest);
        if to - from > self.max_span {
            return Err(Refusal::TooLong);
        }
        Ok(OutboxReplay {
            from,
            to,
            since,
            floor,
        })
    }
}
