//! The topic WebSocket (docs/reference.md §12): `?token=` checked before the upgrade, topics
//! judged one by one (permissions, grammar, the limit), wildcards in both positions, one copy
//! of an event per connection, commit order, the same audience as the user's RoomChannel,
//! presence, broadcasts, revocation, shutdown, and two processes on one database.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_request, start, user, Client, TestDb, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A plain client of the topic WebSocket.
struct Topics {
    ws: common::Ws,
}

impl Topics {
    async fn connect(addr: SocketAddr, token: &str) -> Topics {
        Topics::try_connect(addr, token)
            .await
            .unwrap_or_else(|status| panic!("topic connection refused with {status}"))
    }

    /// Connects, or the HTTP status that refused the upgrade.
    async fn try_connect(addr: SocketAddr, token: &str) -> Result<Topics, u16> {
        let url = format!("ws://{addr}/ws?token={token}");
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(Topics { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame (WebSocket pings are answered by the library and skipped).
    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame readable");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next event, skipping presence snapshots.
    async fn event(&mut self) -> Value {
        loop {
            let frame = self.next().await;
            assert!(
                frame.get("type").is_none(),
                "expected an event, got {frame}"
            );
            if frame["event_type"] != "presence.update" {
                return frame;
            }
        }
    }

    async fn subscribe(&mut self, topics: &[&str]) -> Value {
        self.send(json!({"type": "subscribe", "topics": topics}))
            .await;
        self.next().await
    }

    /// Subscribes and expects every topic accepted.
    async fn subscribe_ok(&mut self, topics: &[&str]) {
        assert_eq!(
            self.subscribe(topics).await,
            json!({"type": "subscribed", "topics": topics})
        );
    }

    /// Reads until the server closes; the close code.
    async fn closed(&mut self, within: Duration) -> Option<CloseCode> {
        tokio::time::timeout(within, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return None,
                }
            }
        })
        .await
        .expect("the server closes in time")
    }

    /// Nothing but pings and presence arrive for `for_`.
    async fn quiet(&mut self, for_: Duration) {
        let deadline = tokio::time::Instant::now() + for_;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Some(Ok(Message::Text(text))) = message {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["event_type"], "presence.update", "unexpected {frame}");
            }
        }
    }
}

fn error(code: &str, topic: &str) -> (String, String) {
    (code.to_string(), topic.to_string())
}

