//! `proxim devices`: list or revoke the devices this one trusts.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use proxim_core::ProximConfig;

#[derive(Debug, Args)]
pub(crate) struct DevicesArgs {
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
pub(crate) enum DevicesAction {
    /// List the trusted devices (the default).
    List,
    /// Forget a device (by id or unique prefix): it needs a new pairing with a code.
    Revoke {
        /// The device id or a unique prefix.
        id: String,
    },
}

/// `proxim devices`: list or revoke trusted devices.
pub(crate) fn devices(args: &DevicesArgs) -> Result<()> {
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
