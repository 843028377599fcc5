//! A real Redis for a test: Debian's `redis-server` (scripts/test installs it when missing) on
//! a free loopback port, plain or TLS, in its own temporary directory, keeping nothing on
//! disk. It is ready when it says so on stdout; it is killed when dropped.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

/// Certificate files for a TLS server.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's certificate, PEM: what a client needs to trust the server.
    pub ca_pem: Vec<u8>,
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(None).await
    }

    pub async fn start_tls(tls: TlsFiles) -> RedisServer {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<TlsFiles>) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cable-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            dir,
            tls,
            child: None,
        };
        server.run().await;
        server
    }

    /// Starts the server process (again, on the same port) and waits until it is ready.
    pub async fn run(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        command.args(["--protected-mode", "no", "--loglevel", "notice"]);
        command.arg("--dir").arg(&self.dir);
        match &self.tls {
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
            Some(tls) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
                command.arg("--tls-cert-file").arg(&tls.cert);
                command.arg("--tls-key-file").arg(&tls.key);
                command.args(["--tls-auth-clients", "no"]);
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (scripts/test installs Debian's redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        };
        let ready = tokio::time::timeout(WAIT, ready).await;
        assert!(matches!(ready, Ok(true)), "redis-server did not start");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Kills the server (as an outage would) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    /// PUBLISHes `payload` on `channel`; returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &str) -> i64 {
        let mut conn = self.connect().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// ZSCORE of `member` in the sorted set `key`.
    pub async fn zscore(&self, key: &str, member: i64) -> Option<f64> {
        let mut conn = self.connect().await;
        redis::cmd("ZSCORE")
            .arg(key)
            .arg(member)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    async fn connect(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some(tls) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.clone()),
                };
                redis::Client::build_with_tls(self.url(), certs).unwrap()
            }
        };
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