/// The (code, topic) of an error frame.
fn error_of(frame: &Value) -> (String, String) {
    assert_eq!(frame["type"], "error", "{frame}");
    (
        frame["code"].as_str().unwrap().to_string(),
        frame["topic"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_token_that_names_no_user_is_refused_before_the_upgrade() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    for token in ["", "nope", "demo-contact-dave"] {
        assert_eq!(
            Topics::try_connect(gw.addr, token).await.err(),
            Some(401),
            "{token:?}"
        );
    }
    let (status, body) = http_request(
        gw.addr,
        "GET",
        "/ws",
        &[
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        b"",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("?token="), "{body}");
    // A plain GET is no upgrade.
    assert_eq!(common::http_get(gw.addr, "/ws").await.0, 404);
    assert!(Topics::try_connect(gw.addr, "demo-user-bob").await.is_ok());
}

#[tokio::test]
async fn a_jwt_names_its_user_in_its_account_only_until_it_expires() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let db = TestDb::new().await;
    // Frank administers account 2; he joins account 1 as an agent.
    db.exec("INSERT INTO account_users (account_id, user_id, role) VALUES (1, 4, 0)")
        .await;
    let mut config = db.config();
    config.jwt_secret = Some("topics-secret".into());
    let gw = start(config).await;
    let mint = |claims: Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let now = cable_gateway::clock::unix_seconds();
    let refused = [
        mint(
            json!({"user_id": 4, "account_id": 2, "exp": now - 1}),
            "topics-secret",
        ),
        mint(
            json!({"user_id": 4, "account_id": 2, "exp": now + 60}),
            "wrong",
        ),
        mint(
            json!({"contact_inbox_id": 1, "exp": now + 60}),
            "topics-secret",
        ),
        mint(
            json!({"user_id": 4, "account_id": 3, "exp": now + 60}),
            "topics-secret",
        ),
    ];
    for token in refused {
        assert_eq!(Topics::try_connect(gw.addr, &token).await.err(), Some(401));
    }
    let token = mint(
        json!({"user_id": 4, "account_id": 2, "exp": now + 3}),
        "topics-secret",
    );
    let mut frank = Topics::connect(gw.addr, &token).await;
    frank.subscribe_ok(&["user_id:4:*:*"]).await;
    // Account 1 is not the token's: its events do not come, account 2's do.
    db.publish(1, "conversation.created", json!({"id": 1}), json!({}))
        .await;
    db.publish(2, "conversation.created", json!({"id": 2}), json!({}))
        .await;
    let event = frank.event().await;
    assert_eq!(event["topic"], "user_id:4:conversation:2");
    // At `exp`, 4001.
    assert_eq!(
        frank.closed(Duration::from_secs(6)).await,
        Some(CloseCode::Library(4001))
    );
}

#[tokio::test]
async fn every_permission_case() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    // Alice administers account 1; Bob is an agent there; Frank administers account 2.
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    assert_eq!(
        alice
            .subscribe(&[
                "account_id:1:*:*",
                "account_id:2:*:*",
                "user_id:1:message:*",
                "user_id:2:*:*",
            ])
            .await,
        json!({"type": "subscribed", "topics": ["account_id:1:*:*", "user_id:1:message:*"]})
    );
    assert_eq!(
        error_of(&alice.next().await),
        error("permission_denied", "account_id:2:*:*")
    );
    assert_eq!(
        error_of(&alice.next().await),
        error("permission_denied", "user_id:2:*:*")
    );
    let mut bob = Topics::connect(gw.addr, "demo-user-bob").await;
    assert_eq!(
        bob.subscribe(&["account_id:1:message:*", "user_id:2:*:*"])
            .await,
        json!({"type": "subscribed", "topics": ["user_id:2:*:*"]})
    );
    assert_eq!(
        error_of(&bob.next().await),
        error("permission_denied", "account_id:1:message:*")
    );
    let mut frank = Topics::connect(gw.addr, "demo-user-frank").await;
    assert_eq!(
        frank.subscribe(&["account_id:1:*:*"]).await,
        json!({"type": "subscribed", "topics": []})
    );
    assert_eq!(
        error_of(&frank.next().await),
        error("permission_denied", "account_id:1:*:*")
    );
    frank.subscribe_ok(&["account_id:2:*:*"]).await;
    // An account-wide event of account 1 reaches Alice and Bob, not Frank; account 2's only
    // Frank.
    db.publish(1, "conversation.created", json!({"id": 5}), json!({}))
        .await;
    db.publish(2, "conversation.created", json!({"id": 6}), json!({}))
        .await;
    assert_eq!(alice.event().await["topic"], "account_id:1:conversation:5");
    assert_eq!(bob.event().await["topic"], "user_id:2:conversation:5");
    assert_eq!(frank.event().await["topic"], "account_id:2:conversation:6");
}

#[tokio::test]
async fn wildcards_in_both_positions_and_filters_by_resource_and_id() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut by_resource = Topics::connect(gw.addr, "demo-user-alice").await;
    by_resource.subscribe_ok(&["account_id:1:message:*"]).await;
    let mut by_id = Topics::connect(gw.addr, "demo-user-alice").await;
    by_id.subscribe_ok(&["account_id:1:*:42"]).await;
    let mut exact = Topics::connect(gw.addr, "demo-user-alice").await;
    exact.subscribe_ok(&["account_id:1:conversation:7"]).await;
    let mut typing = Topics::connect(gw.addr, "demo-user-alice").await;
    typing.subscribe_ok(&["account_id:1:conversation:1"]).await;
    for (event, id) in [
        ("conversation.updated", 7),
        ("message.created", 42),
        ("conversation.updated", 42),
        ("message.created", 8),
        ("contact.updated", 9),
    ] {
        db.publish(1, event, json!({"id": id}), json!({})).await;
    }
    // Typing names its conversation (data.conversation.id), and an inbox.
    db.publish(
        1,
        "conversation.typing_on",
        json!({"conversation": {"id": 1}, "user": {"id": 2, "type": "user"}, "is_private": false}),
        json!({"inbox_id": 1, "actor_user_id": 2}),
    )
    .await;
    let topics = |frames: Vec<Value>| -> Vec<String> {
        frames
            .iter()
            .map(|f| f["topic"].as_str().unwrap().to_string())
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(by_resource.event().await);
    }
    assert_eq!(
        topics(got),
        ["account_id:1:message:42", "account_id:1:message:8"]
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(by_id.event().await);
    }
    assert_eq!(
        topics(got),
        ["account_id:1:message:42", "account_id:1:conversation:42"]
    );
    assert_eq!(exact.event().await["topic"], "account_id:1:conversation:7");
    let typed = typing.event().await;
    assert_eq!(typed["topic"], "account_id:1:conversation:1");
    assert_eq!(typed["event_type"], "conversation.typing_on");
    // Nothing else arrived for any of them.
    db.publish(1, "conversation.updated", json!({"id": 7}), json!({}))
        .await;
    assert_eq!(exact.event().await["topic"], "account_id:1:conversation:7");
    by_resource.quiet(Duration::from_millis(300)).await;
    by_id.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_event_matching_several_topics_comes_once_in_its_envelope() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice
        .subscribe_ok(&[
            "account_id:1:*:*",
            "account_id:1:message:*",
            "account_id:1:*:3",
            "user_id:1:message:3",
        ])
        .await;
    let data = json!({"id": 3, "content": "hello \"there\"", "conversation": {"id": 1}});
    db.publish(1, "message.created", data.clone(), json!({"inbox_id": 1}))
        .await;
    db.publish(
        1,
        "message.updated",
        json!({"id": 4}),
        json!({"inbox_id": 1}),
    )
    .await;
    let event = alice.event().await;
    let timestamp: String = sqlx::query_scalar(
        r#"SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
             FROM cable_events WHERE event = 'message.created'"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut expected_data = data;
    expected_data["account_id"] = json!(1);
    assert_eq!(
        event,
        json!({
            "event_type": "message.created",
            "timestamp": timestamp,
            "topic": "user_id:1:message:3",
            "data": expected_data,
        })
    );
    let stamp = event["timestamp"].as_str().unwrap();
    assert_eq!(stamp.len(), "2026-01-20T10:30:00.000000Z".len(), "{stamp}");
    // The next one is the next event: the first came once.
    assert_eq!(alice.event().await["topic"], "account_id:1:message:4");
}

/// An agent's `user_id:<U>:*:*` feed shows exactly what that agent's dashboard shows, in the
/// same order.
#[tokio::test]
async fn an_agents_feed_is_what_the_agents_dashboard_shows() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut dashboard = Client::ready(gw.addr).await;
    let identifier = user("demo-user-bob", 1, 2);
    dashboard.subscribe_ok(&identifier).await;
    let mut feed = Topics::connect(gw.addr, "demo-user-bob").await;
    feed.subscribe_ok(&["user_id:2:*:*"]).await;
    let cases: Vec<(i64, &str, Value, Value)> = vec![
        (
            1,
            "message.created",
            json!({"id": 10}),
            json!({"inbox_id": 1}),
        ),
        (
            1,
            "message.created",
            json!({"id": 11}),
            json!({"inbox_id": 2}),
        ),
        (1, "conversation.updated", json!({"id": 12}), json!({})),
        (
            1,
            "notification.created",
            json!({"id": 13}),
            json!({"user_id": 2}),
        ),
        (
            1,
            "notification.created",
            json!({"id": 14}),
            json!({"user_id": 3}),
        ),
        (
            1,
            "message.created",
            json!({"id": 15, "private": true}),
            json!({"inbox_id": 1, "private": true}),
        ),
        (
            1,
            "conversation.typing_on",
            json!({"conversation": {"id": 1}, "user": {"id": 2, "type": "user"}}),
            json!({"inbox_id": 1, "actor_user_id": 2}),
        ),
        (
            1,
            "conversation.typing_on",
            json!({"conversation": {"id": 1}, "user": {"id": 3, "type": "user"}}),
            json!({"inbox_id": 1, "actor_user_id": 3}),
        ),
        (2, "conversation.updated", json!({"id": 16}), json!({})),
        (
            1,
            "message.created",
            json!({"id": 17}),
            json!({"inbox_id": 1, "contact_inbox_ids": [1]}),
        ),
        (1, "done", json!({"id": 99}), json!({})),
    ];
    for (account, event, data, extra) in cases {
        db.publish(account, event, data, extra).await;
    }
    let mut shown = Vec::new();
    loop {
        let (_, message) = dashboard.event().await;
        let done = message["event"] == "done";
        shown.push(message);
        if done {
            break;
        }
    }
    let mut fed = Vec::new();
    loop {
        let event = feed.event().await;
        let done = event["event_type"] == "done";
        fed.push(json!({"event": event["event_type"], "data": event["data"]}));
        if done {
            break;
        }
    }
    assert_eq!(fed, shown);
    let ids: Vec<&Value> = shown
        .iter()
        .map(|m| m["data"].get("id").unwrap_or(&m["data"]["user"]["id"]))
        .collect();
    assert_eq!(ids, [10, 12, 13, 15, 3, 17, 99]);
}

