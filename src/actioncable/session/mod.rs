//! One ActionCable connection: a reader (commands, in order) and a writer (the welcome,
//! queued frames, the farewell), joined by the connection's bounded
//! [`crate::delivery::SendQueue`], on the protocol-neutral plumbing of [`crate::connection`]
//! (the shared socket, frames, the writer, pings).
//!
//! Lifecycle: the writer writes `welcome` first; the reader then processes commands until the
//! client leaves or something closes the session ([`crate::delivery::SendQueue::close`]: too
//! slow, shutdown, bad input, database outage). Either way every subscription is
//! unregistered, the writer says goodbye (queued frames, `disconnect`, close frame), and one
//! log line records the reason and duration.
//!
//! Files: [`actioncable`] frames the core's messages and answers (and the goodbye) as
//! ActionCable does, [`reader`] dispatches commands, [`subscriptions`] is the connection's own
//! registry.

pub mod actioncable;
pub mod reader;
pub mod subscriptions;

use std::sync::Arc;

use crate::actioncable::handshake::Handshake;
use crate::actioncable::protocol::{reply, DisconnectReason};
use crate::auth::jwt::{ConnectionIdentity, ConnectionToken, Refusal};
use crate::auth::AuthCache;
use crate::connection::socket::Shared;
use crate::connection::{writer, Ended, Plumbing};
use crate::delivery::CloseReason;
use crate::ingress::postgres::PgAdapter;
use crate::presence::Presence;
use crate::resume::replay::History;
use crate::resume::sessions::Sessions;
use crate::router::Router;
use reader::Reader;
use subscriptions::SessionSubscriptions;

/// Exactly what an ActionCable connection needs of the process.
pub struct Services {
    /// What every connection needs, whatever its protocol: metrics, limits, pings, the
    /// shutdown flag, the log of ended connections.
    pub plumbing: Plumbing,
    pub router: Arc<Router>,
    pub auth: AuthCache,
    pub presence: Arc<Presence>,
    /// Rails' PostgreSQL adapter ingress, when on: a subscription's streams are LISTENed to
    /// before its confirm.
    pub rails_postgres: Option<Arc<PgAdapter>>,
    /// Extended protocol: restorable sessions, and history replay.
    pub sessions: Arc<Sessions>,
    pub history: Arc<History>,
    /// Writes what the `typing` action sends to the outbox.
    pub typing: crate::typing::Publisher,
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
    slot: crate::connection::slots::Slot,
) {
    let _slot = slot;
    let Some(accepted) = crate::connection::accept(upgrade).await else {
        return;
    };
    let read = Shared(accepted.socket.clone());
    let write = Shared(accepted.socket.clone());
    run(
        services,
        (read, accepted.early),
        write,
        Some(accepted.socket),
        handshake,
    )
    .await;
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
    // Taken apart at once: the box is freed here, not when the session ends.
    let Handshake {
        ext,
        restore_sid,
        token,
        ..
    } = *handshake;
    let plumbing = &services.plumbing;
    let socket = direct.clone();
    let opened = plumbing.open(direct, actioncable::push_ping);
    let session = opened.session.clone();
    let queue = session.queue.clone();

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
    let writer = writer::run(
        write,
        welcome,
        &queue,
        &plumbing.metrics,
        &actioncable::ActionCable,
    );
    tokio::pin!(writer);
    let expires = crate::connection::expiry(reader.identity().map(|identity| identity.exp));
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

    let ended = Ended {
        holder,
        subscriptions,
    };
    let reason = plumbing.close(opened, ended);
    if let Some(sid) = &sid {
        if reason != CloseReason::Replaced {
            services.sessions.closed(sid);
        }
    }
    crate::connection::linger_after(&reason, socket.as_deref()).await;
}
