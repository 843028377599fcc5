//! Centrifugo's client protocol and server API (docs/reference.md §11), spoken by hand: the
//! connect and its token, server-side channels, who may subscribe to what, publications from
//! every source reaching a channel's subscribers on every process in order, client publish,
//! the API's answers, token life, codes of errors and disconnects.
//! (centrifuge-js and cent.js drive the same in tests/js/centrifugo.test.mjs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_request, start, TestDb, WAIT};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "centrifugo-test-secret";
const API_KEY: &str = "centrifugo-test-api-key";
const CONFIG: &str = r#"{
  "client": {"token": {"hmac_secret_key": "not-this-one"}},
  "http_api": {"key": "not-this-one-either"},
  "channel": {
    "without_namespace": {"allow_publish_for_subscriber": true, "allow_subscribe_for_client": true},
    "namespaces": [
      {"name": "tickets", "allow_subscribe_for_client": true, "allow_publish_for_client": true},
      {"name": "user", "allow_user_limited_channels": true},
      {"name": "voice"},
      {"name": "presence", "allow_subscribe_for_client": true, "presence": true, "join_leave": true,
       "force_push_join_leave": true, "allow_presence_for_subscriber": true},
      {"name": "quiet", "allow_subscribe_for_client": true, "presence": true, "join_leave": true}
    ]
  }
}"#;

fn now() -> u64 {
    cable_gateway::clock::unix_seconds()
}

fn mint(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The test's Centrifugo configuration file, written for `db`.
fn config_file(db: &TestDb) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("cable-centrifugo-{}.json", db.name));
    std::fs::write(&path, CONFIG).unwrap();
    path
}

/// A gateway with the test's Centrifugo configuration: the key settings win over the file's.
async fn gateway(db: &TestDb) -> cable_gateway::server::Running {
    let path = config_file(db);
    let mut config = db.config();
    config.jwt_secret = Some(SECRET.into());
    config.centrifugo_api_key = Some(API_KEY.into());
    config.centrifugo_config = Some(path);
    config.broadcast_key = Some("k".into());
    config.max_subscriptions = 4;
    start(config).await
}

struct Centrifugo {
    ws: common::Ws,
    next_id: u32,
    /// Pushes read while waiting for a reply.
    pushes: std::collections::VecDeque<Value>,
}

impl Centrifugo {
    async fn open(addr: SocketAddr) -> Centrifugo {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
            .await
            .expect("connects");
        Centrifugo {
            ws,
            next_id: 0,
            pushes: Default::default(),
        }
    }

    /// Connects with a token for `claims`; the connect reply.
    async fn connected(addr: SocketAddr, claims: Value) -> (Centrifugo, Value) {
        let mut client = Centrifugo::open(addr).await;
        let reply = client.call("connect", json!({"token": mint(claims)})).await;
        assert!(reply.get("connect").is_some(), "{reply}");
        (client, reply["connect"].clone())
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a command; its id.
    async fn command(&mut self, method: &str, params: Value) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.send_text(json!({"id": id, method: params}).to_string())
            .await;
        id
    }

    /// The next frame that is not a ping (answering pings), pushes kept earlier first.
    async fn next(&mut self) -> Value {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("readable");
            match message {
                Message::Text(text) if text.as_str() == "{}" => {
                    self.send_text("{}".into()).await;
                }
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Sends a command and returns its reply (pushes that come first are kept for later).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.command(method, params).await;
        let mut kept = std::mem::take(&mut self.pushes);
        let reply = loop {
            let frame = self.next().await;
            if frame.get("push").is_some() {
                kept.push_back(frame);
                continue;
            }
            break frame;
        };
        self.pushes = kept;
        assert_eq!(reply["id"], id, "{reply}");
        reply
    }

    /// The next publication push: (channel, data).
    async fn publication(&mut self) -> (String, Value) {
        let frame = self.next().await;
        let publication = &frame["push"]["pub"];
        assert!(
            publication.is_object(),
            "expected a publication, got {frame}"
        );
        (
            frame["push"]["channel"].as_str().unwrap().to_string(),
            publication["data"].clone(),
        )
    }

    /// The next publication that is not a presence snapshot.
    async fn event(&mut self) -> (String, Value) {
        loop {
            let (channel, data) = self.publication().await;
            if data["event"] != "presence.update" {
                return (channel, data);
            }
        }
    }

    async fn closed(&mut self, within: Duration) -> Option<(u16, String)> {
        tokio::time::timeout(within, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                    }
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return None,
                }
            }
        })
        .await
        .expect("closed in time")
    }
}

