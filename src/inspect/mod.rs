//! The operator's view (docs/reference.md §9): `GET /inspect` (a page, its assets embedded) and
//! `GET /inspect/data` (the JSON it polls), both behind `CABLE_ADMIN_TOKEN`.
//!
//! - Numbers are aggregated here, never per subscription on the page: accounts are counted in
//!   one pass over the router ([`crate::router::Router::census`]), the largest
//!   [`INSPECT_MAX_ACCOUNTS`] are listed, online ids are capped at [`INSPECT_MAX_ONLINE_IDS`] per account.
//! - A snapshot is built at most once per [`INSPECT_SNAPSHOT_EVERY`], however many pages poll.
//! - Rates and latencies come from this process's own metrics, sampled every
//!   [`INSPECT_SAMPLE_EVERY`] into a ring of [`INSPECT_SAMPLES`] points (the charts' last ten minutes);
//!   latency percentiles are read from the histograms' buckets (upper bounds).
//! - Nothing secret: tokens as a 4-character prefix, URLs with their password masked.
//!
//! Files: [`log`] keeps the recent disconnects (written by every session), [`http`] answers
//! the requests (authentication, assets).

pub mod http;
pub mod log;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::clock::unix_now;
use crate::config::tuning::{
    INSPECT_MAX_ACCOUNTS, INSPECT_MAX_ONLINE_IDS, INSPECT_SAMPLES, INSPECT_SAMPLE_EVERY,
    INSPECT_SNAPSHOT_EVERY,
};
use crate::metrics::Metrics;
use crate::router::Router;
use log::DisconnectLog;

/// The health of one ingress, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct IngressHealth {
    pub name: &'static str,
    pub enabled: bool,
    /// `None` when it has no connection of its own (the broadcast API).
    pub up: Option<bool>,
    /// Where it connects, password masked.
    pub target: Option<String>,
}

/// What the inspector reads of the process.
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
    pub pool: PgPool,
    pub presence_ttl: Duration,
    pub disconnects: Arc<DisconnectLog>,
    pub listen_ready: watch::Receiver<bool>,
    /// Each stream ingress connection (`redis`), by name.
    pub ingress_ready: Vec<(&'static str, watch::Receiver<bool>)>,
    pub database: String,
    pub redis: Option<String>,
    pub broadcast_api: bool,
}

/// One sample of the charts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Sample {
    t: f64,
    events_read_per_s: f64,
    messages_sent_per_s: f64,
    /// Per interval, from the histograms (milliseconds; `None` when nothing was observed).
    delivery_p50_ms: Option<f64>,
    delivery_p99_ms: Option<f64>,
    outbox_lag_p99_ms: Option<f64>,
}

/// Cumulative readings of the metrics at one instant.
#[derive(Debug, Clone, Default)]
struct Reading {
    at: f64,
    events_read: f64,
    messages_sent: f64,
    delivery: Vec<(f64, f64)>,
    outbox_lag: Vec<(f64, f64)>,
}

pub struct Inspector {
    sources: Sources,
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    snapshot: tokio::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

/// The `q` quantile of what was observed between two readings of a histogram, as the upper
/// bound of its bucket, in milliseconds.
fn quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - earlier)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let (le, _) = delta.iter().find(|(_, count)| *count >= q * total)?;
    // Beyond the last finite bucket: say the last finite bound.
    let le = if le.is_finite() {
        *le
    } else {
        delta
            .iter()
            .rev()
            .find(|(le, _)| le.is_finite())
            .map_or(0.0, |(le, _)| *le)
    };
    Some(le * 1000.0)
}

impl Inspector {
    pub fn new(sources: Sources) -> Arc<Inspector> {
        Arc::new(Inspector {
            sources,
            started: Instant::now(),
            samples: Mutex::new(VecDeque::with_capacity(INSPECT_SAMPLES)),
            snapshot: tokio::sync::Mutex::new(None),
        })
    }

