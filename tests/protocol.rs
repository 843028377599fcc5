//! The wire protocol (README, "Wire protocol"), rule by rule, over real sockets against
//! real PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ALICE: &str = "demo-user-alice";

fn alice() -> String {
    user(ALICE, 1, 1)
}

#[tokio::test]
async fn subprotocol_is_echoed_when_offered() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let client = Client::connect(gw.addr).await;
    assert_eq!(client.protocol.as_deref(), Some("actioncable-v1-json"));
}

#[tokio::test]
async fn clients_offering_no_or_unknown_subprotocols_are_accepted_without_one() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::connect_with(gw.addr, &[], None)
        .await
        .expect("accepted");
    assert_eq!(client.protocol, None);
    assert_eq!(client.next().await, json!({"type": "welcome"}));
    // Only protocols we do not speak: accepted without one, like Rails.
    let (status, headers) = raw_upgrade(
        gw.addr,
        "Sec-WebSocket-Protocol: actioncable-unsupported, v2.json\r\n",
    )
    .await;
    assert_eq!(status, 101);
    assert!(
        !headers.iter().any(|(k, _)| k == "sec-websocket-protocol"),
        "{headers:?}"
    );
    // Offered among others, possibly in a second header line: selected.
    let (status, headers) = raw_upgrade(
        gw.addr,
        "Sec-WebSocket-Protocol: v2.json\r\nSec-WebSocket-Protocol: actioncable-v1-json\r\n",
    )
    .await;
    assert_eq!(status, 101);
    assert!(
        headers.contains(&(
            "sec-websocket-protocol".into(),
            "actioncable-v1-json".into()
        )),
        "{headers:?}"
    );
}

#[tokio::test]
async fn anything_but_a_websocket_get_on_cable_is_404() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    assert_eq!(http_get(gw.addr, "/cable").await.0, 404);
    assert_eq!(http_get(gw.addr, "/nope").await.0, 404);
    assert_eq!(http_get(gw.addr, "/health").await.0, 200);
}

#[tokio::test]
async fn any_origin_is_accepted_without_an_allow_list() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::connect_with(gw.addr, &[], Some("https://customer-site.test"))
        .await
        .unwrap();
    assert_eq!(client.next().await, json!({"type": "welcome"}));
}

#[tokio::test]
async fn origin_allow_list_refuses_foreign_browsers_but_not_native_apps() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.allowed_origins = vec!["https://app.example.com".into(), "*.widgets.test".into()];
    let gw = start(config).await;
    let refused = Client::connect_with(gw.addr, &[], Some("https://evil.test")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected HTTP 403, got {:?}", other.map(|_| "a connection")),
    }
    for origin in [
        Some("https://app.example.com"),
        Some("https://shop.widgets.test"),
        None,
    ] {
        let mut client = Client::connect_with(gw.addr, &[], origin)
            .await
            .expect("allowed");
        assert_eq!(
            client.next().await,
            json!({"type": "welcome"}),
            "{origin:?}"
        );
    }
}

#[tokio::test]
async fn welcome_then_pings_every_3s_with_strictly_increasing_integers() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.next_raw().await, json!({"type": "welcome"}));
    let first = client.next_raw().await;
    let started = std::time::Instant::now();
    let second = client.next_raw().await;
    let gap = started.elapsed();
    assert_eq!(first["type"], "ping");
    assert_eq!(second["type"], "ping");
    let (a, b) = (
        first["message"].as_u64().unwrap(),
        second["message"].as_u64().unwrap(),
    );
    assert!(b > a, "ping values must increase: {a} then {b}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(b.abs_diff(now) <= 2, "ping carries unix seconds");
    assert!(
        gap > Duration::from_millis(2500) && gap < Duration::from_millis(4500),
        "gap {gap:?}"
    );
}

#[tokio::test]
async fn confirm_echoes_the_identifier_byte_for_byte() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    // Odd key order, spacing and an escaped character: clients look subscriptions up by this string.
    let raw = "{ \"user_id\":\"1\",  \"account_id\": 1, \"pubsub_token\":\"demo-user-\\u0061lice\", \"channel\":\"RoomChannel\"}";
    client.send(subscribe(raw)).await;
    let frame = client.next().await;
    assert_eq!(frame["identifier"].as_str(), Some(raw));
    assert_eq!(frame, confirm(raw));
}

