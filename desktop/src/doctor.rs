//! `proxim doctor`: run the connectivity checks of [`proxim_core::doctor`] and print one line
//! per check plus a verdict (or the whole report as JSON). Exit status 0 when some path to a
//! peer is likely to work, 1 otherwise.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use proxim_core::doctor::{
    self, DoctorOptions, DoctorReport, SignalingOutcome, StunOutcome, TurnFailure, TurnOutcome,
};

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Signaling server WebSocket URL.
    #[arg(long, env = "PROXIM_SERVER", default_value = "ws://127.0.0.1:8787/ws")]
    server: String,
    /// Print the report as JSON instead of lines.
    #[arg(long)]
    json: bool,
    /// PEM file of extra root certificates to trust for `turns:` relays (a private CA).
    #[arg(long, value_name = "FILE")]
    turn_ca: Option<PathBuf>,
    /// Bound of each check, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
    /// Send STUN and TURN requests from this local IP (default: all interfaces).
    #[arg(long, value_name = "IP")]
    local_ip: Option<IpAddr>,
}

/// Run the checks, print the report, and exit 1 when no path works.
pub(crate) async fn doctor(args: DoctorArgs) -> Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .with_context(|| format!("--timeout {}: expected a positive number", args.timeout))?;
    let mut options = DoctorOptions::new(args.server);
    options.timeout = timeout;
    options.local_ip = args.local_ip;
    if let Some(path) = &args.turn_ca {
        let pem = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading --turn-ca {}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            bail!("--turn-ca {}: no PEM certificate in it", path.display());
        }
        options.turn_extra_roots_pem = Some(pem);
    }
    let report = doctor::run(&options).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in lines(&report, args.turn_ca.is_some()) {
            println!("{line}");
        }
    }
    if !report.path_works() {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

/// The report as lines: `check  status  details`.
fn lines(report: &DoctorReport, turn_ca_given: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = |check: &str, status: &str, text: String| {
        out.push(format!("{check:<10} {status:<5} {text}"));
    };
    let signaling = &report.signaling;
    match &signaling.outcome {
        SignalingOutcome::Ok {
            connect,
            round_trip,
            protocol_version,
            ..
        } => line(
            "signaling",
            "ok",
            format!(
                "{}: connected in {}, hello/welcome round trip {}, protocol v{protocol_version}",
                signaling.url,
                human(*connect),
                human(*round_trip)
            ),
        ),
        SignalingOutcome::Failed { failure, detail } => line(
            "signaling",
            "FAIL",
            format!("{}: {failure}: {detail}", signaling.url),
        ),
        _ => line("signaling", "?", signaling.url.clone()),
    }
    if signaling.outcome.is_ok() && report.ice_servers.is_empty() {
        line(
            "ice",
            "none",
            "the server hands out no STUN or TURN servers".to_owned(),
        );
    }
    for server in &report.ice_servers {
        let auth = match (&server.username, server.has_credential) {
            (Some(user), true) => format!(" (username {user}, credential <redacted>)"),
            (Some(user), false) => format!(" (username {user}, no credential)"),
            (None, true) => " (credential <redacted>)".to_owned(),
            (None, false) => String::new(),
        };
        line("ice", "", format!("{}{auth}", server.urls.join(" ")));
    }
    let Some(stun) = &report.stun else {
        line("stun", "skip", "no welcome, no STUN servers".to_owned());
        line("turn", "skip", "no welcome, no TURN servers".to_owned());
        line("verdict", "", report.verdict.summary.clone());
        return out;
    };
    for server in &stun.servers {
        let at = server
            .server
            .filter(|s| !server.url.ends_with(&s.to_string()))
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let (status, text) = match &server.outcome {
            StunOutcome::Mapped { mapped, rtt } => {
                ("ok", format!("mapped address {mapped} in {}", human(*rtt)))
            }
            StunOutcome::TimedOut { after } => {
                ("FAIL", format!("no answer within {}", human(*after)))
            }
            StunOutcome::BadAnswer => ("FAIL", "answered without a mapped address".to_owned()),
            StunOutcome::SendFailed { detail } => ("FAIL", format!("cannot send: {detail}")),
            StunOutcome::Unresolved { detail } => ("FAIL", format!("does not resolve: {detail}")),
            StunOutcome::Skipped { reason } => ("skip", reason.clone()),
            _ => ("?", String::new()),
        };
        line("stun", status, format!("{}{at}: {text}", server.url));
    }
    let from = stun
        .local
        .map(|l| format!(" (from local socket {l})"))
        .unwrap_or_default();
    let caveat = stun
        .caveat
        .as_ref()
        .map(|c| format!("; {c}"))
        .unwrap_or_default();
    line("nat", "", format!("{}{from}{caveat}", stun.mapping));
    if report.turn.is_empty() {
        line("turn", "none", "no TURN relay in the welcome".to_owned());
    }
    for turn in &report.turn {
        let (status, text) = match &turn.outcome {
            TurnOutcome::Ok {
                relayed,
                mapped,
                elapsed,
            } => (
                "ok",
                format!(
                    "relayed address {relayed}{} in {}",
                    mapped.map(|m| format!(", mapped {m}")).unwrap_or_default(),
                    human(*elapsed)
                ),
            ),
            TurnOutcome::Failed {
                failure: TurnFailure::Tls,
                detail,
            } if !turn_ca_given => (
                "FAIL",
                format!("{detail} (a relay with a private CA? pass --turn-ca FILE)"),
            ),
            TurnOutcome::Failed { failure, detail } if detail.contains(&failure.to_string()) => {
                ("FAIL", detail.clone())
            }
            TurnOutcome::Failed { failure, detail } => ("FAIL", format!("{failure}: {detail}")),
            TurnOutcome::NotChecked { reason } => ("skip", reason.clone()),
            _ => ("?", String::new()),
        };
        line(
            "turn",
            status,
            format!("{} [{}]: {text}", turn.url, turn.transport),
        );
    }
    line("verdict", "", report.verdict.summary.clone());
    out
}

/// `0.4 ms`, `12 ms`, `1.5 s`.
fn human(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_micros(420)), "0.4 ms");
        assert_eq!(human(Duration::from_micros(12_400)), "12 ms");
        assert_eq!(human(Duration::from_millis(1_500)), "1.5 s");
    }

    #[tokio::test]
    async fn an_unreachable_server_prints_a_failure_and_the_verdict() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        drop(listener);
        let mut options = DoctorOptions::new(url.clone());
        options.timeout = Duration::from_secs(2);
        options.local_ip = Some("127.0.0.1".parse().unwrap());
        let report = doctor::run(&options).await;
        let lines = lines(&report, false);
        assert!(
            lines[0].starts_with(&format!("signaling  FAIL  {url}: unreachable: ")),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("verdict          signaling server unreachable")
        );
        assert!(!report.path_works());
    }
}
