//! Presence over real sockets against real PostgreSQL: answers, pushes on change,
//! expiry after the TTL, the heartbeat of live connections, coalescing, the push byte budget,
//! and presence shared by several gateway processes (plus their SIGTERM handling).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A short TTL for the tests where expiry matters.
const TTL: Duration = Duration::from_millis(1500);

fn alice() -> String {
    user("demo-user-alice", 1, 1)
}

fn bob() -> String {
    user("demo-user-bob", 1, 2)
}

fn frank() -> String {
    user("demo-user-frank", 2, 4)
}

fn dave() -> String {
    contact("demo-contact-dave", Some(1))
}

fn erin() -> String {
    contact("demo-contact-erin", Some(1))
}

fn gina() -> String {
    contact("demo-contact-gina", None)
}

/// `update_presence` with `data` as a JSON object (the Flutter SDK's form).
fn update_presence_object(identifier: &str) -> Value {
    json!({"command": "message", "identifier": identifier, "data": {"action": "update_presence"}})
}

/// A server frame as received: when, the raw text, the parsed value.
struct Frame {
    at: Instant,
    text: String,
    value: Value,
}

impl Frame {
    fn is_presence(&self) -> bool {
        self.value["message"]["event"] == "presence.update"
    }

    fn identifier(&self) -> &str {
        self.value["identifier"].as_str().unwrap_or_default()
    }

    fn data(&self) -> &Value {
        &self.value["message"]["data"]
    }

    /// Whether contact `id` is online in this snapshot.
    fn contact_online(&self, id: i64) -> bool {
        self.data()["contacts"][id.to_string()] == "online"
    }

    /// The bytes after the subscription's prefix (`{"identifier":"..","message":`): the
    /// snapshot the gateway encodes once and counts against the push budget.
    fn body_len(&self) -> usize {
        // The identifier is an escaped JSON string, so the first unescaped `,"message":`
        // ends the prefix.
        let marker = ",\"message\":";
        let at = self.text.find(marker).expect("a message frame");
        self.text.len() - at - marker.len()
    }
}

/// The next frame that is not a ping, or `None` once `deadline` passes.
async fn recv_until(client: &mut Client, deadline: Instant) -> Option<Frame> {
    loop {
        let message = match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Err(_) => return None,
            Ok(message) => message.expect("connection open").expect("frame readable"),
        };
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("server frames are JSON");
                if value["type"] == "ping" {
                    continue;
                }
                return Some(Frame {
                    at: Instant::now(),
                    text: text.to_string(),
                    value,
                });
            }
            Message::Close(frame) => panic!("connection closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// The next frame, which must be a `presence.update` arriving within `within`.
async fn presence(client: &mut Client, within: Duration) -> Frame {
    let frame = recv_until(client, Instant::now() + within)
        .await
        .unwrap_or_else(|| panic!("no presence.update within {within:?}"));
    assert!(
        frame.is_presence(),
        "expected presence.update, got {}",
        frame.text
    );
    frame
}

/// Every frame until `deadline`; all must be `presence.update`.
async fn presences_until(client: &mut Client, deadline: Instant) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = recv_until(client, deadline).await {
        assert!(
            frame.is_presence(),
            "expected presence.update, got {}",
            frame.text
        );
        frames.push(frame);
    }
    frames
}

/// Nothing but pings for `period`.
async fn quiet(client: &mut Client, period: Duration, why: &str) {
    if let Some(frame) = recv_until(client, Instant::now() + period).await {
        panic!("{why}: unexpected frame {}", frame.text);
    }
}

/// Subscribes and expects the confirm as the very next frame for that identifier: no presence
/// message for a subscription may precede its confirm.
async fn subscribed(client: &mut Client, identifier: &str) {
    client.send(subscribe(identifier)).await;
    loop {
        let frame = recv_until(client, Instant::now() + WAIT)
            .await
            .expect("a confirm in time");
        if frame.value == confirm(identifier) {
            return;
        }
        assert_ne!(
            frame.identifier(),
            identifier,
            "a frame for the subscription before its confirm: {}",
            frame.text
        );
    }
}

