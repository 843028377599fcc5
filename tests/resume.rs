//! Reliable streams (docs/reference.md §8): the extended protocol's session restore, positions and
//! history, against real PostgreSQL and real sockets, across processes and restarts.

mod common;

use std::time::Duration;

use common::ext::*;
use common::*;
use serde_json::json;

const ALICE: &str = "demo-user-alice";
const DAVE: &str = "demo-contact-dave";

/// What a restored subscription gets after its history request: the replay, then (if the
/// process had not read them yet when the subscription went live) live events, until `n`.
async fn missed(client: &mut Client, identifier: &str, n: usize) -> Vec<i64> {
    let (mut got, answer) = replay(client, identifier).await;
    assert_eq!(answer, "confirm_history");
    while got.len() < n {
        let frame = client.next_significant().await;
        got.push(frame["message"]["data"]["n"].as_i64().expect("data.n"));
    }
    got
}

/// Waits until `running` has read `n` outbox events in all (so that what follows does not
/// race its reader).
async fn read_events(running: &cable_gateway::server::Running, n: usize) {
    tokio::time::timeout(WAIT, async {
        while metric(running, "cable_events_read_total", "") < n as f64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the events read in time");
}

async fn newest_offset(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT max(first_offset + count - 1) FROM cable_rounds")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn publish_n(db: &TestDb, n: i64) {
    db.publish(1, "message.created", json!({"n": n}), json!({}))
        .await;
}

#[tokio::test]
async fn the_extended_protocol_is_negotiated_and_plain_clients_see_no_difference() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let epoch: String = sqlx::query_scalar("SELECT epoch FROM cable_epoch")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    let (mut extended, welcome) = ext(running.addr, None).await;
    let sid = sid_of(&welcome);
    assert!(welcome.get("restored").is_none());
    let mut plain = Client::ready(running.addr).await;
    let identifier = user(ALICE, 1, 1);
    extended.subscribe_ok(&identifier).await;
    plain.subscribe_ok(&identifier).await;
    // pong is accepted silently; a plain client's history is an unknown command, ignored.
    extended.send(json!({"command": "pong"})).await;
    plain.send(history(&identifier, &[])).await;
    saved(&db, &sid, 1).await;

    publish_n(&db, 1).await;
    publish_n(&db, 2).await;
    let first = extended.next_significant().await;
    let second = extended.next_significant().await;
    assert_eq!(first["message"]["data"]["n"], 1);
    assert_eq!(first["epoch"], epoch.as_str());
    assert!(first["stream_id"]
        .as_str()
        .unwrap()
        .starts_with("cable_events/"));
    assert_eq!(first["stream_id"], second["stream_id"]);
    assert!(second["offset"].as_i64() > first["offset"].as_i64());

    for n in [1, 2] {
        let frame = plain.next_significant().await;
        assert_eq!(frame["message"]["data"]["n"], n);
        let keys: Vec<&str> = frame
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            ["identifier", "message"],
            "no position bytes: {frame}"
        );
    }
    // pong was accepted (not counted as bad input); the plain client's history was not.
    tokio::time::timeout(WAIT, async {
        while metric(
            &running,
            "cable_commands_total",
            "command=\"pong\",result=\"ok\"",
        ) < 1.0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("pong accepted in time");
    assert_eq!(
        metric(&running, "cable_invalid_frames_total", "unknown_command"),
        1.0,
        "only the plain client's history is an unknown command"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cable_sessions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "a session row for the extended client only");
    running.shutdown().await;
}

/// The out-of-order trap, across a reconnect to another process: event 2 takes its id
/// before event 3 but commits after the client has seen 3 and gone away. A position made of
/// ids would lose it.
#[tokio::test]
async fn a_session_restored_on_another_process_gets_what_it_missed_once_in_order() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);

    let (mut client, sid) = session(&db, a.addr, &identifier).await;
    publish_n(&db, 1).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 1);

    let mut late = db.pool.begin().await.unwrap();
    publish(&mut *late, 1, "message.created", json!({"n": 2}), json!({})).await;
    publish_n(&db, 3).await;
    let seen = client.next_significant().await;
    assert_eq!(seen["message"]["data"]["n"], 3);
    drop(client); // the phone changes networks

    late.commit().await.unwrap();
    publish_n(&db, 4).await;
    read_events(&b, 4).await;

    let (mut client, welcome) = ext(b.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_eq!(welcome["restored_ids"], json!([identifier]));
    assert_ne!(welcome["sid"], sid.as_str(), "a new sid");
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![2, 4], "confirm_history")
    );
    publish_n(&db, 5).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 5);

    // A sid is restored once.
    let (_again, welcome) = ext(a.addr, Some(&sid)).await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn restoring_before_the_old_socket_is_seen_dead_closes_it_and_the_client_position_wins() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (mut old, sid) = session(&db, a.addr, &identifier).await;
    publish_n(&db, 1).await;
    let acknowledged = old.next_significant().await;
    publish_n(&db, 2).await;
    // Written into the old socket, but the client's position says it never got there.
    assert_eq!(old.next_significant().await["message"]["data"]["n"], 2);
    read_events(&b, 2).await;

    let (mut client, welcome) = ext(b.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true);
    let frames = old.until_closed().await;
    assert!(
        frames.iter().all(|f| f["type"] != "disconnect"),
        "closed without a disconnect: {frames:?}"
    );
    client
        .send(history(&identifier, &[position(&acknowledged)]))
        .await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![2], "confirm_history")
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_session_survives_a_gateway_restart() {
    let db = TestDb::new().await;
    let identifier = user(ALICE, 1, 1);
    let first = GatewayProcess::spawn(&db.url, &[]).await;
    first.ready().await;
    let (mut client, sid) = session(&db, first.addr, &identifier).await;
    publish_n(&db, 1).await;
    let seen = client.next_significant().await;
    drop(first); // SIGKILL: nothing is saved at the end

    publish_n(&db, 2).await;
    publish_n(&db, 3).await;
    let second = GatewayProcess::spawn(&db.url, &[]).await;
    second.ready().await;
    let (mut client, welcome) = ext(second.addr, Some(&sid)).await;
    assert_eq!(welcome["restored_ids"], json!([identifier]));
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(missed(&mut client, &identifier, 2).await, vec![2, 3]);
}

