//! One WebSocket connection: a reader (commands, in order) and a writer (frames, pings),
//! joined by a bounded queue.
//!
//! Lifecycle: the writer writes `welcome` first; the reader then processes commands until the
//! client leaves or something closes the session ([`SessionState::close`]: too slow, shutdown,
//! protocol abuse, database outage). Either way every subscription is unregistered, the writer
//! says goodbye (queued frames, `disconnect`, close frame), and one log line records the
//! reason and duration.

pub mod frame;
pub mod outbox;
pub mod reader;
pub mod writer;

use std::sync::Arc;
use std::time::Instant;

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
    let link = SessionLink::new(gateway.config.send_queue, metrics.clone());
    let state = link.state.clone();

    // Reader and writer run concurrently in this one task (one task per connection, not two):
    // neither is ever cancelled while the connection lives. The writer ends when the session
    // is closed (by anyone) or the socket fails; the reader when the client leaves or
    // misbehaves.
    let writer = writer::run(write, &state, gateway.shutdown_signal(), &metrics);
    tokio::pin!(writer);
    let mut reader = Reader::new(read, gateway.clone(), link);
    let mut subs = SessionSubscriptions::new(gateway.clone());
    let reader_ended = tokio::select! {
        reason = reader.run(&mut subs) => Some(reason),
        () = &mut writer => None,
    };
    let subscriptions = subs.len();
    subs.clear();
    drop(reader);
    if let Some(reason) = reader_ended {
        state.close(reason);
        writer.await;
    }

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
