//! The client end of a WebSocket (RFC 6455) as the bench's connections need it: upgrade, send
//! text, and read the server's messages far enough to classify them ([`classify`]).
//!
//! Why not tungstenite here: it assembles every message whole, in a buffer per connection
//! that keeps its largest size, read 4 KiB per system call. In a one-account storm each of
//! N clients reads presence answers of up to ~20 × N bytes (~300 KB at 15k), and the client
//! processes spent twice the gateway's CPU, most of it zeroing fresh pages for those buffers,
//! on the two cores the gateway is measured on (BENCHMARKS.md, issue 13's fourth round).
//! jemalloc in the client did not help enough: the buffers are live at the same time.
//! This reader keeps the first [`HEAD`] bytes of a message, which is all [`classify`] looks
//! at, and reads the rest of a large one into a scratch buffer shared by the thread.
//! tungstenite still makes the key and checks the accept header, and serves the resume
//! scenario, which needs whole messages.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::frame::{classify, Frame};

/// The first bytes of a message kept for [`classify`] (it reads events in their first 4 KiB).
const HEAD: usize = 4096;
/// Per connection: what one read takes while frames are small, and the most an upgrade
/// response may take.
const BUFFER: usize = 4096;
/// Per thread: where the rest of a message longer than [`HEAD`] is read and forgotten.
const SCRATCH: usize = 64 * 1024;