/// A connection with `identifier` confirmed and its presence answer read.
async fn online(addr: std::net::SocketAddr, identifier: &str) -> Client {
    let mut client = Client::ready(addr).await;
    subscribed(&mut client, identifier).await;
    let answer = presence(&mut client, Duration::from_secs(2)).await;
    assert_eq!(answer.identifier(), identifier);
    client
}

/// Alice online with both of her presence messages read: the answer to her subscribe and the
/// push announcing her own arrival (her coming online changes the account's online set).
/// Returns the push.
async fn alice_settled(addr: std::net::SocketAddr) -> (Client, Frame) {
    let mut client = online(addr, &alice()).await;
    let push = presence(&mut client, Duration::from_secs(3)).await;
    assert_eq!(push.identifier(), alice());
    assert_eq!(push.data()["users"]["1"], "online", "{}", push.text);
    (client, push)
}

/// Adds `n` contacts to account 1, each with a session in inbox 1 (ids from `first`).
/// Returns their ids and subscription identifiers.
async fn add_contacts(db: &TestDb, first: i64, n: i64) -> Vec<(i64, String)> {
    let ids: Vec<i64> = (first..first + n).collect();
    for id in &ids {
        db.exec(&format!(
            "INSERT INTO contacts (id, name, account_id) VALUES ({id}, 'Visitor {id}', 1);
             INSERT INTO contact_inboxes (id, contact_id, inbox_id, source_id, pubsub_token)
               VALUES ({id}, {id}, 1, 'source-{id}', 'contact-token-{id}');"
        ))
        .await;
    }
    ids.into_iter()
        .map(|id| (id, contact(&format!("contact-token-{id}"), Some(1))))
        .collect()
}

// 1. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_subscribe_is_answered_with_the_accounts_presence_after_its_confirm() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;

    // A user subscription: herself, Carol (busy, auto_offline false, not connected) and the
    // (empty) contacts; not Bob, who is not connected.
    let mut alice_client = Client::ready(gw.addr).await;
    subscribed(&mut alice_client, &alice()).await;
    let answer = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert_eq!(
        answer.value,
        json!({"identifier": alice(), "message": {"event": "presence.update", "data": {
            "account_id": 1,
            "users": {"1": "online", "3": "busy"},
            "contacts": {}
        }}})
    );

    // A contact subscription: users, but never a `contacts` key.
    let mut dave_client = Client::ready(gw.addr).await;
    subscribed(&mut dave_client, &dave()).await;
    let answer = presence(&mut dave_client, Duration::from_secs(2)).await;
    assert_eq!(answer.identifier(), dave());
    assert_eq!(answer.value["message"]["event"], "presence.update");
    assert_eq!(
        answer.data(),
        &json!({"account_id": 1, "users": {"1": "online", "3": "busy"}})
    );
    assert!(answer.data().get("contacts").is_none(), "{}", answer.text);

    // Another account's subscribers see their own account only.
    let mut gina_client = Client::ready(gw.addr).await;
    subscribed(&mut gina_client, &gina()).await;
    let answer = presence(&mut gina_client, Duration::from_secs(2)).await;
    assert_eq!(answer.data(), &json!({"account_id": 2, "users": {}}));
    let mut frank_client = Client::ready(gw.addr).await;
    subscribed(&mut frank_client, &frank()).await;
    let answer = presence(&mut frank_client, Duration::from_secs(2)).await;
    assert_eq!(
        answer.data(),
        &json!({"account_id": 2, "users": {"4": "online"}, "contacts": {"3": "online"}})
    );
}

