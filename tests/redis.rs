//! ActionCable's Redis adapter as the ingress: a real `redis-server` per test, broadcasts
//! PUBLISHed exactly as Rails' adapter does (`<channel_prefix>:<stream>`, the payload as
//! JSON text), received by real WebSocket clients through the gateway.
//!
//! "X must not receive E" is never a timeout: E is published, then a marker X must receive,
//! and X's next message must be the marker (broadcasts of one channel arrive in order).

mod common;

use std::time::Duration;

use cable_gateway::server::Running;
use common::redis::{RedisServer, TlsFiles};
use common::*;
use serde_json::{json, Value};

const PREFIX: &str = "chatwoot_test_action_cable";

/// The next message that is not a presence answer: (identifier, message).
async fn broadcast(client: &mut Client) -> (String, Value) {
    loop {
        let (identifier, message) = client.event().await;
        if message["event"] != "presence.update" {
            return (identifier, message);
        }
    }
}

async fn ready(gw: &Running) {
    let mut ready = gw
        .ingress_readiness("redis")
        .expect("Redis ingress enabled");
    tokio::time::timeout(WAIT, ready.wait_for(|up| *up))
        .await
        .expect("the Redis ingress connects in time")
        .unwrap();
}

/// PUBLISHes as Rails' Redis adapter does: on `<prefix>:<stream>`.
async fn rails_broadcast(redis: &RedisServer, stream: &str, payload: Value) {
    let received = redis
        .publish(&format!("{PREFIX}:{stream}"), &payload.to_string())
        .await;
    assert_eq!(
        received, 1,
        "the gateway's pattern subscription hears every broadcast"
    );
}

async fn gateway(db: &TestDb, redis: &RedisServer) -> Running {
    let mut config = db.config();
    config.redis_url = Some(redis.url());
    config.rails_channel_prefix = Some(PREFIX.into());
    config.max_broadcast_size = 4096;
    let gw = start(config).await;
    ready(&gw).await;
    gw
}

