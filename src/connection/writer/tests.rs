//! The writer's tests: real loopback sockets, the writer task running.

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
    fn ended(&self, _: &crate::delivery::Subscription) -> Option<Bytes> {
        Some(Bytes::new())
    }
    fn history_done(&self, _: &str) -> Bytes {
        Bytes::new()
    }
    fn history_refused(&self, _: &str) -> Bytes {
        Bytes::new()
    }
}

impl super::Farewell for Silent {
    fn goodbye(&self, _: crate::delivery::DisconnectReason) -> super::Goodbye<'_> {
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
    // A protocol with a suffix, as ActionCable's `}`: a reply's body comes with it joined
    // (see `Outbound::Reply`), so large bodies still go out from their shared bytes.
    let raw = "{\"channel\":\"RoomChannel\"}";
    let sub = Subscription::new(
        Arc::from(raw),
        crate::delivery::Framing {
            prefix: Bytes::from_static(b"{\"message\":"),
            suffix: b"}",
            replies: &Silent,
            reframe: None,
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
    let ping: serde_json::Value = serde_json::from_slice(&read_frame(&mut client).await).unwrap();
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
