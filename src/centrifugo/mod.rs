//! Centrifugo's clients and backends (docs/reference.md §11), a wire protocol on the core
//! (issue 27, in progress): its configuration file ([`config`]), its client protocol's frames
//! ([`protocol`]), its tokens ([`token`]), how it frames what the core delivers and says
//! goodbye ([`wire`]), and its connections ([`session`]): connect, server-side channels,
//! subscribe, unsubscribe, publish, refresh, presence; channel presence on every process
//! ([`presence`]); and its server API ([`api`]).

pub mod api;
pub mod clients;
pub mod config;
pub mod presence;
pub mod protocol;
pub mod proxy;
pub mod session;
pub mod token;
pub mod wire;
