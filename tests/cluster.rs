//! Nothing lost across processes (issue 26): two gateway processes on one database, each
//! appending rounds, a client on either, a backend behind a load balancer on either.
//!
//! - `since` never skips a round, while several appenders race under publishing load, and
//!   while a round stamped early (by a gateway from before the fix, during a rolling upgrade)
//!   follows the one before it;
//! - an event committed just before a history request comes before `confirm_history`;
//! - `POST /_broadcast` accepted by one process reaches every process's subscribers in order,
//!   with positions the other process honours.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ext::*;
use common::*;
use serde_json::{json, Value};

const ALICE: &str = "demo-user-alice";
const DAVE: &str = "demo-contact-dave";
const KEY: &str = "cluster-broadcast-key";

/// The database's clock, in Unix seconds: what rounds are stamped with.
async fn db_now(db: &TestDb) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// An event only Alice (administrator, user 1 of account 1) receives, numbered `n`.
async fn to_alice(pool: &sqlx::PgPool, n: i64) {
    publish(
        pool,
        1,
        "message.created",
        json!({ "n": n }),
        json!({"user_id": 1}),
    )
    .await;
}

/// Subscribes `identifier` with a history request `since`, expects the confirm, and returns
/// the replay up to its answer.
async fn subscribe_since(client: &mut Client, identifier: &str, since: f64) -> Vec<i64> {
    client
        .send(json!({"command": "subscribe", "identifier": identifier,
                     "history": {"since": since}}))
        .await;
    assert_eq!(client.next_significant().await, confirm(identifier));
    let (got, answer) = replay(client, identifier).await;
    assert_eq!(answer, "confirm_history");
    got
}

