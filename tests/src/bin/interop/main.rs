//! `proxim-interop`: one Proxim peer whose signaling link is this process's stdin and stdout,
//! for interop runs against another WebRTC stack (`tests/interop/interop.mjs` drives Chromium).
//!
//! ```text
//! proxim-interop --role offerer --bytes 4194304 --unreliable 200 --partial 200
//! ```
//!
//! Signals are Proxim's own `Signal` JSON, one a line, in both directions (see
//! [`stdio_link`]). The scenario is the same on both sides: the default channel `proxim`
//! (reliable, ordered) carries `--bytes` each way at once, checked by SHA-256; optional channels
//! `unreliable` (unordered, maxRetransmits=0), `partial` (ordered, maxPacketLifeTime) and
//! `probe` (reliable: one message per `--probe-sizes` size) are opened by the offerer after the
//! default one (the answerer waits for them). See [`workload`] for what goes over each.
//!
//! The last stdout line is `{"result":{…}}`: `ok`, the time to open, what each channel sent and
//! received. The process then waits for stdin to end (the driver's "done", bounded by
//! `--linger`) before it closes the connection, so the other side can finish reading. Exit 0
//! when every reliable stream matched and nothing failed, else 1. Logs go to stderr
//! (`RUST_LOG`, default `info`).

mod progress;
mod stdio_link;
mod workload;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use proxim_core::auth::Fingerprint;
use proxim_core::peer::{
    ChannelOptions, ConnectionEvent, ConnectionEvents, DataChannel, PeerConfig, PeerConnection,
    PeerRole,
};
use serde_json::{Value, json};

use crate::stdio_link::{StdioBridge, stdio_link};

/// One Proxim peer, signaling over stdin/stdout, running an interop scenario.
#[derive(Debug, Parser)]
#[command(name = "proxim-interop")]
struct Args {
    /// Offer (and open the channels) or answer.
    #[arg(long, value_enum)]
    role: Role,
    /// Bytes to send each way on the default channel.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    bytes: usize,
    /// Message size on the default channel.
    #[arg(long, default_value_t = 16 * 1024)]
    message_size: usize,
    /// Datagrams each way on an `unreliable` channel (unordered, maxRetransmits=0); 0: none.
    #[arg(long, default_value_t = 0)]
    unreliable: u32,
    /// Messages each way on a `partial` channel (ordered, maxPacketLifeTime); 0: none.
    #[arg(long, default_value_t = 0)]
    partial: u32,
    /// maxPacketLifeTime of the `partial` channel, in milliseconds.
    #[arg(long, default_value_t = 500)]
    lifetime_ms: u16,
    /// Size of each `unreliable`/`partial` message.
    #[arg(long, default_value_t = 1024)]
    datagram_size: usize,
    /// Sizes to try on a `probe` channel (comma-separated); none: no probe channel.
    #[arg(long, value_delimiter = ',')]
    probe_sizes: Vec<usize>,
    /// Bind only these local addresses (repeatable); default: every usable one.
    #[arg(long = "local-ip")]
    local_ips: Vec<IpAddr>,
    /// The other side's SHA-256 DTLS fingerprint (`ab:cd:…`): refuse an SDP naming another,
    /// as a pairing with the fingerprint binding does.
    #[arg(long)]
    expect_remote_fingerprint: Option<String>,
    /// Seconds for the whole scenario, connection included.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Seconds to wait for stdin to end after the result before closing anyway.
    #[arg(long, default_value_t = 20)]
    linger: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Offerer,
    Answerer,
}

