//! A real PostgreSQL outage: the cluster is stopped and started again while clients are
//! subscribed. `scripts/test` runs this alone on its private cluster (stage 2b), because it
//! takes the database away from everyone.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

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
