//! `proxim desktop`: register as a desktop, show the pairing code, answer pairing prompts
//! (asking on stdin, or `--accept`/`--reject`), and print what connected phones send.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use proxim_core::peer::Payload;
use proxim_core::{Desktop, DesktopEvent, Event};
use proxim_protocol::{PeerDevice, SessionId};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::common::{CommonArgs, config_from};
use crate::qr;
use crate::report::{describe_auth, describe_path};

#[derive(Debug, Args)]
pub(crate) struct DesktopArgs {
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

/// Register, show the code, and serve pairing prompts and connections until the server is gone.
pub(crate) async fn desktop(args: DesktopArgs) -> Result<()> {
    let config = config_from(&args.common, &host_name())?.with_download_dir(&args.download_dir);
    // Restart ICE when the local addresses change (not with fixed --local-ip addresses).
    let watch_network = config.local_ips.is_none();
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
                if watch_network {
                    connection.watch_network(crate::phone::NETWORK_WATCH);
                }
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

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "desktop".to_owned())
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
async fn serve_connection(connection: proxim_core::Connection, echo: bool) -> Result<()> {
    let name = connection.peer_device().device_name.to_string();
    let mut route = None;
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
            Event::FileReceived(file) => {
                let resumed = match file.resumed_from {
                    0 => String::new(),
                    held if held == file.bytes => "; had it already".to_owned(),
                    held => format!("; resumed at {held} bytes"),
                };
                println!(
                    "[{name}] saved {} ({} bytes, sha256 {} verified{resumed})",
                    file.path.display(),
                    file.bytes,
                    file.sha256
                )
            }
            Event::FileFailed { error } => {
                let kept = match &error {
                    proxim_core::ProximError::Transfer {
                        resumable: true, ..
                    } => " (what arrived is kept: sending the file again resumes it)",
                    _ => "",
                };
                eprintln!("[{name}] file failed: {error}{kept}")
            }
            Event::StateChanged { old, new } => {
                if let Some(line) = crate::report::describe_state_change("the phone", old, new) {
                    eprintln!("[{name}] {line}");
                }
            }
            Event::PathChanged(stats) => {
                // The first one is the path it connected on; later ones are news.
                let now = crate::report::describe_route(&stats);
                if route.as_ref().is_some_and(|r| *r != now) {
                    eprintln!("[{name}] path now {now}");
                }
                route = Some(now);
            }
            Event::Reconnecting {
                attempt, reason, ..
            } => eprintln!("[{name}] reconnecting (attempt {attempt}): {reason}"),
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