pub const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Appends a final frame's header: `opcode`, the mask bit (a client's frames are masked, a
/// server's are not; the key is the caller's to append), and the payload's length.
pub fn push_header(frame: &mut Vec<u8>, opcode: u8, masked: bool, len: usize) {
    let mask = if masked { 0x80 } else { 0 };
    frame.push(0x80 | opcode);
    match len {
        0..=125 => frame.push(mask | len as u8),
        126..=0xffff => {
            frame.push(mask | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(mask | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

thread_local! {
    static DISCARD: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The first bytes of the message being read (it may come in fragments).
    head: Vec<u8>,
    /// The message being read is longer than `head`.
    truncated: bool,
    /// State of the masking keys (xorshift).
    mask: u32,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Conn {
    /// Upgrades `stream` (connected to `server`) to a WebSocket at `url`'s path, offering
    /// `protocol`. `seed` varies the masking keys between connections.
    pub async fn upgrade(
        mut stream: TcpStream,
        server: SocketAddr,
        url: &str,
        protocol: &str,
        seed: u32,
    ) -> Result<Conn, String> {
        let path = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
            .unwrap_or("/");
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(io("upgrade: write"))?;
        let mut conn = Conn {
            stream,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            head: Vec::new(),
            truncated: false,
            mask: seed | 1,
        };
        let header_end = loop {
            if let Some(at) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break at + 4;
            }
            if conn.end == BUFFER {
                return Err("upgrade: response headers over 4 KiB".into());
            }
            let n = conn
                .stream
                .read(&mut conn.buf[conn.end..])
                .await
                .map_err(io("upgrade: read"))?;
            if n == 0 {
                return Err("upgrade: closed before the response".into());
            }
            conn.end += n;
        };
        let response = String::from_utf8_lossy(&conn.buf[..header_end]).into_owned();
        let mut lines = response.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade: {status}"));
        }
        let accept = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim())
        });
        if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err("upgrade: wrong or missing Sec-WebSocket-Accept".into());
        }
        conn.start = header_end;
        Ok(conn)
    }

    /// Reads more into `buf` (moving what is unread to its start first). Ok(false): the
    /// server closed the connection.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == BUFFER {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(io("read"))?;
        self.end += n;
        Ok(n > 0)
    }

    /// Waits until `n` (≤ [`BUFFER`]) bytes are unread. Ok(false): closed first.
    async fn need(&mut self, n: usize) -> Result<bool, String> {
        while self.end - self.start < n {
            if !self.fill().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Consumes a payload of `len` bytes, keeping its first bytes in `head` up to [`HEAD`].
    async fn take(&mut self, mut len: u64) -> Result<(), String> {
        while len > 0 {
            if self.start == self.end {
                if self.head.len() == HEAD && len > BUFFER as u64 {
                    self.discard(&mut len).await?;
                    continue;
                }
                if !self.fill().await? {
                    return Err("closed inside a frame".into());
                }
            }
            let n = (self.end - self.start).min(len.min(usize::MAX as u64) as usize);
            let keep = n.min(HEAD - self.head.len());
            self.head
                .extend_from_slice(&self.buf[self.start..self.start + keep]);
            self.truncated |= keep < n;
            self.start += n;
            len -= n as u64;
        }
        Ok(())
    }

    /// Reads up to `len` bytes straight from the socket into the thread's scratch buffer.
    async fn discard(&mut self, len: &mut u64) -> Result<(), String> {
        loop {
            self.stream.readable().await.map_err(io("read"))?;
            let read = DISCARD.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let want = scratch.len().min((*len).min(usize::MAX as u64) as usize);
                self.stream.try_read(&mut scratch[..want])
            });
            match read {
                Ok(0) => return Err("closed inside a frame".into()),
                Ok(n) => {
                    *len -= n as u64;
                    self.truncated = true;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The next text message, classified. Pings are answered and skipped; Ok(None): the
    /// server closed the connection (close frame or end of stream).
    pub async fn next(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if !self.need(2).await? {
                return Ok(None);
            }
            let (b0, b1) = (self.buf[self.start], self.buf[self.start + 1]);
            if b1 & 0x80 != 0 {
                return Err("the server sent a masked frame".into());
            }
            let (len, header) = match b1 & 0x7f {
                126 => (4, 4),
                127 => (10, 10),
                n => (n as u64, 2),
            };
            let len = if header > 2 {
                if !self.need(header).await? {
                    return Ok(None);
                }
                let bytes = &self.buf[self.start + 2..self.start + header];
                bytes.iter().fold(0u64, |acc, b| acc << 8 | *b as u64)
            } else {
                len
            };
            self.start += header;
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
            match opcode {
                CLOSE => return Ok(None),
                PING | PONG => {
                    if len > 125 {
                        return Err("a control frame over 125 bytes".into());
                    }
                    let len = len as usize;
                    if !self.need(len).await? {
                        return Ok(None);
                    }
                    let payload = self.buf[self.start..self.start + len].to_vec();
                    self.start += len;
                    if opcode == PING {
                        self.send(PONG, &payload).await?;
                    }
                }
                TEXT | BINARY | CONTINUATION => {
                    if opcode != CONTINUATION {
                        self.head.clear();
                        self.truncated = false;
                    }
                    self.take(len).await?;
                    if fin {
                        return Ok(Some(self.classify()));
                    }
                }
                other => return Err(format!("unknown opcode {other:#x}")),
            }
        }
    }

    /// [`classify`] on the message's head: a cut message can only be an event (events are
    /// recognised by their first bytes) or something else.
    fn classify(&self) -> Frame {
        match classify(&self.head) {
            event @ Frame::Event { .. } => event,
            _ if self.truncated => Frame::Other,
            frame => frame,
        }
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(TEXT, text.as_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        push_header(&mut frame, opcode, true, payload.len());
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        self.stream.write_all(&frame).await.map_err(io("send"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::Message;

    fn presence(entries: usize) -> String {
        let users: Vec<String> = (0..entries)
            .map(|i| format!("\"{}\":\"online\"", 900_000_000 + i))
            .collect();
        format!(
            r#"{{"identifier":"x","message":{{"event":"presence.update","data":{{"users":{{{}}}}}}}}}"#,
            users.join(",")
        )
    }

    fn event(seq: u64) -> String {
        format!(
            r#"{{"identifier":"x","message":{{"event":"message.created","data":{{"bench_run":1,"bench_seq":{seq},"bench_ts":5}}}}}}"#
        )
    }

    /// Through a real socket and tungstenite's server: large messages whole and in fragments
    /// are read past and classified as other, events around them are found, a ping is
    /// answered, the client's masked text arrives intact, and a close ends the stream.
    #[tokio::test]
    async fn reads_past_large_messages_and_keeps_frames_in_step() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let big = presence(20_000); // ~420 KB
        let server = {
            let big = big.clone();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                ws.send(Message::Text(r#"{"type":"welcome"}"#.into()))
                    .await
                    .unwrap();
                let Some(Ok(Message::Text(command))) = ws.next().await else {
                    panic!("no command from the client");
                };
                ws.send(Message::Text(event(1))).await.unwrap();
                ws.send(Message::Text(big.clone())).await.unwrap();
                ws.send(Message::Text(event(2))).await.unwrap();
                // The same message in three fragments, a ping between two of them.
                let (a, rest) = big.as_bytes().split_at(100);
                let (b, c) = rest.split_at(200_000);
                let text = OpCode::Data(Data::Text);
                let more = OpCode::Data(Data::Continue);
                for frame in [
                    WsFrame::message(a.to_vec(), text, false),
                    WsFrame::ping(b"are you there".to_vec()),
                    WsFrame::message(b.to_vec(), more, false),
                    WsFrame::message(c.to_vec(), more, true),
                ] {
                    ws.send(Message::Frame(frame)).await.unwrap();
                }
                ws.send(Message::Text(event(3))).await.unwrap();
                let pong = loop {
                    match ws.next().await {
                        Some(Ok(Message::Pong(data))) => break data,
                        Some(Ok(_)) => {}
                        other => panic!("no pong: {other:?}"),
                    }
                };
                ws.close(None).await.unwrap();
                (command, pong)
            })
        };
        let stream = TcpStream::connect(server_addr).await.unwrap();
        let mut conn = Conn::upgrade(stream, server_addr, "ws://x/cable", "p", 7)
            .await
            .unwrap();
        assert_eq!(conn.next().await.unwrap(), Some(Frame::Welcome));
        let command = r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\"}"}"#;
        conn.send_text(command).await.unwrap();
        let event = |seq| {
            Some(Frame::Event {
                run: 1,
                seq,
                ts_us: 5,
            })
        };
        let mut frames = Vec::new();
        while let Some(frame) = conn.next().await.unwrap() {
            frames.push(Some(frame));
        }
        assert_eq!(
            frames,
            vec![
                event(1),
                Some(Frame::Other),
                event(2),
                Some(Frame::Other),
                event(3)
            ]
        );
        let (got, pong) = server.await.unwrap();
        assert_eq!(got, command);
        assert_eq!(pong, b"are you there");
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let header = |masked, len| {
            let mut out = Vec::new();
            push_header(&mut out, TEXT, masked, len);
            out
        };
        assert_eq!(header(false, 125), [0x81, 125]);
        assert_eq!(header(true, 125), [0x81, 0x80 | 125]);
        assert_eq!(header(false, 126), [0x81, 126, 0, 126]);
        assert_eq!(header(true, 65535), [0x81, 0x80 | 126, 0xff, 0xff]);
        assert_eq!(header(false, 65536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[tokio::test]
    async fn a_refused_upgrade_says_what_the_server_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let Err(e) = Conn::upgrade(stream, addr, "ws://x/cable", "p", 1).await else {
            panic!("the upgrade was refused");
        };
        assert_eq!(e, "upgrade: HTTP/1.1 403 Forbidden");
    }
}