/// Channel labels, shared with the page.
const UNRELIABLE: &str = "unreliable";
const PARTIAL: &str = "partial";
const PROBE: &str = "probe";
/// How often a stalled workload logs the SCTP association's view.
const STALL_LOG: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let (link, mut bridge) = stdio_link();
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(args.timeout), run(&args, link, started))
            .await
            .unwrap_or_else(|_| Err(anyhow!("scenario not finished within {} s", args.timeout)));
    let (mut result, connection) = match outcome {
        Ok((result, connection)) => (result, Some(connection)),
        Err(e) => (
            json!({"ok": false, "error": format!("{e:#}"), "progress": progress::snapshot()}),
            None,
        ),
    };
    result["bad_stdin_lines"] = bridge.bad_lines.load(Ordering::Relaxed).into();
    result["seconds"] = started.elapsed().as_secs_f64().into();
    let ok = result["ok"] == true;
    bridge.stdout.write(json!({ "result": result }).to_string());
    bridge.stdout.flushed().await;
    linger(&mut bridge, Duration::from_secs(args.linger)).await;
    if let Some(connection) = connection {
        let _ = tokio::time::timeout(Duration::from_secs(5), connection.close()).await;
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(
    args: &Args,
    link: proxim_core::link::SignalLink,
    started: Instant,
) -> Result<(Value, PeerConnection)> {
    let role = match args.role {
        Role::Offerer => PeerRole::Offerer,
        Role::Answerer => PeerRole::Answerer,
    };
    let mut config = PeerConfig::new(role, Vec::new());
    config.connect_timeout = Duration::from_secs(args.timeout.min(30));
    if !args.local_ips.is_empty() {
        config.local_ips = Some(args.local_ips.clone());
    }
    if let Some(fp) = &args.expect_remote_fingerprint {
        config.expected_remote_fingerprint =
            Some(Fingerprint::from_sdp_value(fp).with_context(|| {
                format!("--expect-remote-fingerprint {fp:?} is not a SHA-256 fingerprint")
            })?);
    }
    progress::phase("connecting");
    let established = PeerConnection::establish(config, link)
        .await
        .context("establish")?;
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(open_ms, "default channel open");
    let connection = established.connection;
    let mut events = established.events;

    let wanted = extra_channels(args);
    let mut extra = Vec::new();
    match args.role {
        Role::Offerer => {
            for (label, options) in &wanted {
                progress::phase(format!("opening channel {label}"));
                let channel = connection
                    .open_channel(label, options.clone())
                    .await
                    .with_context(|| format!("open channel {label}"))?;
                extra.push(channel);
            }
        }
        Role::Answerer => {
            progress::phase("waiting for the peer's channels");
            extra = wait_for_channels(&mut events, &wanted).await?;
        }
    }
    // Keep reading events (state changes) so nothing piles up; log them.
    tokio::spawn(log_events(events));

    progress::phase("workloads");
    let mut tasks = tokio::task::JoinSet::new();
    let (bytes, message_size) = (args.bytes, args.message_size);
    tasks.spawn(workload::bulk(established.channel, bytes, message_size));
    for channel in extra {
        let (unreliable, partial, size) = (args.unreliable, args.partial, args.datagram_size);
        let sizes = args.probe_sizes.clone();
        tasks.spawn(async move {
            match channel.label() {
                UNRELIABLE => workload::datagrams(channel, unreliable, size).await,
                PARTIAL => workload::datagrams(channel, partial, size).await,
                _ => workload::probe(channel, &sizes).await,
            }
        });
    }
    let mut channels = serde_json::Map::new();
    // A workload that stops moving: say what the SCTP association sees, every STALL_LOG.
    let mut watchdog = tokio::time::interval(STALL_LOG);
    watchdog.tick().await;
    let mut last = progress::snapshot();
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                let Some(done) = done else { break };
                let report = done.context("channel task")?;
                let label = report["label"].as_str().unwrap_or("?").to_owned();
                channels.insert(label, report);
            }
            _ = watchdog.tick() => {
                let now = progress::snapshot();
                if now == last {
                    let sctp = connection.stats().await.map(|s| format!("{:?}", s.sctp));
                    tracing::warn!(progress = %now, ?sctp, "no progress in {STALL_LOG:?}");
                }
                last = now;
            }
        }
    }
    let ok = channels
        .values()
        .all(|c| c.get("ok").is_none_or(|ok| ok == true));
    let stats = match connection.stats().await {
        Ok(s) => json!({
            "local": format!("{:?} {}", s.local.kind, s.local.address),
            "remote": format!("{:?} {}", s.remote.kind, s.remote.address),
            "rtt_ms": s.rtt.map(|r| r.as_secs_f64() * 1000.0),
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    Ok((
        json!({"ok": ok, "open_ms": open_ms, "channels": channels, "path": stats}),
        connection,
    ))
}

/// The channels besides the default one, in the order the offerer opens them.
fn extra_channels(args: &Args) -> Vec<(&'static str, ChannelOptions)> {
    let mut wanted = Vec::new();
    if args.unreliable > 0 {
        wanted.push((UNRELIABLE, ChannelOptions::unreliable()));
    }
    if args.partial > 0 {
        wanted.push((
            PARTIAL,
            ChannelOptions {
                ordered: true,
                max_retransmits: None,
                max_packet_life_time: Some(args.lifetime_ms),
            },
        ));
    }
    if !args.probe_sizes.is_empty() {
        wanted.push((PROBE, ChannelOptions::default()));
    }
    wanted
}

/// The answerer's side: the channels the offerer opens arrive as events.
async fn wait_for_channels(
    events: &mut ConnectionEvents,
    wanted: &[(&'static str, ChannelOptions)],
) -> Result<Vec<DataChannel>> {
    let mut got: Vec<DataChannel> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < wanted.len() {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| {
                let labels: Vec<&str> = got.iter().map(|c| c.label()).collect();
                anyhow!("the peer's channels did not all open within 15 s (got {labels:?})")
            })?;
        match event {
            Some(ConnectionEvent::ChannelOpened(channel)) => {
                if wanted.iter().any(|(label, _)| *label == channel.label()) {
                    got.push(channel);
                } else {
                    tracing::warn!(label = channel.label(), "unexpected channel");
                }
            }
            Some(ConnectionEvent::Closed { reason, .. }) => bail!("connection closed: {reason}"),
            Some(other) => tracing::debug!(?other, "event"),
            None => bail!("connection events ended"),
        }
    }
    Ok(got)
}

async fn log_events(mut events: ConnectionEvents) {
    while let Some(event) = events.next().await {
        match event {
            ConnectionEvent::ChannelOpened(channel) => {
                tracing::warn!(label = channel.label(), "unexpected channel")
            }
            other => tracing::info!(?other, "event"),
        }
    }
}

/// After the result: wait for stdin to end, at most `bound`.
async fn linger(bridge: &mut StdioBridge, bound: Duration) {
    let _ = tokio::time::timeout(bound, bridge.stdin_closed.wait_for(|closed| *closed)).await;
}
