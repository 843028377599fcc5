//! The outbox guarantees: exactly once, in commit order, across out-of-order commits, a dropped
//! LISTEN connection, bursts and backlogs spanning several reader pages; malformed rows are
//! skipped and counted.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::events::*;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn malformed_rows_are_refused_at_insert() {
    let db = TestDb::new().await;
    for (event, data) in [
        ("message.created", json!([1, 2, 3])),
        ("message.created", json!("a string")),
        ("message.created", json!(17)),
        ("", json!({"tag": "nameless"})),
    ] {
        let refused =
            sqlx::query("INSERT INTO cable_events (account_id, event, data) VALUES (1, $1, $2)")
                .bind(event)
                .bind(&data)
                .execute(&db.pool)
                .await
                .expect_err("the CHECK constraints refuse it");
        let code = refused.as_database_error().and_then(|e| e.code());
        assert_eq!(
            code.as_deref(),
            Some("23514"),
            "{event:?} {data}: {refused}"
        );
    }
}

#[tokio::test]
async fn malformed_rows_are_skipped_counted_and_the_reader_goes_on() {
    let db = TestDb::new().await;
    // Rows from before the CHECK constraints (migration 0004) may still be malformed.
    db.exec(
        "ALTER TABLE cable_events DROP CONSTRAINT cable_events_data_is_object,
                                  DROP CONSTRAINT cable_events_event_not_empty",
    )
    .await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    db.publish(1, "message.created", json!([1, 2, 3]), json!({}))
        .await;
    db.publish(1, "message.created", json!("a string"), json!({}))
        .await;
    db.publish(1, "message.created", json!(17), json!({})).await;
    db.publish(1, "", json!({"tag": "nameless"}), json!({}))
        .await;
    db.publish(1, "message.created", json!({"tag": "after"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "after");
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "data_not_object"),
        3.0
    );
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "empty_event"),
        1.0
    );

    // Malformed rows inside one transaction with good ones: only they are dropped.
    let mut tx = db.pool.begin().await.unwrap();
    publish(
        &mut *tx,
        1,
        "message.created",
        json!({"tag": "one"}),
        json!({}),
    )
    .await;
    publish(&mut *tx, 1, "message.created", json!(["bad"]), json!({})).await;
    publish(
        &mut *tx,
        1,
        "message.created",
        json!({"tag": "two"}),
        json!({}),
    )
    .await;
    tx.commit().await.unwrap();
    assert_eq!(next_tag(&mut alice).await, "one");
    assert_eq!(next_tag(&mut alice).await, "two");
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "data_not_object"),
        4.0
    );
    // And later reads still work.
    db.publish(1, "message.created", json!({"tag": "later"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "later");
}

#[tokio::test]
async fn data_over_the_size_limit_is_skipped_and_counted() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_event_size = 1000;
    let gw = start(config).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;
    // `data` as the backend stored it (jsonb's text): with `account_id`, and without it (the
    // gateway adds it, and that must not push a row at the limit over it).
    let skeleton = |tag: &str| match tag {
        "at the limit, no account_id" => json!({"tag": tag, "pad": ""}),
        _ => json!({"tag": tag, "pad": "", "account_id": 1}),
    };
    let mut sized = Vec::new();
    for (tag, bytes) in [
        ("too large", 1001),
        ("at the limit, no account_id", 1000),
        ("at the limit", 1000),
    ] {
        let base: i32 = sqlx::query_scalar("SELECT octet_length($1::jsonb::text)")
            .bind(skeleton(tag))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let mut data = skeleton(tag);
        data["pad"] = json!("x".repeat(bytes - base as usize));
        sized.push(data);
    }
    for data in sized {
        db.publish(1, "message.created", data, json!({})).await;
    }
    assert_eq!(next_tag(&mut alice).await, "at the limit, no account_id");
    assert_eq!(next_tag(&mut alice).await, "at the limit");
    assert_eq!(metric(&gw, "cable_events_skipped_total", "too_large"), 1.0);
}