#[tokio::test]
async fn fifty_events_arrive_in_commit_order() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice.subscribe_ok(&["account_id:1:message:*"]).await;
    let publisher = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for id in 1..=50 {
                common::publish(&pool, 1, "message.created", json!({"id": id}), json!({})).await;
            }
        })
    };
    for id in 1..=50 {
        let event = alice.event().await;
        assert_eq!(event["data"]["id"], id, "{event}");
    }
    publisher.await.unwrap();
}

#[tokio::test]
async fn unsubscribed_topics_stop_and_others_go_on() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice
        .subscribe_ok(&["account_id:1:message:*", "account_id:1:conversation:*"])
        .await;
    alice
        .send(json!({"type": "unsubscribe", "topics": ["account_id:1:message:*", "user_id:1:x:*", "bad"]}))
        .await;
    assert_eq!(
        alice.next().await,
        json!({"type": "unsubscribed", "topics": ["account_id:1:message:*", "user_id:1:x:*"]})
    );
    assert_eq!(error_of(&alice.next().await), error("bad_topic", "bad"));
    db.publish(1, "message.created", json!({"id": 1}), json!({}))
        .await;
    db.publish(1, "conversation.updated", json!({"id": 2}), json!({}))
        .await;
    assert_eq!(alice.event().await["topic"], "account_id:1:conversation:2");
}

