//! The options every side shares (server, name, data dir, relay, local IPs) and the core
//! configuration built from them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use proxim_core::ProximConfig;

#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
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

/// The core configuration for these options; `default_name` when `--name` is not given.
pub(crate) fn config_from(common: &CommonArgs, default_name: &str) -> Result<ProximConfig> {
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
