//! What an extended-protocol subscription keeps beside the plain one: where each of its
//! streams stands, and its live frames held back while a replay is sent.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{quoted, Outbound, Position, PositionStyle, SessionHandle};

/// Where one stream of an extended-protocol subscription stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Live delivery to this subscription covers every offset above this one: a replay never
    /// needs to go beyond it.
    pub live_from: i64,
    /// The client already has everything up to here: live frames at or below it are dropped.
    pub floor: i64,
}

/// What an extended-protocol subscription keeps beside the plain one.
///
/// Live frames are held (not queued) while history is being replayed for it, so that the
/// replay goes first and nothing is sent twice: a replay covers `(position, live_from]`, live
/// delivery everything after `live_from`, and frames the client already had (at or below its
/// position, which may be ahead of this process) are dropped. Restored subscriptions start
/// held: their client asks for history right after the `welcome`.
pub struct Positions {
    /// The stream id of this subscription's outbox events (stable per identifier).
    pub outbox_stream_id: Box<str>,
    /// How the subscription's wire protocol tells positions.
    pub style: &'static PositionStyle,
    /// What precedes an outbox offset's digits, in `style`: for the extended protocol,
    /// `,"stream_id":"<id>","epoch":"<epoch>","offset":`.
    pub outbox_head: Bytes,
    /// The most frames held before the client counts as too slow.
    hold_limit: usize,
    state: Mutex<PositionState>,
}

struct PositionState {
    held: Option<Vec<Outbound>>,
    /// Held since it was restored, for a history request that has not come yet.
    awaiting: bool,
    outbox: Mark,
    /// By ingress stream name (a subscription streams at most two).
    streams: Vec<(Arc<str>, Mark)>,
    /// Live frames have gone out since the subscription started (it was not held, or was
    /// released): everything after each mark's `live_from` has been sent live.
    flowed: bool,
}

impl PositionState {
    fn mark(&mut self, position: &Position) -> Option<(&mut Mark, i64)> {
        match position {
            Position::None => None,
            Position::Outbox(offset) => Some((&mut self.outbox, *offset)),
            Position::Stream { stream, offset, .. } => self
                .streams
                .iter_mut()
                .find(|(name, _)| name == stream)
                .map(|(_, mark)| (mark, *offset)),
        }
    }
}

impl Positions {
    pub fn new(
        style: &'static PositionStyle,
        outbox_stream_id: String,
        epoch: &str,
        hold_limit: usize,
    ) -> Box<Positions> {
        let mut head = Vec::new();
        style.push_head(&mut head, &quoted(&outbox_stream_id), &quoted(epoch));
        Box::new(Positions {
            outbox_stream_id: outbox_stream_id.into(),
            style,
            outbox_head: head.into(),
            hold_limit,
            state: Mutex::new(PositionState {
                held: None,
                awaiting: false,
                outbox: Mark::default(),
                streams: Vec::new(),
                flowed: false,
            }),
        })
    }

    /// Where live delivery starts (called as the subscription goes live, under the router's
    /// lock, so nothing at or below these offsets reaches it live).
    pub fn start(&self, outbox: i64, streams: Vec<(Arc<str>, i64)>, held: bool) {
        let mut state = self.state.lock();
        state.outbox = Mark {
            live_from: outbox,
            floor: 0,
        };
        state.streams = streams
            .into_iter()
            .map(|(name, live_from)| {
                (
                    name,
                    Mark {
                        live_from,
                        floor: 0,
                    },
                )
            })
            .collect();
        if held {
            state.held.get_or_insert_with(Vec::new);
            state.awaiting = true;
        }
        state.flowed = !held;
    }

    /// Whether live frames have gone out since the start ([`Positions::start`]): a replay
    /// must then stop at the outbox mark's `live_from`, or it sends them again.
    pub fn flowed(&self) -> bool {
        self.state.lock().flowed
    }

    pub(super) fn deliver(&self, session: &SessionHandle, position: &Position, frame: Outbound) {
        let mut state = self.state.lock();
        if let Some((mark, offset)) = state.mark(position) {
            if offset <= mark.floor {
                return;
            }
        }
        match &mut state.held {
            Some(held) if held.len() >= self.hold_limit => {
                drop(state);
                session.too_slow();
            }
            Some(held) => held.push(frame),
            None => session.send(frame),
        }
    }

    /// Holds live frames back (a replay is about to be sent).
    pub fn hold(&self) {
        let mut state = self.state.lock();
        state.held.get_or_insert_with(Vec::new);
        state.awaiting = false;
    }

    /// Lets live frames flow if they are still held for a history request that never came.
    pub fn release_if_awaiting(&self, session: &SessionHandle) {
        if self.state.lock().awaiting {
            self.release(session);
        }
    }

    /// The marks of the outbox and of each ingress stream, as they are now.
    pub fn marks(&self) -> (Mark, Vec<(Arc<str>, Mark)>) {
        let state = self.state.lock();
        (state.outbox, state.streams.clone())
    }

    /// Records a replay: the client now has everything of the outbox (or of `stream`) above
    /// `from`, and everything up to `floor`.
    pub fn replayed(&self, stream: Option<&str>, from: i64, floor: i64) {
        let mut state = self.state.lock();
        let mark = match stream {
            None => Some(&mut state.outbox),
            Some(stream) => state
                .streams
                .iter_mut()
                .find(|(name, _)| &**name == stream)
                .map(|(_, mark)| mark),
        };
        if let Some(mark) = mark {
            mark.live_from = mark.live_from.min(from);
            mark.floor = mark.floor.max(floor);
        }
    }

    /// Queues the held frames (those the client does not already have) and delivers live
    /// again.
    pub fn release(&self, session: &SessionHandle) {
        let mut state = self.state.lock();
        state.awaiting = false;
        state.flowed = true;
        let Some(held) = state.held.take() else {
            return;
        };
        for frame in held {
            if let Outbound::Message { message, .. } = &frame {
                if let Some((mark, offset)) = state.mark(&message.position) {
                    if offset <= mark.floor {
                        continue;
                    }
                }
            }
            session.send(frame);
        }
    }
}
