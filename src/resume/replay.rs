//! History replay (the `history` command, and `history` inside a subscribe): what a
//! subscription missed, from the outbox's rounds or from stream ingress memory, exactly once
//! and in order, then `confirm_history`, then live delivery with no gap and no duplicate.
//!
//! # How "exactly once, no gap" holds
//! While the replay is prepared and sent, the subscription's live frames are held
//! ([`crate::delivery::Positions`]).
//!
//! An outbox replay first has a round cut ([`crate::ingress::outbox::Appender::cut`]): every
//! event committed before the request arrived is then in a round, whichever process appended
//! it and whether or not this process's reader has dispatched it yet. The replay covers
//! `(position, newest]`, `newest` being the last offset of the rounds when it starts; the
//! client now has everything up to `newest` (and up to its own position, which may be ahead
//! of this process's reader), so live frames at or below it, held meanwhile or read late by
//! this process, are dropped. Then the held frames go out, then live ones. Every event
//! committed before the request thus comes before `confirm_history`, and none twice. A
//! request on a subscription whose live frames already flowed (a restored one whose client
//! asked after the hold ran out, or any later request) stops at its `live_from` instead:
//! live delivery has sent everything after it.
//!
//! Stream ingress history ([`super::rings`]) is this process's own: there a replay covers
//! `(position, live_from]`, `live_from` being where live delivery to the subscription started.
//!
//! # What it costs
//! An outbox replay reads the rounds and rows between the two offsets, numbers them (offsets
//! are positions among *all* rows of a round) and returns only the subscription's account's
//! rows and the broadcasts on its streams; the routing rules ([`crate::routing::receives`])
//! then apply exactly as to live events. The round cut before it is shared by every request
//! that arrives while one is being cut.
//! It reads in pages of [`OUTBOX_PAGE`] offsets, one query each, and waits for the client's
//! queue to drain between pages, so a long replay is paced by its client and holds no pool
//! connection while it waits. A request reaching back over more than `CABLE_HISTORY_MAX_SPAN`
//! offsets is refused up front (`reject_history`), as is a position the database no longer
//! holds or of another epoch.

use std::sync::Arc;

use sqlx::PgPool;

use super::HistoryRequest;
use crate::auth::Principal;
use crate::config::tuning::{OUTBOX_PAGE, SUBSCRIBE_DB_PATIENCE, SUBSCRIBE_RETRY};
use crate::delivery::DisconnectReason;
use crate::delivery::{CloseReason, Outbound, Subscription};
use crate::ingress::outbox::{Appender, Outboxed, Row, EVENT_COLUMNS, ROUND_ROWS};
use crate::metrics::Metrics;

use super::rings::{Kept, Rings};

/// What history replay needs of the process.
pub struct History {
    pub pool: PgPool,
    /// Stream ingress history of this process.
    pub rings: Arc<Rings>,
    /// Cuts a round before an outbox replay, so that it covers every event committed before
    /// the request arrived.
    pub appender: Arc<Appender>,
    /// The database's epoch of outbox positions.
    pub epoch: Arc<str>,
    pub max_span: i64,
    pub max_event_size: usize,
    pub metrics: Arc<Metrics>,
    /// Replay queries running at once (`config::tuning::HISTORY_QUERIES_IN_FLIGHT`).
    pub queries: tokio::sync::Semaphore,
}

/// Why a request gets `reject_history` (its label in logs).
#[derive(Debug, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Refusal {
    Epoch,
    #[strum(serialize = "not_kept")]
    Unavailable,
    TooLong,
    #[strum(serialize = "stream_not_kept")]
    Stream,
    Database(sqlx::Error),
}

impl Refusal {
    fn label(&self) -> &'static str {
        self.into()
    }
}