#[tokio::test]
async fn redis_broadcasts_reach_exactly_the_subscriptions_streaming_them() {
    let db = TestDb::new().await;
    let redis = RedisServer::start().await;
    let gw = gateway(&db, &redis).await;
    let alice_id = user("demo-user-alice", 1, 1);
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&alice_id).await;
    let mut dave = Client::ready(gw.addr).await;
    dave.subscribe_ok(&contact("demo-contact-dave", Some(1)))
        .await;
    let mut frank = Client::ready(gw.addr).await;
    frank.subscribe_ok(&user("demo-user-frank", 2, 4)).await;

    // To a user's own token: delivered with the payload as it was sent.
    let payload = json!({"event": "notification.created", "data": {"id": 1, "emoji": "é✓"}});
    rails_broadcast(&redis, "demo-user-alice", payload.clone()).await;
    assert_eq!(broadcast(&mut alice).await, (alice_id.clone(), payload));

    // account_1: every user subscription of account 1, no contact, no other account.
    rails_broadcast(
        &redis,
        "account_1",
        json!({"event": "contact.created", "data": {"tag": "acct"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await.1["data"]["tag"], "acct");
    rails_broadcast(
        &redis,
        "demo-contact-dave",
        json!({"event": "marker", "data": {"tag": "dave 1"}}),
    )
    .await;
    assert_eq!(broadcast(&mut dave).await.1["data"]["tag"], "dave 1");
    rails_broadcast(
        &redis,
        "demo-user-frank",
        json!({"event": "marker", "data": {"tag": "frank"}}),
    )
    .await;
    assert_eq!(broadcast(&mut frank).await.1["data"]["tag"], "frank");

    // A contact never gets private typing nor a private message; everything else passes.
    for private in [
        json!({"event": "conversation.typing_on", "data": {"is_private": true, "tag": "no"}}),
        json!({"event": "message.created", "data": {"private": true, "tag": "no"}}),
    ] {
        rails_broadcast(&redis, "demo-contact-dave", private).await;
    }
    rails_broadcast(&redis, "demo-contact-dave", json!({"event": "conversation.typing_on", "data": {"is_private": false, "tag": "public typing"}})).await;
    rails_broadcast(
        &redis,
        "demo-contact-dave",
        json!({"event": "conversation.updated", "data": {"tag": "updated"}}),
    )
    .await;
    assert_eq!(broadcast(&mut dave).await.1["data"]["tag"], "public typing");
    assert_eq!(broadcast(&mut dave).await.1["data"]["tag"], "updated");

    // Another prefix is not ours: the pattern subscription does not even hear it. Not JSON
    // and too large are skipped and counted, and the next broadcast still arrives.
    assert_eq!(
        redis
            .publish("other_prefix:demo-user-alice", "{\"event\":\"no\"}")
            .await,
        0
    );
    assert_eq!(
        redis
            .publish(&format!("{PREFIX}:demo-user-alice"), "not json")
            .await,
        1
    );
    let big = json!({"event": "x", "data": {"pad": "y".repeat(5000)}});
    rails_broadcast(&redis, "demo-user-alice", big).await;
    rails_broadcast(
        &redis,
        "demo-user-alice",
        json!({"event": "marker", "data": {"tag": "after"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await.1["data"]["tag"], "after");
    let skipped = |reason: &str| {
        metric(
            &gw,
            "cable_broadcasts_skipped_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert_eq!(skipped("not_json"), 1.0);
    assert_eq!(skipped("too_large"), 1.0);
    assert_eq!(metric(&gw, "cable_ingress_up", "ingress=\"redis\""), 1.0);
}

#[tokio::test]
async fn a_redis_restart_is_survived_and_ready_says_so() {
    let db = TestDb::new().await;
    let mut redis = RedisServer::start().await;
    let gw = gateway(&db, &redis).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    assert_eq!(http_get(gw.addr, "/ready").await.0, 200);

    redis.kill().await;
    let mut up = gw.ingress_readiness("redis").unwrap();
    tokio::time::timeout(WAIT, up.wait_for(|up| !*up))
        .await
        .expect("the gateway notices Redis is gone")
        .unwrap();
    let (status, body) = http_get(gw.addr, "/ready").await;
    assert_eq!((status, body.trim()), (503, "redis connection down"));
    assert_eq!(http_get(gw.addr, "/health").await.0, 200);

    redis.run().await;
    tokio::time::timeout(Duration::from_secs(45), up.wait_for(|up| *up))
        .await
        .expect("the Redis ingress reconnects within its backoff")
        .unwrap();
    assert_eq!(http_get(gw.addr, "/ready").await.0, 200);
    rails_broadcast(
        &redis,
        "demo-user-alice",
        json!({"event": "marker", "data": {"tag": "back"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await.1["data"]["tag"], "back");
    assert!(metric(&gw, "cable_ingress_reconnects_total", "ingress=\"redis\"") >= 1.0);
}

#[tokio::test]
async fn rediss_is_tls_checked_against_the_given_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("cable-rediss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let tls = TlsFiles {
        cert: write("server.crt", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        ca_pem: ca_cert.pem().into_bytes(),
    };
    let ca_file = write("ca.pem", ca_cert.pem());
    let redis = RedisServer::start_tls(tls).await;

    let db = TestDb::new().await;
    let mut config = db.config();
    config.redis_url = Some(redis.url());
    config.redis_ca_cert = Some(ca_file);
    config.rails_channel_prefix = Some(PREFIX.into());
    let gw = start(config).await;
    ready(&gw).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.subscribe_ok(&user("demo-user-alice", 1, 1)).await;
    rails_broadcast(
        &redis,
        "demo-user-alice",
        json!({"event": "marker", "data": {"tag": "over tls"}}),
    )
    .await;
    assert_eq!(broadcast(&mut alice).await.1["data"]["tag"], "over tls");

    // Without that CA, the server's certificate is not trusted: no connection, /ready 503.
    let mut config = db.config();
    config.redis_url = Some(redis.url());
    let untrusting = start(config).await;
    let failed = async {
        loop {
            if metric(
                &untrusting,
                "cable_ingress_reconnects_total",
                "ingress=\"redis\"",
            ) >= 1.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, failed)
        .await
        .expect("the untrusted connection fails and is retried");
    assert!(!*untrusting.ingress_readiness("redis").unwrap().borrow());
    assert_eq!(http_get(untrusting.addr, "/ready").await.0, 503);
    let _ = std::fs::remove_dir_all(&dir);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until `member` has a score in `key` (the writer is asynchronous), and returns it.
async fn scored(redis: &RedisServer, key: &str, member: i64) -> f64 {
    let wait = async {
        loop {
            if let Some(score) = redis.zscore(key, member).await {
                return score;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{member} appears in {key} in time"))
}

/// Waits for the presence answer (by then its keys were handed to the writer).
async fn answered(client: &mut Client) {
    loop {
        let frame = client.next().await;
        if frame["message"]["event"] == "presence.update" {
            return;
        }
    }
}

#[tokio::test]
async fn chatwoots_online_presence_keys_are_kept_in_redis() {
    let db = TestDb::new().await;
    let redis = RedisServer::start().await;
    let mut config = db.config();
    config.redis_url = Some(redis.url());
    config.presence_ttl = Duration::from_millis(1500); // a heartbeat every 500 ms
    let gw = start(config).await;
    ready(&gw).await;

    let mut alice = Client::ready(gw.addr).await;
    alice.send(subscribe(&user("demo-user-alice", 1, 1))).await;
    answered(&mut alice).await;
    let mut dave = Client::ready(gw.addr).await;
    dave.send(subscribe(&contact("demo-contact-dave", Some(1))))
        .await;
    answered(&mut dave).await;

    // At subscribe: the user by user id, the contact by contact id (dave is contact 1). The
    // keys are written by a task of their own, right after the answers.
    let users = "ONLINE_PRESENCE::1::USERS";
    let contacts = "ONLINE_PRESENCE::1::CONTACTS";
    let first = scored(&redis, users, 1).await;
    assert!((unix_now() - first).abs() < 3.0, "scored now: {first}");
    scored(&redis, contacts, 1).await;
    assert_eq!(redis.zscore(users, 2).await, None, "bob is not connected");
    assert_eq!(redis.zscore("ONLINE_PRESENCE::2::USERS", 1).await, None);

    // While connected, the heartbeat moves the score forward.
    let moved = async {
        loop {
            if redis.zscore(users, 1).await.unwrap() > first {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), moved)
        .await
        .expect("the heartbeat refreshes the score");
}

#[tokio::test]
async fn chatwoot_presence_keys_can_be_turned_off() {
    let db = TestDb::new().await;
    let redis = RedisServer::start().await;
    let mut config = db.config();
    config.redis_url = Some(redis.url());
    config.chatwoot_presence = false;
    let gw = start(config).await;
    ready(&gw).await;
    let mut alice = Client::ready(gw.addr).await;
    alice.send(subscribe(&user("demo-user-alice", 1, 1))).await;
    answered(&mut alice).await;
    assert_eq!(redis.zscore("ONLINE_PRESENCE::1::USERS", 1).await, None);
}
