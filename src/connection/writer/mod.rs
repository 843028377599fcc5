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
use bytes::Bytes;

use crate::delivery::{
    encode_head, push_header, push_text, tallied, CloseReason, DisconnectReason, Outbound,
    SendQueue,
};
use crate::metrics::Metrics;

const OP_CLOSE: u8 = crate::ws::OpCode::Close as u8;

/// How a wire protocol says goodbye when the server ends a connection.
pub trait Farewell: Sync {
    fn goodbye(&self, reason: DisconnectReason) -> Goodbye<'_>;
}

/// A goodbye: a text frame (ActionCable's `disconnect`), then a close frame; either may be
/// left out.
pub struct Goodbye<'a> {
    pub text: Option<bytes::Bytes>,
    /// The close frame's status code and reason.
    pub close: Option<(u16, &'a str)>,
}

struct Writer<'a, W> {
    sink: W,
    queue: &'a SendQueue,
    buf: Vec<u8>,
    /// A large body to write after `buf`, from the bytes its recipients share
    /// ([`encode_head`]).
    tail: Option<Bytes>,
    /// How much of `buf` is on the wire.
    sent: usize,
    metrics: &'a Metrics,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    /// Drops what was to be written (a farewell that replaces it).
    fn discard(&mut self) {
        self.buf.clear();
        self.sent = 0;
        self.tail = None;
    }

    /// Adds `frame` to the next write. Returns `false` once a large body is waiting: nothing
    /// more can go before it.
    fn push(&mut self, frame: Outbound) -> bool {
        debug_assert!(self.tail.is_none());
        self.tail = encode_head(&mut self.buf, frame, self.metrics);
        self.tail.is_none()
    }

    fn push_close(&mut self, payload: &[u8]) {
        push_header(&mut self.buf, OP_CLOSE, payload.len());
        self.buf.extend_from_slice(payload);
    }

    fn push_goodbye(&mut self, goodbye: Goodbye<'_>) {
        if let Some(text) = goodbye.text {
            push_text(&mut self.buf, &text);
        }
        if let Some((code, reason)) = goodbye.close {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            self.push_close(&payload);
        }
    }

    /// Writes `buf`, then the tail. Cancel-safe: a flush dropped half-way (the session was
    /// closed while the socket was full) is resumed by the next one where it stopped, so no
    /// byte goes out twice.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.queue.write_started();
        let result = self.write_out().await;
        self.queue.write_finished();
        self.buf.clear();
        self.sent = 0;
        self.tail = None;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        result
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        while self.sent < self.buf.len() {
            match self.sink.write(&self.buf[self.sent..]).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => self.sent += n,
            }
        }
        while let Some(tail) = self.tail.as_mut().filter(|tail| !tail.is_empty()) {
            match self.sink.write(tail).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => bytes::Buf::advance(tail, n),
            }
        }
        Ok(())
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
    farewell: &dyn Farewell,
) {
    let mut w = Writer {
        sink,
        queue,
        buf: Vec::new(),
        tail: None,
        sent: 0,
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
                let Some(frame) = pending.pop_front() else {
                    break;
                };
                if !w.push(frame) {
                    break;
                }
            }
        });
        if w.buf.is_empty() && w.tail.is_none() {
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

    Box::pin(say_goodbye(w, reason, pending, farewell)).await;
}

/// Says goodbye as `reason` asks: what is still queued (for a `disconnect`), then the
/// protocol's goodbye; each step bounded in time.
async fn say_goodbye<W: AsyncWrite + Unpin>(
    mut w: Writer<'_, W>,
    reason: CloseReason,
    pending: VecDeque<Outbound>,
    farewell: &dyn Farewell,
) {
    let queue = w.queue;
    match reason {
        CloseReason::Disconnect(DisconnectReason::TooSlow) => {
            w.discard();
            w.push_goodbye(farewell.goodbye(DisconnectReason::TooSlow));
            let _ = timeout(TOO_SLOW_FAREWELL_TIMEOUT, w.flush()).await;
        }
        CloseReason::Disconnect(disconnect) => {
            // Frames already queued (events already read) go out before the disconnect.
            let goodbye = async {
                for frame in pending.into_iter().chain(queue.take_now()) {
                    if !w.push(frame) || w.buf.len() >= BATCH_BYTES {
                        w.flush().await?;
                    }
                }
                w.push_goodbye(farewell.goodbye(disconnect));
                w.flush().await
            };
            let _ = timeout(FAREWELL_TIMEOUT, goodbye).await;
        }
        CloseReason::Replaced => {
            w.discard();
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

#[cfg(test)]
mod tests;
