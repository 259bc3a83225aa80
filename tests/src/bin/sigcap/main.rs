//! `proxim-sigcap`: the signaling server's capacity (SIG-CAP). A `proxim serve` child process
//! with its abuse limits lifted, driven by Rust clients of the real protocol.
//!
//! ```text
//! cargo run --release -p proxim-tests --bin proxim-sigcap -- --quick   # < 60 s
//! cargo run --release -p proxim-tests --bin proxim-sigcap              # a few minutes
//! ```
//!
//! - IDLE: N greeted, silent connections held open; the server's VmRSS per connection.
//! - STORM: pairings as fast as they go, with persistent and with fresh phone connections, at
//!   each concurrency; pairings/s, p50/p99 latency, the server's CPU seconds per 1,000.
//!
//! It prints one table and the goals of issue 12 (PASS/FAIL). The exit status is non-zero
//! only when something could not be measured (the server died, over 1 % of the connections
//! or pairings of a row failed), not when a goal is missed.

mod client;
mod failures;
mod idle;
mod report;
mod storm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use proxim_tests::child::{self, ServerProcess, wait_for_no_connections};
use proxim_tests::procfs::open_file_limit;
use tokio::time::Instant;

use crate::report::Report;
use crate::storm::{Mode, StormPlan};

/// Loopback source addresses the clients spread over (127.0.0.2 …): each has its own
/// ephemeral ports, so tens of thousands of connections (and the fresh storms' TIME_WAITs)
/// do not run out of them.
pub(crate) const SOURCE_IPS: u8 = 64;

/// The abuse limits `proxim serve` is started without, so that capacity is what is measured.
const SERVER_FLAGS: &[&str] = &[
    "--max-connections-per-ip",
    "0",
    "--rate-limit",
    "0",
    "--pair-attempts",
    "0",
];

/// File descriptors kept free of connections, in the generator and in the server (listener,
/// runtime, the stats requests, …).
const FD_RESERVE: u64 = 256;

/// Capacity of the Proxim signaling server: idle connections and pairing storms.
#[derive(Debug, Parser)]
#[command(name = "proxim-sigcap")]
struct Args {
    /// A short run (under a minute on two cores).
    #[arg(long)]
    quick: bool,
    /// The `proxim` binary to run as the server [default: `proxim` next to this binary, built
    /// first with the same cargo profile]. Pass it when the target directory is shared by
    /// several checkouts: cargo does not copy a binary it finds up to date back into place.
    #[arg(long, value_name = "PATH")]
    proxim: Option<PathBuf>,
    /// Idle connections of the IDLE row [quick: 2000, full: 20000].
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Concurrencies of the STORM rows (desktop + phone pairs), comma-separated.
    #[arg(
        long,
        value_name = "C,C,…",
        value_delimiter = ',',
        default_value = "50,200,1000"
    )]
    concurrency: Vec<usize>,
    /// How long each STORM row is measured, in seconds [quick: 3, full: 10].
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Run the server with this event sink (`--events` of `proxim serve`: `file:PATH`,
    /// `amqp://…`); the report then says what the sink delivered and dropped.
    #[arg(long, value_name = "SINK")]
    events: Option<String>,
    /// Run the server with this state store (`--state` of `proxim serve`: `redis://…`); the
    /// report then says how many state changes and round trips the run cost.
    #[arg(long, value_name = "URL")]
    state: Option<String>,
}

/// The admin token the server gets when `--events` or `--state` is given, to read
/// `/api/events` and `/api/state`.
const ADMIN_TOKEN: &str = "proxim-sigcap-admin";

/// The shape of one run.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    name: &'static str,
    idle: usize,
    concurrency: Vec<usize>,
    warmup: Duration,
    window: Duration,
}

