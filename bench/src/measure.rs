//! What a row reports, and how a row process measures itself (CPU time and peak RSS from
//! `/proc/self`, no `unsafe`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Params;

/// The JSON line a row process prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RowReport {
    pub(crate) row: String,
    pub(crate) outcome: Outcome,
    /// CPU seconds (user + system, all threads) over the measured phase.
    pub(crate) cpu_secs: Option<f64>,
    /// Peak resident set of the row process (`VmHWM`), KiB.
    pub(crate) peak_rss_kib: Option<u64>,
}

impl RowReport {
    pub(crate) fn failed(row: &str, error: String) -> Self {
        RowReport {
            row: row.to_owned(),
            outcome: Outcome::Failed { error },
            cpu_secs: None,
            peak_rss_kib: None,
        }
    }
}

/// What one row measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// A bulk transfer.
    Bulk {
        target: u64,
        moved: u64,
        secs: f64,
        timed_out: bool,
        cpu_secs: Option<f64>,
        note: Option<String>,
    },
    /// Setup latency over many trials.
    Setup {
        trials: u32,
        ok: u32,
        p50_ms: Option<f64>,
        p99_ms: Option<f64>,
        max_ms: Option<f64>,
        timed_out: bool,
        first_error: Option<String>,
    },
    /// The row could not run.
    Failed { error: String },
}

impl Outcome {
    /// MB/s of a bulk row that moved everything.
    pub(crate) fn complete_mb_per_s(&self) -> Option<f64> {
        match self {
            Outcome::Bulk {
                timed_out: false,
                moved,
                target,
                secs,
                ..
            } if moved >= target && *secs > 0.0 => Some(*moved as f64 / 1e6 / secs),
            _ => None,
        }
    }

    /// MB/s of a bulk row, complete or not.
    pub(crate) fn any_mb_per_s(&self) -> Option<f64> {
        match self {
            Outcome::Bulk { moved, secs, .. } if *secs > 0.0 && *moved > 0 => {
                Some(*moved as f64 / 1e6 / secs)
            }
            _ => None,
        }
    }

    pub(crate) fn p50_ms(&self) -> Option<f64> {
        match self {
            Outcome::Setup { p50_ms, .. } => *p50_ms,
            _ => None,
        }
    }

    pub(crate) fn p99_ms(&self) -> Option<f64> {
        match self {
            Outcome::Setup { p99_ms, .. } => *p99_ms,
            _ => None,
        }
    }
}

/// The RESULT column.
pub(crate) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Bulk {
            moved,
            secs,
            timed_out: true,
            ..
        } => format!(
            "timeout after {secs:.0}s ({:.1} MiB moved)",
            *moved as f64 / (1024.0 * 1024.0)
        ),
        Outcome::Bulk {
            moved, secs, note, ..
        } => {
            let mut text = format!(
                "{:>8.1} MB/s ({:.0} MiB in {secs:.2}s)",
                *moved as f64 / 1e6 / secs.max(1e-9),
                *moved as f64 / (1024.0 * 1024.0)
            );
            if let Some(note) = note {
                text.push_str(&format!(" {note}"));
            }
            text
        }
        Outcome::Setup {
            trials,
            ok,
            p50_ms,
            p99_ms,
            max_ms,
            timed_out,
            first_error,
        } => {
            let ms = |v: &Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
            let mut text = format!(
                "p50 {} ms  p99 {} ms  max {} ms ({ok}/{trials})",
                ms(p50_ms),
                ms(p99_ms),
                ms(max_ms)
            );
            if *timed_out {
                text.push_str(" timeout");
            }
            if let Some(error) = first_error {
                text.push_str(&format!(" err: {}", truncate(error, 60)));
            }
            text
        }
        Outcome::Failed { error } => format!("FAILED: {}", truncate(error, 80)),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Run one row in this process and measure it.