/// The rounds whose time is earlier than some round before them.
async fn rounds_out_of_time_order(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT created_at < max(created_at) OVER (
                    ORDER BY round ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS back
             FROM cable_rounds) r
          WHERE back",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Regression (issue 26, item 1): rounds were stamped with the appending transaction's
/// start, before it waited for the append lock, and `since` took the first round *by time*.
/// Under load from two processes (and two more appenders, as a third and fourth process
/// would), every subscribe with `since` taken before its event's commit must replay it, and
/// round times must follow round order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn since_never_skips_a_round_while_processes_append_concurrently() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for publisher in 0..3i64 {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Bob's events, some held open a moment: commits out of id order.
                let mut tx = pool.begin().await.unwrap();
                publish(
                    &mut *tx,
                    1,
                    "message.created",
                    json!({}),
                    json!({"user_id": 2}),
                )
                .await;
                if (n + publisher) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tx.commit().await.unwrap();
                n += 1;
            }
        }));
    }
    for _ in 0..2 {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                cable_gateway::ingress::outbox::append(&pool).await.unwrap();
            }
        }));
    }

    let identifier = user(ALICE, 1, 1);
    for n in 0..40 {
        let process = if n % 2 == 0 { a.addr } else { b.addr };
        let (mut client, _) = ext(process, None).await;
        let since = db_now(&db).await;
        to_alice(&db.pool, n).await;
        let got = subscribe_since(&mut client, &identifier, since).await;
        assert_eq!(got, vec![n], "subscribe {n} on process {}", n % 2);
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let rounds: i64 = sqlx::query_scalar("SELECT count(*) FROM cable_rounds")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        rounds > 100,
        "the appenders raced over many rounds: {rounds}"
    );
    assert_eq!(rounds_out_of_time_order(&db).await, 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// Regression (issue 26, item 1): during a rolling upgrade a gateway from before the fix
/// stamps its round with its transaction's start, taken before it waited for the lock: the
/// round after R1 carries an earlier time than R1. `since` must still find R1 (rounds are
/// looked up by number, not by time).
#[tokio::test]
async fn a_round_stamped_early_does_not_hide_the_round_before_it() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let since = db_now(&db).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // the clocks must tell them apart
    let mut old_appender = db.pool.begin().await.unwrap();
    let began: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&mut *old_appender)
        .await
        .unwrap();
    assert!(began > since);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Event 1 gets its own round R1 from the gateways' appenders, stamped after `began`.
    to_alice(&db.pool, 1).await;
    let newest = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT max(first_offset + count - 1) FROM cable_rounds")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    tokio::time::timeout(WAIT, async {
        while newest(db.pool.clone()).await < 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("event 1 in a round");
    // The old appender takes the lock, event 2 commits, and the old appender cuts R2 and
    // stamps it as it used to: with its transaction's start.
    sqlx::query("SELECT pg_advisory_xact_lock(x'6361626c655f726e'::bigint)")
        .execute(&mut *old_appender)
        .await
        .unwrap();
    to_alice(&db.pool, 2).await;
    let round: i64 = sqlx::query_scalar(cable_gateway::ingress::outbox::APPEND)
        .fetch_one(&mut *old_appender)
        .await
        .expect("the old appender cuts the round of event 2");
    sqlx::query("UPDATE cable_rounds SET created_at = now() WHERE round = $1")
        .bind(round)
        .execute(&mut *old_appender)
        .await
        .unwrap();
    old_appender.commit().await.unwrap();
    assert_eq!(
        rounds_out_of_time_order(&db).await,
        1,
        "R2 is stamped before R1"
    );

    for process in [a.addr, b.addr] {
        let (mut client, _) = ext(process, None).await;
        let got = subscribe_since(&mut client, &user(ALICE, 1, 1), since).await;
        assert_eq!(got, vec![1, 2]);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Regression (issue 26, item 2): the replay stopped at what this process's reader had
/// dispatched; an event committed just before the request came after `confirm_history`.
/// Subscribing 0 ms after the commit, on either process, it must come before it, and not
/// again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_committed_just_before_a_history_request_comes_before_the_confirm() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    for n in 0..20 {
        let process = if n % 2 == 0 { a.addr } else { b.addr };
        let (mut client, _) = ext(process, None).await;
        let since = db_now(&db).await;
        to_alice(&db.pool, n).await;
        assert_eq!(
            subscribe_since(&mut client, &identifier, since).await,
            vec![n]
        );
        to_alice(&db.pool, 1000 + n).await;
        let next = client.next_significant().await;
        assert_eq!(
            next["message"]["data"]["n"],
            1000 + n,
            "no duplicate: {next}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn post(addr: std::net::SocketAddr, broadcasts: Value) {
    let (status, body) = http_request(
        addr,
        "POST",
        "/_broadcast",
        &[&format!("Authorization: Bearer {KEY}")],
        broadcasts.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

fn one(stream: &str, payload: Value) -> Value {
    json!({"stream": stream, "data": payload.to_string()})
}

/// Issue 26, item 3: a broadcast accepted by one process reaches every process's
/// subscribers, in the order accepted, contacts held to the safety rule; its position is
/// honoured by the other process.
#[tokio::test]
async fn broadcasts_accepted_by_one_process_reach_every_process_with_positions_both_honour() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.broadcast_key = Some(KEY.into());
    let a = start(config.clone()).await;
    let b = start(config).await;
    let identifier = user(ALICE, 1, 1);
    let start_time = db_now(&db).await;
    let mut plain = Client::ready(b.addr).await;
    plain.subscribe_ok(&identifier).await;
    let mut dave = Client::ready(b.addr).await;
    dave.subscribe_ok(&contact(DAVE, Some(1))).await;
    let (mut extended, sid) = session(&db, b.addr, &identifier).await;

    post(
        a.addr,
        json!([
            one(ALICE, json!({"event": "x", "data": {"n": 1}})),
            one("account_1", json!({"event": "x", "data": {"n": 2}})),
            one(
                DAVE,
                json!({"event": "message.created", "data": {"n": 3, "private": true}})
            ),
            one(DAVE, json!({"event": "message.created", "data": {"n": 4}})),
        ]),
    )
    .await;
    post(
        a.addr,
        json!(one(ALICE, json!({"event": "x", "data": {"n": 5}}))),
    )
    .await;
    for n in [1, 2, 5] {
        assert_eq!(plain.event().await.1["data"]["n"], n);
    }
    assert_eq!(
        dave.event().await.1["data"]["n"],
        4,
        "never the private one"
    );
    let mut seen = Vec::new();
    for n in [1, 2, 5] {
        let frame = extended.next_significant().await;
        assert_eq!(frame["message"]["data"]["n"], n);
        assert!(frame["stream_id"]
            .as_str()
            .unwrap()
            .starts_with("cable_events/"));
        seen.push(frame);
    }
    assert!(seen[0]["offset"].as_i64() < seen[1]["offset"].as_i64());
    drop(extended);

    // Away, then back on the process that accepted them: the position taken on B holds.
    post(
        b.addr,
        json!(one(ALICE, json!({"event": "x", "data": {"n": 6}}))),
    )
    .await;
    let (mut client, welcome) = ext(a.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    client
        .send(history(&identifier, &[position(&seen[0])]))
        .await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![2, 5, 6], "confirm_history")
    );
    // A fresh subscriber on A replays the broadcasts B accepted, by `since`, too.
    let (mut fresh, _) = ext(a.addr, None).await;
    let got = subscribe_since(&mut fresh, &contact(DAVE, Some(1)), start_time).await;
    assert_eq!(
        got,
        vec![4],
        "a contact's replay holds no private broadcast"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A position of Rails' adapters is history of the process that heard it. On another process
/// it cannot be honoured, and that must not cost the client the outbox events it missed: they
/// are replayed, then `reject_history` says that something could not be.
#[tokio::test]
async fn a_broadcast_position_another_process_cannot_honour_costs_no_outbox_event() {
    let db = TestDb::new().await;
    let a = start(db.config()).await;
    let b = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, sid) = session(&db, a.addr, &identifier).await;
    to_alice(&db.pool, 1).await;
    let event = client.next_significant().await;
    // As Rails' PostgreSQL adapter broadcasts: heard by A only (B has no subscriber of it).
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ALICE)
        .bind(json!({"event": "x", "data": {"n": 100}}).to_string())
        .execute(&db.pool)
        .await
        .unwrap();
    let broadcast = client.next_significant().await;
    assert_eq!(broadcast["stream_id"], ALICE);
    drop(client);
    to_alice(&db.pool, 2).await;
    to_alice(&db.pool, 3).await;

    let (mut client, welcome) = ext(b.addr, Some(&sid)).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    client
        .send(history(
            &identifier,
            &[position(&event), position(&broadcast)],
        ))
        .await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![2, 3], "reject_history")
    );
    to_alice(&db.pool, 4).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 4);
    a.shutdown().await;
    b.shutdown().await;
}

