//! The ActionCable wire protocol: inbound commands, identifiers, outbound frames, and what
//! bad input gets.

pub mod bad_input;
pub mod command;
pub mod identifier;
pub mod reply;

pub use crate::delivery::DisconnectReason;
pub use crate::resume::{HistoryRequest, StreamPosition};
pub use bad_input::{BadInput, Verdict};
pub use command::{Command, CommandError};
pub use identifier::{Identifier, IdentifierError};