#[tokio::test]
async fn bad_input_is_answered_and_the_connection_stays() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    for bad in [
        "not json".to_string(),
        json!({"type": "listen", "topics": []}).to_string(),
        json!({"type": "subscribe", "topics": "account_id:1:*:*"}).to_string(),
        json!({"type": "subscribe", "topics": [1]}).to_string(),
        json!({"topics": []}).to_string(),
        "[]".to_string(),
    ] {
        alice.ws.send(Message::text(bad.clone())).await.unwrap();
        let frame = alice.next().await;
        assert_eq!(frame["type"], "error", "{bad}: {frame}");
        assert_eq!(frame["code"], "bad_request", "{bad}: {frame}");
        assert!(frame["message"].is_string());
    }
    alice
        .ws
        .send(Message::binary(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(alice.next().await["code"], "bad_request");
    assert_eq!(
        alice
            .subscribe(&[
                "account_id:1:message",
                "account_id:x:a:b",
                "account_id:1:a b:1",
                "account_id:1:message:*"
            ])
            .await,
        json!({"type": "subscribed", "topics": ["account_id:1:message:*"]})
    );
    for topic in [
        "account_id:1:message",
        "account_id:x:a:b",
        "account_id:1:a b:1",
    ] {
        assert_eq!(error_of(&alice.next().await), error("bad_topic", topic));
    }
    db.publish(1, "message.created", json!({"id": 1}), json!({}))
        .await;
    assert_eq!(alice.event().await["topic"], "account_id:1:message:1");
}

#[tokio::test]
async fn limits_apply_topics_frames_and_rate() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_topics = 3;
    config.max_frame_size = 1024;
    config.max_command_rate = 5;
    let gw = start(config).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    assert_eq!(
        alice
            .subscribe(&[
                "account_id:1:a:*",
                "account_id:1:b:*",
                "account_id:1:c:*",
                "account_id:1:d:*"
            ])
            .await,
        json!({"type": "subscribed", "topics": ["account_id:1:a:*", "account_id:1:b:*", "account_id:1:c:*"]})
    );
    assert_eq!(
        error_of(&alice.next().await),
        error("limit_exceeded", "account_id:1:d:*")
    );
    // Subscribing one already held is not beyond the limit.
    alice.subscribe_ok(&["account_id:1:a:*"]).await;
    // A message over the frame limit ends the connection (1008).
    let big = json!({"type": "subscribe", "topics": ["x".repeat(2000)]}).to_string();
    alice.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(
        alice.closed(WAIT).await,
        Some(CloseCode::Policy),
        "an oversized message closes with 1008"
    );
    // Commands faster than the rate (bursts of twice) end it too.
    let mut fast = Topics::connect(gw.addr, "demo-user-alice").await;
    for _ in 0..30 {
        let _ = fast
            .ws
            .send(Message::text(
                json!({"type": "subscribe", "topics": []}).to_string(),
            ))
            .await;
    }
    assert_eq!(fast.closed(WAIT).await, Some(CloseCode::Policy));
    // Other connections are unaffected.
    let mut other = Topics::connect(gw.addr, "demo-user-alice").await;
    other.subscribe_ok(&["account_id:1:*:*"]).await;
}

