//! The topic WebSocket (issue 28), a wire protocol on the core: plain JSON
//! topics for integrations. So far its topics ([`topic`]): grammar, an event's concrete
//! topic, and a connection's topics indexed for matching.

pub mod topic;