impl Plan {
    fn from_args(args: &Args) -> Result<Plan> {
        let (name, idle, warmup, seconds) = if args.quick {
            ("quick", 2_000, Duration::from_millis(500), 3.0)
        } else {
            ("full", 20_000, Duration::from_secs(1), 10.0)
        };
        let seconds = args.seconds.unwrap_or(seconds);
        if !(seconds > 0.0 && seconds.is_finite()) {
            bail!("--seconds must be a positive number of seconds, not {seconds}");
        }
        if args.concurrency.contains(&0) {
            bail!("--concurrency values must be at least 1");
        }
        Ok(Plan {
            name,
            idle: args.idle.unwrap_or(idle),
            concurrency: args.concurrency.clone(),
            warmup,
            window: Duration::from_secs_f64(seconds),
        })
    }

    /// The STORM rows: persistent at each concurrency, then fresh at each.
    fn storms(&self) -> Vec<StormPlan> {
        [Mode::Persistent, Mode::Fresh]
            .into_iter()
            .flat_map(|mode| {
                self.concurrency.iter().map(move |&concurrency| StormPlan {
                    mode,
                    concurrency,
                    warmup: self.warmup,
                    window: self.window,
                })
            })
            .collect()
    }
}

fn main() -> std::process::ExitCode {
    proxim_tests::run_generator("proxim-sigcap", run(Args::parse()))
}

/// Measure everything and print the report; whether everything could be measured.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan::from_args(&args)?;
    let own_fds = proxim_server::raise_open_file_limit().context("raising the open-file limit")?;
    let binary = child::proxim_binary(args.proxim.clone())?;
    // The clock starts once the server is built.
    let started = Instant::now();
    let mut flags: Vec<&str> = SERVER_FLAGS.to_vec();
    if let Some(sink) = &args.events {
        flags.extend(["--events", sink.as_str()]);
    }
    if let Some(url) = &args.state {
        flags.extend(["--state", url.as_str()]);
    }
    if args.events.is_some() || args.state.is_some() {
        flags.extend(["--admin-token", ADMIN_TOKEN]);
    }
    let mut server = ServerProcess::start(&binary, &flags).await?;
    let (pid, addr) = (server.pid, server.addr);
    let server_fds = open_file_limit(pid).unwrap_or(u64::MAX);
    eprintln!(
        "proxim-sigcap ({}): {} serve on {addr} (pid {pid}, open-file limit {server_fds}), {}",
        plan.name,
        binary.display(),
        flags.join(" ")
    );
    let mut report = Report::new(plan.name, args.quick);

    let fd_room = own_fds.min(server_fds).saturating_sub(FD_RESERVE);
    let idle_target = plan
        .idle
        .min(usize::try_from(fd_room).unwrap_or(usize::MAX));
    if idle_target < plan.idle {
        report.note(format!(
            "IDLE: {} connections asked for, {idle_target} opened: the open-file limit is \
             {own_fds} here and {server_fds} in the server (hard limits; {FD_RESERVE} kept free)",
            plan.idle
        ));
    }
    eprintln!("IDLE: opening {idle_target} connections");
    report.idle = Some(idle::run(addr, pid, idle_target).await?);
    settle(addr).await;

    for storm_plan in plan.storms() {
        eprintln!(
            "STORM {} c={}: {:.0} s",
            storm_plan.mode.name(),
            storm_plan.concurrency,
            storm_plan.window.as_secs_f64()
        );
        if !server.is_running() {
            report.problem("the server died".to_owned());
            break;
        }
        match storm::run(addr, pid, &server.log, storm_plan).await {
            Ok(result) => report.storms.push(result),
            Err(e) => report.problem(format!(
                "STORM {} c={}: not measured: {e:#}",
                storm_plan.mode.name(),
                storm_plan.concurrency
            )),
        }
        settle(addr).await;
    }
    if !server.is_running() {
        report.problem("the server died".to_owned());
    }
    if args.events.is_some() {
        report.note(events_summary(addr).await);
    }
    if args.state.is_some() {
        let pairings: u64 = report.storms.iter().map(|s| s.completed).sum();
        report.note(state_summary(addr, pairings).await);
    }

    let log = server.log.clone();
    let exit = match server.stop(Duration::from_secs(10)).await {
        Ok(status) => status.to_string(),
        Err(e) => format!("could not stop: {e}"),
    };
    report.server_exit = exit;
    report.total = started.elapsed();
    let measured = report.print();
    if !measured {
        log.eprint_tail();
    }
    Ok(measured)
}

