//! The RoomChannel action `typing` (docs/reference.md §10), as rules: who receives a typing event and
//! who never does, whatever the typist asks for.

mod common;

use common::events::{published, tag, ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA};
use common::{contact, metric, start, subscribe, user, Client, TestDb};
use serde_json::{json, Value};

fn typing(identifier: &str, data: Value) -> Value {
    let mut data = data;
    data["action"] = json!("typing");
    json!({"command": "message", "identifier": identifier, "data": data.to_string()})
}

/// A client subscribed with `identifier`.
async fn subscribed(addr: std::net::SocketAddr, identifier: &str) -> Client {
    let mut client = Client::ready(addr).await;
    client.subscribe_ok(identifier).await;
    client
}

/// Publishes a tagged event to every subscription of account 1 (users, and the contact
/// sessions listed) and expects it to be each client's next message: nothing else (no typing
/// event) came before it.
async fn nothing_before_sentinel(db: &TestDb, account_id: i64, clients: &mut [&mut Client]) {
    db.publish(
        account_id,
        "message.created",
        json!({"tag": "sentinel"}),
        json!({"contact_inbox_ids": [1, 2, 3]}),
    )
    .await;
    for client in clients.iter_mut() {
        let (_, message) = published(client).await;
        assert_eq!(tag(&message), "sentinel", "got {message} instead");
    }
}

#[tokio::test]
async fn an_agent_typing_reaches_admins_inbox_members_and_the_contact_never_the_typist() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let bob_id = user(BOB, 1, 2);
    let mut bob = subscribed(gw.addr, &bob_id).await;
    // Bob's second subscription (another tab): also never echoed.
    let mut bob_tab = subscribed(gw.addr, &bob_id).await;
    let mut alice = subscribed(gw.addr, &user(ALICE, 1, 1)).await;
    let mut carol = subscribed(gw.addr, &user(CAROL, 1, 3)).await;
    let mut dave = subscribed(gw.addr, &contact(DAVE, Some(1))).await;
    let mut erin = subscribed(gw.addr, &contact(ERIN, None)).await;
    let mut frank = subscribed(gw.addr, &user(FRANK, 2, 4)).await;

    let started = std::time::Instant::now();
    bob.send(typing(
        &bob_id,
        json!({"conversation_id": 1, "status": "on"}),
    ))
    .await;
    let (_, seen) = published(&mut dave).await;
    eprintln!(
        "typing: the contact's subscription saw it {} ms after the agent sent it",
        started.elapsed().as_millis()
    );
    assert_eq!(seen["event"], "conversation.typing_on");
    assert_eq!(
        seen["data"],
        json!({
            "conversation": {"id": 1, "inbox_id": 1, "account_id": 1},
            "user": {"id": 2, "type": "user"},
            "is_private": false,
            "account_id": 1
        })
    );
    let (_, seen) = published(&mut alice).await;
    assert_eq!(seen["event"], "conversation.typing_on");
    bob.send(typing(
        &bob_id,
        json!({"conversation_id": "1", "status": "off"}),
    ))
    .await;
    for client in [&mut alice, &mut dave] {
        assert_eq!(
            published(client).await.1["event"],
            "conversation.typing_off"
        );
    }
    // Carol is in another inbox, Erin is another conversation's contact, Frank another
    // account's administrator, and Bob typed.
    nothing_before_sentinel(&db, 1, &mut [&mut bob, &mut bob_tab, &mut carol, &mut erin]).await;
    db.publish(2, "message.created", json!({"tag": "sentinel"}), json!({}))
        .await;
    assert_eq!(tag(&published(&mut frank).await.1), "sentinel");
    assert_eq!(metric(&gw, "cable_commands_total", "typing"), 2.0);
}

#[tokio::test]
async fn private_typing_never_reaches_the_contact() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let bob_id = user(BOB, 1, 2);
    let mut bob = subscribed(gw.addr, &bob_id).await;
    let mut alice = subscribed(gw.addr, &user(ALICE, 1, 1)).await;
    let mut dave = subscribed(gw.addr, &contact(DAVE, None)).await;
    bob.send(typing(
        &bob_id,
        json!({"conversation_id": 1, "status": "on", "is_private": true}),
    ))
    .await;
    let (_, seen) = published(&mut alice).await;
    assert_eq!(seen["event"], "conversation.typing_on");
    assert_eq!(seen["data"]["is_private"], true);
    nothing_before_sentinel(&db, 1, &mut [&mut dave]).await;
}