/// A session subscribed with `identifier` (Alice's) that has received one event: the client,
/// and that event's frame.
async fn one_seen(db: &TestDb, addr: std::net::SocketAddr, identifier: &str) -> (Client, Value) {
    let (mut client, _) = session(db, addr, identifier).await;
    to_alice(&db.pool, 1).await;
    let seen = client.next_significant().await;
    (client, seen)
}

/// A replay the database fails is the database's fault, not the position's: the client is
/// told to reconnect (`server_restart`), not `reject_history` (after which @anycable/core
/// stops asking, and what it missed is lost for good).
#[tokio::test]
async fn a_replay_the_database_fails_is_a_reconnect_not_a_reject() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, seen) = one_seen(&db, running.addr, &identifier).await;
    // The replay's query reads cable_rounds: without it, it fails.
    db.exec("ALTER TABLE cable_rounds RENAME TO cable_rounds_away")
        .await;
    client.send(history(&identifier, &[position(&seen)])).await;
    let frames = told_to_reconnect(&db, &mut client).await;
    assert!(
        frames.iter().all(|f| f["type"] != "reject_history"),
        "{frames:?}"
    );
    running.shutdown().await;
}

/// The frames until the connection closes, which it must with `disconnect` `server_restart`;
/// then `cable_rounds` is put back.
async fn told_to_reconnect(db: &TestDb, client: &mut Client) -> Vec<Value> {
    let frames = client.until_closed().await;
    db.exec("ALTER TABLE cable_rounds_away RENAME TO cable_rounds")
        .await;
    assert!(
        frames.contains(
            &json!({"type": "disconnect", "reason": "server_restart", "reconnect": true})
        ),
        "{frames:?}"
    );
    frames
}

