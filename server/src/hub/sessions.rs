//! Pairing sessions: their records, the one [`Session::transition`] every state change goes
//! through (it logs `old -> new (why)`), and the hub's handling of the messages that open,
//! answer, relay through and end them.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use proxim_protocol::{
    AuthPayload, ConnectionId, DeviceId, ErrorCode, PairOutcome, PeerDevice, ResumeToken,
    RoutingCode, ServerMessage, SessionEndReason, SessionId, Signal,
};

use super::abuse::{MAX_DESKTOP_SESSIONS, MAX_SESSIONS_PER_CONNECTION};
use super::events::remember_reportable;
use super::{ConnKey, Departure, Hub, Role, TimerKey, millis, random_hex128, short};
use crate::events::Event;

/// One pairing session between a phone and a desktop.
#[derive(Debug)]
pub(super) struct Session {
    id: SessionId,
    pub(super) desktop: Member,
    pub(super) phone: Member,
    state: SessionState,
    /// When the phone asked.
    pub(super) created: Instant,
    /// Signals relayed between its members.
    signals: u64,
}

/// One of the two connections in a session.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) conn: ConnKey,
    /// Its connection id, for logs.
    pub(super) id: ConnectionId,
    /// The device it speaks for.
    pub(super) device: PeerDevice,
    /// Its secret for `resume`, once the session is accepted.
    pub(super) token: Option<ResumeToken>,
    /// Its connection was lost at this instant, for this reason: the session waits
    /// [`super::HubConfig::resume_grace`] for it to `resume` (`conn` is the lost one).
    pub(super) away: Option<(Instant, Departure)>,
    /// Signals for it that came while it was away (at most [`MAX_QUEUED_SIGNALS`]).
    pub(super) queued: VecDeque<Signal>,
}

impl Member {
    fn new(conn: ConnKey, id: ConnectionId, device: PeerDevice) -> Member {
        Member {
            conn,
            id,
            device,
            token: None,
            away: None,
            queued: VecDeque::new(),
        }
    }
}

/// Signals kept for a member that is away; beyond this the oldest are dropped (an ICE
/// restart's signals supersede older ones).
pub(super) const MAX_QUEUED_SIGNALS: usize = 64;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionState {
    /// Being opened; never kept in this state.
    New,
    /// The desktop was prompted and has until `deadline` to answer.
    Pending { deadline: Instant },
    /// The desktop accepted: signals flow.
    Active,
    /// Over; the hub forgets it.
    Ended,
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionEnd {
    /// The desktop said no; its `auth` goes to the phone.
    Rejected(Option<AuthPayload>),
    /// The desktop did not answer in time.
    PromptExpired,
    /// This member left the hub, for this reason.
    Left(ConnKey, Departure),
}

/// How a phone names the desktop it wants: for logs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via<'a> {
    /// A `pair_request` with this code.
    Code(&'a RoutingCode),
    /// A `connect_request` naming the desktop's device id (not logged: it addresses the
    /// desktop like a code does).
    Device(&'a DeviceId),
}

impl Session {
    /// A session between `desktop` and `phone`, pending until `deadline`.
    fn open(
        id: SessionId,
        desktop: Member,
        phone: Member,
        deadline: Instant,
        via: Via<'_>,
        now: Instant,
    ) -> Self {
        let mut session = Session {
            id,
            desktop,
            phone,
            state: SessionState::New,
            created: now,
            signals: 0,
        };
        session.transition(SessionState::Pending { deadline }, via);
        session
    }

    /// The one place a session's state changes: logs `old -> new (why)`. Only the end is
    /// logged at info (one short line per pairing: what operators read at the default level);
    /// the steps before it, with both members, at debug.
    fn transition(&mut self, new: SessionState, why: impl fmt::Display) {
        let old = self.state.name();
        if new == SessionState::Ended {
            tracing::info!(session = %short(self.id.as_str()), "session: {old} -> ended ({why})");
        } else {
            tracing::debug!(
                session = %short(self.id.as_str()),
                phone = %short(self.phone.id.as_str()),
                desktop = %short(self.desktop.id.as_str()),
                "session: {old} -> {} ({why})",
                new.name()
            );
        }
        self.state = new;
    }

    /// Where the session is.
    pub(super) fn state(&self) -> SessionState {
        self.state
    }

    /// The other member of the session than `conn`; `None` when `conn` is not a member.
    pub(super) fn other(&self, conn: ConnKey) -> Option<ConnKey> {
        if conn == self.desktop.conn {
            Some(self.phone.conn)
        } else if conn == self.phone.conn {
            Some(self.desktop.conn)
        } else {
            None
        }
    }
}

impl SessionEnd {
    /// The `reason` of a `session_ended` event.
    fn event_name(&self, s: &Session) -> &'static str {
        match self {
            SessionEnd::Rejected(_) => "rejected",
            SessionEnd::PromptExpired => "prompt_expired",
            SessionEnd::Left(_, Departure::Shutdown) => "shutdown",
            SessionEnd::Left(leaver, _) if matches!(s.state, SessionState::Pending { .. }) => {
                if *leaver == s.phone.conn {
                    "cancelled"
                } else {
                    "desktop_gone"
                }
            }
            SessionEnd::Left(_, Departure::Bye) => "member_left",
            SessionEnd::Left(_, Departure::TimedOut | Departure::NoHello) => "member_timed_out",
            SessionEnd::Left(_, Departure::SlowReader | Departure::Flooding) => "member_dropped",
            SessionEnd::Left(_, _) => "member_disconnected",
        }
    }
}

impl SessionState {
    /// For logs and `GET /api/sessions`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            SessionState::New => "none",
            SessionState::Pending { .. } => "pending",
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }
}

