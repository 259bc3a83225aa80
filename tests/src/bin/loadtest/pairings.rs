//! Real pairings through the server under load: a fresh [`Desktop`] per pairing (a code takes
//! at most 5 pair attempts a minute), a phone on [`pair`], a message and 256 KiB checked on
//! the other side, an acknowledgement back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use proxim_core::peer::Payload;
use proxim_core::{Connection, Desktop, DesktopEvent, Event, ProximConfig, pair};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Bytes each pairing moves from the phone to the desktop, in chunks of [`CHUNK`].
pub(crate) const PAYLOAD_BYTES: usize = 256 * 1024;
const CHUNK: usize = 16 * 1024;
/// One pairing, registration to acknowledgement, may take this long.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(60);

/// One successful pairing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairingTimes {
    /// `pair()` called to data channel open, as the phone measured it.
    pub(crate) open: Duration,
    /// Registration to acknowledgement.
    pub(crate) total: Duration,
}

/// The results of all pairings.
#[derive(Debug, Default)]
pub(crate) struct PairingReport {
    pub(crate) ok: Vec<PairingTimes>,
    pub(crate) failures: Vec<String>,
}

/// Run `count` pairings, `concurrency` at a time, the k-th starting no earlier than
/// `k * spread / count` from now.
pub(crate) async fn run(
    url: String,
    count: usize,
    concurrency: usize,
    spread: Duration,
) -> PairingReport {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut lanes = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let url = url.clone();
        lanes.push(tokio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    return results;
                }
                let due = start + spread.mul_f64(k as f64 / count as f64);
                tokio::time::sleep_until(due).await;
                let result = tokio::time::timeout(PAIRING_TIMEOUT, one(&url, k))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("timed out after {PAIRING_TIMEOUT:?}"))
                    });
                results.push(result.map_err(|e| format!("pairing {k}: {e:#}")));
            }
        }));
    }
    let mut report = PairingReport::default();
    for lane in lanes {
        match lane.await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(times) => report.ok.push(times),
                        Err(e) => report.failures.push(e),
                    }
                }
            }
            Err(e) => report.failures.push(format!("pairing task failed: {e}")),
        }
    }
    report
}

async fn one(url: &str, k: usize) -> Result<PairingTimes> {
    let started = Instant::now();
    let desk_name = format!("Load desktop {k}");
    let phone_name = format!("Load phone {k}");
    let mut desktop = Desktop::register(ProximConfig::new(url, desk_name.clone()).loopback_only())
        .await
        .context("registering the desktop")?;
    let code = desktop.code().to_owned();
    let phone_config = ProximConfig::new(url, phone_name.clone()).loopback_only();
    let phone = tokio::spawn(async move { pair(&phone_config, &code).await });

    // Accept our phone only: a random code of an abusive client could hit this desktop.
    let desk = loop {
        let event = desktop
            .next_event()
            .await
            .context("the desktop lost its registration")?;
        match event {
            DesktopEvent::Prompt { session, peer, .. } => {
                if peer.device_name.as_str() == phone_name {
                    desktop.accept(&session).await.context("accepting")?;
                } else {
                    desktop
                        .reject(&session)
                        .await
                        .context("rejecting a stranger")?;
                }
            }
            DesktopEvent::Connected(connection) => break connection,
            DesktopEvent::ConnectionFailed { error, .. } => {
                bail!("the desktop's connection failed: {error}")
            }
            DesktopEvent::PromptClosed { outcome, .. } => {
                bail!("the prompt closed without a connection: {outcome:?}")
            }
            _ => {}
        }
    };
    let mut phone = phone
        .await
        .context("the phone task panicked")?
        .context("pairing the phone")?;
    desktop.close().await;
    let open = phone.timings().channel_open;

    let result = exchange(&mut phone, desk, k).await;
    phone.close().await;
    result?;
    Ok(PairingTimes {
        open,
        total: started.elapsed(),
    })
}

/// Phone → desktop: a text and [`PAYLOAD_BYTES`] random bytes; desktop → phone: the SHA-256 it
/// computed, which must match.
async fn exchange(phone: &mut Connection, mut desk: Connection, k: usize) -> Result<()> {
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    rand::rng().fill_bytes(&mut payload);
    let want = hex::encode(Sha256::digest(&payload));

    let greeting = format!("hello from phone {k}");
    let receiver = tokio::spawn({
        let greeting = greeting.clone();
        async move {
            match next_payload(&mut desk).await? {
                Payload::Text(text) if text == greeting => {}
                other => bail!("the desktop got {other:?} instead of the greeting"),
            }
            let mut hasher = Sha256::new();
            let mut got = 0usize;
            while got < PAYLOAD_BYTES {
                match next_payload(&mut desk).await? {
                    Payload::Binary(bytes) => {
                        got += bytes.len();
                        hasher.update(&bytes);
                    }
                    other => bail!("the desktop got {other:?} instead of bytes"),
                }
            }
            let digest = hex::encode(hasher.finalize());
            desk.send_text(format!("sha256 {digest}"))
                .await
                .context("the desktop's acknowledgement")?;
            // Keep the desktop's end open until the phone has read the acknowledgement.
            Ok(desk)
        }
    });
    phone
        .send_text(greeting)
        .await
        .context("sending the greeting")?;
    for chunk in payload.chunks(CHUNK) {
        phone
            .send_bytes(chunk.to_vec())
            .await
            .context("sending bytes")?;
    }
    let ack = next_payload(phone).await?;
    let desk = receiver.await.context("the desktop task panicked")??;
    desk.close().await;
    match ack {
        Payload::Text(text) if text == format!("sha256 {want}") => Ok(()),
        other => bail!("the phone got {other:?} instead of the matching SHA-256"),
    }
}

async fn next_payload(connection: &mut Connection) -> Result<Payload> {
    loop {
        match connection.next_event().await {
            Some(Event::Message(payload)) => return Ok(payload),
            Some(Event::Closed { reason }) => bail!("closed: {reason}"),
            None => bail!("closed"),
            Some(_) => {}
        }
    }
}
