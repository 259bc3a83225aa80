//! Session resumption: an accepted session outlives a member's lost connection for
//! [`super::HubConfig::resume_grace`]; the member takes it back from a new connection with the
//! token it got in `session_token` (`resume`), and the signals that came meanwhile follow.
//!
//! Only a connection that was *lost* (its socket closed without `bye`, or it went silent) is
//! waited for; one that said `bye` or `leave`, was dropped for not reading or for flooding, or
//! a server that shuts down ends the session as before. A `resume` also takes the session
//! from a connection the server still thinks alive (a phone on a new network reconnects
//! before the old connection's silence is noticed): the token, given only to the member's
//! connection, proves it is the same device.

use std::time::Instant;

use proxim_protocol::{DeviceId, ResumeToken, ServerMessage, SessionEndReason, SessionId};

use super::abuse::MAX_DESKTOP_SESSIONS;
use super::events::remember_reportable;
use super::sessions::{SessionEnd, SessionState};
use super::{ConnKey, Departure, Hub, Role, TimerKey, short};

impl Hub {
    /// `conn` is gone for `departure`: keep its place in `session` for a resume when the
    /// session is accepted and the connection was lost (not left). Returns whether it did.
    pub(super) fn keep_for_resume(
        &mut self,
        session: &SessionId,
        conn: ConnKey,
        departure: Departure,
        now: Instant,
    ) -> bool {
        // (Not a slow reader: it would have the other member's signals pile up for it.)
        let lost = matches!(departure, Departure::Closed | Departure::TimedOut);
        if !lost || self.config.resume_grace.is_zero() || self.shutting_down {
            return false;
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return false;
        };
        if s.state() != SessionState::Active {
            return false;
        }
        let member = if s.phone.conn == conn {
            &mut s.phone
        } else if s.desktop.conn == conn {
            &mut s.desktop
        } else {
            return false;
        };
        if member.token.is_none() || member.away.is_some() {
            return false;
        }
        member.away = Some((now, departure));
        let device = member.device.device_id.clone();
        self.away_devices
            .entry(device)
            .or_default()
            .push(session.clone());
        self.stats.members_away += 1;
        tracing::info!(
            session = %short(session.as_str()),
            conn = %short(member.id.as_str()),
            ?departure,
            grace_ms = self.config.resume_grace.as_millis() as u64,
            "session member lost; waiting for it to resume"
        );
        let due = now + self.config.resume_grace;
        self.arm(due, TimerKey::Resume(session.clone()));
        true
    }

    /// `device` started afresh: a new connection registered as it, or asked to pair or
    /// connect as it. Where a member of that device is away, its old connection will most
    /// likely not resume (a new process has no token): the other member hears
    /// `peer_restarted`. Only a hint — device ids are not authenticated — so the session waits
    /// out its grace as before, and the other member acts on it only if its own path to the
    /// device is silent too.
    pub(super) fn device_started_afresh(&mut self, device: &DeviceId) {
        let Some(sessions) = self.away_devices.remove(device) else {
            return;
        };
        for session in sessions {
            let Some(s) = self.sessions.get(&session) else {
                continue;
            };
            let other = if s.phone.device.device_id == *device && s.phone.away.is_some() {
                &s.desktop
            } else if s.desktop.device.device_id == *device && s.desktop.away.is_some() {
                &s.phone
            } else {
                continue;
            };
            if other.away.is_some() {
                continue;
            }
            let to = other.conn;
            tracing::info!(
                session = %short(session.as_str()),
                "an away member's device started afresh; telling the other member"
            );
            self.stats.peers_restarted += 1;
            self.send(to, ServerMessage::PeerRestarted { session });
        }
    }

