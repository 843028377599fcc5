//! Event delivery (CONTRACT §4): the routing rules, account isolation, `data` handling, and
//! the outbox guarantees (exactly once, in commit order, out-of-order commits, a dropped
//! LISTEN connection, bursts, slow clients), over real sockets against real PostgreSQL.
//!
//! "X must not receive E" is never a timeout: E is published, then a marker X must receive,
//! and X's first event must be the marker (a subscription gets its events in commit order).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cable_gateway::server::Running;
use common::*;
use serde_json::{json, Value};

const ALICE: &str = "demo-user-alice";
const BOB: &str = "demo-user-bob";
const CAROL: &str = "demo-user-carol";
const FRANK: &str = "demo-user-frank";
const DAVE: &str = "demo-contact-dave";
const ERIN: &str = "demo-contact-erin";
const GINA: &str = "demo-contact-gina";

/// The next message that came through the outbox, skipping pings and the gateway's own
/// presence messages (every event a test publishes carries a `tag` in its data).
async fn published(client: &mut Client) -> (String, Value) {
    tokio::time::timeout(WAIT, published_unbounded(client))
        .await
        .expect("a published event in time")
}

async fn published_unbounded(client: &mut Client) -> (String, Value) {
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

fn tag(message: &Value) -> &str {
    message["data"]["tag"]
        .as_str()
        .unwrap_or_else(|| panic!("no tag in {message}"))
}

/// The next published message's tag.
async fn next_tag(client: &mut Client) -> String {
    let (_, message) = published(client).await;
    tag(&message).to_string()
}

/// One subscriber on its own connection.
struct Party {
    name: &'static str,
    account_id: i64,
    token: &'static str,
    identifier: String,
    client: Client,
}

async fn join(
    gw: &Running,
    name: &'static str,
    account_id: i64,
    token: &'static str,
    identifier: String,
) -> Party {
    let mut client = Client::ready(gw.addr).await;
    client.subscribe_ok(&identifier).await;
    Party {
        name,
        account_id,
        token,
        identifier,
        client,
    }
}

/// The demo subscribers: every user and contact of both accounts.
async fn everyone(gw: &Running) -> Vec<Party> {
    vec![
        join(gw, "alice", 1, ALICE, user(ALICE, 1, 1)).await,
        join(gw, "bob", 1, BOB, user(BOB, 1, 2)).await,
        join(gw, "carol", 1, CAROL, user(CAROL, 1, 3)).await,
        join(gw, "dave", 1, DAVE, contact(DAVE, Some(1))).await,
        join(gw, "erin", 1, ERIN, contact(ERIN, None)).await,
        join(gw, "frank", 2, FRANK, user(FRANK, 2, 4)).await,
        join(gw, "gina", 2, GINA, contact(GINA, Some(2))).await,
    ]
}

/// An event and exactly who must receive it.
struct Case {
    tag: String,
    account_id: i64,
    event: &'static str,
    extra: Value,
    to: Vec<&'static str>,
}

fn case(
    tag: impl Into<String>,
    account_id: i64,
    event: &'static str,
    extra: Value,
    to: &[&'static str],
) -> Case {
    Case {
        tag: tag.into(),
        account_id,
        event,
        extra,
        to: to.to_vec(),
    }
}

/// Publishes every case in order, then a barrier addressed to each party's own stream. Each
/// party must have received exactly the cases naming it, in order, before its barrier: that
/// checks the positive and the negative side of every case at once.
async fn check_routing(db: &TestDb, parties: &mut [Party], cases: &[Case]) {
    let mut by_tag = HashMap::new();
    for c in cases {
        assert!(by_tag.insert(c.tag.as_str(), c).is_none(), "tag {}", c.tag);
        for name in &c.to {
            assert!(
                parties.iter().any(|p| p.name == *name),
                "{}: no party {name}",
                c.tag
            );
        }
        db.publish(
            c.account_id,
            c.event,
            json!({"tag": c.tag}),
            c.extra.clone(),
        )
        .await;
    }
    for p in parties.iter() {
        db.publish(
            p.account_id,
            "message.created",
            json!({"tag": format!("barrier-{}", p.name)}),
            json!({"stream": p.token}),
        )
        .await;
    }
    let mut failures = Vec::new();
    for p in parties.iter_mut() {
        let barrier = format!("barrier-{}", p.name);
        let mut got = Vec::new();
        loop {
            let (identifier, message) = published(&mut p.client).await;
            assert_eq!(
                identifier, p.identifier,
                "{}: frame for another identifier",
                p.name
            );
            let tag = tag(&message).to_string();
            if tag == barrier {
                break;
            }
            let c = by_tag
                .get(tag.as_str())
                .unwrap_or_else(|| panic!("{}: unexpected message {message}", p.name));
            assert_eq!(message["event"], c.event, "{}: {tag}", p.name);
            assert_eq!(
                message["data"]["account_id"], c.account_id,
                "{}: {tag}",
                p.name
            );
            got.push(tag);
        }
        let expected: Vec<&str> = cases
            .iter()
            .filter(|c| c.to.contains(&p.name))
            .map(|c| c.tag.as_str())
            .collect();
        if got != expected {
            let missing: Vec<_> = expected
                .iter()
                .filter(|t| !got.contains(&t.to_string()))
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|t| !expected.contains(&t.as_str()))
                .collect();
            failures.push(format!(
                "{}: missing {missing:?}, unexpected {extra:?} (order: got {got:?})",
                p.name
            ));
        }
    }
    assert!(failures.is_empty(), "routing:\n{}", failures.join("\n"));
}

const USERS_1: &[&str] = &["alice", "bob", "carol"];

#[tokio::test]
async fn rule_1_stream_reaches_exactly_the_subscriptions_streaming_that_name() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let m = "message.created";
    let cases = vec![
        // A user's token: that user's subscriptions only.
        case("bob token", 1, m, json!({"stream": BOB}), &["bob"]),
        case("alice token", 1, m, json!({"stream": ALICE}), &["alice"]),
        // A contact's token: that contact, subject to rule 5.
        case("dave token", 1, m, json!({"stream": DAVE}), &["dave"]),
        case("erin token", 1, m, json!({"stream": ERIN}), &["erin"]),
        case(
            "dave token, private",
            1,
            m,
            json!({"stream": DAVE, "private": true}),
            &[],
        ),
        case(
            "dave token, not a contact event",
            1,
            "contact.updated",
            json!({"stream": DAVE}),
            &[],
        ),
        // account_<id>: every user subscription of the account, no contact.
        case("account_1", 1, m, json!({"stream": "account_1"}), USERS_1),
        case(
            "account_2",
            2,
            m,
            json!({"stream": "account_2"}),
            &["frank"],
        ),
        // The stream wins over every other scope.
        case(
            "bob token over user and inbox",
            1,
            m,
            json!({"stream": BOB, "user_id": 3, "inbox_id": 2, "contact_inbox_ids": [1, 2]}),
            &["bob"],
        ),
        case(
            "erin token over inbox 1",
            1,
            m,
            json!({"stream": ERIN, "inbox_id": 1, "contact_inbox_ids": [1]}),
            &["erin"],
        ),
        // Another account's event never leaks, whatever it streams to.
        case(
            "account_1 in account 2",
            2,
            m,
            json!({"stream": "account_1"}),
            &[],
        ),
        case(
            "account_2 in account 1",
            1,
            m,
            json!({"stream": "account_2"}),
            &[],
        ),
        case("bob token in account 2", 2, m, json!({"stream": BOB}), &[]),
        case(
            "dave token in account 2",
            2,
            m,
            json!({"stream": DAVE}),
            &[],
        ),
        case(
            "gina token in account 1",
            1,
            m,
            json!({"stream": GINA}),
            &[],
        ),
        case(
            "frank token in account 1",
            1,
            m,
            json!({"stream": FRANK}),
            &[],
        ),
        case("unknown stream", 1, m, json!({"stream": "nobody"}), &[]),
    ];
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn rule_2_user_id_reaches_only_that_user() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let n = "notification.created";
    let cases = vec![
        case("to bob", 1, n, json!({"user_id": 2}), &["bob"]),
        case("to carol", 1, n, json!({"user_id": 3}), &["carol"]),
        case("to frank", 2, n, json!({"user_id": 4}), &["frank"]),
        // Other scopes are ignored once user_id is set (contacts included).
        case(
            "to bob, with inbox and contacts",
            1,
            "message.created",
            json!({"user_id": 2, "inbox_id": 2, "contact_inbox_ids": [1, 2]}),
            &["bob"],
        ),
        // A user of another account.
        case("to alice in account 2", 2, n, json!({"user_id": 1}), &[]),
        case("to frank in account 1", 1, n, json!({"user_id": 4}), &[]),
        case("to nobody", 1, n, json!({"user_id": 999}), &[]),
    ];
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn rule_3_inbox_reaches_administrators_members_and_listed_contacts() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let m = "message.created";
    let cases = vec![
        case("inbox 1", 1, m, json!({"inbox_id": 1}), &["alice", "bob"]),
        case("inbox 2", 1, m, json!({"inbox_id": 2}), &["alice", "carol"]),
        case(
            "inbox 1 + dave",
            1,
            m,
            json!({"inbox_id": 1, "contact_inbox_ids": [1]}),
            &["alice", "bob", "dave"],
        ),
        case(
            "inbox 2 + erin",
            1,
            m,
            json!({"inbox_id": 2, "contact_inbox_ids": [2]}),
            &["alice", "carol", "erin"],
        ),
        case(
            "inbox 1 + both contacts",
            1,
            m,
            json!({"inbox_id": 1, "contact_inbox_ids": [2, 1, 2]}),
            &["alice", "bob", "dave", "erin"],
        ),
        case(
            "inbox 1 + empty list",
            1,
            m,
            json!({"inbox_id": 1, "contact_inbox_ids": []}),
            &["alice", "bob"],
        ),
        case(
            "inbox nobody is in",
            1,
            m,
            json!({"inbox_id": 77}),
            &["alice"],
        ),
        // Another account's contact session is never reached from this account.
        case(
            "inbox 1 + gina",
            1,
            m,
            json!({"inbox_id": 1, "contact_inbox_ids": [3]}),
            &["alice", "bob"],
        ),
        case(
            "inbox 3 + gina",
            2,
            m,
            json!({"inbox_id": 3, "contact_inbox_ids": [3]}),
            &["frank", "gina"],
        ),
        case(
            "account 2, inbox 1 + dave",
            2,
            m,
            json!({"inbox_id": 1, "contact_inbox_ids": [1]}),
            &["frank"],
        ),
    ];
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn rule_4_no_scope_reaches_every_user_and_listed_contacts() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let c = "conversation.created";
    let cases = vec![
        case("account 1", 1, c, json!({}), USERS_1),
        case(
            "account 1 + erin",
            1,
            c,
            json!({"contact_inbox_ids": [2]}),
            &["alice", "bob", "carol", "erin"],
        ),
        case(
            "account 1 + dave",
            1,
            c,
            json!({"contact_inbox_ids": [1]}),
            &["alice", "bob", "carol", "dave"],
        ),
        case(
            "account 1 + gina",
            1,
            c,
            json!({"contact_inbox_ids": [3]}),
            USERS_1,
        ),
        case("account 2", 2, c, json!({}), &["frank"]),
        case(
            "account 2 + gina",
            2,
            c,
            json!({"contact_inbox_ids": [3]}),
            &["frank", "gina"],
        ),
        case(
            "account 2 + dave",
            2,
            c,
            json!({"contact_inbox_ids": [1, 2]}),
            &["frank"],
        ),
        case("account 3", 3, c, json!({"contact_inbox_ids": [1]}), &[]),
    ];
    check_routing(&db, &mut parties, &cases).await;
}

