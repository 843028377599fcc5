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
    fn goodbye(&self, reason: DisconnectReason) -> Goodbye;
}

/// A goodbye: a text frame (ActionCable's `disconnect`), then a close frame; either may be
/// left out.
pub struct Goodbye {
    pub text: Option<bytes::Bytes>,
    /// The close frame's status code and reason.
    pub close: Option<(u16, &'static str)>,
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

    fn push_goodbye(&mut self, goodbye: Goodbye) {
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
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use crate::auth::{ContactRecord, Principal};
    use crate::connection::socket::Shared;
    use crate::delivery::{Outbound, SessionHandle, Subscription};
    use crate::metrics::Metrics;

    /// A protocol whose pings look like ActionCable's, and that answers and says nothing.
    fn ping(buf: &mut Vec<u8>, value: std::num::NonZeroU32) {
        let text = format!(r#"{{"type":"ping","message":{value}}}"#);
        crate::delivery::push_text(buf, text.as_bytes());
    }

    struct Silent;

    impl crate::delivery::Replies for Silent {
        fn ended(&self, _: &str) -> Bytes {
            Bytes::new()
        }
        fn history_done(&self, _: &str) -> Bytes {
            Bytes::new()
        }
        fn history_refused(&self, _: &str) -> Bytes {
            Bytes::new()
        }
    }

    impl super::Farewell for Silent {
        fn goodbye(&self, _: crate::delivery::DisconnectReason) -> super::Goodbye {
            super::Goodbye {
                text: None,
                close: None,
            }
        }
    }

    /// Reads one unmasked server frame's payload (text frames only here).
    async fn read_frame(client: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a final text frame");
        let len = match head[1] {
            126 => client.read_u16().await.unwrap() as usize,
            127 => client.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.unwrap();
        payload
    }

    /// A loopback connection: the client's end, and the server's end attached to a session
    /// whose writer task runs.
    async fn attached() -> (
        tokio::net::TcpStream,
        SessionHandle,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = Arc::new(server);
        let metrics = Arc::new(Metrics::new());
        let handle = SessionHandle::new(64, metrics.clone());
        let queue = handle.queue.clone();
        queue.attach(server.clone(), ping);
        let writer = tokio::spawn(async move {
            super::run(Shared(server), None, &queue, &metrics, &Silent).await;
        });
        (client, handle, writer)
    }

    /// Large bodies go out from their shared bytes, through a socket that cannot take them
    /// at once, both straight from the delivering side and through the writer: every frame
    /// arrives whole, once, in order, with small frames before, between and after.
    #[tokio::test]
    async fn large_bodies_arrive_whole_and_in_order_through_a_full_socket() {
        let (mut client, handle, writer) = attached().await;
        let queue = handle.queue.clone();
        let principal = Principal::Contact(ContactRecord {
            contact_inbox_id: 1,
            contact_id: 1,
            inbox_id: 1,
            account_id: 1,
        });
        // A protocol whose body ends the frame (no suffix): large bodies go out from their
        // shared bytes.
        let raw = "{\"channel\":\"RoomChannel\"}";
        let sub = Subscription::new(
            Arc::from(raw),
            crate::delivery::Framing {
                prefix: Bytes::from_static(b"{\"message\":"),
                suffix: b"",
                replies: &Silent,
            },
            handle.clone(),
            &principal,
            None,
        );
        // Bigger than a loopback socket takes at once, with a pattern that shows any byte
        // out of place.
        let big = |seed: u8, len: usize| -> Bytes {
            let mut body: Vec<u8> = (0..len)
                .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
                .collect();
            body.push(b'}');
            Bytes::from(body)
        };
        let bodies = [big(1, 6 << 20), big(2, 40_000), big(3, 3 << 20)];
        // Once the writer has found the queue empty, deliveries write straight to the socket.
        while queue.writer_busy() {
            tokio::task::yield_now().await;
        }
        handle.send(Outbound::Frame(Bytes::from_static(b"first")));
        for body in &bodies {
            handle.send(Outbound::Reply {
                sub: sub.clone(),
                body: body.clone(),
            });
            handle.send(Outbound::Frame(Bytes::from_static(b"between")));
        }
        assert_eq!(read_frame(&mut client).await, b"first");
        for body in &bodies {
            let frame = read_frame(&mut client).await;
            assert_eq!(&frame[..sub.prefix.len()], &sub.prefix[..]);
            assert!(
                frame[sub.prefix.len()..] == body[..],
                "a body arrived whole"
            );
            assert_eq!(read_frame(&mut client).await, b"between");
        }
        queue.close(crate::delivery::CloseReason::ConnectionLost);
        writer.await.unwrap();
    }

    /// What a restored subscription's hold asks before it lets live frames flow: whether the
    /// client sent bytes nobody has read (its history request, most likely).
    #[tokio::test]
    async fn unread_input_is_seen() {
        use tokio::io::AsyncWriteExt;
        let (mut client, handle, _writer) = attached().await;
        assert!(!handle.queue.input_pending());
        client.write_all(b"history").await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !handle.queue.input_pending() {
            assert!(tokio::time::Instant::now() < deadline, "the bytes arrive");
            tokio::task::yield_now().await;
        }
    }

    /// A ping that is due goes out with the next frame written straight to the socket, before
    /// it, in the protocol's form; one that no frame took is still there to be sent alone.
    #[tokio::test]
    async fn a_due_ping_rides_with_the_next_frame() {
        let (mut client, handle, writer) = attached().await;
        let queue = handle.queue.clone();
        while queue.writer_busy() {
            tokio::task::yield_now().await;
        }
        let due = std::num::NonZeroU32::new(1_764_730_000).unwrap();
        queue.defer_ping(due);
        handle.send(Outbound::Frame(Bytes::from_static(b"event")));
        let ping: serde_json::Value =
            serde_json::from_slice(&read_frame(&mut client).await).unwrap();
        assert_eq!(
            ping,
            serde_json::json!({"type": "ping", "message": 1_764_730_000u32})
        );
        assert_eq!(read_frame(&mut client).await, b"event");
        assert_eq!(queue.take_ping(), None, "sent once");
        // Not taken along: still due.
        queue.defer_ping(due);
        assert_eq!(queue.take_ping(), Some(due));
        queue.close(crate::delivery::CloseReason::ConnectionLost);
        writer.await.unwrap();
    }
}
