//! Codes a desktop held and gave up, remembered for a while so that a phone typing one is told
//! what happened to it (`code_expired`, `code_used`) instead of `unknown_code`, and so that the
//! hub does not hand it to another desktop meanwhile.
//!
//! A plain value with time as an input, like the abuse limits ([`crate::limits`]): bounded in
//! size (the oldest entry goes first) and in time (an entry lapses `retention` after it was
//! retired).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proxim_protocol::RoutingCode;

/// Why a code was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetireReason {
    /// It reached the end of its lifetime (`code_ttl`).
    Expired,
    /// Its desktop said it was used or burned (`renew_code`).
    Used,
}

impl RetireReason {
    /// For logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RetireReason::Expired => "expired",
            RetireReason::Used => "used",
        }
    }
}

/// Retired codes, each remembered for `retention`, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct RetiredCodes {
    retention: Duration,
    capacity: usize,
    entries: HashMap<RoutingCode, Retired>,
    /// Codes in the order they were retired, with the instant each lapses. Since the retention
    /// is the same for all, this is also the order in which they lapse. An entry whose code is
    /// no longer in `entries` with the same `until` is stale and skipped.
    order: VecDeque<(Instant, RoutingCode)>,
}

#[derive(Debug, Clone, Copy)]
struct Retired {
    reason: RetireReason,
    until: Instant,
}

impl RetiredCodes {
    pub(crate) fn new(retention: Duration, capacity: usize) -> Self {
        RetiredCodes {
            retention,
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remember `code` as retired at `now`, forgetting lapsed entries and, over capacity, the
    /// oldest ones.
    /// Returns until when it is remembered (`None`: it is not).
    pub(crate) fn insert(
        &mut self,
        code: RoutingCode,
        reason: RetireReason,
        now: Instant,
    ) -> Option<Instant> {
        let until = now.checked_add(self.retention)?;
        self.insert_until(code, reason, until, now)
    }

    /// Remember `code` as retired until `until` (a restored entry: at most the retention from
    /// `now`, and not before any entry remembered already, so the order stays the lapse
    /// order). Returns until when it is remembered (`None`: it is not).
    pub(crate) fn insert_until(
        &mut self,
        code: RoutingCode,
        reason: RetireReason,
        until: Instant,
        now: Instant,
    ) -> Option<Instant> {
        self.prune(now);
        if self.capacity == 0 || until <= now {
            return None;
        }
        let latest = self.order.back().map(|(t, _)| *t);
        let until = now
            .checked_add(self.retention)
            .map_or(until, |max| until.min(max))
            .max(latest.unwrap_or(until));
        while self.entries.len() >= self.capacity {
            if !self.pop_oldest() {
                break;
            }
        }
        self.entries.insert(code.clone(), Retired { reason, until });
        self.order.push_back((until, code));
        Some(until)
    }

    /// How long an entry is remembered.
    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }

    /// Every entry: the code, why it was retired, until when it is remembered.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RoutingCode, RetireReason, Instant)> {
        self.entries
            .iter()
            .map(|(code, r)| (code, r.reason, r.until))
    }

    /// Why `code` was retired, if it is remembered and has not lapsed by `now`.
    pub(crate) fn get(&self, code: &RoutingCode, now: Instant) -> Option<RetireReason> {
        self.entries
            .get(code)
            .filter(|r| r.until > now)
            .map(|r| r.reason)
    }

    /// Whether `code` is remembered (lapsed or not: until [`RetiredCodes::prune`] forgets it,
    /// it is not handed out again).
    pub(crate) fn contains(&self, code: &RoutingCode) -> bool {
        self.entries.contains_key(code)
    }

    /// Forget the entries that lapsed by `now`.
    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            self.pop_oldest();
        }
    }

    /// When the oldest entry lapses.
    pub(crate) fn next_lapse(&self) -> Option<Instant> {
        self.order.front().map(|(until, _)| *until)
    }

    /// Codes remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forget the oldest entry; `false` when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((until, code)) = self.order.pop_front() else {
            return false;
        };
        if self.entries.get(&code).is_some_and(|r| r.until == until) {
            self.entries.remove(&code);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> RoutingCode {
        RoutingCode::new(s).unwrap()
    }

    #[test]
    fn entries_lapse_after_the_retention() {
        let mut retired = RetiredCodes::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        retired.insert(code("AAAA"), RetireReason::Expired, t0);
        retired.insert(
            code("BBBB"),
            RetireReason::Used,
            t0 + Duration::from_secs(30),
        );
        assert_eq!(
            retired.get(&code("AAAA"), t0 + Duration::from_secs(59)),
            Some(RetireReason::Expired)
        );
        assert_eq!(retired.next_lapse(), Some(t0 + Duration::from_secs(60)));
        // Lapsed but not pruned: no longer answered, still not free.
        assert_eq!(
            retired.get(&code("AAAA"), t0 + Duration::from_secs(60)),
            None
        );
        assert!(retired.contains(&code("AAAA")));
        retired.prune(t0 + Duration::from_secs(60));
        assert!(!retired.contains(&code("AAAA")));
        assert_eq!(
            retired.get(&code("BBBB"), t0 + Duration::from_secs(60)),
            Some(RetireReason::Used)
        );
        assert_eq!(retired.len(), 1);
        assert_eq!(retired.next_lapse(), Some(t0 + Duration::from_secs(90)));
    }

    #[test]
    fn over_capacity_the_oldest_goes_first() {
        let mut retired = RetiredCodes::new(Duration::from_secs(3600), 3);
        let now = Instant::now();
        for c in ["AAAA", "BBBB", "CCCC", "DDDD"] {
            retired.insert(code(c), RetireReason::Used, now);
        }
        assert_eq!(retired.len(), 3);
        assert!(!retired.contains(&code("AAAA")));
        for c in ["BBBB", "CCCC", "DDDD"] {
            assert!(retired.contains(&code(c)), "{c}");
        }
        let mut none = RetiredCodes::new(Duration::from_secs(3600), 0);
        none.insert(code("AAAA"), RetireReason::Used, now);
        assert_eq!(none.len(), 0);
    }
}
