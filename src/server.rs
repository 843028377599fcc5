//! The listener: accept loop, HTTP routes, the WebSocket upgrade, and the shutdown order
//! (stop accepting → `server_restart` to every client → drain → exit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sqlx::postgres::PgPoolOptions;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::config::ServeConfig;
use crate::gateway::Gateway;
use crate::migrate::{self, MigrateError};
use crate::outbox;
use crate::presence::{Presence, PresenceKey};

/// The only sub-protocol we speak.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// How long shutdown waits for clients to be told and closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Why `serve` refuses to start. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach the database at {url}: {source}. Start PostgreSQL or fix DATABASE_URL.")]
    Database { url: String, source: sqlx::Error },
    #[error("{} migration(s) pending ({}). Run `cable-gateway migrate` first.", .0.len(), .0.join(", "))]
    PendingMigrations(Vec<String>),
    #[error("the database schema does not match this gateway: {0}. Use a gateway built from the same migrations.")]
    Schema(MigrateError),
    #[error("cannot listen on {addr}: {source}. Free the port or set CABLE_LISTEN.")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: oneshot::Sender<()>,
    accept: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful shutdown: stop accepting, `server_restart` to every client, wait (bounded)
    /// until they are closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.accept.await;
        for task in self.background {
            task.abort();
        }
    }
}

/// Connects, checks the schema, binds and starts every task.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    let url = config.database.database_url.clone();
    let database = |source| StartError::Database {
        url: redact(&url),
        source,
    };
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .map_err(database)?;
    match migrate::pending(&pool).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => return Err(StartError::PendingMigrations(pending)),
        Err(MigrateError::Database(e)) => return Err(database(e)),
        Err(e) => return Err(StartError::Schema(e)),
    }
    let cursor = outbox::Cursor::now(&pool).await.map_err(database)?;
    let addr = config.listen;
    let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    let gateway = Gateway::new(config, pool);
    let doorbell = Arc::new(Notify::new());
    let background = vec![
        tokio::spawn(outbox::listen(gateway.clone(), doorbell.clone())),
        tokio::spawn(outbox::run(gateway.clone(), cursor, doorbell)),
        tokio::spawn(outbox::prune(gateway.clone())),
        tokio::spawn(Presence::run(gateway.clone())),
        tokio::spawn(crate::revalidate::run(gateway.clone())),
    ];
    let (stop, stopped) = oneshot::channel();
    let accept = tokio::spawn(accept_loop(gateway.clone(), listener, stopped));
    tracing::info!(
        %addr,
        fd_limit = crate::gateway::fd_limit(),
        max_connections = gateway.max_connections(),
        "listening"
    );
    Ok(Running {
        addr,
        gateway,
        stop,
        accept,
        background,
    })
}

/// Pending connections the kernel may hold for us (capped by `net.core.somaxconn`). tokio's
/// default of 1024 overflows when thousands of clients reconnect at once, and every
/// overflowed SYN costs its client a retransmit timeout (1 s, then 3 s).
const LISTEN_BACKLOG: u32 = 65535;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(gateway.clone(), stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        sessions = gateway.sessions(),
        "shutting down: telling clients to reconnect"
    );
    // Clients are about to leave: their last sign of life is now, so the presence TTL counts
    // from here (they reconnect elsewhere and are refreshed there).
    let leaving = gateway
        .router
        .snapshot()
        .iter()
        .map(|(_, p, _)| PresenceKey::from(p))
        .collect();
    let touch = gateway.presence.touch(&leaving);
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), touch).await {
        tracing::warn!(error = %e, "shutdown: could not refresh presence");
    }
    gateway.begin_shutdown();
    if tokio::time::timeout(DRAIN_TIMEOUT, gateway.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = gateway.sessions(),
            "shutdown: sessions still open after the drain timeout"
        );
    }
}

async fn serve_connection(gateway: Arc<Gateway>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| route(gateway.clone(), request));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn route(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match request.uri().path() {
        "/cable" => upgrade(gateway, request),
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => ready(&gateway).await,
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

async fn ready(gateway: &Gateway) -> Response<Full<Bytes>> {
    if !gateway.listener_live() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "event listener down\n");
    }
    let ping = sqlx::query("SELECT 1").execute(&gateway.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}

/// Whether the client offered `actioncable-v1-json` (the header may repeat and hold lists).
fn offers_actioncable(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

fn upgrade(gateway: Arc<Gateway>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(&gateway.config.allowed_origins, origin) {
        tracing::debug!(origin, "upgrade refused: origin not allowed");
        gateway.metrics.refused("origin");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if gateway.is_shutting_down() {
        gateway.metrics.refused("shutting_down");
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Some(slot) = gateway.try_session() else {
        gateway.metrics.refused("connection_limit");
        tracing::warn!(
            limit = gateway.max_connections(),
            "upgrade refused: connection limit reached"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    };
    let actioncable = offers_actioncable(&request);
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad websocket upgrade\n");
        }
    };
    tokio::spawn(async move {
        match upgraded.await {
            Ok(ws) => crate::session::run(gateway, ws.into_inner(), slot).await,
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
    let (mut parts, _) = response.into_parts();
    if actioncable {
        // The official JS client ignores every frame when this header is missing.
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("postgres:///x"), "postgres:///x");
    }
}