impl Via<'_> {
    /// `code` or `device`, for events.
    pub(super) fn event_name(&self) -> &'static str {
        match self {
            Via::Code(_) => "code",
            Via::Device(_) => "device",
        }
    }

    /// What the phone sends, for refusals.
    pub(super) fn requests(&self) -> &'static str {
        match self {
            Via::Code(_) => "pair requests",
            Via::Device(_) => "connect requests",
        }
    }
}

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Code(code) => write!(f, "pair request, code {}", code.redacted()),
            Via::Device(_) => f.write_str("connect request"),
        }
    }
}

impl Hub {
    /// Open a pending session between the phone `conn` and the registered desktop `desktop`:
    /// charge the desktop's attempt window, prompt it, tell the phone to wait.
    pub(super) fn open_session(
        &mut self,
        conn: ConnKey,
        desktop: ConnKey,
        phone_device: PeerDevice,
        auth: Option<AuthPayload>,
        via: Via<'_>,
        now: Instant,
    ) {
        let Some(desktop_member) = self.conns.get(&desktop).and_then(|d| match &d.role {
            Role::Desktop { device, .. } => {
                Some(Member::new(desktop, d.id.clone(), device.clone()))
            }
            _ => None,
        }) else {
            return self.send_error(conn, ErrorCode::Internal, "the desktop is gone");
        };
        if let Err(exhausted) = self.charge_pair_attempt(desktop, now) {
            return self.refuse_pair_attempt(conn, desktop, via, exhausted);
        }
        let crowded = self.conns.get(&desktop).is_some_and(|d| {
            let pending = d
                .sessions
                .iter()
                .filter(|s| {
                    matches!(
                        self.sessions.get(*s).map(Session::state),
                        Some(SessionState::Pending { .. })
                    )
                })
                .count();
            pending >= MAX_SESSIONS_PER_CONNECTION || d.sessions.len() >= MAX_DESKTOP_SESSIONS
        });
        if crowded {
            return self.send_error(
                conn,
                ErrorCode::Overloaded,
                "this desktop has too many pairing requests; try again later",
            );
        }
        let Ok(session) = SessionId::new(random_hex128(&mut self.rng)) else {
            return self.send_error(conn, ErrorCode::Internal, "could not create a session id");
        };
        let Some(phone_member) = self.conns.get_mut(&conn).map(|c| {
            c.role = Role::Phone;
            Member::new(conn, c.id.clone(), phone_device.clone())
        }) else {
            return;
        };
        let deadline = now + self.config.prompt_timeout;
        let names = self.config.event_device_names;
        self.event(|_| Event::PairRequested {
            session: session.clone(),
            via: via.event_name(),
            phone: phone_member.device.device_id.clone(),
            desktop: desktop_member.device.device_id.clone(),
            phone_name: names.then(|| phone_member.device.device_name.clone()),
        });
        let opened = Session::open(
            session.clone(),
            desktop_member,
            phone_member,
            deadline,
            via,
            now,
        );
        self.sessions.insert(session.clone(), opened);
        for member in [conn, desktop] {
            if let Some(m) = self.conns.get_mut(&member) {
                m.sessions.insert(session.clone());
            }
        }
        self.arm(deadline, TimerKey::Prompt(session.clone()));
        let expires_in_ms = millis(self.config.prompt_timeout);
        self.send(
            desktop,
            ServerMessage::PairPrompt {
                session: session.clone(),
                peer: phone_device,
                expires_in_ms,
                auth,
            },
        );
        self.send(
            conn,
            ServerMessage::PairPending {
                session,
                expires_in_ms,
            },
        );
    }

