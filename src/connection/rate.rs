//! The command-rate bucket of one connection: `CABLE_MAX_COMMAND_RATE` commands per second on
//! average, bursts of twice as many.

use std::time::Instant;

pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32) -> RateLimit {
        let rate = f64::from(rate.max(1));
        RateLimit::with_burst(rate, rate * 2.0)
    }

    /// `rate` per second on average, `burst` at once.
    pub fn with_burst(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    /// Takes one command's token; `false` when the bucket is empty.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_of_twice_the_rate_then_the_rate() {
        let start = Instant::now();
        let mut bucket = RateLimit::new(10);
        bucket.last = start;
        assert_eq!((0..25).filter(|_| bucket.allow_at(start)).count(), 20);
        // One second later, ten more.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..25).filter(|_| bucket.allow_at(later)).count(), 10);
    }
}
