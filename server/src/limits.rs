//! Abuse limits as plain values with time as an input: a per-connection message budget, a
//! sliding window of pairing attempts per code, and concurrent connections per client IP.
//!
//! None of them reads a clock or owns a socket; the hub ([`crate::hub`]) holds them and passes
//! its `now`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens at most, refilled at `rate` tokens per second; each frame
/// takes one.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(rate_per_second: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_second),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// A full bucket at `now` refilled at a fractional rate (e.g. 10 a minute).
    pub(crate) fn with_rate(rate_per_second: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: rate_per_second,
            ..TokenBucket::new(0, burst, now)
        }
    }

    /// Make it `factor` × `rate` and `factor` × `burst` (a connection taking part in several
    /// sessions earns more); the tokens it holds stay, capped at the new burst.
    pub(crate) fn rescale(&mut self, rate_per_second: u32, burst: u32, factor: u32) {
        let factor = f64::from(factor.max(1));
        self.rate = f64::from(rate_per_second) * factor;
        self.burst = f64::from(burst.max(1)) * factor;
        self.tokens = self.tokens.min(self.burst);
    }

    /// Add the tokens earned since the last call. Time going backwards adds nothing.
    pub(crate) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if now > self.last {
            self.last = now;
        }
    }

    /// Whether the bucket holds `burst` tokens (as of the last [`TokenBucket::refill`]).
    pub(crate) fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }

    /// Take one token if there is one.
    pub(crate) fn try_take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The pairing attempts one code received in the last `window`, at most `max` of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptWindow {
    /// When each admitted attempt arrived, oldest first.
    times: VecDeque<Instant>,
    /// Whether the code's owner was told about the current lockout.
    owner_told: bool,
}

/// An attempt refused by [`AttemptWindow::try_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptsExhausted {
    /// When the oldest attempt leaves the window, so the next one would be admitted.
    pub(crate) retry_after: Duration,
    /// Whether this is the first refusal since the last admitted attempt (tell the owner).
    pub(crate) first_refusal: bool,
}

impl AttemptWindow {
    /// Record an attempt at `now`, or refuse it when `max` attempts already arrived within
    /// `window`. Refused attempts are not recorded, so the lockout ends `window` after the
    /// oldest admitted attempt. `max == 0` admits everything.
    pub(crate) fn try_record(
        &mut self,
        now: Instant,
        max: u32,
        window: Duration,
    ) -> Result<(), AttemptsExhausted> {
        if max == 0 {
            return Ok(());
        }
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.times.pop_front();
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if self.times.len() < max {
            self.times.push_back(now);
            self.owner_told = false;
            return Ok(());
        }
        let retry_after = self.times.front().map_or(Duration::ZERO, |oldest| {
            (*oldest + window).saturating_duration_since(now)
        });
        let first_refusal = !self.owner_told;
        self.owner_told = true;
        Err(AttemptsExhausted {
            retry_after,
            first_refusal,
        })
    }
}

/// Open WebSocket connections per client IP, with a cap. IPv6 clients are counted per /64 (one
/// subscriber's network hands out addresses from its /64 freely); IPv4-mapped IPv6 addresses
/// count as their IPv4 address.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionsPerIp {
    counts: HashMap<IpAddr, u32>,
}

impl ConnectionsPerIp {
    /// Count one more connection from `ip`, unless `max` are open already (`max == 0`: no cap).
    /// Returns whether the connection may open.
    pub(crate) fn try_acquire(&mut self, ip: IpAddr, max: u32) -> bool {
        if max != 0 && self.open(ip) >= max {
            return false;
        }
        *self.counts.entry(counted_as(ip)).or_insert(0) += 1;
        true
    }

    /// One connection from `ip` went away.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        let key = counted_as(ip);
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// Connections open from `ip`.
    pub(crate) fn open(&self, ip: IpAddr) -> u32 {
        self.counts.get(&counted_as(ip)).copied().unwrap_or(0)
    }

    /// How many distinct IPs (IPv6: /64 networks) have connections open.
    pub(crate) fn distinct(&self) -> usize {
        self.counts.len()
    }
}

