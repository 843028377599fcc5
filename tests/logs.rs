//! What the gateway logs: structured JSON on request, one line per closed connection with
//! its reason and duration, and never a token in full.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn json_logs_record_each_closed_connection_and_never_a_full_token() {
    let db = TestDb::new().await;
    let mut gw = GatewayProcess::spawn_with(
        &db.url,
        &[
            ("CABLE_LOG_FORMAT", "json"),
            ("RUST_LOG", "cable_gateway=debug"),
        ],
        std::process::Stdio::piped(),
    )
    .await;
    let mut stderr = gw.child.stderr.take().expect("piped stderr");
    gw.ready().await;

    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    let guess = user("secret-guess-token", 1, 1);
    client.send(subscribe(&guess)).await;
    assert_eq!(client.next_significant().await, reject(&guess));
    client.ws.close(None).await.unwrap();
    let _ = client.until_closed().await;

    gw.terminate().await;
    let status = tokio::time::timeout(Duration::from_secs(10), gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).await.unwrap();

    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let closed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "connection closed")
        .collect();
    assert!(
        !closed.is_empty(),
        "no 'connection closed' line in:\n{logs}"
    );
    let line = closed
        .iter()
        .find(|l| l["subscriptions"] == 1)
        .expect("the subscribed connection's line");
    assert_eq!(line["reason"], "client_closed", "{line}");
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert!(
        line["level"].is_string() && line["timestamp"].is_string(),
        "{line}"
    );

    assert!(
        !logs.contains("demo-user-alice"),
        "a full token was logged:\n{logs}"
    );
    assert!(
        !logs.contains("secret-guess-token"),
        "a full token was logged:\n{logs}"
    );
    assert!(
        logs.contains("demo…"),
        "the token prefix is what identifies a subscription:\n{logs}"
    );
    // One line per reject, at info, with its reason and the token's prefix only.
    let rejects: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "subscription rejected")
        .collect();
    assert_eq!(rejects.len(), 1, "{logs}");
    assert_eq!(rejects[0]["level"], "INFO", "{}", rejects[0]);
    assert_eq!(rejects[0]["reason"], "unknown_token", "{}", rejects[0]);
    assert_eq!(rejects[0]["token"], "secr…", "{}", rejects[0]);
}