#[tokio::test]
async fn commands_sent_before_the_welcome_are_answered_after_it() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(subscribe(&alice())).await;
    assert_eq!(client.next().await, json!({"type": "welcome"}));
    assert_eq!(client.next_significant().await, confirm(&alice()));
}

#[tokio::test]
async fn commands_are_processed_strictly_in_order() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    let ids: Vec<String> = (0..20)
        .map(|i| {
            if i % 3 == 0 {
                user("no-such-token", 1, 1) + &" ".repeat(i)
            } else {
                user(ALICE, 1, 1) + &" ".repeat(i)
            }
        })
        .collect();
    for id in &ids {
        client.send(subscribe(id)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = if i % 3 == 0 { reject(id) } else { confirm(id) };
        assert_eq!(client.next_significant().await, expected, "answer {i}");
    }
    // subscribe then unsubscribe back to back: the unsubscribe wins, nothing is delivered.
    let raced = user(ALICE, 1, 1) + "\n";
    client.send(subscribe(&raced)).await;
    client.send(unsubscribe(&raced)).await;
    for id in &ids {
        client.send(unsubscribe(id)).await;
    }
    let marker = contact("demo-contact-dave", Some(1));
    let mut widget = Client::ready(gw.addr).await;
    widget.subscribe_ok(&marker).await;
    db.publish(
        1,
        "message.created",
        json!({"id": 1}),
        json!({"contact_inbox_ids": [1]}),
    )
    .await;
    let (identifier, _) = widget.event().await;
    assert_eq!(identifier, marker);
    assert_eq!(client.next_significant().await, confirm(&raced));
    client.send(subscribe(&marker)).await;
    assert_eq!(
        client.next_significant().await,
        confirm(&marker),
        "no event for the unsubscribed identifiers came first"
    );
}

#[tokio::test]
async fn duplicate_subscribe_is_ignored() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&alice()).await;
    client.send(subscribe(&alice())).await;
    client.send(subscribe(&alice())).await;
    let other = contact("demo-contact-dave", None);
    client.send(subscribe(&other)).await;
    assert_eq!(
        client.next_significant().await,
        confirm(&other),
        "no second confirm for the duplicate"
    );
    // And the subscription exists once: one event, one message.
    db.publish(1, "message.created", json!({"id": 7}), json!({}))
        .await;
    db.publish(1, "message.created", json!({"id": 8}), json!({}))
        .await;
    let (_, first) = client.event().await;
    let (_, second) = client.event().await;
    assert_eq!(
        (first["data"]["id"].clone(), second["data"]["id"].clone()),
        (json!(7), json!(8))
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_never_acknowledged() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    let bob = user("demo-user-bob", 1, 2);
    client.subscribe_ok(&alice()).await;
    client.subscribe_ok(&bob).await;
    client.send(unsubscribe(&alice())).await;
    client.send(unsubscribe(&user("unknown", 1, 1))).await;
    // A marker subscribe proves both unsubscribes were processed (commands are in order).
    let marker = contact("demo-contact-dave", None);
    client.subscribe_ok(&marker).await;
    db.publish(1, "conversation.created", json!({"id": 1}), json!({}))
        .await;
    let (identifier, message) = client.event().await;
    assert_eq!(
        identifier, bob,
        "alice's subscription is gone; bob's is the only one"
    );
    assert_eq!(message["event"], "conversation.created");
}

#[tokio::test]
async fn event_messages_have_identifier_and_message_but_no_type() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&alice()).await;
    db.publish(
        1,
        "message.created",
        json!({"id": 1, "content": "hi"}),
        json!({}),
    )
    .await;
    let frame = client.next_significant().await;
    assert_eq!(
        frame,
        json!({"identifier": alice(), "message": {"event": "message.created", "data": {"id": 1, "content": "hi", "account_id": 1}}})
    );
}

