//! `proxim pair` and `proxim connect`: the phone side from a computer. Pair with a code (or
//! reconnect to a trusted desktop), report the path, send messages and a file, and optionally
//! print one JSON report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use proxim_core::peer::Payload;
use proxim_core::{Event, pair};

use crate::common::{CommonArgs, config_from};
use crate::report::{
    candidate_json, describe_auth, describe_path, ms, path_name, send_with_progress,
};

#[derive(Debug, Args)]
pub(crate) struct PairArgs {
    /// The pairing code the desktop shows (`K7P2QX-4HT9M`), or its pairing link
    /// (`proxim://pair?…`, what the QR code holds).
    code: String,
    #[command(flatten)]
    phone: PhoneArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The desktop's device id (or a unique prefix), as `proxim devices` lists it.
    desktop: String,
    #[command(flatten)]
    phone: PhoneArgs,
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
    /// When the file transfer is cut short (the connection lost, the desktop restarted),
    /// reconnect to the desktop (trusted: needs --data-dir) and resume it, sending only what
    /// the desktop is missing; give up this many seconds after the first cut (0: fail at once).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    resume_for: u64,
    /// Stay connected and print what the desktop sends until Ctrl-C.
    #[arg(long)]
    wait: bool,
    /// Print one JSON object at the end (result, path, timings) instead of the human report.
    #[arg(long)]
    json: bool,
}

/// How often `proxim pair`/`connect` and `proxim desktop` look at the local addresses (see
/// `Connection::watch_network`): on average half of it is added to the recovery after a
/// network switch. One look is one `getifaddrs`, a few tens of microseconds.
pub(crate) const NETWORK_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// `proxim pair CODE`: pair with the desktop showing this code or link.
pub(crate) async fn pair_with_code(args: PairArgs) -> Result<()> {
    phone(Target::Code(args.code), args.phone).await
}

