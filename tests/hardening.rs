//! Hostile input, limits, revocation, shutdown and database outages.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn disconnect(reason: &str, reconnect: bool) -> serde_json::Value {
    json!({"type": "disconnect", "reason": reason, "reconnect": reconnect})
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_subscriptions = 2;
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    client
        .subscribe_ok(&contact("demo-contact-dave", None))
        .await;
    let third = user("demo-user-bob", 1, 2);
    client.send(subscribe(&third)).await;
    assert_eq!(client.next_significant().await, reject(&third));
    // Freeing a slot makes room again.
    client
        .send(unsubscribe(&contact("demo-contact-dave", None)))
        .await;
    client.subscribe_ok(&third).await;
}

#[tokio::test]
async fn command_floods_end_the_connection() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_command_rate = 5;
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    for _ in 0..40 {
        client
            .send(json!({"command": "message", "identifier": "{}", "data": "{}"}))
            .await;
    }
    let frames = client.until_closed().await;
    assert_eq!(frames.last(), Some(&disconnect("invalid_request", false)));
    assert!(metric(&gw, "cable_invalid_frames_total", "rate_limited") >= 1.0);
}

#[tokio::test]
async fn token_guessing_is_cut_off_after_too_many_rejects() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_rejects = 3;
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    for guess in 0..3 {
        let id = user(&format!("guess-{guess}"), 1, 1);
        client.send(subscribe(&id)).await;
        assert_eq!(client.next().await, reject(&id));
    }
    let id = user("guess-last", 1, 1);
    client.send(subscribe(&id)).await;
    let frames = client.until_closed().await;
    assert_eq!(frames, vec![reject(&id), disconnect("unauthorized", false)]);
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_others_are_unaffected() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_connections = 2;
    let gw = start(config).await;
    let mut first = Client::ready(gw.addr).await;
    let second = Client::ready(gw.addr).await;
    match Client::connect_with(gw.addr, &[], None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| "a connection")),
    }
    assert_eq!(
        metric(&gw, "cable_connections_refused_total", "connection_limit"),
        1.0
    );
    first.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    // A slot frees when a connection ends.
    drop(second);
    let mut third = None;
    for _ in 0..100 {
        if let Ok(client) = Client::connect_with(gw.addr, &[], None).await {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // waiting for the server to notice the close
    }
    let mut third = third.expect("a slot freed after a close");
    assert_eq!(third.next().await, json!({"type": "welcome"}));
}

