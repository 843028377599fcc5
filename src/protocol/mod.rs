//! The ActionCable wire protocol: inbound commands, identifiers, outbound frames.

pub mod command;
pub mod identifier;
pub mod reply;

pub use command::{Command, CommandError};
pub use identifier::{Identifier, IdentifierError};
pub use reply::DisconnectReason;
