//! Monitoring: the counters and gauges of `GET /api/stats` ([`Stats`]), the errors sent by code
//! and the pair latency histogram ([`PairLatency`]) behind `GET /metrics`, and the paged
//! session list of `GET /api/sessions` ([`SessionPage`]), computed from the hub's state.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

use proxim_protocol::{ErrorCode, SessionId};
use serde::Serialize;

use super::sessions::SessionState;
use super::{Hub, millis, short};

/// Counters and gauges for monitoring (`GET /api/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Desktops registered now.
    pub desktops: u64,
    /// Sessions waiting for the desktop's answer now.
    pub sessions_pending: u64,
    /// Accepted sessions now.
    pub sessions_active: u64,
    /// Pair requests received.
    pub pair_requests: u64,
    /// Pairings accepted.
    pub pairs_accepted: u64,
    /// Pairings rejected.
    pub pairs_rejected: u64,
    /// Prompts that expired.
    pub pairs_timed_out: u64,
    /// Pair requests for a code no desktop holds.
    pub unknown_codes: u64,
    /// Pair requests for a code that expired (answered `code_expired`).
    pub expired_codes: u64,
    /// Pair requests for a code its desktop renewed (answered `code_used`).
    pub used_codes: u64,
    /// Codes retired since start, because they expired or their desktop renewed them.
    pub codes_retired: u64,
    /// Connect requests (a phone reaching a desktop by device id) received.
    pub connect_requests: u64,
    /// Connect requests for a desktop that is not connected (answered `desktop_offline`).
    pub desktops_offline: u64,
    /// Signals relayed between session members.
    pub signals_relayed: u64,
    /// Session members whose connection was lost, kept for a `resume`.
    pub members_away: u64,
    /// Sessions a member took back with `resume` on a new connection.
    pub sessions_resumed: u64,
    /// `resume`s refused (no such session any more, or not the member's token).
    pub resumes_refused: u64,
    /// `refresh_ice_servers` answered (fresh TURN credentials for a long-lived connection).
    pub ice_refreshes: u64,
    /// `peer_restarted` hints sent: an away member's device connected afresh.
    pub peers_restarted: u64,
    /// Signals for an away member dropped because its queue was full.
    pub signals_dropped_away: u64,
    /// `error` messages sent.
    pub errors_sent: u64,
    /// Frames that did not decode (bad JSON, unknown type, too large, binary).
    pub frames_malformed: u64,
    /// Connections dropped for silence.
    pub stale_dropped: u64,
    /// Connections dropped because their outbound queue was full.
    pub slow_readers_dropped: u64,
    /// STUN Binding requests answered by the embedded STUN responder.
    pub stun_requests: u64,
    /// Datagrams the embedded STUN responder dropped as not well-formed STUN.
    pub stun_malformed: u64,
    /// Client sockets open now (WebSockets and HTTP requests in progress).
    pub sockets_open: u64,
    /// The cap on open client sockets (`--max-connections`, or the open-file limit minus 64).
    pub sockets_max: u64,
    /// Connections answered 503 because the server was at its socket cap.
    pub connections_refused_full: u64,
    /// Frames dropped (and answered `rate_limited`) because their connection was over its
    /// message budget.
    pub frames_rate_limited: u64,
    /// Connections disconnected for flooding past the message budget.
    pub rate_limit_disconnects: u64,
    /// Distinct client IPs with connections open now.
    pub client_ips: u64,
    /// WebSocket upgrades refused (HTTP 429) because their client IP had too many connections.
    pub connections_refused_per_ip: u64,
    /// Pair requests refused (`too_many_attempts`) because their code had too many attempts.
    pub pair_attempts_refused: u64,
    /// `error` messages sent, by code name (`rate_limited`, …); their sum is
    /// [`Stats::errors_sent`]. Exported by `/metrics`, not by `/api/stats`.
    #[serde(skip)]
    pub errors_by_code: BTreeMap<String, u64>,
    /// How long desktops took to answer pair prompts. Exported by `/metrics`, not by
    /// `/api/stats`.
    #[serde(skip)]
    pub pair_latency: PairLatency,
    /// Clients' `connection_report`s.
    pub reports: ReportStats,
}

/// Clients' `connection_report`s, counted (whether or not events are on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReportStats {
    /// Reports of a connection up.
    pub connected: u64,
    /// Reports of a connection that could not be set up.
    pub failed: u64,
    /// Reports of a connection that closed.
    pub closed: u64,
    /// `connected` reports by path: host, srflx, prflx, relay.
    pub connected_by_path: [u64; 4],
    /// Reports past a session's budget, dropped.
    pub dropped: u64,
}

