//! One WebSocket connection: a reader (commands, in order) and a writer (the welcome, queued
//! frames, the farewell), joined by the connection's bounded [`crate::delivery::SendQueue`].
//! The TCP socket is shared ([`socket`]): deliveries and pings ([`pings`], one timer for the
//! process) are written to it directly while nothing is queued.
//!
//! Lifecycle: the writer writes `welcome` first; the reader then processes commands until the
//! client leaves or something closes the session ([`crate::delivery::SendQueue::close`]: too
//! slow, shutdown, bad input, database outage). Either way every subscription is
//! unregistered, the writer says goodbye (queued frames, `disconnect`, close frame), and one
//! log line records the reason and duration.
//!
//! Files: [`actioncable`] frames the core's messages and answers as ActionCable does,
//! [`frame`] reads frames and assembles messages, [`rate`] is the command-rate bucket,
//! [`reader`] dispatches commands, [`subscriptions`] is the connection's own registry,
//! [`writer`] writes what is queued, [`socket`] shares the TCP socket, [`pings`] pings every
//! connection.

pub mod actioncable;
pub mod frame;
pub mod pings;
pub mod rate;
pub mod reader;
pub mod socket;
pub mod subscriptions;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::actioncable::protocol::{reply, DisconnectReason};
use crate::auth::jwt::{ConnectionIdentity, ConnectionToken, Refusal};
use crate::auth::{token_prefix, AuthCache, Principal};
use crate::config::ServeConfig;
use crate::delivery::{CloseReason, SessionHandle};
use crate::ingress::postgres::PgAdapter;
use crate::inspect::log::{Disconnect, DisconnectLog};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::resume::replay::History;
use crate::resume::sessions::Sessions;
use crate::router::Router;
use reader::Reader;
use subscriptions::SessionSubscriptions;

/// The per-connection limits (settings, see [`ServeConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_size: usize,
    pub max_subscriptions: usize,
    pub max_command_rate: u32,
    pub max_rejects: u32,
    pub send_queue: usize,
}

impl From<&ServeConfig> for Limits {
    fn from(config: &ServeConfig) -> Limits {
        Limits {
            max_frame_size: config.max_frame_size,
            max_subscriptions: config.max_subscriptions,
            max_command_rate: config.max_command_rate,
            max_rejects: config.max_rejects,
            send_queue: config.send_queue,
        }
    }
}

/// Exactly what a session needs of the process.
pub struct Services {
    pub router: Arc<Router>,
    pub auth: AuthCache,
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Rails' PostgreSQL adapter ingress, when on: a subscription's streams are LISTENed to
    /// before its confirm.
    pub rails_postgres: Option<Arc<PgAdapter>>,
    /// Becomes `true` when the process shuts down (open sessions are then closed with
    /// `server_restart` through [`Services::pings`], which holds every one).
    pub shutdown: watch::Receiver<bool>,
    /// Extended protocol: restorable sessions, and history replay.
    pub sessions: Arc<Sessions>,
    pub history: Arc<History>,
    /// Writes what the `typing` action sends to the outbox.
    pub typing: crate::typing::Publisher,
    /// Where an ended connection is recorded for the inspector.
    pub disconnects: Arc<DisconnectLog>,
    /// The one timer that pings every connection.
    pub pings: Arc<pings::Pings>,
}

/// What the upgrade request asked for.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The extended protocol (`actioncable-v1-ext-json`) was negotiated.
    pub ext: bool,
    /// The session to restore (`?sid=` or `X-ANYCABLE-RESTORE-SID`).
    pub restore_sid: Option<String>,
    /// The signed connection token, verified (only with `CABLE_JWT_SECRET`).
    pub token: Option<Result<ConnectionToken, Refusal>>,
}

/// Who a connection with a signed token is: its identity resolved to the pubsub token its
/// subscriptions act with, or the reason to end it before the welcome.
async fn authenticate(
    services: &Services,
    token: Option<Result<ConnectionToken, Refusal>>,
    session: u64,
) -> Result<Option<ConnectionIdentity>, DisconnectReason> {
    let refused = |why: &str| {
        tracing::info!(session, reason = why, "connection token refused");
    };
    let token = match token {
        None => return Ok(None),
        Some(Ok(token)) => token,
        Some(Err(Refusal::Expired)) => {
            refused("expired");
            return Err(DisconnectReason::TokenExpired);
        }
        Some(Err(Refusal::Unauthorized(why))) => {
            refused(why);
            return Err(DisconnectReason::Unauthorized);
        }
    };
    match services.auth.identity(token.identity).await {
        Ok(Some(pubsub_token)) => Ok(Some(ConnectionIdentity {
            identity: token.identity,
            exp: token.exp,
            pubsub_token,
        })),
        Ok(None) => {
            refused("names_nobody");
            Err(DisconnectReason::Unauthorized)
        }
        Err(e) => {
            tracing::warn!(session, error = %e, "database unavailable while authenticating a connection token");
            Err(DisconnectReason::ServerRestart)
        }
    }
}

/// Resolves when the connection's token expires (never without one).
async fn expiry(exp: Option<u64>) {
    match exp {
        Some(exp) => {
            let exp = UNIX_EPOCH + Duration::from_secs(exp);
            let left = exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            // Boxed: most connections have no token, and their task need not hold a timer.
            Box::pin(tokio::time::sleep(left)).await;
        }
        None => std::future::pending().await,
    }
}