pub(crate) fn run_row(
    name: &str,
    params: &Params,
    run: fn(&Params) -> anyhow::Result<Outcome>,
) -> RowReport {
    let cpu_before = cpu_seconds();
    let outcome = match run(params) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Failed {
            error: format!("{error:#}"),
        },
    };
    let cpu_secs = match &outcome {
        Outcome::Bulk { cpu_secs, .. } => *cpu_secs,
        _ => cpu_seconds()
            .zip(cpu_before)
            .map(|(after, before)| after - before),
    };
    RowReport {
        row: name.to_owned(),
        outcome,
        cpu_secs,
        peak_rss_kib: peak_rss_kib(),
    }
}

/// Shared byte counter a receiver bumps, so a timed-out row can still say how much moved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Moved(Arc<AtomicU64>);

impl Moved {
    pub(crate) fn add(&self, bytes: u64) -> u64 {
        self.0.fetch_add(bytes, Ordering::Relaxed) + bytes
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Times the measured phase of a bulk row: wall clock and CPU.
#[derive(Debug)]
pub(crate) struct BulkMeter {
    started: Instant,
    cpu_before: Option<f64>,
    target: u64,
}

impl BulkMeter {
    pub(crate) fn start(target: u64) -> Self {
        BulkMeter {
            started: Instant::now(),
            cpu_before: cpu_seconds(),
            target,
        }
    }

    pub(crate) fn finish(&self, moved: u64, timed_out: bool, note: Option<String>) -> Outcome {
        let secs = self.started.elapsed().as_secs_f64();
        Outcome::Bulk {
            target: self.target,
            moved,
            secs,
            timed_out,
            cpu_secs: cpu_seconds()
                .zip(self.cpu_before)
                .map(|(after, before)| after - before),
            note,
        }
    }
}

/// A multi-thread tokio runtime for one row.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("building the tokio runtime: {e}"))
}

/// Run `params.setup_trials` setup trials within the row's time limit. `connect` is timed, each
/// attempt bounded by `trial_timeout`; `finish` tears down what it made and is not timed.
pub(crate) async fn repeat_setup<T>(
    params: &Params,
    trial_timeout: Duration,
    mut connect: impl AsyncFnMut() -> anyhow::Result<T>,
    mut finish: impl AsyncFnMut(T),
) -> Outcome {
    let deadline = tokio::time::Instant::now() + params.row_limit;
    let mut samples = Vec::new();
    let mut first_error = None;
    let mut timed_out = false;
    for _ in 0..params.setup_trials {
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let started = Instant::now();
        match tokio::time::timeout(trial_timeout, connect()).await {
            Ok(Ok(made)) => {
                samples.push(started.elapsed());
                finish(made).await;
            }
            Ok(Err(error)) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(_) => {
                first_error.get_or_insert_with(|| format!("trial timed out ({trial_timeout:?})"));
            }
        }
    }
    setup_outcome(params.setup_trials, samples, timed_out, first_error)
}

/// Turn setup samples into an [`Outcome::Setup`].
pub(crate) fn setup_outcome(
    trials: u32,
    mut samples: Vec<Duration>,
    timed_out: bool,
    first_error: Option<String>,
) -> Outcome {
    samples.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Outcome::Setup {
        trials,
        ok: u32::try_from(samples.len()).unwrap_or(u32::MAX),
        p50_ms: percentile(&samples, 0.50).map(|d| ms(&d)),
        p99_ms: percentile(&samples, 0.99).map(|d| ms(&d)),
        max_ms: samples.last().map(ms),
        timed_out,
        first_error,
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`.
///
/// `utime`/`stime` are in clock ticks; Linux reports them at `USER_HZ` = 100 on every
/// architecture we run on (checked with `getconf CLK_TCK`), so the resolution is 10 ms.
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / 100.0)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`).
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_with_spaces_in_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        assert!(cpu_seconds().is_some());
        assert!(peak_rss_kib().is_some_and(|kib| kib > 0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&samples, 0.99), Some(Duration::from_millis(198)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
