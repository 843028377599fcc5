//! Database outages: one simulated (the test database refuses and drops connections) and one
//! real (the cluster is stopped and started again while clients are subscribed). Both must
//! look the same to clients: nothing lost, no one rejected. `scripts/test` runs the real one
//! alone on its private cluster (stage 2b), because it takes the database away from everyone.

mod common;

use std::time::Duration;

use cable_gateway::server::Running;
use common::*;
use serde_json::{json, Value};

/// Runs a function of scripts/lib/pg.sh against the private cluster.
fn cluster(action: &str) {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source scripts/lib/pg.sh && {action}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("bash runs");
    assert!(status.success(), "{action} failed");
}

/// What a client sees while the gateway's database is unreachable: the LISTEN connection is down,
/// `/ready` says 503, `/health` still 200, and a subscribe is told to reconnect, never
/// rejected (the pool may retry for its acquire timeout first, so pings may come before).
async fn check_outage_answers(gw: &Running) {
    let mut live = gw.listen_readiness();
    tokio::time::timeout(WAIT, live.wait_for(|live| !*live))
        .await
        .expect("the LISTEN connection notices the outage in time")
        .unwrap();
    assert_eq!(http_get(gw.addr, "/ready").await.0, 503);
    assert_eq!(http_get(gw.addr, "/health").await.0, 200);
    let mut newcomer = Client::ready(gw.addr).await;
    newcomer.send(subscribe(&user("demo-user-bob", 1, 2))).await;
    let frames: Vec<Value> = newcomer
        .until_closed()
        .await
        .into_iter()
        .filter(|f| f["type"] != "ping")
        .collect();
    assert_eq!(
        frames,
        vec![json!({"type": "disconnect", "reason": "server_restart", "reconnect": true})],
        "a subscribe during an outage is told to reconnect, never rejected"
    );
}

/// Cuts the test database off: no connection in, every connection out. Returns the admin
/// connection that puts it back ([`reconnect`]).
async fn cut_off(db: &TestDb) -> sqlx::PgPool {
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    let cut = format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name);
    sqlx::query(sqlx::AssertSqlSafe(cut))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db.name)
        .execute(&admin)
        .await
        .unwrap();
    admin
}

async fn reconnect(db: &TestDb, admin: &sqlx::PgPool) {
    let allow = format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name);
    sqlx::query(sqlx::AssertSqlSafe(allow))
        .execute(admin)
        .await
        .unwrap();
}

/// After an outage: the LISTEN connection comes back within its backoff, `/ready` says 200
/// again, and a new subscribe is confirmed.
async fn check_recovered(gw: &Running) {
    let mut live = gw.listen_readiness();
    tokio::time::timeout(Duration::from_secs(45), live.wait_for(|live| *live))
        .await
        .expect("the LISTEN connection is back within its backoff")
        .unwrap();
    assert_eq!(http_get(gw.addr, "/ready").await.0, 200);
    let mut newcomer = Client::ready(gw.addr).await;
    newcomer.subscribe_ok(&user("demo-user-bob", 1, 2)).await;
}

#[tokio::test]
async fn a_database_outage_loses_nothing_and_rejects_no_one() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.outbox_poll = Duration::from_millis(200);
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    db.publish(1, "message.created", json!({"seq": 0}), json!({}))
        .await;
    // The outage: no connection in, every connection out.
    let admin = cut_off(&db).await;
    check_outage_answers(&gw).await;
    // Back up: events committed after the outage arrive, and so did the one before it.
    reconnect(&db, &admin).await;
    let fresh = sqlx::PgPool::connect(&db.url).await.unwrap();
    for seq in 1..=3 {
        publish(&fresh, 1, "message.created", json!({"seq": seq}), json!({})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let (_, message) = client.event().await;
        seen.push(message["data"]["seq"].as_i64().unwrap());
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    check_recovered(&gw).await;
}

#[tokio::test]
#[ignore = "restarts the whole PostgreSQL cluster: scripts/test runs it alone on its private cluster"]
async fn postgres_restart_loses_nothing_and_rejects_no_one() {
    assert!(
        std::env::var_os("CABLE_PG_RESTARTABLE").is_some(),
        "run through scripts/test, which owns the cluster it restarts"
    );
    let db = TestDb::new().await;
    let mut config = db.config();
    config.outbox_poll = Duration::from_millis(200);
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    for seq in 0..5 {
        db.publish(1, "message.created", json!({"seq": seq}), json!({}))
            .await;
    }
    db.pool.close().await;

    cluster("pg_cluster_pause");
    check_outage_answers(&gw).await;

    cluster("pg_cluster_resume");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for seq in 5..10 {
        publish(&pool, 1, "message.created", json!({"seq": seq}), json!({})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let (_, message) = client.event().await;
        seen.push(message["data"]["seq"].as_i64().unwrap());
    }
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    check_recovered(&gw).await;
}

/// A subscribe that meets a short outage (a PostgreSQL restart takes 1–2 s) waits for the
/// database instead of telling the client to reconnect: @anycable/core's extended-protocol
/// client closes a channel for good when its connection drops while a subscribe awaits its
/// confirm, so a `disconnect` there would end the channel (issue 26's soak found it).
#[tokio::test]
async fn a_subscribe_during_a_short_outage_is_confirmed_once_the_database_answers() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let admin = cut_off(&db).await;
    let mut newcomer = Client::ready(gw.addr).await;
    let identifier = user("demo-user-bob", 1, 2);
    newcomer.send(subscribe(&identifier)).await;
    // The outage lasts until the gateway has retried the lookup once.
    let retried = || metric(&gw, "cable_commands_total", "result=\"retried\"");
    let deadline = tokio::time::Instant::now() + WAIT;
    while retried() < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscribe is retried during the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reconnect(&db, &admin).await;
    assert_eq!(
        newcomer.next().await,
        confirm(&identifier),
        "confirmed once the database answers, with no disconnect before"
    );
}
