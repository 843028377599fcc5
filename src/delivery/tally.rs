//! Messages written, counted per thread while a fan-out runs and added to the metrics once at
//! its end (a fan-out of 10,000 costs one update of the shared counters, not 10,000).

use crate::metrics::{Metrics, Tally};

thread_local! {
    /// What this thread has written since [`tallied`] began, while it runs.
    static TALLY: std::cell::RefCell<Option<Tally>> = const { std::cell::RefCell::new(None) };
}

/// Counts one message written: into this thread's tally inside [`tallied`], else at once.
pub(super) fn count_sent(metrics: &Metrics, latency: f64) {
    TALLY.with(|tally| match tally.borrow_mut().as_mut() {
        Some(tally) => tally.add(latency),
        None => {
            let mut one = Tally::default();
            one.add(latency);
            metrics.add_sent(&one);
        }
    })
}

/// Runs `deliver` (one thread's part of a fan-out) with the messages it writes counted
/// locally, and adds them to `metrics` once when it returns (or unwinds).
pub fn tallied<R>(metrics: &Metrics, deliver: impl FnOnce() -> R) -> R {
    struct Flush<'a>(&'a Metrics);
    impl Drop for Flush<'_> {
        fn drop(&mut self) {
            if let Some(tally) = TALLY.with(|tally| tally.borrow_mut().take()) {
                self.0.add_sent(&tally);
            }
        }
    }
    if TALLY.with(|tally| tally.borrow().is_some()) {
        return deliver(); // already inside one: its end adds these too
    }
    TALLY.with(|tally| *tally.borrow_mut() = Some(Tally::default()));
    let _flush = Flush(metrics);
    deliver()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fan_out_counts_once_at_its_end_and_nothing_is_lost() {
        let metrics = Metrics::new();
        count_sent(&metrics, 0.001);
        assert_eq!(metrics.messages_sent.get(), 1, "outside a fan-out: at once");
        tallied(&metrics, || {
            count_sent(&metrics, 0.001);
            tallied(&metrics, || count_sent(&metrics, 0.002)); // nested: the outer one adds it
            assert_eq!(metrics.messages_sent.get(), 1, "inside: not yet");
        });
        assert_eq!(metrics.messages_sent.get(), 3);
        // A fan-out that unwinds still adds what it wrote.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tallied(&metrics, || {
                count_sent(&metrics, 0.001);
                panic!("a delivery panicked");
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(metrics.messages_sent.get(), 4);
        count_sent(&metrics, 0.001);
        assert_eq!(
            metrics.messages_sent.get(),
            5,
            "and the thread counts at once again"
        );
    }
}
