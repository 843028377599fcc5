//! Test support: a fresh PostgreSQL database per test (migrated, demo data loaded), an
//! in-process gateway on port 0, and a WebSocket client that speaks the protocol.
//!
//! Tests need `CABLE_PG_ADMIN_URL` (a superuser URL); `scripts/test` provides a private
//! throwaway cluster.
#![allow(dead_code)]

pub mod events;
pub mod ext;
pub mod redis;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cable_gateway::config::ServeConfig;
use cable_gateway::server::{self, Running};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected frame may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn admin_url() -> String {
    std::env::var("CABLE_PG_ADMIN_URL").expect(
        "CABLE_PG_ADMIN_URL is not set: run the suite with scripts/test (it starts a throwaway PostgreSQL)",
    )
}

/// `postgres://u@h:p/db` with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{database}")
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A new database with the migrations applied and fixtures/demo.sql loaded.
    pub async fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cable_t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = with_database(&admin_url(), &name);
        let db = cable_gateway::db::Database::from_url(&url).expect("a valid URL");
        cable_gateway::migrate::apply(&db)
            .await
            .expect("migrations apply");
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("test pool");
        let demo =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo.sql"))
                .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(demo))
            .execute(&pool)
            .await
            .expect("demo fixtures load");
        TestDb { name, url, pool }
    }

    pub fn config(&self) -> ServeConfig {
        let mut config = ServeConfig::new(&self.url);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Inserts an outbox row; `extra` sets optional columns, e.g. `json!({"inbox_id": 1})`.
    pub async fn publish(&self, account_id: i64, event: &str, data: Value, extra: Value) -> i64 {
        publish(&self.pool, account_id, event, data, extra).await
    }
}

/// Inserts into cable_events through any executor (a transaction, too).
pub async fn publish<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    account_id: i64,
    event: &str,
    data: Value,
    extra: Value,
) -> i64 {
    let extra = |key: &str| extra.get(key).cloned().unwrap_or(Value::Null);
    let ids: Option<Vec<i64>> = extra("contact_inbox_ids")
        .as_array()
        .map(|a| a.iter().map(|v| v.as_i64().unwrap()).collect());
    sqlx::query_scalar(
        "INSERT INTO cable_events (account_id, event, data, inbox_id, contact_inbox_ids, user_id, private,
                                   actor_user_id, actor_contact_inbox_id, stream)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(account_id)
    .bind(event)
    .bind(data)
    .bind(extra("inbox_id").as_i64())
    .bind(ids)
    .bind(extra("user_id").as_i64())
    .bind(extra("private").as_bool().unwrap_or(false))
    .bind(extra("actor_user_id").as_i64())
    .bind(extra("actor_contact_inbox_id").as_i64())
    .bind(extra("stream").as_str().map(str::to_string))
    .fetch_one(executor)
    .await
    .expect("publish")
}

/// Starts a gateway on the database, waiting until its LISTEN connection is live.
pub async fn start(config: ServeConfig) -> Running {
    let running = server::start(config).await.expect("gateway starts");
    let mut live = running.listen_readiness();
    tokio::time::timeout(WAIT, live.wait_for(|live| *live))
        .await
        .expect("LISTEN connection live in time")
        .unwrap();
    running
}

/// Identifier of a user subscription.
pub fn user(token: &str, account_id: i64, user_id: i64) -> String {
    json!({"channel": "RoomChannel", "pubsub_token": token, "account_id": account_id, "user_id": user_id}).to_string()
}

/// Identifier of a contact subscription.
pub fn contact(token: &str, account_id: Option<i64>) -> String {
    match account_id {
        Some(a) => {
            json!({"channel": "RoomChannel", "pubsub_token": token, "account_id": a}).to_string()
        }
        None => json!({"channel": "RoomChannel", "pubsub_token": token}).to_string(),
    }
}

pub fn subscribe(identifier: &str) -> Value {
    json!({"command": "subscribe", "identifier": identifier})
}

pub fn unsubscribe(identifier: &str) -> Value {
    json!({"command": "unsubscribe", "identifier": identifier})
}

pub fn perform(identifier: &str, action: &str) -> Value {
    json!({"command": "message", "identifier": identifier, "data": json!({"action": action}).to_string()})
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    /// The sub-protocol the server selected.
    pub protocol: Option<String>,
}