#[tokio::test]
async fn a_contact_typing_reaches_the_agents_with_its_contact_id() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let dave_id = contact(DAVE, None);
    let mut dave = subscribed(gw.addr, &dave_id).await;
    let mut bob = subscribed(gw.addr, &user(BOB, 1, 2)).await;
    let mut carol = subscribed(gw.addr, &user(CAROL, 1, 3)).await;
    dave.send(typing(
        &dave_id,
        json!({"conversation_id": 1, "status": "on"}),
    ))
    .await;
    let (_, seen) = published(&mut bob).await;
    assert_eq!(seen["event"], "conversation.typing_on");
    assert_eq!(seen["data"]["user"], json!({"id": 1, "type": "contact"}));
    nothing_before_sentinel(&db, 1, &mut [&mut dave, &mut carol]).await;
}

#[tokio::test]
async fn typing_in_a_conversation_it_cannot_see_is_ignored_and_counted() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let bob_id = user(BOB, 1, 2);
    let dave_id = contact(DAVE, None);
    let gina_id = contact(GINA, None);
    let mut bob = subscribed(gw.addr, &bob_id).await;
    let mut dave = subscribed(gw.addr, &dave_id).await;
    let mut gina = subscribed(gw.addr, &gina_id).await;
    let mut alice = subscribed(gw.addr, &user(ALICE, 1, 1)).await;
    let mut erin = subscribed(gw.addr, &contact(ERIN, None)).await;
    let mut frank = subscribed(gw.addr, &user(FRANK, 2, 4)).await;
    // Bob is not in inbox 2; Dave is not conversation 2's contact; account 2 has no
    // conversation 2 (display ids are per account: Gina cannot name account 1's).
    bob.send(typing(
        &bob_id,
        json!({"conversation_id": 2, "status": "on"}),
    ))
    .await;
    dave.send(typing(
        &dave_id,
        json!({"conversation_id": 2, "status": "on"}),
    ))
    .await;
    gina.send(typing(
        &gina_id,
        json!({"conversation_id": 2, "status": "on"}),
    ))
    .await;
    // Malformed: ignored, the connection stays.
    for bad in [
        json!({"conversation_id": 1}),
        json!({"conversation_id": "one", "status": "on"}),
        json!({"conversation_id": 1, "status": "on", "is_private": "yes"}),
    ] {
        bob.send(typing(&bob_id, bad)).await;
    }
    nothing_before_sentinel(&db, 1, &mut [&mut alice, &mut erin, &mut bob, &mut dave]).await;
    db.publish(2, "message.created", json!({"tag": "sentinel"}), json!({}))
        .await;
    assert_eq!(tag(&published(&mut frank).await.1), "sentinel");
    // Each client's commands are handled in order, but the clients race each other: wait
    // for the count (nothing was delivered either way, as checked above).
    let counted =
        |result: &str| metric(&gw, "cable_commands_total", &format!("result=\"{result}\""));
    tokio::time::timeout(common::WAIT, async {
        while counted("not_visible") < 3.0 || counted("bad_params") < 3.0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every ignored typing counted");
    assert_eq!(counted("not_visible"), 3.0);
    assert_eq!(counted("bad_params"), 3.0);
}

#[tokio::test]
async fn typing_reaches_every_process_of_the_database() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let bob_id = user(BOB, 1, 2);
    let mut bob = subscribed(a.addr, &bob_id).await;
    let mut alice = subscribed(b.addr, &user(ALICE, 1, 1)).await;
    let mut dave = subscribed(b.addr, &contact(DAVE, None)).await;
    bob.send(typing(
        &bob_id,
        json!({"conversation_id": 1, "status": "on"}),
    ))
    .await;
    for client in [&mut alice, &mut dave] {
        assert_eq!(published(client).await.1["event"], "conversation.typing_on");
    }
}

#[tokio::test]
async fn typing_faster_than_the_command_rate_is_abuse() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_command_rate = 5;
    let gw = start(config).await;
    let bob_id = user(BOB, 1, 2);
    let mut bob = Client::ready(gw.addr).await;
    bob.send(subscribe(&bob_id)).await;
    for _ in 0..40 {
        bob.send(typing(
            &bob_id,
            json!({"conversation_id": 1, "status": "on"}),
        ))
        .await;
    }
    let frames = bob.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "disconnect", "reason": "invalid_request", "reconnect": false})),
        "{frames:?}"
    );
}
