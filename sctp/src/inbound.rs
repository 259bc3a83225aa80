//! The receiving side's record of TSNs: the cumulative point, out-of-order ranges and
//! duplicates, and the SACK that reports them.

use std::collections::BTreeMap;

use crate::tsn::unwrap_tsn;
use crate::wire::SackChunk;

/// Most gap blocks one SACK reports: a SACK stays small (~150 bytes), so ACKs do not crowd a
/// slow reverse path.
const MAX_GAP_BLOCKS: usize = 32;
/// Of those, the lowest ones; the rest are the highest.
const LOW_GAP_BLOCKS: usize = 8;
/// Most duplicate TSNs one SACK reports.
const MAX_DUPLICATES: usize = 32;

#[derive(Debug)]
pub(crate) struct DataTracker {
    /// The last TSN received in order (unwrapped).
    cumulative: u64,
    /// Received ranges above `cumulative + 1`: start → end, inclusive, disjoint, not adjacent.
    above: BTreeMap<u64, u64>,
    duplicates: Vec<u32>,
}

impl DataTracker {
    /// The peer's first TSN will be `initial_tsn`.
    pub(crate) fn new(initial_tsn: u32) -> DataTracker {
        // Start far from zero so the unwrapped values never underflow.
        let cumulative = (1u64 << 32) + u64::from(initial_tsn) - 1;
        DataTracker {
            cumulative,
            above: BTreeMap::new(),
            duplicates: Vec::new(),
        }
    }

    pub(crate) fn unwrap(&self, tsn: u32) -> u64 {
        unwrap_tsn(self.cumulative, tsn)
    }

    pub(crate) fn cumulative(&self) -> u64 {
        self.cumulative
    }

    pub(crate) fn cumulative_wire(&self) -> u32 {
        self.cumulative as u32
    }

    /// Whether `tsn` was received already.
    pub(crate) fn has(&self, tsn: u64) -> bool {
        if tsn <= self.cumulative {
            return true;
        }
        self.above
            .range(..=tsn)
            .next_back()
            .is_some_and(|(_, end)| *end >= tsn)
    }

    /// Note a duplicate, for the next SACK.
    pub(crate) fn note_duplicate(&mut self, tsn: u32) {
        if self.duplicates.len() < MAX_DUPLICATES {
            self.duplicates.push(tsn);
        }
    }

    /// Record a new TSN (not [`Self::has`]). Returns whether the cumulative point moved.
    pub(crate) fn record(&mut self, tsn: u64) -> bool {
        if tsn == self.cumulative + 1 {
            self.cumulative = tsn;
            self.absorb();
            return true;
        }
        // Merge with the range ending just below and the one starting just above.
        let mut start = tsn;
        let mut end = tsn;
        if let Some((&s, &e)) = self.above.range(..tsn).next_back()
            && e + 1 == tsn
        {
            start = s;
            self.above.remove(&s);
        }
        if let Some(e) = self.above.remove(&(tsn + 1)) {
            end = e;
        }
        self.above.insert(start, end);
        false
    }

    /// FORWARD TSN: everything up to `new_cumulative` counts as received.
    pub(crate) fn forward_to(&mut self, new_cumulative: u64) -> bool {
        if new_cumulative <= self.cumulative {
            return false;
        }
        self.cumulative = new_cumulative;
        let stale: Vec<u64> = self
            .above
            .range(..=new_cumulative)
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            if let Some(e) = self.above.remove(&s)
                && e > new_cumulative
            {
                self.above.insert(new_cumulative + 1, e);
            }
        }
        self.absorb();
        true
    }

    fn absorb(&mut self) {
        while let Some(end) = self.above.remove(&(self.cumulative + 1)) {
            self.cumulative = end;
        }
    }

    /// Whether TSNs are missing below the highest received.
    pub(crate) fn has_gaps(&self) -> bool {
        !self.above.is_empty()
    }

    /// A SACK of the current state; takes the duplicates.
    ///
    /// With more gaps than fit, the SACK reports the lowest few (what the sender must repair
    /// next) and the highest ones (what arrived most recently: time-based loss detection at
    /// the sender needs to hear about its latest packets, as TCP's first SACK block does). The
    /// middle ones were reported before; the sender keeps what it learned.
    pub(crate) fn sack(&mut self, a_rwnd: u32) -> SackChunk {
        let block = |(s, e): (&u64, &u64)| {
            let start = s - self.cumulative;
            let end = e - self.cumulative;
            (end <= u64::from(u16::MAX)).then_some((start as u16, end as u16))
        };
        let gaps: Vec<(u16, u16)> = if self.above.len() <= MAX_GAP_BLOCKS {
            self.above.iter().filter_map(block).collect()
        } else {
            let low = self.above.iter().take(LOW_GAP_BLOCKS);
            let high = self
                .above
                .iter()
                .skip(self.above.len() - (MAX_GAP_BLOCKS - LOW_GAP_BLOCKS));
            low.chain(high).filter_map(block).collect()
        };
        SackChunk {
            cumulative_tsn: self.cumulative as u32,
            a_rwnd,
            gaps,
            duplicates: std::mem::take(&mut self.duplicates),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_fill_and_the_sack_reports_them() {
        let mut t = DataTracker::new(100);
        let base = t.unwrap(100);
        assert!(t.record(base));
        assert!(!t.record(base + 2));
        assert!(!t.record(base + 3));
        assert!(!t.record(base + 6));
        let sack = t.sack(1000);
        assert_eq!(sack.cumulative_tsn, 100);
        assert_eq!(sack.gaps, vec![(2, 3), (6, 6)]);
        assert!(t.has(base + 3) && !t.has(base + 1) && !t.has(base + 4));
        assert!(t.record(base + 1));
        assert_eq!(t.cumulative_wire(), 103);
        assert_eq!(t.sack(1000).gaps, vec![(3, 3)]);
    }

    #[test]
    fn forward_tsn_skips_and_merges() {
        let mut t = DataTracker::new(u32::MAX - 1);
        let base = t.unwrap(u32::MAX - 1);
        t.record(base + 3);
        t.record(base + 4);
        t.record(base + 8);
        assert!(t.forward_to(base + 3));
        // 3 and 4 were received: the point moves to 4; 8 stays a gap.
        assert_eq!(t.cumulative(), base + 4);
        assert_eq!(t.sack(0).gaps, vec![(4, 4)]);
        assert_eq!(t.cumulative_wire(), 2);
        assert!(!t.forward_to(base + 2));
    }

    #[test]
    fn duplicates_are_reported_once() {
        let mut t = DataTracker::new(1);
        t.note_duplicate(1);
        assert_eq!(t.sack(0).duplicates, vec![1]);
        assert!(t.sack(0).duplicates.is_empty());
    }
}