async fn api(addr: SocketAddr, method: &str, key: &str, body: &str) -> (u16, Value) {
    let header = format!("X-API-Key: {key}");
    let (status, body) = http_request(
        addr,
        "POST",
        &format!("/api/{method}"),
        &[&header, "Content-Type: application/json"],
        body.as_bytes(),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn without_a_token_key_there_is_no_endpoint_and_no_api() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/connection/websocket", gw.addr)).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 404)
    );
    assert_eq!(api(gw.addr, "publish", "x", "{}").await.0, 404);
}

#[tokio::test]
async fn connect_replies_as_centrifugo_and_server_side_channels_get_publications() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, reply) = Centrifugo::connected(
        gw.addr,
        json!({"sub": "42", "exp": now() + 3600, "channels": ["voice:calls", "tickets:1"]}),
    )
    .await;
    assert!(reply["client"].as_str().is_some_and(|c| c.len() >= 16));
    assert_eq!(reply["ping"], 25);
    assert_eq!(reply["pong"], true);
    assert_eq!(reply["expires"], true);
    assert!(reply["ttl"].as_u64().is_some_and(|ttl| ttl > 3500));
    assert_eq!(reply["subs"], json!({"voice:calls": {}, "tickets:1": {}}));
    let (status, answer) = api(
        gw.addr,
        "publish",
        API_KEY,
        r#"{"channel": "voice:calls", "data": {"call": 1}}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({"result": {}})));
    assert_eq!(
        client.publication().await,
        ("voice:calls".to_string(), json!({"call": 1}))
    );
}

#[tokio::test]
async fn bad_tokens_and_bad_frames_get_centrifugos_codes() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    // Forged: 3500.
    let mut client = Centrifugo::open(gw.addr).await;
    let forged = encode(
        &Header::default(),
        &json!({"sub": "1"}),
        &EncodingKey::from_secret(b"wrong").unwrap(),
    )
    .unwrap();
    client.command("connect", json!({"token": forged})).await;
    assert_eq!(
        client.closed(WAIT).await,
        Some((3500, "invalid token".into()))
    );
    // Expired: error 109, and the connection stays for a fresh token.
    let mut client = Centrifugo::open(gw.addr).await;
    let expired = client
        .call(
            "connect",
            json!({"token": mint(json!({"sub": "1", "exp": now() - 1}))}),
        )
        .await;
    assert_eq!(expired["error"]["code"], 109);
    let reply = client
        .call("connect", json!({"token": mint(json!({"sub": "1"}))}))
        .await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    // An unknown method: 104; a malformed line: 3501.
    let unknown = client.call("teleport", json!({})).await;
    assert_eq!(unknown["error"]["code"], 104);
    client.send_text("{nope".into()).await;
    assert_eq!(
        client.closed(WAIT).await,
        Some((3501, "bad request".into()))
    );
    // A command before the connect: 3501.
    let mut client = Centrifugo::open(gw.addr).await;
    client
        .command("subscribe", json!({"channel": "tickets:1"}))
        .await;
    assert_eq!(client.closed(WAIT).await.map(|(code, _)| code), Some(3501));
}

