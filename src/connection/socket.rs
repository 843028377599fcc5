//! A connection's TCP socket shared by reference: the reader and the writer of the session's
//! task read and write it through [`Shared`], and deliveries write to its descriptor directly
//! ([`crate::delivery::SendQueue::attach`]). tokio's `TcpStream` reads and writes through
//! `&self` (`try_read`, `try_write`, readiness per direction), so no lock is needed; who may
//! write when is decided by the send queue. Direct writes bypass tokio's readiness; the
//! writer's `try_write` clears readiness they left stale.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::tuning::{LINGER_BYTES, LINGER_TIMEOUT};

pub struct Shared(pub Arc<TcpStream>);

/// After a goodbye (our close frame and FIN are out): reads and drops what the client still
/// sends until it closes its side, within [`LINGER_TIMEOUT`] and [`LINGER_BYTES`], so that
/// the socket is not closed over unread input (which resets the connection).
pub async fn linger(socket: &TcpStream) {
    let deadline = tokio::time::Instant::now() + LINGER_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, socket.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match socket.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => dropped += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale (cleared by try_read): wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the write direction down (the peer reads end of stream after the close frame).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: the descriptor is owned by the TcpStream, alive for the whole call.
        let result = unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
        if result == 0 {
            Poll::Ready(Ok(()))
        } else {
            let e = io::Error::last_os_error();
            // Already gone: nothing left to shut.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Ready(Err(e))
            }
        }
    }
}
