//! Centrifugo's clients and backends (docs/reference.md §11), a wire protocol on the core
//! (issue 27, in progress): so far its configuration file ([`config`]) and its client
//! protocol's frames ([`protocol`]). Not served yet.

pub mod config;
pub mod protocol;
