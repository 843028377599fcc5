//! Keeping live subscriptions true to the database.
//!
//! A pass looks each live subscription's token up again (with one query per kind for each
//! thousand subscriptions, not one per subscription): a user whose role, availability or inbox
//! memberships changed is re-indexed so routing follows within seconds; a token that stopped
//! being valid (rotated, user removed from the account, contact session deleted) loses its
//! subscriptions, each with `reject_subscription` and nothing after it.
//!
//! Passes follow changes. The migrations put a statement trigger on each identity table
//! (`cable_auth_changed`) that notifies [`CHANNEL`] when a change that can alter a live
//! subscription commits. A notification starts a pass at once, or
//! `CABLE_REVALIDATE_INTERVAL` after the last one began if that is later (so a stream of
//! changes costs at most one pass per interval); its handler also drops the token cache, so
//! that new subscribes see the change at once. Without notifications a pass runs every
//! `CABLE_REVALIDATE_FULL_INTERVAL` (a safety net for what the triggers cannot see, such as
//! a restore with triggers disabled), and that is all an idle gateway asks of the database.
//!
//! Where the change cannot be heard, passes run every `CABLE_REVALIDATE_INTERVAL`, as they
//! would be needed to keep the 5-s promise (docs/reference.md §6): while a trigger is missing or
//! disabled (checked at start, at every full pass, and at every pass while polling, so that
//! adding or enabling one ends the polling within an interval; a warning names the fix), and
//! while the LISTEN connection is down. Each time it is live again, a pass catches up with what was
//! notified while it was down.

use std::collections::HashSet;
use std::sync::Arc;

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::auth::{store, AuthCache, AuthError, Principal, UserRecord};
use crate::config::tuning::REVALIDATE_CHUNK;
use crate::metrics::Metrics;
use crate::router::Router;

/// What a pass needs.
pub struct Revalidation {
    pub pool: PgPool,
    pub router: Arc<Router>,
    pub auth: AuthCache,
    pub metrics: Arc<Metrics>,
}

/// One pass. Returns how many subscriptions were revoked.
pub async fn once(r: &Revalidation) -> Result<usize, AuthError> {
    let ids = r.router.live_ids();
    let mut revoked = 0;
    let mut failed = None;
    for chunk in ids.chunks(REVALIDATE_CHUNK) {
        match check(r, r.router.live(chunk)).await {
            Ok(n) => revoked += n,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Also when a later chunk failed: what earlier chunks revoked must not be served from the
    // cache to a new subscribe.
    if revoked > 0 {
        r.auth.invalidate_all();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(revoked),
    }
}

/// Looks up `live`'s tokens, re-indexes changed memberships and revokes what is no longer
/// valid. Returns how many subscriptions were revoked.
async fn check(
    r: &Revalidation,
    live: Vec<(u64, Principal, Arc<str>)>,
) -> Result<usize, AuthError> {
    let mut user_keys: HashSet<(Arc<str>, i64)> = HashSet::new();
    let mut contact_tokens: HashSet<Arc<str>> = HashSet::new();
    for (_, principal, token) in &live {
        match principal {
            Principal::User { account_id, .. } => {
                user_keys.insert((token.clone(), *account_id));
            }
            Principal::Contact(_) => {
                contact_tokens.insert(token.clone());
            }
        }
    }
    let user_keys: Vec<_> = user_keys.into_iter().collect();
    let contact_tokens: Vec<_> = contact_tokens.into_iter().collect();
    let users = if user_keys.is_empty() {
        Default::default()
    } else {
        store::users(&r.pool, &user_keys).await?
    };
    let contacts = if contact_tokens.is_empty() {
        Default::default()
    } else {
        store::contacts(&r.pool, &contact_tokens).await?
    };

    let mut revoked = 0;
    for (id, principal, token) in live {
        let still = match &principal {
            Principal::User {
                account_id,
                user_id,
                membership: known,
            } => match users.get(&(token.clone(), *account_id)) {
                Some(UserRecord {
                    user_id: current,
                    membership: Some(membership),
                }) if current == user_id => {
                    // The write lock only when something changed, not for every subscription
                    // on every pass.
                    if membership != known {
                        r.router.update_membership(id, membership.clone());
                    }
                    true
                }
                _ => false,
            },
            Principal::Contact(contact) => contacts.get(&token) == Some(contact),
        };
        if !still && r.router.revoke(id) {
            revoked += 1;
            r.metrics.revocations.inc();
        }
    }
    Ok(revoked)
}

/// The channel the identity tables' triggers notify (payload: the table's name).
pub const CHANNEL: &str = "cable_auth";

/// The tables that carry a `cable_auth_changed` trigger once migrated.
const WATCHED: [&str; 5] = [
    "users",
    "account_users",
    "inbox_members",
    "contacts",
    "contact_inboxes",
];

/// The watched tables without an enabled `cable_auth_changed` trigger.
pub async fn untriggered(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT w.name FROM unnest($1::text[]) AS w(name)
          WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
                             WHERE t.tgname = 'cable_auth_changed'
                               AND t.tgrelid = to_regclass(w.name)
                               AND t.tgenabled IN ('O', 'A'))
          ORDER BY 1",
    )
    .bind(&WATCHED[..])
    .fetch_all(pool)
    .await
}

