//! The process: builds every component, starts every background task in one place with
//! exactly the handles it needs ([`start`]), serves HTTP (`/cable`, `/health`, `/ready`,
//! `/metrics`) and the WebSocket upgrade, and stops it all in order ([`Running::shutdown`]:
//! stop accepting → `server_restart` to every client → drain → stop the tasks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::auth::batch::Batcher;
use crate::auth::jwt::{self, Refusal, Verifier};
use crate::auth::AuthCache;
use crate::config::tuning::{
    ACCEPT_RETRY, DRAIN_TIMEOUT, HISTORY_SWEEP, LISTEN_BACKLOG, POOL_ACQUIRE_TIMEOUT,
    READY_QUERY_TIMEOUT, SHUTDOWN_PRESENCE_TIMEOUT,
};
use crate::config::ServeConfig;
use crate::connections::Slots;
use crate::db::{cause, ConfigError, Database};
use crate::ingress::outbox;
use crate::ingress::postgres::PgAdapter;
use crate::ingress::redis::{RedisConfigError, RedisIngress};
use crate::ingress::streams::Streams;
use crate::inspect::log::DisconnectLog;
use crate::inspect::{self, Inspector};
use crate::listen::Listen;
use crate::metrics::Metrics;
use crate::migrate::{self, MigrateError};
use crate::presence::chatwoot::ChatwootPresence;
use crate::presence::{self, Presence};
use crate::resume::replay::History;
use crate::resume::rings::Rings;
use crate::resume::sessions::{self, Sessions};
use crate::revalidate::{self, Revalidation};
use crate::router::Router;
use crate::session::{Limits, Services};

/// The sub-protocol of ActionCable.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// AnyCable's extended protocol (CONTRACT §8), preferred when offered.
pub const SUBPROTOCOL_EXT: &str = "actioncable-v1-ext-json";
/// The header a client may name the session to restore in (instead of `?sid=`).
const RESTORE_SID_HEADER: &str = "x-anycable-restore-sid";
/// The header that may carry a signed connection token (instead of `?jid=`).
const JID_HEADER: &str = "x-jid";
/// The sub-protocol prefix that may carry a signed connection token (browsers cannot set
/// headers on a WebSocket); never echoed.
const TOKEN_SUBPROTOCOL: &str = "anycable-token.";

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
    #[error("cannot listen on {addr}: {source}. Free the port or set CABLE_LISTEN.")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the HTTP side needs.