/// The key `ip` is counted under: an IPv4 address as itself, an IPv6 address as its /64.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_rescaled_bucket_refills_faster_and_holds_more_but_never_gains_tokens_at_once() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        for _ in 0..100 {
            assert!(b.try_take());
        }
        assert!(!b.try_take());
        // Four sessions' worth: 200/s, up to 400; nothing more until time passes.
        b.rescale(50, 100, 4);
        assert!(!b.try_take());
        b.refill(t0 + Duration::from_millis(100));
        let mut taken = 0;
        while b.try_take() {
            taken += 1;
        }
        assert_eq!(taken, 20, "100 ms at 200/s");
        b.refill(t0 + Duration::from_secs(10));
        assert!(b.is_full());
        // Back to one: the tokens are capped at the plain burst.
        b.rescale(50, 100, 1);
        assert!(b.is_full());
        let mut taken = 0;
        while b.try_take() {
            taken += 1;
        }
        assert_eq!(taken, 100);
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        assert!(b.is_full());
        for _ in 0..100 {
            b.refill(t0);
            assert!(b.try_take());
        }
        b.refill(t0);
        assert!(!b.try_take());
        // 50 tokens/s: one token every 20 ms.
        b.refill(t0 + 19 * MS);
        assert!(!b.try_take());
        b.refill(t0 + 20 * MS);
        assert!(b.try_take());
        assert!(!b.try_take());
        // A long silence refills to the burst, no further.
        b.refill(t0 + Duration::from_secs(60));
        assert!(b.is_full());
        for _ in 0..100 {
            assert!(b.try_take());
        }
        assert!(!b.try_take());
        // Time going backwards neither adds tokens nor panics.
        b.refill(t0);
        assert!(!b.try_take());
    }

    #[test]
    fn attempts_slide_out_of_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut w = AttemptWindow::default();
        for i in 0..5 {
            w.try_record(t0 + i * Duration::from_secs(1), 5, window)
                .unwrap();
        }
        let refused = w.try_record(t0 + Duration::from_secs(10), 5, window);
        assert_eq!(
            refused,
            Err(AttemptsExhausted {
                retry_after: Duration::from_secs(50),
                first_refusal: true
            })
        );
        // Only the first refusal of a lockout tells the owner.
        let again = w
            .try_record(t0 + Duration::from_secs(20), 5, window)
            .unwrap_err();
        assert!(!again.first_refusal);
        // The oldest attempt leaves the window at t0 + 60 s.
        assert!(
            w.try_record(t0 + Duration::from_secs(59), 5, window)
                .is_err()
        );
        w.try_record(t0 + Duration::from_secs(60), 5, window)
            .unwrap();
        let next = w
            .try_record(t0 + Duration::from_secs(60), 5, window)
            .unwrap_err();
        assert!(next.first_refusal, "a new lockout tells the owner again");
        assert_eq!(next.retry_after, Duration::from_secs(1));
        // No limit.
        let mut w = AttemptWindow::default();
        for _ in 0..1000 {
            w.try_record(t0, 0, window).unwrap();
        }
        assert!(w.times.is_empty());
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let mut c = ConnectionsPerIp::default();
        for _ in 0..3 {
            assert!(c.try_acquire(a, 3));
        }
        assert!(!c.try_acquire(a, 3));
        assert!(c.try_acquire(b, 3));
        assert_eq!(c.open(a), 3);
        c.release(a);
        assert!(c.try_acquire(a, 3));
        for _ in 0..3 {
            c.release(a);
        }
        c.release(b);
        c.release(b); // releasing more than acquired is harmless
        assert_eq!(c.distinct(), 0);
        // IPv6 addresses of one /64 share a count; mapped IPv4 counts as IPv4.
        let mut v6 = ConnectionsPerIp::default();
        assert!(v6.try_acquire("2001:db8:1:2::1".parse().unwrap(), 2));
        assert!(v6.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap(), 2));
        assert!(!v6.try_acquire("2001:db8:1:2::3".parse().unwrap(), 2));
        assert!(v6.try_acquire("2001:db8:1:3::1".parse().unwrap(), 2));
        v6.release("2001:db8:1:2::77".parse().unwrap());
        assert_eq!(v6.open("2001:db8:1:2::".parse().unwrap()), 1);
        assert!(v6.try_acquire("198.51.100.1".parse().unwrap(), 1));
        assert!(!v6.try_acquire("::ffff:198.51.100.1".parse().unwrap(), 1));
        assert_eq!(v6.distinct(), 3);
        // A cap of zero means no cap.
        for _ in 0..100 {
            assert!(c.try_acquire(a, 0));
        }
        assert_eq!(c.open(a), 100);
    }
}
