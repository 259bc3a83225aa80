//! Connection reports: what this device tells the signaling server about how a session's direct
//! connection went (`connection_report`), for the operator's event stream.
//!
//! Reports are optional ([`ProximConfig::report_connections`](crate::ProximConfig)) and best
//! effort: a report is one push onto the signaling client's outgoing queue, bounded by
//! [`REPORT_SEND_TIMEOUT`], never waits for an answer (the server sends none) and never fails
//! or delays the connection; a report that cannot be sent is logged at debug and dropped.
//! Every field is a number, an enum or a [`FailureKind`] token: no addresses, no free text.
//!
//! Per session, each side sends at most two reports: `connected` or `failed` once the direct
//! connection is up or has failed, then (desktop only, which stays on signaling) `closed` when
//! a connection that was up ends.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use proxim_protocol::{
    ClientMessage, ConnectionId, ConnectionOutcome, ConnectionReport, PathKind, RelayProtocol,
    ReportToken, SessionId,
};
use tracing::debug;

use super::connection::Connection;
use crate::peer::{CandidateKind, ConnectionStats, PeerConnection, PeerError};
use crate::signaling::SignalingClient;
use crate::turn::TurnTransport;

/// How long queueing one report may take before it is dropped (the queue is full only when
/// the signaling connection is stuck).
pub(super) const REPORT_SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// How long asking the peer driver for a stats snapshot may take.
const STATS_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a connection failed or closed abnormally, as the short token a report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum FailureKind {
    /// ICE found no working path, or lost it.
    IceFailed,
    /// ICE consent (the periodic connectivity check) failed on a connection that was up.
    ConsentLost,
    /// The DTLS handshake or session failed.
    DtlsFailed,
    /// The SCTP association failed.
    SctpFailed,
    /// The other side's DTLS fingerprint is not the authenticated one.
    Intercepted,
    /// The other device refused the connection (its side of an interception).
    RefusedByPeer,
    /// The connection was not up within the connect timeout.
    Timeout,
    /// The signaling connection was lost during setup.
    SignalingLost,
    /// The other device left the session during setup.
    PeerLeft,
    /// The other device sent an unusable signal.
    BadSignal,
    /// The other device closed a connection that was up.
    ClosedByPeer,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Every kind, in declaration order.
    #[cfg(test)]
    const ALL: [FailureKind; 12] = [
        FailureKind::IceFailed,
        FailureKind::ConsentLost,
        FailureKind::DtlsFailed,
        FailureKind::SctpFailed,
        FailureKind::Intercepted,
        FailureKind::RefusedByPeer,
        FailureKind::Timeout,
        FailureKind::SignalingLost,
        FailureKind::PeerLeft,
        FailureKind::BadSignal,
        FailureKind::ClosedByPeer,
        FailureKind::Other,
    ];

    /// The wire token.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            FailureKind::IceFailed => "ice_failed",
            FailureKind::ConsentLost => "consent_lost",
            FailureKind::DtlsFailed => "dtls_failed",
            FailureKind::SctpFailed => "sctp_failed",
            FailureKind::Intercepted => "intercepted",
            FailureKind::RefusedByPeer => "refused_by_peer",
            FailureKind::Timeout => "timeout",
            FailureKind::SignalingLost => "signaling_lost",
            FailureKind::PeerLeft => "peer_left",
            FailureKind::BadSignal => "bad_signal",
            FailureKind::ClosedByPeer => "closed_by_peer",
            FailureKind::Other => "other",
        }
    }

    /// The kind of a failed setup.
    pub(super) fn of_setup(error: &PeerError) -> FailureKind {
        match error {
            PeerError::IceFailed { .. } => FailureKind::IceFailed,
            PeerError::Timeout { .. } => FailureKind::Timeout,
            PeerError::SignalingLost => FailureKind::SignalingLost,
            PeerError::PeerLeft => FailureKind::PeerLeft,
            PeerError::Intercepted(_) => FailureKind::Intercepted,
            PeerError::RefusedByPeer(_) => FailureKind::RefusedByPeer,
            PeerError::BadSignal(_) => FailureKind::BadSignal,
            PeerError::Rtc(reason) => FailureKind::of_rtc(reason),
            PeerError::NotConnected
            | PeerError::NoSignaling
            | PeerError::MessageTooLarge { .. }
            | PeerError::ChannelClosed
            | PeerError::Closed
            | PeerError::Io(_) => FailureKind::Other,
        }
    }

    /// The kind of an end of a connection that was up, from the peer's close reason; `None`
    /// for a local close.
    ///
    /// The peer layer reports a close as text (`ConnectionEvent::Closed { reason }`), so this
    /// is the one place that reads those texts back; a typed close reason in the peer layer
    /// would replace it.
    pub(super) fn of_close(reason: &str, closed_locally: bool) -> Option<FailureKind> {
        if closed_locally || reason == CLOSED_LOCALLY {
            return None;
        }
        Some(if reason == CLOSED_BY_PEER {
            FailureKind::ClosedByPeer
        } else if reason.contains("consent") {
            FailureKind::ConsentLost
        } else if reason.starts_with("ICE failed") {
            FailureKind::IceFailed
        } else if let Some(rtc) = reason.strip_prefix("webrtc: ") {
            FailureKind::of_rtc(rtc)
        } else {
            FailureKind::Other
        })
    }

    /// The token, for a report.
    fn token(self) -> Option<ReportToken> {
        ReportToken::new(self.as_str()).ok()
    }

    /// A [`PeerError::Rtc`]'s reason: the peer layer prefixes DTLS and SCTP failures.
    fn of_rtc(reason: &str) -> FailureKind {
        if reason.starts_with("DTLS") {
            FailureKind::DtlsFailed
        } else if reason.starts_with("SCTP") {
            FailureKind::SctpFailed
        } else {
            FailureKind::Other
        }
    }
}

