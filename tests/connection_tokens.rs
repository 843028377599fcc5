//! Signed connection tokens (docs/reference.md §10): an HS256 JWT names the connection's user or
//! contact session until its `exp`; forged, expired and malformed ones are refused before a
//! welcome, and a live connection ends with `token_expired` at `exp`.

mod common;

use common::events::{published, tag, ALICE};
use common::{metric, reject, start, Client, TestDb};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const SECRET: &str = "test-connection-secret";

fn now() -> u64 {
    cable_gateway::clock::unix_seconds()
}

fn mint_with(alg: Algorithm, secret: &str, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn mint(claims: Value) -> String {
    mint_with(Algorithm::HS256, SECRET, claims)
}

/// Bob (agent of account 1, inbox 1) for an hour.
fn bob() -> String {
    mint(json!({"user_id": 2, "account_id": 1, "exp": now() + 3600}))
}

async fn gateway(db: &TestDb) -> cable_gateway::server::Running {
    let mut config = db.config();
    config.jwt_secret = Some(SECRET.into());
    start(config).await
}

/// Connects to `path` with extra headers, offering the ActionCable sub-protocol and `extra`.
async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    extra_protocol: Option<&str>,
) -> Client {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let protocols = match extra_protocol {
        Some(extra) => format!("actioncable-v1-json, {extra}"),
        None => "actioncable-v1-json".to_owned(),
    };
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&protocols).unwrap(),
    );
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Client { ws, protocol }
}

fn disconnect(reason: &str) -> Value {
    json!({"type": "disconnect", "reason": reason, "reconnect": false})
}

const ROOM: &str = r#"{"channel":"RoomChannel"}"#;

#[tokio::test]
async fn a_signed_connection_subscribes_as_its_user_without_a_pubsub_token() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let mut client = connect(gw.addr, &format!("/cable?jid={}", bob()), &[], None).await;
    assert_eq!(client.next().await, json!({"type": "welcome"}));
    client.subscribe_ok(ROOM).await;
    // Held to Bob's scope: his inbox's events, not inbox 2's.
    db.publish(
        1,
        "message.created",
        json!({"tag": "inbox 2"}),
        json!({"inbox_id": 2}),
    )
    .await;
    db.publish(
        1,
        "message.created",
        json!({"tag": "inbox 1"}),
        json!({"inbox_id": 1}),
    )
    .await;
    assert_eq!(tag(&published(&mut client).await.1), "inbox 1");
    // What the identifier says must agree with the token.
    for identifier in [
        json!({"channel": "RoomChannel", "account_id": 2}),
        json!({"channel": "RoomChannel", "user_id": 1}),
        json!({"channel": "RoomChannel", "pubsub_token": ALICE, "user_id": 1, "account_id": 1}),
    ] {
        let identifier = identifier.to_string();
        client.send(common::subscribe(&identifier)).await;
        assert_eq!(client.next_significant().await, reject(&identifier));
    }
    // Spelled out in full, Bob's own identifier is fine.
    client
        .subscribe_ok(
            &json!({"channel": "RoomChannel", "pubsub_token": "demo-user-bob", "user_id": 2, "account_id": "1"})
                .to_string(),
        )
        .await;
}

