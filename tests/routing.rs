//! The routing rules end to end: real PostgreSQL, real sockets, seven parties of two accounts.
//! (The rules themselves are table-tested as pure functions in `src/routing.rs`; this file
//! checks that the outbox, the router and the sockets together deliver exactly that.)
//!
//! "X must not receive E" is never a timeout: E is published, then a marker X must receive,
//! and X's first event must be the marker (a subscription gets its events in commit order).

mod common;

use std::collections::HashMap;

use cable_gateway::server::Running;
use common::events::*;
use common::*;
use serde_json::{json, Value};

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