    fn read(&self) -> Reading {
        // Read from the metrics themselves, the one source of truth `/metrics` also shows.
        let metrics = &self.sources.metrics;
        Reading {
            at: unix_now(),
            events_read: metrics.events_read.get() as f64,
            messages_sent: metrics.messages_sent.get() as f64,
            delivery: metrics.delivery_latency.cumulative(),
            outbox_lag: metrics.outbox_lag.cumulative(),
        }
    }

    /// Samples the metrics every [`INSPECT_SAMPLE_EVERY`], forever (a task of the process).
    pub async fn sample(self: Arc<Self>) {
        let mut previous = self.read();
        let mut tick = tokio::time::interval(INSPECT_SAMPLE_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = self.read();
            let seconds = (now.at - previous.at).max(0.001);
            let sample = Sample {
                t: now.at,
                events_read_per_s: (now.events_read - previous.events_read) / seconds,
                messages_sent_per_s: (now.messages_sent - previous.messages_sent) / seconds,
                delivery_p50_ms: quantile_ms(&previous.delivery, &now.delivery, 0.5),
                delivery_p99_ms: quantile_ms(&previous.delivery, &now.delivery, 0.99),
                outbox_lag_p99_ms: quantile_ms(&previous.outbox_lag, &now.outbox_lag, 0.99),
            };
            let mut samples = self.samples.lock();
            if samples.len() == INSPECT_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(sample);
            drop(samples);
            previous = now;
        }
    }

    /// The page's data: a snapshot at most [`INSPECT_SNAPSHOT_EVERY`] old.
    pub async fn snapshot(&self) -> Arc<Value> {
        let mut cached = self.snapshot.lock().await;
        if let Some((at, value)) = cached.as_ref() {
            if at.elapsed() < INSPECT_SNAPSHOT_EVERY {
                return value.clone();
            }
        }
        let value = Arc::new(self.build().await);
        *cached = Some((Instant::now(), value.clone()));
        value
    }

    async fn build(&self) -> Value {
        let sources = &self.sources;
        let mut census = sources.router.census();
        let accounts_total = census.len();
        let user_total: usize = census.iter().map(|a| a.user_subscriptions).sum();
        let contact_total: usize = census.iter().map(|a| a.contact_subscriptions).sum();
        census.sort_by_key(|account| {
            std::cmp::Reverse(account.user_subscriptions + account.contact_subscriptions)
        });
        census.truncate(INSPECT_MAX_ACCOUNTS);
        let shown: Vec<i64> = census.iter().map(|account| account.account_id).collect();
        let online = match self.online(&shown).await {
            Ok(online) => online,
            Err(e) => {
                tracing::debug!(error = %e, "inspector: could not read presence");
                HashMap::new()
            }
        };
        let accounts: Vec<Value> = census
            .iter()
            .map(|account| {
                let online = online.get(&account.account_id);
                serde_json::json!({
                    "account_id": account.account_id,
                    "connections": account.connections,
                    "subscriptions": account.user_subscriptions + account.contact_subscriptions,
                    "user_subscriptions": account.user_subscriptions,
                    "contact_subscriptions": account.contact_subscriptions,
                    "online": online.map_or_else(
                        || serde_json::json!({"users": 0, "contacts": 0, "user_ids": [], "contact_ids": []}),
                        |online| serde_json::json!(online),
                    ),
                })
            })
            .collect();
        let metrics = &sources.metrics;
        let samples: Vec<Sample> = self.samples.lock().iter().copied().collect();
        let latest = samples.last().copied().unwrap_or_default();
        let series =
            |f: fn(&Sample) -> Option<f64>| -> Vec<Option<f64>> { samples.iter().map(f).collect() };
        let mut ingress = vec![IngressHealth {
            name: "listen",
            enabled: true,
            up: Some(*sources.listen_ready.borrow()),
            target: Some(sources.database.clone()),
        }];
        let redis_up = sources
            .ingress_ready
            .iter()
            .find(|(name, _)| *name == crate::ingress::redis::INGRESS)
            .map(|(_, ready)| *ready.borrow());
        ingress.push(IngressHealth {
            name: "redis",
            enabled: sources.redis.is_some(),
            up: redis_up,
            target: sources.redis.clone(),
        });
        ingress.push(IngressHealth {
            name: "broadcast_api",
            enabled: sources.broadcast_api,
            up: None,
            target: None,
        });
        serde_json::json!({
            "generated_at": unix_now(),
            "uptime_s": self.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "totals": {
                "connections": metrics.connections_open.get(),
                "subscriptions": metrics.subscriptions_live.get(),
                "user_subscriptions": user_total,
                "contact_subscriptions": contact_total,
                "accounts": accounts_total,
            },
            "accounts": accounts,
            "accounts_shown": shown.len(),
            "rates": {
                "events_read_per_s": latest.events_read_per_s,
                "messages_sent_per_s": latest.messages_sent_per_s,
            },
            "series": {
                "t": samples.iter().map(|s| s.t).collect::<Vec<_>>(),
                "events_read_per_s": series(|s| Some(s.events_read_per_s)),
                "messages_sent_per_s": series(|s| Some(s.messages_sent_per_s)),
                "delivery_p50_ms": series(|s| s.delivery_p50_ms),
                "delivery_p99_ms": series(|s| s.delivery_p99_ms),
                "outbox_lag_p99_ms": series(|s| s.outbox_lag_p99_ms),
            },
            "ingress": ingress,
            "disconnects": sources.disconnects.recent(),
        })
    }