#[tokio::test]
async fn who_may_subscribe_to_what() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "7"})).await;
    let code = |reply: &Value| reply["error"]["code"].as_u64();
    let subscribe = |channel: &str| json!({"channel": channel});
    // A namespace that allows it; twice: 105.
    assert_eq!(
        client.call("subscribe", subscribe("tickets:1")).await["subscribe"],
        json!({})
    );
    assert_eq!(
        code(&client.call("subscribe", subscribe("tickets:1")).await),
        Some(105)
    );
    // An unknown namespace: 102; a namespace without the option: 103.
    assert_eq!(
        code(&client.call("subscribe", subscribe("nowhere:1")).await),
        Some(102)
    );
    assert_eq!(
        code(&client.call("subscribe", subscribe("voice:calls")).await),
        Some(103)
    );
    // User-limited channels: the user among the ids after `#`.
    assert_eq!(
        client.call("subscribe", subscribe("user:#3,7")).await["subscribe"],
        json!({})
    );
    assert_eq!(
        code(&client.call("subscribe", subscribe("user:#3,8")).await),
        Some(103)
    );
    // A subscription token for this user and channel.
    let token = mint(json!({"sub": "7", "channel": "voice:calls"}));
    assert_eq!(
        client
            .call(
                "subscribe",
                json!({"channel": "voice:calls", "token": token})
            )
            .await["subscribe"],
        json!({})
    );
    // The fourth subscription is the limit (CABLE_MAX_SUBSCRIPTIONS = 4 here).
    assert_eq!(
        client.call("subscribe", subscribe("tickets:2")).await["subscribe"],
        json!({})
    );
    assert_eq!(
        code(&client.call("subscribe", subscribe("tickets:3")).await),
        Some(106)
    );
    // Unsubscribing frees one.
    assert_eq!(
        client.call("unsubscribe", subscribe("tickets:2")).await["unsubscribe"],
        json!({})
    );
    assert_eq!(
        client.call("subscribe", subscribe("tickets:3")).await["subscribe"],
        json!({})
    );
    // A subscription token of another user: disconnect 3500, as Centrifugo does.
    let (mut other, _) = Centrifugo::connected(gw.addr, json!({"sub": "8"})).await;
    let token = mint(json!({"sub": "7", "channel": "voice:other"}));
    other
        .command(
            "subscribe",
            json!({"channel": "voice:other", "token": token}),
        )
        .await;
    assert_eq!(other.closed(WAIT).await.map(|(code, _)| code), Some(3500));
}

#[tokio::test]
async fn a_channel_gets_every_source_in_order_on_every_process() {
    let db = TestDb::new().await;
    let a = gateway(&db).await;
    let b = gateway(&db).await;
    let (mut on_a, _) = Centrifugo::connected(a.addr, json!({"sub": "1"})).await;
    let (mut on_b, _) = Centrifugo::connected(b.addr, json!({"sub": "2"})).await;
    for client in [&mut on_a, &mut on_b] {
        assert!(client
            .call("subscribe", json!({"channel": "tickets:5"}))
            .await
            .get("subscribe")
            .is_some());
    }
    // The server API on A, an outbox row with the stream, /_broadcast on B, a client publish.
    api(
        a.addr,
        "publish",
        API_KEY,
        r#"{"channel": "tickets:5", "data": {"n": 1}}"#,
    )
    .await;
    db.publish(
        3,
        "ticket.updated",
        json!({"id": 5}),
        json!({"stream": "tickets:5"}),
    )
    .await;
    let body = json!({"stream": "tickets:5", "data": json!({"n": 3}).to_string()}).to_string();
    let (status, _) = http_request(
        b.addr,
        "POST",
        "/_broadcast",
        &["Authorization: Bearer k"],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 201);
    let published = on_a
        .call("publish", json!({"channel": "tickets:5", "data": {"n": 4}}))
        .await;
    assert_eq!(published["publish"], json!({}));
    let (status, answer) = api(
        b.addr,
        "broadcast",
        API_KEY,
        r#"{"channels": ["tickets:5", "tickets:6"], "data": {"n": 5}}"#,
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"result": {"responses": [{"result": {}}, {"result": {}}]}})
        )
    );
    for client in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(client.publication().await);
        }
        let channel = "tickets:5".to_string();
        assert_eq!(
            got,
            [
                (channel.clone(), json!({"n": 1})),
                (
                    channel.clone(),
                    json!({"event": "ticket.updated", "data": {"id": 5, "account_id": 3}})
                ),
                (channel.clone(), json!({"n": 3})),
                (channel.clone(), json!({"n": 4})),
                (channel.clone(), json!({"n": 5})),
            ]
        );
    }
    // Fifty in order.
    for n in 0..50 {
        api(
            a.addr,
            "publish",
            API_KEY,
            &json!({"channel": "tickets:5", "data": {"n": n}}).to_string(),
        )
        .await;
    }
    for n in 0..50 {
        assert_eq!(on_b.publication().await.1, json!({"n": n}));
    }
}

