//! `proxim-loadtest`: a real `proxim serve` (a child process, default limits) under abusive
//! clients, with real pairings through it at the same time.
//!
//! ```text
//! cargo run --release -p proxim-tests --bin proxim-loadtest -- --quick   # < 60 s, for CI
//! cargo run --release -p proxim-tests --bin proxim-loadtest              # a few minutes
//! ```
//!
//! Hundreds (quick) to thousands (full) of abusive connections from 127.0.0.2… send malformed
//! JSON, unknown and wrong-direction types, binary, oversized and huge frames, messages out of
//! order, random codes, too many attempts on one code, and floods far over the message budget;
//! each reconnects when dropped. Meanwhile desktops and phones on `proxim-core` pair through
//! the same server and move 256 KiB each. The server's memory is sampled from `/proc` every
//! 250 ms.
//!
//! It fails (exit 1) when a real pairing fails, a bad frame goes unanswered or gets the wrong
//! answer (frames dropped after the server announced it disconnects a flooder excepted), the
//! server does not close a connection it says it closes, or the server's resident memory at
//! the end exceeds the warm-up baseline by more than `--max-rss-growth-mib`.

mod abuse;
mod pairings;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::time::Instant;

use proxim_tests::child::{self, ServerProcess, get_json, wait_for_no_connections};
use proxim_tests::latency::{ms, percentile};
use proxim_tests::procfs::{MemorySample, MemorySampler};

use crate::abuse::{AbuseConfig, AbuseTally};
use crate::pairings::PairingReport;

/// Load test of the Proxim signaling server: abusive clients and real pairings at once.
#[derive(Debug, Parser)]
#[command(name = "proxim-loadtest")]
struct Args {
    /// A short run for CI (under a minute on two cores).
    #[arg(long)]
    quick: bool,
    /// The `proxim` binary to run as the server [default: `proxim` next to this binary, built
    /// first with the same cargo profile]. Pass it when the target directory is shared by
    /// several checkouts: cargo does not copy a binary it finds up to date back into place.
    #[arg(long, value_name = "PATH")]
    proxim: Option<PathBuf>,
    /// Fail when the server's VmRSS at the end exceeds the warm-up baseline by more than this.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    max_rss_growth_mib: u64,
    /// Seed of the abusive clients' choices.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// How long the load runs, in seconds [quick: 20, full: 180].
    #[arg(long, value_name = "SECONDS")]
    window_s: Option<u64>,
    /// Abusive connections in the window at most; the clients pace themselves to spread them
    /// over it, so a large number means no pacing [quick: 6000, full: 54000].
    #[arg(long, value_name = "N")]
    max_connections: Option<u64>,
    /// Source IPs of the abusive clients, 127.0.0.2 on [quick: 6, full: 12].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=200))]
    ips: Option<u8>,
    /// Abusive clients per source IP, at most 30 (the server's cap is 32) [quick: 8, full: 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=30))]
    clients_per_ip: Option<u16>,
    /// Real pairings [quick: 8, full: 40].
    #[arg(long, value_name = "N")]
    pairings: Option<usize>,
}

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    name: &'static str,
    warmup_connections: u64,
    warmup_pairings: usize,
    /// Abusive clients: source IPs, and clients per IP (each one connection at a time).
    ips: u8,
    per_ip: usize,
    /// How long the abuse and the pairings run.
    window: Duration,
    /// Abusive connections in the window, at most (the clients pace themselves to spread
    /// them over the window).
    max_connections: u64,
    pairings: usize,
    pairing_concurrency: usize,
}

impl Plan {
    /// How long each abusive client waits between the starts of its connections.
    fn cycle(&self) -> Duration {
        let clients = u32::from(self.ips) * self.per_ip as u32;
        self.window
            .mul_f64(f64::from(clients) / self.max_connections as f64)
    }
}

const QUICK: Plan = Plan {
    name: "quick",
    warmup_connections: 200,
    warmup_pairings: 2,
    ips: 6,
    per_ip: 8,
    window: Duration::from_secs(20),
    max_connections: 6_000,
    pairings: 8,
    pairing_concurrency: 2,
};

const FULL: Plan = Plan {
    name: "full",
    warmup_connections: 1_000,
    warmup_pairings: 4,
    ips: 12,
    per_ip: 16,
    window: Duration::from_secs(180),
    max_connections: 54_000,
    pairings: 40,
    pairing_concurrency: 2,
};

/// Loopback address of the per-IP cap probe (outside the abusers' 127.0.0.2….
const PROBE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250));
/// The server's default per-IP connection cap.
const IP_CAP: usize = 32;