struct Http {
    services: Arc<Services>,
    slots: Arc<Slots>,
    allowed_origins: Vec<String>,
    listen_ready: watch::Receiver<bool>,
    /// Each enabled stream ingress connection, by name.
    ingress_ready: Vec<(&'static str, watch::Receiver<bool>)>,
    pool: PgPool,
    /// The HTTP broadcast API's key, when it is on.
    broadcast_key: Option<String>,
    /// Verifies signed connection tokens, when `CABLE_JWT_SECRET` is set.
    jwt: Option<Verifier>,
    /// The inspector and its token, when `CABLE_ADMIN_TOKEN` is set.
    inspector: Option<(Arc<Inspector>, String)>,
    max_broadcast_size: usize,
    /// `CABLE_FIRST_BYTES_TIMEOUT`.
    first_bytes_timeout: std::time::Duration,
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
    pings: Arc<crate::session::pings::Pings>,
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
                crate::protocol::DisconnectReason::ServerRestart,
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

/// Connects, checks the schema, binds, builds every component and starts every task.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    let db = Database::from_url(&config.database.database_url)?;
    let database = |source| StartError::Database {
        url: db.redacted(),
        source,
    };
    let pool = db
        .connect_pool(config.db_pool_size, POOL_ACQUIRE_TIMEOUT)
        .await
        .map_err(database)?;
    match migrate::pending(&pool).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => return Err(StartError::PendingMigrations(pending)),
        Err(MigrateError::Database(e)) => return Err(database(e)),
        Err(e) => return Err(StartError::Schema(e)),
    }
    let cursor = outbox::Cursor::now(&pool).await.map_err(database)?;
    let epoch: Arc<str> = outbox::epoch(&pool).await.map_err(database)?.into();
    let addr = config.listen;
    let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    // The components.
    let metrics = Arc::new(Metrics::new());
    let rings = Arc::new(Rings::new(config.history_limit, config.history_ttl));
    let router = Arc::new(Router::new(metrics.clone(), rings, cursor.offset()));
    let (sessions, session_writes) = Sessions::new(pool.clone(), config.session_ttl);
    let rounds = Arc::new(Notify::new());
    let appender = outbox::Appender::new(pool.clone(), rounds.clone());
    let history = Arc::new(History {
        pool: pool.clone(),
        appender: appender.clone(),
        epoch,
        max_span: config.history_max_span,
        max_event_size: config.max_event_size,
        metrics: metrics.clone(),
    });
    let (batcher, batching) = Batcher::new(pool.clone(), metrics.clone());
    let auth = AuthCache::new(
        batcher,
        metrics.clone(),
        config.auth_cache_ttl,
        config.auth_negative_ttl,
        config.auth_cache_size,
    );
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let redis_url = nonempty(&config.redis_url);
    let redis_client = match &redis_url {
        Some(url) => Some(crate::ingress::redis::client(
            url,
            config.redis_ca_cert.as_deref(),
        )?),
        None => None,
    };
    let (chatwoot, chatwoot_writer) = match redis_client.clone() {
        Some(client) if config.chatwoot_presence => {
            let (presence, writer) = ChatwootPresence::new(client);
            (Some(presence), Some(writer))
        }
        _ => (None, None),
    };
    let (presence, answers) = Presence::new(
        pool.clone(),
        config.presence_ttl,
        config.presence_push_budget,
        metrics.clone(),
        chatwoot,
    );
    let doorbell = Arc::new(Notify::new());
    let auth_changed = Arc::new(Notify::new());
    let mut listen = Listen::new(db.clone(), metrics.clone());
    {
        // A change to the identity tables: new subscribes must not be answered from the
        // cache, and live ones are re-checked.
        let (ring, cache) = (auth_changed.clone(), auth.clone());
        listen.channel(
            revalidate::CHANNEL,
            Box::new(move |_| {
                cache.invalidate_all();
                ring.notify_one();
            }),
        );
        let ring = doorbell.clone();
        listen.channel(outbox::CHANNEL, Box::new(move |_| ring.notify_one()));
        let ring = rounds.clone();
        listen.channel(outbox::ROUNDS_CHANNEL, Box::new(move |_| ring.notify_one()));
        let restored = sessions.clone();
        listen.channel(sessions::CHANNEL, Box::new(move |sid| restored.taken(sid)));
        let announced = presence.clone();
        listen.channel(presence::CHANNEL, Box::new(move |p| announced.changed(p)));
        // Whatever was announced while the connection was down is lost: catch up.
        let (doorbell, presence, router) = (doorbell.clone(), presence.clone(), router.clone());
        let rounds = rounds.clone();
        let auth_changed = auth_changed.clone();
        listen.on_connect(Box::new(move || {
            doorbell.notify_one();
            rounds.notify_one();
            auth_changed.notify_one();
            presence.resync(router.accounts());
        }));
    }
    let streams = Arc::new(Streams::new(
        router.clone(),
        metrics.clone(),
        config.max_broadcast_size,
    ));
    let prefix = nonempty(&config.rails_channel_prefix);
    let rails_postgres = config.rails_postgres.then(|| {
        let adapter = PgAdapter::new(prefix.clone(), listen.handle(), streams.clone());
        let notified = adapter.clone();
        listen.on_channel(Box::new(move |channel, payload| {
            notified.notified(channel, payload)
        }));
        adapter
    });
    let listen_ready = listen.readiness();
    let (shutdown, shutting_down) = watch::channel(false);
    let redis = match (redis_client, &redis_url) {
        (Some(client), Some(url)) => Some(RedisIngress::new(
            client,
            url,
            prefix,
            streams.clone(),
            metrics.clone(),
        )),
        _ => None,
    };
    let mut ingress_ready = Vec::new();
    let slots = Slots::new(config.max_connections, config.db_pool_size);

