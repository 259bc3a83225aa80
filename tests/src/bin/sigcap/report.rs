//! The printed result: one table (ROW, RESULT), the goals of issue 12 with PASS/FAIL, and
//! whether everything could be measured.

use std::time::Duration;

use proxim_tests::latency::percentile;
use proxim_tests::procfs::CLK_TCK;

use crate::idle::IdleResult;
use crate::storm::{Mode, StormResult};

/// IDLE goal: resident memory per idle connection, at most.
const GOAL_KIB_PER_CONNECTION: f64 = 16.0;
/// STORM goal: pairings a second with persistent connections, at least (best row).
const GOAL_PAIRINGS_PER_SECOND: f64 = 5_000.0;
/// STORM goal: p99 latency of the fresh-connection storm at [`GOAL_FRESH_CONCURRENCY`].
const GOAL_FRESH_P99: Duration = Duration::from_millis(200);

/// Goal: what the server logs at its default level, per pairing (the first report measured
/// ~930 bytes).
const GOAL_LOG_BYTES_PER_PAIRING: u64 = 200;
const GOAL_FRESH_CONCURRENCY: usize = 1000;
/// A row with more failures than this share is not a measurement.
const MAX_FAILURE_RATIO: f64 = 0.01;

/// Everything measured, and what went wrong.
#[derive(Debug)]
pub(crate) struct Report {
    name: &'static str,
    quick: bool,
    pub(crate) idle: Option<IdleResult>,
    pub(crate) storms: Vec<StormResult>,
    /// Remarks printed under the table.
    notes: Vec<String>,
    /// What could not be measured.
    problems: Vec<String>,
    pub(crate) server_exit: String,
    pub(crate) total: Duration,
}

