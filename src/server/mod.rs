//! The process: builds every component, starts every background task in one place with
//! exactly the handles it needs ([`start`]), serves HTTP (`/cable`, `/health`, `/ready`,
//! `/metrics`) and the WebSocket upgrade, and stops it all in order ([`Running::shutdown`]:
//! stop accepting → `server_restart` to every client → drain → stop the tasks).
//!
//! # Files
//! - `start.rs`: builds every component and starts every task.
//! - `centrifugo.rs`: Centrifugo's configuration file, token key, connect proxy and routes.
//! - `http.rs`: the accept loop and every HTTP route but the upgrade.
//! - `upgrade.rs`: the WebSocket upgrades: what every upgrade must pass, then the protocol's
//!   handshake (ActionCable's on `/cable`, the topic WebSocket's token check) and the
//!   connection's task.

mod centrifugo;
mod http;
mod start;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use sqlx::PgPool;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::actioncable::session::Services;
use crate::auth::jwt::Verifier;
use crate::config::tuning::{DRAIN_TIMEOUT, SHUTDOWN_PRESENCE_TIMEOUT};
use crate::connection::slots::Slots;
use crate::db::{cause, ConfigError};
use crate::ingress::redis::RedisConfigError;
use crate::inspect::Inspector;
use crate::metrics::Metrics;
use crate::migrate::MigrateError;
use crate::presence::Presence;
use crate::router::Router;

pub use crate::actioncable::handshake::{SUBPROTOCOL, SUBPROTOCOL_EXT};
pub use start::start;

/// Why `serve` refuses to start. Each message is one line naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}. Fix DATABASE_URL.")]
    Config(#[from] ConfigError),
    #[error("cannot connect to the database at {url}: {} ({}). {}", cause(.source).what, crate::db::said(.source), cause(.source).fix)]
    Database { url: String, source: sqlx::Error },
    #[error("{} migration(s) pending ({}). Run `cable-gateway migrate` first.", .0.len(), .0.join(", "))]
    PendingMigrations(Vec<String>),
    #[error("the database schema does not match this gateway: {0}. Use a gateway built from the same migrations.")]
    Schema(MigrateError),
    #[error("{0}. Fix CABLE_REDIS_URL or CABLE_REDIS_CA_CERT.")]
    Redis(#[from] RedisConfigError),
    #[error("CABLE_CENTRIFUGO_CONFIG ({path}): {problem}. Fix the file or unset CABLE_CENTRIFUGO_CONFIG.")]
    CentrifugoConfig { path: String, problem: String },
    #[error("cannot listen on {addr}: {source}. Free the port or set CABLE_LISTEN.")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the HTTP side needs, grouped by the route that uses it.
struct Http {
    /// `/cable`.
    cable: CableRoute,
    /// `CABLE_TOPICS_PATH`.
    topics: TopicsRoute,
    /// `/connection/websocket`, when a Centrifugo token key is configured.
    centrifugo: Option<CentrifugoRoute>,
    /// `POST /api/<method>`, when a Centrifugo API key is configured.
    centrifugo_api: Option<crate::centrifugo::api::Api>,
    /// `/ready`.
    readiness: Readiness,
    /// `POST /_broadcast`, when `CABLE_BROADCAST_KEY` is set.
    broadcast: Option<BroadcastRoute>,
    /// `/inspect` and its token, when `CABLE_ADMIN_TOKEN` is set.
    inspector: Option<(Arc<Inspector>, String)>,
    /// `/metrics`.
    metrics: Arc<Metrics>,
    /// `CABLE_FIRST_BYTES_TIMEOUT`: every connection's request must begin within it.
    first_bytes_timeout: std::time::Duration,
}

/// What an upgrade of `/cable` checks and hands on.
struct CableRoute {
    services: Arc<Services>,
    gate: upgrade::Gate,
    /// Verifies signed connection tokens, when `CABLE_JWT_SECRET` is set.
    jwt: Option<Verifier>,
}

/// What an upgrade of `/connection/websocket` hands on (Centrifugo's client protocol).
struct CentrifugoRoute {
    services: Arc<crate::centrifugo::session::Services>,
    gate: upgrade::Gate,
}

/// What an upgrade of the topic WebSocket checks and hands on.
struct TopicsRoute {
    /// `CABLE_TOPICS_PATH`.
    path: String,
    services: Arc<crate::topics::session::Services>,
    gate: upgrade::Gate,
}

/// What `/ready` asks: the LISTEN connection, each enabled stream ingress (by name), the
/// database.
struct Readiness {
    listen: watch::Receiver<bool>,
    ingress: Vec<(&'static str, watch::Receiver<bool>)>,
    pool: PgPool,
}

/// The HTTP broadcast API.
struct BroadcastRoute {
    key: String,
    max_size: usize,
    pool: PgPool,
    metrics: Arc<Metrics>,
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    metrics: Arc<Metrics>,
    router: Arc<Router>,
    presence: Arc<Presence>,
    slots: Arc<Slots>,
    listen_ready: watch::Receiver<bool>,
    ingress_ready: Vec<(&'static str, watch::Receiver<bool>)>,
    shutdown: watch::Sender<bool>,
    /// Every open session (each is pinged): shutdown closes them through it.
    pings: Arc<crate::connection::pings::Pings>,
    stop: oneshot::Sender<()>,
    accept: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Every metric of this process.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `true` while the LISTEN connection is live: tests await it instead of sleeping.
    pub fn listen_readiness(&self) -> watch::Receiver<bool> {
        self.listen_ready.clone()
    }

    /// `true` while the named stream ingress (`redis`) is connected; `None` when disabled.
    pub fn ingress_readiness(&self, ingress: &str) -> Option<watch::Receiver<bool>> {
        self.ingress_ready
            .iter()
            .find(|(name, _)| *name == ingress)
            .map(|(_, ready)| ready.clone())
    }

    /// Graceful shutdown: stop accepting, `server_restart` to every client, wait (bounded)
    /// until they are closed, then stop every background task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.accept.await;
        tracing::info!(
            sessions = self.slots.open(),
            "shutting down: telling clients to reconnect"
        );
        // Clients are about to leave: their last sign of life is now, so the presence TTL
        // counts from here (they reconnect elsewhere and are refreshed there).
        let depart = self.presence.depart_all(&self.router);
        if let Ok(Err(e)) = tokio::time::timeout(SHUTDOWN_PRESENCE_TIMEOUT, depart).await {
            tracing::warn!(error = %e, "shutdown: could not refresh presence");
        }
        self.shutdown.send_replace(true);
        self.pings
            .close_all(crate::delivery::CloseReason::Disconnect(
                crate::actioncable::protocol::DisconnectReason::ServerRestart,
            ));
        if tokio::time::timeout(DRAIN_TIMEOUT, self.slots.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.slots.open(),
                "shutdown: sessions still open after the drain timeout"
            );
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// A plain-text answer.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// A plain-text answer with a numeric status (one this module chose, so always valid).
fn with_status(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
}