/// The peer layer's reason for a close this side asked for (or a dropped connection).
pub(super) const CLOSED_LOCALLY: &str = "closed locally";
/// The peer layer's reason for a close the other side asked for.
const CLOSED_BY_PEER: &str = "closed by the peer";

/// Where one session's reports go: the signaling client it was paired on and the session id.
/// Sends only while that same signaling connection is up (after a reconnect the server no
/// longer knows this connection as a member of the session).
#[derive(Debug, Clone)]
pub(super) struct ReportSink {
    client: SignalingClient,
    session: SessionId,
    connection_id: ConnectionId,
}

impl ReportSink {
    /// A sink for `session` on `client`, or `None` when the app turned reports off.
    pub(super) fn new(
        enabled: bool,
        client: &SignalingClient,
        session: &SessionId,
    ) -> Option<ReportSink> {
        enabled.then(|| ReportSink {
            client: client.clone(),
            session: session.clone(),
            connection_id: client.welcome().connection_id,
        })
    }

    /// Report how setting up the connection ended, `accepted_at` being when the pairing was
    /// accepted (`time_to_connect_ms` counts from there to the channel being open or the
    /// failure).
    pub(super) async fn established(
        &self,
        result: &Result<Connection, PeerError>,
        accepted_at: Instant,
    ) {
        let time_to_connect = accepted_at.elapsed();
        let (outcome, report) = match result {
            Ok(connection) => {
                let stats = bounded_stats(connection.peer()).await;
                (
                    ConnectionOutcome::Connected,
                    connected_report(stats.as_ref(), time_to_connect),
                )
            }
            Err(error) => (
                ConnectionOutcome::Failed,
                failed_report(FailureKind::of_setup(error), time_to_connect),
            ),
        };
        self.send(outcome, report).await;
    }