// 2. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_presence_is_answered_every_time_with_data_as_string_or_object() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;

    // A contact subscription gets no pushes, so every presence message is an answer.
    let mut dave_client = online(gw.addr, &dave()).await;
    dave_client.send(perform(&dave(), "update_presence")).await;
    dave_client.send(update_presence_object(&dave())).await;
    dave_client.send(perform(&dave(), "update_presence")).await;
    for i in 0..3 {
        let reply = presence(&mut dave_client, Duration::from_secs(2)).await;
        assert_eq!(reply.identifier(), dave(), "answer {i}");
        assert_eq!(reply.data()["account_id"], 1, "answer {i}");
        assert!(reply.data().get("contacts").is_none(), "answer {i}");
    }
    quiet(
        &mut dave_client,
        Duration::from_millis(500),
        "three asks, three answers",
    )
    .await;

    // A user subscription: its answer and its own arrival's push first, then one answer per ask.
    let (mut alice_client, _) = alice_settled(gw.addr).await;
    alice_client.send(update_presence_object(&alice())).await;
    alice_client
        .send(perform(&alice(), "update_presence"))
        .await;
    alice_client.send(update_presence_object(&alice())).await;
    for i in 0..3 {
        let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
        assert_eq!(reply.identifier(), alice(), "answer {i}");
        assert_eq!(
            reply.data(),
            &json!({"account_id": 1, "users": {"1": "online", "3": "busy"}, "contacts": {"1": "online"}}),
            "answer {i}"
        );
    }
    quiet(
        &mut alice_client,
        Duration::from_millis(500),
        "no change, so nothing but the three answers",
    )
    .await;
}

// 3. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_users_availability_is_reported() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let (mut alice_client, _) = alice_settled(gw.addr).await;

    db.exec("UPDATE account_users SET availability = 2 WHERE account_id = 1 AND user_id = 2")
        .await;
    let mut bob_client = Client::ready(gw.addr).await;
    subscribed(&mut bob_client, &bob()).await;
    let bob_answer = presence(&mut bob_client, Duration::from_secs(2)).await;
    assert_eq!(
        bob_answer.data()["users"]["2"],
        "busy",
        "{}",
        bob_answer.text
    );

    // Pushed to Alice without her asking.
    let push = presence(&mut alice_client, Duration::from_secs(3)).await;
    assert_eq!(
        push.data()["users"],
        json!({"1": "online", "2": "busy", "3": "busy"})
    );
    // And in an answer.
    alice_client
        .send(perform(&alice(), "update_presence"))
        .await;
    let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert_eq!(reply.data()["users"]["2"], "busy");

    // Availability "offline" (1) is reported as such for a connected user.
    db.exec("UPDATE account_users SET availability = 1 WHERE account_id = 1 AND user_id = 2")
        .await;
    alice_client
        .send(perform(&alice(), "update_presence"))
        .await;
    let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert_eq!(reply.data()["users"]["2"], "offline");
}

// 4. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_change_is_pushed_to_the_accounts_user_subscriptions_within_2s() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let (mut alice_client, _) = alice_settled(gw.addr).await;
    // Another account's user: account 1's changes are none of its business.
    let mut frank_client = online(gw.addr, &frank()).await;
    let own = presence(&mut frank_client, Duration::from_secs(3)).await;
    assert_eq!(own.data()["account_id"], 2);

    let changed = Instant::now();
    let _dave_client = online(gw.addr, &dave()).await;
    let push = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert!(
        push.at - changed <= Duration::from_secs(2),
        "pushed after {:?}",
        push.at - changed
    );
    assert_eq!(
        push.value,
        json!({"identifier": alice(), "message": {"event": "presence.update", "data": {
            "account_id": 1,
            "users": {"1": "online", "3": "busy"},
            "contacts": {"1": "online"}
        }}})
    );
    quiet(
        &mut frank_client,
        Duration::from_millis(1500),
        "account 2 saw account 1's change",
    )
    .await;
}

