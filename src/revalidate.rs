//! Keeping live subscriptions true to the database.
//!
//! Every `CABLE_REVALIDATE_INTERVAL`, each live subscription's token is looked up again (with
//! one query per kind for the whole process, not one per subscription): a user whose role or
//! inbox memberships changed is re-indexed so routing follows within seconds; a token that
//! stopped being valid (rotated, user removed from the account, contact session deleted) loses
//! its subscriptions, each with `reject_subscription` and nothing after it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::auth::{store, AuthError, Principal, UserRecord};
use crate::gateway::Gateway;

/// One pass. Returns how many subscriptions were revoked.
pub async fn once(gateway: &Gateway) -> Result<usize, AuthError> {
    let live = gateway.router.snapshot();
    if live.is_empty() {
        return Ok(0);
    }
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
    let users = store::users(&gateway.pool, &user_keys).await?;
    let contacts = store::contacts(&gateway.pool, &contact_tokens).await?;

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
                        gateway.router.update_membership(id, membership.clone());
                    }
                    true
                }
                _ => false,
            },
            Principal::Contact(contact) => contacts.get(&token) == Some(contact),
        };
        if !still && gateway.router.revoke(id) {
            revoked += 1;
            gateway.metrics.revocations.inc();
        }
    }
    if revoked > 0 {
        gateway.auth.invalidate_all();
    }
    Ok(revoked)
}

/// The revalidation task.
pub async fn run(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gateway.config.revalidate_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match once(&gateway).await {
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