/// A replay whose queries meet a short database failure are retried, not answered with a
/// reconnect (which would cost an extended-protocol client its session): the client gets
/// what it missed and `confirm_history` once the database answers. (The round cut before
/// the pages is retried too: without that, an event the appender had not yet put in a round
/// when the database went away came live after the confirm; seen in CI.)
#[tokio::test]
async fn a_replay_that_meets_a_short_database_failure_is_retried() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (client, seen) = one_seen(&db, running.addr, &identifier).await;
    drop(client);
    to_alice(&db.pool, 2).await;
    db.exec("ALTER TABLE cable_rounds RENAME TO cable_rounds_away")
        .await;
    let queries = || metric(&running, "cable_history_queries_total", "");
    let before = queries();
    let (mut again, _) = ext(running.addr, None).await;
    let mut subscribe = subscribe(&identifier);
    subscribe["history"] = history(&identifier, &[position(&seen)])["history"].clone();
    again.send(subscribe).await;
    assert_eq!(again.next().await, confirm(&identifier));
    let deadline = tokio::time::Instant::now() + WAIT;
    while queries() < before + 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed query is tried again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.exec("ALTER TABLE cable_rounds_away RENAME TO cable_rounds")
        .await;
    assert_eq!(
        replay(&mut again, &identifier).await,
        (vec![2], "confirm_history"),
        "what it missed, then the confirm: no reconnect"
    );
    running.shutdown().await;
}

/// A replay the database fails for good sends nothing it held back meanwhile: live frames
/// released after a gap would move the client's position past the events it never got, and
/// its next request would skip them for good (found by the 30-minute soak).
#[tokio::test]
async fn a_replay_the_database_fails_sends_nothing_it_held() {
    let db = TestDb::new().await;
    let mut config = db.config();
    config.rails_channel_prefix = Some("held".into());
    let running = start(config).await;
    let identifier = user(ALICE, 1, 1);
    let (client, seen) = one_seen(&db, running.addr, &identifier).await;
    drop(client);
    db.exec("ALTER TABLE cable_rounds RENAME TO cable_rounds_away")
        .await;
    let (mut again, _) = ext(running.addr, None).await;
    let mut subscribe = subscribe(&identifier);
    subscribe["history"] = history(&identifier, &[position(&seen)])["history"].clone();
    again.send(subscribe).await;
    // Confirmed once the stream's LISTEN is in place: a broadcast from now on is live, and
    // held while the replay fails.
    assert_eq!(again.next().await, confirm(&identifier));
    db.exec(r#"NOTIFY "held:demo-user-alice", '{"live":true}'"#)
        .await;
    let frames = told_to_reconnect(&db, &mut again).await;
    assert!(
        frames.iter().all(|f| f["message"]["live"].is_null()),
        "nothing held goes out after a failed replay: {frames:?}"
    );
    running.shutdown().await;
}

/// A history request on a subscription whose live events already flowed (a late request,
/// e.g. after a restored session's hold ran out) replays only what live delivery did not
/// cover: found as a duplicate by the 30-minute soak.
#[tokio::test]
async fn a_late_history_request_sends_nothing_twice() {
    let db = TestDb::new().await;
    let running = start(db.config()).await;
    let identifier = user(ALICE, 1, 1);
    let (mut client, _) = ext(running.addr, None).await;
    client.subscribe_ok(&identifier).await;
    to_alice(&db.pool, 1).await;
    to_alice(&db.pool, 2).await;
    let first = client.next_significant().await;
    assert_eq!(first["message"]["data"]["n"], 1);
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 2);
    client.send(history(&identifier, &[position(&first)])).await;
    assert_eq!(
        replay(&mut client, &identifier).await,
        (vec![], "confirm_history"),
        "2 went out live already"
    );
    to_alice(&db.pool, 3).await;
    assert_eq!(client.next_significant().await["message"]["data"]["n"], 3);
    running.shutdown().await;
}