#[tokio::test]
async fn a_token_revoked_while_away_is_not_restored_and_is_rejected() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let (alice, dave) = (user(ALICE, 1, 1), contact(DAVE, Some(1)));
    let (mut client, welcome) = ext(running.addr, None).await;
    let sid = sid_of(&welcome);
    client.subscribe_ok(&alice).await;
    client.subscribe_ok(&dave).await;
    saved(&db, &sid, 2).await;
    drop(client);

    db.exec("UPDATE contact_inboxes SET pubsub_token = 'rotated' WHERE id = 1")
        .await;
    let (mut client, welcome) = ext(running.addr, Some(&sid)).await;
    assert_eq!(welcome["restored_ids"], json!([alice]), "{welcome}");
    assert_eq!(client.next_significant().await, reject(&dave));
    running.shutdown().await;
}

#[tokio::test]
async fn positions_that_cannot_be_honoured_get_reject_history_and_stay_live() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.history_max_span = 3;
    let running = start(config).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, sid) = session(&db, running.addr, &identifier).await;
    publish_n(&db, 1).await;
    let seen = client.next_significant().await;
    let (stream, at) = position(&seen);

    // Another epoch.
    let other = json!({"epoch": "elsewhere", "offset": at["offset"]});
    client
        .send(history(&identifier, &[(stream.clone(), other)]))
        .await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![], "reject_history")
    );
    drop(client);

    // More than CABLE_HISTORY_MAX_SPAN events missed.
    for n in 2..=6 {
        publish_n(&db, n).await;
    }
    read_events(&running, 6).await;
    let (mut client, welcome) = ext(running.addr, Some(&sid)).await;
    let sid = sid_of(&welcome);
    client
        .send(history(&identifier, &[(stream.clone(), at)]))
        .await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![], "reject_history")
    );
    publish_n(&db, 7).await;
    let seen = client.next_significant().await;
    assert_eq!(seen["message"]["data"]["n"], 7, "still live");
    saved(&db, &sid, 1).await;
    drop(client);

    // Older than what is kept: 8 and 9 in rounds of their own, all but the last one pruned.
    for n in [8, 9] {
        let before = newest_offset(&db).await;
        publish_n(&db, n).await;
        tokio::time::timeout(WAIT, async {
            while newest_offset(&db).await == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a round appended in time");
    }
    db.exec("DELETE FROM cable_rounds WHERE round < (SELECT max(round) FROM cable_rounds)")
        .await;
    let (mut client, _) = ext(running.addr, Some(&sid)).await;
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![], "reject_history")
    );
    publish_n(&db, 10).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 10);
    running.shutdown().await;
}