    /// Queue one report (bounded; errors logged at debug).
    pub(super) async fn send(&self, outcome: ConnectionOutcome, report: ConnectionReport) {
        if !self.client.is_connected() || self.client.welcome().connection_id != self.connection_id
        {
            debug!(
                outcome = outcome.as_str(),
                "connection report dropped: the signaling connection of the session is gone"
            );
            return;
        }
        let message = ClientMessage::ConnectionReport {
            session: self.session.clone(),
            outcome,
            report,
        };
        match tokio::time::timeout(REPORT_SEND_TIMEOUT, self.client.send(message)).await {
            Ok(Ok(())) => debug!(outcome = outcome.as_str(), "connection report sent"),
            Ok(Err(error)) => debug!(%error, "connection report not sent"),
            Err(_) => debug!("connection report dropped: the signaling queue is full"),
        }
    }
}

/// The `connected` report: the path, the relay protocol, the time to connect, the RTT.
pub(super) fn connected_report(
    stats: Option<&ConnectionStats>,
    time_to_connect: Duration,
) -> ConnectionReport {
    ConnectionReport {
        time_to_connect_ms: Some(millis(time_to_connect)),
        rtt_ms: stats.and_then(|s| s.rtt).map(millis),
        ..path_report(stats)
    }
}

/// A report with only the path and the relay protocol of `stats`.
fn path_report(stats: Option<&ConnectionStats>) -> ConnectionReport {
    ConnectionReport {
        path: stats.map(|s| path_kind(s.path())),
        relay_protocol: stats
            .and_then(|s| s.local.relay_protocol)
            .map(relay_protocol),
        ..ConnectionReport::default()
    }
}

/// The `failed` report: the failure kind and how long it took to fail.
pub(super) fn failed_report(kind: FailureKind, time_to_connect: Duration) -> ConnectionReport {
    ConnectionReport {
        time_to_connect_ms: Some(millis(time_to_connect)),
        failure: kind.token(),
        ..ConnectionReport::default()
    }
}

/// The `closed` report: how long the connection was up, the bytes of the last stats snapshot,
/// and why it ended unless it was closed locally.
pub(super) fn closed_report(
    stats: Option<&ConnectionStats>,
    duration: Duration,
    failure: Option<FailureKind>,
) -> ConnectionReport {
    ConnectionReport {
        duration_ms: Some(millis(duration)),
        bytes_sent: stats.map(|s| s.bytes_sent),
        bytes_received: stats.map(|s| s.bytes_received),
        failure: failure.and_then(FailureKind::token),
        ..path_report(stats)
    }
}

/// The `closed` report of a connection that was up, armed once the desktop keeps reporting on
/// signaling. Shared by the [`Connection`] (local close, drop) and its event pump (the peer's
/// close); whoever takes it first sends the one `closed` report.
#[derive(Debug, Default)]
pub(super) struct CloseReport {
    armed: Mutex<Option<Armed>>,
}

#[derive(Debug)]
struct Armed {
    sink: ReportSink,
    /// When the connection was up.
    up_at: Instant,
    /// The latest stats snapshot (the peer driver is gone by the time the close is seen).
    last: Option<ConnectionStats>,
    /// Whether this side closed it.
    closed_locally: bool,
}

/// How often the pump refreshes the stats snapshot of an armed [`CloseReport`]: only for a
/// connection dropped without a close (the peer's `Closed` event carries the final stats, and
/// [`crate::Connection::close`] takes a snapshot first).
pub(super) const STATS_REFRESH: Duration = Duration::from_secs(5);

impl CloseReport {
    /// Send a `closed` report through `sink` when the connection, up since `up_at`, ends.
    pub(super) fn arm(&self, sink: ReportSink, up_at: Instant) {
        *self.lock() = Some(Armed {
            sink,
            up_at,
            last: None,
            closed_locally: false,
        });
    }

    /// Whether a `closed` report is still to be sent.
    pub(super) fn is_armed(&self) -> bool {
        self.lock().is_some()
    }

    /// Take a fresh stats snapshot (bounded), for the bytes of the `closed` report.
    pub(super) async fn refresh(&self, peer: &PeerConnection) {
        if !self.is_armed() {
            return;
        }
        if let Some(stats) = bounded_stats(peer).await
            && let Some(armed) = self.lock().as_mut()
        {
            armed.last = Some(stats);
        }
    }

