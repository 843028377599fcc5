//! Frames written straight to the socket from the delivering thread, without waking the
//! connection's task: the descriptor as a delivery sees it ([`Direct`]), and what a write that
//! the socket did not take whole leaves for the writer ([`Rest`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;

use super::encode::{encode_head, encode_message};
use super::PingFrame;
use super::{Message, Outbound, Subscription};
use crate::config::tuning::ENCODE_BUFFER_KEPT;
use crate::metrics::Metrics;

/// The socket as delivering threads write to it: its descriptor, kept open by the stream
/// held beside it. A delivery reads the descriptor from the queue's own memory, and touches
/// neither the stream nor tokio's readiness for it: two cache lines fewer per recipient
/// (tokio's `try_io` was 4.3% of a fan-out's profile, a quarter of the gateway's own share,
/// BENCHMARKS.md). Readiness it leaves stale is harmless: the writer's `try_write` clears it
/// when the socket is full (`session::socket`).
pub(super) struct Direct {
    pub(super) fd: std::os::fd::RawFd,
    pub(super) _open: Arc<tokio::net::TcpStream>,
    /// The connection's ping frame.
    pub(super) ping: PingFrame,
}

impl Direct {
    /// How many bytes the client sent that nobody has read from the socket yet.
    pub(super) fn unread(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; the descriptor stays open while `_open` holds it.
        let ok = unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut n) };
        if ok == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }

    /// Writes what the socket takes now, without waiting: how many bytes (0 when it is full
    /// or broken; the writer finds out which).
    fn send(&self, buf: &[u8]) -> usize {
        // SAFETY: the descriptor stays open while `_open` holds its stream, and `buf` is a
        // valid slice for the call.
        let sent = unsafe {
            libc::send(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(sent).unwrap_or(0)
    }

    /// [`Direct::send`] of `head` then `tail`, in one call.
    fn send_parts(&self, head: &[u8], tail: &[u8]) -> usize {
        let parts = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: tail.as_ptr() as *mut libc::c_void,
                iov_len: tail.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = parts.as_ptr() as *mut libc::iovec;
        message.msg_iovlen = parts.len() as _;
        // SAFETY: as in `send`; the iovecs point into slices valid for the call, and the
        // kernel only reads them.
        let sent =
            unsafe { libc::sendmsg(self.fd, &message, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        usize::try_from(sent).unwrap_or(0)
    }
}

/// A frame on its way into a queue: a message stays borrowed while it may still be written
/// at once, and is owned (its subscription and message counted as referenced) only if it
/// has to wait.
pub enum Pushed<'a> {
    Owned(Outbound),
    Message(&'a Arc<Subscription>, &'a Arc<Message>),
}

impl Pushed<'_> {
    pub(super) fn into_owned(self) -> Outbound {
        match self {
            Pushed::Owned(frame) => frame,
            Pushed::Message(sub, message) => Outbound::Message {
                sub: sub.clone(),
                message: message.clone(),
            },
        }
    }
}

/// What a direct write left for the writer, already framed, in order.
pub(super) enum Rest {
    Nothing,
    One(Outbound),
    /// The rest of the head, then the whole large body.
    Two(Outbound, Outbound),
}

/// Writes `frame` to `socket` without waiting, after the `ping` that is due if any (one write
/// for both); returns what the socket did not take. A large body goes out from its shared
/// bytes (one `sendmsg` with the head), and what the socket leaves of it is queued as a slice
/// of them, not a copy.
pub(super) fn write_now(
    socket: &Direct,
    ping: Option<NonZeroU32>,
    frame: Pushed<'_>,
    metrics: &Metrics,
) -> Rest {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        if let Some(value) = ping {
            (socket.ping)(&mut buf, value);
        }
        let tail = match frame {
            Pushed::Owned(frame) => encode_head(&mut buf, frame, metrics),
            Pushed::Message(sub, message) => {
                encode_message(&mut buf, sub, message, metrics);
                None
            }
        };
        let rest = match tail {
            None if buf.is_empty() => Rest::Nothing,
            None => {
                let written = socket.send(&buf);
                match buf.get(written..) {
                    Some(rest) if !rest.is_empty() => {
                        Rest::One(Outbound::Raw(Bytes::copy_from_slice(rest)))
                    }
                    _ => Rest::Nothing,
                }
            }
            Some(tail) => {
                let written = socket.send_parts(&buf, &tail);
                if written < buf.len() {
                    Rest::Two(
                        Outbound::Raw(Bytes::copy_from_slice(&buf[written..])),
                        Outbound::Raw(tail),
                    )
                } else if written - buf.len() < tail.len() {
                    Rest::One(Outbound::Raw(tail.slice(written - buf.len()..)))
                } else {
                    Rest::Nothing
                }
            }
        };
        if buf.capacity() > ENCODE_BUFFER_KEPT {
            *buf = Vec::new();
        }
        rest
    })
}