#[tokio::test]
async fn client_publish_follows_the_namespace() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "1"})).await;
    let code = |reply: Value| reply["error"]["code"].as_u64();
    // voice: no publish option; without a namespace: subscribers only.
    assert_eq!(
        code(
            client
                .call("publish", json!({"channel": "voice:x", "data": 1}))
                .await
        ),
        Some(103)
    );
    assert_eq!(
        code(
            client
                .call("publish", json!({"channel": "news", "data": 1}))
                .await
        ),
        Some(103)
    );
    assert_eq!(
        code(
            client
                .call("publish", json!({"channel": "nowhere:x", "data": 1}))
                .await
        ),
        Some(102)
    );
    assert_eq!(
        code(client.call("publish", json!({"channel": "news"})).await),
        Some(107)
    );
    let token = mint(json!({"sub": "1", "channel": "news"}));
    client
        .call("subscribe", json!({"channel": "news", "token": token}))
        .await;
    assert_eq!(
        client
            .call("publish", json!({"channel": "news", "data": {"x": 1}}))
            .await["publish"],
        json!({})
    );
    assert_eq!(client.publication().await.1, json!({"x": 1}));
}

#[tokio::test]
async fn the_server_api_refuses_what_it_must() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    assert_eq!(api(gw.addr, "publish", "wrong", "{}").await.0, 401);
    // The file's key is overridden by CABLE_CENTRIFUGO_API_KEY.
    assert_eq!(
        api(gw.addr, "publish", "not-this-one-either", "{}").await.0,
        401
    );
    assert_eq!(api(gw.addr, "publish", API_KEY, "{nope").await.0, 400);
    for body in [
        r#"{"data": 1}"#,
        r#"{"channel": "", "data": 1}"#,
        r#"{"channel": "x"}"#,
        r#"[1]"#,
    ] {
        assert_eq!(
            api(gw.addr, "publish", API_KEY, body).await,
            (
                200,
                json!({"error": {"code": 107, "message": "bad request"}})
            ),
            "{body}"
        );
    }
    assert_eq!(
        api(
            gw.addr,
            "broadcast",
            API_KEY,
            r#"{"channels": [], "data": 1}"#
        )
        .await
        .1["error"]["code"],
        107
    );
    assert_eq!(api(gw.addr, "teleport", API_KEY, "{}").await.0, 404);
    let (status, info) = api(gw.addr, "info", API_KEY, "{}").await;
    assert_eq!(status, 200);
    assert_eq!(info["result"]["nodes"][0]["name"], "cable-gateway");
    // Nothing was published by any of them.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cable_events WHERE payload IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn account_channels_carry_what_the_users_dashboard_would() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    // Bob (users.id 2) is an agent of account 1, in inbox 1.
    let (mut bob, _) = Centrifugo::connected(gw.addr, json!({"sub": "2"})).await;
    assert_eq!(
        bob.call("subscribe", json!({"channel": "account:1"})).await["subscribe"],
        json!({})
    );
    // Like a dashboard's subscription, it carries the account's presence.
    let (_, presence) = bob.publication().await;
    assert_eq!(presence["event"], "presence.update");
    assert_eq!(presence["data"]["users"]["2"], "online");
    // And the channel keeps Centrifugo's presence of its subscribers.
    let who = bob
        .call("presence_stats", json!({"channel": "account:1"}))
        .await;
    assert_eq!(
        who["presence_stats"],
        json!({"num_clients": 1, "num_users": 1})
    );
    // Frank (4) is not in account 1; "x" is no user id.
    for sub in ["4", "x"] {
        let (mut other, _) = Centrifugo::connected(gw.addr, json!({"sub": sub})).await;
        assert_eq!(
            other
                .call("subscribe", json!({"channel": "account:1"}))
                .await["error"]["code"],
            103
        );
    }
    db.publish(
        1,
        "message.created",
        json!({"id": 1}),
        json!({"inbox_id": 2}),
    )
    .await;
    db.publish(
        1,
        "message.created",
        json!({"id": 2}),
        json!({"inbox_id": 1}),
    )
    .await;
    assert_eq!(
        bob.event().await,
        (
            "account:1".to_string(),
            json!({"event": "message.created", "data": {"id": 2, "account_id": 1}})
        )
    );
    // Removed from the account: an unsubscribe push, and nothing after it (presence
    // snapshots of the account may come before it, as on the dashboard).
    db.exec("DELETE FROM account_users WHERE user_id = 2").await;
    let push = loop {
        let frame = bob.next().await;
        if frame["push"]["pub"]["data"]["event"] != "presence.update" {
            break frame;
        }
    };
    assert_eq!(push["push"]["channel"], "account:1");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2000);
    db.publish(1, "conversation.updated", json!({"id": 3}), json!({}))
        .await;
    let pong = bob.call("subscribe", json!({"channel": "tickets:1"})).await;
    assert_eq!(pong["subscribe"], json!({}));
}

