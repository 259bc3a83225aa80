//! The whole job as an app sees it: `pair()` through a real signaling server on loopback, from
//! the phone's call to an open data channel, against a desktop that accepts every prompt.

use std::time::Duration;

use proxim_core::{Connection, Desktop, DesktopEvent, ProximConfig, pair};
use proxim_server::{Server, ServerConfig};

use crate::Params;
use crate::measure::{Outcome, repeat_setup, runtime};

/// One trial may take this long before it counts as failed.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Row: `pair()` to data channel open, repeated.
pub(crate) fn run_setup(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(setup(*params))
}

async fn setup(params: Params) -> anyhow::Result<Outcome> {
    // The bench pairs with one code over and over, hundreds of pairings a second through one
    // desktop connection: lift the per-code attempt limit and the per-connection message rate
    // limit (about six desktop messages per pairing would exceed 50/s at once).
    let config = ServerConfig {
        pair_attempts: 0,
        rate_limit: 0,
        ..ServerConfig::loopback()
    };
    let server = Server::start(config).await?;
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
    let outcome = repeat_setup(
        &params,
        TRIAL_TIMEOUT,
        async || Ok(pair(&phone, &code).await?),
        async |connection: Connection| connection.close().await,
    )
    .await;
    desktop_task.abort();
    server.shutdown().await;
    Ok(outcome)
}
