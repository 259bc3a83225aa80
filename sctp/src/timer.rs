//! The association's timers: one table, each deadline with its reason.

use std::time::Instant;

/// Every timer an association runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// T1-init: retransmit INIT.
    Init,
    /// T1-cookie: retransmit COOKIE ECHO.
    Cookie,
    /// Retransmission timeout (T3-rtx).
    Rto,
    /// RACK reordering window: chunks become lost when it expires.
    Reorder,
    /// Tail loss probe.
    Probe,
    /// Delayed SACK.
    Sack,
    /// Stream reset request retransmission.
    Reconfig,
    /// The pacer allows the next packet.
    Pacing,
    /// SHUTDOWN / SHUTDOWN ACK retransmission.
    Shutdown,
}

const ALL: [Timer; 9] = [
    Timer::Init,
    Timer::Cookie,
    Timer::Rto,
    Timer::Reorder,
    Timer::Probe,
    Timer::Sack,
    Timer::Reconfig,
    Timer::Pacing,
    Timer::Shutdown,
];

impl Timer {
    /// Why the association wants to wake up.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Timer::Init => "retransmit INIT",
            Timer::Cookie => "retransmit COOKIE ECHO",
            Timer::Rto => "retransmission timeout",
            Timer::Reorder => "reordering window of RACK loss detection",
            Timer::Probe => "tail loss probe",
            Timer::Sack => "delayed SACK",
            Timer::Reconfig => "retransmit stream reset request",
            Timer::Pacing => "pacer releases the next packet",
            Timer::Shutdown => "retransmit SHUTDOWN",
        }
    }
}

/// When each timer fires, if armed.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; ALL.len()],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    pub(crate) fn is_armed(&self, timer: Timer) -> bool {
        self.deadlines[timer as usize].is_some()
    }

    /// The earliest deadline and its timer.
    pub(crate) fn next(&self) -> Option<(Instant, Timer)> {
        ALL.iter()
            .filter_map(|t| self.deadlines[*t as usize].map(|at| (at, *t)))
            .min_by_key(|(at, _)| *at)
    }

    /// Disarm and return the timers due at `now`.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Timer> {
        let mut out = Vec::new();
        for t in ALL {
            if self.deadlines[t as usize].is_some_and(|at| at <= now) {
                self.deadlines[t as usize] = None;
                out.push(t);
            }
        }
        out
    }

    pub(crate) fn clear(&mut self) {
        self.deadlines = Default::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_deadline_wins_and_expired_ones_are_taken_once() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::Rto, t0 + Duration::from_millis(300));
        table.set(Timer::Sack, t0 + Duration::from_millis(20));
        assert_eq!(
            table.next(),
            Some((t0 + Duration::from_millis(20), Timer::Sack))
        );
        assert_eq!(
            table.take_expired(t0 + Duration::from_millis(25)),
            vec![Timer::Sack]
        );
        assert!(
            table
                .take_expired(t0 + Duration::from_millis(25))
                .is_empty()
        );
        assert_eq!(table.next().map(|(_, t)| t), Some(Timer::Rto));
        table.stop(Timer::Rto);
        assert_eq!(table.next(), None);
    }
}