const CONTACT_EVENTS: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];

const AGENT_ONLY_EVENTS: [&str; 6] = [
    "contact.created",
    "notification.created",
    "assignee.changed",
    "conversation.updated",
    "conversation.read",
    "message.deleted",
];

#[tokio::test]
async fn rule_5_contacts_get_only_public_events_of_the_allowed_kinds() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let mut cases = Vec::new();
    for event in CONTACT_EVENTS {
        cases.push(case(
            format!("{event} inbox 1"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1]}),
            &["alice", "bob", "dave"],
        ));
        cases.push(case(
            format!("{event} everyone"),
            1,
            event,
            json!({"contact_inbox_ids": [2]}),
            &["alice", "bob", "carol", "erin"],
        ));
        cases.push(case(
            format!("{event} dave stream"),
            1,
            event,
            json!({"stream": DAVE}),
            &["dave"],
        ));
        cases.push(case(
            format!("{event} private"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1], "private": true}),
            &["alice", "bob"],
        ));
    }
    for event in AGENT_ONLY_EVENTS {
        cases.push(case(
            format!("{event} inbox 1"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1]}),
            &["alice", "bob"],
        ));
        cases.push(case(
            format!("{event} everyone"),
            1,
            event,
            json!({"contact_inbox_ids": [1, 2]}),
            USERS_1,
        ));
        cases.push(case(
            format!("{event} dave stream"),
            1,
            event,
            json!({"stream": DAVE}),
            &[],
        ));
        cases.push(case(
            format!("{event} gina"),
            2,
            event,
            json!({"contact_inbox_ids": [3]}),
            &["frank"],
        ));
    }
    // The classic: a private note in a conversation the contact takes part in.
    cases.push(case(
        "private note",
        1,
        "message.created",
        json!({"inbox_id": 2, "contact_inbox_ids": [2], "private": true, "actor_user_id": 3}),
        &["alice", "carol"],
    ));
    cases.push(case(
        "private, account-wide",
        1,
        "message.created",
        json!({"contact_inbox_ids": [1, 2], "private": true}),
        USERS_1,
    ));
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn rule_6_typing_is_not_echoed_to_its_actor() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut parties = everyone(&gw).await;
    let mut cases = Vec::new();
    for event in ["conversation.typing_on", "conversation.typing_off"] {
        cases.push(case(
            format!("{event} by bob"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_user_id": 2}),
            &["alice", "dave"],
        ));
        cases.push(case(
            format!("{event} by dave"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_contact_inbox_id": 1}),
            &["alice", "bob"],
        ));
        cases.push(case(
            format!("{event} by erin, dave listed"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_contact_inbox_id": 2}),
            &["alice", "bob", "dave"],
        ));
        cases.push(case(
            format!("{event} private by alice"),
            1,
            event,
            json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_user_id": 1, "private": true}),
            &["bob"],
        ));
        // Whatever rule selected the recipients.
        cases.push(case(
            format!("{event} by bob, account stream"),
            1,
            event,
            json!({"stream": "account_1", "actor_user_id": 2}),
            &["alice", "carol"],
        ));
        cases.push(case(
            format!("{event} by bob, his own stream"),
            1,
            event,
            json!({"stream": BOB, "actor_user_id": 2}),
            &[],
        ));
        cases.push(case(
            format!("{event} by dave, his own stream"),
            1,
            event,
            json!({"stream": DAVE, "actor_contact_inbox_id": 1}),
            &[],
        ));
        cases.push(case(
            format!("{event} by carol, everyone"),
            1,
            event,
            json!({"contact_inbox_ids": [2], "actor_user_id": 3}),
            &["alice", "bob", "erin"],
        ));
        cases.push(case(
            format!("{event} by bob, to bob"),
            1,
            event,
            json!({"user_id": 2, "actor_user_id": 2}),
            &[],
        ));
    }
    // Only typing is kept from its actor: Bob's own message comes back to him.
    cases.push(case(
        "message by bob",
        1,
        "message.created",
        json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_user_id": 2}),
        &["alice", "bob", "dave"],
    ));
    cases.push(case(
        "message by dave",
        1,
        "message.created",
        json!({"inbox_id": 1, "contact_inbox_ids": [1], "actor_contact_inbox_id": 1}),
        &["alice", "bob", "dave"],
    ));
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn a_user_of_two_accounts_receives_only_the_subscribed_accounts_events() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO account_users (account_id, user_id, role) VALUES (2, 2, 0)")
        .await;
    let gw = start(db.config()).await;
    let mut parties = vec![
        join(&gw, "alice", 1, ALICE, user(ALICE, 1, 1)).await,
        join(&gw, "bob@1", 1, BOB, user(BOB, 1, 2)).await,
        join(&gw, "bob@2", 2, BOB, user(BOB, 2, 2)).await,
        join(&gw, "frank", 2, FRANK, user(FRANK, 2, 4)).await,
    ];
    let m = "message.created";
    let cases = vec![
        case("account 2", 2, m, json!({}), &["bob@2", "frank"]),
        case("account 2 to bob", 2, m, json!({"user_id": 2}), &["bob@2"]),
        case(
            "account 2 bob token",
            2,
            m,
            json!({"stream": BOB}),
            &["bob@2"],
        ),
        case(
            "account_2 stream",
            2,
            m,
            json!({"stream": "account_2"}),
            &["bob@2", "frank"],
        ),
        case(
            "account 2 inbox 3",
            2,
            m,
            json!({"inbox_id": 3}),
            &["frank"],
        ),
        case("account 1", 1, m, json!({}), &["alice", "bob@1"]),
        case("account 1 to bob", 1, m, json!({"user_id": 2}), &["bob@1"]),
        case(
            "account 1 bob token",
            1,
            m,
            json!({"stream": BOB}),
            &["bob@1"],
        ),
        case(
            "account 1 inbox 1",
            1,
            m,
            json!({"inbox_id": 1}),
            &["alice", "bob@1"],
        ),
        case(
            "account_1 stream",
            1,
            m,
            json!({"stream": "account_1"}),
            &["alice", "bob@1"],
        ),
    ];
    check_routing(&db, &mut parties, &cases).await;
}

#[tokio::test]
async fn data_gets_account_id_when_absent_and_is_otherwise_delivered_intact() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    db.publish(
        1,
        "message.created",
        json!({"tag": "absent", "n": [1, {"x": null}]}),
        json!({}),
    )
    .await;
    let (_, message) = published(&mut alice).await;
    assert_eq!(
        message,
        json!({"event": "message.created", "data": {"tag": "absent", "n": [1, {"x": null}], "account_id": 1}})
    );

    // Present: kept as the backend wrote it, even when it differs.
    db.publish(
        1,
        "message.created",
        json!({"tag": "present", "account_id": 42}),
        json!({}),
    )
    .await;
    let (_, message) = published(&mut alice).await;
    assert_eq!(message["data"], json!({"tag": "present", "account_id": 42}));

    // 1 MiB of data, escapes and multi-byte characters included: far past NOTIFY's 8000 bytes.
    let unit = "abc\"def\\ghi\n\u{e9}\u{1F600}\t/<>&xyz0123456789";
    let (mut blob, mut escaped) = (String::new(), 0);
    while escaped < 1024 * 1024 - 512 {
        let piece = format!("{unit}{}", blob.len());
        escaped += serde_json::to_string(&piece).unwrap().len() - 2;
        blob.push_str(&piece);
    }
    let data = json!({"tag": "big", "blob": blob});
    let size = data.to_string().len();
    assert!(
        (1024 * 1024 - 512..=1024 * 1024).contains(&size),
        "data is {size} bytes"
    );
    db.publish(1, "message.created", data.clone(), json!({}))
        .await;
    let (_, message) = published(&mut alice).await;
    assert_eq!(
        message["data"]["blob"].as_str().map(str::len),
        Some(blob.len())
    );
    assert_eq!(message["data"]["blob"], data["blob"]);
    assert_eq!(message["data"]["account_id"], 1);
}

#[tokio::test]
async fn malformed_rows_are_skipped_counted_and_the_reader_goes_on() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    db.publish(1, "message.created", json!([1, 2, 3]), json!({}))
        .await;
    db.publish(1, "message.created", json!("a string"), json!({}))
        .await;
    db.publish(1, "message.created", json!(17), json!({})).await;
    db.publish(1, "", json!({"tag": "nameless"}), json!({}))
        .await;
    db.publish(1, "message.created", json!({"tag": "after"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "after");
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "data_not_object"),
        3.0
    );
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "empty_event"),
        1.0
    );

    // Malformed rows inside one transaction with good ones: only they are dropped.
    let mut tx = db.pool.begin().await.unwrap();
    publish(
        &mut *tx,
        1,
        "message.created",
        json!({"tag": "one"}),
        json!({}),
    )
    .await;
    publish(&mut *tx, 1, "message.created", json!(["bad"]), json!({})).await;
    publish(
        &mut *tx,
        1,
        "message.created",
        json!({"tag": "two"}),
        json!({}),
    )
    .await;
    tx.commit().await.unwrap();
    assert_eq!(next_tag(&mut alice).await, "one");
    assert_eq!(next_tag(&mut alice).await, "two");
    assert_eq!(
        metric(&gw, "cable_events_skipped_total", "data_not_object"),
        4.0
    );
    // And later reads still work.
    db.publish(1, "message.created", json!({"tag": "later"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "later");
}

#[tokio::test]
async fn a_transaction_committing_after_a_higher_id_is_delivered_once() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;
    let m = "message.created";

    // A takes the lower id, B the higher; B commits first and is read while A is open.
    let mut a = db.pool.begin().await.unwrap();
    let id_a = publish(&mut *a, 1, m, json!({"tag": "A"}), json!({})).await;
    let mut b = db.pool.begin().await.unwrap();
    let id_b = publish(&mut *b, 1, m, json!({"tag": "B"}), json!({})).await;
    assert!(id_a < id_b);
    b.commit().await.unwrap();
    assert_eq!(next_tag(&mut alice).await, "B");
    // More reads pass while A stays open.
    for i in 0..3 {
        let tag = format!("C{i}");
        db.publish(1, m, json!({"tag": tag}), json!({})).await;
        assert_eq!(next_tag(&mut alice).await, tag);
    }
    a.commit().await.unwrap();
    assert_eq!(
        next_tag(&mut alice).await,
        "A",
        "the lower id is not skipped"
    );
    db.publish(1, m, json!({"tag": "marker 1"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 1", "and not repeated");

    // Committed back to back, out of id order: both, once each.
    let mut a = db.pool.begin().await.unwrap();
    let id_a = publish(&mut *a, 1, m, json!({"tag": "A2"}), json!({})).await;
    let mut b = db.pool.begin().await.unwrap();
    let id_b = publish(&mut *b, 1, m, json!({"tag": "B2"}), json!({})).await;
    assert!(id_a < id_b);
    b.commit().await.unwrap();
    a.commit().await.unwrap();
    let mut both = vec![next_tag(&mut alice).await, next_tag(&mut alice).await];
    both.sort();
    assert_eq!(both, ["A2", "B2"]);
    db.publish(1, m, json!({"tag": "marker 2"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 2", "no duplicate");

    // A rolled-back transaction publishes nothing, and holds nothing up.
    let mut r = db.pool.begin().await.unwrap();
    publish(&mut *r, 1, m, json!({"tag": "rolled back"}), json!({})).await;
    db.publish(1, m, json!({"tag": "committed"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "committed");
    r.rollback().await.unwrap();
    db.publish(1, m, json!({"tag": "marker 3"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 3");
}

/// Terminates the gateway's LISTEN connection; returns how many backends were ended.
async fn kill_listener(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()) t",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .expect("terminate the listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_listen_connection_drops_arrive_once_in_order() {
    const KILLS: usize = 3;
    const MIN_EVENTS: u64 = 300;
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // Publishes one event per transaction until told to stop (and at least MIN_EVENTS).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stopped.borrow() || seq < MIN_EVENTS {
                let data = json!({"tag": "seq", "seq": seq});
                publish(&pool, 1, "message.created", data, json!({})).await;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seq
        })
    };

    let mut live = gw.gateway.listener_state();
    let mut outages = Vec::new();
    for kill in 0..KILLS {
        tokio::time::timeout(WAIT, live.wait_for(|live| *live))
            .await
            .expect("listener live again")
            .unwrap();
        assert_eq!(
            kill_listener(&db).await,
            1,
            "kill {kill}: one LISTEN backend"
        );
        let killed = Instant::now();
        tokio::time::timeout(WAIT, live.wait_for(|live| !*live))
            .await
            .expect("the gateway notices the dropped listener")
            .unwrap();
        tokio::time::timeout(WAIT, live.wait_for(|live| *live))
            .await
            .expect("listener reconnects")
            .unwrap();
        outages.push(killed.elapsed());
    }
    stop.send_replace(true);
    let total = publisher.await.unwrap();

    for expected in 0..total {
        let (_, message) = published(&mut alice).await;
        assert_eq!(message["data"]["seq"], expected, "in order, none lost");
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker", "none twice");

    assert!(metric(&gw, "cable_listener_reconnects_total", "") >= KILLS as f64);
    assert!(gw.gateway.listener_live());
    assert_eq!(http_get(gw.addr, "/ready").await.0, 200);
    // Regression: the backoff must start over once a connection was live again, or each drop
    // of a healthy listener waits longer (1 s, 2 s, 4 s, … 30 s of 503 from /ready).
    for (kill, outage) in outages.iter().enumerate() {
        assert!(
            *outage < Duration::from_millis(2500),
            "kill {kill}: listener down for {outage:?} (all: {outages:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_1000_events_arrive_complete_and_in_order() {
    let db = TestDb::new().await;
    let gw = start(db.config()).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // One transaction: exactly one page of the reader.
    db.exec(
        "INSERT INTO cable_events (account_id, event, data)
         SELECT 1, 'message.created', jsonb_build_object('tag', 'one', 'seq', g)
           FROM generate_series(0, 999) g",
    )
    .await;
    for expected in 0..1000 {
        let (_, message) = published(&mut alice).await;
        assert_eq!(
            message["data"],
            json!({"tag": "one", "seq": expected, "account_id": 1})
        );
    }

    // A thousand transactions, back to back.
    let mut conn = db.pool.acquire().await.unwrap();
    for seq in 0..1000 {
        publish(
            &mut *conn,
            1,
            "message.created",
            json!({"tag": "many", "seq": seq}),
            json!({}),
        )
        .await;
    }
    for expected in 0..1000 {
        let (_, message) = published(&mut alice).await;
        assert_eq!(message["data"]["tag"], "many");
        assert_eq!(message["data"]["seq"], expected);
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_spanning_several_reader_pages_arrive_once_in_order_amid_other_commits() {
    const BACKLOGS: u64 = 3;
    const ROWS: u64 = 2500;
    let db = TestDb::new().await;
    let mut config = db.config();
    // The reader may queue a whole page (1000 rows) for one subscription at once.
    config.send_queue = 8192;
    let gw = start(config).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user(ALICE, 1, 1)).await;

    // Small transactions keep committing while the reader pages through each backlog: rows
    // that commit between two pages of one read must be read exactly once all the same.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !*stopped.borrow() {
                let data = json!({"tag": "live", "seq": seq});
                publish(&pool, 1, "message.created", data, json!({})).await;
                seq += 1;
            }
            seq
        })
    };
    for backlog in 0..BACKLOGS {
        db.exec(&format!(
            "INSERT INTO cable_events (account_id, event, data)
             SELECT 1, 'message.created', jsonb_build_object('tag', 'backlog {backlog}', 'seq', g)
               FROM generate_series(0, {}) g",
            ROWS - 1
        ))
        .await;
    }
    // Each tag's events in order, none missing, none twice.
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut check = |message: &Value| {
        let tag = tag(message).to_string();
        let seq = message["data"]["seq"].as_u64().unwrap();
        let expected = next.entry(tag.clone()).or_default();
        assert_eq!(seq, *expected, "{tag}");
        *expected += 1;
        tag
    };
    let mut live_seen = 0;
    for _ in 0..BACKLOGS * ROWS {
        // Live events interleave anywhere; count only the backlog ones here.
        while check(&published(&mut alice).await.1) == "live" {
            live_seen += 1;
        }
    }
    stop.send_replace(true);
    let live = publisher.await.unwrap();
    assert!(live > 0);
    for _ in live_seen..live {
        assert_eq!(check(&published(&mut alice).await.1), "live");
    }
    db.publish(1, "message.created", json!({"tag": "marker"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker");

    // A transaction holding a lower id commits while the reader is between the pages of one
    // read (its first page is already out): it is delivered once, in the next read.
    let mut late = db.pool.begin().await.unwrap();
    let data = json!({"tag": "late", "seq": 0});
    publish(&mut *late, 1, "message.created", data, json!({})).await;
    db.exec(
        "INSERT INTO cable_events (account_id, event, data)
         SELECT 1, 'message.created', jsonb_build_object('tag', 'paged', 'seq', g)
           FROM generate_series(0, 4999) g",
    )
    .await;
    assert_eq!(check(&published(&mut alice).await.1), "paged");
    late.commit().await.unwrap();
    for _ in 1..5000 + 1 {
        check(&published(&mut alice).await.1);
    }
    db.publish(1, "message.created", json!({"tag": "marker 2"}), json!({}))
        .await;
    assert_eq!(next_tag(&mut alice).await, "marker 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_as_too_slow_without_delaying_others() {
    const PAD: usize = 64 * 1024;
    const MAX_EVENTS: u64 = 1000;
    let db = TestDb::new().await;
    let mut config = db.config();
    config.send_queue = 16;
    let gw = start(config).await;
    let mut fast = Client::ready(gw.addr).await;
    fast.subscribe_ok(&user(ALICE, 1, 1)).await;
    // Subscribes, then is never polled again: its socket buffers fill, then its queue.
    let mut slow = Client::ready(gw.addr).await;
    slow.subscribe_ok(&user(BOB, 1, 2)).await;

    let pad = "x".repeat(PAD);
    let mut seq = 0u64;
    let mut slowest = Duration::ZERO;
    let mut after_drop = None;
    // Lock-step: the fast client must have each event before the next is published.
    while after_drop.is_none_or(|n| seq < n) {
        assert!(
            seq < MAX_EVENTS,
            "the slow client was never disconnected ({seq} events of {PAD} bytes)"
        );
        let published_at = Instant::now();
        db.publish(
            1,
            "message.created",
            json!({"tag": "big", "seq": seq, "pad": pad}),
            json!({}),
        )
        .await;
        let (_, message) = published(&mut fast).await;
        slowest = slowest.max(published_at.elapsed());
        assert_eq!(
            message["data"]["seq"], seq,
            "the fast client gets every event in order"
        );
        seq += 1;
        if after_drop.is_none() && metric(&gw, "cable_too_slow_disconnects_total", "") >= 1.0 {
            // Keep going a little: the fast client is unaffected afterwards too.
            after_drop = Some(seq + 20);
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "the fast client waited {slowest:?} for an event"
    );

    // The slow client's connection ends. What it gets before that is an in-order prefix, and a
    // disconnect frame (if it made it through) says too_slow and to come back.
    let frames = slow.until_closed().await;
    let mut next_seq = 0;
    for frame in &frames {
        if frame["type"] == "disconnect" {
            assert_eq!(
                frame,
                &json!({"type": "disconnect", "reason": "too_slow", "reconnect": true})
            );
        } else if frame["message"]["data"]["tag"] == "big" {
            assert_eq!(frame["message"]["data"]["seq"], next_seq);
            next_seq += 1;
        }
    }
    assert!(next_seq < seq, "the slow client did not get everything");
    assert_eq!(metric(&gw, "cable_too_slow_disconnects_total", ""), 1.0);
}

/// Publishes an event for `inbox_id`, then a marker for `user_id` alone, every 100 ms until
/// whether `client` gets the inbox event before the marker is `want`. Fails after 5 s.
async fn until_inbox_routing(
    db: &TestDb,
    client: &mut Client,
    user_id: i64,
    inbox_id: i64,
    want: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0.. {
        tick.tick().await;
        assert!(
            Instant::now() < deadline,
            "user {user_id} still {} inbox {inbox_id} events after 5 s",
            if want { "does not receive" } else { "receives" }
        );
        let probe = format!("inbox {inbox_id} #{round}");
        let marker = format!("marker #{round}");
        db.publish(
            1,
            "conversation.updated",
            json!({"tag": probe}),
            json!({"inbox_id": inbox_id}),
        )
        .await;
        db.publish(
            1,
            "notification.created",
            json!({"tag": marker}),
            json!({"user_id": user_id}),
        )
        .await;
        let mut got = false;
        loop {
            let tag = next_tag(client).await;
            if tag == marker {
                break;
            }
            got |= tag == probe;
        }
        if got == want {
            return;
        }
    }
}

#[tokio::test]
async fn routing_follows_membership_and_role_changes_within_seconds() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.revalidate_interval = Duration::from_millis(200);
    let gw = start(config).await;
    let mut carol = Client::ready(gw.addr).await;
    carol.subscribe_ok(&user(CAROL, 1, 3)).await;
    let mut bob = Client::ready(gw.addr).await;
    bob.subscribe_ok(&user(BOB, 1, 2)).await;

    // Carol joins inbox 1 while subscribed.
    until_inbox_routing(&db, &mut carol, 3, 1, false).await;
    db.exec("INSERT INTO inbox_members (user_id, inbox_id) VALUES (3, 1)")
        .await;
    until_inbox_routing(&db, &mut carol, 3, 1, true).await;

    // Bob leaves inbox 1: his subscription stays (he gets his own events), inbox 1's stop.
    until_inbox_routing(&db, &mut bob, 2, 1, true).await;
    db.exec("DELETE FROM inbox_members WHERE user_id = 2 AND inbox_id = 1")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 1, false).await;

    // Bob becomes an administrator: every inbox; and back to agent: none of his.
    until_inbox_routing(&db, &mut bob, 2, 2, false).await;
    db.exec("UPDATE account_users SET role = 1 WHERE account_id = 1 AND user_id = 2")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 2, true).await;
    db.exec("UPDATE account_users SET role = 0 WHERE account_id = 1 AND user_id = 2")
        .await;
    until_inbox_routing(&db, &mut bob, 2, 2, false).await;
    until_inbox_routing(&db, &mut bob, 2, 1, false).await;
}
