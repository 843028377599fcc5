//! The inspector's JSON (`/inspect/data`, docs/reference.md §9) with many accounts: aggregated on the
//! server, the list bounded, the numbers exact. The page itself is tested in a real browser
//! (tests/js/inspector.test.mjs).

mod common;

use common::{http_get, start, subscribe, user, Client, TestDb};
use serde_json::Value;

const TOKEN: &str = "inspect-token";
const ACCOUNTS: i64 = 60;

#[tokio::test]
async fn many_accounts_are_counted_and_the_largest_listed() {
    let db = TestDb::new().await;
    // Accounts 100..160, each with one user (id = account id); account 100 + k gets 1 + k % 3
    // subscriptions.
    db.exec(&format!(
        "INSERT INTO users (id, name, pubsub_token)
           SELECT a, 'u' || a, 'load-token-' || a FROM generate_series(100, {last}) a;
         INSERT INTO account_users (account_id, user_id, role)
           SELECT a, a, 1 FROM generate_series(100, {last}) a;",
        last = 100 + ACCOUNTS - 1
    ))
    .await;
    let mut config = db.config();
    config.admin_token = Some(TOKEN.into());
    let gw = start(config).await;

    let mut clients = Vec::new();
    let mut expected_subscriptions = 0;
    for copy in 0..3 {
        let mut client = Client::ready(gw.addr).await;
        let mut sent = 0;
        for k in 0..ACCOUNTS {
            if (k % 3) >= copy {
                let account = 100 + k;
                client
                    .send(subscribe(&user(
                        &format!("load-token-{account}"),
                        account,
                        account,
                    )))
                    .await;
                sent += 1;
            }
        }
        for _ in 0..sent {
            assert_eq!(
                client.next_significant().await["type"],
                "confirm_subscription"
            );
        }
        expected_subscriptions += sent;
        clients.push(client);
    }

    // Presence is written in batches: wait until the snapshot has everyone online.
    let (body, data) = tokio::time::timeout(common::WAIT, async {
        loop {
            let (status, body) = http_get(gw.addr, &format!("/inspect/data?token={TOKEN}")).await;
            assert_eq!(status, 200);
            let data: Value = serde_json::from_str(&body).unwrap();
            let online = data["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|account| account["online"]["users"] == 1);
            if online {
                return (body, data);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every listed account's user online in time");
    assert_eq!(data["totals"]["connections"], 3);
    assert_eq!(data["totals"]["subscriptions"], expected_subscriptions);
    assert_eq!(data["totals"]["user_subscriptions"], expected_subscriptions);
    assert_eq!(data["totals"]["contact_subscriptions"], 0);
    assert_eq!(data["totals"]["accounts"], ACCOUNTS);
    let accounts = data["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 50, "the list is bounded");
    assert_eq!(data["accounts_shown"], 50);
    // Largest first: the 20 accounts with three subscriptions (on three connections) lead.
    for account in &accounts[..20] {
        assert_eq!(account["subscriptions"], 3, "{account}");
        assert_eq!(account["connections"], 3, "{account}");
    }
    let sizes: Vec<i64> = accounts
        .iter()
        .map(|a| a["subscriptions"].as_i64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    assert!(!body.contains("load-token-"), "no token in the data");

    // A second request within the second is the same snapshot.
    let (_, first) = http_get(gw.addr, &format!("/inspect/data?token={TOKEN}")).await;
    let (_, again) = http_get(gw.addr, &format!("/inspect/data?token={TOKEN}")).await;
    let first: Value = serde_json::from_str(&first).unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    let age = again["generated_at"].as_f64().unwrap() - first["generated_at"].as_f64().unwrap();
    assert!(age == 0.0 || age >= 0.9, "a new snapshot after {age} s");
}

#[tokio::test]
async fn off_without_the_setting_and_closed_without_the_token() {
    let db = TestDb::new().await;
    let plain = start(db.config()).await;
    assert_eq!(http_get(plain.addr, "/inspect").await.0, 404);
    assert_eq!(http_get(plain.addr, "/inspect/data").await.0, 404);

    let mut config = db.config();
    config.admin_token = Some(TOKEN.into());
    let gw = start(config).await;
    for path in ["/inspect", "/inspect/data", "/inspect/data?token=inspect"] {
        let (status, body) = http_get(gw.addr, path).await;
        assert_eq!(status, 401, "{path}");
        assert!(!body.contains("totals"), "{path}: {body}");
    }
    let (status, page) = http_get(gw.addr, &format!("/inspect?token={TOKEN}")).await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
}

/// The ingress list follows each connection's health; every one is named, secrets masked.
#[tokio::test]
async fn ingress_health_follows_redis_and_names_the_broadcast_api() {
    let db = TestDb::new().await;
    let mut redis = common::redis::RedisServer::start().await;
    let mut config = db.config();
    config.admin_token = Some(TOKEN.into());
    config.redis_url = Some(redis.url());
    config.broadcast_key = Some("broadcast-secret".into());
    let gw = start(config).await;
    let mut up = gw.ingress_readiness("redis").expect("Redis ingress on");
    tokio::time::timeout(common::WAIT, up.wait_for(|up| *up))
        .await
        .expect("Redis connects")
        .unwrap();
    // The snapshot is at most a second old: poll until it shows `want` for Redis.
    let redis_state = |want: bool| async move {
        tokio::time::timeout(common::WAIT, async {
            loop {
                let (_, body) = http_get(gw.addr, &format!("/inspect/data?token={TOKEN}")).await;
                let data: Value = serde_json::from_str(&body).unwrap();
                let ingress = data["ingress"].as_array().unwrap().clone();
                let redis = ingress
                    .iter()
                    .find(|i| i["name"] == "redis")
                    .unwrap()
                    .clone();
                if redis["up"] == want {
                    return (body, ingress);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("the inspector follows Redis")
    };
    let (body, ingress) = redis_state(true).await;
    let named = |name: &str| ingress.iter().find(|i| i["name"] == name).unwrap().clone();
    assert_eq!(named("listen")["up"], true);
    assert_eq!(named("redis")["enabled"], true);
    assert_eq!(named("broadcast_api")["enabled"], true);
    assert!(!body.contains("broadcast-secret"));

    redis.kill().await;
    redis_state(false).await;
}
