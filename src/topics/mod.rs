//! The topic WebSocket (docs/reference.md §12), a wire protocol on the core: plain JSON
//! topics for integrations, at `CABLE_TOPICS_PATH`. Its topics ([`topic`]: grammar, an
//! event's concrete topic, a connection's topics indexed for matching), its commands
//! ([`command`]: what a client sends, and what each part of it gets), its events' envelope
//! ([`envelope`], encoded once per event), how it frames what the core delivers ([`feed`]:
//! one router subscription per account of the user) and its connections ([`session`]).

pub mod command;
pub mod envelope;
pub mod feed;
pub mod session;
pub mod topic;
