//! A link: two independent [`Direction`]s between its ends A and B.

use std::time::Instant;

use crate::direction::{Counters, Direction, Fate};
use crate::spec::Impairment;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Way {
    /// From end A to end B.
    AToB,
    /// From end B to end A.
    BToA,
}

impl Way {
    /// Both ways, A to B first.
    pub const BOTH: [Way; 2] = [Way::AToB, Way::BToA];

    /// 0 for A to B, 1 for B to A (for per-direction arrays).
    pub fn index(self) -> usize {
        match self {
            Way::AToB => 0,
            Way::BToA => 1,
        }
    }

    /// `a->b` or `b->a`.
    pub fn name(self) -> &'static str {
        match self {
            Way::AToB => "a->b",
            Way::BToA => "b->a",
        }
    }
}

/// Two directions, each with its own impairment and random streams.
#[derive(Debug)]
pub struct Link {
    a_to_b: Direction,
    b_to_a: Direction,
}

impl Link {
    /// A link whose random choices all derive from `seed` (each direction its own streams).
    pub fn new(a_to_b: Impairment, b_to_a: Impairment, seed: u64) -> Self {
        Link {
            a_to_b: Direction::new(a_to_b, seed.wrapping_mul(2)),
            b_to_a: Direction::new(b_to_a, seed.wrapping_mul(2).wrapping_add(1)),
        }
    }

    /// Take a packet travelling `way`, arriving at `now`.
    pub fn push(&mut self, now: Instant, way: Way, packet: Vec<u8>) -> Fate {
        self.direction_mut(way).push(now, packet)
    }

    /// When the next packet is due either way.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.a_to_b.poll_timeout(), self.b_to_a.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A packet due by `now` and the way it travels (A to B first when both have one).
    pub fn pop_ready(&mut self, now: Instant) -> Option<(Way, Vec<u8>)> {
        if let Some(packet) = self.a_to_b.pop_ready(now) {
            return Some((Way::AToB, packet));
        }
        self.b_to_a.pop_ready(now).map(|packet| (Way::BToA, packet))
    }

    /// One direction.
    pub fn direction(&self, way: Way) -> &Direction {
        match way {
            Way::AToB => &self.a_to_b,
            Way::BToA => &self.b_to_a,
        }
    }

    /// The counts of one direction.
    pub fn counters(&self, way: Way) -> Counters {
        self.direction(way).counters()
    }

    fn direction_mut(&mut self, way: Way) -> &mut Direction {
        match way {
            Way::AToB => &mut self.a_to_b,
            Way::BToA => &mut self.b_to_a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn directions_are_independent() {
        let mut link = Link::new(
            "delay=10ms".parse().unwrap(),
            "delay=30ms,loss=100%".parse().unwrap(),
            1,
        );
        let t0 = Instant::now();
        assert!(matches!(
            link.push(t0, Way::AToB, vec![1]),
            Fate::Deliver { .. }
        ));
        assert!(matches!(
            link.push(t0, Way::BToA, vec![2]),
            Fate::Dropped(_)
        ));
        assert_eq!(link.poll_timeout(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(link.pop_ready(t0 + Duration::from_millis(9)), None);
        assert_eq!(
            link.pop_ready(t0 + Duration::from_millis(10)),
            Some((Way::AToB, vec![1]))
        );
        assert_eq!(link.poll_timeout(), None);
        assert_eq!(link.counters(Way::AToB).packets_out, 1);
        assert_eq!(link.counters(Way::BToA).dropped_loss, 1);
    }

    #[test]
    fn the_two_ways_draw_different_streams() {
        let mut link = Link::new("loss=50%".parse().unwrap(), "loss=50%".parse().unwrap(), 9);
        let t0 = Instant::now();
        let fates: Vec<(bool, bool)> = (0..64)
            .map(|_| {
                (
                    matches!(link.push(t0, Way::AToB, vec![0]), Fate::Dropped(_)),
                    matches!(link.push(t0, Way::BToA, vec![0]), Fate::Dropped(_)),
                )
            })
            .collect();
        assert!(fates.iter().any(|(a, b)| a != b));
    }
}