    /// `pair_response`: the desktop accepts or rejects a prompt.
    pub(super) fn pair_response(
        &mut self,
        conn: ConnKey,
        session: SessionId,
        accept: bool,
        auth: Option<AuthPayload>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        if s.desktop.conn != conn {
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "only the session's desktop answers its prompt",
            );
        }
        if s.state == SessionState::Active {
            return self.send_error(
                conn,
                ErrorCode::InvalidState,
                "the session was already accepted",
            );
        }
        let waited = now.saturating_duration_since(s.created);
        self.stats.pair_latency.observe(waited);
        let latency_ms = millis(waited);
        if !accept {
            self.stats.pairs_rejected += 1;
            self.event(|_| Event::PairRejected {
                session: session.clone(),
                latency_ms,
            });
            return self.end_session(&session, SessionEnd::Rejected(auth), now);
        }
        s.transition(SessionState::Active, "accepted");
        let tokens = [random_hex128(&mut self.rng), random_hex128(&mut self.rng)]
            .map(|t| ResumeToken::new(t).ok());
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let [phone_token, desktop_token] = tokens;
        s.phone.token = phone_token;
        s.desktop.token = desktop_token;
        let (phone, desktop) = (s.phone.clone(), s.desktop.clone());
        self.stats.pairs_accepted += 1;
        for (member, role) in [(phone.conn, "phone"), (desktop.conn, "desktop")] {
            if let Some(m) = self.conns.get_mut(&member) {
                remember_reportable(&mut m.reportable, &session, role);
            }
        }
        self.event(|_| Event::PairAccepted {
            session: session.clone(),
            latency_ms,
        });
        let accepted = |peer, auth| ServerMessage::PairResult {
            session: Some(session.clone()),
            outcome: PairOutcome::Accepted,
            peer: Some(peer),
            auth,
        };
        let (to_phone, to_desktop) = (accepted(desktop.device, auth), accepted(phone.device, None));
        self.send(phone.conn, to_phone);
        self.send(desktop.conn, to_desktop);
        for (conn, token) in [(phone.conn, phone.token), (desktop.conn, desktop.token)] {
            if let Some(token) = token {
                let session = session.clone();
                self.send(conn, ServerMessage::SessionToken { session, token });
            }
        }
    }

    /// Count the time `session` waited for its prompt's answer (the pair latency histogram).
    pub(super) fn observe_pair_latency(&mut self, session: &SessionId, now: Instant) {
        if let Some(s) = self.sessions.get(session) {
            let waited = now.saturating_duration_since(s.created);
            self.stats.pair_latency.observe(waited);
        }
    }

    /// `signal`: relay to the other member of an accepted session.
    pub(super) fn signal(&mut self, conn: ConnKey, session: SessionId, signal: Signal) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        let Some(other) = s.other(conn) else {
            tracing::warn!(
                conn = %self.short_id(conn), session = %short(session.as_str()),
                "signal from a connection outside the session refused"
            );
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "this connection is not a member of that session",
            );
        };
        if s.state != SessionState::Active {
            return self.send_error(
                conn,
                ErrorCode::InvalidState,
                "signals flow only after the desktop accepted",
            );
        }
        s.signals += 1;
        self.stats.signals_relayed += 1;
        let to = if other == s.phone.conn {
            &mut s.phone
        } else {
            &mut s.desktop
        };
        if to.away.is_some() {
            if to.queued.len() >= MAX_QUEUED_SIGNALS {
                to.queued.pop_front();
                self.stats.signals_dropped_away += 1;
            }
            to.queued.push_back(signal);
            return;
        }
        self.send(other, ServerMessage::Signal { session, signal });
    }

    /// `leave`: a member ends the session.
    pub(super) fn leave(&mut self, conn: ConnKey, session: SessionId, now: Instant) {
        let Some(s) = self.sessions.get(&session) else {
            return self.send_error(conn, ErrorCode::UnknownSession, "no such session");
        };
        if s.other(conn).is_none() {
            return self.send_error(
                conn,
                ErrorCode::NotSessionMember,
                "this connection is not a member of that session",
            );
        }
        self.end_session(&session, SessionEnd::Left(conn, Departure::Bye), now);
    }

    /// End a session and tell the members that need telling.
    pub(super) fn end_session(&mut self, session: &SessionId, end: SessionEnd, now: Instant) {
        let Some(mut s) = self.sessions.remove(session) else {
            return;
        };
        if self.config.events {
            let event = Event::SessionEnded {
                session: session.clone(),
                reason: end.event_name(&s),
                accepted: s.state == SessionState::Active,
                duration_ms: millis(now.saturating_duration_since(s.created)),
                signals: s.signals,
            };
            if matches!(end, SessionEnd::PromptExpired) {
                self.events.push_back(Event::PairTimedOut {
                    session: session.clone(),
                });
            }
            self.events.push_back(event);
        }
        for member in [s.desktop.conn, s.phone.conn] {
            if let Some(m) = self.conns.get_mut(&member) {
                m.sessions.remove(session);
            }
        }
        let pending = matches!(s.state, SessionState::Pending { .. });
        // A member that is away has no connection to tell.
        let away = |conn: ConnKey| {
            (s.phone.conn == conn && s.phone.away.is_some())
                || (s.desktop.conn == conn && s.desktop.away.is_some())
        };
        let pair_result = |outcome| ServerMessage::PairResult {
            session: Some(session.clone()),
            outcome,
            peer: None,
            auth: None,
        };
        let reason: &str = match end {
            SessionEnd::Rejected(auth) => {
                self.send(
                    s.phone.conn,
                    ServerMessage::PairResult {
                        session: Some(session.clone()),
                        outcome: PairOutcome::Rejected,
                        peer: None,
                        auth,
                    },
                );
                self.send(s.desktop.conn, pair_result(PairOutcome::Rejected));
                "rejected"
            }
            SessionEnd::PromptExpired => {
                self.stats.pairs_timed_out += 1;
                self.send(s.phone.conn, pair_result(PairOutcome::TimedOut));
                self.send(s.desktop.conn, pair_result(PairOutcome::TimedOut));
                "prompt expired"
            }
            SessionEnd::Left(_, Departure::Shutdown) => "server shutting down",
            SessionEnd::Left(leaver, departure) => {
                let other = if leaver == s.desktop.conn {
                    s.phone.conn
                } else {
                    s.desktop.conn
                };
                if pending {
                    if leaver == s.phone.conn {
                        self.send(other, pair_result(PairOutcome::Cancelled));
                    } else {
                        self.send(other, pair_result(PairOutcome::DesktopGone));
                    }
                } else if !away(other) {
                    let reason = match departure {
                        Departure::Bye => SessionEndReason::PeerLeft,
                        Departure::TimedOut => SessionEndReason::PeerTimedOut,
                        _ => SessionEndReason::PeerDisconnected,
                    };
                    self.send(
                        other,
                        ServerMessage::SessionEnded {
                            session: session.clone(),
                            reason,
                        },
                    );
                }
                match departure {
                    Departure::Bye => "member left",
                    Departure::TimedOut => "member timed out",
                    Departure::SlowReader => "member dropped as slow reader",
                    Departure::Flooding => "member dropped for flooding",
                    _ => "member disconnected",
                }
            }
        };
        s.transition(SessionState::Ended, reason);
    }
}
