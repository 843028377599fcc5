//! The one LISTEN connection of a process, and everything that hears through it.
//!
//! Others register what they want to hear before it starts: a handler per fixed channel (the
//! outbox doorbell, presence announcements), one handler for channels opened and closed while
//! it runs ([`Listen::dynamic`]: Rails' per-stream channels), and hooks to run each time the
//! connection is (re)established, since whatever was notified while it was down is lost (the
//! outbox reader catches up by its snapshot; presence re-pushes every account it serves).
//!
//! It connects like the pool ([`crate::db`]: the same URL, TLS mode and root certificate).
//!
//! Lifecycle: connect → `LISTEN` every fixed channel and every dynamic channel in use → live
//! (readiness `true`, the connect hooks run) → dispatch notifications, and LISTEN/UNLISTEN
//! dynamic channels as they are acquired and released, until the connection fails →
//! readiness `false` → wait ([`crate::backoff`]) → connect again. [`Listen::readiness`] is
//! what `/ready` and tests wait on instead of sleeping.
//!
//! Dynamic channels are counted here, in the task, in the order requests arrive: a channel is
//! LISTENed when its count goes from 0 to 1 and UNLISTENed when it returns to 0, and an
//! acquire is answered once its channels are listened to. While the connection is down,
//! requests are answered at once (the channels are listened to on reconnect): a subscribe
//! never waits for an outage to end. Requests that arrive together share one round trip.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use crate::backoff::Backoff;
use crate::config::tuning::LISTEN_CHUNK;
use crate::db::Database;
use crate::metrics::Metrics;

/// Called with a notification's payload.
pub type OnNotify = Box<dyn Fn(&str) + Send + Sync>;
/// Called each time the connection is live again.
pub type OnConnect = Box<dyn Fn() + Send + Sync>;
/// Called with a dynamic channel's name and a notification's payload.
pub type OnChannel = Box<dyn Fn(&str, &str) + Send + Sync>;

enum Request {
    Acquire(Vec<String>, oneshot::Sender<()>),
    Release(Vec<String>),
}

/// How others open and close dynamic channels.
#[derive(Clone)]
pub struct ListenHandle {
    requests: mpsc::UnboundedSender<Request>,
}

impl ListenHandle {
    /// Counts `channels` in, LISTENing on those new to this process; resolves once they are
    /// listened to (at once while the connection is down, or when the task is gone).
    pub async fn acquire(&self, channels: Vec<String>) {
        let (done, listened) = oneshot::channel();
        if self.requests.send(Request::Acquire(channels, done)).is_ok() {
            let _ = listened.await;
        }
    }

    /// Counts `channels` out, UNLISTENing on those no longer wanted. Never waits.
    pub fn release(&self, channels: Vec<String>) {
        let _ = self.requests.send(Request::Release(channels));
    }
}

/// The dynamic channels in use, and the requests that change them.
struct Dynamic {
    requests: mpsc::UnboundedReceiver<Request>,
    counts: HashMap<String, usize>,
}

impl Dynamic {
    /// Applies a request to the counts: the statements it takes, in order, and its answer.
    fn apply(&mut self, request: Request) -> (Vec<String>, Option<oneshot::Sender<()>>) {
        let mut statements = Vec::new();
        match request {
            Request::Acquire(channels, ack) => {
                for channel in channels {
                    match self.counts.get_mut(&channel) {
                        Some(count) => *count += 1,
                        None => {
                            statements.push(format!("LISTEN {}", quote_ident(&channel)));
                            self.counts.insert(channel, 1);
                        }
                    }
                }
                (statements, Some(ack))
            }
            Request::Release(channels) => {
                for channel in channels {
                    if let Some(count) = self.counts.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            self.counts.remove(&channel);
                            statements.push(format!("UNLISTEN {}", quote_ident(&channel)));
                        }
                    }
                }
                (statements, None)
            }
        }
    }

    /// While the connection is down: count, and answer at once.
    fn offline(&mut self, request: Request) {
        if let (_, Some(ack)) = self.apply(request) {
            let _ = ack.send(());
        }
    }
}