    /// Who is online (rows of `cable_presence` within the TTL, shared by every process) in
    /// `accounts`: counts, and the first ids.
    async fn online(&self, accounts: &[i64]) -> Result<HashMap<i64, Online>, sqlx::Error> {
        if accounts.is_empty() {
            return Ok(HashMap::new());
        }
        static ONLINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT account_id,
                        count(*) FILTER (WHERE kind = 'u') AS users,
                        count(*) FILTER (WHERE kind = 'c') AS contacts,
                        COALESCE((array_agg(principal_id ORDER BY principal_id)
                                  FILTER (WHERE kind = 'u'))[1:$3], '{{}}') AS user_ids,
                        COALESCE((array_agg(principal_id ORDER BY principal_id)
                                  FILTER (WHERE kind = 'c'))[1:$3], '{{}}') AS contact_ids
                   FROM cable_presence p
                  WHERE account_id = ANY($1) AND {}
                  GROUP BY account_id",
                crate::presence::rules::live_sql("$2")
            )
        });
        let rows: Vec<Online> = sqlx::query_as(sqlx::AssertSqlSafe(ONLINE.as_str()))
            .bind(accounts)
            .bind(self.sources.presence_ttl.as_secs_f64())
            .bind(INSPECT_MAX_ONLINE_IDS as i32)
            .fetch_all(&self.sources.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|online| (online.account_id, online))
            .collect())
    }
}

/// Who is online in one account: counts, and the first [`INSPECT_MAX_ONLINE_IDS`] ids of each kind.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
struct Online {
    #[serde(skip)]
    account_id: i64,
    users: i64,
    contacts: i64,
    user_ids: Vec<i64>,
    contact_ids: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_what_happened_between_two_readings() {
        let after = vec![(0.001, 5.0), (0.002, 9.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile_ms(&[], &after, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&[], &after, 0.9), Some(2.0));
        // The slowest tenth is beyond the last bound: the last finite bound is shown.
        assert_eq!(quantile_ms(&[], &after, 0.99), Some(2.0));
        // Only what happened between the readings counts.
        let before = vec![(0.001, 5.0), (0.002, 5.0), (f64::INFINITY, 5.0)];
        assert_eq!(quantile_ms(&before, &after, 0.5), Some(2.0));
        assert_eq!(quantile_ms(&after, &after, 0.5), None);
    }
}