/// Subscribes `victim` and a `witness` on one connection, makes `revoke` happen, and checks
/// that the victim gets a reject within 5 s and nothing after it, while the witness goes on.
async fn revocation_case(victim: &str, revoke: &str) {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.revalidate_interval = Duration::from_millis(200);
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    let witness = user("demo-user-frank", 2, 4);
    client.subscribe_ok(victim).await;
    client.subscribe_ok(&witness).await;
    db.exec(revoke).await;
    let started = std::time::Instant::now();
    let frame = client.next_significant().await;
    assert_eq!(frame, reject(victim), "{revoke}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing more for the victim: the next event it would have been entitled to goes only to
    // the witness (account 2), and account 1 broadcasts reach nobody here.
    db.publish(
        1,
        "message.created",
        json!({"id": 1}),
        json!({"contact_inbox_ids": [1]}),
    )
    .await;
    db.publish(2, "message.created", json!({"id": 2}), json!({}))
        .await;
    let (identifier, message) = client.event().await;
    assert_eq!(
        (identifier.as_str(), message["data"]["id"].as_i64()),
        (witness.as_str(), Some(2))
    );
    assert!(metric(&gw, "cable_revocations_total", "") >= 1.0);
}

#[tokio::test]
async fn rotated_user_tokens_lose_their_subscriptions() {
    revocation_case(
        &user("demo-user-alice", 1, 1),
        "UPDATE users SET pubsub_token = 'rotated' WHERE id = 1",
    )
    .await;
}

#[tokio::test]
async fn users_removed_from_the_account_lose_their_subscriptions() {
    revocation_case(
        &user("demo-user-bob", 1, 2),
        "DELETE FROM account_users WHERE account_id = 1 AND user_id = 2",
    )
    .await;
}

#[tokio::test]
async fn deleted_contact_sessions_lose_their_subscriptions() {
    revocation_case(
        &contact("demo-contact-dave", Some(1)),
        "DELETE FROM contact_inboxes WHERE id = 1",
    )
    .await;
}

#[tokio::test]
async fn shutdown_writes_events_already_read_then_says_server_restart() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..200 {
        publish(&mut *tx, 1, "message.created", json!({"seq": i}), json!({})).await;
    }
    tx.commit().await.unwrap();
    // Wait until the gateway has read them all (its own counter is the readiness signal).
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&gw, "cable_events_read_total", "") < 200.0 {
        assert!(std::time::Instant::now() < deadline, "events read in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let frames = client.until_closed().await;
    let events: Vec<i64> = frames
        .iter()
        .filter(|f| f["message"]["event"] == "message.created")
        .map(|f| f["message"]["data"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        events,
        (0..200).collect::<Vec<_>>(),
        "every event read was written first"
    );
    assert_eq!(frames.last(), Some(&disconnect("server_restart", true)));
}

#[tokio::test]
async fn events_past_the_retention_are_pruned() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.event_retention = Duration::from_secs(5);
    let gw = start(config).await;
    db.exec(
        "INSERT INTO cable_events (account_id, event, data, created_at)
         VALUES (1, 'old.event', '{}', now() - interval '1 hour'), (1, 'fresh.event', '{}', now())",
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events: Vec<String> = sqlx::query_scalar("SELECT event FROM cable_events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        if events == ["fresh.event"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old event still there: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // the pruner runs on its own clock
    }
    assert!(metric(&gw, "cable_events_pruned_total", "") >= 1.0);
}

#[tokio::test]
async fn a_reading_client_survives_a_burst_larger_than_its_queue() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.send_queue = 64;
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    // One transaction of 1000 events: the reader dispatches them a page at a time, far faster
    // than any socket drains, yet this client reads everything it is sent.
    let mut tx = db.pool.begin().await.unwrap();
    for seq in 0..1000 {
        publish(
            &mut *tx,
            1,
            "message.created",
            json!({"seq": seq}),
            json!({}),
        )
        .await;
    }
    tx.commit().await.unwrap();
    for seq in 0..1000 {
        let (_, message) = client.event().await;
        assert_eq!(message["data"]["seq"], seq);
    }
    assert_eq!(metric(&gw, "cable_too_slow_disconnects_total", ""), 0.0);
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_closed() {
    use tokio::io::AsyncReadExt;
    let db = TestDb::new().await;
    let mut config = db.config();
    config.first_bytes_timeout = Duration::from_secs(2);
    let gw = start(config).await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let connected = std::time::Instant::now();
    // Meanwhile a client that sends its request a moment after connecting is served.
    let late = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the client's own delay, not a wait for the server
    let (ws, _) = tokio_tungstenite::client_async("ws://x/cable", late)
        .await
        .expect("a request sent after a pause still upgrades");
    drop(ws);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte))
        .await
        .expect("the silent connection is closed after the first-bytes timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, nothing written");
    let after = connected.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}, before the 2 s timeout"
    );
}

#[tokio::test]
async fn a_request_whose_head_never_ends_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let mut config = db.config();
    config.first_bytes_timeout = Duration::from_secs(2);
    let gw = start(config).await;
    // A slowloris: the request line and one header, then a header byte now and then.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /cable HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let mut trickled = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut byte)).await {
            Ok(read) => break read,
            Err(_) => {
                assert!(
                    began.elapsed() < Duration::from_secs(10),
                    "a request head trickling for 10 s is still open"
                );
                // Another byte of a header that never ends; a write may fail once closed.
                if slow.write_all(b"x").await.is_ok() {
                    trickled += 1;
                }
            }
        }
    };
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "closed without an answer: {closed:?}"
    );
    let after = began.elapsed();
    assert!(
        after >= Duration::from_millis(1900) && trickled > 0,
        "closed after {after:?} ({trickled} bytes trickled), before the 2 s timeout"
    );
    // The gateway still serves a client that sends its request whole.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/cable", gw.addr))
        .await
        .expect("upgrade after the slowloris");
    drop(ws);
}
