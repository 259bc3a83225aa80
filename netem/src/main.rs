//! `proxim-netem`: join two TUN devices through an emulated link.
//!
//! ```text
//! proxim-netem --dev-a eth0 --dev-b lan \
//!     --a-to-b "delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=50ms" \
//!     --b-to-a "delay=25ms,ge=1%,30%" --seed 7 --stats-interval 5
//! ```
//!
//! It creates (or attaches to) both devices, prints `ready` on stdout once they exist, runs
//! until SIGINT or SIGTERM, then logs the counts per direction and prints them as one JSON
//! line on stdout.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use proxim_netem::bridge;
use proxim_netem::{Impairment, Link, Way};
use tracing_subscriber::EnvFilter;

/// Join two TUN devices through an emulated link (delay, jitter, loss, Gilbert-Elliott
/// bursts, rate with a bounded queue, reordering), each direction on its own.
///
/// SPEC: comma-separated key=value items: delay=25ms, jitter=2ms, loss=1% (or 0.01),
/// ge=p,r[,h[,k]] (Gilbert-Elliott: p good->bad, r bad->good, h and k the delivery
/// probabilities in the bad and good states), rate=100mbit (bit, kbit, mbit, gbit; or
/// unlimited), queue=50ms or queue=64kb (the rate's queue, tail drop; default 50ms),
/// reorder=5%[,10ms] (that fraction of packets held that much longer). `none`: no impairment.
#[derive(Debug, Parser)]
#[command(name = "proxim-netem", version)]
struct Args {
    /// The first TUN device (created if missing).
    #[arg(long)]
    dev_a: String,
    /// The second TUN device (created if missing).
    #[arg(long)]
    dev_b: String,
    /// What happens to packets read from A and written to B.
    #[arg(long, default_value = "none", value_name = "SPEC")]
    a_to_b: Impairment,
    /// What happens to packets read from B and written to A.
    #[arg(long, default_value = "none", value_name = "SPEC")]
    b_to_a: Impairment,
    /// Seed of every random choice (the same seed and traffic give the same drops).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MTU of both devices.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..))]
    mtu: u16,
    /// Log the counts every this many seconds (0: only at the end).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    stats_interval: f64,
    /// Only check the specs: print them as understood (`a->b SPEC`, `b->a SPEC`) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.check {
        println!("a->b {}", args.a_to_b);
        println!("b->a {}", args.b_to_a);
        return ExitCode::SUCCESS;
    }
    let stats_interval = match args.stats_interval {
        0.0 => None,
        s if s.is_finite() && s >= 0.01 => Some(Duration::from_secs_f64(s)),
        s => {
            eprintln!("proxim-netem: --stats-interval {s}: want 0 or at least 0.01 seconds");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("proxim-netem: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, stats_interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("proxim-netem: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, stats_interval: Option<Duration>) -> Result<(), bridge::BridgeError> {
    let a = bridge::open_tun(&args.dev_a, args.mtu)?;
    let b = bridge::open_tun(&args.dev_b, args.mtu)?;
    tracing::info!(
        dev_a = a.name(),
        dev_b = b.name(),
        a_to_b = %args.a_to_b,
        b_to_a = %args.b_to_a,
        seed = args.seed,
        "link up"
    );
    // Scripts wait for this line before they move the devices into their namespaces.
    println!("ready {} {}", a.name(), b.name());
    let link = Link::new(args.a_to_b, args.b_to_a, args.seed);
    let report = bridge::run(link, &a, &b, stats_interval, shutdown_signal()).await?;
    for way in Way::BOTH {
        tracing::info!("final {}", report.describe(way));
    }
    println!("{}", report.to_json());
    Ok(())
}

/// SIGINT or SIGTERM. If the handlers cannot be installed, the emulator runs until killed.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::warn!("no signal handlers: stop me with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