    /// A member's grace is over: if it is still away, the session ends as if it had left then.
    pub(super) fn resume_grace_over(&mut self, session: &SessionId, now: Instant) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        // The index of away devices forgets the session (its member resumed or is late now).
        for device in [&s.phone.device.device_id, &s.desktop.device.device_id] {
            if let Some(list) = self.away_devices.get_mut(device) {
                list.retain(|x| x != session);
                if list.is_empty() {
                    self.away_devices.remove(device);
                }
            }
        }
        let grace = self.config.resume_grace;
        let late = [&s.phone, &s.desktop].into_iter().find_map(|m| {
            m.away
                .filter(|(since, _)| *since + grace <= now)
                .map(|(_, departure)| (m.conn, departure))
        });
        if let Some((conn, departure)) = late {
            tracing::info!(
                session = %short(session.as_str()),
                "session member did not resume in time"
            );
            self.end_session(session, SessionEnd::Left(conn, departure), now);
        }
    }

    /// `resume`: `conn` takes the member's place in `session` whose token it holds.
    pub(super) fn resume(
        &mut self,
        conn: ConnKey,
        session: SessionId,
        token: &ResumeToken,
        now: Instant,
    ) {
        let over = |hub: &mut Hub, why: &str| {
            hub.stats.resumes_refused += 1;
            tracing::info!(
                conn = %hub.short_id(conn), session = %short(session.as_str()),
                "resume refused: {why}"
            );
            hub.send(
                conn,
                ServerMessage::SessionEnded {
                    session: session.clone(),
                    reason: SessionEndReason::Over,
                },
            );
        };
        let full = self
            .conns
            .get(&conn)
            .is_none_or(|c| c.sessions.len() >= MAX_DESKTOP_SESSIONS);
        let Some(s) = self.sessions.get_mut(&session) else {
            return over(self, "no such session (it ended)");
        };
        if s.state() != SessionState::Active {
            return over(self, "the session is not accepted");
        }
        let is_phone = s.phone.token.as_ref().is_some_and(|t| same(t, token));
        let is_desktop = !is_phone && s.desktop.token.as_ref().is_some_and(|t| same(t, token));
        if !is_phone && !is_desktop {
            tracing::warn!(
                conn = %self.short_id(conn), session = %short(session.as_str()),
                "resume with a token that is not the member's"
            );
            return over(self, "wrong token");
        }
        let member = if is_phone {
            &mut s.phone
        } else {
            &mut s.desktop
        };
        if member.conn == conn {
            // Already this connection's: answer again, nothing to move.
            self.send(conn, ServerMessage::Resumed { session });
            return;
        }
        if full {
            return over(self, "too many sessions on this connection");
        }
        let Some(new_id) = self.conns.get(&conn).map(|c| c.id.clone()) else {
            return;
        };
        let old = member.conn;
        let away_for = member
            .away
            .map(|(since, _)| now.saturating_duration_since(since));
        member.conn = conn;
        member.id = new_id;
        member.away = None;
        let queued: Vec<_> = member.queued.drain(..).collect();
        // The old connection, if the server still has it, is no longer in the session.
        if let Some(c) = self.conns.get_mut(&old) {
            c.sessions.remove(&session);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sessions.insert(session.clone());
            if is_phone && matches!(c.role, Role::Unassigned) {
                c.role = Role::Phone;
            }
            remember_reportable(
                &mut c.reportable,
                &session,
                if is_phone { "phone" } else { "desktop" },
            );
        }
        self.stats.sessions_resumed += 1;
        tracing::info!(
            conn = %self.short_id(conn),
            session = %short(session.as_str()),
            member = if is_phone { "phone" } else { "desktop" },
            away_ms = away_for.map(|d| d.as_millis() as u64),
            queued = queued.len(),
            "session resumed on a new connection"
        );
        self.send(
            conn,
            ServerMessage::Resumed {
                session: session.clone(),
            },
        );
        for signal in queued {
            self.send(
                conn,
                ServerMessage::Signal {
                    session: session.clone(),
                    signal,
                },
            );
        }
    }
}

/// Token equality in time independent of where they differ.
fn same(a: &ResumeToken, b: &ResumeToken) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