/// What the event sinks did over the whole run, from `/api/events` once their queues drained
/// (at most 30 s).
async fn events_summary(addr: std::net::SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = child::get_json_with_token(addr, "/api/events", Some(ADMIN_TOKEN)).await;
        let sinks = match &status {
            Ok(json) => json["sinks"].as_array().cloned().unwrap_or_default(),
            Err(e) => return format!("EVENTS: /api/events unreadable: {e:#}"),
        };
        let drained = sinks.iter().all(|s| s["queued"] == 0);
        if drained || Instant::now() >= deadline {
            let rows: Vec<String> = sinks
                .iter()
                .map(|s| {
                    format!(
                        "{} {}: {} delivered, {} dropped, {} queued",
                        s["sink"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?"),
                        s["delivered"],
                        s["dropped"],
                        s["queued"]
                    )
                })
                .collect();
            return format!("EVENTS: {}", rows.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the state store took over the whole run, from `/api/state` once its queue drained (at
/// most 30 s), per pairing of the STORM rows (registrations and departures of their desktops
/// included; the IDLE row writes nothing).
async fn state_summary(addr: std::net::SocketAddr, pairings: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = match child::get_json_with_token(addr, "/api/state", Some(ADMIN_TOKEN)).await {
            Ok(json) => json["state"].clone(),
            Err(e) => return format!("STATE: /api/state unreadable: {e:#}"),
        };
        if s["queued"] == 0 || Instant::now() >= deadline {
            let per = |field: &str| {
                let n = s[field].as_u64().unwrap_or(0);
                if pairings == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.2}", n as f64 / pairings as f64)
                }
            };
            return format!(
                "STATE: {} {}: {} changes in {} round trips for {pairings} pairings ({} changes, \
                 {} round trips per pairing); {} dropped, {} failures, {} resyncs",
                s["store"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["ops_written"],
                s["writes"],
                per("ops_written"),
                per("writes"),
                s["ops_dropped"],
                s["failures"],
                s["resyncs"],
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the server has no connection open (at most 15 s).
async fn settle(addr: std::net::SocketAddr) {
    if !wait_for_no_connections(addr, Duration::from_secs(15), Duration::from_millis(100)).await {
        eprintln!("the server still counts open connections after 15 s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan> {
        let args =
            Args::try_parse_from(std::iter::once("proxim-sigcap").chain(args.iter().copied()))?;
        Plan::from_args(&args)
    }

    #[test]
    fn the_defaults_are_the_full_run() {
        let full = plan(&[]).unwrap();
        assert_eq!(full.idle, 20_000);
        assert_eq!(full.concurrency, [50, 200, 1000]);
        assert_eq!(full.window, Duration::from_secs(10));
        let storms = full.storms();
        assert_eq!(storms.len(), 6);
        assert_eq!(
            (storms[0].mode, storms[0].concurrency),
            (Mode::Persistent, 50)
        );
        assert_eq!((storms[5].mode, storms[5].concurrency), (Mode::Fresh, 1000));
    }

    #[test]
    fn quick_is_smaller_and_flags_win() {
        let quick = plan(&["--quick"]).unwrap();
        assert_eq!((quick.idle, quick.window), (2_000, Duration::from_secs(3)));
        let custom = plan(&[
            "--quick",
            "--idle",
            "10",
            "--concurrency",
            "7,9",
            "--seconds",
            "1.5",
        ])
        .unwrap();
        assert_eq!(custom.idle, 10);
        assert_eq!(custom.concurrency, [7, 9]);
        assert_eq!(custom.window, Duration::from_millis(1500));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(plan(&["--concurrency", "0"]).is_err());
        assert!(plan(&["--seconds", "0"]).is_err());
        assert!(plan(&["--seconds", "-3"]).is_err());
        assert!(plan(&["--concurrency", "many"]).is_err());
    }
}
