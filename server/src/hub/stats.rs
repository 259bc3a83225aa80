//! Monitoring: the counters and gauges of `GET /api/stats` ([`Stats`]) and the session list of
//! `GET /api/sessions` ([`SessionInfo`]), computed from the hub's state.

use std::time::Instant;

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
    /// The desktop's name.
    pub desktop: String,
    /// The phone's name.
    pub phone: String,
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

    /// The sessions, oldest first, with shortened ids.
    pub(crate) fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let mut list: Vec<(Instant, SessionInfo)> = self
            .sessions
            .iter()
            .map(|(id, s)| {
                (
                    s.created,
                    SessionInfo {
                        session: short(id.as_str()).to_owned(),
                        state: s.state().name(),
                        age_ms: millis(now.saturating_duration_since(s.created)),
                        desktop: s.desktop.device.device_name.to_string(),
                        phone: s.phone.device.device_name.to_string(),
                    },
                )
            })
            .collect();
        list.sort_by_key(|(created, _)| *created);
        list.into_iter().map(|(_, info)| info).collect()
    }
}