/// Serves one connection from its upgrade until it ends, holding its connection `slot`. When
/// hyper gives the TCP socket back, it is shared: deliveries write to it directly
/// ([`crate::delivery::SendQueue::push`]).
///
/// This future is the connection's task, and its size is every connection's memory: the
/// handshake comes boxed (it is consumed at the start, but a future keeps room for its
/// arguments all its life), and rare or short-lived steps are boxed where they are awaited.
pub async fn serve(
    services: Arc<Services>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    handshake: Box<Handshake>,
    slot: crate::connections::Slot,
) {
    let _slot = slot;
    let upgraded = match upgrade.await {
        Ok(ws) => ws.into_inner().into_inner(),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    match Upgraded::downcast::<TokioIo<tokio::net::TcpStream>>(upgraded) {
        Ok(parts) => {
            let socket = Arc::new(parts.io.into_inner());
            // Bytes the client sent right behind its upgrade request come first. Copied: the
            // slice would keep hyper's whole read buffer alive for the connection's life.
            let early = parts.read_buf.to_vec();
            drop(parts.read_buf);
            let read = socket::Shared(socket.clone());
            let write = socket::Shared(socket.clone());
            run(services, (read, early), write, Some(socket), handshake).await;
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            run(services, (read, Vec::new()), write, None, handshake).await;
        }
    }
}

/// `read`: the socket's read side, and bytes already read from it.
async fn run<R, W>(
    services: Arc<Services>,
    (read, early): (R, Vec<u8>),
    write: W,
    direct: Option<Arc<tokio::net::TcpStream>>,
    handshake: Box<Handshake>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    // Taken apart at once: the box is freed here, not when the session ends.
    let Handshake {
        ext,
        restore_sid,
        token,
    } = *handshake;
    let metrics = services.metrics.clone();
    metrics.connections.inc();
    metrics.connections_open.inc();

    let session = SessionHandle::new(services.limits.send_queue, metrics.clone());
    let queue = session.queue.clone();
    if let Some(socket) = direct {
        queue.attach(socket, actioncable::push_ping);
    }
    services.pings.add(&session);
    // Shutdown closes every pinged session; one that started meanwhile sees the flag here.
    if *services.shutdown.borrow() {
        queue.close(CloseReason::Disconnect(DisconnectReason::ServerRestart));
    }
    let pinged = session.clone();

    // A signed connection token is checked before anything else: refused, the client gets
    // its `disconnect` and no welcome.
    // Boxed, like the restore below: both are done before the session goes idle, and inline
    // they would make every connection's task as large as their state for its whole life.
    let (identity, refused) = match Box::pin(authenticate(&services, token, queue.id)).await {
        Ok(identity) => (identity, false),
        Err(reason) => {
            queue.close(CloseReason::Disconnect(reason));
            (None, true)
        }
    };
    // Extended protocol: a session id, and the old session's subscriptions restored before
    // the welcome says which.
    let sid: Option<Arc<str>> = (ext && !refused).then(|| crate::resume::sid::new_sid().into());
    let mut reader = Reader::new(
        read,
        early,
        services.clone(),
        session,
        sid.clone(),
        identity,
    );
    let mut subs = SessionSubscriptions::new(services.router.clone());
    let welcome = match &sid {
        _ if refused => None,
        None => Some(bytes::Bytes::from_static(reply::WELCOME.as_bytes())),
        Some(sid) => {
            services.sessions.opened(sid, &queue);
            let restored = match restore_sid {
                Some(old) => Box::pin(reader.restore(&old, &mut subs)).await,
                None => None,
            };
            Some(reply::welcome_ext(sid, restored.as_deref()))
        }
    };

    // Reader and writer run concurrently in this one task (one task per connection, not two):
    // neither is ever cancelled while the connection lives. The writer ends when the session
    // is closed (by anyone) or the socket fails; the reader when the client leaves or
    // misbehaves.
    let writer = writer::run(write, welcome, &queue, &metrics);
    tokio::pin!(writer);
    let expires = expiry(reader.identity().map(|identity| identity.exp));
    let reader_ended = tokio::select! {
        reason = reader.run(&mut subs), if !refused => Some(reason),
        () = expires => Some(CloseReason::Disconnect(DisconnectReason::TokenExpired)),
        () = &mut writer => None,
    };
    let subscriptions = subs.len();
    let holder = subs
        .any()
        .and_then(|sub| services.router.principal_of(sub.id));
    subs.clear();
    drop(reader);
    if let Some(reason) = reader_ended {
        queue.close(reason);
        writer.await;
    }

    services.pings.remove(&pinged);
    queue.detach();
    let reason = queue
        .close_reason()
        .cloned()
        .unwrap_or(CloseReason::ConnectionLost);
    if let Some(sid) = &sid {
        if reason != CloseReason::Replaced {
            services.sessions.closed(sid);
        }
    }
    metrics.connections_open.dec();
    metrics
        .connections_closed
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: reason.label(),
        })
        .inc();
    services.disconnects.record(Disconnect {
        at: crate::clock::unix_now(),
        reason: reason.label(),
        duration_ms: started.elapsed().as_millis() as u64,
        subscriptions,
        who: holder.as_ref().map(|(principal, _)| match principal {
            Principal::User { user_id, .. } => format!("user {user_id}"),
            Principal::Contact(contact) => format!("contact {}", contact.contact_id),
        }),
        account_id: holder.as_ref().map(|(principal, _)| principal.account_id()),
        token: holder.as_ref().map(|(_, token)| token_prefix(token)),
    });
    tracing::info!(
        session = queue.id,
        reason = reason.label(),
        duration_ms = started.elapsed().as_millis() as u64,
        subscriptions,
        "connection closed"
    );
}