    /// The connection's final stats, from the peer's `Closed` event.
    pub(super) fn set_final(&self, stats: ConnectionStats) {
        if let Some(armed) = self.lock().as_mut() {
            armed.last = Some(stats);
        }
    }

    /// This side is closing the connection: the report carries no failure.
    pub(super) fn closing_locally(&self) {
        if let Some(armed) = self.lock().as_mut() {
            armed.closed_locally = true;
        }
    }

    /// The connection ended with the peer layer's `reason`: build the report and disarm. The
    /// caller sends it with [`ReportSink::send`].
    pub(super) fn take(&self, reason: &str) -> Option<(ReportSink, ConnectionReport)> {
        let armed = self.lock().take()?;
        let failure = FailureKind::of_close(reason, armed.closed_locally);
        let report = closed_report(armed.last.as_ref(), armed.up_at.elapsed(), failure);
        Some((armed.sink, report))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Send the `closed` report of `close`, if armed, for an end with `reason`.
pub(super) async fn send_closed(close: &Arc<CloseReport>, reason: &str) {
    if let Some((sink, report)) = close.take(reason) {
        sink.send(ConnectionOutcome::Closed, report).await;
    }
}

/// A stats snapshot, or `None` when the driver does not answer in time (or is gone).
async fn bounded_stats(peer: &PeerConnection) -> Option<ConnectionStats> {
    match tokio::time::timeout(STATS_TIMEOUT, peer.stats()).await {
        Ok(Ok(stats)) => Some(stats),
        Ok(Err(error)) => {
            debug!(%error, "no stats for the connection report");
            None
        }
        Err(_) => {
            debug!("no stats for the connection report in time");
            None
        }
    }
}

fn path_kind(kind: CandidateKind) -> PathKind {
    match kind {
        CandidateKind::Host => PathKind::Host,
        CandidateKind::Srflx => PathKind::Srflx,
        CandidateKind::Prflx => PathKind::Prflx,
        CandidateKind::Relay => PathKind::Relay,
    }
}

fn relay_protocol(transport: TurnTransport) -> RelayProtocol {
    match transport {
        TurnTransport::Udp => RelayProtocol::Udp,
        TurnTransport::Tcp => RelayProtocol::Tcp,
        TurnTransport::Tls => RelayProtocol::Tls,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::peer::CandidateInfo;

    fn candidate(kind: CandidateKind, relay: Option<TurnTransport>) -> CandidateInfo {
        CandidateInfo {
            kind,
            address: SocketAddr::from(([192, 0, 2, 1], 4000)),
            protocol: "udp".into(),
            relay_protocol: relay,
        }
    }

    fn stats(local: CandidateInfo, remote: CandidateInfo) -> ConnectionStats {
        ConnectionStats {
            local,
            remote,
            rtt: Some(Duration::from_micros(12_600)),
            bytes_sent: 1_000,
            bytes_received: 2_000,
            messages_sent: 3,
            messages_received: 4,
            open_after_answer: None,
            sctp: Default::default(),
        }
    }

    #[test]
    fn every_failure_kind_is_a_valid_token() {
        for kind in FailureKind::ALL {
            let token = kind.token().expect("a valid token");
            assert_eq!(token.as_str(), kind.as_str());
        }
    }

    #[test]
    fn setup_errors_map_to_tokens_without_their_text() {
        let secret = "s3cret ws://10.0.0.1:3478 user:pass";
        let cases = [
            (
                PeerError::IceFailed {
                    reason: secret.into(),
                },
                "ice_failed",
            ),
            (
                PeerError::Timeout {
                    after: Duration::from_secs(15),
                    reason: secret.into(),
                },
                "timeout",
            ),
            (PeerError::SignalingLost, "signaling_lost"),
            (PeerError::PeerLeft, "peer_left"),
            (PeerError::Intercepted(secret.into()), "intercepted"),
            (PeerError::RefusedByPeer(secret.into()), "refused_by_peer"),
            (PeerError::BadSignal(secret.into()), "bad_signal"),
            (
                PeerError::Rtc(format!("DTLS failed: {secret}")),
                "dtls_failed",
            ),
            (PeerError::Rtc(format!("SCTP: {secret}")), "sctp_failed"),
            (PeerError::Rtc(secret.into()), "other"),
            (PeerError::Io(secret.into()), "other"),
            (PeerError::Closed, "other"),
        ];
        for (error, token) in cases {
            let report = failed_report(FailureKind::of_setup(&error), Duration::from_millis(7));
            let failure = report.failure.as_ref().map(ReportToken::as_str);
            assert_eq!(failure, Some(token), "{error:?}");
            assert_eq!(report.time_to_connect_ms, Some(7));
            let json = serde_json::to_string(&report).expect("serializes");
            assert!(!json.contains("s3cret"), "{json}");
        }
    }

    #[test]
    fn close_reasons_map_to_tokens() {
        let consent = PeerError::IceFailed {
            reason: "connectivity lost (ICE consent failed)".into(),
        }
        .to_string();
        let dtls = PeerError::Rtc("DTLS failed: alert".into()).to_string();
        let sctp = PeerError::Rtc("SCTP: abort".into()).to_string();
        let cases = [
            (CLOSED_LOCALLY, false, None),
            (CLOSED_BY_PEER, true, None),
            (CLOSED_BY_PEER, false, Some("closed_by_peer")),
            (consent.as_str(), false, Some("consent_lost")),
            ("ICE failed: gone", false, Some("ice_failed")),
            (dtls.as_str(), false, Some("dtls_failed")),
            (sctp.as_str(), false, Some("sctp_failed")),
            ("connection dropped", false, Some("other")),
        ];
        for (reason, local, token) in cases {
            let kind = FailureKind::of_close(reason, local);
            assert_eq!(
                kind.map(FailureKind::as_str),
                token,
                "{reason} (local: {local})"
            );
        }
    }

    #[test]
    fn a_connected_report_has_the_path_relay_protocol_and_timings() {
        let relayed = stats(
            candidate(CandidateKind::Relay, Some(TurnTransport::Tls)),
            candidate(CandidateKind::Srflx, None),
        );
        let report = connected_report(Some(&relayed), Duration::from_millis(1_234));
        assert_eq!(
            report,
            ConnectionReport {
                path: Some(PathKind::Relay),
                relay_protocol: Some(RelayProtocol::Tls),
                time_to_connect_ms: Some(1_234),
                rtt_ms: Some(12),
                ..ConnectionReport::default()
            }
        );

        let direct = stats(
            candidate(CandidateKind::Host, None),
            candidate(CandidateKind::Prflx, None),
        );
        let report = connected_report(Some(&direct), Duration::from_millis(5));
        assert_eq!(report.path, Some(PathKind::Prflx));
        assert_eq!(report.relay_protocol, None);

        // Without stats (the driver did not answer), the timing still goes out.
        let report = connected_report(None, Duration::from_millis(5));
        assert_eq!(
            report,
            ConnectionReport {
                time_to_connect_ms: Some(5),
                ..ConnectionReport::default()
            }
        );
    }

    #[test]
    fn a_closed_report_has_the_bytes_duration_and_failure() {
        let s = stats(
            candidate(CandidateKind::Host, None),
            candidate(CandidateKind::Host, None),
        );
        let report = closed_report(
            Some(&s),
            Duration::from_secs(3),
            Some(FailureKind::ConsentLost),
        );
        assert_eq!(
            report,
            ConnectionReport {
                path: Some(PathKind::Host),
                duration_ms: Some(3_000),
                bytes_sent: Some(1_000),
                bytes_received: Some(2_000),
                failure: ReportToken::new("consent_lost").ok(),
                ..ConnectionReport::default()
            }
        );
        let report = closed_report(None, Duration::from_millis(9), None);
        assert_eq!(
            report,
            ConnectionReport {
                duration_ms: Some(9),
                ..ConnectionReport::default()
            }
        );
    }
}
