//! `proxim serve`: run the signaling server until SIGINT (Ctrl-C) or SIGTERM, then drain.

use anyhow::{Context, Result};

/// Start the server from its command-line options and serve until SIGINT or SIGTERM; either
/// one drains: every client gets `bye` and a WebSocket Close, within the shutdown grace.
pub(crate) async fn serve(args: proxim_server::cli::ServeArgs) -> Result<()> {
    let config = args.into_config()?;
    match proxim_server::raise_open_file_limit() {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let server = proxim_server::Server::start(config).await?;
    // Scripts read the address after "on " and the URL after "(WebSocket ": the admin
    // listener goes between them.
    let admin = server
        .admin_url()
        .map_or_else(|| "off".to_owned(), |url| format!("{url}, no token"));
    eprintln!(
        "proxim signaling server on {} (admin {admin}) (WebSocket {})",
        server.local_addr(),
        server.ws_url()
    );
    let signal = stop_signal().await?;
    eprintln!("shutting down ({signal})");
    server.shutdown().await;
    Ok(())
}

/// Wait for SIGINT or SIGTERM (a service manager's or container runtime's stop); its name.
async fn stop_signal() -> Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                interrupted.context("listening for SIGINT")?;
                Ok("SIGINT")
            }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}
