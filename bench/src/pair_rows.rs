//! The whole job as an app sees it: `pair()` through a real signaling server on loopback, from
//! the phone's call to an open data channel, against a desktop that accepts every prompt.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use proxim_core::{Desktop, DesktopEvent, ProximConfig, pair};
use proxim_server::{Server, ServerConfig};

use crate::Params;
use crate::measure::{Outcome, setup_outcome};

/// One trial may take this long before it counts as failed.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Row: `pair()` to data channel open, repeated.
pub(crate) fn run_setup(params: &Params) -> anyhow::Result<Outcome> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(setup(*params))
}

async fn setup(params: Params) -> anyhow::Result<Outcome> {
    let deadline = tokio::time::Instant::now() + params.row_limit;
    let server = Server::start(ServerConfig::loopback()).await?;
    let url = server.ws_url();
    let mut desktop =
        Desktop::register(ProximConfig::new(url.clone(), "Bench desktop").loopback_only()).await?;
    let code = desktop.code().to_owned();
    // The desktop accepts every prompt and closes each connection once it is open.
    let desktop_task = tokio::spawn(async move {
        while let Some(event) = desktop.next_event().await {
            match event {
                DesktopEvent::Prompt { session, .. } => {
                    let answered = desktop.accept(&session).await;
                    if answered.is_err() {
                        break;
                    }
                }
                DesktopEvent::Connected(connection) => {
                    tokio::spawn(async move { connection.close().await });
                }
                _ => {}
            }
        }
    });

    let phone = ProximConfig::new(url, "Bench phone").loopback_only();
    let mut samples = Vec::new();
    let mut first_error = None;
    let mut timed_out = false;
    for _ in 0..params.setup_trials {
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let started = Instant::now();
        match tokio::time::timeout(TRIAL_TIMEOUT, pair(&phone, &code)).await {
            Ok(Ok(connection)) => {
                samples.push(started.elapsed());
                connection.close().await;
            }
            Ok(Err(error)) => {
                first_error.get_or_insert_with(|| error.to_string());
            }
            Err(_) => {
                first_error.get_or_insert_with(|| format!("trial timed out ({TRIAL_TIMEOUT:?})"));
            }
        }
    }
    desktop_task.abort();
    server.shutdown().await;
    Ok(setup_outcome(
        params.setup_trials,
        samples,
        timed_out,
        first_error,
    ))
}
