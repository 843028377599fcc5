//! ActionCable's PostgreSQL adapter as the ingress: broadcasts sent as Rails' adapter sends
//! them (`NOTIFY "<channel>", '<payload>'`, the channel named as Rails names it), received by
//! real WebSocket clients through the gateway.

mod common;

use std::time::Duration;

use cable_gateway::ingress::postgres::channels;
use cable_gateway::server::Running;
use common::*;
use serde_json::{json, Value};

const PREFIX: &str = "chatwoot_test_action_cable";

/// `NOTIFY` as Rails' adapter runs it: an escaped identifier and an escaped string literal.
async fn notify(db: &TestDb, channel: &str, payload: &str) {
    db.exec(&format!(
        "NOTIFY \"{}\", '{}'",
        channel.replace('"', "\"\""),
        payload.replace('\'', "''")
    ))
    .await;
}

/// Broadcasts on `stream` the way Rails does with `channel_prefix: <prefix>`.
async fn rails_broadcast(db: &TestDb, prefix: &str, stream: &str, payload: &Value) {
    let name = format!("{prefix}:{stream}");
    let channel = if name.chars().count() > 63 {
        channels(Some(prefix), stream)[0].clone()
    } else {
        name
    };
    notify(db, &channel, &payload.to_string()).await;
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

async fn gateway(db: &TestDb, prefix: &str) -> Running {
    let mut config = db.config();
    config.rails_channel_prefix = Some(prefix.into());
    start(config).await
}

/// Waits until the LISTEN connection listens on `n` channels (the gauge is updated after
/// each LISTEN/UNLISTEN round trip).
/// The channels every process listens to: the outbox's doorbell and rounds, presence
/// announcements, restored sessions, the identity tables' changes, and Centrifugo's channel
/// presence and server-API orders.
const FIXED: f64 = 7.0;

async fn listening_on(gw: &Running, streams: f64) {
    let n = FIXED + streams;
    let wait = async {
        while metric(gw, "cable_listen_channels", "") != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("listening on {streams} stream channels in time"));
}

#[tokio::test]
async fn a_broadcast_right_after_the_confirm_arrives_every_time() {
    let db = TestDb::new().await;
    let gw = gateway(&db, PREFIX).await;
    // Each round: the stream is new to the process (its channel was UNLISTENed when the
    // previous round's client left), the confirm, and at once the broadcast.
    for round in 0..25 {
        let mut dave = Client::ready(gw.addr).await;
        dave.subscribe_ok(&contact("demo-contact-dave", Some(1)))
            .await;
        let payload = json!({"event": "message.created", "data": {"round": round}});
        rails_broadcast(&db, PREFIX, "demo-contact-dave", &payload).await;
        assert_eq!(broadcast(&mut dave).await, payload, "round {round}");
        drop(dave);
        // Only the fixed channels remain once the stream's last subscription is gone.
        listening_on(&gw, 0.0).await;
    }
}

#[tokio::test]
async fn streams_reach_their_subscribers_and_contacts_never_get_private_ones() {
    let db = TestDb::new().await;
    let gw = gateway(&db, PREFIX).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    let mut dave = Client::ready(gw.addr).await;
    dave.subscribe_ok(&contact("demo-contact-dave", Some(1)))
        .await;
    // alice: her token and account_1; dave: his token.
    listening_on(&gw, 3.0).await;

    rails_broadcast(
        &db,
        PREFIX,
        "account_1",
        &json!({"event": "contact.created", "data": {"tag": "acct"}}),
    )
    .await;
    rails_broadcast(
        &db,
        PREFIX,
        "demo-contact-dave",
        &json!({"event": "conversation.typing_on", "data": {"is_private": true}}),
    )
    .await;
    rails_broadcast(
        &db,
        PREFIX,
        "demo-contact-dave",
        &json!({"event": "message.created", "data": {"private": true}}),
    )
    .await;
    let public = json!({"event": "conversation.updated", "data": {"tag": "public"}});
    rails_broadcast(&db, PREFIX, "demo-contact-dave", &public).await;
    assert_eq!(broadcast(&mut alice).await["data"]["tag"], "acct");
    assert_eq!(broadcast(&mut dave).await, public);

    // Not JSON: skipped and counted.
    notify(&db, &format!("{PREFIX}:demo-user-alice"), "not json").await;
    rails_broadcast(
        &db,
        PREFIX,
        "demo-user-alice",
        &json!({"event": "marker", "data": {"tag": "after"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await["data"]["tag"], "after");
    assert_eq!(
        metric(&gw, "cable_broadcasts_skipped_total", "reason=\"not_json\""),
        1.0
    );

    // The last subscription of a stream gone: its channel is UNLISTENed (dave's), the
    // others stay (alice's two).
    drop(dave);
    listening_on(&gw, 2.0).await;
}

#[tokio::test]
async fn long_channel_names_are_heard_as_old_and_new_rails_name_them() {
    let db = TestDb::new().await;
    // Over 63 characters: both Rails send the SHA-1 of the name.
    let long = "p".repeat(70);
    let gw = gateway(&db, &long).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    let sha = channels(Some(&long), "demo-user-alice");
    assert_eq!(sha.len(), 1);
    assert_eq!(sha[0].len(), 40);
    notify(
        &db,
        &sha[0],
        &json!({"event": "e", "data": {"tag": "sha1"}}).to_string(),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await["data"]["tag"], "sha1");
    drop(gw);

    // At most 63 characters but more bytes: older Rails sends the name as it is (PostgreSQL
    // cuts it to 63 bytes), newer Rails its SHA-1. Both arrive.
    let db = TestDb::new().await;
    let wide = "é".repeat(40);
    let gw = gateway(&db, &wide).await;
    let mut dave = Client::ready(gw.addr).await;
    dave.subscribe_ok(&contact("demo-contact-dave", Some(1)))
        .await;
    let name = format!("{wide}:demo-contact-dave");
    assert!(name.chars().count() <= 63 && name.len() > 63);
    notify(
        &db,
        &name,
        &json!({"event": "e", "data": {"tag": "old rails"}}).to_string(),
    )
    .await;
    assert_eq!(broadcast(&mut dave).await["data"]["tag"], "old rails");
    let newer = &channels(Some(&wide), "demo-contact-dave")[1];
    notify(
        &db,
        newer,
        &json!({"event": "e", "data": {"tag": "new rails"}}).to_string(),
    )
    .await;
    assert_eq!(broadcast(&mut dave).await["data"]["tag"], "new rails");

    // Cut to 63 bytes, this prefix leaves no room for the stream: every stream's old-Rails
    // name is the same channel. Once alice subscribes too, whose a notification on it is
    // cannot be told: it is skipped and counted, never delivered to the wrong session.
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    notify(
        &db,
        &name,
        &json!({"event": "e", "data": {"tag": "whose?"}}).to_string(),
    )
    .await;
    notify(
        &db,
        newer,
        &json!({"event": "e", "data": {"tag": "marker"}}).to_string(),
    )
    .await;
    assert_eq!(broadcast(&mut dave).await["data"]["tag"], "marker");
    assert_eq!(
        metric(
            &gw,
            "cable_broadcasts_skipped_total",
            "reason=\"ambiguous_channel\""
        ),
        1.0
    );
}

#[tokio::test]
async fn every_stream_is_listened_to_again_after_the_listen_connection_drops() {
    let db = TestDb::new().await;
    let gw = gateway(&db, PREFIX).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    listening_on(&gw, 2.0).await;
    let mut live = gw.listen_readiness();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND query ILIKE '%LISTEN%' AND pid <> pg_backend_pid()) t",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    tokio::time::timeout(WAIT, live.wait_for(|live| !*live))
        .await
        .expect("the drop is noticed")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(45), live.wait_for(|live| *live))
        .await
        .expect("the LISTEN connection is back")
        .unwrap();
    rails_broadcast(
        &db,
        PREFIX,
        "demo-user-alice",
        &json!({"event": "e", "data": {"tag": "again"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await["data"]["tag"], "again");
}

#[tokio::test]
async fn the_adapter_can_be_turned_off() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.rails_postgres = false;
    let gw = start(config).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    // Only the fixed channels: no stream channel was LISTENed to.
    listening_on(&gw, 0.0).await;
}
