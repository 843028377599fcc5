//! A confirmed subscription, as the session's writer sees it, and the prefetch hints a
//! fan-out gives the CPU ahead of each recipient.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{Message, Outbound, Positions, SessionHandle};
use crate::auth::{PresenceKey, Principal};

/// How a wire protocol frames one subscription's messages, and what it tells the client when
/// the core ends the subscription or answers its history request. Built by the protocol's
/// module; the core (router, replay, presence) only ever uses it through the subscription.
pub struct Framing {
    /// What goes before a message's body, e.g. ActionCable's `{"identifier":..,"message":`.
    pub prefix: Bytes,
    /// What goes after a message's body (and position), e.g. `}`.
    pub suffix: &'static [u8],
    pub replies: &'static dyn Replies,
    /// For a protocol whose frames are not a prefix and a suffix around the shared body: it
    /// frames each message itself.
    pub reframe: Option<Box<dyn Reframe>>,
}

/// A wire protocol that frames each message for each subscription itself (the topic
/// WebSocket: an envelope around the event with the concrete topic the subscriber matched),
/// and may find that a message is not for it at all. What it derives from a message once
/// for every recipient it keeps in [`Message::derived`].
pub trait Reframe: Send + Sync {
    /// The frame of `message` for `sub`, or `None` when `sub` does not want it.
    fn message(&self, sub: &Subscription, message: &Arc<Message>) -> Option<Bytes>;
    /// The frame of a reply `body` the core sends `sub` (a presence snapshot), or `None`.
    fn reply(&self, sub: &Subscription, body: &Bytes) -> Option<Bytes>;
}

/// What a wire protocol answers for the core, per subscription identifier.
pub trait Replies: Send + Sync {
    /// The server ended the subscription (its token was revoked): ActionCable's
    /// `reject_subscription`, queued as the subscription's last frame; `None` when the
    /// protocol says it otherwise (the topic WebSocket closes the connection).
    fn ended(&self, sub: &Subscription) -> Option<Bytes>;
    /// A history replay is complete (`confirm_history`).
    fn history_done(&self, identifier: &str) -> Bytes;
    /// A history request could not be honoured (`reject_history`).
    fn history_refused(&self, identifier: &str) -> Bytes;
}

/// One confirmed subscription, as the session's writer sees it.
///
/// `repr(C)`, hot fields first: what a delivery reads (prefix, session, positions, whether it
/// is active, how its protocol frames) lies within the two cache lines
/// [`Subscription::prefetch`] asks for, counted from the `Arc`'s header; the compiler's own
/// order had put `positions` and `active` in a third line (10k fan-out: 1.09-1.23x the floor
/// instead of 0.97-1.07x).
#[repr(C)]
pub struct Subscription {
    /// What its wire protocol puts before a message's body, e.g. ActionCable's
    /// `{"identifier":"<escaped raw id>","message":`.
    pub prefix: Bytes,
    pub session: SessionHandle,
    /// Extended protocol only: where its streams stand, and live frames held during a replay.
    pub positions: Option<Box<Positions>>,
    /// Cleared on unsubscribe or revocation: frames still queued for it are dropped.
    active: AtomicBool,
    /// Set when its wire protocol frames each message itself ([`Reframe`]).
    pub reframe: Option<Box<dyn Reframe>>,
    /// What its wire protocol puts after a message's body (and position), e.g. `}`.
    pub suffix: &'static [u8],
    /// What its wire protocol answers for the core.
    pub replies: &'static dyn Replies,
    pub id: u64,
    pub identifier: Arc<str>,
    /// Whose presence this subscription keeps alive.
    pub presence: PresenceKey,
}

impl Subscription {
    /// A subscription framed by its wire protocol (`framing`).
    pub fn new(
        identifier: Arc<str>,
        framing: Framing,
        session: SessionHandle,
        principal: &Principal,
        positions: Option<Box<Positions>>,
    ) -> Arc<Subscription> {
        Subscription::keeping(
            identifier,
            framing,
            session,
            PresenceKey::from(principal),
            positions,
        )
    }

    /// A subscription to a channel by name (no principal: it keeps nobody's presence; see
    /// [`crate::router::Router::register_channel`]).
    pub fn channel(
        identifier: Arc<str>,
        framing: Framing,
        session: SessionHandle,
    ) -> Arc<Subscription> {
        let nobody = PresenceKey {
            account_id: 0,
            id: 0,
            is_user: false,
        };
        Subscription::keeping(identifier, framing, session, nobody, None)
    }

    fn keeping(
        identifier: Arc<str>,
        framing: Framing,
        session: SessionHandle,
        presence: PresenceKey,
        positions: Option<Box<Positions>>,
    ) -> Arc<Subscription> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Subscription {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            prefix: framing.prefix,
            suffix: framing.suffix,
            replies: framing.replies,
            reframe: framing.reframe,
            identifier,
            session,
            presence,
            positions,
            active: AtomicBool::new(true),
        })
    }

    /// Queues a live event or broadcast for this subscription (held back during a replay,
    /// dropped when the client already has it, see [`Positions`]).
    pub fn deliver(self: &Arc<Self>, message: &Arc<Message>) {
        if let Some(reframe) = &self.reframe {
            if let Some(frame) = reframe.message(self, message) {
                self.session.send_framed(self, frame, message.created_at);
            }
            return;
        }
        match &self.positions {
            // Borrowed: written at once, it costs no reference counting.
            None => self.session.send_message(self, message),
            Some(positions) => {
                let frame = Outbound::Message {
                    sub: self.clone(),
                    message: message.clone(),
                };
                positions.deliver(&self.session, &message.position, frame)
            }
        }
    }

    /// Queues a reply of the core (a presence snapshot): `body` already ends with this
    /// subscription's suffix ([`crate::delivery::joined`]). Dropped if the subscription ends
    /// before it is written.
    pub fn reply(self: &Arc<Self>, body: Bytes) {
        let frame = match &self.reframe {
            None => Outbound::Reply {
                sub: self.clone(),
                body,
            },
            Some(reframe) => match reframe.reply(self, &body) {
                Some(frame) => Outbound::Reply {
                    sub: self.clone(),
                    body: frame,
                },
                None => return,
            },
        };
        self.session.send(frame);
    }

    /// Asks the CPU for this subscription's memory, ahead of [`Subscription::deliver`] (a
    /// fan-out's recipients are far apart in memory; each costs a cache miss otherwise).
    pub fn prefetch(self: &Arc<Self>) {
        let at: *const u8 = Arc::as_ptr(self).cast();
        prefetch(at);
        prefetch(at.wrapping_add(64));
    }

    /// Asks the CPU for what [`Subscription::deliver`] reads of its queue and prefix (after
    /// [`Subscription::prefetch`]: this reads the subscription).
    pub fn prefetch_queue(&self) {
        prefetch(std::ptr::from_ref(&self.session.queue.queue).cast());
        prefetch(self.prefix.as_ptr());
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Ends delivery to this subscription: frames still queued for it are dropped.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }
}

/// A hint to the CPU that `at` is about to be read.
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