#[tokio::test]
async fn the_token_may_come_as_a_header_or_a_sub_protocol_never_echoed() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let mut by_header = connect(gw.addr, "/cable", &[("X-JID", &bob())], None).await;
    assert_eq!(by_header.next().await, json!({"type": "welcome"}));
    by_header.subscribe_ok(ROOM).await;

    // Dave's contact session, as a browser sends it.
    let dave = mint(json!({"contact_inbox_id": 1, "exp": now() + 3600}));
    let token_protocol = format!("anycable-token.{dave}");
    let mut by_protocol = connect(gw.addr, "/cable", &[], Some(&token_protocol)).await;
    assert_eq!(by_protocol.protocol.as_deref(), Some("actioncable-v1-json"));
    assert_eq!(by_protocol.next().await, json!({"type": "welcome"}));
    by_protocol.subscribe_ok(ROOM).await;
    // A contact's scope: its own session's public events only.
    db.publish(
        1,
        "message.created",
        json!({"tag": "private"}),
        json!({"contact_inbox_ids": [1], "private": true}),
    )
    .await;
    db.publish(
        1,
        "message.created",
        json!({"tag": "erin"}),
        json!({"contact_inbox_ids": [2]}),
    )
    .await;
    db.publish(
        1,
        "message.created",
        json!({"tag": "dave"}),
        json!({"contact_inbox_ids": [1]}),
    )
    .await;
    assert_eq!(tag(&published(&mut by_protocol).await.1), "dave");
    assert_eq!(tag(&published(&mut by_header).await.1), "private");
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_refused_before_a_welcome() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let later = now() + 3600;
    let user = json!({"user_id": 2, "account_id": 1, "exp": later});
    let cases = [
        (
            mint_with(Algorithm::HS256, "another-secret", user.clone()),
            "unauthorized",
        ),
        (
            mint_with(Algorithm::HS384, SECRET, user.clone()),
            "unauthorized",
        ),
        (mint(json!({"user_id": 2, "account_id": 1})), "unauthorized"),
        (mint(json!({"account_id": 1, "exp": later})), "unauthorized"),
        // Nobody: no such user; a user of another account; no such contact session.
        (
            mint(json!({"user_id": 99, "account_id": 1, "exp": later})),
            "unauthorized",
        ),
        (
            mint(json!({"user_id": 4, "account_id": 1, "exp": later})),
            "unauthorized",
        ),
        (
            mint(json!({"contact_inbox_id": 99, "exp": later})),
            "unauthorized",
        ),
        ("garbage".to_owned(), "unauthorized"),
        (
            mint(json!({"user_id": 2, "account_id": 1, "exp": now() - 1})),
            "token_expired",
        ),
    ];
    for (token, reason) in cases {
        let mut client = connect(gw.addr, &format!("/cable?jid={token}"), &[], None).await;
        assert_eq!(
            client.until_closed().await,
            vec![disconnect(reason)],
            "{token}"
        );
    }
    // Two different tokens in one request.
    let mut client = connect(
        gw.addr,
        &format!("/cable?jid={}", bob()),
        &[(
            "X-JID",
            &mint(json!({"user_id": 1, "account_id": 1, "exp": later})),
        )],
        None,
    )
    .await;
    assert_eq!(
        client.until_closed().await,
        vec![disconnect("unauthorized")]
    );
    assert_eq!(
        metric(
            &gw,
            "cable_connections_closed_total",
            "reason=\"unauthorized\""
        ),
        9.0
    );
}

#[tokio::test]
async fn without_the_setting_a_token_changes_nothing() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut client = connect(gw.addr, "/cable?jid=garbage", &[("X-JID", "x")], None).await;
    assert_eq!(client.next().await, json!({"type": "welcome"}));
    // No identity: the identifier must name a token, as always.
    client.send(common::subscribe(ROOM)).await;
    assert_eq!(client.next_significant().await, reject(ROOM));
}

#[tokio::test]
async fn a_live_connection_ends_when_its_token_expires() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let exp = now() + 2;
    let token = mint(json!({"user_id": 2, "account_id": 1, "exp": exp}));
    let mut client = connect(gw.addr, &format!("/cable?jid={token}"), &[], None).await;
    assert_eq!(client.next().await, json!({"type": "welcome"}));
    client.subscribe_ok(ROOM).await;
    let frames = client.until_closed().await;
    let ended = cable_gateway::clock::unix_now();
    assert_eq!(
        frames
            .iter()
            .rfind(|f| f["type"] != "ping" && f["message"]["event"] != "presence.update"),
        Some(&disconnect("token_expired"))
    );
    // Not before `exp`, and within about a second of it.
    assert!(ended >= exp as f64, "ended {ended}, exp {exp}");
    assert!(ended < exp as f64 + 2.0, "ended {ended}, exp {exp}");
}
