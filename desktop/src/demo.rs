//! `proxim demo`: the whole job in one process — server, desktop and phone on loopback,
//! pairing, then a random file sent and its SHA-256 checked.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use proxim_core::{Desktop, DesktopEvent, Event, ProximConfig, pair};
use sha2::{Digest, Sha256};

use crate::report::send_with_progress;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// File size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
}

/// The whole job on an embedded default: server, desktop and phone in one process on loopback.
pub(crate) async fn demo(args: DemoArgs) -> Result<()> {
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
    connection: proxim_core::Connection,
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