/// One history page, bounds included, in one query. Parameters: `$1` the client's position,
/// `$2` the replay's end (NULL on the first page: the newest offset, fixed from then on), `$3`
/// the account, `$4` `since` (NULL for a position), `$5` the page's span in offsets, `$6`
/// `CABLE_HISTORY_MAX_SPAN`, `$7` where a later page continues (NULL for the first), `$8` the
/// streams the subscription streams (for broadcast rows). Every row starts with the bounds
/// (oldest and newest offsets kept, and the replay's `(lo, hi]`); a row without an event
/// (`off` NULL) carries them alone. Nothing but the bounds is read when the request cannot be
/// honoured.
///
/// `since` names the first round stamped at or after it, looked up by round number (see
/// [`crate::ingress::outbox::Appender`] on round times): every event that became visible at
/// or after `since`, which includes every event whose `created_at` is.
static REPLAY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH bounds AS (
  SELECT (SELECT first_offset FROM cable_rounds ORDER BY round LIMIT 1) AS oldest,
         (SELECT first_offset + count - 1 FROM cable_rounds ORDER BY round DESC LIMIT 1) AS newest,
         (SELECT first_offset - 1 FROM cable_rounds
           WHERE round = (SELECT min(round) FROM cable_rounds
                           WHERE created_at >= to_timestamp($4))) AS since_from
), span AS (
  SELECT oldest, newest,
         COALESCE($7, CASE WHEN $4::float8 IS NULL THEN $1 ELSE COALESCE(since_from, newest) END) AS lo,
         LEAST(COALESCE($2, newest), newest) AS hi
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
  SELECT e.id, e.account_id, e.stream, e.payload IS NOT NULL AS broadcast,
         r.first_offset - 1 + row_number() OVER (PARTITION BY r.round ORDER BY e.id) AS off
    FROM r CROSS JOIN LATERAL (SELECT e.id, e.account_id, e.stream, e.payload FROM {ROUND_ROWS} e) e
), events AS (
  SELECT n.off, {EVENT_COLUMNS}
    FROM numbered n JOIN cable_events e ON e.id = n.id, ok
   WHERE n.off > ok.lo AND n.off <= ok.page_hi
     AND CASE WHEN n.broadcast THEN n.stream = ANY($8) ELSE n.account_id = $3 END
)
SELECT span.oldest, span.newest, span.lo, span.hi, events.*
  FROM span LEFT JOIN events ON true
 ORDER BY events.off"
    )
});