// 5. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_subscriber_goes_offline_ttl_after_its_connection_ends_and_not_before() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.presence_ttl = TTL;
    let gw = start(config).await;
    let (mut alice_client, _) = alice_settled(gw.addr).await;
    let mut dave_client = online(gw.addr, &dave()).await;
    let push = presence(&mut alice_client, Duration::from_secs(3)).await;
    assert!(push.contact_online(1), "{}", push.text);

    // Stay a while, so the disconnect falls anywhere in the heartbeat cycle.
    quiet(&mut alice_client, TTL / 2, "nothing changed").await;
    dave_client.ws.close(None).await.unwrap();
    let closed = Instant::now();
    drop(dave_client);

    let deadline = closed + TTL + Duration::from_millis(1500);
    let offline = loop {
        let frame = recv_until(&mut alice_client, deadline)
            .await
            .expect("Dave goes offline within TTL + 1.5 s of his disconnect");
        assert!(frame.is_presence(), "{}", frame.text);
        if !frame.contact_online(1) {
            break frame;
        }
    };
    let after = offline.at - closed;
    assert!(
        after >= TTL - Duration::from_millis(300),
        "Dave went offline {after:?} after disconnecting, before the TTL ({TTL:?})"
    );
    assert_eq!(offline.data()["contacts"], json!({}));
    assert_eq!(
        offline.data()["users"],
        json!({"1": "online", "3": "busy"}),
        "Alice's live connection keeps her online"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cable_presence WHERE kind = 'c'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

// 6. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_live_connection_keeps_its_subscriber_online_past_the_ttl() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.presence_ttl = TTL;
    let gw = start(config).await;
    let (mut alice_client, _) = alice_settled(gw.addr).await;
    let _dave_client = online(gw.addr, &dave()).await;

    // Two TTLs without any update_presence from either: whatever is pushed keeps Dave online.
    let frames = presences_until(&mut alice_client, Instant::now() + 2 * TTL).await;
    assert!(!frames.is_empty(), "Dave's arrival is pushed");
    for frame in &frames {
        assert!(
            frame.contact_online(1),
            "Dave flapped offline: {}",
            frame.text
        );
    }
    alice_client
        .send(perform(&alice(), "update_presence"))
        .await;
    let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert_eq!(
        reply.data(),
        &json!({"account_id": 1, "users": {"1": "online", "3": "busy"}, "contacts": {"1": "online"}})
    );
}

// 7. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_burst_of_changes_is_coalesced_into_about_one_push_per_second() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let visitors = add_contacts(&db, 101, 9).await;
    let mut clients = Vec::new();
    for _ in 0..visitors.len() + 1 {
        clients.push(Client::ready(gw.addr).await);
    }
    let (mut alice_client, _) = alice_settled(gw.addr).await;

    // Nine contacts and Bob come online within a few hundred milliseconds.
    let burst = Instant::now();
    let mut identifiers: Vec<String> = visitors.iter().map(|(_, id)| id.clone()).collect();
    identifiers.push(bob());
    futures_util::future::join_all(
        clients
            .iter_mut()
            .zip(&identifiers)
            .map(|(client, identifier)| subscribed(client, identifier)),
    )
    .await;
    let burst_took = burst.elapsed();
    assert!(
        burst_took < Duration::from_secs(1),
        "burst took {burst_took:?}"
    );

    let window = presences_until(&mut alice_client, burst + Duration::from_millis(1500)).await;
    let in_first_second = window
        .iter()
        .filter(|f| f.at - burst <= Duration::from_secs(1))
        .count();
    assert!(
        !window.is_empty() && window.len() <= 3 && in_first_second <= 2,
        "{} pushes in 1.5 s ({} in the first second) for a burst of 10 changes",
        window.len(),
        in_first_second
    );
    let everyone = |frame: &Frame| {
        frame.data()["users"]["2"] == "online"
            && visitors.iter().all(|(id, _)| frame.contact_online(*id))
    };
    let last = window.last().unwrap();
    assert!(
        everyone(last),
        "the last push misses someone: {}",
        last.text
    );
    assert_eq!(
        last.data()["contacts"].as_object().unwrap().len(),
        visitors.len()
    );
    quiet(
        &mut alice_client,
        Duration::from_millis(1200),
        "nothing changed since",
    )
    .await;
}

