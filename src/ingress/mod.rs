//! Where events come from. [`outbox`]: the `cable_events` table, lossless and in commit order.
//! [`streams`]: broadcasts by stream name, as Rails' subscription adapters send them, from
//! [`redis`] (ActionCable's Redis adapter) and [`http`] (AnyCable's broadcast API). Each ingress hands what it reads to the
//! [`crate::router`].

pub mod http;
pub mod outbox;
pub mod postgres;
pub mod redis;
pub mod streams;
