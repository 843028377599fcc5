//! A session's bounded send queue and the handle everyone else reaches it through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::protocol::DisconnectReason;
use crate::router::{Event, Subscription};

/// Something for the writer to put on the socket.
pub enum Outbound {
    /// A complete text frame (welcome, confirm, reject, replies).
    Frame(Bytes),
    /// An event for one subscription: its prefix, then the shared body. Dropped if the
    /// subscription ended while the frame was queued.
    Event {
        sub: Arc<Subscription>,
        event: Arc<Event>,
    },
    /// A message for one subscription only (a presence answer): its prefix, then `body`
    /// (closing brace included). Dropped if the subscription ended meanwhile.
    Reply { sub: Arc<Subscription>, body: Bytes },
    /// The answer to a client's ping.
    Pong(Bytes),
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server ends it with a `disconnect` frame.
    Disconnect(DisconnectReason),
    /// The client sent a close frame (its payload is echoed).
    ClientClosed(Bytes),
    /// The socket ended or broke without a close frame.
    ConnectionLost,
}

impl CloseReason {
    /// The label used in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Disconnect(reason) => reason.as_str(),
            CloseReason::ClientClosed(_) => "client_closed",
            CloseReason::ConnectionLost => "connection_lost",
        }
    }
}

/// State shared by a session's reader, writer and the router.
pub struct SessionState {
    pub id: u64,
    reason: OnceLock<CloseReason>,
    notify: Notify,
}

impl SessionState {
    pub fn new() -> Arc<SessionState> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(SessionState {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reason: OnceLock::new(),
            notify: Notify::new(),
        })
    }

    /// Asks the session to end. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_waiters();
        }
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.get()
    }

    /// Resolves once [`SessionState::close`] was called.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason.get() {
                return reason.clone();
            }
            notified.await;
        }
    }
}

/// How the router and replies reach a session: a bounded queue plus its shared state.
#[derive(Clone)]
pub struct SessionLink {
    tx: mpsc::Sender<Outbound>,
    pub state: Arc<SessionState>,
    metrics: Arc<Metrics>,
}

impl SessionLink {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (SessionLink, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let link = SessionLink {
            tx,
            state: SessionState::new(),
            metrics,
        };
        (link, rx)
    }

    /// Queues a frame without ever waiting. A full queue means the client does not read
    /// fast enough: the session is ended with `too_slow`, and nobody else is delayed.
    pub fn send(&self, frame: Outbound) {
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.state.close_reason().is_none() {
                    self.metrics.too_slow.inc();
                }
                self.state
                    .close(CloseReason::Disconnect(DisconnectReason::TooSlow));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
