//! Frames as they go on the wire: a header, then a subscription's prefix and the shared body,
//! or a ready-made frame.

use std::num::NonZeroU32;

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

/// Appends a ping frame, `{"type":"ping","message":<value>}`, without allocating.
pub fn push_ping(buf: &mut Vec<u8>, value: NonZeroU32) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value.get()).as_bytes();
    const HEAD: &[u8] = br#"{"type":"ping","message":"#;
    push_header(buf, OP_TEXT, HEAD.len() + digits.len() + 1);
    buf.extend_from_slice(HEAD);
    buf.extend_from_slice(digits);
    buf.push(b'}');
}

pub fn push_text(buf: &mut Vec<u8>, payload: &[u8]) {
    push_header(buf, OP_TEXT, payload.len());
    buf.extend_from_slice(payload);
}

/// An extended-protocol message: the prefix, the body without its closing brace, then the
/// position (`,"stream_id":..,"epoch":..,"offset":N}`) in `parts`.
fn push_positioned(buf: &mut Vec<u8>, prefix: &[u8], body: &[u8], parts: &[&[u8]]) {
    let body = &body[..body.len().saturating_sub(1)];
    let len = prefix.len() + body.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    push_header(buf, OP_TEXT, len);
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(body);
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
                push_header(buf, OP_TEXT, sub.prefix.len() + body.len());
                buf.extend_from_slice(&sub.prefix);
                buf.extend_from_slice(&body);
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
    match (&sub.positions, &message.position) {
        (Some(positions), Position::Outbox(offset)) => {
            // Digits on the stack: no allocation per delivery.
            let mut digits = itoa::Buffer::new();
            push_positioned(
                buf,
                &sub.prefix,
                &message.body,
                &[
                    &positions.outbox_suffix,
                    digits.format(*offset).as_bytes(),
                    b"}",
                ],
            );
        }
        (Some(_), Position::Stream { suffix, .. }) => {
            push_positioned(buf, &sub.prefix, &message.body, &[suffix]);
        }
        _ => {
            push_header(buf, OP_TEXT, sub.prefix.len() + message.body.len());
            buf.extend_from_slice(&sub.prefix);
            buf.extend_from_slice(&message.body);
        }
    }
    count_sent(
        metrics,
        (crate::clock::unix_now() - message.created_at).max(0.0),
    );
}
