//! Client messages assembled from frames ([`super::frame`]): a whole message bounded like a
//! single frame, pings and closes surfaced, and what a wire protocol's reader acts on
//! ([`Messages::next_message`]).

use tokio::io::AsyncRead;

use super::frame::{FrameError, FrameReader, OpCode, WireFault};
use crate::delivery::{CloseReason, Outbound, SessionHandle};

/// What a client sent, assembled from frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete text message (not yet checked for UTF-8).
    Text(Vec<u8>),
    /// A ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A close frame with its payload.
    Close(Vec<u8>),
    /// Nothing to act on yet (a fragment, a pong).
    Nothing,
    /// Bad input that does not end the connection by itself (see the bad-input table).
    Bad(WireFault),
}

/// Why reading ends.
#[derive(Debug, thiserror::Error)]
pub enum ReadEnd {
    /// Bad input that ends the connection (too large, a frame that breaks the RFC).
    #[error("bad input: {0:?}")]
    Bad(WireFault),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a wire protocol's reader acts on ([`Messages::next_message`]): a text message, bad
/// input for its bad-input table, or the end of the connection.
#[derive(Debug)]
pub enum Next {
    Text(Vec<u8>),
    Bad(WireFault),
    End(CloseReason),
}

/// A text message being assembled from fragments.
enum Partial {
    None,
    Text(Vec<u8>),
    /// A binary message is only counted, never kept.
    Binary(usize),
}

/// Client messages: frames assembled, a whole message bounded like a single frame.
pub struct Messages<R> {
    frames: FrameReader<R>,
    partial: Partial,
    limit: usize,
}

impl<R: AsyncRead + Unpin> Messages<R> {
    /// `early`: bytes already read from `io`, read first.
    pub fn new(io: R, limit: usize, early: Vec<u8>) -> Self {
        Messages {
            frames: FrameReader::with_early(io, limit, early),
            partial: Partial::None,
            limit,
        }
    }

    /// The next thing the client sent. Not cancel-safe, like [`FrameReader::next`].
    pub async fn next(&mut self) -> Result<Inbound, ReadEnd> {
        let frame = match self.frames.next().await {
            Ok(frame) => frame,
            Err(FrameError::TooLarge) => return Err(ReadEnd::Bad(WireFault::TooLarge)),
            Err(FrameError::Protocol(_)) => return Err(ReadEnd::Bad(WireFault::FrameViolation)),
            Err(FrameError::Io(e)) => return Err(ReadEnd::Io(e)),
        };
        Ok(match (frame.opcode, frame.fin) {
            (OpCode::Close, _) => Inbound::Close(frame.payload),
            (OpCode::Ping, _) => Inbound::Ping(frame.payload),
            (OpCode::Pong, _) => Inbound::Nothing,
            (OpCode::Text, true) => Inbound::Text(frame.payload),
            (OpCode::Text, false) => {
                self.partial = Partial::Text(frame.payload);
                Inbound::Nothing
            }
            (OpCode::Binary, true) => {
                self.partial = Partial::None;
                Inbound::Bad(WireFault::Binary)
            }
            (OpCode::Binary, false) => {
                self.partial = Partial::Binary(frame.payload.len());
                Inbound::Nothing
            }
            (OpCode::Continuation, fin) => self.continuation(&frame.payload, fin)?,
        })
    }

    /// The next message a protocol acts on; pings are answered on `session` and fragments
    /// and pongs skipped on the way, the same for every protocol.
    pub async fn next_message(&mut self, session: &SessionHandle) -> Next {
        loop {
            match self.next().await {
                Ok(Inbound::Text(message)) => return Next::Text(message),
                Ok(Inbound::Ping(payload)) => session.send(Outbound::Pong(payload.into())),
                Ok(Inbound::Close(payload)) => {
                    return Next::End(CloseReason::ClientClosed(payload.into()))
                }
                Ok(Inbound::Nothing) => {}
                Ok(Inbound::Bad(fault)) | Err(ReadEnd::Bad(fault)) => return Next::Bad(fault),
                Err(ReadEnd::Io(e)) => {
                    tracing::debug!(session = session.queue.id, error = %e, "read ended");
                    return Next::End(CloseReason::ConnectionLost);
                }
            }
        }
    }

    fn continuation(&mut self, payload: &[u8], fin: bool) -> Result<Inbound, ReadEnd> {
        match &mut self.partial {
            Partial::None => Ok(Inbound::Bad(WireFault::StrayContinuation)),
            Partial::Binary(len) => {
                *len += payload.len();
                if *len > self.limit {
                    return Err(ReadEnd::Bad(WireFault::TooLarge));
                }
                if !fin {
                    return Ok(Inbound::Nothing);
                }
                self.partial = Partial::None;
                Ok(Inbound::Bad(WireFault::Binary))
            }
            Partial::Text(buf) => {
                if buf.len() + payload.len() > self.limit {
                    return Err(ReadEnd::Bad(WireFault::TooLarge));
                }
                buf.extend_from_slice(payload);
                if !fin {
                    return Ok(Inbound::Nothing);
                }
                match std::mem::replace(&mut self.partial, Partial::None) {
                    Partial::Text(buf) => Ok(Inbound::Text(buf)),
                    _ => unreachable!("matched Text above"),
                }
            }
        }
    }
}
