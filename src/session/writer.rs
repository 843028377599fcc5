//! The writer: writes the welcome, every queued frame (batched into one write when several
//! are waiting) and the farewell. It owns the socket while it has frames in hand; otherwise
//! deliveries and pings ([`super::pings`]) are written straight to the socket by whoever
//! delivers them ([`crate::delivery::SendQueue::push`]).

use std::collections::VecDeque;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::config::tuning::{
    BATCH_BYTES, FAREWELL_TIMEOUT, KEEP_CAPACITY, KEEP_FRAMES, TOO_SLOW_FAREWELL_TIMEOUT,
};
use crate::delivery::{encode, push_header, push_text, tallied, CloseReason, Outbound, SendQueue};
use crate::metrics::Metrics;
use crate::protocol::reply::{self, DisconnectReason};

const OP_CLOSE: u8 = 0x8;

struct Writer<'a, W> {
    sink: W,
    queue: &'a SendQueue,
    buf: Vec<u8>,
    metrics: &'a Metrics,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    fn push(&mut self, frame: Outbound) {
        encode(&mut self.buf, frame, self.metrics);
    }

    fn push_close(&mut self, payload: &[u8]) {
        push_header(&mut self.buf, OP_CLOSE, payload.len());
        self.buf.extend_from_slice(payload);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.queue.write_started();
        let result = self.sink.write_all(&self.buf).await;
        self.queue.write_finished();
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        result
    }
}

/// Runs until the session closes. The welcome is written before anything else, so replies
/// to commands sent before it arrive after it; a connection refused at once (`None`) gets
/// no welcome, only its farewell.
pub async fn run<W: AsyncWrite + Unpin>(
    sink: W,
    welcome: Option<bytes::Bytes>,
    queue: &SendQueue,
    metrics: &Metrics,
) {
    let mut w = Writer {
        sink,
        queue,
        buf: Vec::new(),
        metrics,
    };
    if let Some(welcome) = welcome {
        push_text(&mut w.buf, &welcome);
        drop(welcome);
        if w.flush().await.is_err() {
            queue.close(CloseReason::ConnectionLost);
            return;
        }
    }
    // Frames taken from the queue and not yet encoded.
    let mut pending: VecDeque<Outbound> = VecDeque::new();

    let reason = loop {
        if pending.is_empty() {
            if pending.capacity() > KEEP_FRAMES {
                pending = VecDeque::new();
            }
            if let Err(reason) = queue.take_queued(&mut pending).await {
                break reason;
            }
        }
        tallied(metrics, || {
            while w.buf.len() < BATCH_BYTES {
                match pending.pop_front() {
                    Some(frame) => w.push(frame),
                    None => break,
                }
            }
        });
        if w.buf.is_empty() {
            continue;
        }
        // A client that stops reading blocks this write; `too_slow` must still end it.
        let written = tokio::select! {
            biased;
            result = w.flush() => result.is_ok(),
            reason = queue.closed() => {
                if reason == CloseReason::Disconnect(DisconnectReason::TooSlow) {
                    return;
                }
                // Another reason: finish this write (the frame is half on the wire), then say
                // goodbye. Boxed, like the farewell: rare, and not worth room in every task.
                matches!(Box::pin(timeout(FAREWELL_TIMEOUT, w.flush())).await, Ok(Ok(())))
            }
        };
        if !written {
            queue.close(CloseReason::ConnectionLost);
            return;
        }
    };

    Box::pin(farewell(w, reason, pending)).await;
}

/// Says goodbye as `reason` asks: what is still queued (for a `disconnect`), the `disconnect`
/// itself, the close frame; each step bounded in time.
async fn farewell<W: AsyncWrite + Unpin>(
    mut w: Writer<'_, W>,
    reason: CloseReason,
    pending: VecDeque<Outbound>,
) {
    let queue = w.queue;
    match reason {
        CloseReason::Disconnect(DisconnectReason::TooSlow) => {
            w.buf.clear();
            push_text(&mut w.buf, &reply::disconnect(DisconnectReason::TooSlow));
            let _ = timeout(TOO_SLOW_FAREWELL_TIMEOUT, w.flush()).await;
        }
        CloseReason::Disconnect(disconnect) => {
            // Frames already queued (events already read) go out before the disconnect.
            let goodbye = async {
                for frame in pending.into_iter().chain(queue.take_now()) {
                    w.push(frame);
                    if w.buf.len() >= BATCH_BYTES {
                        w.flush().await?;
                    }
                }
                push_text(&mut w.buf, &reply::disconnect(disconnect));
                w.push_close(&1000u16.to_be_bytes());
                w.flush().await
            };
            let _ = timeout(FAREWELL_TIMEOUT, goodbye).await;
        }
        CloseReason::Replaced => {
            w.buf.clear();
            w.push_close(&1000u16.to_be_bytes());
            let _ = timeout(TOO_SLOW_FAREWELL_TIMEOUT, w.flush()).await;
        }
        CloseReason::ClientClosed(payload) => {
            let echo = if payload.len() >= 2 {
                payload.slice(..2)
            } else {
                payload
            };
            w.push_close(&echo);
            let _ = timeout(FAREWELL_TIMEOUT, w.flush()).await;
        }
        CloseReason::ConnectionLost => return,
    }
    let _ = timeout(FAREWELL_TIMEOUT, w.sink.shutdown()).await;
}
