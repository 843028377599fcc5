//! Where events come from. [`outbox`]: the `cable_events` table, lossless and in commit order.
//! Each ingress turns what it reads into [`crate::delivery::Event`]s and hands them to the
//! [`crate::router`].

pub mod outbox;
