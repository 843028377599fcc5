//! Clients of AnyCable's extended protocol (`actioncable-v1-ext-json`, docs/reference.md §8): connect
//! (and restore), history requests, and reading a replay up to its answer.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub const EXT: &str = "actioncable-v1-ext-json";

/// Connects with the extended protocol (restoring `sid` if given) and reads the welcome.
pub async fn ext(addr: std::net::SocketAddr, sid: Option<&str>) -> (Client, Value) {
    let path = match sid {
        Some(sid) => format!("/cable?sid={sid}"),
        None => "/cable".to_string(),
    };
    let mut client = Client::connect_path(addr, &path, &[EXT], None)
        .await
        .expect("websocket connects");
    assert_eq!(client.protocol.as_deref(), Some(EXT));
    let welcome = client.next().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

pub fn sid_of(welcome: &Value) -> String {
    let sid = welcome["sid"].as_str().expect("a sid").to_string();
    assert!(sid.len() >= 32, "a session id of 128 bits: {sid}");
    sid
}

/// Waits until the session row of `sid` holds `n` subscriptions (saves are asynchronous).
pub async fn saved(db: &TestDb, sid: &str, n: i64) {
    tokio::time::timeout(WAIT, async {
        loop {
            let count: Option<i32> = sqlx::query_scalar(
                "SELECT jsonb_array_length(subscriptions) FROM cable_sessions WHERE sid = $1",
            )
            .bind(sid)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
            if count == Some(n as i32) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session row in time");
}

/// An extended-protocol client subscribed to `identifier`, its session saved: (client, sid).
pub async fn session(
    db: &TestDb,
    addr: std::net::SocketAddr,
    identifier: &str,
) -> (Client, String) {
    let (mut client, welcome) = ext(addr, None).await;
    let sid = sid_of(&welcome);
    client.subscribe_ok(identifier).await;
    saved(db, &sid, 1).await;
    (client, sid)
}

/// The position a message frame carries, as a history request's stream entry.
pub fn position(frame: &Value) -> (String, Value) {
    let stream = frame["stream_id"].as_str().expect("stream_id").to_string();
    assert!(frame["offset"].is_i64(), "an integer offset: {frame}");
    (
        stream,
        json!({"epoch": frame["epoch"], "offset": frame["offset"]}),
    )
}

pub fn history(identifier: &str, streams: &[(String, Value)]) -> Value {
    let streams: serde_json::Map<String, Value> = streams.iter().cloned().collect();
    json!({"command": "history", "identifier": identifier,
           "history": {"since": null, "streams": streams}})
}

/// Reads message frames until `confirm_history` (or `reject_history`) for `identifier`;
/// returns the events' `data.n` in order and which answer came.
pub async fn replay(client: &mut Client, identifier: &str) -> (Vec<i64>, &'static str) {
    let mut got = Vec::new();
    loop {
        let frame = client.next_significant().await;
        match frame["type"].as_str() {
            Some("confirm_history") => {
                assert_eq!(frame["identifier"], identifier);
                return (got, "confirm_history");
            }
            Some("reject_history") => {
                assert_eq!(frame["identifier"], identifier);
                return (got, "reject_history");
            }
            None => got.push(frame["message"]["data"]["n"].as_i64().expect("data.n")),
            Some(other) => panic!("unexpected {other}: {frame}"),
        }
    }
}
