//! What Linux's `/proc` says about a process: resident memory (sampled on a thread of its
//! own, or read once), CPU time, and the open-file limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`getconf CLK_TCK`; 100 on every
/// Linux architecture Proxim runs on).
pub const CLK_TCK: u64 = 100;

/// One `/proc/<pid>/status` reading.
#[derive(Debug, Clone, Copy)]
pub struct MemorySample {
    /// When, since the sampler started.
    pub at: Duration,
    /// VmRSS, in KiB.
    pub rss_kib: u64,
    /// VmHWM (peak VmRSS), in KiB.
    pub hwm_kib: u64,
}

/// Samples a process's VmRSS and VmHWM every `period` on a thread of its own.
#[derive(Debug)]
pub struct MemorySampler {
    samples: Arc<Mutex<Vec<MemorySample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    pid: u32,
}

impl MemorySampler {
    /// Start sampling `pid` every `period`.
    pub fn start(pid: u32, period: Duration) -> MemorySampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = std::thread::spawn({
            let samples = samples.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss_kib, hwm_kib)) = memory_kib(pid) {
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(MemorySample {
                                at: started.elapsed(),
                                rss_kib,
                                hwm_kib,
                            });
                    }
                    std::thread::sleep(period);
                }
            }
        });
        MemorySampler {
            samples,
            stop,
            thread: Some(thread),
            started,
            pid,
        }
    }

    /// A reading now, outside the sampling period.
    pub fn now(&self) -> Option<MemorySample> {
        let (rss_kib, hwm_kib) = memory_kib(self.pid)?;
        Some(MemorySample {
            at: self.started.elapsed(),
            rss_kib,
            hwm_kib,
        })
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<MemorySample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stop sampling; every sample taken.
    pub fn stop(mut self) -> Vec<MemorySample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples()
    }
}

/// VmRSS and VmHWM of `pid`, in KiB; `None` when the process is gone.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("VmRSS")?, field("VmHWM")?))
}

/// CPU time `pid` has used so far (user + system), in clock ticks ([`CLK_TCK`] a second);
/// `None` when the process is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2, in parentheses)
/// may hold spaces and parentheses, so the fields are counted after its last `)`: `utime` and
/// `stime` are fields 14 and 15 of the line, the 12th and 13th after the name.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft open-file limit of `pid` (`None` when unlimited or unreadable).
pub fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_open_file_limit(&limits)
}

/// The soft limit on the `Max open files` line of a `/proc/<pid>/limits` table.
pub fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // Fields 14 and 15 (utime 1234, stime 56); the name holds a space and a parenthesis.
        let stat = "4242 (proxim (x) y) S 1 4242 4242 0 -1 4194560 1571 0 0 0 1234 56 0 0 \
                    20 0 3 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_cpu_time_memory_and_a_file_limit() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(memory_kib(pid).is_some_and(|(rss, hwm)| rss > 0 && hwm >= rss));
        assert!(open_file_limit(pid).is_some_and(|n| n > 0));
    }

    #[test]
    fn the_open_file_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95561                95561                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), None);
    }
}
