//! Abuse charging: every frame against its connection's message budget, every pair or connect
//! request against its desktop's attempt window, sessions per connection, connections per
//! client IP, and the refusals that go with them.
//!
//! The budgets themselves are plain values in [`crate::limits`]; this is where the hub charges
//! them, with the same `now` as everything else, and answers whoever is over.

use std::net::IpAddr;
use std::time::Instant;

use proxim_protocol::ErrorCode;

use super::sessions::Via;
use super::{ConnKey, Departure, Hub, Role};
use crate::limits::AttemptsExhausted;

/// How many sessions one connection may take part in at once.
///
/// The other abuse limits are configured ([`super::HubConfig`]): a message budget per
/// connection ([`Hub::charge_frame`]), pair attempts per desktop ([`Hub::charge_pair_attempt`])
/// and connections per client IP ([`Hub::reserve_ip`]).
pub(super) const MAX_SESSIONS_PER_CONNECTION: usize = 16;

/// How many accepted sessions a desktop's connection may hold at once: phones stay in their
/// session while connected (for ICE restarts), so a desktop serving many phones holds one
/// each; its prompts waiting for an answer stay at most [`MAX_SESSIONS_PER_CONNECTION`].
pub(super) const MAX_DESKTOP_SESSIONS: usize = 256;

/// At most this many times the configured message budget for a connection in many sessions
/// (each session it takes part in, or may still report on, adds one budget).
pub(crate) const MAX_BUDGET_SCALE: usize = 64;

impl Hub {
    /// A WebSocket upgrade from client `ip` is about to open a connection: count it, or refuse
    /// it when that IP has [`super::HubConfig::max_connections_per_ip`] open already. Every
    /// `true` must be matched by one [`Hub::release_ip`] when the connection (or the failed
    /// upgrade) is gone.
    pub(crate) fn reserve_ip(&mut self, ip: IpAddr) -> bool {
        let max = self.config.max_connections_per_ip;
        if self.per_ip.try_acquire(ip, max) {
            return true;
        }
        self.stats.connections_refused_per_ip += 1;
        self.event(|_| crate::events::Event::LimitHit {
            limit: "connections_per_ip",
            conn: None,
            ip: Some(ip),
            suppressed: 0,
        });
        tracing::warn!(
            client = %ip, open = self.per_ip.open(ip), max,
            "refusing a connection: too many from this client address"
        );
        false
    }

    /// A connection counted by [`Hub::reserve_ip`] is gone.
    pub(crate) fn release_ip(&mut self, ip: IpAddr) {
        self.per_ip.release(ip);
    }

    /// Record liveness and charge the frame to the connection's message budget: `false` when
    /// the frame must be dropped unread (an unknown connection, or one over its budget).
    pub(super) fn admit_frame(&mut self, conn: ConnKey, now: Instant) -> bool {
        self.touch(conn, now) && self.charge_frame(conn, now)
    }

