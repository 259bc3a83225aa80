//! What the sides print about a connection: its path, how the peer was authenticated, its
//! candidates as JSON, and a file transfer with a progress bar.

use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use proxim_core::peer::{CandidateInfo, CandidateKind, ConnectionStats};

/// How the other device was authenticated, for the connected line.
pub(crate) fn describe_auth(connection: &proxim_core::Connection) -> String {
    match (connection.auth_method(), connection.comparison_code()) {
        (proxim_core::AuthMethod::Trusted, _) => {
            format!("trusted device {} verified", connection.peer_identity())
        }
        (_, Some(comparison)) => format!("paired with the code; comparison code {comparison}"),
        _ => "verified".to_owned(),
    }
}

/// A duration in milliseconds with microsecond precision, for JSON reports.
pub(crate) fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The short name of a candidate kind (`host`, `srflx`, `prflx`, `relay`).
pub(crate) fn path_name(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Host => "host",
        CandidateKind::Srflx => "srflx",
        CandidateKind::Prflx => "prflx",
        CandidateKind::Relay => "relay",
        _ => "unknown",
    }
}

/// `relay (tls)`, `srflx`, …: the selected path as a person reads it.
pub(crate) fn describe_path(stats: &ConnectionStats) -> String {
    let mut text = path_name(stats.path()).to_owned();
    if let Some(relay) = stats.local.relay_protocol {
        text.push_str(&format!(" (to the relay over {relay})"));
    }
    text
}

pub(crate) fn candidate_json(c: &CandidateInfo) -> serde_json::Value {
    serde_json::json!({
        "kind": path_name(c.kind),
        "address": c.address.to_string(),
        "protocol": c.protocol,
        "relay_protocol": c.relay_protocol.map(|t| t.to_string()),
    })
}

/// Send a file with a progress bar on the terminal.
pub(crate) async fn send_with_progress(
    connection: &proxim_core::Connection,
    path: &Path,
) -> Result<proxim_core::transfer::FileReport> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress_bar = bar.clone();
    let report = connection
        .send_file(path, move |p| {
            progress_bar.set_length(p.total);
            progress_bar.set_position(p.bytes_done);
            progress_bar.set_message(p.name.clone());
        })
        .await;
    bar.finish_and_clear();
    Ok(report?)
}
