//! The one LISTEN connection of a process, and everything that hears through it.
//!
//! Others register what they want to hear before it starts: a handler per channel (the
//! outbox doorbell, presence announcements) and hooks to run each time the connection is
//! (re)established, since whatever was notified while it was down is lost (the outbox reader
//! catches up by its snapshot; presence re-pushes every account it serves).
//!
//! It connects like the pool ([`crate::db`]: the same URL, TLS mode and root certificate).
//!
//! Lifecycle: connect → `LISTEN` every channel → live (readiness `true`, the connect hooks
//! run) → dispatch notifications until the connection fails → readiness `false` → wait
//! ([`crate::backoff`]) → connect again. [`Listen::readiness`] is what `/ready` and tests wait on instead of
//! sleeping.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use crate::backoff::Backoff;
use crate::db::Database;
use crate::metrics::Metrics;

/// Called with a notification's payload.
pub type OnNotify = Box<dyn Fn(&str) + Send + Sync>;
/// Called each time the connection is live again.
pub type OnConnect = Box<dyn Fn() + Send + Sync>;

pub struct Listen {
    db: Database,
    channels: HashMap<String, OnNotify>,
    on_connect: Vec<OnConnect>,
    live: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// `name` as a quoted SQL identifier: channel names are case-sensitive and may hold any
/// character (Rails' stream names do).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Listen {
    pub fn new(db: Database, metrics: Arc<Metrics>) -> Listen {
        Listen {
            db,
            channels: HashMap::new(),
            on_connect: Vec::new(),
            live: watch::channel(false).0,
            metrics,
        }
    }

    /// Hears `channel`: `handler` gets each notification's payload.
    pub fn channel(&mut self, channel: &str, handler: OnNotify) {
        self.channels.insert(channel.to_string(), handler);
    }

    /// Runs `hook` each time the connection becomes live.
    pub fn on_connect(&mut self, hook: OnConnect) {
        self.on_connect.push(hook);
    }

    /// `true` while the connection is live.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.live.subscribe()
    }

    /// The LISTEN task: runs until the process stops.
    pub async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let result = self.once().await;
            let wait = backoff.next(*self.live.borrow() || result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?wait, "LISTEN connection failed");
            }
            self.live.send_replace(false);
            tokio::time::sleep(wait).await;
            self.metrics.listen_reconnects.inc();
        }
    }

    async fn once(&self) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = self.db.connect_listen().await?;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        // Drives the connection: each notification goes to its channel's handler.
        let pump = async {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => match self.channels.get(n.channel()) {
                        Some(handler) => handler(n.payload()),
                        None => tracing::debug!(channel = n.channel(), "unexpected notification"),
                    },
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let setup = async {
            let statements: Vec<String> = self
                .channels
                .keys()
                .map(|c| format!("LISTEN {}", quote_ident(c)))
                .collect();
            client.batch_execute(&statements.join("; ")).await?;
            self.live.send_replace(true);
            tracing::info!("LISTEN connection live");
            for hook in &self.on_connect {
                hook();
            }
            std::future::pending::<Result<(), tokio_postgres::Error>>().await
        };
        tokio::select! {
            result = pump => result,
            result = setup => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn channel_names_are_quoted_whole() {
        assert_eq!(quote_ident("cable_events"), "\"cable_events\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
