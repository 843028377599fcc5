//! Live subscriptions follow the database: role and inbox-membership changes re-route within
//! seconds. (Revoked tokens are in `tests/hardening.rs`.)

mod common;

use std::time::{Duration, Instant};

use cable_gateway::server::Running;
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

/// A pass looks subscriptions up a chunk at a time: every chunk is checked, a token revoked
/// in any of them loses its subscription, a membership change in any of them is applied, and
/// nothing else changes.
#[tokio::test]
async fn a_pass_over_many_subscriptions_checks_every_one() {
    use std::sync::Arc;

    use cable_gateway::auth::{batch::Batcher, AuthCache, Principal};
    use cable_gateway::metrics::Metrics;
    use cable_gateway::resume::rings::Rings;
    use cable_gateway::revalidate::{self, Revalidation};
    use cable_gateway::router::Router;

    const N: i64 = 2_600; // three chunks of the pass
    let db = TestDb::new().await;
    let metrics = Arc::new(Metrics::new());
    let router = Arc::new(Router::new(
        metrics.clone(),
        Arc::new(Rings::new(16, Duration::from_secs(60))),
        0,
    ));
    let ids = bulk_user_subscriptions(&db, &router, &metrics, 1000, N).await;
    let (batcher, _batching) = Batcher::new(db.pool.clone(), metrics.clone());
    let pass = Revalidation {
        pool: db.pool.clone(),
        router: router.clone(),
        auth: AuthCache::new(
            batcher,
            metrics.clone(),
            Duration::from_secs(60),
            Duration::from_secs(5),
            1_000,
        ),
        metrics,
    };
    assert_eq!(revalidate::once(&pass).await.unwrap(), 0, "all valid");

    // Wherever the pass's chunks fall, these are spread over all of them.
    let removed = [1000, 1999, 2500, 3000, 999 + N];
    let moved = 2222;
    db.exec(&format!(
        "DELETE FROM account_users WHERE user_id IN ({});
         INSERT INTO inbox_members (user_id, inbox_id) VALUES ({moved}, 1);",
        removed.map(|id| id.to_string()).join(",")
    ))
    .await;
    assert_eq!(
        revalidate::once(&pass).await.unwrap(),
        removed.len(),
        "every removed user, in whichever chunk"
    );
    let all: Vec<u64> = ids.values().copied().collect();
    let live = router.live(&all);
    assert_eq!(live.len(), N as usize - removed.len());
    for user_id in removed {
        assert!(live.iter().all(|(id, _, _)| *id != ids[&user_id]));
    }
    let (principal, _) = router.principal_of(ids[&moved]).unwrap();
    match principal {
        Principal::User { membership, .. } => assert_eq!(&*membership.inbox_ids, &[1]),
        Principal::Contact(_) => unreachable!(),
    }
    assert_eq!(
        revalidate::once(&pass).await.unwrap(),
        0,
        "and nothing more"
    );
}

/// A gateway whose passes come only from change notifications, or every `interval_ms` where
/// changes cannot be heard: its full pass is an hour away.
async fn gateway_without_full_passes(interval_ms: u64, db: &TestDb) -> Running {
    let mut config = db.config();
    config.revalidate_interval = Duration::from_millis(interval_ms);
    config.revalidate_full_interval = Duration::from_secs(3600);
    start(config).await
}

