//! `doctor`: can this machine reach a Proxim signaling server, and which network paths to a
//! peer are likely to work from here?
//!
//! [`run`] performs four checks and derives a [`Verdict`]:
//! 1. **Signaling** (`signaling`) — open the WebSocket (`ws://` or `wss://`) and do the
//!    hello/welcome handshake with the signaling client's own socket opener and sans-IO session,
//!    timing both; or say why not (bad URL, unreachable, timed out, TLS, not a Proxim server).
//! 2. **ICE servers** — the list the `welcome` hands out, credentials redacted
//!    ([`IceServerSummary`] never holds a password).
//! 3. **STUN** (`stun`) — one Binding request from *one* local UDP socket to every `stun:`
//!    address, run by the sans-IO `StunBinding` transaction the peer's candidate gathering uses.
//!    The mapped addresses tell the NAT's mapping behaviour ([`classify_mapping`]).
//! 4. **TURN** (`turn`) — one allocation per `turn:`/`turns:` URL with the welcome's credentials.
//!
//! Every step is bounded by [`DoctorOptions::timeout`]: the signaling check, then, concurrently,
//! the STUN check (name resolution, then the Binding transactions, each within the timeout) and
//! every TURN allocation (each within the timeout, name resolution included). The STUN driver
//! follows the crate's run-loop rule: after every datagram or timer it drains every
//! transaction's output before waiting again.
//!
//! [`verdict`] (`verdict`) is a pure function over the results, and the whole [`DoctorReport`]
//! serializes to JSON (durations in milliseconds).

mod signaling;
mod stun;
mod turn;
mod verdict;

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use tracing::{Instrument, debug};

use crate::clock::now;
use signaling::check_signaling;
use stun::check_stun;
use turn::check_turn;

pub use signaling::{IceServerSummary, SignalingCheck, SignalingFailure, SignalingOutcome};
pub use stun::{NatMapping, StunCheck, StunOutcome, StunServerCheck, classify_mapping};
pub use turn::{RelayTransport, TurnCheck, TurnFailure, TurnOutcome};
pub use verdict::{Verdict, VerdictKind, verdict};

/// The default bound of each check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to check, and how long each check may take.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DoctorOptions {
    /// The signaling server's WebSocket URL, e.g. `ws://198.18.0.1:8787/ws`.
    pub server_url: String,
    /// The bound of each check (signaling; STUN; each TURN allocation).
    pub timeout: Duration,
    /// Extra PEM root certificates trusted for `turns:` servers (a private CA).
    pub turn_extra_roots_pem: Option<Vec<u8>>,
    /// The local IP to send STUN and TURN requests from; `None`: all interfaces.
    pub local_ip: Option<IpAddr>,
}

impl DoctorOptions {
    /// Check `server_url` with [`DEFAULT_TIMEOUT`], from all interfaces.
    pub fn new(server_url: impl Into<String>) -> Self {
        DoctorOptions {
            server_url: server_url.into(),
            timeout: DEFAULT_TIMEOUT,
            turn_extra_roots_pem: None,
            local_ip: None,
        }
    }
}

/// Everything [`run`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DoctorReport {
    /// The signaling check.
    pub signaling: SignalingCheck,
    /// The ICE servers from the welcome, credentials redacted (empty without a welcome).
    pub ice_servers: Vec<IceServerSummary>,
    /// The STUN check; `None` when signaling failed (no welcome, so no STUN servers).
    pub stun: Option<StunCheck>,
    /// One check per TURN URL in the welcome.
    pub turn: Vec<TurnCheck>,
    /// What the results mean.
    pub verdict: Verdict,
    /// How long the whole run took.
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
}

impl DoctorReport {
    /// Whether some path to a peer is likely to work (the command's exit status).
    pub fn path_works(&self) -> bool {
        self.verdict.path_works
    }
}