/// `proxim connect DESKTOP`: reconnect to a trusted desktop.
pub(crate) async fn connect_trusted(args: ConnectArgs) -> Result<()> {
    phone(Target::Trusted(args.desktop), args.phone).await
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
    // A laptop or a phone simulator moving between networks: restart ICE when the local
    // addresses change (an app would use its platform's network callback instead).
    if config.local_ips.is_none() {
        connection.watch_network(NETWORK_WATCH);
    }
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
        let resume_for = std::time::Duration::from_secs(args.resume_for);
        let sent = send_resuming(&config, &mut connection, path, resume_for, args.json).await?;
        let file = &sent.report;
        if !args.json {
            let resumed = if file.resumed_from > 0 {
                format!(" (resumed: the desktop held {} bytes)", file.resumed_from)
            } else {
                String::new()
            };
            let moved = file.bytes - file.resumed_from;
            println!(
                "sent {} ({} bytes) in {:.2?}: {:.1} MB/s, sha256 {} verified by the desktop{resumed}",
                file.name,
                file.bytes,
                file.elapsed,
                moved as f64 / file.elapsed.as_secs_f64() / 1e6,
                file.sha256
            );
        }
        report["file"] = serde_json::json!({
            "name": file.name,
            "bytes": file.bytes,
            "sha256": file.sha256,
            "elapsed_ms": ms(file.elapsed),
            "max_stall_ms": ms(file.max_stall),
            "resumed_from": file.resumed_from,
            "attempts": sent.attempts,
            "cuts": sent.cuts,
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
        // The path at the end (it may have changed since `path`: a network switch, a restart).
        report["path_end"] = path_name(stats.path()).into();
    }
    connection.close().await;
    Ok(report)
}

/// How often `--json` samples the connection's SCTP counters while a file is sent.
const WIRE_SAMPLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The connection's SCTP counters, as last sampled.
#[derive(Debug, Default, Clone, Copy)]
struct WireSample {
    /// User bytes the other side acknowledged (this connection).
    acked: u64,
    /// Bytes in flight.
    in_flight: u64,
}

/// How many cut attempts the JSON report lists.
const MAX_CUTS_REPORTED: usize = 16;
/// The pause before sending again over a connection that is still up.
const RESEND_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A file sent, possibly over several connections.
struct Sent {
    /// The last, successful attempt.
    report: proxim_core::transfer::FileReport,
    /// Attempts in all (1 when nothing was cut).
    attempts: u32,
    /// What each cut attempt had handed to the channel (bytes), and why it stopped.
    cuts: Vec<serde_json::Value>,
}

/// Send `path`; when the transfer is cut short and `resume_for` allows, reconnect to the same
/// desktop (trusted) and send it again: the desktop's part file makes that a resume.
async fn send_resuming(
    config: &proxim_core::ProximConfig,
    connection: &mut proxim_core::Connection,
    path: &std::path::Path,
    resume_for: std::time::Duration,
    json: bool,
) -> Result<Sent> {
    let mut attempts = 1;
    let mut cuts = Vec::new();
    let mut first_cut: Option<std::time::Instant> = None;
    loop {
        let sent_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent_bytes.clone();
        // What SCTP had delivered (acknowledged) and had in flight, sampled while sending: at
        // a cut, what the other side acknowledged beyond what it kept, plus what was in
        // flight, is what travels twice.
        let mut wire = WireSample::default();
        let result = if json {
            let send = connection.send_file(path, move |p| {
                counter.store(p.bytes_done, std::sync::atomic::Ordering::Relaxed)
            });
            tokio::pin!(send);
            let mut tick = tokio::time::interval(WIRE_SAMPLE);
            loop {
                tokio::select! {
                    result = &mut send => break result.map_err(anyhow::Error::from),
                    _ = tick.tick() => {
                        if let Ok(stats) = connection.stats().await {
                            wire = WireSample {
                                acked: stats.sctp.bytes_acked,
                                in_flight: stats.sctp.in_flight as u64,
                            };
                        }
                    }
                }
            }
        } else {
            send_with_progress(connection, path).await
        };
        let error = match result {
            Ok(report) => {
                return Ok(Sent {
                    report,
                    attempts,
                    cuts,
                });
            }
            Err(error) => error,
        };
        let resumable = matches!(
            error.downcast_ref::<proxim_core::ProximError>(),
            Some(proxim_core::ProximError::Transfer {
                resumable: true,
                ..
            })
        );
        let since = *first_cut.get_or_insert_with(std::time::Instant::now);
        if !resumable || since.elapsed() >= resume_for {
            return Err(error);
        }
        if cuts.len() < MAX_CUTS_REPORTED {
            cuts.push(serde_json::json!({
                "progress_bytes": sent_bytes.load(std::sync::atomic::Ordering::Relaxed),
                "acked_bytes": wire.acked,
                "in_flight_bytes": wire.in_flight,
                "after_ms": ms(since.elapsed()),
                "reason": format!("{error:#}"),
            }));
        }
        if !json {
            println!("transfer cut short ({error:#}); resuming");
        }
        tracing::info!(error = %format!("{error:#}"), attempts, "transfer cut short; resuming");
        use proxim_core::peer::ConnectionState;
        if matches!(
            connection.state(),
            ConnectionState::Closed | ConnectionState::Failed
        ) {
            *connection = reconnect(config, connection, since + resume_for, json).await?;
        } else {
            // The connection is up and the receiver stopped (busy, cancelled): not at once.
            tokio::time::sleep(RESEND_PAUSE).await;
        }
        attempts += 1;
    }
}

/// Connect again to the desktop `old` was connected to, trying until `deadline`.
async fn reconnect(
    config: &proxim_core::ProximConfig,
    old: &proxim_core::Connection,
    deadline: std::time::Instant,
    json: bool,
) -> Result<proxim_core::Connection> {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    let desktop = old.peer_device().device_id.to_string();
    old.close().await;
    loop {
        match proxim_core::connect(config, &desktop).await {
            Ok(connection) => {
                if config.local_ips.is_none() {
                    connection.watch_network(NETWORK_WATCH);
                }
                if !json {
                    println!("reconnected to {}", connection.peer_device().device_name);
                }
                return Ok(connection);
            }
            Err(error) if std::time::Instant::now() + RETRY < deadline => {
                tracing::info!(%error, "reconnecting failed; trying again");
                if !json {
                    println!("reconnecting failed ({error}); trying again");
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
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
        E::Transfer { .. } => "transfer",
        _ => "error",
    }
}