fn main() -> std::process::ExitCode {
    proxim_tests::run_generator("proxim-loadtest", run(Args::parse()))
}

/// Everything measured, for the report.
#[derive(Debug)]
struct Results {
    plan: Plan,
    pid: u32,
    addr: std::net::SocketAddr,
    abuse: AbuseTally,
    abuse_time: Duration,
    pairings: PairingReport,
    pairing_time: Duration,
    probe: (usize, Option<u16>),
    baseline: MemorySample,
    end: MemorySample,
    peak: MemorySample,
    samples: Vec<MemorySample>,
    /// When the load started and ended, on the samples' clock.
    load_span: (Duration, Duration),
    stats: serde_json::Value,
    log_lines: u64,
    log_warnings: u64,
    log_errors: u64,
    exit: String,
    max_growth_kib: u64,
    total_time: Duration,
}

async fn run(args: Args) -> Result<bool> {
    let mut plan = if args.quick { QUICK } else { FULL };
    if let Some(window) = args.window_s {
        plan.window = Duration::from_secs(window.max(1));
    }
    if let Some(max) = args.max_connections {
        plan.max_connections = max.max(1);
    }
    if let Some(ips) = args.ips {
        plan.ips = ips;
    }
    if let Some(per_ip) = args.clients_per_ip {
        plan.per_ip = usize::from(per_ip);
    }
    if let Some(pairings) = args.pairings {
        plan.pairings = pairings;
    }
    let started = Instant::now();
    let binary = child::proxim_binary(args.proxim.clone())?;
    let server = ServerProcess::start(&binary, &[]).await?;
    let (pid, addr, url) = (server.pid, server.addr, server.ws_url());
    eprintln!(
        "proxim-loadtest ({}): {} serve on {addr} (pid {pid}), default limits",
        plan.name,
        binary.display()
    );
    let sampler = MemorySampler::start(pid, Duration::from_millis(250));
    let abuse_config = |max: u64, cycle: Duration, seed: u64| AbuseConfig {
        server: addr,
        ips: plan.ips,
        per_ip: plan.per_ip,
        max_connections: max,
        cycle,
        seed,
    };

    // Warm-up: the same kinds of load, briefly, so allocator pools and buffers exist.
    eprintln!(
        "warm-up: {} abusive connections, {} pairings",
        plan.warmup_connections, plan.warmup_pairings
    );
    let warm = {
        let config = abuse_config(plan.warmup_connections, Duration::ZERO, args.seed ^ 0xabcd);
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (abuse, pairs) = tokio::join!(
            abuse::run(config, stop, deadline),
            pairings::run(
                url.clone(),
                plan.warmup_pairings,
                plan.pairing_concurrency,
                Duration::ZERO
            )
        );
        (abuse, pairs)
    };
    if !warm.1.failures.is_empty() || warm.0.failures() > 0 {
        eprintln!(
            "warm-up already had failures: {:?} {:?}",
            warm.1.failures, warm.0.examples
        );
    }
    settle(addr).await;
    let baseline = sampler.now().context("reading the server's memory")?;
    eprintln!("baseline VmRSS {} after warm-up", mib(baseline.rss_kib));

    // The run: abuse for the window, pairings spread over it; the abuse goes on until the
    // last pairing is done (bounded: the window again at most).
    eprintln!(
        "load: {:.0} s, {} source IPs x {} abusive clients (a connection each every {} ms at \
         most, {} scripts in all at most), {} pairings ({} at a time)",
        plan.window.as_secs_f64(),
        plan.ips,
        plan.per_ip,
        plan.cycle().as_millis(),
        plan.max_connections,
        plan.pairings,
        plan.pairing_concurrency
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load_from = sampler.now().map_or(Duration::ZERO, |s| s.at);
    let abuse_started = Instant::now();
    let abuse_task = tokio::spawn(abuse::run(
        abuse_config(plan.max_connections, plan.cycle(), args.seed),
        stop.clone(),
        abuse_started + 2 * plan.window,
    ));
    let pairing_started = Instant::now();
    let pairings = pairings::run(
        url.clone(),
        plan.pairings,
        plan.pairing_concurrency,
        plan.window.mul_f64(0.95),
    )
    .await;
    let pairing_time = pairing_started.elapsed();
    tokio::time::sleep_until(abuse_started + plan.window).await;
    stop.store(true, Ordering::Relaxed);
    let abuse = abuse_task.await.context("the abusive clients panicked")?;
    let abuse_time = abuse_started.elapsed();
    let load_to = sampler.now().map_or(Duration::ZERO, |s| s.at);

    let probe = abuse::probe_ip_cap(addr, PROBE_IP, IP_CAP).await;

    settle(addr).await;
    let end = sampler.now().context("reading the server's memory")?;
    let stats = get_json(addr, "/api/stats")
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    let samples = sampler.stop();
    let peak = samples
        .iter()
        .copied()
        .max_by_key(|s| s.rss_kib)
        .unwrap_or(end);
    let log = server.log.clone();
    let exit = match server.stop(Duration::from_secs(10)).await {
        Ok(status) => status.to_string(),
        Err(e) => format!("could not stop: {e}"),
    };

    let results = Results {
        plan,
        pid,
        addr,
        abuse,
        abuse_time,
        pairings,
        pairing_time,
        probe,
        baseline,
        end,
        peak,
        samples,
        load_span: (load_from, load_to),
        stats,
        log_lines: log.lines.load(Ordering::Relaxed),
        log_warnings: log.warnings.load(Ordering::Relaxed),
        log_errors: log.errors.load(Ordering::Relaxed),
        exit,
        max_growth_kib: args.max_rss_growth_mib * 1024,
        total_time: started.elapsed(),
    };
    let passed = report(&results);
    if !passed {
        log.eprint_tail();
    }
    Ok(passed)
}

/// Wait until the server has no connection open (at most 15 s), then a moment more.
async fn settle(addr: std::net::SocketAddr) {
    wait_for_no_connections(addr, Duration::from_secs(15), Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// Print the table; whether every check passed.
fn report(r: &Results) -> bool {
    let a = &r.abuse;
    let mut checks: Vec<(&str, bool, String)> = Vec::new();
    println!();
    println!(
        "proxim load test ({}) — `proxim serve` pid {} on {}, default limits, {:.1} s in all",
        r.plan.name,
        r.pid,
        r.addr,
        r.total_time.as_secs_f64()
    );
    println!();
    println!(
        "abusive clients: {} connections in {:.1} s ({:.0}/s) from {} source IPs x {} at a time; \
         {} frames sent ({:.0}/s)",
        a.connections,
        r.abuse_time.as_secs_f64(),
        a.connections as f64 / r.abuse_time.as_secs_f64().max(0.001),
        r.plan.ips,
        r.plan.per_ip,
        a.frames_sent(),
        a.frames_sent() as f64 / r.abuse_time.as_secs_f64().max(0.001),
    );
    println!(
        "  connects refused 429: {}, failed: {}; flooders disconnected: {}; unsolicited \
         messages: {}",
        a.connect_refused_429, a.connect_failed, a.flood_disconnects, a.unsolicited
    );
    println!();
    println!(
        "  {:<24} {:>9} {:>9} {:>12} {:>9} {:>11} {:>7}",
        "frames", "sent", "expected", "rate_limited", "excused", "unanswered", "wrong"
    );
    let mut total = abuse::CategoryTally::default();
    for (category, c) in &a.categories {
        println!(
            "  {:<24} {:>9} {:>9} {:>12} {:>9} {:>11} {:>7}",
            category.name(),
            c.sent,
            c.expected,
            c.rate_limited,
            c.excused,
            c.unanswered,
            c.wrong
        );
        total.add(c);
    }
    println!(
        "  {:<24} {:>9} {:>9} {:>12} {:>9} {:>11} {:>7}",
        "total",
        total.sent,
        total.expected,
        total.rate_limited,
        total.excused,
        total.unanswered,
        total.wrong
    );
    println!();
    let codes: Vec<String> = a
        .error_codes
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    println!("  error replies by code: {}", codes.join(", "));
    println!(
        "  closes the server announced: {} seen of {}; lockouts told to the code's desktop: {} \
         of {}",
        a.closes_seen, a.closes_expected, a.owners_notified, a.owners_expected
    );
    if a.lost_in_reset > 0 {
        println!(
            "  of the unanswered frames, {} were on flood connections the server reset before \
             its disconnect notice arrived (it closed with input unread)",
            a.lost_in_reset
        );
    }
    let ends: Vec<String> = a.ends.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("  connections the server ended: {}", ends.join(", "));
    for example in &a.examples {
        println!("  ! {example}");
    }
    checks.push((
        "every bad frame answered as expected",
        total.unanswered == 0 && total.wrong == 0,
        format!("{} unanswered, {} wrong", total.unanswered, total.wrong),
    ));
    checks.push((
        "announced closes happen",
        a.closes_seen >= a.closes_expected,
        format!("{}/{}", a.closes_seen, a.closes_expected),
    ));
    checks.push((
        "lockout told to the desktop",
        a.owners_notified == a.owners_expected,
        format!("{}/{}", a.owners_notified, a.owners_expected),
    ));
    checks.push((
        "abusive connections made",
        a.connections >= 100 && a.connect_failed == 0,
        format!("{} ({} failed to connect)", a.connections, a.connect_failed),
    ));

    println!();
    let (opened, extra) = r.probe;
    let probe_ok = opened == IP_CAP && extra == Some(429);
    println!(
        "per-IP cap: {opened} connections open from {PROBE_IP}, the next one got {}",
        extra.map_or_else(|| "no HTTP refusal".to_owned(), |s| format!("HTTP {s}"))
    );
    checks.push((
        "per-IP cap 32, then 429",
        probe_ok,
        format!("{opened} open, {extra:?}"),
    ));

    println!();
    let p = &r.pairings;
    let mut open: Vec<Duration> = p.ok.iter().map(|t| t.open).collect();
    let mut whole: Vec<Duration> = p.ok.iter().map(|t| t.total).collect();
    open.sort();
    whole.sort();
    println!(
        "real pairings: {} of {} ok in {:.1} s ({} at a time), {} KiB + a message each, SHA-256 \
         checked",
        p.ok.len(),
        r.plan.pairings,
        r.pairing_time.as_secs_f64(),
        r.plan.pairing_concurrency,
        pairings::PAYLOAD_BYTES / 1024
    );
    println!(
        "  pair() to channel open: p50 {} ms, p99 {} ms, max {} ms; register to verified: p50 {} \
         ms, p99 {} ms",
        ms(percentile(&open, 50)),
        ms(percentile(&open, 99)),
        ms(open.last().copied()),
        ms(percentile(&whole, 50)),
        ms(percentile(&whole, 99)),
    );
    for failure in &p.failures {
        println!("  ! {failure}");
    }
    checks.push((
        "every real pairing succeeded",
        p.failures.is_empty() && p.ok.len() == r.plan.pairings,
        format!("{}/{}", p.ok.len(), r.plan.pairings),
    ));

    println!();
    let growth = r.end.rss_kib as i64 - r.baseline.rss_kib as i64;
    println!(
        "server memory (VmRSS, {} samples every 250 ms): baseline after warm-up {}, peak {} (at \
         {:.1} s), end {}, growth {}{} (bound {}); VmHWM {}",
        r.samples.len(),
        mib(r.baseline.rss_kib),
        mib(r.peak.rss_kib),
        r.peak.at.as_secs_f64(),
        mib(r.end.rss_kib),
        if growth >= 0 { "+" } else { "-" },
        mib(growth.unsigned_abs()),
        mib(r.max_growth_kib),
        mib(r.end.hwm_kib),
    );
    let (from, to) = r.load_span;
    let during: Vec<&MemorySample> = r
        .samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    if !during.is_empty() {
        let points: Vec<String> = (0..=10)
            .filter_map(|i| during.get(i * (during.len() - 1) / 10))
            .map(|s| {
                format!(
                    "{:.0}s {:.1}",
                    s.at.as_secs_f64(),
                    s.rss_kib as f64 / 1024.0
                )
            })
            .collect();
        println!("  VmRSS during the load (MiB): {}", points.join(", "));
        // The first tenth of the load fills the server's pools; what comes after is drift.
        if let (Some(early), Some(late)) = (during.get(during.len() / 10), during.last()) {
            let drift = late.rss_kib as i64 - early.rss_kib as i64;
            let minutes = (late.at.saturating_sub(early.at)).as_secs_f64() / 60.0;
            println!(
                "  drift during the load: {}{} over {:.1} min, while the abusive clients \
                 registered {} desktops (each leaves its code reserved for 5 min)",
                if drift >= 0 { "+" } else { "-" },
                mib(drift.unsigned_abs()),
                minutes,
                a.registrations
            );
        }
    }
    checks.push((
        "server memory flat",
        growth <= r.max_growth_kib as i64,
        format!(
            "{}{}",
            if growth >= 0 { "+" } else { "-" },
            mib(growth.unsigned_abs())
        ),
    ));

    println!();
    println!("server /api/stats at the end:");
    if let Some(stats) = r.stats.as_object() {
        let entries: Vec<String> = stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
        for line in entries.chunks(4) {
            println!("  {}", line.join(", "));
        }
    } else {
        println!("  {}", r.stats);
    }
    println!(
        "server log: {} lines ({} WARN, {} ERROR); exit: {}",
        r.log_lines, r.log_warnings, r.log_errors, r.exit
    );

    println!();
    let mut passed = true;
    for (name, ok, detail) in &checks {
        println!("  [{}] {name}: {detail}", if *ok { "ok" } else { "FAIL" });
        passed &= *ok;
    }
    println!();
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