/// Waits until the metric `name` satisfies `want`; fails after [`WAIT`].
async fn until_metric(gw: &Running, name: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(gw, name, "");
        if want(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} is still {value}");
        // No readiness signal for a metric: it is polled.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one subscription of `client` gets a reject within 5 s of `started`.
async fn rejected_within_5_s(client: &mut Client, identifier: &str, started: Instant) {
    assert_eq!(client.next_significant().await, reject(identifier));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// With the triggers in place, a quiet database costs no pass (whatever else changes in the
/// identity tables, such as a user's name), and a change that matters is followed at once.
#[tokio::test]
async fn passes_follow_changes_and_nothing_polls_while_nothing_changes() {
    let db = TestDb::new().await;
    let gw = gateway_without_full_passes(100, &db).await;
    until_metric(&gw, "cable_revalidation_on_change", |v| v == 1.0).await;
    // The pass that follows the LISTEN connection going live (a catch-up).
    until_metric(&gw, "cable_revalidation_passes_total", |v| v >= 1.0).await;
    let mut bob = Client::ready(gw.addr).await;
    let identifier = user(BOB, 1, 2);
    bob.subscribe_ok(&identifier).await;

    let quiet = metric(&gw, "cable_revalidation_passes_total", "");
    db.exec("UPDATE users SET name = 'Robert' WHERE id = 2")
        .await;
    db.exec("UPDATE contacts SET name = 'Dave D.' WHERE id = 1")
        .await;
    // An absence has no signal to wait for: ten intervals without a pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(&gw, "cable_revalidation_passes_total", ""),
        quiet,
        "a pass ran while nothing it reads changed"
    );

    db.exec("DELETE FROM account_users WHERE account_id = 1 AND user_id = 2")
        .await;
    rejected_within_5_s(&mut bob, &identifier, Instant::now()).await;
    assert!(metric(&gw, "cable_revalidation_passes_total", "") > quiet);
    assert_eq!(metric(&gw, "cable_revocations_total", ""), 1.0);
}

/// A table whose trigger is disabled cannot tell its changes: passes poll every interval,
/// revocations still land within 5 s, and once the trigger is back, polling stops.
#[tokio::test]
async fn without_a_trigger_passes_poll_and_revocations_still_land() {
    let db = TestDb::new().await;
    db.exec("ALTER TABLE contact_inboxes DISABLE TRIGGER cable_auth_changed")
        .await;
    let gw = gateway_without_full_passes(200, &db).await;
    let mut dave = Client::ready(gw.addr).await;
    let identifier = contact(DAVE, Some(1));
    dave.subscribe_ok(&identifier).await;
    assert_eq!(metric(&gw, "cable_revalidation_on_change", ""), 0.0);
    let before = metric(&gw, "cable_revalidation_passes_total", "");
    until_metric(&gw, "cable_revalidation_passes_total", |v| {
        v >= before + 2.0
    })
    .await;

    db.exec("DELETE FROM contact_inboxes WHERE id = 1").await;
    rejected_within_5_s(&mut dave, &identifier, Instant::now()).await;

    db.exec("ALTER TABLE contact_inboxes ENABLE TRIGGER cable_auth_changed")
        .await;
    until_metric(&gw, "cable_revalidation_on_change", |v| v == 1.0).await;
}

/// `cable-gateway migrate` adds the triggers again where they are missing (a first run
/// without the privilege, or a dropped one), and leaves those in place alone.
#[tokio::test]
async fn migrate_adds_missing_triggers_again() {
    let db = TestDb::new().await;
    let untriggered = || async {
        cable_gateway::revalidate::untriggered(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(untriggered().await, Vec::<String>::new());
    db.exec("DROP TRIGGER cable_auth_changed ON inbox_members")
        .await;
    db.exec("ALTER TABLE users DISABLE TRIGGER cable_auth_changed")
        .await;
    assert_eq!(untriggered().await, ["inbox_members", "users"]);
    let url = cable_gateway::db::Database::from_url(&db.url).unwrap();
    cable_gateway::migrate::apply(&url).await.unwrap();
    // A disabled trigger is the operator's choice: migrate does not enable it.
    assert_eq!(untriggered().await, ["users"]);
}

/// On a host's database the gateway's role may lack the TRIGGER privilege on the identity
/// tables: adding the triggers then says so and changes nothing, instead of failing.
#[tokio::test]
async fn without_the_privilege_the_triggers_are_skipped_not_failed() {
    let db = TestDb::new().await;
    db.exec("DROP TRIGGER cable_auth_changed ON account_users")
        .await;
    let role = format!("{}_app", db.name);
    db.exec(&format!("CREATE ROLE {role}")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    let installed: bool = sqlx::query_scalar("SELECT cable_install_auth_triggers()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql("RESET ROLE")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    db.exec(&format!("DROP ROLE {role}")).await;
    assert!(!installed);
    assert_eq!(
        cable_gateway::revalidate::untriggered(&db.pool)
            .await
            .unwrap(),
        ["account_users"]
    );
}

/// While the LISTEN connection is down, changes cannot be heard: passes poll, so a removal
/// made then is still followed within 5 s; once the connection is back, polling stops.
#[tokio::test]
async fn while_the_listen_connection_is_down_passes_poll() {
    let db = TestDb::new().await;
    let gw = gateway_without_full_passes(200, &db).await;
    let mut bob = Client::ready(gw.addr).await;
    let identifier = user(BOB, 1, 2);
    bob.subscribe_ok(&identifier).await;
    until_metric(&gw, "cable_revalidation_on_change", |v| v == 1.0).await;

    // Keep one connection of ours, refuse new ones, and end only the LISTEN connection: the
    // gateway's pool keeps its connections, so passes can still run, but nothing is heard.
    let mut ours = db.pool.acquire().await.unwrap();
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    let allow = |on: bool| format!("ALTER DATABASE {} ALLOW_CONNECTIONS {on}", db.name);
    sqlx::query(sqlx::AssertSqlSafe(allow(false)))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&db.name)
    .execute(&admin)
    .await
    .unwrap();
    until_metric(&gw, "cable_revalidation_on_change", |v| v == 0.0).await;

    sqlx::query("DELETE FROM account_users WHERE account_id = 1 AND user_id = 2")
        .execute(&mut *ours)
        .await
        .unwrap();
    rejected_within_5_s(&mut bob, &identifier, Instant::now()).await;

    sqlx::query(sqlx::AssertSqlSafe(allow(true)))
        .execute(&admin)
        .await
        .unwrap();
    until_metric(&gw, "cable_revalidation_on_change", |v| v == 1.0).await;
}