#[tokio::test]
async fn a_contacts_replay_holds_only_its_own_sessions_public_events() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = contact(DAVE, Some(1));
    let (mut client, sid) = session(&db, running.addr, &identifier).await;
    let dave = json!({"inbox_id": 1, "contact_inbox_ids": [1]});
    db.publish(1, "message.created", json!({"n": 1}), dave.clone())
        .await;
    let seen = client.next_significant().await;
    drop(client);

    let private = json!({"inbox_id": 1, "contact_inbox_ids": [1], "private": true});
    db.publish(1, "message.created", json!({"n": 2}), private)
        .await;
    let erin = json!({"inbox_id": 2, "contact_inbox_ids": [2]});
    db.publish(1, "message.created", json!({"n": 3}), erin)
        .await;
    db.publish(1, "conversation.updated", json!({"n": 4}), dave.clone())
        .await;
    db.publish(
        2,
        "message.created",
        json!({"n": 5}),
        json!({"contact_inbox_ids": [1]}),
    )
    .await;
    db.publish(1, "message.created", json!({"n": 6}), dave.clone())
        .await;
    read_events(&running, 6).await;

    let (mut client, welcome) = ext(running.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true);
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![6], "confirm_history")
    );
    db.publish(1, "message.created", json!({"n": 7}), dave)
        .await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 7);
    running.shutdown().await;
}

#[tokio::test]
async fn a_subscribe_with_history_since_replays_before_going_live() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5;
    // A gateway process sees the event before anyone subscribes.
    let (mut watcher, _) = ext(running.addr, None).await;
    watcher.subscribe_ok(&user("demo-user-bob", 1, 2)).await;
    publish_n(&db, 1).await;
    assert_eq!(watcher.next_significant().await["message"]["data"]["n"], 1);

    let (mut client, _) = ext(running.addr, None).await;
    client
        .send(json!({"command": "subscribe", "identifier": identifier,
                     "history": {"since": since}}))
        .await;
    assert_eq!(client.next_significant().await, confirm(&identifier));
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![1], "confirm_history")
    );
    publish_n(&db, 2).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 2);
    running.shutdown().await;
}

/// Rails' adapters are heard by each process on its own: their history is that process's.
#[tokio::test]
async fn stream_ingress_history_is_honoured_by_the_process_that_heard_it() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    // As Rails' PostgreSQL adapter broadcasts: NOTIFY on the stream's name.
    let notify = |n: i64| {
        let payload = json!({"event": "x", "data": {"n": n}}).to_string();
        let pool = db.pool.clone();
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ALICE)
                .bind(payload)
                .execute(&pool)
                .await
                .unwrap();
        }
    };

    let (mut client, sid) = session(&db, a.addr, &identifier).await;
    notify(1).await;
    let seen = client.next_significant().await;
    assert_eq!(seen["stream_id"], ALICE);
    assert_eq!(seen["offset"], 1);
    drop(client);
    // Someone else keeps the stream heard on A while the client is away.
    let mut other = Client::ready(a.addr).await;
    other.subscribe_ok(&identifier).await;
    notify(2).await;
    notify(3).await;
    for n in [2, 3] {
        assert_eq!(other.next_significant().await["message"]["data"]["n"], n);
    }

    let (mut client, welcome) = ext(a.addr, Some(&sid)).await;
    let sid = sid_of(&welcome);
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![2, 3], "confirm_history")
    );
    saved(&db, &sid, 1).await;
    drop(client);

    // B never heard them.
    let (mut client, welcome) = ext(b.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true);
    client.send(history(&identifier, &[position(&seen)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![], "reject_history")
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A replay longer than one page (1000 offsets), out of one round of 2500 rows of which a
/// tenth are the subscriber's: offsets inside a round are numbered across page boundaries.
#[tokio::test]
async fn a_long_replay_is_paged_without_a_gap_or_a_duplicate() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, sid) = session(&db, running.addr, &identifier).await;
    publish_n(&db, 0).await;
    let seen = client.next_significant().await;
    drop(client);

    db.exec(
        "INSERT INTO cable_events (account_id, event, data)
         SELECT CASE WHEN i % 10 = 0 THEN 1 ELSE 2 END, 'message.created', jsonb_build_object('n', i)
           FROM generate_series(1, 2500) AS i",
    )
    .await;
    for n in 2501..=2503 {
        publish_n(&db, n).await;
    }
    read_events(&running, 2504).await;
    let (mut client, _) = ext(running.addr, Some(&sid)).await;
    client.send(history(&identifier, &[position(&seen)])).await;
    let (got, answer) = replay(&mut client, &identifier).await;
    assert_eq!(answer, "confirm_history");
    let want: Vec<i64> = (1..=2500)
        .filter(|i| i % 10 == 0)
        .chain(2501..=2503)
        .collect();
    assert_eq!(got, want);
    assert!(
        metric(&running, "cable_history_queries_total", "") >= 3.0,
        "paged"
    );
    running.shutdown().await;
}

