//! Reading what the outbox delivered: every event a test publishes carries a `tag` in its
//! data, and the demo tokens.

use serde_json::Value;

use super::{Client, WAIT};

pub const ALICE: &str = "demo-user-alice";
pub const BOB: &str = "demo-user-bob";
pub const CAROL: &str = "demo-user-carol";
pub const FRANK: &str = "demo-user-frank";
pub const DAVE: &str = "demo-contact-dave";
pub const ERIN: &str = "demo-contact-erin";
pub const GINA: &str = "demo-contact-gina";

/// The next message that came through the outbox, skipping pings and the gateway's own
/// presence messages (every event a test publishes carries a `tag` in its data).
pub async fn published(client: &mut Client) -> (String, Value) {
    tokio::time::timeout(WAIT, published_unbounded(client))
        .await
        .expect("a published event in time")
}

pub async fn published_unbounded(client: &mut Client) -> (String, Value) {
    loop {
        let frame = client.next().await;
        assert!(
            frame.get("type").is_none(),
            "expected a message, got {frame}"
        );
        let message = &frame["message"];
        if message["event"] == "presence.update" && message["data"].get("tag").is_none() {
            continue;
        }
        let identifier = frame["identifier"]
            .as_str()
            .unwrap_or_else(|| panic!("a message names its identifier: {frame}"))
            .to_string();
        return (identifier, message.clone());
    }
}

pub fn tag(message: &Value) -> &str {
    message["data"]["tag"]
        .as_str()
        .unwrap_or_else(|| panic!("no tag in {message}"))
}

/// The next published message's tag.
pub async fn next_tag(client: &mut Client) -> String {
    let (_, message) = published(client).await;
    tag(&message).to_string()
}