    // The tasks, each with exactly what it needs.
    let mut tasks = vec![
        tokio::spawn(batching),
        tokio::spawn(listen.run()),
        tokio::spawn(appender.run(doorbell, config.outbox_poll)),
        tokio::spawn(outbox::run(
            pool.clone(),
            router.clone(),
            metrics.clone(),
            cursor,
            rounds,
            config.outbox_poll,
            config.max_event_size,
        )),
        tokio::spawn(session_writes),
        tokio::spawn({
            let router = router.clone();
            async move {
                let mut tick = tokio::time::interval(HISTORY_SWEEP);
                loop {
                    tick.tick().await;
                    router.sweep_history();
                }
            }
        }),
        tokio::spawn(outbox::prune(
            pool.clone(),
            metrics.clone(),
            config.event_retention,
        )),
        tokio::spawn(presence.clone().run(answers, router.clone())),
        tokio::spawn(revalidate::run(
            Revalidation {
                pool: pool.clone(),
                router: router.clone(),
                auth: auth.clone(),
                metrics: metrics.clone(),
            },
            revalidate::Schedule {
                interval: config.revalidate_interval,
                full_interval: config.revalidate_full_interval,
                changed: auth_changed,
                listening: listen_ready.clone(),
            },
        )),
    ];
    if let Some(writer) = chatwoot_writer {
        tasks.push(tokio::spawn(ChatwootPresence::run(writer)));
    }
    if let Some(redis) = redis {
        ingress_ready.push((crate::ingress::redis::INGRESS, redis.readiness()));
        tasks.push(tokio::spawn(redis.run()));
    }
    let disconnects = Arc::new(DisconnectLog::default());
    let pings = Arc::new(crate::session::pings::Pings::default());
    tasks.push(tokio::spawn(pings.clone().run()));
    let inspector = nonempty(&config.admin_token).map(|token| {
        let inspector = Inspector::new(inspect::Sources {
            metrics: metrics.clone(),
            router: router.clone(),
            pool: pool.clone(),
            presence_ttl: config.presence_ttl,
            disconnects: disconnects.clone(),
            listen_ready: listen_ready.clone(),
            ingress_ready: ingress_ready.clone(),
            database: db.redacted(),
            redis: redis_url.as_deref().map(crate::db::redact),
            broadcast_api: nonempty(&config.broadcast_key).is_some(),
        });
        tasks.push(tokio::spawn(inspector.clone().sample()));
        (inspector, token)
    });
    let http = Arc::new(Http {
        services: Arc::new(Services {
            router: router.clone(),
            auth,
            presence: presence.clone(),
            metrics: metrics.clone(),
            limits: Limits::from(&config),
            shutdown: shutting_down,
            rails_postgres,
            sessions,
            history,
            pool: pool.clone(),
            disconnects,
            pings: pings.clone(),
        }),
        slots: slots.clone(),
        allowed_origins: config.allowed_origins.clone(),
        listen_ready: listen_ready.clone(),
        ingress_ready: ingress_ready.clone(),
        pool,
        broadcast_key: nonempty(&config.broadcast_key),
        jwt: config.jwt_secret.as_deref().and_then(Verifier::new),
        inspector,
        max_broadcast_size: config.max_broadcast_size,
        first_bytes_timeout: config.first_bytes_timeout,
    });
    let (stop, stopped) = oneshot::channel();
    let accept = tokio::spawn(accept_loop(http, listener, stopped));
    tracing::info!(
        %addr,
        fd_limit = crate::connections::fd_limit(),
        max_connections = slots.max(),
        "listening"
    );
    Ok(Running {
        addr,
        metrics,
        router,
        presence,
        slots,
        listen_ready,
        ingress_ready,
        shutdown,
        pings,
        stop,
        accept,
        tasks,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(http: Arc<Http>, listener: TcpListener, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(http.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

async fn serve_connection(http: Arc<Http>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // hyper takes 16 KiB of buffers per connection as it starts (8 KiB to write, 8 KiB on the
    // first read), and gives them back when the upgrade is answered. Starting it only once the
    // request is there keeps a connect storm's clients that have not sent it yet at about
    // 1.3 KB each (this task and the socket's registration), instead of leaving 16 KiB apiece
    // freed between the connections that stay (an allocator that keeps freed memory, as
    // glibc's did, keeps such holes resident). A client silent for
    // `CABLE_FIRST_BYTES_TIMEOUT` is closed. `peek`, not `readable`: a fresh socket may report
    // readable before anything arrived. Once it has begun, the request's head must be complete
    // within the same time (hyper's header timeout; it would otherwise wait for ever on a
    // client that sends a byte now and then), and so must each later request on a kept-alive
    // connection.
    let mut first = [0u8; 1];
    match tokio::time::timeout(http.first_bytes_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => return, // closed before sending anything
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed before its request");
            return;
        }
        Err(_) => {
            tracing::debug!("connection closed: no request within the first-bytes timeout");
            return;
        }
    }
    let header_timeout = http.first_bytes_timeout;
    let service = service_fn(move |request| route(http.clone(), request));
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
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
    http: Arc<Http>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Every connection's upgrade passes through this future, held by hyper while it answers;
    // the other endpoints' steps are boxed so that it stays small in a connect storm.
    Ok(match request.uri().path() {
        "/cable" => upgrade(http, request),
        "/_broadcast" if http.broadcast_key.is_some() => Box::pin(broadcast(&http, request)).await,
        "/inspect" | "/inspect/data" => match &http.inspector {
            Some((inspector, token)) => {
                Box::pin(inspect::http::answer(inspector, token, &request)).await
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => Box::pin(ready(&http)).await,
        "/metrics" => {
            let body = http.services.metrics.encode();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn with_status(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
}

/// `POST /_broadcast` ([`crate::ingress::http`]).
async fn broadcast(http: &Http, request: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::ingress::http as api;
    use http_body_util::BodyExt;
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let key = http.broadcast_key.as_deref().unwrap_or_default();
    let given = request.headers().get(hyper::header::AUTHORIZATION);
    if !api::authorized(given.map(|v| v.as_bytes()), key) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer key\n");
    }
    let limit = api::body_limit(http.max_broadcast_size);
    let body = match http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return with_status(413, format!("the body is over {limit} bytes\n"));
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "could not read the body\n"),
    };
    let answer = match api::parse(&body, http.max_broadcast_size) {
        Ok(broadcasts) => api::publish(&http.pool, &http.services.metrics, &broadcasts).await,
        Err(refused) => refused,
    };
    with_status(answer.status, answer.body + "\n")
}

async fn ready(http: &Http) -> Response<Full<Bytes>> {
    if !*http.listen_ready.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "LISTEN connection down\n");
    }
    for (ingress, ready) in &http.ingress_ready {
        if !*ready.borrow() {
            let body = format!("{ingress} connection down\n");
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return response;
        }
    }
    let ping = sqlx::query("SELECT 1").execute(&http.pool);
    match tokio::time::timeout(READY_QUERY_TIMEOUT, ping).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}

/// The sub-protocols the client offered (the header may repeat and hold lists).
fn offered(request: &Request<Incoming>) -> impl Iterator<Item = &str> {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the client offered `protocol`.
fn offers(request: &Request<Incoming>, protocol: &str) -> bool {
    offered(request).any(|p| p == protocol)
}

/// A query parameter's value.
fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    })
}

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The session an extended-protocol client asks to restore: `?sid=` or the header.
fn restore_sid(request: &Request<Incoming>) -> Option<String> {
    query_param(request, "sid")
        .or_else(|| header(request, RESTORE_SID_HEADER))
        .filter(|sid| !sid.is_empty() && sid.len() <= 128)
}

/// The signed connection token of the request (`?jid=`, `X-JID`, sub-protocol
/// `anycable-token.<token>`), checked by `verifier`; `None` when none is given. Several must
/// be equal.
fn connection_token(
    request: &Request<Incoming>,
    verifier: &Verifier,
) -> Option<Result<jwt::ConnectionToken, Refusal>> {
    let mut given = query_param(request, "jid")
        .into_iter()
        .chain(header(request, JID_HEADER))
        .chain(
            offered(request)
                .filter_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL))
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    let token = given.next()?;
    if given.any(|other| other != token) {
        return Some(Err(Refusal::Unauthorized("tokens_differ")));
    }
    Some(verifier.verify(&token, crate::clock::unix_seconds()))
}

fn upgrade(http: Arc<Http>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let metrics = &http.services.metrics;
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(&http.allowed_origins, origin) {
        tracing::debug!(origin, "upgrade refused: origin not allowed");
        metrics.refused("origin");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if *http.services.shutdown.borrow() {
        metrics.refused("shutting_down");
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Some(slot) = http.slots.try_take() else {
        metrics.refused("connection_limit");
        tracing::warn!(
            limit = http.slots.max(),
            "upgrade refused: connection limit reached"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    };
    let ext = offers(&request, SUBPROTOCOL_EXT);
    let actioncable = ext || offers(&request, SUBPROTOCOL);
    let handshake = Box::new(crate::session::Handshake {
        ext,
        restore_sid: if ext { restore_sid(&request) } else { None },
        token: http
            .jwt
            .as_ref()
            .and_then(|verifier| connection_token(&request, verifier)),
    });
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad websocket upgrade\n");
        }
    };
    tokio::spawn(crate::session::serve(
        http.services.clone(),
        upgraded,
        handshake,
        slot,
    ));
    let (mut parts, _) = response.into_parts();
    if actioncable {
        // The official JS client ignores every frame when this header is missing.
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(if ext { SUBPROTOCOL_EXT } else { SUBPROTOCOL }),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
