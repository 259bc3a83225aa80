//! `proxim`: the signaling server, the desktop side, the phone side from a computer, and a demo
//! that runs the whole job in one process.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use proxim_core::peer::{CandidateInfo, CandidateKind, ConnectionStats, Payload};
use proxim_core::{Desktop, DesktopEvent, Event, ProximConfig, pair};
use proxim_protocol::{PeerDevice, SessionId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

mod doctor;
mod qr;

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
    Desktop(DesktopArgs),
    /// Pair with a desktop as the phone side and send a message or a file.
    Pair(PairArgs),
    /// Reconnect to a desktop paired before (a trusted device), without a code.
    Connect(ConnectArgs),
    /// List or revoke the devices this one trusts (in its --data-dir).
    Devices(DevicesArgs),
    /// The whole job in one process: server, desktop and phone on loopback, a 64 MiB file.
    Demo(DemoArgs),
    /// Check the signaling server, STUN (the NAT's mapping behaviour) and TURN from here.
    Doctor(doctor::DoctorArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Signaling server WebSocket URL.
    #[arg(long, env = "PROXIM_SERVER", default_value = "ws://127.0.0.1:8787/ws")]
    server: String,
    /// This device's name, shown to the other side.
    #[arg(long)]
    name: Option<String>,
    /// Where Proxim keeps its device id, identity key and trusted devices. Without it,
    /// nothing is remembered: every connection needs a code.
    #[arg(long, env = "PROXIM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Connect through a TURN relay only (iceTransportPolicy relay).
    #[arg(long, env = "PROXIM_FORCE_RELAY")]
    force_relay: bool,
    /// Extra trusted root certificate(s), PEM, for turns: relays with a private CA.
    #[arg(long, env = "PROXIM_TURN_CA", value_name = "FILE")]
    turn_ca: Option<PathBuf>,
    /// Gather candidates only on this local address (repeatable; default: every interface).
    #[arg(long = "local-ip", value_name = "IP")]
    local_ips: Vec<std::net::IpAddr>,
    /// How long the direct connection may take to come up after pairing, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    connect_timeout: f64,
}

#[derive(Debug, Args)]
struct DesktopArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Accept every pairing request without asking (unattended use).
    #[arg(long, conflicts_with = "reject")]
    accept: bool,
    /// Reject every pairing request without asking (for tests).
    #[arg(long)]
    reject: bool,
    /// Send every text message back to its sender (for tests and demos).
    #[arg(long)]
    echo: bool,
    /// Where received files are saved.
    #[arg(long, default_value = ".")]
    download_dir: PathBuf,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
    /// Exit after the first connection closes.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, Args)]
struct PairArgs {
    /// The pairing code the desktop shows (`K7P2QX-4HT9M`), or its pairing link
    /// (`proxim://pair?…`, what the QR code holds).
    code: String,
    #[command(flatten)]
    phone: PhoneArgs,
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// The desktop's device id (or a unique prefix), as `proxim devices` lists it.
    desktop: String,
    #[command(flatten)]
    phone: PhoneArgs,
}

#[derive(Debug, Args)]
struct DevicesArgs {
    /// Where the trusted devices are kept.
    #[arg(long, env = "PROXIM_DATA_DIR")]
    data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<DevicesAction>,
}

#[derive(Debug, Subcommand)]
enum DevicesAction {
    /// List the trusted devices (the default).
    List,
    /// Forget a device (by id or unique prefix): it needs a new pairing with a code.
    Revoke {
        /// The device id or a unique prefix.
        id: String,
    },
}

#[derive(Debug, Args)]
struct PhoneArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Send this text message (repeatable).
    #[arg(long = "message", short = 'm')]
    messages: Vec<String>,
    /// Send this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Stay connected and print what the desktop sends until Ctrl-C.
    #[arg(long)]
    wait: bool,
    /// Print one JSON object at the end (result, path, timings) instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// File size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
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
            Command::Serve(args) => serve(*args).await,
            Command::Desktop(args) => desktop(args).await,
            Command::Pair(args) => phone(Target::Code(args.code), args.phone).await,
            Command::Connect(args) => phone(Target::Trusted(args.desktop), args.phone).await,
            Command::Devices(args) => devices(&args),
            Command::Demo(args) => demo(args).await,
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

async fn serve(args: proxim_server::cli::ServeArgs) -> Result<()> {
    let config = args.into_config()?;
    let server = proxim_server::Server::start(config).await?;
    eprintln!(
        "proxim signaling server on {} (WebSocket {})",
        server.local_addr(),
        server.ws_url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn config_from(common: &CommonArgs, default_name: &str) -> Result<ProximConfig> {
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| default_name.to_owned());
    let timeout = std::time::Duration::try_from_secs_f64(common.connect_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--connect-timeout must be a positive number of seconds")?;
    let mut config = ProximConfig::new(common.server.clone(), name)
        .with_force_relay(common.force_relay)
        .with_connect_timeout(timeout);
    if let Some(dir) = &common.data_dir {
        config = config.with_data_dir(dir);
    }
    if let Some(path) = &common.turn_ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the TURN CA file {}", path.display()))?;
        config = config.with_turn_roots_pem(pem);
    }
    if !common.local_ips.is_empty() {
        config = config.with_local_ips(common.local_ips.clone());
    }
    Ok(config)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "desktop".to_owned())
}

async fn desktop(args: DesktopArgs) -> Result<()> {
    let config = config_from(&args.common, &host_name())?.with_download_dir(&args.download_dir);
    tokio::fs::create_dir_all(&args.download_dir)
        .await
        .with_context(|| format!("creating {}", args.download_dir.display()))?;
    let mut desktop = Desktop::register(config).await?;
    println!(
        "desktop id: {}  identity: {}",
        desktop.device_id(),
        desktop.identity()
    );
    print_code(&desktop, !args.no_qr);
    let interactive = !args.accept && !args.reject;
    let mut answers = read_answers(interactive);
    // Prompts waiting for the user, oldest first; the question shown is for the first one.
    let mut pending: VecDeque<(SessionId, PeerDevice)> = VecDeque::new();
    loop {
        let event = tokio::select! {
            event = desktop.next_event() => event,
            answer = answers.recv(), if !pending.is_empty() => {
                let Some((session, peer)) = pending.pop_front() else { continue };
                match answer {
                    Some(answer) if is_yes(&answer) => desktop.accept(&session).await?,
                    Some(_) => {
                        desktop.reject(&session).await?;
                        println!("rejected {}", peer.device_name);
                    }
                    None => {
                        println!("stdin closed: prompts will time out (use --accept or --reject for unattended use)");
                        pending.clear();
                    }
                }
                ask(pending.front());
                continue;
            }
        };
        let Some(event) = event else {
            bail!("the signaling connection closed");
        };
        match event {
            DesktopEvent::Prompt { session, peer, .. } if args.accept => {
                println!("accepting {} ({})", peer.device_name, peer.device_id);
                desktop.accept(&session).await?;
            }
            DesktopEvent::Prompt { session, peer, .. } if args.reject => {
                println!("rejecting {} ({})", peer.device_name, peer.device_id);
                desktop.reject(&session).await?;
            }
            DesktopEvent::Prompt { session, peer, .. } => {
                pending.push_back((session, peer));
                if pending.len() == 1 {
                    ask(pending.front());
                }
            }
            DesktopEvent::PromptClosed { session, outcome } => {
                let was_asked = pending.front().is_some_and(|(s, _)| *s == session);
                pending.retain(|(s, _)| *s != session);
                println!("\npairing ended: {outcome:?}");
                if was_asked {
                    ask(pending.front());
                }
            }
            DesktopEvent::Connected(connection) => {
                let path = match connection.stats().await {
                    Ok(stats) => describe_path(&stats),
                    Err(e) => format!("(no stats: {e})"),
                };
                println!(
                    "connected to {} in {:?} via {path}; {}",
                    connection.peer_device().device_name,
                    connection.timings().channel_open,
                    describe_auth(&connection)
                );
                let finished = tokio::spawn(serve_connection(connection, args.echo));
                if args.once {
                    finished.await??;
                    return Ok(());
                }
            }
            DesktopEvent::ConnectionFailed { peer, error } => {
                eprintln!("connection to {} failed: {error}", peer.device_name);
            }
            DesktopEvent::CodeChanged(_) => print_code(&desktop, !args.no_qr),
            DesktopEvent::Refused { peer, reason } => {
                println!(
                    "refused {} ({}): {reason}",
                    peer.device_name, peer.device_id
                );
            }
            DesktopEvent::ServerLost => eprintln!("signaling server lost; reconnecting…"),
            DesktopEvent::ServerReconnected => eprintln!("signaling server back"),
            _ => {}
        }
    }
}

/// Lines the user types, read off the event loop so prompts can close while the user thinks.
fn read_answers(interactive: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(4);
    if interactive {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
    }
    rx
}

fn ask(prompt: Option<&(SessionId, PeerDevice)>) {
    if let Some((_, peer)) = prompt {
        print!(
            "{} ({}) wants to pair. Accept? [y/N] ",
            peer.device_name, peer.device_id
        );
        std::io::stdout().flush().ok();
    }
}

fn is_yes(answer: &str) -> bool {
    let answer = answer.trim();
    answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes")
}

/// Print what arrives on a desktop-side connection until it closes.
async fn serve_connection(mut connection: proxim_core::Connection, echo: bool) -> Result<()> {
    let name = connection.peer_device().device_name.to_string();
    while let Some(event) = connection.next_event().await {
        match event {
            Event::Message(Payload::Text(text)) => {
                println!("[{name}] {text}");
                if echo {
                    connection.send_text(text).await?;
                }
            }
            Event::Message(Payload::Binary(bytes)) => println!("[{name}] <{} bytes>", bytes.len()),
            Event::FileProgress(p) if p.bytes_done == 0 => {
                println!("[{name}] receiving {} ({} bytes)", p.name, p.total);
            }
            Event::FileReceived(file) => println!(
                "[{name}] saved {} ({} bytes, sha256 {} verified)",
                file.path.display(),
                file.bytes,
                file.sha256
            ),
            Event::FileFailed { error } => eprintln!("[{name}] file failed: {error}"),
            Event::Closed { reason } => {
                println!("[{name}] connection closed: {reason}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Show the code, its link and (optionally) the link as a QR code. The secret part is only
/// ever shown here, never logged.
fn print_code(desktop: &Desktop, qr: bool) {
    let code = desktop.code();
    let link = desktop.qr_uri();
    println!("pairing code: {code}");
    println!("pairing link: {link}");
    if qr && !link.is_empty() {
        match qr::render(&link) {
            Ok(art) => println!("{art}"),
            Err(e) => eprintln!("(no QR code: {e})"),
        }
    }
    println!("on the phone side: proxim pair {code} --server <this server>");
}

/// How the other device was authenticated, for the connected line.
fn describe_auth(connection: &proxim_core::Connection) -> String {
    match (connection.auth_method(), connection.comparison_code()) {
        (proxim_core::AuthMethod::Trusted, _) => {
            format!("trusted device {} verified", connection.peer_identity())
        }
        (_, Some(comparison)) => format!("paired with the code; comparison code {comparison}"),
        _ => "verified".to_owned(),
    }
}

/// `proxim devices`: list or revoke trusted devices.
fn devices(args: &DevicesArgs) -> Result<()> {
    let config = ProximConfig::new("ws://127.0.0.1:1/ws", "proxim").with_data_dir(&args.data_dir);
    let (title, list) = match &args.action {
        None | Some(DevicesAction::List) => {
            ("trusted devices", proxim_core::trusted_devices(&config)?)
        }
        Some(DevicesAction::Revoke { id }) => {
            let removed = proxim_core::revoke_device(&config, id)?;
            if removed.is_empty() {
                bail!("no trusted device `{id}` in {}", args.data_dir.display());
            }
            ("revoked", removed)
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no {title} in {}", args.data_dir.display());
        return Ok(());
    }
    println!("{title}:");
    println!(
        "{:<8} {:<34} {:<24} {:<20} LAST SEEN",
        "ROLE", "DEVICE ID", "NAME", "KEY"
    );
    for d in &list {
        let key = d
            .identity()
            .map_or_else(|| "(damaged)".to_owned(), |k| k.short());
        let role = match d.role {
            proxim_core::auth::DeviceRole::Phone => "phone",
            proxim_core::auth::DeviceRole::Desktop => "desktop",
        };
        println!(
            "{role:<8} {:<34} {:<24} {key:<20} {}",
            d.device_id,
            d.name,
            ago(d.last_seen)
        );
    }
    Ok(())
}

fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(unix) {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// What the phone side connects to.
enum Target {
    /// A desktop showing this code or link.
    Code(String),
    /// A trusted desktop, by device id.
    Trusted(String),
}

async fn phone(target: Target, args: PhoneArgs) -> Result<()> {
    let json = args.json;
    let started = std::time::Instant::now();
    let result = run_phone(target, args, started).await;
    match result {
        Ok(report) => {
            if json {
                println!("{report}");
            }
            Ok(())
        }
        Err(error) if json => {
            let kind = error
                .downcast_ref::<proxim_core::ProximError>()
                .map_or("error", error_kind);
            let report = serde_json::json!({
                "ok": false,
                "error": kind,
                "message": format!("{error:#}"),
                "elapsed_ms": ms(started.elapsed()),
            });
            println!("{report}");
            std::process::exit(1);
        }
        Err(error) => Err(error),
    }
}

/// Pair, report, send; returns the JSON report (printed with `--json`).
async fn run_phone(
    target: Target,
    args: PhoneArgs,
    started: std::time::Instant,
) -> Result<serde_json::Value> {
    let config = config_from(&args.common, "proxim-phone")?;
    let mut connection = match &target {
        Target::Code(code) => pair(&config, code).await?,
        Target::Trusted(desktop) => proxim_core::connect(&config, desktop).await?,
    };
    let connect_ms = ms(started.elapsed());
    let stats = connection.stats().await?;
    if !args.json {
        println!(
            "connected to {} in {:?} via {} ({} -> {}); {}",
            connection.peer_device().device_name,
            connection.timings().channel_open,
            describe_path(&stats),
            stats.local.address,
            stats.remote.address,
            describe_auth(&connection)
        );
        if config.data_dir.is_some() && matches!(target, Target::Code(_)) {
            println!(
                "remembered {} ({}): next time, proxim connect {}",
                connection.peer_device().device_name,
                connection.peer_device().device_id,
                connection.peer_device().device_id
            );
        }
    }
    let mut report = serde_json::json!({
        "ok": true,
        "auth": match connection.auth_method() {
            proxim_core::AuthMethod::Trusted => "trusted",
            _ => "code",
        },
        "comparison_code": connection.comparison_code(),
        "desktop_id": connection.peer_device().device_id.as_str(),
        "connect_ms": connect_ms,
        "channel_open_ms": ms(connection.timings().channel_open),
        "open_after_answer_ms": stats.open_after_answer.map(ms),
        "path": path_name(stats.path()),
        "local": candidate_json(&stats.local),
        "remote": candidate_json(&stats.remote),
        "rtt_ms": stats.rtt.map(ms),
    });
    for message in &args.messages {
        connection.send_text(message.clone()).await?;
        if !args.json {
            println!("sent: {message}");
        }
    }
    if let Some(path) = &args.file {
        let file = if args.json {
            connection.send_file(path, |_| {}).await?
        } else {
            send_with_progress(&connection, path).await?
        };
        if !args.json {
            println!(
                "sent {} ({} bytes) in {:.2?}: {:.1} MB/s, sha256 {} verified by the desktop",
                file.name,
                file.bytes,
                file.elapsed,
                file.bytes as f64 / file.elapsed.as_secs_f64() / 1e6,
                file.sha256
            );
        }
        report["file"] = serde_json::json!({
            "name": file.name,
            "bytes": file.bytes,
            "sha256": file.sha256,
            "elapsed_ms": ms(file.elapsed),
            "max_stall_ms": ms(file.max_stall),
        });
    }
    if args.wait {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                event = connection.next_event() => match event {
                    Some(Event::Message(Payload::Text(text))) => println!("< {text}"),
                    Some(Event::Closed { reason }) => { println!("closed: {reason}"); break; }
                    None => break,
                    _ => {}
                }
            }
        }
    }
    if let Ok(stats) = connection.stats().await {
        report["bytes_sent"] = stats.bytes_sent.into();
        report["bytes_received"] = stats.bytes_received.into();
    }
    connection.close().await;
    Ok(report)
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn path_name(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Host => "host",
        CandidateKind::Srflx => "srflx",
        CandidateKind::Prflx => "prflx",
        CandidateKind::Relay => "relay",
        _ => "unknown",
    }
}

/// `relay (tls)`, `srflx`, …: the selected path as a person reads it.
fn describe_path(stats: &ConnectionStats) -> String {
    let mut text = path_name(stats.path()).to_owned();
    if let Some(relay) = stats.local.relay_protocol {
        text.push_str(&format!(" (to the relay over {relay})"));
    }
    text
}

fn candidate_json(c: &CandidateInfo) -> serde_json::Value {
    serde_json::json!({
        "kind": path_name(c.kind),
        "address": c.address.to_string(),
        "protocol": c.protocol,
        "relay_protocol": c.relay_protocol.map(|t| t.to_string()),
    })
}

/// A stable name for each kind of failure, for scripts reading `--json`.
fn error_kind(error: &proxim_core::ProximError) -> &'static str {
    use proxim_core::ProximError as E;
    match error {
        E::InvalidConfig(_) => "invalid_config",
        E::InvalidCode(_) => "invalid_code",
        E::UnknownCode => "unknown_code",
        E::CodeExpired => "code_expired",
        E::CodeUsed => "code_used",
        E::Intercepted(_) => "intercepted",
        E::NotTrusted(_) => "not_trusted",
        E::DesktopOffline => "desktop_offline",
        E::Rejected => "rejected",
        E::TimedOut(_) => "pair_timed_out",
        E::DesktopGone => "desktop_gone",
        E::Cancelled => "cancelled",
        E::ServerUnreachable(_) => "server_unreachable",
        E::Signaling(_) => "signaling",
        E::ConnectionFailed(reason) if reason.contains("not established within") => "timed_out",
        E::ConnectionFailed(_) => "ice_failed",
        E::Transfer(_) => "transfer",
        _ => "error",
    }
}

async fn send_with_progress(
    connection: &proxim_core::Connection,
    path: &Path,
) -> Result<proxim_core::transfer::FileReport> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress_bar = bar.clone();
    let report = connection
        .send_file(path, move |p| {
            progress_bar.set_length(p.total);
            progress_bar.set_position(p.bytes_done);
            progress_bar.set_message(p.name.clone());
        })
        .await;
    bar.finish_and_clear();
    Ok(report?)
}

/// The whole job on an embedded default: server, desktop and phone in one process on loopback.
async fn demo(args: DemoArgs) -> Result<()> {
    let work = std::env::temp_dir().join(format!("proxim-demo-{}", std::process::id()));
    let result = run_demo(&args, &work).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    result
}

async fn run_demo(args: &DemoArgs, work: &Path) -> Result<()> {
    let size = args.size_mib * 1024 * 1024;
    println!("proxim demo: signaling server, desktop and phone in one process over loopback");

    let server_config = proxim_server::ServerConfig::loopback();
    let server = proxim_server::Server::start(server_config).await?;
    let url = server.ws_url();
    println!("  server       {url}");

    let received = work.join("received");
    tokio::fs::create_dir_all(&received).await?;
    let source = work.join("demo-payload.bin");
    let source_hash = write_random_file(&source, size)?;

    let mut desktop = Desktop::register(
        ProximConfig::new(url.clone(), "Demo desktop")
            .loopback_only()
            .with_download_dir(&received),
    )
    .await?;
    let code = desktop.code().to_owned();
    println!("  pairing code {code}");

    let phone_config = ProximConfig::new(url.clone(), "Demo phone").loopback_only();
    let phone = tokio::spawn(async move { pair(&phone_config, &code).await });

    let desktop_connection = loop {
        match desktop.next_event().await {
            Some(DesktopEvent::Prompt { session, peer, .. }) => {
                println!(
                    "  prompt       {} asks to pair: accepting",
                    peer.device_name
                );
                desktop.accept(&session).await?;
            }
            Some(DesktopEvent::Connected(connection)) => break connection,
            Some(DesktopEvent::ConnectionFailed { error, .. }) => {
                bail!("desktop side failed: {error}")
            }
            Some(DesktopEvent::PromptClosed { outcome, .. }) => bail!("pairing ended: {outcome:?}"),
            Some(_) => {}
            None => bail!("desktop lost the server"),
        }
    };
    let phone_connection = phone.await??;
    let timings = phone_connection.timings();
    let stats = phone_connection.stats().await?;
    println!("  time to pair         {:>10.2?}", timings.paired);
    println!("  time to open channel {:>10.2?}", timings.channel_open);
    println!(
        "  path                 {:>10}  ({} -> {})",
        format!("{:?}", stats.path()).to_lowercase(),
        stats.local.address,
        stats.remote.address
    );
    let (phone_check, desktop_check) = (
        phone_connection.comparison_code().unwrap_or("-"),
        desktop_connection.comparison_code().unwrap_or("-"),
    );
    println!(
        "  verified             {:>10}  SPAKE2 over the code's secret; comparison code {phone_check} (phone) = {desktop_check} (desktop)",
        if phone_check == desktop_check {
            "yes"
        } else {
            "NO"
        }
    );
    if phone_check != desktop_check {
        bail!("the comparison codes differ");
    }

    let receiver = tokio::spawn(receive_one_file(desktop_connection));
    let report = send_with_progress(&phone_connection, &source).await?;
    let (desktop_connection, received_file) = receiver.await??;
    let received_hash = sha256_file(&received_file)?;
    println!(
        "  transfer             {:>10}  {} MiB in {:.2?}",
        format!(
            "{:.1} MB/s",
            size as f64 / report.elapsed.as_secs_f64() / 1e6
        ),
        args.size_mib,
        report.elapsed
    );
    let stats = phone_connection.stats().await?;
    if let Some(rtt) = stats.rtt {
        println!("  rtt                  {rtt:>10.2?}");
    }
    let ok = received_hash == source_hash && report.sha256 == source_hash;
    println!(
        "  sha256               {:>10}  {}",
        if ok { "match" } else { "MISMATCH" },
        source_hash
    );
    phone_connection.close().await;
    desktop_connection.close().await;
    desktop.close().await;
    server.shutdown().await;
    if !ok {
        bail!("the received file differs from the one sent");
    }
    println!("demo ok");
    Ok(())
}

async fn receive_one_file(
    mut connection: proxim_core::Connection,
) -> Result<(proxim_core::Connection, PathBuf)> {
    while let Some(event) = connection.next_event().await {
        match event {
            Event::FileReceived(file) => return Ok((connection, file.path)),
            Event::FileFailed { error } => bail!("receiving failed: {error}"),
            Event::Closed { reason } => {
                bail!("connection closed before the file arrived: {reason}")
            }
            _ => {}
        }
    }
    bail!("connection ended before the file arrived")
}

fn write_random_file(path: &Path, size: u64) -> Result<String> {
    use rand::RngCore as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut rng = rand::rng();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