/// A history page's bounds, and its rows with their offsets.
fn page_from(rows: Vec<sqlx::postgres::PgRow>) -> Result<(Bounds, Vec<(i64, Row)>), sqlx::Error> {
    use sqlx::{FromRow, Row as _};
    let mut bounds = Bounds::default();
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        bounds = Bounds {
            oldest: row.try_get::<Option<i64>, _>("oldest")?.unwrap_or(1),
            newest: row.try_get::<Option<i64>, _>("newest")?.unwrap_or(0),
            lo: row.try_get::<Option<i64>, _>("lo")?.unwrap_or(0),
            hi: row.try_get::<Option<i64>, _>("hi")?.unwrap_or(0),
        };
        let Some(offset) = row.try_get::<Option<i64>, _>("off")? else {
            continue;
        };
        events.push((offset, Row::from_row(&row)?));
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
        sub: &Arc<Subscription>,
        principal: &Principal,
        token: &str,
        request: &HistoryRequest,
    ) {
        let Some(positions) = &sub.positions else {
            return;
        };
        positions.hold();
        match self.replay(sub, principal, token, request).await {
            Ok(()) => {
                sub.session
                    .send(Outbound::Frame(sub.replies.history_done(&sub.identifier)));
                self.metrics.command("history", "confirmed");
            }
            Err(Refusal::Database(e)) => {
                // Not the client's position's fault: `reject_history` would make it give up
                // on what it missed. It comes back (to any process) and asks again.
                tracing::warn!(session = sub.session.queue.id, error = %e, "history replay failed; the client reconnects");
                // Nothing more for this subscription on this connection, the held live frames
                // least of all: they follow a gap (what the replay did not send), and the
                // client would ask again after the last of them, skipping the gap for good
                // (found by the 30-minute soak).
                sub.deactivate();
                sub.session
                    .queue
                    .close(CloseReason::Disconnect(DisconnectReason::ServerRestart));
                self.metrics.command("history", "unavailable");
                return;
            }
            Err(refusal) => {
                tracing::debug!(
                    session = sub.session.queue.id,
                    reason = refusal.label(),
                    "history refused"
                );
                sub.session.send(Outbound::Frame(
                    sub.replies.history_refused(&sub.identifier),
                ));
                self.metrics.command("history", "rejected");
            }
        }
        positions.release(&sub.session);
    }

    async fn replay(
        &self,
        sub: &Arc<Subscription>,
        principal: &Principal,
        token: &str,
        request: &HistoryRequest,
    ) -> Result<(), Refusal> {
        let positions = sub.positions.as_ref().expect("checked by serve");
        let (outbox_mark, stream_marks) = positions.marks();
        // Live frames already went out (a late history request, e.g. after the restore hold
        // ran out): live delivery has covered everything after `live_from`, so the replay
        // stops there. Otherwise it reaches the newest offset of the database.
        let cap = positions.flowed().then_some(outbox_mark.live_from);

        // Which positions name what. An outbox position that cannot be honoured refuses the
        // request before anything is sent; a stream ingress position (history of the process
        // that heard it) only refuses its own stream: everything else is replayed, then the
        // answer is `reject_history`, so that the client knows something is missing.
        let mut outbox_position = None;
        let mut streams: Vec<(Arc<str>, i64, Vec<Kept>)> = Vec::new();
        let mut unhonoured: Vec<&str> = Vec::new();
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
                match self
                    .rings
                    .after(name, &position.epoch, position.offset, mark.live_from)
                {
                    Ok(kept) => streams.push((name.clone(), position.offset, kept)),
                    Err(_) => unhonoured.push(name),
                }
            }
            // A stream this subscription does not have: nothing of it is ours to replay.
        }
        if let Some(since) = request.since {
            for (name, mark) in &stream_marks {
                let listed = streams.iter().any(|(listed, ..)| listed == name)
                    || unhonoured.contains(&&**name);
                if !listed {
                    let kept = self.rings.since(name, since, mark.live_from);
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
            // A database that does not answer is retried for a while before the client is
            // told to reconnect (a reconnect costs the extended-protocol client its session).
            let deadline = tokio::time::Instant::now() + SUBSCRIBE_DB_PATIENCE;
            // Everything committed before the request arrived goes into a round first: the
            // replay then reaches it, whether or not this process's reader has yet. A cut
            // that fails is retried like a page. (Should it fail for good, what was committed
            // but not yet cut still comes: live, after the confirm. Nothing is lost.)
            while let Err(e) = {
                self.metrics.history_queries.inc();
                self.appender.cut().await
            } {
                if tokio::time::Instant::now() + SUBSCRIBE_RETRY >= deadline {
                    tracing::warn!(error = %e, "cutting a round before a replay failed");
                    break;
                }
                tracing::debug!(error = %e, "cutting a round before a replay failed; retrying");
                tokio::time::sleep(SUBSCRIBE_RETRY).await;
            }
            let streams = crate::routing::streams(principal, token);
            let mut first: Option<Bounds> = None;
            let mut next: Option<i64> = None;
            loop {
                self.metrics.history_queries.inc();
                let page = {
                    // Bounded: a reconnect storm of extended-protocol clients must leave the
                    // pool to token lookups, the outbox reader and presence (see the constant).
                    let _slot = self.queries.acquire().await.expect("never closed");
                    sqlx::query(sqlx::AssertSqlSafe(REPLAY.as_str()))
                        .bind(position)
                        .bind(first.map(|b| b.hi).or(cap))
                        .bind(principal.account_id())
                        .bind(since)
                        .bind(OUTBOX_PAGE)
                        .bind(self.max_span)
                        .bind(next)
                        .bind(&streams)
                        .fetch_all(&self.pool)
                        .await
                        .and_then(page_from)
                };
                let (bounds, rows) = match page {
                    Ok(page) => page,
                    Err(e) if tokio::time::Instant::now() + SUBSCRIBE_RETRY >= deadline => {
                        return Err(Refusal::Database(e));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a history page failed; retrying");
                        tokio::time::sleep(SUBSCRIBE_RETRY).await;
                        continue;
                    }
                };
                let span = *first.get_or_insert(bounds);
                if next.is_none() {
                    if since.is_none()
                        && (bounds.lo + 1 < bounds.oldest || bounds.lo > bounds.newest)
                    {
                        return Err(Refusal::Unavailable);
                    }
                    if bounds.hi - bounds.lo > self.max_span {
                        return Err(Refusal::TooLong);
                    }
                }
                for (offset, row) in rows {
                    let message = match row.decode(offset, self.max_event_size) {
                        Ok(Outboxed::Event(event))
                            if crate::routing::receives(principal, token, &event) =>
                        {
                            event.message
                        }
                        Ok(Outboxed::Broadcast(b)) if b.contacts || principal.is_user() => {
                            b.message
                        }
                        _ => continue,
                    };
                    sub.session.send(Outbound::Message {
                        sub: sub.clone(),
                        message,
                    });
                    self.metrics.history_replayed.inc();
                }
                let page_end = (bounds.lo + OUTBOX_PAGE).min(span.hi);
                if page_end >= span.hi {
                    // The client now has everything up to the replay's end: live frames at or
                    // below it (held meanwhile, or read late by this process) are dropped.
                    positions.replayed(None, span.lo, span.hi.max(position));
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
        if unhonoured.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Stream)
        }
    }
}
