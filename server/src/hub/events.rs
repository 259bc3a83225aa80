//! Events the hub reports ([`Event`]), and clients' `connection_report`s.
//!
//! The hub builds events only when the server has an event sink ([`HubConfig::events`]); the
//! driver drains them with [`Hub::poll_event`] after each input. Reports are checked and
//! counted whether or not events are on (`/metrics` shows them by outcome and path).

use std::collections::VecDeque;
use std::time::Instant;

use proxim_protocol::{ConnectionOutcome, ConnectionReport, ErrorCode, SessionId};

use super::{ConnKey, Departure, Hub, Role, millis};
use crate::events::{ClientReport, Event};

/// Reports one member may send about one session: `connected` or `failed`, then `closed`,
/// with room for a retry. More are dropped (counted).
pub(super) const REPORTS_PER_SESSION: u8 = 4;

/// Accepted sessions a connection may still report on, newest last: the live ones and the
/// most recent ended ones (a desktop reports `closed` after the session ended on the server).
pub(super) const REPORTABLE_SESSIONS: usize = 16;

/// A session a connection may report on.
#[derive(Debug, Clone)]
pub(super) struct Reportable {
    pub(super) session: SessionId,
    /// `phone` or `desktop`: the connection's role in it.
    pub(super) role: &'static str,
    /// Reports still allowed.
    pub(super) left: u8,
    /// Whether its `closed` report came.
    pub(super) closed: bool,
}

/// Remember that `session` was accepted, for one of its members' reports.
pub(super) fn remember_reportable(
    list: &mut VecDeque<Reportable>,
    session: &SessionId,
    role: &'static str,
) {
    if list.len() >= REPORTABLE_SESSIONS {
        // Forget first a session whose connection was reported closed (or whose budget is
        // spent): a desktop may report an old, long connection's close hours later.
        let done = list.iter().position(|r| r.closed || r.left == 0);
        match done {
            Some(i) => {
                list.remove(i);
            }
            None => {
                list.pop_front();
            }
        }
    }
    list.push_back(Reportable {
        session: session.clone(),
        role,
        left: REPORTS_PER_SESSION,
        closed: false,
    });
}

impl Departure {
    /// The `reason` of a `client_disconnected` event.
    pub(super) fn event_name(self) -> &'static str {
        match self {
            Departure::Bye => "bye",
            Departure::Closed | Departure::ClientClosed => "closed",
            Departure::TimedOut => "timed_out",
            Departure::NoHello => "no_hello",
            Departure::SlowReader => "slow_reader",
            Departure::Refused => "refused",
            Departure::Flooding => "flooding",
            Departure::Shutdown => "shutdown",
        }
    }
}

impl Role {
    /// The `role` of a `client_disconnected` event.
    pub(super) fn event_name(&self) -> &'static str {
        match self {
            Role::Unassigned => "none",
            Role::Desktop { .. } => "desktop",
            Role::Phone => "phone",
        }
    }
}

impl Hub {
    /// Record an event, built only when the server has an event sink.
    pub(super) fn event(&mut self, build: impl FnOnce(&Hub) -> Event) {
        if self.config.events {
            let event = build(self);
            self.events.push_back(event);
        }
    }

    /// The next event for the sinks.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A `limit_hit` event for `limit` on `conn`.
    pub(super) fn limit_event(&mut self, limit: &'static str, conn: ConnKey) {
        self.event(|hub| Event::LimitHit {
            limit,
            conn: hub.conns.get(&conn).map(|c| c.id.clone()),
            ip: hub.conns.get(&conn).map(|c| c.remote.ip()),
            suppressed: 0,
        });
    }

    /// `connection_report`: how a member's direct connection of an accepted session went.
    pub(super) fn connection_report(
        &mut self,
        conn: ConnKey,
        session: SessionId,
        outcome: ConnectionOutcome,
        report: ConnectionReport,
        _now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(entry) = c.reportable.iter_mut().find(|r| r.session == session) else {
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "reports are taken for the accepted sessions of this connection only",
            );
        };
        if entry.left == 0 {
            self.stats.reports.dropped += 1;
            tracing::debug!(conn = %self.short_id(conn), "connection report over the budget dropped");
            self.limit_event("connection_reports", conn);
            return;
        }
        entry.left -= 1;
        entry.closed |= outcome == ConnectionOutcome::Closed;
        let reporter = entry.role;
        let conn_id = c.id.clone();
        self.stats.reports.count(outcome, report.path);
        tracing::debug!(
            conn = %self.short_id(conn), outcome = outcome.as_str(),
            path = report.path.map_or("-", |p| p.as_str()),
            failure = report.failure.as_ref().map_or("-", |f| f.as_str()),
            "connection report"
        );
        let record = ClientReport {
            session,
            reporter,
            conn: conn_id,
            report,
        };
        self.event(|_| match outcome {
            ConnectionOutcome::Connected => Event::ConnectionEstablished(record),
            ConnectionOutcome::Failed => Event::ConnectionFailed(record),
            ConnectionOutcome::Closed => Event::ConnectionClosed(record),
        });
    }

    /// The `client_disconnected` event of a departing connection.
    pub(super) fn departure_event(
        &mut self,
        conn: &super::Conn,
        departure: Departure,
        now: Instant,
    ) {
        if !self.config.events {
            return;
        }
        let event = Event::ClientDisconnected {
            conn: conn.id.clone(),
            role: conn.role.event_name(),
            reason: departure.event_name(),
            duration_ms: millis(now.saturating_duration_since(conn.opened)),
        };
        self.event(|_| event);
        match departure {
            Departure::SlowReader => self.event(|_| Event::LimitHit {
                limit: "slow_reader",
                conn: Some(conn.id.clone()),
                ip: Some(conn.remote.ip()),
                suppressed: 0,
            }),
            Departure::Flooding => self.event(|_| Event::LimitHit {
                limit: "flooding",
                conn: Some(conn.id.clone()),
                ip: Some(conn.remote.ip()),
                suppressed: 0,
            }),
            _ => {}
        }
    }
}
