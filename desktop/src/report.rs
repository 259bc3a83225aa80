//! What the sides print about a connection: its path, how the peer was authenticated, its
//! candidates as JSON, and a file transfer with a progress bar.

use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use proxim_core::Event;
use proxim_core::peer::{CandidateInfo, CandidateKind, ConnectionState, ConnectionStats, Payload};

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

/// The path with its addresses (`srflx (198.18.0.11:5000 -> 198.18.0.12:6000)`), to tell a
/// new path from the old one.
pub(crate) fn describe_route(stats: &ConnectionStats) -> String {
    format!(
        "{} ({} -> {})",
        describe_path(stats),
        stats.local.address,
        stats.remote.address
    )
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

/// What a person should hear of a connection's state change, if anything: the path going
/// quiet and coming back (failures and closes have their own lines).
pub(crate) fn describe_state_change(
    peer: &str,
    old: ConnectionState,
    new: ConnectionState,
) -> Option<String> {
    match (old, new) {
        (ConnectionState::Connected, ConnectionState::Disconnected) => Some(format!(
            "nothing heard from {peer} for 5 s: the path may be down; waiting for it to come \
             back (the connection fails after 30 s without an answer)"
        )),
        (ConnectionState::Disconnected, ConnectionState::Connected) => {
            Some(format!("{peer} answers again: the path is back"))
        }
        _ => None,
    }
}

/// Send a file with a progress bar on the terminal; what the connection says meanwhile (its
/// path going quiet and coming back, a new path, messages) is printed above the bar.
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
    let send = connection.send_file(path, move |p| {
        progress_bar.set_length(p.total);
        progress_bar.set_position(p.bytes_done);
        progress_bar.set_message(p.name.clone());
    });
    tokio::pin!(send);
    let peer = connection.peer_device().device_name.to_string();
    let mut route = connection.stats().await.ok().map(|s| describe_route(&s));
    let mut events_open = true;
    let report = loop {
        tokio::select! {
            report = &mut send => break report,
            event = connection.next_event(), if events_open => match event {
                Some(Event::StateChanged { old, new }) => {
                    if let Some(line) = describe_state_change(&peer, old, new) {
                        bar.println(line);
                    }
                }
                Some(Event::PathChanged(stats)) => {
                    let now = describe_route(&stats);
                    if route.as_ref().is_some_and(|r| *r != now) {
                        bar.println(format!("path now {now}"));
                    }
                    route = Some(now);
                }
                Some(Event::Reconnecting { attempt, reason, .. }) => {
                    bar.println(format!("reconnecting (attempt {attempt}): {reason}"));
                }
                Some(Event::Message(Payload::Text(text))) => bar.println(format!("< {text}")),
                Some(Event::Closed { reason }) => {
                    bar.println(format!("closed: {reason}"));
                    events_open = false;
                }
                Some(_) => {}
                None => events_open = false,
            },
        }
    };
    bar.finish_and_clear();
    Ok(report?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_going_quiet_and_coming_back_is_told_and_nothing_else() {
        use ConnectionState::*;
        let quiet = describe_state_change("the phone", Connected, Disconnected);
        assert!(
            quiet.as_deref().is_some_and(
                |l| l.starts_with("nothing heard from the phone for 5 s: the path may be down")
            ),
            "{quiet:?}"
        );
        assert_eq!(
            describe_state_change("the phone", Disconnected, Connected).as_deref(),
            Some("the phone answers again: the path is back")
        );
        for (old, new) in [
            (New, Connecting),
            (Connecting, Connected),
            (Connected, Closed),
        ] {
            assert_eq!(describe_state_change("the phone", old, new), None);
        }
    }
}
