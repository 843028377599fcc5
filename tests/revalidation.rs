//! Live subscriptions follow the database: role and inbox-membership changes re-route within
//! seconds. (Revoked tokens are in `tests/hardening.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::events::*;
use common::*;
use serde_json::json;

/// Publishes an event for `inbox_id`, then a marker for `user_id` alone, every 100 ms until
/// whether `client` gets the inbox event before the marker is `want`. Fails after 5 s.
async fn until_inbox_routing(
    db: &TestDb,
    client: &mut Client,
    user_id: i64,
    inbox_id: i64,
    want: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0.. {
        tick.tick().await;
        assert!(
            Instant::now() < deadline,
            "user {user_id} still {} inbox {inbox_id} events after 5 s",
            if want { "does not receive" } else { "receives" }
        );
        let probe = format!("inbox {inbox_id} #{round}");
        let marker = format!("marker #{round}");
        db.publish(
            1,
            "conversation.updated",
            json!({"tag": probe}),
            json!({"inbox_id": inbox_id}),
        )
        .await;
        db.publish(
            1,
            "notification.created",
            json!({"tag": marker}),
            json!({"user_id": user_id}),
        )
        .await;
        let mut got = false;
        loop {
            let tag = next_tag(client).await;
            if tag == marker {
                break;
            }
            got |= tag == probe;
        }
        if got == want {
            return;
        }
    }
}

#[tokio::test]
async fn routing_follows_membership_and_role_changes_within_seconds() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.revalidate_interval = Duration::from_millis(200);
    let gw = start(config).await;
    let mut carol = Client::ready(gw.addr).await;
    carol.subscribe_ok(&user(CAROL, 1, 3)).await;
    let mut bob = Client::ready(gw.addr).await;
    bob.subscribe_ok(&user(BOB, 1, 2)).await;

    // Carol joins inbox 1 while subscribed.
    until_inbox_routing(&db, &mut carol, 3, 1, false).await;
    db.exec("INSERT INTO inbox_members (user_id, inbox_id) VALUES (3, 1)")
        .await;
    until_inbox_routing(&db, &mut carol, 3, 1, true).await;

    // Bob leaves inbox 1: his subscription stays (he gets his own events), inbox 1's stop.
    until_inbox_routing(&db, &mut bob, 2, 1, true).await;
    db.exec("DELETE FROM inbox_members WHERE user_id = 2 AND inbox_id = 1")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 1, false).await;

    // Bob becomes an administrator: every inbox; and back to agent: none of his.
    until_inbox_routing(&db, &mut bob, 2, 2, false).await;
    db.exec("UPDATE account_users SET role = 1 WHERE account_id = 1 AND user_id = 2")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 2, true).await;
    db.exec("UPDATE account_users SET role = 0 WHERE account_id = 1 AND user_id = 2")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 2, false).await;
    until_inbox_routing(&db, &mut bob, 2, 1, false).await;
}