#[tokio::test]
async fn a_transaction_committing_after_a_higher_id_is_delivered_once() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;
    let m = "message.created";

    // A takes the lower id, B the higher; B commits first and is read while A is open.
    let mut a = db.pool.begin().await.unwrap();
    let id_a = publish(&mut *a, 1, m, json!({"tag": "A"}), json!({})).await;
    let mut b = db.pool.begin().await.unwrap();
    let id_b = publish(&mut *b, 1, m, json!({"tag": "B"}), json!({})).await;
    assert!(id_a < id_b);
    b.commit().await.unwrap();
    assert_eq!(next_tag(&mut alice).await, "B");
    // More reads pass while A stays open.
    for i in 0..3 {
        let tag = format!("C{i}");
        db.publish(1, m, json!({"tag": tag}), json!({})).await;
        assert_eq!(next_tag(&mut alice).await, tag);
    }
    a.commit().await.unwrap();
    assert_eq!(
        next_tag(&mut alice).await,
        "A",
        "the lower id is not skipped"
    );
    db.publish(1, m, json!({"tag": "marker 1"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 1", "and not repeated");

    // Committed back to back, out of id order: both, once each.
    let mut a = db.pool.begin().await.unwrap();
    let id_a = publish(&mut *a, 1, m, json!({"tag": "A2"}), json!({})).await;
    let mut b = db.pool.begin().await.unwrap();
    let id_b = publish(&mut *b, 1, m, json!({"tag": "B2"}), json!({})).await;
    assert!(id_a < id_b);
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    let mut both = vec![next_tag(&mut alice).await, next_tag(&mut alice).await];
    both.sort();
    assert_eq!(both, ["A2", "B2"]);
    db.publish(1, m, json!({"tag": "marker 2"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 2", "no duplicate");

    // A rolled-back transaction publishes nothing, and holds nothing up.
    let mut r = db.pool.begin().await.unwrap();
    publish(&mut *r, 1, m, json!({"tag": "rolled back"}), json!({})).await;
    db.publish(1, m, json!({"tag": "committed"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "committed");
    r.rollback().await.unwrap();
    db.publish(1, m, json!({"tag": "marker 3"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 3");
}

/// Terminates the gateway's LISTEN connection; returns how many backends were ended.
async fn kill_listener(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND query ILIKE '%LISTEN%' AND pid <> pg_backend_pid()) t",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .expect("terminate the listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_listen_connection_drops_arrive_once_in_order() {
    const KILLS: usize = 3;
    const MIN_EVENTS: u64 = 300;
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // Publishes one event per transaction until told to stop (and at least MIN_EVENTS).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stopped.borrow() || seq < MIN_EVENTS {
                let data = json!({"tag": "seq", "seq": seq});
                publish(&pool, 1, "message.created", data, json!({})).await;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seq
        })
    };

    let mut live = gw.listen_readiness();
    let mut outages = Vec::new();
    for kill in 0..KILLS {
        tokio::time::timeout(WAIT, live.wait_for(|live| *live))
            .await
            .expect("listener live again")
            .unwrap();
        assert_eq!(
            kill_listener(&db).await,
            1,
            "kill {kill}: one LISTEN backend"
        );
        let killed = Instant::now();
        tokio::time::timeout(WAIT, live.wait_for(|live| !*live))
            .await
            .expect("the gateway notices the dropped listener")
            .unwrap();
        tokio::time::timeout(WAIT, live.wait_for(|live| *live))
            .await
            .expect("listener reconnects")
            .unwrap();
        outages.push(killed.elapsed());
    }
    stop.send_replace(true);
    let total = publisher.await.unwrap();

    for expected in 0..total {
        let (_, message) = published(&mut alice).await;
        assert_eq!(message["data"]["seq"], expected, "in order, none lost");
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker", "none twice");

    assert!(metric(&gw, "cable_listener_reconnects_total", "") >= KILLS as f64);
    assert!(*gw.listen_readiness().borrow());
    assert_eq!(http_get(gw.addr, "/ready").await.0, 200);
    // Regression: the backoff must start over once a connection was live again, or each drop
    // of a healthy listener waits longer (1 s, 2 s, 4 s, … 30 s of 503 from /ready).
    for (kill, outage) in outages.iter().enumerate() {
        assert!(
            *outage < Duration::from_millis(2500),
            "kill {kill}: listener down for {outage:?} (all: {outages:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_1000_events_arrive_complete_and_in_order() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // One transaction: exactly one page of the reader.
    db.exec(
        "INSERT INTO cable_events (account_id, event, data)
         SELECT 1, 'message.created', jsonb_build_object('tag', 'one', 'seq', g)
           FROM generate_series(0, 999) g",
    )
    .await;
    for expected in 0..1000 {
        let (_, message) = published(&mut alice).await;
        assert_eq!(
            message["data"],
            json!({"tag": "one", "seq": expected, "account_id": 1})
        );
    }

    // A thousand transactions, back to back.
    let mut conn = db.pool.acquire().await.unwrap();
    for seq in 0..1000 {
        publish(
            &mut *conn,
            1,
            "message.created",
            json!({"tag": "many", "seq": seq}),
            json!({}),
        )
        .await;
    }
    for expected in 0..1000 {
        let (_, message) = published(&mut alice).await;
        assert_eq!(message["data"]["tag"], "many");
        assert_eq!(message["data"]["seq"], expected);
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_spanning_several_reader_pages_arrive_once_in_order_amid_other_commits() {
    const BACKLOGS: u64 = 3;
    const ROWS: u64 = 2500;
    let db = TestDb::new().await;
    let mut config = db.config();
    // The reader may queue a whole page (1000 rows) for one subscription at once.
    config.send_queue = 8192;
    let gw = start(config).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // Small transactions keep committing while the reader pages through each backlog: rows
    // that commit between two pages of one read must be read exactly once all the same.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stopped.borrow() {
                let data = json!({"tag": "live", "seq": seq});
                publish(&pool, 1, "message.created", data, json!({})).await;
                seq += 1;
            }
            seq
        })
    };
    for backlog in 0..BACKLOGS {
        db.exec(&format!(
            "INSERT INTO cable_events (account_id, event, data)
             SELECT 1, 'message.created', jsonb_build_object('tag', 'backlog {backlog}', 'seq', g)
               FROM generate_series(0, {}) g",
            ROWS - 1
        ))
        .await;
    }
    // Each tag's events in order, none missing, none twice.
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut check = |message: &Value| {
        let tag = tag(message).to_string();
        let seq = message["data"]["seq"].as_u64().unwrap();
        let expected = next.entry(tag.clone()).or_default();
        assert_eq!(seq, *expected, "{tag}");
        *expected += 1;
        tag
    };
    let mut live_seen = 0;
    for _ in 0..BACKLOGS * ROWS {
        // Live events interleave anywhere; count only the backlog ones here.
        while check(&published(&mut alice).await.1) == "live" {
            live_seen += 1;
        }
    }
    stop.send_replace(true);
    let live = publisher.await.unwrap();
    assert!(live > 0);
    for _ in live_seen..live {
        assert_eq!(check(&published(&mut alice).await.1), "live");
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker");

    // A transaction holding a lower id commits while the reader is between the pages of one
    // read (its first page is already out): it is delivered once, in the next read.
    let mut late = db.pool.begin().await.unwrap();
    let data = json!({"tag": "late", "seq": 0});
    publish(&mut *late, 1, "message.created", data, json!({})).await;
    db.exec(
        "INSERT INTO cable_events (account_id, event, data)
         SELECT 1, 'message.created', jsonb_build_object('tag', 'paged', 'seq', g)
           FROM generate_series(0, 4999) g",
    )
    .await;
    assert_eq!(check(&published(&mut alice).await.1), "paged");
    late.commit().await.unwrap();
    for _ in 1..5000 + 1 {
        check(&published(&mut alice).await.1);
    }
    db.publish(1, "message.created", json!({"tag": "marker 2"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 2");
}