#[tokio::test]
async fn presence_snapshots_come_under_the_presence_resource() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut dashboard = Client::ready(gw.addr).await;
    dashboard.subscribe_ok(&user("demo-user-bob", 1, 2)).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice.subscribe_ok(&["account_id:1:presence:*"]).await;
    let snapshot = alice.next().await;
    assert_eq!(snapshot["event_type"], "presence.update");
    assert_eq!(snapshot["topic"], "account_id:1:presence:1");
    assert_eq!(snapshot["data"]["account_id"], 1);
    assert_eq!(snapshot["data"]["users"]["2"], "online", "{snapshot}");
    // A push when someone comes online: Carol.
    let mut carol = Client::ready(gw.addr).await;
    carol.subscribe_ok(&user("demo-user-carol", 1, 3)).await;
    let pushed = tokio::time::timeout(WAIT, async {
        loop {
            let frame = alice.next().await;
            if frame["data"]["users"].get("3").is_some() {
                return frame;
            }
        }
    })
    .await
    .expect("a presence push naming Carol");
    assert_eq!(pushed["topic"], "account_id:1:presence:1");
    // A connection without a presence topic gets none.
    let mut quiet = Topics::connect(gw.addr, "demo-user-alice").await;
    quiet.subscribe_ok(&["account_id:1:message:*"]).await;
    db.publish(1, "message.created", json!({"id": 1}), json!({}))
        .await;
    assert_eq!(quiet.next().await["event_type"], "message.created");
}

#[tokio::test]
async fn broadcasts_of_the_users_streams_come_once_whatever_the_accounts() {
    let db = TestDb::new().await;
    // Alice is in account 2 as well: her own stream reaches both of her subscriptions.
    db.exec("INSERT INTO account_users (account_id, user_id, role) VALUES (2, 1, 0)")
        .await;
    let mut config = db.config();
    config.broadcast_key = Some("k".into());
    let gw = start(config).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice.subscribe_ok(&["user_id:1:*:*"]).await;
    let broadcast = |stream: &str, payload: Value| {
        json!({"stream": stream, "data": payload.to_string()}).to_string()
    };
    for body in [
        broadcast(
            "demo-user-alice",
            json!({"event": "notification.created", "data": {"id": 1}}),
        ),
        broadcast("demo-user-alice", json!({"not": "an event"})),
        broadcast(
            "account_2",
            json!({"event": "conversation.updated", "data": {"id": 2, "account_id": 2}}),
        ),
        broadcast(
            "demo-user-alice",
            json!({"event": "notification.created", "data": {"id": 3, "account_id": 1}}),
        ),
    ] {
        let (status, answer) = http_request(
            gw.addr,
            "POST",
            "/_broadcast",
            &["Authorization: Bearer k", "Content-Type: application/json"],
            body.as_bytes(),
        )
        .await;
        assert!(status < 300, "{status} {answer}");
    }
    let topics: Vec<Value> = [
        alice.event().await,
        alice.event().await,
        alice.event().await,
    ]
    .iter()
    .map(|e| e["topic"].clone())
    .collect();
    assert_eq!(
        topics,
        [
            "user_id:1:notification:1",
            "user_id:1:conversation:2",
            "user_id:1:notification:3"
        ]
    );
    alice.quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_revoked_token_closes_the_connection_with_4001() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut bob = Topics::connect(gw.addr, "demo-user-bob").await;
    bob.subscribe_ok(&["user_id:2:*:*"]).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice.subscribe_ok(&["user_id:1:*:*"]).await;
    db.exec("UPDATE users SET pubsub_token = 'rotated-bob' WHERE id = 2")
        .await;
    assert_eq!(
        bob.closed(Duration::from_secs(5)).await,
        Some(CloseCode::Library(4001))
    );
    // The new token works; Alice was not touched.
    let mut again = Topics::connect(gw.addr, "rotated-bob").await;
    again.subscribe_ok(&["user_id:2:*:*"]).await;
    db.publish(1, "conversation.updated", json!({"id": 1}), json!({}))
        .await;
    assert_eq!(alice.event().await["topic"], "user_id:1:conversation:1");
    assert_eq!(again.event().await["topic"], "user_id:2:conversation:1");
}

