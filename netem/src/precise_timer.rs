//! A timer with sub-millisecond precision for the bridge's task.
//!
//! tokio's timer has 1 ms ticks and rounds deadlines up, which puts 1 to 2 ms of error on every
//! packet's delay. This timer sleeps on a condition variable in a thread of its own (the
//! kernel's high-resolution timers: tens of microseconds late at most on an idle machine) and
//! wakes the task through a [`Notify`].

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

/// The task's handle; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct PreciseTimer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    fired: Notify,
}

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    stop: bool,
}

impl PreciseTimer {
    /// Start the timer's thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            fired: Notify::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("netem-timer".to_owned())
            .spawn(move || thread_shared.run())?;
        Ok(PreciseTimer { shared })
    }

    /// Fire at `deadline`, unless an earlier deadline is pending (which fires first; the task
    /// then asks again). A deadline in the past fires at once.
    pub(crate) fn fire_at(&self, deadline: Instant) {
        let mut state = self.shared.lock();
        if state.deadline.is_none_or(|pending| deadline < pending) {
            state.deadline = Some(deadline);
            self.shared.changed.notify_one();
        }
    }

    /// Completes once a deadline passed (at once if one passed since the last call).
    pub(crate) async fn fired(&self) {
        self.shared.fired.notified().await;
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            if state.stop {
                return;
            }
            state = match state.deadline {
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if deadline <= now {
                        state.deadline = None;
                        // A permit is stored if the task is not waiting: no wake-up is lost.
                        self.fired.notify_one();
                        state
                    } else {
                        self.changed
                            .wait_timeout(state, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_at_the_deadline_not_before() {
        let timer = PreciseTimer::start().unwrap();
        for wait in [Duration::from_micros(300), Duration::from_millis(3)] {
            let start = Instant::now();
            timer.fire_at(start + wait);
            timer.fired().await;
            let took = start.elapsed();
            assert!(took >= wait, "{took:?} < {wait:?}");
            // Generous: the machine may be busy; tokio's timer alone would be >= 1 ms late.
            assert!(took < wait + Duration::from_millis(50), "{took:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_earlier_deadline_wins() {
        let timer = PreciseTimer::start().unwrap();
        let start = Instant::now();
        timer.fire_at(start + Duration::from_secs(10));
        timer.fire_at(start + Duration::from_millis(2));
        timer.fired().await;
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
