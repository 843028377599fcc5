//! Every metric, spelled once: Prometheus names with the `cable_` prefix, `_total` counters
//! (the `_total` suffix is added by the exposition), `_seconds` durations.
//!
//! `latency.rs`: the delivery latency histogram and the per-thread [`Tally`].

mod latency;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use latency::{Latency, Tally};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub ingress: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressReasonLabels {
    pub ingress: &'static str,
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub subscriptions_live: Gauge,
    pub commands: Family<CommandLabels, Counter>,
    pub subscribe_rejects: Family<ReasonLabels, Counter>,
    pub invalid_frames: Family<ReasonLabels, Counter>,
    pub auth_cache_hits: Counter,
    pub auth_cache_misses: Counter,
    pub auth_queries: Counter,
    pub events_read: Counter,
    pub events_skipped: Family<ReasonLabels, Counter>,
    pub messages_sent: Counter,
    /// Written through [`Metrics::add_sent`], with `messages_sent`.
    pub delivery_latency: Latency,
    pub too_slow: Counter,
    /// Exposed as `cable_listener_reconnects_total` (the name is kept for dashboards).
    pub listen_reconnects: Counter,
    pub listen_channels: Gauge,
    pub outbox_lag: Latency,
    pub revocations: Counter,
    pub revalidation_passes: Counter,
    /// 1 while revalidation follows the identity tables' change notifications, 0 while it
    /// polls every interval (no triggers, or the LISTEN connection is down).
    pub revalidation_on_change: Gauge,
    pub presence_pushes: Counter,
    pub events_pruned: Counter,
    pub broadcasts: Family<IngressLabels, Counter>,
    pub broadcasts_skipped: Family<IngressReasonLabels, Counter>,
    pub ingress_reconnects: Family<IngressLabels, Counter>,
    pub ingress_up: Family<IngressLabels, Gauge>,
    pub history_replayed: Counter,
    pub history_queries: Counter,
    pub session_restores: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Adds what a thread wrote: `cable_messages_sent_total` and the latency histogram.
    pub fn add_sent(&self, tally: &Tally) {
        if tally.is_empty() {
            return;
        }
        self.messages_sent.inc_by(tally.count);
        let mut total = self.delivery_latency.inner.lock();
        total.count += tally.count;
        total.sum += tally.sum;
        for (total, add) in total.buckets.iter_mut().zip(tally.buckets) {
            *total += add;
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections_open: Gauge::default(),
            connections: Counter::default(),
            connections_closed: Family::default(),
            connections_refused: Family::default(),
            subscriptions_live: Gauge::default(),
            commands: Family::default(),
            subscribe_rejects: Family::default(),
            invalid_frames: Family::default(),
            auth_cache_hits: Counter::default(),
            auth_cache_misses: Counter::default(),
            auth_queries: Counter::default(),
            events_read: Counter::default(),
            events_skipped: Family::default(),
            messages_sent: Counter::default(),
            delivery_latency: Latency::default(),
            too_slow: Counter::default(),
            listen_reconnects: Counter::default(),
            listen_channels: Gauge::default(),
            outbox_lag: Latency::default(),
            revocations: Counter::default(),
            revalidation_passes: Counter::default(),
            revalidation_on_change: Gauge::default(),
            presence_pushes: Counter::default(),
            events_pruned: Counter::default(),
            broadcasts: Family::default(),
            broadcasts_skipped: Family::default(),
            ingress_reconnects: Family::default(),
            ingress_up: Family::default(),
            history_replayed: Counter::default(),
            history_queries: Counter::default(),
            session_restores: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "cable_connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        r.register(
            "cable_connections",
            "WebSocket connections accepted",
            m.connections.clone(),
        );
        r.register(
            "cable_connections_closed",
            "Connections closed, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "cable_connections_refused",
            "Upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "cable_subscriptions_live",
            "Confirmed subscriptions",
            m.subscriptions_live.clone(),
        );
        r.register(
            "cable_commands",
            "Client commands, by kind and result",
            m.commands.clone(),
        );
        r.register(
            "cable_subscribe_rejects",
            "Rejected subscribes, by reason",
            m.subscribe_rejects.clone(),
        );
        r.register(
            "cable_invalid_frames",
            "Inbound frames that were not commands, by reason",
            m.invalid_frames.clone(),
        );
        r.register(
            "cable_auth_cache_hits",
            "Token lookups answered by the cache",
            m.auth_cache_hits.clone(),
        );
        r.register(
            "cable_auth_cache_misses",
            "Token lookups that loaded from PostgreSQL",
            m.auth_cache_misses.clone(),
        );
        r.register(
            "cable_auth_queries",
            "Token queries sent to PostgreSQL",
            m.auth_queries.clone(),
        );
        r.register(
            "cable_events_read",
            "Outbox events read",
            m.events_read.clone(),
        );
        r.register(
            "cable_events_skipped",
            "Malformed outbox events skipped, by reason",
            m.events_skipped.clone(),
        );
        r.register(
            "cable_messages_sent",
            "Event messages written to sockets",
            m.messages_sent.clone(),
        );
        r.register(
            "cable_delivery_latency_seconds",
            "From event insert to socket write",
            m.delivery_latency.clone(),
        );
        r.register(
            "cable_too_slow_disconnects",
            "Clients disconnected for not reading",
            m.too_slow.clone(),
        );
        r.register(
            "cable_listener_reconnects",
            "LISTEN connection re-establishments",
            m.listen_reconnects.clone(),
        );
        r.register(
            "cable_listen_channels",
            "Channels the LISTEN connection listens on (fixed, and Rails' per-stream ones)",
            m.listen_channels.clone(),
        );
        r.register(
            "cable_outbox_lag_seconds",
            "From event insert to being read from the outbox",
            m.outbox_lag.clone(),
        );
        r.register(
            "cable_revocations",
            "Live subscriptions rejected because their token stopped being valid",
            m.revocations.clone(),
        );
        r.register(
            "cable_revalidation_passes",
            "Passes over every live subscription's token (after a change, or the slow full pass)",
            m.revalidation_passes.clone(),
        );
        r.register(
            "cable_revalidation_on_change",
            "1 while revalidation follows the identity tables' change notifications, 0 while it polls",
            m.revalidation_on_change.clone(),
        );
        r.register(
            "cable_presence_pushes",
            "presence.update snapshots pushed on change",
            m.presence_pushes.clone(),
        );
        r.register(
            "cable_events_pruned",
            "Outbox rows deleted by retention",
            m.events_pruned.clone(),
        );
        r.register(
            "cable_broadcasts",
            "Stream broadcasts received, by ingress (redis, postgres, http)",
            m.broadcasts.clone(),
        );
        r.register(
            "cable_broadcasts_skipped",
            "Stream broadcasts skipped, by ingress and reason (not_json, too_large)",
            m.broadcasts_skipped.clone(),
        );
        r.register(
            "cable_ingress_reconnects",
            "Stream ingress connections re-established, by ingress",
            m.ingress_reconnects.clone(),
        );
        r.register(
            "cable_ingress_up",
            "1 while an enabled stream ingress connection is live, by ingress",
            m.ingress_up.clone(),
        );
        r.register(
            "cable_history_replayed",
            "Messages sent by history replays (extended protocol)",
            m.history_replayed.clone(),
        );
        r.register(
            "cable_history_queries",
            "Database queries made by history replays (round cuts and pages)",
            m.history_queries.clone(),
        );
        r.register(
            "cable_session_restores",
            "Session restore attempts by result (restored, unknown, failed)",
            m.session_restores.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn command(&self, command: &'static str, result: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { command, result })
            .inc();
    }

    pub fn subscribe_rejected(&self, reason: &'static str) {
        self.subscribe_rejects
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn broadcast(&self, ingress: &'static str) {
        self.broadcasts
            .get_or_create(&IngressLabels { ingress })
            .inc();
    }

    pub fn broadcast_skipped(&self, ingress: &'static str, reason: &'static str) {
        self.broadcasts_skipped
            .get_or_create(&IngressReasonLabels { ingress, reason })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn invalid_frame(&self, reason: &'static str) {
        self.invalid_frames
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
