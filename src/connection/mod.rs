//! One WebSocket connection's plumbing, the same whatever its wire protocol: the upgraded
//! TCP socket shared by reference ([`socket`]), inbound frames ([`frame`]) assembled into
//! messages ([`messages`]), the command-rate bucket ([`rate`]), the writer that drains the
//! send queue and says goodbye in the protocol's words ([`writer`]), the one timer that pings every
//! connection ([`pings`]), and the bookkeeping every connection gets ([`Plumbing::open`],
//! [`Plumbing::close`]: metrics, the inspector's log of ended connections, one log line).
//!
//! A wire protocol's connection task (e.g. [`crate::actioncable::session`]) reads commands
//! with [`messages::Messages`], writes through [`writer::run`], and is opened and closed here.

pub mod frame;
pub mod messages;
pub mod pings;
pub mod rate;
pub mod request;
pub mod slots;
pub mod socket;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth::{token_prefix, Principal};
use crate::config::ServeConfig;
use crate::delivery::{CloseReason, DisconnectReason, PingFrame, SessionHandle};
use crate::inspect::log::{Disconnect, DisconnectLog};
use crate::metrics::Metrics;
use pings::Pings;

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

/// What every connection's task needs, whatever its wire protocol.
pub struct Plumbing {
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The one timer that pings every connection; shutdown closes every connection through
    /// it.
    pub pings: Arc<Pings>,
    /// Becomes `true` when the process shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Where an ended connection is recorded for the inspector.
    pub disconnects: Arc<DisconnectLog>,
}

/// The upgraded connection's socket, shared ([`socket::Shared`] reads and writes it by
/// reference; deliveries write to it directly), and the bytes the client sent right behind
/// its upgrade request.
pub struct Accepted {
    pub socket: Arc<TcpStream>,
    pub early: Vec<u8>,
}

/// Completes the upgrade. `None` when the client went away before it completed.
pub async fn accept(upgrade: fastwebsockets::upgrade::UpgradeFut) -> Option<Accepted> {
    let upgraded = match upgrade.await {
        Ok(ws) => ws.into_inner().into_inner(),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return None;
        }
    };
    match Upgraded::downcast::<TokioIo<TcpStream>>(upgraded) {
        Ok(parts) => Some(Accepted {
            socket: Arc::new(parts.io.into_inner()),
            // Copied: the slice would keep hyper's whole read buffer alive for the
            // connection's life.
            early: parts.read_buf.to_vec(),
        }),
        // The server only serves TCP sockets.
        Err(_) => {
            tracing::error!("an upgraded connection is not a TCP socket");
            None
        }
    }
}

/// Resolves when the connection's token expires (never without one).
pub async fn expiry(exp: Option<u64>) {
    match exp {
        Some(exp) => {
            let exp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(std::time::Duration::ZERO);
            // Boxed: most connections have no token, and their task need not hold a timer.
            Box::pin(tokio::time::sleep(left)).await;
        }
        None => std::future::pending().await,
    }
}

/// Whether a connection that ended for `reason` should [`socket::linger`] before its socket
/// is closed: when a close frame went out and the client is expected to answer it.
fn lingers(reason: &CloseReason) -> bool {
    match reason {
        CloseReason::Disconnect(reason) => *reason != DisconnectReason::TooSlow,
        CloseReason::ClientClosed(_) | CloseReason::Replaced => true,
        CloseReason::ConnectionLost => false,
    }
}

/// [`socket::linger`] on `socket` when a connection that ended for `reason` should.
pub async fn linger_after(reason: &CloseReason, socket: Option<&TcpStream>) {
    if let Some(socket) = socket.filter(|_| lingers(reason)) {
        Box::pin(socket::linger(socket)).await;
    }
}

/// A connection being served: its session handle, and when it started.
pub struct Opened {
    pub session: SessionHandle,
    started: Instant,
}

/// What a connection ends with: who it was (for the inspector's log), how many
/// subscriptions it had.
pub struct Ended {
    pub holder: Option<(Principal, Arc<str>)>,
    pub subscriptions: usize,
}

impl Plumbing {
    /// Counts a new connection, attaches its socket (deliveries then write to it directly)
    /// and pings it with `ping` from now on. During shutdown it is closed at once.
    pub fn open(&self, socket: Option<Arc<TcpStream>>, ping: PingFrame) -> Opened {
        self.metrics.connections.inc();
        self.metrics.connections_open.inc();
        let session = SessionHandle::new(self.limits.send_queue, self.metrics.clone());
        if let Some(socket) = socket {
            session.queue.attach(socket, ping);
        }
        self.pings.add(&session, ping);
        // Shutdown closes every pinged session; one that started meanwhile sees the flag here.
        if *self.shutdown.borrow() {
            session
                .queue
                .close(CloseReason::Disconnect(DisconnectReason::ServerRestart));
        }
        Opened {
            session,
            started: Instant::now(),
        }
    }

    /// [`Plumbing::close`], then, when the reason asks for it, [`socket::linger`] on
    /// `socket` before it is closed. Returns the reason.
    pub async fn finish(
        &self,
        opened: Opened,
        ended: Ended,
        socket: Option<&TcpStream>,
    ) -> CloseReason {
        let reason = self.close(opened, ended);
        linger_after(&reason, socket).await;
        reason
    }

    /// Stops pinging the connection, detaches its socket and records why it ended: metrics,
    /// the inspector's log, one log line. Returns the reason.
    pub fn close(&self, opened: Opened, ended: Ended) -> CloseReason {
        let Opened { session, started } = opened;
        let queue = &session.queue;
        self.pings.remove(&session);
        queue.detach();
        let reason = queue
            .close_reason()
            .cloned()
            .unwrap_or(CloseReason::ConnectionLost);
        self.metrics.connections_open.dec();
        self.metrics
            .connections_closed
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.label(),
            })
            .inc();
        let duration_ms = started.elapsed().as_millis() as u64;
        let holder = ended.holder.as_ref();
        self.disconnects.record(Disconnect {
            at: crate::clock::unix_now(),
            reason: reason.label(),
            duration_ms,
            subscriptions: ended.subscriptions,
            who: holder.map(|(principal, _)| match principal {
                Principal::User { user_id, .. } => format!("user {user_id}"),
                Principal::Contact(contact) => format!("contact {}", contact.contact_id),
            }),
            account_id: holder.map(|(principal, _)| principal.account_id()),
            token: holder.map(|(_, token)| token_prefix(token)),
        });
        tracing::info!(
            session = queue.id,
            reason = reason.label(),
            duration_ms,
            subscriptions = ended.subscriptions,
            "connection closed"
        );
        reason
    }
}
