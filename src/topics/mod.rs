//! The topic WebSocket (issue 28), a wire protocol on the core: plain JSON topics for
//! integrations. So far its topics ([`topic`]: grammar, an event's concrete topic, a
//! connection's topics indexed for matching), its commands ([`command`]: what a client
//! sends, and what each part of it gets) and its events' envelope ([`envelope`], encoded once
//! per event). Not served yet.

pub mod command;
pub mod envelope;
pub mod topic;