#[tokio::test]
async fn token_life_refresh_and_expiry() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, reply) =
        Centrifugo::connected(gw.addr, json!({"sub": "1", "exp": now() + 2})).await;
    assert_eq!(reply["expires"], true);
    let refreshed = client
        .call(
            "refresh",
            json!({"token": mint(json!({"sub": "1", "exp": now() + 6}))}),
        )
        .await;
    assert_eq!(refreshed["refresh"]["expires"], true);
    // Still here after the first token's exp, gone at the second's: 3005.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(client
        .call("subscribe", json!({"channel": "tickets:1"}))
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(
        client.closed(Duration::from_secs(6)).await,
        Some((3005, "connection expired".into()))
    );
    // A refresh naming another user: 3500.
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "1"})).await;
    client
        .command("refresh", json!({"token": mint(json!({"sub": "2"}))}))
        .await;
    assert_eq!(client.closed(WAIT).await.map(|(code, _)| code), Some(3500));
}

#[tokio::test]
async fn shutdown_says_3001() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "1"})).await;
    let shutdown = tokio::spawn(gw.shutdown());
    assert_eq!(client.closed(WAIT).await, Some((3001, "shutdown".into())));
    shutdown.await.unwrap();
}

/// The next join or leave push: (kind, client, user).
async fn membership(client: &mut Centrifugo) -> (String, String, String) {
    let frame = client.next().await;
    let push = &frame["push"];
    let kind = ["join", "leave"]
        .into_iter()
        .find(|kind| push.get(*kind).is_some())
        .unwrap_or_else(|| panic!("expected a join or leave, got {frame}"));
    let info = &push[kind]["info"];
    (
        kind.to_string(),
        info["client"].as_str().unwrap().to_string(),
        info["user"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn channel_presence_is_shared_by_every_process_with_joins_and_leaves() {
    let db = TestDb::new().await;
    let a = gateway(&db).await;
    let b = gateway(&db).await;
    let (mut alice, hello) =
        Centrifugo::connected(a.addr, json!({"sub": "1", "info": {"name": "Alice"}})).await;
    let alice_id = hello["client"].as_str().unwrap().to_string();
    let subscribe = json!({"channel": "presence:online"});
    assert_eq!(
        alice.call("subscribe", subscribe.clone()).await["subscribe"],
        json!({})
    );
    // Her own join comes too (force_push_join_leave).
    assert_eq!(
        membership(&mut alice).await,
        ("join".into(), alice_id.clone(), "1".into())
    );
    let (mut bob, hello) = Centrifugo::connected(b.addr, json!({"sub": "2"})).await;
    let bob_id = hello["client"].as_str().unwrap().to_string();
    bob.call("subscribe", subscribe.clone()).await;
    let joined = tokio::time::timeout(Duration::from_secs(2), membership(&mut alice))
        .await
        .expect("the join from the other process within 2 s");
    assert_eq!(joined, ("join".into(), bob_id.clone(), "2".into()));
    // presence and presence_stats, on either process, and from the server API.
    let presence = alice.call("presence", subscribe.clone()).await;
    assert_eq!(
        presence["presence"]["presence"][&alice_id],
        json!({"client": alice_id, "user": "1", "conn_info": {"name": "Alice"}})
    );
    assert_eq!(presence["presence"]["presence"][&bob_id]["user"], "2");
    let stats = bob.call("presence_stats", subscribe.clone()).await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    let (_, api_stats) = api(
        a.addr,
        "presence_stats",
        API_KEY,
        r#"{"channel": "presence:online"}"#,
    )
    .await;
    assert_eq!(
        api_stats,
        json!({"result": {"num_clients": 2, "num_users": 2}})
    );
    // A channel without presence: 108; presence of a channel one is not subscribed to: 103.
    assert_eq!(
        alice
            .call("presence", json!({"channel": "tickets:1"}))
            .await["error"]["code"],
        108
    );
    assert_eq!(
        alice
            .call("presence", json!({"channel": "presence:other"}))
            .await["error"]["code"],
        103
    );
    // Bob leaves: Alice hears it.
    bob.call("unsubscribe", subscribe.clone()).await;
    assert_eq!(
        membership(&mut alice).await,
        ("leave".into(), bob_id, "2".into())
    );
    // Without force_push_join_leave, only a subscriber that asked gets them.
    let (mut asked, _) = Centrifugo::connected(a.addr, json!({"sub": "3"})).await;
    asked
        .call(
            "subscribe",
            json!({"channel": "quiet:room", "join_leave": true}),
        )
        .await;
    let (mut silent, _) = Centrifugo::connected(b.addr, json!({"sub": "4"})).await;
    silent
        .call("subscribe", json!({"channel": "quiet:room"}))
        .await;
    assert_eq!(membership(&mut asked).await.0, "join");
    assert_eq!(membership(&mut asked).await.2, "4");
    let (_, none) = api(b.addr, "presence", API_KEY, r#"{"channel": "quiet:room"}"#).await;
    assert_eq!(none["result"]["presence"].as_object().unwrap().len(), 2);
    // `silent` got nothing but the answers to its own commands.
    assert_eq!(
        silent
            .call("unsubscribe", json!({"channel": "quiet:room"}))
            .await["unsubscribe"],
        json!({})
    );
    assert!(silent.pushes.is_empty(), "{:?}", silent.pushes);
}

#[tokio::test]
async fn a_killed_processs_clients_leave_within_the_presence_ttl() {
    let db = TestDb::new().await;
    let path = config_file(&db);
    let mut config = db.config();
    config.jwt_secret = Some(SECRET.into());
    config.centrifugo_config = Some(path.clone());
    config.presence_ttl = Duration::from_secs(2);
    let survivor = start(config).await;
    let doomed = common::GatewayProcess::spawn(
        &db.url,
        &[
            ("CABLE_JWT_SECRET", SECRET),
            ("CABLE_CENTRIFUGO_CONFIG", path.to_str().unwrap()),
            ("CABLE_PRESENCE_TTL", "2s"),
        ],
    )
    .await;
    doomed.ready().await;
    let (mut watcher, _) = Centrifugo::connected(survivor.addr, json!({"sub": "1"})).await;
    watcher
        .call("subscribe", json!({"channel": "presence:online"}))
        .await;
    membership(&mut watcher).await; // its own join
    let (mut victim, hello) = Centrifugo::connected(doomed.addr, json!({"sub": "9"})).await;
    let victim_id = hello["client"].as_str().unwrap().to_string();
    victim
        .call("subscribe", json!({"channel": "presence:online"}))
        .await;
    assert_eq!(membership(&mut watcher).await.1, victim_id);
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", &doomed.pid().to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let left = tokio::time::timeout(Duration::from_secs(5), membership(&mut watcher))
        .await
        .expect("a leave within the TTL and a sweep");
    assert_eq!(left, ("leave".into(), victim_id, "9".into()));
    assert!(
        started.elapsed() <= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn subscription_tokens_expire_unless_refreshed() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "1"})).await;
    let token = |exp: u64| mint(json!({"sub": "1", "channel": "voice:calls", "exp": exp}));
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "voice:calls", "token": token(now() + 2)}),
        )
        .await;
    assert_eq!(reply["subscribe"]["expires"], true);
    assert!(reply["subscribe"]["ttl"]
        .as_u64()
        .is_some_and(|ttl| ttl <= 2));
    // Refreshed; a refresh naming another channel would be 3500.
    let refreshed = client
        .call(
            "sub_refresh",
            json!({"channel": "voice:calls", "token": token(now() + 6)}),
        )
        .await;
    assert_eq!(refreshed["sub_refresh"]["expires"], true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        client
            .call("subscribe", json!({"channel": "tickets:1"}))
            .await["subscribe"],
        json!({})
    );
    // Left to run out: 3006.
    assert_eq!(
        client.closed(Duration::from_secs(6)).await,
        Some((3006, "subscription expired".into()))
    );
    // An expired subscription token at subscribe: error 109.
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "1"})).await;
    let expired = client
        .call(
            "subscribe",
            json!({"channel": "voice:calls", "token": token(now() - 1)}),
        )
        .await;
    assert_eq!(expired["error"]["code"], 109);
    let wrong = mint(json!({"sub": "1", "channel": "voice:other", "exp": now() + 60}));
    client
        .call(
            "subscribe",
            json!({"channel": "voice:calls", "token": token(now() + 60)}),
        )
        .await;
    client
        .command(
            "sub_refresh",
            json!({"channel": "voice:calls", "token": wrong}),
        )
        .await;
    assert_eq!(client.closed(WAIT).await.map(|(code, _)| code), Some(3500));
}

