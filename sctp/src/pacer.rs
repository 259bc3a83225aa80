//! A token-bucket pacer: packets leave at the congestion controller's rate, in bursts no larger
//! than what a 1 ms timer can keep fed.

use std::time::{Duration, Instant};

/// The longest a paced burst lasts at the pacing rate. A driver's timer fires with about a
/// millisecond of granularity; a smaller burst would idle the link between wake-ups.
const BURST_TIME: Duration = Duration::from_millis(2);
/// The smallest burst, in packets.
const MIN_BURST_PACKETS: f64 = 10.0;

#[derive(Debug)]
pub(crate) struct Pacer {
    /// Bytes that may leave now (may go below zero by one packet).
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(crate) fn new(now: Instant, mss: usize) -> Pacer {
        Pacer {
            tokens: MIN_BURST_PACKETS * mss as f64,
            last: now,
        }
    }

    fn burst(rate: f64, mss: usize) -> f64 {
        (rate * BURST_TIME.as_secs_f64()).max(MIN_BURST_PACKETS * mss as f64)
    }

    /// `Ok` when a packet may leave now, else the instant it may.
    pub(crate) fn check(&mut self, now: Instant, rate: f64, mss: usize) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(Self::burst(rate, mss));
        self.last = now;
        if self.tokens > 0.0 {
            return Ok(());
        }
        let wait = (-self.tokens + mss as f64) / rate.max(1.0);
        Err(now + Duration::from_secs_f64(wait.min(1.0)))
    }

    /// A packet of `bytes` left.
    pub(crate) fn on_send(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_run_rate_is_the_pacing_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, 1200);
        let rate = 1_000_000.0; // 1 MB/s
        let mut now = t0;
        let mut sent = 0usize;
        let end = t0 + Duration::from_secs(1);
        while now < end {
            match pacer.check(now, rate, 1200) {
                Ok(()) => {
                    pacer.on_send(1200);
                    sent += 1200;
                }
                Err(at) => now = at.max(now + Duration::from_micros(100)),
            }
        }
        // One second at 1 MB/s, plus the first burst.
        assert!((1_000_000..=1_030_000).contains(&sent), "{sent}");
    }
}
