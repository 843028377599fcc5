//! The ActionCable wire protocol: inbound commands, identifiers, outbound frames, and what
//! bad input gets.

pub mod bad_input;
pub mod command;
pub mod id;
pub mod identifier;
pub mod reply;

pub use bad_input::{BadInput, Verdict};
pub use command::{Command, CommandError, HistoryRequest, StreamPosition};
pub use id::{numeric_id, IdError};
pub use identifier::{Identifier, IdentifierError};
pub use reply::DisconnectReason;