#[tokio::test]
async fn shutdown_closes_with_1012() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Topics::connect(gw.addr, "demo-user-alice").await;
    alice.subscribe_ok(&["user_id:1:*:*"]).await;
    let shutdown = tokio::spawn(gw.shutdown());
    assert_eq!(alice.closed(WAIT).await, Some(CloseCode::Restart));
    shutdown.await.unwrap();
}

#[tokio::test]
async fn two_processes_serve_the_same_feed() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.broadcast_key = Some("k".into());
    let a = start(config.clone()).await;
    let b = start(config).await;
    let mut on_a = Topics::connect(a.addr, "demo-user-bob").await;
    on_a.subscribe_ok(&["user_id:2:*:*"]).await;
    let mut on_b = Topics::connect(b.addr, "demo-user-bob").await;
    on_b.subscribe_ok(&["user_id:2:*:*"]).await;
    for id in 1..=5 {
        db.publish(
            1,
            "message.created",
            json!({"id": id}),
            json!({"inbox_id": 1}),
        )
        .await;
    }
    // A broadcast taken by one process reaches the other's subscribers through the outbox.
    let body = json!({"stream": "demo-user-bob", "data": json!({"event": "notification.created", "data": {"id": 6, "account_id": 1}}).to_string()});
    let (status, _) = http_request(
        a.addr,
        "POST",
        "/_broadcast",
        &["Authorization: Bearer k"],
        body.to_string().as_bytes(),
    )
    .await;
    assert!(status < 300);
    for feed in [&mut on_a, &mut on_b] {
        let ids: Vec<Value> = {
            let mut ids = Vec::new();
            for _ in 0..6 {
                ids.push(feed.event().await["data"]["id"].clone());
            }
            ids
        };
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    }
    // Revocation reaches the connection on either process.
    db.exec("DELETE FROM account_users WHERE user_id = 2").await;
    for feed in [&mut on_a, &mut on_b] {
        assert_eq!(
            feed.closed(Duration::from_secs(5)).await,
            Some(CloseCode::Library(4001))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_client_that_stops_reading_is_dropped_without_delaying_others() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.send_queue = 16;
    let gw = start(config).await;
    let mut fast = Topics::connect(gw.addr, "demo-user-alice").await;
    fast.subscribe_ok(&["account_id:1:message:*"]).await;
    // Subscribes, then is never read again: its socket buffers fill, then its queue.
    let mut slow = Topics::connect(gw.addr, "demo-user-alice").await;
    slow.subscribe_ok(&["account_id:1:message:*"]).await;
    let pad = "x".repeat(64 * 1024);
    let mut id = 0;
    let mut after_drop = None;
    while after_drop.is_none_or(|n| id < n) {
        assert!(id < 1000, "the slow client was never disconnected");
        id += 1;
        db.publish(
            1,
            "message.created",
            json!({"id": id, "pad": pad}),
            json!({}),
        )
        .await;
        assert_eq!(
            fast.event().await["data"]["id"],
            id,
            "the fast client keeps up"
        );
        if after_drop.is_none()
            && common::metric(&gw, "cable_too_slow_disconnects_total", "") >= 1.0
        {
            after_drop = Some(id + 10);
        }
    }
    // What the slow one got is an in-order prefix, then its connection ended.
    let mut next = 1;
    loop {
        match tokio::time::timeout(WAIT, slow.ws.next())
            .await
            .expect("ends in time")
        {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(event["data"]["id"], next);
                next += 1;
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(next <= id, "the slow client did not get everything");
}