impl Report {
    pub(crate) fn new(name: &'static str, quick: bool) -> Report {
        Report {
            name,
            quick,
            idle: None,
            storms: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
            server_exit: String::new(),
            total: Duration::ZERO,
        }
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(crate) fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Print the table and the goals; whether everything was measured.
    pub(crate) fn print(mut self) -> bool {
        self.judge_failures();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!(
            "proxim-sigcap ({}{}): `proxim serve` with the abuse limits lifted; the generator \
             shares this machine's {cores} cores with it; {:.1} s after the build",
            self.name,
            if self.quick { ", --quick" } else { "" },
            self.total.as_secs_f64()
        );
        println!();
        println!("{:<30} RESULT", "ROW");
        if let Some(idle) = &self.idle {
            println!(
                "{:<30} {}",
                format!("IDLE {} connections", idle.target),
                idle_result(idle)
            );
        }
        for storm in &self.storms {
            let row = format!(
                "STORM {} c={}",
                storm.plan.mode.name(),
                storm.plan.concurrency
            );
            println!("{row:<30} {}", storm_result(storm));
        }
        println!();
        println!("GOALS");
        for (goal, value, verdict) in self.goals() {
            println!("  {goal:<40} {value:<28} {verdict}");
        }
        let firsts = self.first_failures();
        if !(self.notes.is_empty() && self.problems.is_empty() && firsts.is_empty()) {
            println!();
        }
        for note in self.notes.iter().chain(&firsts) {
            println!("  note: {note}");
        }
        for problem in &self.problems {
            println!("  NOT MEASURED: {problem}");
        }
        println!("server exit: {}", self.server_exit);
        self.problems.is_empty()
    }

    /// Rows with too many failures are problems.
    fn judge_failures(&mut self) {
        if let Some(idle) = &self.idle {
            if idle.server_counted != Some(idle.opened as u64) {
                self.notes.push(format!(
                    "IDLE: {} connections open, but the server counted {:?}",
                    idle.opened, idle.server_counted
                ));
            }
            let failed = idle.failures.count();
            if failed as f64 > MAX_FAILURE_RATIO * idle.target.max(1) as f64 {
                self.problems.push(format!(
                    "IDLE: {failed} of {} connections failed to open",
                    idle.target
                ));
            }
        } else {
            self.problems.push("IDLE: no result".to_owned());
        }
        let too_many: Vec<String> = self
            .storms
            .iter()
            .filter(|s| s.failure_ratio() > MAX_FAILURE_RATIO)
            .map(|s| {
                format!(
                    "STORM {} c={}: {:.1} % of the pairings failed",
                    s.plan.mode.name(),
                    s.plan.concurrency,
                    100.0 * s.failure_ratio()
                )
            })
            .collect();
        self.problems.extend(too_many);
    }

    /// The first failure of each row that had any.
    fn first_failures(&self) -> Vec<String> {
        let idle = self.idle.iter().filter_map(|i| {
            i.failures
                .first()
                .map(|f| format!("IDLE, first failure: {f}"))
        });
        let storms = self.storms.iter().filter_map(|s| {
            let first = s.failures.first()?;
            Some(format!(
                "STORM {} c={}, first of {} failures: {first}",
                s.plan.mode.name(),
                s.plan.concurrency,
                s.failures.count()
            ))
        });
        idle.chain(storms).collect()
    }

    /// (goal, measured value, PASS/FAIL/not measured).
    fn goals(&self) -> Vec<(String, String, &'static str)> {
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let mut goals = Vec::new();
        let idle = self.idle.as_ref().and_then(IdleResult::kib_per_connection);
        goals.push((
            format!("IDLE <= {GOAL_KIB_PER_CONNECTION:.0} KiB/connection"),
            idle.map_or_else(|| "-".to_owned(), |k| format!("{k:.1} KiB")),
            idle.map_or("not measured", |k| verdict(k <= GOAL_KIB_PER_CONNECTION)),
        ));
        let best = self
            .storms
            .iter()
            .filter(|s| s.plan.mode == Mode::Persistent)
            .max_by(|a, b| a.pairings_per_second().total_cmp(&b.pairings_per_second()));
        goals.push((
            format!("STORM persistent >= {GOAL_PAIRINGS_PER_SECOND:.0} pairings/s"),
            best.map_or_else(
                || "-".to_owned(),
                |s| {
                    format!(
                        "{:.0}/s (c={})",
                        s.pairings_per_second(),
                        s.plan.concurrency
                    )
                },
            ),
            best.map_or("not measured", |s| {
                verdict(s.pairings_per_second() >= GOAL_PAIRINGS_PER_SECOND)
            }),
        ));
        let fresh = self
            .storms
            .iter()
            .find(|s| s.plan.mode == Mode::Fresh && s.plan.concurrency == GOAL_FRESH_CONCURRENCY);
        let p99 = fresh.and_then(|s| percentile(&s.latencies, 99));
        goals.push((
            format!(
                "STORM fresh c={GOAL_FRESH_CONCURRENCY} p99 <= {} ms",
                GOAL_FRESH_P99.as_millis()
            ),
            p99.map_or_else(|| "-".to_owned(), millis),
            p99.map_or("not measured", |p| verdict(p <= GOAL_FRESH_P99)),
        ));
        let chattiest = self
            .storms
            .iter()
            .filter(|s| !s.latencies.is_empty())
            .map(|s| (s.server_log_bytes / s.latencies.len() as u64, s))
            .max_by_key(|(bytes, _)| *bytes);
        goals.push((
            format!("server log <= {GOAL_LOG_BYTES_PER_PAIRING} B/pairing (default level)"),
            chattiest.map_or_else(
                || "-".to_owned(),
                |(bytes, s)| {
                    format!(
                        "{bytes} B ({} c={})",
                        s.plan.mode.name(),
                        s.plan.concurrency
                    )
                },
            ),
            chattiest.map_or("not measured", |(bytes, _)| {
                verdict(bytes <= GOAL_LOG_BYTES_PER_PAIRING)
            }),
        ));
        goals
    }
}

fn idle_result(idle: &IdleResult) -> String {
    let per = idle
        .kib_per_connection()
        .map_or_else(|| "-".to_owned(), |k| format!("{k:.1} KiB/connection"));
    let counted = idle
        .server_counted
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!(
        "{per} (VmRSS {} -> {}; {} open, the server counted {counted}; opened in {:.1} s, {} \
         failed)",
        mib(idle.rss_before_kib),
        mib(idle.rss_after_kib),
        idle.opened,
        idle.open_time.as_secs_f64(),
        idle.failures.count()
    )
}

fn storm_result(storm: &StormResult) -> String {
    let n = storm.latencies.len();
    let per_thousand = |ticks: Option<u64>| match ticks {
        Some(ticks) if n > 0 => format!("{:.2}", cpu_seconds_per_thousand(ticks, n)),
        _ => "-".to_owned(),
    };
    let server_cpu = per_thousand(storm.server_cpu_ticks);
    let generator_cpu = per_thousand(storm.generator_cpu_ticks);
    let log_per_pairing = storm.server_log_bytes / n.max(1) as u64;
    format!(
        "{:>6.0} pairings/s  p50 {:>8}  p99 {:>8}  CPU s/1000: server {server_cpu}, generator \
         {generator_cpu}  log {log_per_pairing} B/pairing  ({n} in {:.1} s, {} failures)",
        storm.pairings_per_second(),
        percentile(&storm.latencies, 50).map_or_else(|| "-".to_owned(), millis),
        percentile(&storm.latencies, 99).map_or_else(|| "-".to_owned(), millis),
        storm.plan.window.as_secs_f64(),
        storm.failures.count()
    )
}

/// Server CPU seconds per 1,000 pairings, from `ticks` of [`CLK_TCK`] over `pairings`.
fn cpu_seconds_per_thousand(ticks: u64, pairings: usize) -> f64 {
    ticks as f64 / CLK_TCK as f64 / (pairings as f64 / 1000.0)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_per_thousand_pairings() {
        // 250 ticks = 2.5 s for 5,000 pairings: 0.5 s per 1,000.
        assert!((cpu_seconds_per_thousand(250, 5_000) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn latencies_print_in_milliseconds_with_a_decimal() {
        assert_eq!(millis(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(mib(2048), "2.0 MiB");
    }
}