/// When passes are due.
pub struct Schedule {
    /// Least time between the starts of two passes; also the polling interval where changes
    /// cannot be heard.
    pub interval: Duration,
    /// Time between passes while nothing is notified.
    pub full_interval: Duration,
    /// Rung by the [`CHANNEL`] handler, and each time the LISTEN connection is live again.
    pub changed: Arc<Notify>,
    /// Whether the LISTEN connection is live.
    pub listening: watch::Receiver<bool>,
}

/// The revalidation task: a pass after each change, every `full_interval` otherwise, every
/// `interval` where changes cannot be heard.
pub async fn run(r: Revalidation, mut schedule: Schedule) {
    let interval = schedule.interval.max(Duration::from_millis(1));
    let full_interval = schedule.full_interval.max(interval);
    let mut triggered = check_triggers(&r.pool, None).await;
    let mut last_pass = Instant::now();
    let mut last_full = last_pass;
    loop {
        let on_change = triggered == Some(true) && *schedule.listening.borrow();
        r.metrics.revalidation_on_change.set(i64::from(on_change));
        let due = if on_change {
            last_full + full_interval
        } else {
            last_pass + interval
        };
        let full = tokio::select! {
            _ = tokio::time::sleep_until(due) => true,
            _ = schedule.changed.notified(), if on_change => false,
            // Heard again or lost: decide anew what is due.
            Ok(()) = schedule.listening.changed() => continue,
        };
        // A burst of changes costs one pass per interval: those notified meanwhile are
        // covered by the pass that follows (the permit of `changed` is kept until then).
        tokio::time::sleep_until(last_pass + interval).await;
        last_pass = Instant::now();
        if full || !on_change {
            last_full = last_pass;
            triggered = check_triggers(&r.pool, triggered).await;
        }
        r.metrics.revalidation_passes.inc();
        match once(&r).await {
            Ok(0) => {}
            Ok(revoked) => tracing::info!(
                revoked,
                "revoked subscriptions whose token is no longer valid"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "revalidation failed; keeping subscriptions as they are")
            }
        }
    }
}

/// Whether every watched table notifies its changes; `None` when that could not be read (then
/// passes poll). Warns when it stops being so, and on the first check when it is not.
async fn check_triggers(pool: &PgPool, before: Option<bool>) -> Option<bool> {
    match untriggered(pool).await {
        Ok(missing) if missing.is_empty() => {
            if before == Some(false) {
                tracing::info!(
                    "identity tables notify their changes again: revalidating on change"
                );
            }
            Some(true)
        }
        Ok(missing) => {
            if before != Some(false) {
                tracing::warn!(
                    tables = %missing.join(", "),
                    "no enabled cable_auth_changed trigger on these tables: re-checking live \
                     subscriptions every CABLE_REVALIDATE_INTERVAL instead of on change; run \
                     `cable-gateway migrate` as the tables' owner (or enable the trigger)"
                );
            }
            Some(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the identity tables' triggers");
            None
        }
    }
}