// 8. ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pushes_respect_the_byte_budget_but_answers_do_not_wait() {
    const BUDGET: u64 = 100;
    let slack = Duration::from_millis(150);
    let db = TestDb::new().await;
    let mut config = db.config();
    config.presence_push_budget = BUDGET;
    let gw = start(config).await;
    let budget_wait =
        |bytes: usize| Duration::from_secs_f64((bytes as f64 / BUDGET as f64).max(1.0));

    // Alice's arrival: one push, to her one subscription.
    let (mut alice_client, first) = alice_settled(gw.addr).await;
    let first_bytes = first.body_len();
    // A second subscription of hers (no change, no push): two recipients from now on.
    let second_id = alice() + " ";
    subscribed(&mut alice_client, &second_id).await;
    let answer = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert_eq!(answer.identifier(), second_id);

    // Change 1: Dave. Alice's answer is immediate; the push waits for the first one's budget.
    let _dave_client = online(gw.addr, &dave()).await;
    let asked = Instant::now();
    alice_client
        .send(perform(&alice(), "update_presence"))
        .await;
    let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert!(
        reply.at - asked < Duration::from_millis(500),
        "answer took {:?}",
        reply.at - asked
    );
    assert!(
        reply.contact_online(1),
        "the answer is current: {}",
        reply.text
    );
    let pushed: Vec<Frame> = vec![
        presence(&mut alice_client, Duration::from_secs(5)).await,
        presence(&mut alice_client, Duration::from_secs(1)).await,
    ];
    let mut recipients: Vec<&str> = pushed.iter().map(|f| f.identifier()).collect();
    recipients.sort_unstable();
    let mut expected = vec![alice(), second_id.clone()];
    expected.sort_unstable();
    assert_eq!(recipients, expected, "one push frame per user subscription");
    assert!(pushed.iter().all(|f| f.contact_online(1)));
    let waited = pushed[0].at - first.at;
    assert!(
        waited + slack >= budget_wait(first_bytes),
        "second push {waited:?} after the first ({first_bytes} bytes at {BUDGET} B/s)"
    );

    // Change 2: Erin. That push cost B = snapshot × 2 recipients: the next waits B / budget.
    let second_bytes: usize = pushed.iter().map(Frame::body_len).sum();
    assert_eq!(pushed[0].body_len(), pushed[1].body_len());
    assert!(
        budget_wait(second_bytes) >= Duration::from_millis(1800),
        "the test needs a push worth well over a second of budget ({second_bytes} bytes)"
    );
    let _erin_client = online(gw.addr, &erin()).await;
    let asked = Instant::now();
    alice_client.send(update_presence_object(&second_id)).await;
    let reply = presence(&mut alice_client, Duration::from_secs(2)).await;
    assert!(
        reply.at - asked < Duration::from_millis(500),
        "answer took {:?} (answers must not wait for the budget)",
        reply.at - asked
    );
    assert_eq!(reply.identifier(), second_id);
    assert!(reply.contact_online(2), "{}", reply.text);
    let third = presence(&mut alice_client, Duration::from_secs(6)).await;
    assert!(third.contact_online(2), "{}", third.text);
    let waited = third.at - pushed[1].at;
    let due = budget_wait(second_bytes);
    assert!(
        waited + slack >= due,
        "third push {waited:?} after the second; {second_bytes} bytes at {BUDGET} B/s allow {due:?}"
    );
    assert!(
        waited <= due + Duration::from_millis(1000),
        "third push {waited:?} after the second; due after {due:?}"
    );
}

// 9. ---------------------------------------------------------------------------------------

/// Counts `cable_presence` announcements on a connection of the test's own.
async fn count_announcements(url: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
    listener.listen("cable_presence").await.unwrap();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            sink.lock().push(notification.payload().to_string());
        }
    });
    seen
}

