//! One WebSocket connection: a reader (commands, in order) and a writer (frames, pings),
//! joined by a bounded queue.
//!
//! Lifecycle: the writer writes `welcome` first; the reader then processes commands until the
//! client leaves or something closes the session ([`SessionState::close`]: too slow, shutdown,
//! protocol abuse, database outage). Either way every subscription is unregistered, the writer
//! says goodbye (queued frames, `disconnect`, close frame), and one log line records the
//! reason and duration.

pub mod outbox;
pub mod reader;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

use fastwebsockets::{Role, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

pub use outbox::{CloseReason, Outbound, SessionLink, SessionState};

use crate::gateway::{Gateway, SessionGuard};
use reader::{Reader, SessionSubscriptions};

/// Serves one upgraded connection until it ends.
pub async fn run(gateway: Arc<Gateway>, io: TokioIo<Upgraded>, slot: SessionGuard) {
    let started = Instant::now();
    let metrics = gateway.metrics.clone();
    metrics.connections.inc();
    metrics.connections_open.inc();
    let _slot = slot;

    let (read, write) = tokio::io::split(io);
    let (link, queue) = SessionLink::new(gateway.config.send_queue, metrics.clone());
    let state = link.state.clone();

    let writer = {
        let state = state.clone();
        let shutdown = gateway.shutdown_signal();
        let metrics = metrics.clone();
        tokio::spawn(async move { writer::run(write, queue, &state, shutdown, &metrics).await })
    };

    let (ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    let ws: WebSocketRead<_> = ws;
    let mut reader = Reader::new(ws, gateway.clone(), link);
    let mut subs = SessionSubscriptions::new(gateway.clone());
    let reason = tokio::select! {
        reason = reader.run(&mut subs) => reason,
        reason = state.closed() => reason,
    };
    let subscriptions = subs.len();
    subs.clear();
    drop(reader);
    state.close(reason);
    let _ = writer.await;

    let reason = state
        .close_reason()
        .cloned()
        .unwrap_or(CloseReason::ConnectionLost);
    metrics.connections_open.dec();
    metrics
        .connections_closed
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: reason.label(),
        })
        .inc();
    tracing::info!(
        session = state.id,
        reason = reason.label(),
        duration_ms = started.elapsed().as_millis() as u64,
        subscriptions,
        "connection closed"
    );
}
