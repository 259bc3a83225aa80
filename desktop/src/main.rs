//! `proxim`: the signaling server, the desktop side, the phone side from a computer, and a demo
//! that runs the whole job in one process.
//!
//! This file holds the command line (clap) and the dispatch; each subcommand lives in its own
//! module.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod common;
mod demo;
mod desktop;
mod devices;
mod doctor;
mod phone;
mod qr;
mod report;
mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "proxim",
    version,
    about = "Pair a phone with a desktop and talk to it directly"
)]
struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the signaling server.
    Serve(Box<proxim_server::cli::ServeArgs>),
    /// Register as a desktop, show the pairing code, accept phones, receive messages and files.
    Desktop(desktop::DesktopArgs),
    /// Pair with a desktop as the phone side and send a message or a file.
    Pair(phone::PairArgs),
    /// Reconnect to a desktop paired before (a trusted device), without a code.
    Connect(phone::ConnectArgs),
    /// List or revoke the devices this one trusts (in its --data-dir).
    Devices(devices::DevicesArgs),
    /// The whole job in one process: server, desktop and phone on loopback, a 64 MiB file.
    Demo(demo::DemoArgs),
    /// Check the signaling server, STUN (the NAT's mapping behaviour) and TURN from here.
    Doctor(doctor::DoctorArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints its own report; the server and the interactive sides log their work.
    let quiet = matches!(cli.command, Command::Demo(_));
    init_tracing(cli.verbose, quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Desktop(args) => desktop::desktop(args).await,
            Command::Pair(args) => phone::pair_with_code(args).await,
            Command::Connect(args) => phone::connect_trusted(args).await,
            Command::Devices(args) => devices::devices(&args),
            Command::Demo(args) => demo::demo(args).await,
            Command::Doctor(args) => doctor::doctor(args).await,
        }
    })
}

fn init_tracing(verbose: u8, quiet: bool) {
    // webrtc-rs logs routine conditions at warn; keep its crates at error unless asked.
    let default = match (verbose, quiet) {
        (0, true) => "error",
        (0, false) => "warn,rtc=error,rtc_dtls=error,proxim_server=info",
        (1, _) => "info,rtc=warn,rtc_dtls=error",
        _ => "debug,rtc=info,rtc_sctp=info,rtc_dtls=info,rtc_ice=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