#[tokio::test]
async fn presence_and_events_are_shared_by_gateway_processes() {
    let db = TestDb::new().await;
    let announcements = count_announcements(&db.url).await;
    let env = [
        ("CABLE_PRESENCE_TTL", "1500ms"),
        ("CABLE_DB_POOL_SIZE", "4"),
    ];
    let mut a = GatewayProcess::spawn(&db.url, &env).await;
    let b = GatewayProcess::spawn(&db.url, &env).await;
    a.ready().await;
    b.ready().await;

    // Alice on both processes: one principal, one row, one announcement.
    let (mut alice_b, _) = alice_settled(b.addr).await;
    let mut alice_a = online(a.addr, &alice()).await;
    let announced = |n: usize| {
        let seen = announcements.lock().clone();
        assert_eq!(seen.len(), n, "announcements so far: {seen:?}");
        assert!(seen.iter().all(|p| p == "1"), "{seen:?}");
    };

    // a. An event reaches subscribers on both processes.
    db.publish(1, "conversation.created", json!({"id": 42}), json!({}))
        .await;
    for (name, client) in [("A", &mut alice_a), ("B", &mut alice_b)] {
        let (identifier, message) = client.event().await;
        assert_eq!(identifier, alice(), "process {name}");
        assert_eq!(message["event"], "conversation.created", "process {name}");
        assert_eq!(message["data"]["id"], 42, "process {name}");
    }

    // b. Dave comes online on A; Alice on B is told, exactly once.
    let dave_online_at = Instant::now();
    let _dave_a = online(a.addr, &dave()).await;
    let push = presence(&mut alice_b, Duration::from_secs(3)).await;
    assert!(push.contact_online(1), "{}", push.text);
    assert!(push.at - dave_online_at <= Duration::from_secs(2));
    // d. Exactly once: no second push about the same change, one announcement per change.
    quiet(
        &mut alice_b,
        Duration::from_millis(1500),
        "Dave's arrival was pushed twice",
    )
    .await;
    announced(2);

    // c. Process A dies without a word: Dave goes offline on B within TTL + 2 s.
    a.child.kill().await.unwrap();
    let killed = Instant::now();
    let offline = loop {
        let frame = recv_until(&mut alice_b, killed + TTL + Duration::from_secs(2))
            .await
            .expect("Dave goes offline within TTL + 2 s of his process dying");
        assert!(frame.is_presence(), "{}", frame.text);
        if !frame.contact_online(1) {
            break frame;
        }
    };
    assert_eq!(offline.data()["contacts"], json!({}));
    assert_eq!(
        offline.data()["users"]["1"],
        "online",
        "Alice is still connected to B"
    );
    // d. The departure, too, is announced once and pushed once (B's sweeper races nobody now,
    // but the row could have been taken by either process before A died).
    quiet(
        &mut alice_b,
        Duration::from_millis(1500),
        "Dave's departure was pushed twice",
    )
    .await;
    announced(3);
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_exits_0() {
    let db = TestDb::new().await;
    let mut gw = GatewayProcess::spawn(&db.url, &[("CABLE_DB_POOL_SIZE", "4")]).await;
    gw.ready().await;
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&alice()).await;

    gw.terminate().await;
    let signalled = Instant::now();
    let frames = client.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "disconnect", "reason": "server_restart", "reconnect": true})),
        "{frames:?}"
    );
    let status = tokio::time::timeout_at(signalled + Duration::from_secs(10), gw.child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The heartbeat and the departures go 1,000 rows per statement: over 2,600 subscribers (three
/// statements, the last one short) every row is written, and every row is refreshed.
#[tokio::test]
async fn a_heartbeat_over_many_subscribers_reaches_every_row() {
    use cable_gateway::metrics::Metrics;
    use cable_gateway::presence::Presence;
    use cable_gateway::resume::rings::Rings;
    use cable_gateway::router::Router;

    const N: i64 = 2_600;
    let db = TestDb::new().await;
    let metrics = Arc::new(Metrics::new());
    let router = Router::new(
        metrics.clone(),
        Arc::new(Rings::new(16, Duration::from_secs(60))),
        0,
    );
    bulk_user_subscriptions(&db, &router, &metrics, 1000, N).await;
    let (presence, _answers) = Presence::new(
        db.pool.clone(),
        Duration::from_secs(30),
        8 << 20,
        metrics,
        None,
    );
    let keys = router.presence_keys();
    assert_eq!(keys.len(), N as usize);
    let rows = |filter: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM cable_presence
                  WHERE account_id = 1 AND kind = 'u' AND principal_id >= 1000 {filter}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    presence.mark_seen(&keys).await.unwrap();
    assert_eq!(
        rows("").await,
        N,
        "the heartbeat wrote every subscriber's row"
    );
    for (who, heartbeat) in [("the departures", false), ("the next heartbeat", true)] {
        db.exec("UPDATE cable_presence SET seen_at = now() - interval '1 hour'")
            .await;
        if heartbeat {
            presence.mark_seen(&keys).await.unwrap();
        } else {
            presence.touch(&keys).await.unwrap();
        }
        assert_eq!(
            rows("AND seen_at > now() - interval '1 minute'").await,
            N,
            "{who} refreshed every row"
        );
    }
}
