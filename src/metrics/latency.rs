//! Latencies (delivery, outbox lag): a histogram with fixed bounds that renders as Prometheus
//! text and that the inspector reads directly, and the per-thread [`Tally`] a fan-out counts
//! into before adding to it once.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the delivery latency buckets (seconds): 0.5 ms doubling to ~16 s.
const LATENCY_BUCKETS: usize = 16;

/// Messages written and their latencies, counted without sharing anything: a thread tallies
/// a whole fan-out this way and adds it to [`super::Metrics`] once ([`super::Metrics::add_sent`]). Per
/// message, a shared counter and a locked histogram cost two contended cache lines on every
/// delivery of every thread.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub(super) count: u64,
    pub(super) sum: f64,
    /// Per bucket (not cumulative); the last is +Inf.
    pub(super) buckets: [u64; LATENCY_BUCKETS + 1],
}

impl Tally {
    /// One message written `latency` seconds after it was published.
    pub fn add(&mut self, latency: f64) {
        self.count += 1;
        self.sum += latency;
        let bucket = latency_bounds()
            .iter()
            .position(|bound| latency <= *bound)
            .unwrap_or(LATENCY_BUCKETS);
        self.buckets[bucket] += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

fn latency_bounds() -> &'static [f64; LATENCY_BUCKETS] {
    static BOUNDS: std::sync::OnceLock<[f64; LATENCY_BUCKETS]> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut bounds = [0.0; LATENCY_BUCKETS];
        for (bound, value) in
            bounds
                .iter_mut()
                .zip(exponential_buckets(0.0005, 2.0, LATENCY_BUCKETS as u16))
        {
            *bound = value;
        }
        bounds
    })
}

/// A latency histogram (`cable_delivery_latency_seconds`, `cable_outbox_lag_seconds`) that
/// also takes whole [`Tally`]s.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    pub(super) inner: std::sync::Arc<parking_lot::Mutex<Tally>>,
}

impl Latency {
    /// One observation, `seconds` long.
    pub fn observe(&self, seconds: f64) {
        self.inner.lock().add(seconds);
    }

    /// The cumulative buckets `(upper bound, count)`, the last bound infinite: what the
    /// exposition shows, read without rendering it.
    pub fn cumulative(&self) -> Vec<(f64, f64)> {
        let tally = self.inner.lock().clone();
        let mut total = 0;
        latency_bounds()
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(tally.buckets)
            .map(|(le, n)| {
                total += n;
                (le, total as f64)
            })
            .collect()
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let tally = self.inner.lock().clone();
        let buckets: Vec<(f64, u64)> = latency_bounds()
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(tally.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(tally.sum, tally.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_tally_adds_to_the_counter_and_the_histogram_as_observations_would() {
        let metrics = Metrics::new();
        let mut tally = Tally::default();
        for latency in [0.0001, 0.0005, 0.003, 100.0] {
            tally.add(latency);
        }
        metrics.add_sent(&tally);
        metrics.add_sent(&Tally::default());
        let text = metrics.encode();
        for line in [
            "cable_messages_sent_total 4",
            "cable_delivery_latency_seconds_count 4",
            "cable_delivery_latency_seconds_bucket{le=\"0.0005\"} 2",
            "cable_delivery_latency_seconds_bucket{le=\"0.001\"} 2",
            "cable_delivery_latency_seconds_bucket{le=\"0.004\"} 3",
            "cable_delivery_latency_seconds_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("cable_delivery_latency_seconds_sum "))
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 100.0036).abs() < 1e-9);
        // What the inspector reads is what the exposition shows.
        let cumulative = metrics.delivery_latency.cumulative();
        assert_eq!(cumulative[0], (0.0005, 2.0));
        assert_eq!(cumulative[3], (0.004, 3.0));
        assert_eq!(cumulative.last(), Some(&(f64::INFINITY, 4.0)));
    }
}
