//! ActionCable's wire protocol (with AnyCable's extended protocol), on the protocol-neutral
//! core: one module per job.
//! - [`protocol`]: inbound commands (double-decoded), identifiers (raw + parsed), outbound
//!   frames, and [`protocol::bad_input`]: what each kind of bad input gets.
//! - [`channel`]: RoomChannel and the subscribe policy: identifier + token → principal or
//!   reject.
//! - [`session`]: one connection: [`session::frame`] (WebSocket frames → messages),
//!   [`session::reader`] (commands, strictly in order), [`session::writer`] (frames, pings),
//!   and [`session::actioncable`]: how the core's bodies and answers are framed on this wire.
//!
//! The upgrade request's sub-protocol, sid and connection token are read by
//! `crate::server::upgrade`, which hands the handshake to [`session::serve`].

pub mod channel;
pub mod protocol;
pub mod session;