impl Client {
    /// Connects offering `actioncable-v1-json`, like the official client.
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        Client::connect_with(
            addr,
            &["actioncable-v1-json", "actioncable-unsupported"],
            None,
        )
        .await
        .expect("websocket connects")
    }

    pub async fn connect_with(
        addr: std::net::SocketAddr,
        protocols: &[&str],
        origin: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        Client::connect_path(addr, "/cable", protocols, origin).await
    }

    /// Connects to `path` (which may carry a query) offering `protocols`.
    pub async fn connect_path(
        addr: std::net::SocketAddr,
        path: &str,
        protocols: &[&str],
        origin: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{addr}{path}").into_client_request()?;
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&protocols.join(", ")).unwrap(),
            );
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Ok(Client { ws, protocol })
    }

    /// Connects and reads the welcome.
    pub async fn ready(addr: std::net::SocketAddr) -> Client {
        let mut client = Client::connect(addr).await;
        assert_eq!(client.next().await, json!({"type": "welcome"}));
        client
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame, pings included. Panics on close or timeout.
    pub async fn next_raw(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame readable");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server frames are JSON")
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame that is not a ping. The deadline covers the frames skipped too: pings
    /// come every 3 s, so a per-frame timeout alone would wait forever for a missing frame.
    pub async fn next(&mut self) -> Value {
        let next = async {
            loop {
                let frame = self.next_raw().await;
                if frame["type"] != "ping" {
                    return frame;
                }
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .expect("a frame other than a ping in time")
    }

    /// The next frame that is neither a ping nor a presence.update message.
    pub async fn next_significant(&mut self) -> Value {
        let next = async {
            loop {
                let frame = self.next().await;
                if frame["message"]["event"] != "presence.update" {
                    return frame;
                }
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .expect("a frame other than a ping or presence.update in time")
    }

    /// Subscribes and expects the confirm.
    pub async fn subscribe_ok(&mut self, identifier: &str) {
        self.send(subscribe(identifier)).await;
        assert_eq!(self.next_significant().await, confirm(identifier));
    }

    /// The next event message: (identifier, message), skipping pings and presence.
    pub async fn event(&mut self) -> (String, Value) {
        let frame = self.next_significant().await;
        let identifier = frame["identifier"]
            .as_str()
            .unwrap_or_else(|| panic!("not a message: {frame}"))
            .to_string();
        assert!(
            frame.get("type").is_none(),
            "expected a message, got {frame}"
        );
        (identifier, frame["message"].clone())
    }

    /// Reads until the socket closes; returns every text frame seen before the close.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return frames,
                Some(Ok(_)) => {}
            }
        }
    }
}

pub fn confirm(identifier: &str) -> Value {
    json!({"identifier": identifier, "type": "confirm_subscription"})
}

pub fn reject(identifier: &str) -> Value {
    json!({"identifier": identifier, "type": "reject_subscription"})
}

/// A metric's value from the Prometheus exposition (sum over label sets matching `filter`).
pub fn metric(running: &Running, name: &str, filter: &str) -> f64 {
    running
        .metrics()
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A raw HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], b"").await
}

/// A raw HTTP/1.1 request with extra header lines and a body; returns (status, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading the whole body; a failed write is its answer.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A hand-made upgrade request (clients refuse some answers we must still give, such as a 101
/// without a sub-protocol when one was offered). Returns the status and the lower-cased headers.
pub async fn raw_upgrade(
    addr: std::net::SocketAddr,
    extra_headers: &str,
) -> (u16, Vec<(String, String)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /cable HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n == 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// The real `cable-gateway` binary running as its own process (`serve --listen 127.0.0.1:0`),
/// killed (SIGKILL) when dropped, so a failing test never leaves one behind.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    /// Kept open: the process may still write to its stdout.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl GatewayProcess {
    /// Starts the binary on `database_url` with extra environment variables and waits for its
    /// readiness line, `cable-gateway listening on <addr>`.
    pub async fn spawn(database_url: &str, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::spawn_with(database_url, env, std::process::Stdio::inherit()).await
    }

    /// Like [`GatewayProcess::spawn`], with the process's stderr (its logs) going to `stderr`;
    /// with `Stdio::piped()` they are read from `child.stderr`.
    pub async fn spawn_with(
        database_url: &str,
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> GatewayProcess {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cable-gateway"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the gateway binary starts");
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = stdout.next_line().await.expect("stdout readable") {
                if let Some(addr) = line.strip_prefix("cable-gateway listening on ") {
                    return addr.trim().parse().expect("a socket address");
                }
            }
            panic!("the gateway exited before printing its listening line")
        })
        .await
        .expect("the listening line in time");
        GatewayProcess {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// Polls `/ready` until it answers 200 (the database answers and LISTEN is live).
    pub async fn ready(&self) {
        tokio::time::timeout(WAIT, async {
            loop {
                if http_get(self.addr, "/ready").await.0 == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("/ready answers 200 in time");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends SIGTERM (through `kill`, no libc needed).
    pub async fn terminate(&self) {
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `n` users of account 1 (ids from `first`, tokens `bulk-<id>`, agents without inboxes) in
/// the database, and one subscription of each registered straight in `router`, without a
/// connection: for passes over many subscriptions. Returns the subscription ids by user id.
pub async fn bulk_user_subscriptions(
    db: &TestDb,
    router: &cable_gateway::router::Router,
    metrics: &std::sync::Arc<cable_gateway::metrics::Metrics>,
    first: i64,
    n: i64,
) -> std::collections::HashMap<i64, u64> {
    use std::sync::Arc;

    use cable_gateway::auth::{Membership, Principal};
    use cable_gateway::delivery::{SessionHandle, Subscription};

    db.exec(&format!(
        "INSERT INTO users (id, name, email, pubsub_token)
           SELECT i, 'bulk', 'bulk' || i || '@example.com', 'bulk-' || i
             FROM generate_series({first}, {last}) i;
         INSERT INTO account_users (account_id, user_id, role, availability, auto_offline)
           SELECT 1, i, 0, 0, true FROM generate_series({first}, {last}) i;",
        last = first + n - 1
    ))
    .await;
    let mut ids = std::collections::HashMap::new();
    for user_id in first..first + n {
        let principal = Principal::User {
            account_id: 1,
            user_id,
            membership: Membership {
                administrator: false,
                availability: 0,
                auto_offline: true,
                inbox_ids: Arc::from([]),
            },
        };
        let sub = Subscription::new(
            Arc::from(format!(
                "{{\"channel\":\"RoomChannel\",\"user\":{user_id}}}"
            )),
            cable_gateway::actioncable::session::actioncable::framing("{}"),
            SessionHandle::new(16, metrics.clone()),
            &principal,
            None,
        );
        ids.insert(user_id, sub.id);
        let token = Arc::from(format!("bulk-{user_id}"));
        router.register(sub, principal, token, None, None, false);
    }
    ids
}
