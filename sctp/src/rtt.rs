//! Round-trip time estimation (RFC 6298) and the retransmission timeout.

use std::time::Duration;

/// Smoothed RTT, its variation, the minimum seen, and the RTO derived from them.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<Duration>,
    initial: Duration,
    rto_min: Duration,
    rto_max: Duration,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration, rto_min: Duration, rto_max: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min: None,
            initial,
            rto_min,
            rto_max,
        }
    }

    /// Take one sample (from a chunk sent once, Karn's rule).
    pub(crate) fn update(&mut self, sample: Duration) {
        self.min = Some(self.min.map_or(sample, |m| m.min(sample)));
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// The smoothed RTT, or the initial guess before any sample.
    pub(crate) fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(self.initial)
    }

    /// Whether a sample was taken.
    pub(crate) fn has_sample(&self) -> bool {
        self.srtt.is_some()
    }

    /// The smallest sample seen (RACK's min RTT).
    pub(crate) fn min(&self) -> Option<Duration> {
        self.min
    }

    /// The retransmission timeout, before any backoff.
    pub(crate) fn rto(&self) -> Duration {
        match self.srtt {
            None => self.initial,
            Some(srtt) => {
                // Clock granularity of 1 ms for the variance term, as RFC 6298 §2 asks.
                let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(1));
                rto.clamp(self.rto_min, self.rto_max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rto_follows_samples_and_stays_within_bounds() {
        let mut rtt = RttEstimator::new(
            Duration::from_millis(300),
            Duration::from_millis(100),
            Duration::from_secs(10),
        );
        assert_eq!(rtt.rto(), Duration::from_millis(300));
        rtt.update(Duration::from_millis(200));
        // srtt 200, rttvar 100: 200 + 400.
        assert_eq!(rtt.rto(), Duration::from_millis(600));
        for _ in 0..50 {
            rtt.update(Duration::from_millis(2));
        }
        assert_eq!(rtt.rto(), Duration::from_millis(100));
        assert_eq!(rtt.min(), Some(Duration::from_millis(2)));
        rtt.update(Duration::from_secs(60));
        assert_eq!(rtt.rto(), Duration::from_secs(10));
    }
}
