//! Frames as they go on the wire: a header, then a subscription's prefix and the shared body,
//! or a ready-made frame.

use bytes::Bytes;

use super::tally::count_sent;
use super::{Message, Outbound, Position, Subscription};
use crate::config::tuning::LARGE_BODY;
use crate::metrics::Metrics;
use crate::ws::OpCode;

const OP_TEXT: u8 = OpCode::Text as u8;
const OP_PONG: u8 = OpCode::Pong as u8;

/// Appends an unmasked, final frame header (server frames are never masked).
pub fn push_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if len < 65536 {
        buf.push(126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

pub fn push_text(buf: &mut Vec<u8>, payload: &[u8]) {
    push_header(buf, OP_TEXT, payload.len());
    buf.extend_from_slice(payload);
}

/// `body` followed by a subscription's `suffix` (its wire protocol's closing bytes), joined
/// once for every recipient of that protocol: what [`Outbound::Reply`] carries, so that a
/// large body goes out to each from the same shared bytes instead of being copied per
/// recipient.
pub fn joined(body: &Bytes, suffix: &[u8]) -> Bytes {
    if suffix.is_empty() {
        return body.clone();
    }
    let mut joined = Vec::with_capacity(body.len() + suffix.len());
    joined.extend_from_slice(body);
    joined.extend_from_slice(suffix);
    joined.into()
}

/// One frame from its parts (a subscription's prefix, the shared body, the position's parts,
/// the suffix), its length summed first: nothing allocated.
fn push_parts(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    push_header(buf, OP_TEXT, parts.iter().map(|p| p.len()).sum());
    for part in parts {
        buf.extend_from_slice(part);
    }
}

/// Appends `frame` to `buf` as it goes on the wire (nothing for a subscription that ended);
/// counts a delivered message and its latency.
pub fn encode(buf: &mut Vec<u8>, frame: Outbound, metrics: &Metrics) {
    match frame {
        Outbound::Frame(bytes) => push_text(buf, &bytes),
        Outbound::Raw(bytes) => buf.extend_from_slice(&bytes),
        Outbound::Pong(bytes) => {
            push_header(buf, OP_PONG, bytes.len());
            buf.extend_from_slice(&bytes);
        }
        Outbound::Reply { sub, body } => {
            if sub.is_active() {
                push_parts(buf, &[&sub.prefix, &body]);
            }
        }
        Outbound::Message { sub, message } => encode_message(buf, &sub, &message, metrics),
    }
}

/// [`encode`], except that a large body ([`LARGE_BODY`]) is not copied: the frame's header
/// (and prefix) are appended to `buf`, and the body is returned, to be written after `buf`
/// from the bytes every recipient shares.
pub fn encode_head(buf: &mut Vec<u8>, frame: Outbound, metrics: &Metrics) -> Option<Bytes> {
    match frame {
        Outbound::Raw(bytes) if bytes.len() >= LARGE_BODY => Some(bytes),
        Outbound::Frame(bytes) if bytes.len() >= LARGE_BODY => {
            push_header(buf, OP_TEXT, bytes.len());
            Some(bytes)
        }
        // A reply's body ends its frame (its suffix is joined to it): it can be the tail.
        Outbound::Reply { sub, body } if body.len() >= LARGE_BODY => {
            if !sub.is_active() {
                return None;
            }
            push_header(buf, OP_TEXT, sub.prefix.len() + body.len());
            buf.extend_from_slice(&sub.prefix);
            Some(body)
        }
        frame => {
            encode(buf, frame, metrics);
            None
        }
    }
}

/// Appends one subscription's message (nothing when the subscription ended) and counts it.
pub(super) fn encode_message(
    buf: &mut Vec<u8>,
    sub: &Subscription,
    message: &Message,
    metrics: &Metrics,
) {
    if !sub.is_active() {
        return;
    }
    let body = &message.body[..];
    match (&sub.positions, &message.position) {
        (Some(positions), Position::Outbox(offset)) => {
            // Digits on the stack: no allocation per delivery.
            let mut digits = itoa::Buffer::new();
            push_parts(
                buf,
                &[
                    &sub.prefix,
                    body,
                    &positions.outbox_head,
                    digits.format(*offset).as_bytes(),
                    sub.suffix,
                ],
            );
        }
        (Some(positions), Position::Stream { ring, offset, .. }) => {
            let mut digits = itoa::Buffer::new();
            let [a, b, c, d, e] = positions
                .style
                .head(&ring.quoted_stream, &ring.quoted_epoch);
            push_parts(
                buf,
                &[
                    &sub.prefix,
                    body,
                    a,
                    b,
                    c,
                    d,
                    e,
                    digits.format(*offset).as_bytes(),
                    sub.suffix,
                ],
            );
        }
        _ => push_parts(buf, &[&sub.prefix, body, sub.suffix]),
    }
    count_sent(
        metrics,
        (crate::clock::unix_now() - message.created_at).max(0.0),
    );
}
