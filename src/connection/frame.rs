//! Inbound WebSocket frames (client → server), read without a standing buffer, and
//! assembled into messages ([`super::messages::Messages`]).
//!
//! fastwebsockets' read half reserves an 8 KiB buffer per connection and never gives it
//! back; with tens of thousands of mostly idle connections that alone is the whole memory
//! budget (DHAT: 8 KiB of ~17 KiB per connection). Client frames are rare and small
//! (commands, pongs), so this reader reads ahead into the stack, keeps on the heap only what
//! it read beyond the frame being parsed ([`ReadAhead`]: nothing while the connection is idle),
//! and allocates a frame's payload when the frame arrives. fastwebsockets still performs the
//! upgrade.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::config::tuning::READ_AHEAD;
pub use crate::ws::OpCode;

/// Bad input at the WebSocket layer, the same whatever the wire protocol on top; each
/// protocol's bad-input table says what its client gets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFault {
    /// A binary message.
    Binary,
    /// A continuation frame with no message to continue.
    StrayContinuation,
    /// A message (fragmented or not) over the frame size limit.
    TooLarge,
    /// A frame that breaks RFC 6455 (unmasked, reserved bits, unknown opcode, a fragmented
    /// or oversized control frame).
    FrameViolation,
}

#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    /// Unmasked.
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than the limit")]
    TooLarge,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads ahead up to [`READ_AHEAD`] bytes per read (a typical command in one system call),
/// and keeps what the caller has not taken yet in a buffer that is freed once it is drained:
/// an idle connection holds no read buffer at all.
pub struct ReadAhead<R> {
    io: R,
    /// Read but not yet taken; empty (unallocated) between messages.
    ahead: Vec<u8>,
    taken: usize,
}

impl<R> ReadAhead<R> {
    /// `early`: bytes already read from `io` (what came behind the upgrade request), which
    /// are read first.
    pub fn new(io: R, early: Vec<u8>) -> Self {
        ReadAhead {
            io,
            ahead: early,
            taken: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadAhead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.ahead.len() {
            let n = out.remaining().min(this.ahead.len() - this.taken);
            out.put_slice(&this.ahead[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.ahead.len() {
                this.ahead = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.io).poll_read(cx, out);
        }
        let mut stack = [0u8; READ_AHEAD];
        let mut read = ReadBuf::new(&mut stack);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
        let read = read.filled();
        let n = out.remaining().min(read.len());
        out.put_slice(&read[..n]);
        if n < read.len() {
            this.ahead = read[n..].to_vec();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

pub struct FrameReader<R> {
    io: ReadAhead<R>,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames whose payload exceeds `max_payload` bytes are refused before being read.
    pub fn new(io: R, max_payload: usize) -> Self {
        Self::with_early(io, max_payload, Vec::new())
    }

    /// [`FrameReader::new`], with bytes already read from `io` first.
    pub fn with_early(io: R, max_payload: usize, early: Vec<u8>) -> Self {
        FrameReader {
            io: ReadAhead::new(io, early),
            max_payload,
        }
    }

    /// The next frame. Not cancel-safe: a frame may be half read when the future is dropped.
    pub async fn next(&mut self) -> Result<Frame, FrameError> {
        let mut head = [0u8; 2];
        self.io.read_exact(&mut head).await?;
        if head[0] & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let fin = head[0] & 0x80 != 0;
        let Some(opcode) = OpCode::from_bits(head[0] & 0x0f) else {
            return Err(FrameError::Protocol("unknown opcode"));
        };
        if head[1] & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(self.io.read_u16().await?),
            127 => self.io.read_u64().await?,
            short => u64::from(short),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(FrameError::Protocol(
                "fragmented or oversized control frame",
            ));
        }
        if len > self.max_payload as u64 {
            return Err(FrameError::TooLarge);
        }
        let mut mask = [0u8; 4];
        self.io.read_exact(&mut mask).await?;
        let mut payload = vec![0u8; len as usize];
        self.io.read_exact(&mut payload).await?;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Frame {
            fin,
            opcode,
            payload,
        })
    }
}

/// One frame as a client sends it: `first` (FIN, RSV bits and opcode as given), the masked
/// length, the mask, the masked payload. For tests and fuzzing, which build what this module
/// reads.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    crate::delivery::push_header(&mut out, 0, payload.len());
    out[0] = first;
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(first, payload, [1, 2, 3, 4])
    }

    #[tokio::test]
    async fn reads_ahead_and_keeps_nothing_once_drained() {
        // Three frames in one read: a pong, a text longer than the read-ahead, a short text.
        let long = vec![b'x'; READ_AHEAD + 50];
        let mut bytes = masked(0x8A, b"");
        bytes.extend(masked(0x81, &long));
        bytes.extend(masked(0x81, b"{}"));
        let mut reader = FrameReader::new(&bytes[..], 1024);
        assert_eq!(reader.next().await.unwrap().opcode, OpCode::Pong);
        assert!(
            reader.io.ahead.capacity() > 0,
            "the rest of the read is kept"
        );
        assert_eq!(reader.next().await.unwrap().payload, long);
        assert_eq!(reader.next().await.unwrap().payload, b"{}");
        assert_eq!(
            reader.io.ahead.capacity(),
            0,
            "drained: the buffer is freed"
        );
        assert!(matches!(reader.next().await, Err(FrameError::Io(_))));
    }

    async fn read(bytes: Vec<u8>, max: usize) -> Result<Frame, FrameError> {
        FrameReader::new(&bytes[..], max).next().await
    }

    #[tokio::test]
    async fn unmasks_text_of_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = read(masked(0x81, &payload), 1 << 20).await.unwrap();
            assert!(frame.fin);
            assert_eq!(frame.opcode, OpCode::Text);
            assert_eq!(frame.payload, payload, "length {len}");
        }
    }

    #[tokio::test]
    async fn refuses_what_the_rfc_forbids() {
        assert!(matches!(
            read(masked(0x81, &[0; 11]), 10).await,
            Err(FrameError::TooLarge)
        ));
        assert!(read(masked(0x81, &[0; 10]), 10).await.is_ok());
        assert!(matches!(
            read(masked(0xC1, b"x"), 10).await,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read(masked(0x83, b"x"), 10).await,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read(masked(0x09, b"x"), 10).await,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read(masked(0x89, &[0; 126]), 1000).await,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read(vec![0x81, 0x01, b'x'], 10).await,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(read(vec![0x81], 10).await, Err(FrameError::Io(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Whatever bytes a client sends, the reader returns frames or an error, never panics,
        /// and never allocates for a length it refused.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut reader = FrameReader::new(&bytes[..], 64);
                while let Ok(frame) = reader.next().await {
                    assert!(frame.payload.len() <= 64);
                }
            });
        }
    }
}