    /// Record liveness; `false` for a connection the hub no longer knows.
    pub(super) fn touch(&mut self, conn: ConnKey, now: Instant) -> bool {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Charge one frame to the connection's message budget (scaled: see
    /// [`MAX_BUDGET_SCALE`]). `false` when the frame is over budget: it was answered
    /// `rate_limited` (and the connection closed when it keeps flooding) and must be dropped
    /// unread.
    pub(super) fn charge_frame(&mut self, conn: ConnKey, now: Instant) -> bool {
        let max_strikes = self.config.rate_strikes;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        // A desktop serving many phones sends for each of them (signals, leaves, reports):
        // its budget grows with the sessions it takes part in and the reports it may still
        // send, up to MAX_BUDGET_SCALE times.
        let scale = (1 + c.sessions.len() + c.reportable.len()).min(MAX_BUDGET_SCALE) as u32;
        let Some(budget) = c.budget.as_mut() else {
            return true;
        };
        budget.rescale(self.config.rate_limit, self.config.rate_burst, scale);
        budget.refill(now);
        if budget.is_full() {
            c.strikes = 0;
        }
        if budget.try_take() {
            return true;
        }
        c.strikes = c.strikes.saturating_add(1);
        let strikes = c.strikes;
        let first_refusal = !std::mem::replace(&mut c.rate_limit_reported, true);
        self.stats.frames_rate_limited += 1;
        let (rate, burst) = (self.config.rate_limit, self.config.rate_burst);
        if strikes >= max_strikes {
            self.send_error(
                conn,
                ErrorCode::RateLimited,
                format!(
                    "{strikes} frames over the limit of {rate} messages/s (burst {burst}); \
                     closing the connection"
                ),
            );
            self.depart(conn, Departure::Flooding, now);
            return false;
        }
        if first_refusal {
            self.limit_event("rate_limit", conn);
        }
        if strikes == 1 {
            tracing::info!(
                conn = %self.short_id(conn), rate, burst,
                "connection over its message budget; refusing frames"
            );
        }
        self.send_error(
            conn,
            ErrorCode::RateLimited,
            format!("over the limit of {rate} messages/s (burst {burst}); frame dropped"),
        );
        false
    }

    /// Refuse a frame of `size` bytes, over the frame limit, and close its connection.
    pub(super) fn refuse_too_large(&mut self, conn: ConnKey, size: usize) {
        self.stats.frames_malformed += 1;
        let max = self.config.max_frame_bytes;
        self.limit_event("frame_too_large", conn);
        self.send_error(
            conn,
            ErrorCode::FrameTooLarge,
            format!("frame of {size} bytes exceeds the limit of {max} bytes"),
        );
        // The time of refusal does not matter: no timer is armed by a refusal.
        if let Some(c) = self.conns.get(&conn) {
            let now = c.last_seen;
            self.depart(conn, Departure::Refused, now);
        }
    }

    /// Whether `conn` may ask a desktop to pair (`what`: pair or connect requests); when not,
    /// it was told why.
    pub(super) fn may_ask_to_pair(&mut self, conn: ConnKey, what: &str) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        if matches!(c.role, Role::Desktop { .. }) {
            self.send_error(
                conn,
                ErrorCode::AlreadyRegistered,
                format!("a registered desktop cannot send {what}"),
            );
            return false;
        }
        if c.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            self.limit_event("sessions_per_connection", conn);
            self.send_error(
                conn,
                ErrorCode::RateLimited,
                format!("at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection"),
            );
            return false;
        }
        true
    }

    /// Record a pair request for `desktop` in its attempt window (kept when its code changes:
    /// the limit is per desktop).
    pub(super) fn charge_pair_attempt(
        &mut self,
        desktop: ConnKey,
        now: Instant,
    ) -> Result<(), AttemptsExhausted> {
        let (max, window) = (self.config.pair_attempts, self.config.pair_window);
        match self.conns.get_mut(&desktop).map(|d| &mut d.role) {
            Some(Role::Desktop { attempts, .. }) => attempts.try_record(now, max, window),
            _ => Ok(()),
        }
    }

    /// Refuse a pair or connect request from `phone` for `desktop`, which had too many; tell
    /// the desktop at the first refusal of a lockout.
    pub(super) fn refuse_pair_attempt(
        &mut self,
        phone: ConnKey,
        desktop: ConnKey,
        via: Via<'_>,
        exhausted: AttemptsExhausted,
    ) {
        self.stats.pair_attempts_refused += 1;
        self.limit_event("pair_attempts", phone);
        self.pair_refused_event(phone, via.event_name(), "too_many_attempts");
        let (max, window) = (self.config.pair_attempts, self.config.pair_window);
        let retry_s = exhausted.retry_after.as_secs_f64().ceil();
        if exhausted.first_refusal {
            tracing::warn!(
                phone = %self.short_id(phone), desktop = %self.short_id(desktop),
                max, window_s = window.as_secs(),
                "too many pair requests for one desktop ({via}); refusing more"
            );
            self.send_error(
                desktop,
                ErrorCode::TooManyAttempts,
                format!(
                    "this desktop received {max} pairing requests within {}s; further requests \
                     are refused for {retry_s}s",
                    window.as_secs()
                ),
            );
        } else {
            tracing::debug!(
                phone = %self.short_id(phone),
                "{via} refused: too many attempts"
            );
        }
        self.send_error(
            phone,
            ErrorCode::TooManyAttempts,
            format!("too many pairing requests for this desktop; try again in {retry_s}s"),
        );
    }
}
