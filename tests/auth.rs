//! RoomChannel authentication rules and the token cache.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn answer(gw: &cable_gateway::server::Running, identifier: &str) -> serde_json::Value {
    let mut client = Client::ready(gw.addr).await;
    client.send(subscribe(identifier)).await;
    client.next().await
}

#[tokio::test]
async fn user_and_contact_tokens_are_confirmed() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    for id in [
        user("demo-user-alice", 1, 1),
        user("demo-user-bob", 1, 2),
        json!({"channel": "RoomChannel", "pubsub_token": "demo-user-bob", "account_id": "1", "user_id": "2"}).to_string(),
        user("demo-user-frank", 2, 4),
        contact("demo-contact-dave", None),
        contact("demo-contact-dave", Some(1)),
        json!({"channel": "RoomChannel", "pubsub_token": "demo-contact-gina", "account_id": "2", "user_id": ""}).to_string(),
        json!({"channel": "RoomChannel", "pubsub_token": "demo-contact-erin", "user_id": null}).to_string(),
    ] {
        assert_eq!(answer(&gw, &id).await, confirm(&id), "{id}");
    }
}

#[tokio::test]
async fn invalid_principals_are_rejected_and_counted_by_reason() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    #[rustfmt::skip]
    let cases = [
        ("unknown token", "unknown_token", user("nope", 1, 1)),
        ("token of another user", "token_of_another_user", user("demo-user-alice", 1, 2)),
        ("account the user is not in", "user_not_in_account", user("demo-user-alice", 2, 1)),
        ("user subscription without account", "account_id_missing", json!({"channel": "RoomChannel", "pubsub_token": "demo-user-alice", "user_id": 1}).to_string()),
        ("non-numeric user id", "id_not_numeric", json!({"channel": "RoomChannel", "pubsub_token": "demo-user-alice", "account_id": 1, "user_id": "alice"}).to_string()),
        ("unknown contact token", "unknown_token", contact("nope", None)),
        ("contact in another account", "contact_of_another_account", contact("demo-contact-dave", Some(2))),
        ("contact token used as a user", "unknown_token", user("demo-contact-dave", 1, 1)),
        ("user token used as a contact", "unknown_token", contact("demo-user-alice", Some(1))),
        ("missing token", "pubsub_token_missing", json!({"channel": "RoomChannel", "account_id": 1}).to_string()),
        ("token not a string", "pubsub_token_missing", json!({"channel": "RoomChannel", "pubsub_token": 5, "account_id": 1}).to_string()),
        ("unknown channel", "unknown_channel", json!({"channel": "ChatChannel", "pubsub_token": "demo-user-alice"}).to_string()),
    ];
    for (why, reason, id) in cases {
        let label = format!("reason=\"{reason}\"");
        let before = metric(&gw, "cable_subscribe_rejects_total", &label);
        assert_eq!(answer(&gw, &id).await, reject(&id), "{why}");
        let after = metric(&gw, "cable_subscribe_rejects_total", &label);
        assert_eq!(after - before, 1.0, "{why} is counted as {reason}");
    }
}

#[tokio::test]
async fn a_subscribe_storm_for_one_token_costs_one_query() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::ready(gw.addr).await);
    }
    let before = metric(&gw, "cable_auth_queries_total", "");
    let id = user("demo-user-bob", 1, 2);
    for client in &mut clients {
        client.send(subscribe(&id)).await;
    }
    for client in &mut clients {
        assert_eq!(client.next_significant().await, confirm(&id));
    }
    assert_eq!(metric(&gw, "cable_auth_queries_total", "") - before, 1.0);
    assert_eq!(metric(&gw, "cable_auth_cache_misses_total", ""), 1.0);
    assert!(metric(&gw, "cable_auth_cache_hits_total", "") >= 49.0);
}

#[tokio::test]
async fn unknown_tokens_are_cached_briefly_then_looked_up_again() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.auth_negative_ttl = Duration::from_millis(300);
    let gw = start(config).await;
    let id = user("late-token", 1, 1);
    assert_eq!(answer(&gw, &id).await, reject(&id));
    assert_eq!(answer(&gw, &id).await, reject(&id));
    assert_eq!(
        metric(&gw, "cable_auth_queries_total", ""),
        1.0,
        "second reject came from the cache"
    );
    // The token appears (e.g. rotated in); once the negative entry expires it is valid.
    db.exec("UPDATE users SET pubsub_token = 'late-token' WHERE id = 1")
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await; // the TTL itself is what is tested
    assert_eq!(answer(&gw, &id).await, confirm(&id));
}

#[tokio::test]
async fn a_storm_of_distinct_tokens_is_looked_up_in_batches() {
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO users (id, name, pubsub_token)
           SELECT 1000 + n, 'storm', 'storm-token-' || n FROM generate_series(1, 300) AS n;
         INSERT INTO account_users (account_id, user_id, role)
           SELECT 1, 1000 + n, 0 FROM generate_series(1, 300) AS n;",
    )
    .await;
    let gw = start(db.config()).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(Client::ready(gw.addr).await);
    }
    let ids: Vec<String> = (1..=300)
        .map(|n| user(&format!("storm-token-{n}"), 1, 1000 + n))
        .collect();
    for (client, id) in clients.iter_mut().zip(&ids) {
        client.send(subscribe(id)).await;
    }
    for (client, id) in clients.iter_mut().zip(&ids) {
        assert_eq!(client.next_significant().await, confirm(id));
    }
    let queries = metric(&gw, "cable_auth_queries_total", "");
    assert_eq!(metric(&gw, "cable_auth_cache_misses_total", ""), 300.0);
    assert!(
        queries < 150.0,
        "300 distinct tokens took {queries} queries"
    );
}
