//! `proxim-bench`: data-channel throughput and connection setup latency, Proxim beside its
//! baselines, printed as one table.
//!
//! ```text
//! cargo run --release -p proxim-bench -- [--quick]
//! ```
//!
//! Every row runs in its own child process (`proxim-bench --row <name>`), so CPU time and peak
//! RSS (`VmHWM`) belong to that row alone. A child prints one JSON line ([`RowReport`]); the
//! parent collects them and prints the table and the goals.
//!
//! Adding a row: write a `fn(&Params) -> anyhow::Result<Outcome>` and list it in [`ROWS`].

mod measure;
mod auth_rows;
mod pair_rows;
mod proxim_rows;
mod relay_rows;
mod stock_webrtc;
mod udp_pump;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::measure::{Outcome, RowReport};

/// Benchmark Proxim's data channels and connection setup against baselines.
#[derive(Debug, Parser)]
#[command(name = "proxim-bench")]
struct Cli {
    /// Small sizes and few trials (CI smoke run, under a minute).
    #[arg(long)]
    quick: bool,
    /// Run one row in this process and print its JSON report (used by the parent).
    #[arg(long, value_name = "NAME")]
    row: Option<String>,
    /// Run only the rows whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Override the DC-BULK payload in MiB.
    #[arg(long, value_name = "MIB")]
    bulk_mib: Option<u64>,
    /// Override the number of SETUP trials.
    #[arg(long, value_name = "N")]
    trials: Option<u32>,
}

/// Sizes and limits shared by all rows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Bytes each DC-BULK row moves.
    pub(crate) bulk_bytes: u64,
    /// Size of one data-channel message.
    pub(crate) message_bytes: usize,
    /// SETUP trials.
    pub(crate) setup_trials: u32,
    /// Time limit of one row (inside the child).
    pub(crate) row_limit: Duration,
}

impl Params {
    fn new(cli: &Cli) -> Self {
        let (bulk_mib, trials, limit) = if cli.quick {
            (16, 10, 20)
        } else {
            (256, 200, 120)
        };
        Params {
            bulk_bytes: cli.bulk_mib.unwrap_or(bulk_mib) * 1024 * 1024,
            message_bytes: 64 * 1024,
            setup_trials: cli.trials.unwrap_or(trials),
            row_limit: Duration::from_secs(limit),
        }
    }
}

/// Which part of the table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Bulk,
    Setup,
}

/// One benchmark row.
struct RowSpec {
    name: &'static str,
    group: Group,
    label: &'static str,
    run: fn(&Params) -> anyhow::Result<Outcome>,
}