pub struct Listen {
    db: Database,
    channels: HashMap<String, OnNotify>,
    on_connect: Vec<OnConnect>,
    on_channel: Option<OnChannel>,
    live: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    handle: ListenHandle,
    dynamic: Option<Dynamic>,
}

/// `name` as a quoted SQL identifier: channel names are case-sensitive and may hold any
/// character (Rails' stream names do).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Listen {
    pub fn new(db: Database, metrics: Arc<Metrics>) -> Listen {
        let (requests, receiver) = mpsc::unbounded_channel();
        Listen {
            db,
            channels: HashMap::new(),
            on_connect: Vec::new(),
            on_channel: None,
            live: watch::channel(false).0,
            metrics,
            handle: ListenHandle { requests },
            dynamic: Some(Dynamic {
                requests: receiver,
                counts: HashMap::new(),
            }),
        }
    }

    /// How others open and close dynamic channels.
    pub fn handle(&self) -> ListenHandle {
        self.handle.clone()
    }

    /// Hears the dynamic channels: `handler` gets each notification on one of them.
    pub fn on_channel(&mut self, handler: OnChannel) {
        self.on_channel = Some(handler);
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
    pub async fn run(mut self) {
        let mut dynamic = self.dynamic.take().expect("a Listen runs once");
        let mut backoff = Backoff::default();
        loop {
            let result = self.once(&mut dynamic).await;
            let wait = backoff.next(*self.live.borrow() || result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?wait, "LISTEN connection failed");
            }
            self.live.send_replace(false);
            // Requests keep being answered while waiting: they are listened to on reconnect.
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    Some(request) = dynamic.requests.recv() => dynamic.offline(request),
                }
            }
            self.metrics.listen_reconnects.inc();
        }
    }

    async fn once(&self, dynamic: &mut Dynamic) -> Result<(), tokio_postgres::Error> {
        let connect = self.db.connect_listen();
        tokio::pin!(connect);
        let (client, mut connection) = loop {
            tokio::select! {
                connected = &mut connect => break connected?,
                Some(request) = dynamic.requests.recv() => dynamic.offline(request),
            }
        };
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        // Drives the connection: each notification goes to its channel's handler.
        let pump = async {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => match self.channels.get(n.channel()) {
                        Some(handler) => handler(n.payload()),
                        None => match &self.on_channel {
                            Some(handler) => handler(n.channel(), n.payload()),
                            None => {
                                tracing::debug!(channel = n.channel(), "unexpected notification")
                            }
                        },
                    },
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let serve = async {
            let listen = |c: &String| format!("LISTEN {}", quote_ident(c));
            let statements: Vec<String> = self
                .channels
                .keys()
                .chain(dynamic.counts.keys())
                .map(listen)
                .collect();
            for chunk in statements.chunks(LISTEN_CHUNK) {
                client.batch_execute(&chunk.join("; ")).await?;
            }
            self.live.send_replace(true);
            self.metrics.listen_channels.set(statements.len() as i64);
            tracing::info!(channels = statements.len(), "LISTEN connection live");
            for hook in &self.on_connect {
                hook();
            }
            // Requests that arrive together share one round trip.
            while let Some(first) = dynamic.requests.recv().await {
                let (mut statements, ack) = dynamic.apply(first);
                let mut acks: Vec<_> = ack.into_iter().collect();
                while statements.len() < LISTEN_CHUNK {
                    let Ok(request) = dynamic.requests.try_recv() else {
                        break;
                    };
                    let (more, ack) = dynamic.apply(request);
                    statements.extend(more);
                    acks.extend(ack);
                }
                if !statements.is_empty() {
                    client.batch_execute(&statements.join("; ")).await?;
                }
                self.metrics
                    .listen_channels
                    .set((self.channels.len() + dynamic.counts.len()) as i64);
                for ack in acks {
                    let _ = ack.send(());
                }
            }
            std::future::pending::<Result<(), tokio_postgres::Error>>().await
        };
        tokio::select! {
            result = pump => result,
            result = serve => result,
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