/// A connect proxy on a free port: answers each connect by its `data.as`, and keeps what
/// it was sent.
async fn connect_proxy() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break body.to_string();
                        }
                    }
                };
                let asked: Value = serde_json::from_str(&body).unwrap();
                kept.lock().unwrap().push(asked.clone());
                let answer = match asked["data"]["as"].as_str().unwrap_or("") {
                    "agent" => json!({"result": {"user": "2", "channels": ["voice:calls"],
                                                 "info": {"name": "Bob"}, "data": {"welcome": true}}}),
                    "refused" => json!({"error": {"code": 4000, "message": "not today"}}),
                    "banned" => json!({"disconnect": {"code": 4501, "reason": "banned"}}),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        json!({"result": {"user": "late"}})
                    }
                }
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_connect_proxy_decides_connects_without_a_token() {
    let db = TestDb::new().await;
    let (proxy, seen) = connect_proxy().await;
    let mut config = db.config();
    // Connects without a token go to the proxy (the file's token key is not SECRET).
    config.centrifugo_config = Some(config_file(&db));
    config.centrifugo_connect_proxy_url = Some(format!("http://{proxy}/centrifugo/connect"));
    config.centrifugo_api_key = Some(API_KEY.into());
    let gw = start(config).await;
    let mut client = Centrifugo::open(gw.addr).await;
    let reply = client
        .call(
            "connect",
            json!({"data": {"as": "agent"}, "name": "js", "version": "5.8.0"}),
        )
        .await;
    let connected = &reply["connect"];
    assert_eq!(connected["data"], json!({"welcome": true}));
    assert_eq!(connected["subs"], json!({"voice:calls": {}}));
    let asked = seen.lock().unwrap()[0].clone();
    assert_eq!(
        asked,
        json!({"client": connected["client"], "transport": "websocket", "protocol": "json",
               "encoding": "json", "name": "js", "version": "5.8.0", "data": {"as": "agent"}})
    );
    api(
        gw.addr,
        "publish",
        API_KEY,
        r#"{"channel": "voice:calls", "data": 1}"#,
    )
    .await;
    assert_eq!(client.publication().await.1, json!(1));
    // An error is the connect's reply; the connection stays for another try.
    let mut client = Centrifugo::open(gw.addr).await;
    let refused = client
        .call("connect", json!({"data": {"as": "refused"}}))
        .await;
    assert_eq!(
        refused["error"],
        json!({"code": 4000, "message": "not today"})
    );
    // A disconnect closes with its code and reason.
    client
        .command("connect", json!({"data": {"as": "banned"}}))
        .await;
    assert_eq!(client.closed(WAIT).await, Some((4501, "banned".into())));
    // No answer within the timeout (1 s): error 100, temporary.
    let mut client = Centrifugo::open(gw.addr).await;
    let started = std::time::Instant::now();
    let late = client
        .call("connect", json!({"data": {"as": "slow"}}))
        .await;
    assert_eq!(
        late["error"],
        json!({"code": 100, "message": "internal server error", "temporary": true})
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    // A token signed with another key than the file's: 3500, not the proxy.
    let mut client = Centrifugo::open(gw.addr).await;
    client
        .command("connect", json!({"token": mint(json!({"sub": "1"}))}))
        .await;
    assert_eq!(client.closed(WAIT).await.map(|(code, _)| code), Some(3500));
}

#[tokio::test]
async fn the_apis_unsubscribe_and_disconnect_reach_the_users_clients_on_every_process() {
    let db = TestDb::new().await;
    let a = gateway(&db).await;
    let b = gateway(&db).await;
    let (mut on_a, _) = Centrifugo::connected(a.addr, json!({"sub": "7"})).await;
    let (mut on_b, _) = Centrifugo::connected(b.addr, json!({"sub": "7"})).await;
    let (mut other, _) = Centrifugo::connected(b.addr, json!({"sub": "8"})).await;
    // A witness on A: once it has a publication, A has dispatched it.
    let (mut witness, _) = Centrifugo::connected(a.addr, json!({"sub": "9"})).await;
    for client in [&mut on_a, &mut on_b, &mut other, &mut witness] {
        client
            .call("subscribe", json!({"channel": "tickets:1"}))
            .await;
    }
    // Unsubscribe user 7 from tickets:1, through process A.
    let (status, answer) = api(
        a.addr,
        "unsubscribe",
        API_KEY,
        r#"{"channel": "tickets:1", "user": "7"}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({"result": {}})));
    for client in [&mut on_a, &mut on_b] {
        let push = client.next().await;
        assert_eq!(
            push["push"],
            json!({"channel": "tickets:1", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}})
        );
    }
    api(
        b.addr,
        "publish",
        API_KEY,
        r#"{"channel": "tickets:1", "data": 1}"#,
    )
    .await;
    assert_eq!(other.publication().await.1, json!(1));
    assert_eq!(witness.publication().await.1, json!(1));
    // User 7 may subscribe again, and then gets publications again.
    on_a.call("subscribe", json!({"channel": "tickets:1"}))
        .await;
    api(
        b.addr,
        "publish",
        API_KEY,
        r#"{"channel": "tickets:1", "data": 2}"#,
    )
    .await;
    assert_eq!(on_a.publication().await.1, json!(2));
    // Disconnect user 7 everywhere: 3503 by default, or the code the request gives.
    let (status, _) = api(b.addr, "disconnect", API_KEY, r#"{"user": "7"}"#).await;
    assert_eq!(status, 200);
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(
            client.closed(WAIT).await,
            Some((3503, "force disconnect".into()))
        );
    }
    api(
        a.addr,
        "disconnect",
        API_KEY,
        r#"{"user": "8", "disconnect": {"code": 4000, "reason": "bye"}}"#,
    )
    .await;
    assert_eq!(other.closed(WAIT).await, Some((4000, "bye".into())));
    // Malformed orders: 107.
    for (method, body) in [
        ("unsubscribe", r#"{"user": "7"}"#),
        ("unsubscribe", r#"{"channel": "x"}"#),
        ("disconnect", r#"{}"#),
    ] {
        assert_eq!(
            api(a.addr, method, API_KEY, body).await.1["error"]["code"],
            107
        );
    }
}

#[tokio::test]
async fn an_accounts_stream_is_no_public_channel() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (mut client, _) = Centrifugo::connected(gw.addr, json!({"sub": "7"})).await;
    // Channels without a namespace are open to clients here, but not `account_1`: it is the
    // stream every user subscription of account 1 hears.
    assert_eq!(
        client.call("subscribe", json!({"channel": "news"})).await["subscribe"],
        json!({})
    );
    assert_eq!(
        client
            .call("subscribe", json!({"channel": "account_1"}))
            .await["error"]["code"],
        103
    );
    // A backend may open it with a subscription token; publishing into it stays refused.
    let token = mint(json!({"sub": "7", "channel": "account_1"}));
    assert_eq!(
        client
            .call("subscribe", json!({"channel": "account_1", "token": token}))
            .await["subscribe"],
        json!({})
    );
    assert_eq!(
        client
            .call(
                "publish",
                json!({"channel": "account_1", "data": {"event": "x", "data": {}}})
            )
            .await["error"]["code"],
        103
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cable_events WHERE stream = 'account_1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 0);
}