/// All rows, in table order.
const ROWS: &[RowSpec] = &[
    RowSpec {
        name: "dc-bulk-udp-1200",
        group: Group::Bulk,
        label: "raw UDP pump, 1200 B datagrams",
        run: udp_pump::run_1200,
    },
    RowSpec {
        name: "dc-bulk-udp-64k",
        group: Group::Bulk,
        label: "raw UDP pump, 64 KiB datagrams",
        run: udp_pump::run_64k,
    },
    RowSpec {
        name: "dc-bulk-stock",
        group: Group::Bulk,
        label: "stock webrtc 0.21.1",
        run: stock_webrtc::run_bulk,
    },
    RowSpec {
        name: "dc-bulk-proxim",
        group: Group::Bulk,
        label: "proxim peer",
        run: proxim_rows::run_bulk,
    },
    RowSpec {
        name: "dc-bulk-proxim-relay-udp",
        group: Group::Bulk,
        label: "proxim peer via coturn (UDP)",
        run: relay_rows::run_bulk_udp,
    },
    RowSpec {
        name: "dc-bulk-proxim-relay-tcp",
        group: Group::Bulk,
        label: "proxim peer via coturn (TCP)",
        run: relay_rows::run_bulk_tcp,
    },
    RowSpec {
        name: "dc-bulk-proxim-relay-tls",
        group: Group::Bulk,
        label: "proxim peer via coturn (TLS)",
        run: relay_rows::run_bulk_tls,
    },
    RowSpec {
        name: "setup-proxim-pair",
        group: Group::Setup,
        label: "proxim pair() -> channel open",
        run: pair_rows::run_setup,
    },
    RowSpec {
        name: "setup-proxim-establish",
        group: Group::Setup,
        label: "proxim peer establish",
        run: proxim_rows::run_setup,
    },
    RowSpec {
        name: "setup-proxim-establish-bound",
        group: Group::Setup,
        label: "proxim establish, fingerprints bound",
        run: auth_rows::run_establish,
    },
    RowSpec {
        name: "setup-pake-handshake",
        group: Group::Setup,
        label: "SPAKE2 handshake, both sides + certs",
        run: auth_rows::run_handshake,
    },
    RowSpec {
        name: "setup-proxim-relay",
        group: Group::Setup,
        label: "proxim establish via coturn (UDP)",
        run: relay_rows::run_setup,
    },
    RowSpec {
        name: "setup-stock",
        group: Group::Setup,
        label: "stock webrtc 0.21.1 offer->open",
        run: stock_webrtc::run_setup,
    },
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let params = Params::new(&cli);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();

    if let Some(name) = &cli.row {
        let spec = ROWS
            .iter()
            .find(|spec| spec.name == name)
            .with_context(|| format!("unknown row {name:?}"))?;
        let report = measure::run_row(spec.name, &params, spec.run);
        println!("{}", serde_json::to_string(&report)?);
        // Runtimes of libraries under test may hold threads that never finish: leave now.
        std::process::exit(0);
    }

    let started = Instant::now();
    println!(
        "proxim-bench ({} run): DC-BULK {} MiB in {} KiB messages, SETUP {} trials, {} s limit per row",
        if cli.quick { "quick" } else { "full" },
        params.bulk_bytes / (1024 * 1024),
        params.message_bytes / 1024,
        params.setup_trials,
        params.row_limit.as_secs(),
    );
    let mut results = Vec::new();
    for spec in ROWS {
        if let Some(only) = &cli.only
            && !spec.name.contains(only.as_str())
        {
            continue;
        }
        eprintln!("running {} ...", spec.name);
        let report = run_child(spec, &cli, &params);
        eprintln!("  {}", measure::describe(&report.outcome));
        results.push((spec, report));
    }
    print_table(&results);
    println!("(total {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Run one row in a child process of this binary and collect its JSON report.
fn run_child(spec: &RowSpec, cli: &Cli, params: &Params) -> RowReport {
    match try_run_child(spec, cli, params) {
        Ok(report) => report,
        Err(error) => RowReport::failed(spec.name, format!("{error:#}")),
    }
}

fn try_run_child(spec: &RowSpec, cli: &Cli, params: &Params) -> anyhow::Result<RowReport> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut command = Command::new(exe);
    command.arg("--row").arg(spec.name);
    if cli.quick {
        command.arg("--quick");
    }
    if let Some(mib) = cli.bulk_mib {
        command.arg("--bulk-mib").arg(mib.to_string());
    }
    if let Some(trials) = cli.trials {
        command.arg("--trials").arg(trials.to_string());
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning the row process")?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    // The child enforces the row limit itself; this is the backstop for a wedged child.
    let deadline = Instant::now() + params.row_limit + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "row process wedged; killed after {:?}",
                deadline - Instant::now()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
    let line = out
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .with_context(|| format!("row process printed no report (exit {status})"))?;
    serde_json::from_str(line).context("parsing the row report")
}

fn print_table(results: &[(&RowSpec, RowReport)]) {
    println!();
    println!(
        "{:<8} {:<34} {:<56} {:>7} {:>9}",
        "TEST", "ROW", "RESULT", "CPU s", "peak RSS"
    );
    println!("{}", "-".repeat(118));
    for (spec, report) in results {
        let group = match spec.group {
            Group::Bulk => "DC-BULK",
            Group::Setup => "SETUP",
        };
        println!(
            "{:<8} {:<34} {:<56} {:>7} {:>9}",
            group,
            spec.label,
            measure::describe(&report.outcome),
            report
                .cpu_secs
                .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}")),
            report
                .peak_rss_kib
                .map_or_else(|| "-".to_owned(), |kib| format!("{} MiB", kib / 1024)),
        );
    }
    println!();
    println!("GOALS (MB = 10^6 bytes; throughput counts payload bytes received)");
    let find = |name: &str| {
        results
            .iter()
            .find(|(spec, _)| spec.name == name)
            .map(|(_, report)| &report.outcome)
    };
    // The goal is about what an app sees: `pair()` through the server until the channel is open.
    let setup = find("setup-proxim-pair");
    let p50 = setup.and_then(Outcome::p50_ms);
    let p99 = setup.and_then(Outcome::p99_ms);
    goal_line(
        "SETUP pair() p50 <= 20 ms",
        p50.map(|v| (v, format!("{v:.1} ms"))),
        |v| v <= 20.0,
    );
    goal_line(
        "SETUP pair() p99 <= 50 ms",
        p99.map(|v| (v, format!("{v:.1} ms"))),
        |v| v <= 50.0,
    );
    let proxim = find("dc-bulk-proxim").and_then(Outcome::complete_mb_per_s);
    let ratio = |base: &str| {
        let base = find(base).and_then(Outcome::complete_mb_per_s)?;
        let ours = proxim?;
        Some((
            ours / base,
            format!("{:.2}x ({ours:.1} / {base:.1} MB/s)", ours / base),
        ))
    };
    goal_line(
        "DC-BULK >= 0.6x raw UDP pump (1200 B)",
        ratio("dc-bulk-udp-1200"),
        |r| r >= 0.6,
    );
    if let Some((_, text)) = ratio("dc-bulk-udp-64k") {
        println!(
            "  {:<40} {text:<40} info",
            "DC-BULK vs raw UDP pump (64 KiB)"
        );
    }
    // Stock webrtc may time out; its partial rate is still a fair lower bound for the ratio.
    let stock_ratio = find("dc-bulk-stock")
        .and_then(Outcome::any_mb_per_s)
        .zip(proxim)
        .map(|(base, ours)| {
            (
                ours / base,
                format!("{:.2}x ({ours:.1} / {base:.1} MB/s)", ours / base),
            )
        });
    goal_line("DC-BULK >= 3x stock webrtc 0.21.1", stock_ratio, |r| {
        r >= 3.0
    });
    let relay_ratio = |row: &str| {
        let relayed = find(row).and_then(Outcome::complete_mb_per_s)?;
        let direct = proxim?;
        Some((
            relayed / direct,
            format!("{:.2}x ({relayed:.1} / {direct:.1} MB/s)", relayed / direct),
        ))
    };
    goal_line(
        "RELAY (UDP) >= 0.6x direct",
        relay_ratio("dc-bulk-proxim-relay-udp"),
        |r| r >= 0.6,
    );
    for (row, label) in [
        ("dc-bulk-proxim-relay-tcp", "RELAY (TCP) vs direct"),
        ("dc-bulk-proxim-relay-tls", "RELAY (TLS) vs direct"),
    ] {
        if let Some((_, text)) = relay_ratio(row) {
            println!("  {label:<40} {text:<40} info");
        }
    }
    let direct_p50 = find("setup-proxim-establish").and_then(Outcome::p50_ms);
    goal_line(
        "SETUP direct establish p50 <= 1 s",
        direct_p50.map(|v| (v, format!("{v:.1} ms"))),
        |v| v <= 1000.0,
    );
    let relay_p50 = find("setup-proxim-relay").and_then(Outcome::p50_ms);
    goal_line(
        "SETUP relay establish p50 <= 1 s",
        relay_p50.map(|v| (v, format!("{v:.1} ms"))),
        |v| v <= 1000.0,
    );
}

fn goal_line(goal: &str, value: Option<(f64, String)>, pass: impl Fn(f64) -> bool) {
    match value {
        Some((v, text)) => println!(
            "  {goal:<40} {text:<40} {}",
            if pass(v) { "PASS" } else { "FAIL" }
        ),
        None => println!("  {goal:<40} {:<40} n/a", "(not measured)"),
    }
}