#[tokio::test]
async fn message_data_is_accepted_as_a_string_or_an_object() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&alice()).await;
    // The presence answer that follows every confirm.
    let after_confirm = client.next().await;
    assert_eq!(after_confirm["message"]["event"], "presence.update");
    client
        .send(json!({"command": "message", "identifier": alice(), "data": "{\"action\":\"update_presence\"}"}))
        .await;
    let reply = client.next().await;
    assert_eq!(reply["identifier"], alice());
    assert_eq!(reply["message"]["event"], "presence.update");
    client
        .send(json!({"command": "message", "identifier": alice(), "data": {"action": "update_presence"}}))
        .await;
    let reply = client.next().await;
    assert_eq!(reply["message"]["event"], "presence.update");
    assert_eq!(reply["message"]["data"]["account_id"], 1);
}

#[tokio::test]
async fn bad_input_gets_nothing_and_the_connection_stays_up() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    client.send_text("this is not json").await;
    client.send_text("[1,2,3]").await;
    client
        .send(json!({"command": "dance", "identifier": alice()}))
        .await;
    client.send(json!({"command": "subscribe"})).await;
    client
        .send(json!({"command": "subscribe", "identifier": "[\"not an object\"]"}))
        .await;
    client
        .send(json!({"command": "subscribe", "identifier": "not json"}))
        .await;
    client.send(json!({"command": "message", "identifier": alice(), "data": "{\"action\":\"update_presence\"}"})).await;
    client
        .send(json!({"command": "unsubscribe", "identifier": alice()}))
        .await;
    client
        .send(json!({"command": "message", "identifier": "{}", "data": 5}))
        .await;
    client
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    // Still open, still answering, and the first answer is to this subscribe.
    client.send(subscribe(&alice())).await;
    assert_eq!(client.next().await, confirm(&alice()));
    assert!(metric(&gw, "cable_invalid_frames_total", "malformed") >= 2.0);
    assert!(metric(&gw, "cable_invalid_frames_total", "unknown_command") >= 1.0);
    assert!(metric(&gw, "cable_invalid_frames_total", "binary") >= 1.0);
    assert!(metric(&gw, "cable_invalid_frames_total", "identifier_not_object") >= 2.0);
    assert!(metric(&gw, "cable_commands_total", "unknown_identifier") >= 2.0);
}

#[tokio::test]
async fn unknown_channel_is_rejected_not_ignored() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    let id = json!({"channel": "NotificationsChannel", "pubsub_token": ALICE}).to_string();
    client.send(subscribe(&id)).await;
    assert_eq!(client.next().await, reject(&id));
    let id = json!({"pubsub_token": ALICE}).to_string();
    client.send(subscribe(&id)).await;
    assert_eq!(client.next().await, reject(&id));
}

#[tokio::test]
async fn oversized_frames_end_the_connection_with_invalid_request() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_frame_size = 1024;
    let gw = start(config).await;
    let mut client = Client::ready(gw.addr).await;
    client
        .send_text(&format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)))
        .await;
    let frames = client.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "disconnect", "reason": "invalid_request", "reconnect": false}))
    );
    // A message of exactly the limit is fine.
    let mut client = Client::ready(gw.addr).await;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 - 10));
    assert_eq!(body.len(), 1024);
    client.send_text(&body).await;
    client.subscribe_ok(&alice()).await;
}

#[tokio::test]
async fn database_down_during_subscribe_asks_the_client_to_reconnect() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = Client::ready(gw.addr).await;
    // Cut the gateway off its database: no new connections, existing ones terminated.
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&db.name)
        .execute(&admin)
        .await
        .unwrap();
    client.send(subscribe(&alice())).await;
    // The subscribe waits for the database for a while (pings meanwhile), then gives up.
    let frames: Vec<Value> = client
        .until_closed()
        .await
        .into_iter()
        .filter(|f| f["type"] != "ping")
        .collect();
    assert_eq!(
        frames,
        vec![json!({"type": "disconnect", "reason": "server_restart", "reconnect": true})],
        "a database failure is never a reject"
    );
    // The error was not cached: once the database is back, the same token is confirmed.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    )))
    .execute(&admin)
    .await
    .unwrap();
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&alice()).await;
}
