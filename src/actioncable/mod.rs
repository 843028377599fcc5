//! ActionCable's wire protocol (with AnyCable's extended protocol), on the protocol-neutral
//! core: one module per job.
//! - [`protocol`]: inbound commands (double-decoded), identifiers (raw + parsed), outbound
//!   frames, and [`protocol::bad_input`]: what each kind of bad input gets.
//! - [`channel`]: RoomChannel and the subscribe policy: identifier + token → principal or
//!   reject.
//! - [`handshake`]: what the upgrade request asks for (sub-protocol, session to restore,
//!   connection token).
//! - [`session`]: one connection on [`crate::connection`]'s plumbing: [`session::reader`]
//!   (commands, strictly in order) and [`session::actioncable`]: how the core's bodies,
//!   answers and goodbye are framed on this wire.
//!
//! `crate::server::upgrade` checks what every upgrade must pass (origin, connection limit,
//! shutdown), reads the [`handshake::Handshake`] and hands it to [`session::serve`].

pub mod channel;
pub mod handshake;
pub mod protocol;
pub mod session;
