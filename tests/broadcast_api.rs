//! AnyCable's HTTP broadcast API (`POST /_broadcast`): the bearer key, the status codes, and
//! delivery to the subscriptions streaming each broadcast's name.

mod common;

use cable_gateway::server::Running;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "test-broadcast-key";

async fn post(gw: &Running, auth: Option<&str>, body: &[u8]) -> (u16, String) {
    let header = auth.map(|key| format!("Authorization: Bearer {key}"));
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    http_request(gw.addr, "POST", "/_broadcast", &headers, body).await
}

/// The next message that is not a presence answer.
async fn broadcast(client: &mut Client) -> Value {
    loop {
        let (_, message) = client.event().await;
        if message["event"] != "presence.update" {
            return message;
        }
    }
}

#[tokio::test]
async fn broadcasts_by_http_reach_their_streams_and_bad_requests_get_their_status() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.broadcast_key = Some(KEY.into());
    config.max_broadcast_size = 1000;
    let gw = start(config).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    let mut dave = Client::ready(gw.addr).await;
    dave.subscribe_ok(&contact("demo-contact-dave", Some(1)))
        .await;

    let one = |stream: &str, data: Value| json!({"stream": stream, "data": data.to_string()});
    // Nothing is delivered from a refused request.
    let refused = [
        (
            None,
            one("demo-user-alice", json!({"event": "no"})).to_string(),
            401,
        ),
        (
            Some("wrong"),
            one("demo-user-alice", json!({"event": "no"})).to_string(),
            401,
        ),
        (Some(KEY), "not json".to_string(), 422),
        (
            Some(KEY),
            json!([one("demo-user-alice", json!({"event": "no"})), {"stream": "x"}]).to_string(),
            422,
        ),
        (
            Some(KEY),
            json!({"stream": "demo-user-alice", "data": "{oops"}).to_string(),
            422,
        ),
        (
            Some(KEY),
            json!({"stream": "demo-user-alice", "data": {"event": "no"}}).to_string(),
            422,
        ),
        (
            Some(KEY),
            one("demo-user-alice", json!({"pad": "x".repeat(1000)})).to_string(),
            422,
        ),
        (Some(KEY), "x".repeat(16 * 1000 + 1), 413),
    ];
    for (auth, body, status) in refused {
        let (got, answer) = post(&gw, auth, body.as_bytes()).await;
        assert_eq!(
            got,
            status,
            "{auth:?} {}: {answer}",
            &body[..body.len().min(80)]
        );
    }
    assert_eq!(
        http_request(gw.addr, "GET", "/_broadcast", &[], b"")
            .await
            .0,
        405
    );

    // One request, several broadcasts, delivered in order; contacts never get private ones.
    let batch = json!([
        one(
            "demo-contact-dave",
            json!({"event": "conversation.typing_on", "data": {"is_private": true}})
        ),
        one("demo-user-alice", json!({"event": "first", "data": {}})),
        one("account_1", json!({"event": "second", "data": {}})),
        one(
            "demo-contact-dave",
            json!({"event": "conversation.updated", "data": {"id": 7}})
        ),
    ]);
    assert_eq!(
        post(&gw, Some(KEY), batch.to_string().as_bytes()).await.0,
        201
    );
    assert_eq!(broadcast(&mut alice).await["event"], "first");
    assert_eq!(broadcast(&mut alice).await["event"], "second");
    assert_eq!(
        broadcast(&mut dave).await,
        json!({"event": "conversation.updated", "data": {"id": 7}})
    );
    assert_eq!(
        metric(&gw, "cable_broadcasts_total", "ingress=\"http\""),
        4.0
    );
}

#[tokio::test]
async fn without_a_key_there_is_no_broadcast_endpoint() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let body = json!({"stream": "demo-user-alice", "data": "{}"}).to_string();
    let (status, _) = post(&gw, Some(KEY), body.as_bytes()).await;
    assert_eq!(status, 404);
}