/// Run every check against `options.server_url`.
pub async fn run(options: &DoctorOptions) -> DoctorReport {
    let span = tracing::info_span!("doctor", url = %options.server_url);
    async {
        let started = now();
        let (signaling, ice) = check_signaling(&options.server_url, options.timeout).await;
        let ice_servers = ice.iter().map(IceServerSummary::from).collect();
        let (stun, turn) = if signaling.outcome.is_ok() {
            let (stun, turn) = tokio::join!(
                check_stun(&ice, options.local_ip, options.timeout),
                check_turn(&ice, options)
            );
            (Some(stun), turn)
        } else {
            (None, Vec::new())
        };
        let mapping = stun.as_ref().map_or(NatMapping::NotTested, |s| s.mapping);
        let verdict = verdict(&signaling.outcome, mapping, &turn);
        debug!(kind = ?verdict.kind, summary = %verdict.summary, "doctor verdict");
        DoctorReport {
            signaling,
            ice_servers,
            stun,
            turn,
            verdict,
            elapsed: now().saturating_duration_since(started),
        }
    }
    .instrument(span)
    .await
}

/// Durations in JSON: milliseconds with microsecond precision.
fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Instant;

    use proxim_protocol::{IceServer, PROTOCOL_VERSION};

    use super::*;

    /// 127.0.0.1, where every socket of these tests lives.
    pub(super) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    pub(super) fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A signaling check that got its welcome.
    pub(super) fn welcomed() -> SignalingOutcome {
        SignalingOutcome::Ok {
            connect: Duration::from_millis(1),
            round_trip: Duration::from_millis(1),
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval: Duration::from_secs(15),
        }
    }

    /// A TURN check over `transport` that worked (`ok`) or timed out.
    pub(super) fn relay(transport: RelayTransport, ok: bool) -> TurnCheck {
        TurnCheck {
            url: "turn:198.18.0.2:3478".to_owned(),
            transport,
            outcome: if ok {
                TurnOutcome::Ok {
                    relayed: addr("198.18.0.2:49152"),
                    mapped: None,
                    elapsed: Duration::from_millis(20),
                }
            } else {
                TurnOutcome::Failed {
                    failure: TurnFailure::TimedOut,
                    detail: "no answer".to_owned(),
                }
            },
        }
    }

    #[test]
    fn report_json_never_holds_a_password() {
        let ice = IceServer {
            urls: vec!["turn:198.18.0.2:3478".to_owned()],
            username: Some("1790000000:abc".to_owned()),
            credential: Some("s3cret-password".to_owned()),
        };
        let report = DoctorReport {
            signaling: SignalingCheck {
                url: "ws://127.0.0.1:1/ws".to_owned(),
                outcome: welcomed(),
            },
            ice_servers: vec![IceServerSummary::from(&ice)],
            stun: None,
            turn: vec![relay(RelayTransport::Udp, true)],
            verdict: verdict(&welcomed(), NatMapping::NoNat, &[]),
            elapsed: Duration::from_micros(1500),
        };
        let json = serde_json::to_value(&report).unwrap();
        let text = json.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(json["ice_servers"][0]["has_credential"], true);
        assert_eq!(json["signaling"]["status"], "ok");
        assert_eq!(json["turn"][0]["status"], "ok");
        assert_eq!(json["turn"][0]["transport"], "udp");
        assert_eq!(json["verdict"]["kind"], "direct_likely");
        assert_eq!(json["elapsed_ms"], 1.5);
    }

    #[tokio::test]
    async fn doctor_unreachable_signaling_fails_fast_and_clearly() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut options = DoctorOptions::new(format!("ws://127.0.0.1:{port}/ws"));
        options.timeout = Duration::from_secs(3);
        options.local_ip = Some(LOOPBACK);
        let started = Instant::now();
        let report = run(&options).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        match &report.signaling.outcome {
            SignalingOutcome::Failed { failure, detail } => {
                assert_eq!(*failure, SignalingFailure::Unreachable, "{detail}");
                assert!(!detail.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(report.stun, None);
        assert_eq!(report.verdict.kind, VerdictKind::SignalingFailed);
        assert_eq!(report.verdict.summary, "signaling server unreachable");
        assert!(!report.path_works());
    }
}