/// The restore header instead of `?sid=`; an unknown sid gets a plain welcome with a new sid.
#[tokio::test]
async fn a_session_is_restored_by_header_and_an_unknown_sid_starts_afresh() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (client, sid) = session(&db, running.addr, &identifier).await;
    drop(client);

    let connect = |sid: String| async move {
        let mut request = format!("ws://{}/cable", running.addr)
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(EXT));
        headers.insert(
            "X-ANYCABLE-RESTORE-SID",
            HeaderValue::from_str(&sid).unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut client = Client {
            ws,
            protocol: Some(EXT.into()),
        };
        let welcome = client.next().await;
        (client, welcome)
    };
    let (_client, welcome) = connect(sid.clone()).await;
    assert_eq!(welcome["restored_ids"], json!([identifier]), "{welcome}");
    let (_other, welcome) = connect("0123456789abcdef0123456789abcdef".into()).await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
    assert_ne!(sid_of(&welcome), sid);
    running.shutdown().await;
}

/// A session lost longer than `CABLE_SESSION_TTL` ago is not restored, and its row is pruned.
#[tokio::test]
async fn an_expired_session_is_pruned_and_not_restored() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.session_ttl = Duration::from_secs(1);
    config.event_retention = Duration::from_secs(10); // prunes every second
    let running = start(config).await;
    let identifier = user(ALICE, 1, 1);
    let (client, sid) = session(&db, running.addr, &identifier).await;
    drop(client);
    tokio::time::timeout(WAIT, async {
        loop {
            let rows: i64 =
                sqlx::query_scalar("SELECT count(*) FROM cable_sessions WHERE sid = $1")
                    .bind(&sid)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            if rows == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the expired session pruned in time");
    let (_client, welcome) = ext(running.addr, Some(&sid)).await;
    assert!(welcome.get("restored").is_none(), "{welcome}");
    running.shutdown().await;
}

/// History requests have a budget of their own (a burst of `CABLE_MAX_SUBSCRIPTIONS`, then one
/// a second): beyond it they get `reject_history` without a database query, and the
/// connection and its subscription go on.
#[tokio::test]
async fn history_requests_beyond_the_budget_are_refused_without_a_query() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.max_subscriptions = 3;
    config.max_command_rate = 1000;
    let running = start(config).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, _) = ext(running.addr, None).await;
    client.subscribe_ok(&identifier).await;
    publish_n(&db, 1).await;
    let seen = client.next_significant().await;
    for _ in 0..12 {
        client.send(history(&identifier, &[position(&seen)])).await;
    }
    let mut answers = Vec::new();
    while answers.len() < 12 {
        answers.push(replay(&mut client, &identifier).await.1);
    }
    let confirmed = answers.iter().filter(|a| **a == "confirm_history").count();
    assert!((3..=5).contains(&confirmed), "{answers:?}");
    // At most a round cut and one page per honoured request; none for the refused ones.
    assert!(metric(&running, "cable_history_queries_total", "") <= 2.0 * confirmed as f64);
    publish_n(&db, 2).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 2);
    running.shutdown().await;
}
