//! Keeping live subscriptions true to the database.
//!
//! Every `CABLE_REVALIDATE_INTERVAL`, each live subscription's token is looked up again (with
//! one query per kind for each thousand subscriptions, not one per subscription): a user whose role or
//! inbox memberships changed is re-indexed so routing follows within seconds; a token that
//! stopped being valid (rotated, user removed from the account, contact session deleted) loses
//! its subscriptions, each with `reject_subscription` and nothing after it.

use std::collections::HashSet;
use std::sync::Arc;

use std::time::Duration;

use sqlx::PgPool;

use crate::auth::{store, AuthCache, AuthError, Principal, UserRecord};
use crate::metrics::Metrics;
use crate::router::Router;

/// What a pass needs.
pub struct Revalidation {
    pub pool: PgPool,
    pub router: Arc<Router>,
    pub auth: AuthCache,
    pub metrics: Arc<Metrics>,
}

/// How many subscriptions one pass looks up per query. A pass over every live subscription at
/// once built all their lookups and answers in memory together (about 400 bytes per
/// subscription, every interval), which an idle gateway's RSS carried as a saw-tooth.
const CHUNK: usize = 1_000;

/// One pass. Returns how many subscriptions were revoked.
pub async fn once(r: &Revalidation) -> Result<usize, AuthError> {
    let ids = r.router.live_ids();
    let mut revoked = 0;
    let mut failed = None;
    for chunk in ids.chunks(CHUNK) {
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

/// The revalidation task: a pass every `interval`.
pub async fn run(r: Revalidation, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