impl ReportStats {
    /// The path names of [`ReportStats::connected_by_path`], in order.
    pub const PATHS: [&'static str; 4] = ["host", "srflx", "prflx", "relay"];

    pub(crate) fn count(
        &mut self,
        outcome: proxim_protocol::ConnectionOutcome,
        path: Option<proxim_protocol::PathKind>,
    ) {
        use proxim_protocol::{ConnectionOutcome, PathKind};
        match outcome {
            ConnectionOutcome::Connected => {
                self.connected += 1;
                let slot = match path {
                    Some(PathKind::Host) => Some(0),
                    Some(PathKind::Srflx) => Some(1),
                    Some(PathKind::Prflx) => Some(2),
                    Some(PathKind::Relay) => Some(3),
                    None => None,
                };
                if let Some(n) = slot.and_then(|i| self.connected_by_path.get_mut(i)) {
                    *n += 1;
                }
            }
            ConnectionOutcome::Failed => self.failed += 1,
            ConnectionOutcome::Closed => self.closed += 1,
        }
    }
}

/// A histogram of pair latencies: from a `pair_request` (or `connect_request`) opening a
/// session to the `pair_result` the phone gets when the desktop answers or the prompt expires.
/// Plain counts, so the hub stays sans-IO; `/metrics` exports it as a Prometheus histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairLatency {
    /// Observations per bucket of [`PairLatency::BOUNDS_MS`] (not cumulative), and one more
    /// for those above the last bound.
    buckets: [u64; PairLatency::BOUNDS_MS.len() + 1],
    count: u64,
    sum_micros: u64,
}

impl PairLatency {
    /// The buckets' upper bounds in milliseconds: 1 ms to 60 s.
    pub const BOUNDS_MS: [u64; 15] = [
        1, 3, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
    ];

    /// Count one pairing that took `latency`.
    pub(crate) fn observe(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = Self::BOUNDS_MS
            .iter()
            .position(|&bound_ms| micros <= bound_ms.saturating_mul(1_000))
            .unwrap_or(Self::BOUNDS_MS.len());
        if let Some(slot) = self.buckets.get_mut(bucket) {
            *slot += 1;
        }
        self.count += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    /// Pairings counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the latencies, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// `(upper bound in seconds, pairings in that bucket)` for each bound, then
    /// `(+Inf, pairings above the last bound)`; not cumulative (the encoder sums them).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        Self::BOUNDS_MS
            .iter()
            .map(|&ms| ms as f64 / 1e3)
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

/// One page of `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionPage {
    /// Sessions in id order.
    pub sessions: Vec<SessionInfo>,
    /// The cursor for the next page (`?after=`); `None` on the last page.
    pub next: Option<String>,
}

/// One session, as shown by `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The first 8 hex digits of the session id.
    pub session: String,
    /// `pending` or `active`.
    pub state: &'static str,
    /// Time since the pair request, in milliseconds.
    pub age_ms: u64,
    /// The desktop's name; only with `--expose-device-names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desktop: Option<String>,
    /// The phone's name; only with `--expose-device-names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl Hub {
    /// Current counters and gauges.
    pub(crate) fn stats(&self) -> Stats {
        let count = |wanted: fn(SessionState) -> bool| {
            self.sessions.values().filter(|s| wanted(s.state())).count() as u64
        };
        Stats {
            connections_open: self.conns.len() as u64,
            desktops: self.codes.live() as u64,
            sessions_pending: count(|s| matches!(s, SessionState::Pending { .. })),
            sessions_active: count(|s| s == SessionState::Active),
            codes_retired: self.codes.retired_total(),
            client_ips: self.per_ip.distinct() as u64,
            ..self.stats.clone()
        }
    }

    /// Up to `limit` sessions whose id sorts after `after`, in id order, with shortened ids
    /// and, when `names`, the devices' names. Walks only the page (the sessions are kept in id
    /// order), so a page costs the same with ten sessions or a hundred thousand.
    pub(crate) fn sessions_page(
        &self,
        after: Option<&SessionId>,
        limit: usize,
        names: bool,
        now: Instant,
    ) -> SessionPage {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = self.sessions.range((from, Bound::Unbounded));
        let mut last = None;
        let sessions: Vec<SessionInfo> = page
            .by_ref()
            .take(limit)
            .map(|(id, s)| {
                last = Some(id);
                SessionInfo {
                    session: short(id.as_str()).to_owned(),
                    state: s.state().name(),
                    age_ms: millis(now.saturating_duration_since(s.created)),
                    desktop: names.then(|| s.desktop.device.device_name.to_string()),
                    phone: names.then(|| s.phone.device.device_name.to_string()),
                }
            })
            .collect();
        let next = page.next().and(last).map(|id| id.as_str().to_owned());
        SessionPage { sessions, next }
    }

    /// Count an `error` message sent with `code`.
    pub(crate) fn count_error(&mut self, code: ErrorCode) {
        self.stats.errors_sent += 1;
        let name = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        *self.stats.errors_by_code.entry(name).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_latency_counts_each_pairing_in_its_bucket() {
        let mut latency = PairLatency::default();
        for ms in [0, 1, 2, 40, 60_000, 61_000] {
            latency.observe(Duration::from_millis(ms));
        }
        assert_eq!(latency.count(), 6);
        assert!((latency.sum_seconds() - 121.043).abs() < 1e-9);
        let buckets = latency.buckets();
        assert_eq!(buckets.len(), PairLatency::BOUNDS_MS.len() + 1);
        let count_at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(count_at(0.001), Some(2));
        assert_eq!(count_at(0.003), Some(1));
        assert_eq!(count_at(0.05), Some(1));
        assert_eq!(count_at(60.0), Some(1));
        assert_eq!(count_at(f64::INFINITY), Some(1));
    }
}
