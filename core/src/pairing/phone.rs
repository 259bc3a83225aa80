//! [`PhonePairing`]: the phone's side of pairing, sans-IO.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use proxim_protocol::{
    AuthPayload, ClientMessage, DeviceId, PairOutcome, PeerDevice, RoutingCode, ServerMessage,
    SessionId,
};
use tracing::{debug, info};

use super::{PairingError, short};

/// Which desktop a phone asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairTarget {
    /// The desktop showing this code (`pair_request`).
    Code(RoutingCode),
    /// A desktop paired before, by its device id (`connect_request`, no code).
    Device(DeviceId),
}

/// What the phone's pairing machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PhoneEvent {
    /// The desktop accepted: signals may flow on `session`.
    Paired {
        /// The pairing session.
        session: SessionId,
        /// The desktop.
        peer: PeerDevice,
        /// The desktop's opaque authentication payload, if any.
        auth: Option<AuthPayload>,
    },
    /// Pairing failed; the machine is finished.
    Failed(PairingError),
}

/// The phone's pairing state machine.
///
/// It sends `pair_request` at once. The server answers `pair_pending {session}` when the
/// desktop is asking its user, then `pair_result`. The machine fails on its own after
/// `timeout` (pick it a little longer than the server's prompt timeout), sending `leave` when
/// the session is known so the desktop's prompt ends.
///
/// Cancelling before `pair_pending` cannot name the session: the machine fails at once and, if
/// the `pair_pending` still arrives while someone drives it, answers it with `leave`.
#[derive(Debug)]
pub struct PhonePairing {
    state: State,
    transmits: VecDeque<ClientMessage>,
    events: VecDeque<PhoneEvent>,
}

#[derive(Debug)]
enum State {
    /// `pair_request` sent; no session yet.
    Requested { deadline: Instant },
    /// The desktop is asking its user.
    Pending {
        session: SessionId,
        deadline: Instant,
    },
    /// Paired: the machine is done.
    Paired { session: SessionId },
    /// Failed: the machine is done. `leave_late` is set when it was cancelled or timed out
    /// before the session was known: a late `pair_pending` is answered with `leave`.
    Failed {
        error: PairingError,
        leave_late: bool,
    },
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Requested { .. } => f.write_str("requested"),
            State::Pending { session, .. } => write!(f, "pending({})", short(session)),
            State::Paired { session } => write!(f, "paired({})", short(session)),
            State::Failed { error, .. } => write!(f, "failed({error})"),
        }
    }
}

impl PhonePairing {
    /// Start pairing with the desktop showing `code`; `pair_request` is ready to transmit.
    pub fn new(code: RoutingCode, me: PeerDevice, timeout: Duration, now: Instant) -> Self {
        Self::with_auth(PairTarget::Code(code), me, None, timeout, now)
    }

    /// Like [`PhonePairing::new`], with an opaque payload relayed to the desktop.
    pub fn with_auth(
        target: PairTarget,
        me: PeerDevice,
        auth: Option<AuthPayload>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut transmits = VecDeque::new();
        match target {
            PairTarget::Code(code) => {
                info!(code = %code.redacted(), ?timeout, "pairing as phone");
                transmits.push_back(ClientMessage::PairRequest {
                    code,
                    device_id: me.device_id,
                    device_name: me.device_name,
                    auth,
                });
            }
            PairTarget::Device(desktop) => {
                info!(%desktop, ?timeout, "connecting to a trusted desktop");
                transmits.push_back(ClientMessage::ConnectRequest {
                    desktop,
                    device_id: me.device_id,
                    device_name: me.device_name,
                    auth,
                });
            }
        }
        PhonePairing {
            state: State::Requested {
                deadline: now + timeout,
            },
            transmits,
            events: VecDeque::new(),
        }
    }

    /// Feed a server message. `Err` means it was unexpected and ignored; the state is unchanged.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &ServerMessage,
    ) -> Result<(), PairingError> {
        let _ = now;
        match (&self.state, message) {
            (
                State::Requested { deadline },
                ServerMessage::PairPending {
                    session,
                    expires_in_ms,
                },
            ) => {
                debug!(expires_in_ms, "desktop is asking its user");
                let deadline = *deadline;
                self.transition(
                    State::Pending {
                        session: session.clone(),
                        deadline,
                    },
                    "pair_pending",
                );
                Ok(())
            }
            (
                State::Failed {
                    leave_late: true, ..
                },
                ServerMessage::PairPending { session, .. },
            ) => {
                debug!(session = %short(session), "late pair_pending: leaving");
                self.transmits.push_back(ClientMessage::Leave {
                    session: session.clone(),
                });
                if let State::Failed { leave_late, .. } = &mut self.state {
                    *leave_late = false;
                }
                Ok(())
            }
            (
                State::Requested { .. },
                ServerMessage::PairResult {
                    session: None,
                    outcome,
                    ..
                },
            ) if matches!(
                outcome,
                PairOutcome::UnknownCode
                    | PairOutcome::CodeExpired
                    | PairOutcome::CodeUsed
                    | PairOutcome::DesktopOffline
            ) =>
            {
                let error = match outcome {
                    PairOutcome::CodeExpired => PairingError::CodeExpired,
                    PairOutcome::CodeUsed => PairingError::CodeUsed,
                    PairOutcome::DesktopOffline => PairingError::DesktopOffline,
                    _ => PairingError::UnknownCode,
                };
                self.fail(error, "refused without a session", false);
                Ok(())
            }
            (
                State::Requested { .. },
                ServerMessage::PairResult {
                    session: Some(session),
                    outcome,
                    peer,
                    auth,
                },
            ) => {
                // A server may answer without pair_pending (e.g. an immediate refusal).
                let session = session.clone();
                self.handle_result(session, *outcome, peer.clone(), auth.clone());
                Ok(())
            }
            (
                State::Pending { session: ours, .. },
                ServerMessage::PairResult {
                    session: Some(session),
                    outcome,
                    peer,
                    auth,
                },
            ) if ours == session => {
                let session = session.clone();
                self.handle_result(session, *outcome, peer.clone(), auth.clone());
                Ok(())
            }
            (State::Pending { .. }, ServerMessage::PairResult { session, .. }) => {
                Err(match session {
                    Some(session) => PairingError::UnknownSession(session.clone()),
                    None => PairingError::InvalidState("pair_result without a session".into()),
                })
            }
            (
                State::Pending { session: ours, .. },
                ServerMessage::SessionEnded { session, reason },
            ) if ours == session => {
                debug!(?reason, "session ended while pending");
                self.fail(PairingError::DesktopGone, "session ended", false);
                Ok(())
            }
            (State::Requested { .. }, ServerMessage::Error { code, message }) => {
                // The only request in flight is ours: the server refused it.
                self.fail(
                    PairingError::Server {
                        code: *code,
                        message: message.as_str().to_owned(),
                    },
                    "server refused the request",
                    false,
                );
                Ok(())
            }
            (state, message) => Err(PairingError::InvalidState(format!(
                "`{}` while {state}",
                message.kind()
            ))),
        }
    }

    /// Let time pass: the local timeout fails the pairing (and leaves the session, if known).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Requested { deadline } if now >= *deadline => {
                self.fail(PairingError::TimedOut, "local timeout", true);
            }
            State::Pending { session, deadline } if now >= *deadline => {
                let session = session.clone();
                self.transmits.push_back(ClientMessage::Leave { session });
                self.fail(PairingError::TimedOut, "local timeout", false);
            }
            _ => {}
        }
    }

    /// The user gave up. Sends `leave` when the session is known; fails with
    /// [`PairingError::Cancelled`].
    pub fn cancel(&mut self, now: Instant) -> Result<(), PairingError> {
        let _ = now;
        match &self.state {
            State::Requested { .. } => {
                self.fail(
                    PairingError::Cancelled,
                    "cancelled before pair_pending",
                    true,
                );
                Ok(())
            }
            State::Pending { session, .. } => {
                let session = session.clone();
                self.transmits.push_back(ClientMessage::Leave { session });
                self.fail(PairingError::Cancelled, "cancelled", false);
                Ok(())
            }
            state => Err(PairingError::InvalidState(format!("cancel while {state}"))),
        }
    }

    /// The signaling connection is gone: a pairing in progress fails with
    /// [`PairingError::ServerLost`] (the server forgets its sessions with the connection).
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        if matches!(self.state, State::Requested { .. } | State::Pending { .. }) {
            self.fail(PairingError::ServerLost, "signaling connection lost", false);
        }
    }

    /// The next message for the server.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PhoneEvent> {
        self.events.pop_front()
    }

    /// When [`PhonePairing::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Requested { deadline } | State::Pending { deadline, .. } => Some(*deadline),
            State::Paired { .. } | State::Failed { .. } => None,
        }
    }

    /// The session, once the server named it.
    pub fn session(&self) -> Option<&SessionId> {
        match &self.state {
            State::Pending { session, .. } | State::Paired { session } => Some(session),
            State::Requested { .. } | State::Failed { .. } => None,
        }
    }

    /// Whether pairing is over (paired or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Paired { .. } | State::Failed { .. })
    }

    fn handle_result(
        &mut self,
        session: SessionId,
        outcome: PairOutcome,
        peer: Option<PeerDevice>,
        auth: Option<AuthPayload>,
    ) {
        let error = match outcome {
            PairOutcome::Accepted => {
                let Some(peer) = peer else {
                    self.fail(
                        PairingError::Protocol("accepted without naming the desktop".into()),
                        "bad pair_result",
                        false,
                    );
                    return;
                };
                self.events.push_back(PhoneEvent::Paired {
                    session: session.clone(),
                    peer,
                    auth,
                });
                self.transition(State::Paired { session }, "accepted");
                return;
            }
            PairOutcome::Rejected => match auth {
                Some(auth) => PairingError::Refused(auth),
                None => PairingError::Rejected,
            },
            PairOutcome::CodeExpired => PairingError::CodeExpired,
            PairOutcome::CodeUsed => PairingError::CodeUsed,
            PairOutcome::DesktopOffline => PairingError::DesktopOffline,
            PairOutcome::TimedOut => PairingError::TimedOut,
            PairOutcome::UnknownCode => PairingError::UnknownCode,
            PairOutcome::DesktopGone => PairingError::DesktopGone,
            PairOutcome::Cancelled => PairingError::Cancelled,
            other => PairingError::Protocol(format!("unknown outcome {other:?}")),
        };
        self.fail(error, "pair_result", false);
    }

    fn fail(&mut self, error: PairingError, reason: &str, leave_late: bool) {
        self.events.push_back(PhoneEvent::Failed(error.clone()));
        self.transition(State::Failed { error, leave_late }, reason);
    }

    /// The one place the state changes.
    fn transition(&mut self, new: State, reason: &str) {
        let old = std::mem::replace(&mut self.state, new);
        info!("phone pairing {old} -> {} ({reason})", self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::test_support::{S1, S2, code, device, pair_result, session};
    use proxim_protocol::SessionEndReason;

    fn start(t0: Instant) -> PhonePairing {
        let mut p = PhonePairing::new(code("ABCD"), device("phone"), Duration::from_secs(90), t0);
        assert!(matches!(
            p.poll_transmit(),
            Some(ClientMessage::PairRequest { .. })
        ));
        assert_eq!(p.poll_transmit(), None);
        p
    }

    fn pending(s: &str) -> ServerMessage {
        ServerMessage::PairPending {
            session: session(s),
            expires_in_ms: 60_000,
        }
    }

    fn result(s: Option<&str>, outcome: PairOutcome) -> ServerMessage {
        pair_result(s, outcome, "desk")
    }

    /// What the phone sends to leave session `s`.
    fn leave(s: &str) -> Option<ClientMessage> {
        Some(ClientMessage::Leave {
            session: session(s),
        })
    }

    /// The event of pairing failing with `error`.
    fn failed(error: PairingError) -> Option<PhoneEvent> {
        Some(PhoneEvent::Failed(error))
    }

    #[test]
    fn accepted() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        assert_eq!(p.session(), Some(&session(S1)));
        p.handle_message(
            t0 + Duration::from_secs(3),
            &result(Some(S1), PairOutcome::Accepted),
        )
        .unwrap();
        assert_eq!(
            p.poll_event(),
            Some(PhoneEvent::Paired {
                session: session(S1),
                peer: device("desk"),
                auth: None
            })
        );
        assert_eq!(p.poll_timeout(), None);
        assert!(p.is_finished());
    }

    #[test]
    fn each_refusal_maps_to_its_error() {
        for (outcome, error) in [
            (PairOutcome::Rejected, PairingError::Rejected),
            (PairOutcome::TimedOut, PairingError::TimedOut),
            (PairOutcome::DesktopGone, PairingError::DesktopGone),
            (PairOutcome::Cancelled, PairingError::Cancelled),
        ] {
            let t0 = Instant::now();
            let mut p = start(t0);
            p.handle_message(t0, &pending(S1)).unwrap();
            p.handle_message(t0, &result(Some(S1), outcome)).unwrap();
            assert_eq!(p.poll_event(), failed(error));
            assert_eq!(
                p.poll_transmit(),
                None,
                "no leave after the server's verdict"
            );
        }
    }

    #[test]
    fn refusals_without_a_session_map_to_their_errors() {
        let t0 = Instant::now();
        for (outcome, error) in [
            (PairOutcome::CodeExpired, PairingError::CodeExpired),
            (PairOutcome::CodeUsed, PairingError::CodeUsed),
            (PairOutcome::DesktopOffline, PairingError::DesktopOffline),
        ] {
            let mut p = start(t0);
            p.handle_message(t0, &result(None, outcome)).unwrap();
            assert_eq!(p.poll_event(), failed(error));
            assert!(p.is_finished());
        }
    }

    #[test]
    fn unknown_code_has_no_session() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &result(None, PairOutcome::UnknownCode))
            .unwrap();
        assert_eq!(p.poll_event(), failed(PairingError::UnknownCode));
    }

    #[test]
    fn local_timeout_leaves_the_known_session() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(90)));
        p.handle_timeout(t0 + Duration::from_secs(89));
        assert_eq!(p.poll_event(), None);
        p.handle_timeout(t0 + Duration::from_secs(90));
        assert_eq!(p.poll_transmit(), leave(S1));
        assert_eq!(p.poll_event(), failed(PairingError::TimedOut));
        // The server's own verdict arriving later changes nothing.
        assert!(
            p.handle_message(
                t0 + Duration::from_secs(91),
                &result(Some(S1), PairOutcome::TimedOut)
            )
            .is_err()
        );
        assert_eq!(p.poll_event(), None);
    }

    #[test]
    fn server_loss_mid_pairing() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        p.handle_disconnected(t0 + Duration::from_secs(1));
        assert_eq!(p.poll_event(), failed(PairingError::ServerLost));
        assert_eq!(p.poll_transmit(), None);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn duplicate_and_out_of_order_messages_are_ignored() {
        let t0 = Instant::now();
        let mut p = start(t0);
        // A result for someone else's session before our pair_pending: refused, not applied.
        // (Our session is not known yet, so a result naming a session is taken as ours; one
        // without a session that is not unknown_code is not.)
        assert!(
            p.handle_message(t0, &result(None, PairOutcome::Rejected))
                .is_err()
        );
        p.handle_message(t0, &pending(S1)).unwrap();
        assert!(
            p.handle_message(t0, &pending(S1)).is_err(),
            "duplicate pending"
        );
        p.handle_message(t0, &result(Some(S1), PairOutcome::Accepted))
            .unwrap();
        assert!(matches!(p.poll_event(), Some(PhoneEvent::Paired { .. })));
        assert!(
            p.handle_message(t0, &result(Some(S1), PairOutcome::Accepted))
                .is_err()
        );
        assert!(
            p.handle_message(t0, &result(Some(S1), PairOutcome::Rejected))
                .is_err()
        );
        assert_eq!(
            p.poll_event(),
            None,
            "a second result after Paired is ignored"
        );
        assert_eq!(p.session(), Some(&session(S1)));
    }

    #[test]
    fn wrong_session_is_ignored() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        assert_eq!(
            p.handle_message(t0, &result(Some(S2), PairOutcome::Rejected)),
            Err(PairingError::UnknownSession(session(S2)))
        );
        let ended = ServerMessage::SessionEnded {
            session: session(S2),
            reason: SessionEndReason::PeerLeft,
        };
        assert!(p.handle_message(t0, &ended).is_err());
        assert_eq!(p.poll_event(), None);
        assert_eq!(p.session(), Some(&session(S1)));
    }

    #[test]
    fn cancel_with_a_session_leaves_it() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        p.cancel(t0).unwrap();
        assert_eq!(p.poll_transmit(), leave(S1));
        assert_eq!(p.poll_event(), failed(PairingError::Cancelled));
        assert!(p.cancel(t0).is_err(), "cancel twice");
    }

    #[test]
    fn cancel_before_pending_leaves_when_the_session_shows_up() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.cancel(t0).unwrap();
        assert_eq!(p.poll_transmit(), None, "no session to name yet");
        assert_eq!(p.poll_event(), failed(PairingError::Cancelled));
        p.handle_message(t0, &pending(S1)).unwrap();
        assert_eq!(p.poll_transmit(), leave(S1));
        assert!(p.handle_message(t0, &pending(S1)).is_err());
        assert_eq!(p.poll_transmit(), None, "only once");
    }

    #[test]
    fn server_error_to_the_request_fails_it() {
        let t0 = Instant::now();
        let mut p = start(t0);
        let refusal = ServerMessage::error(proxim_protocol::ErrorCode::RateLimited, "slow down");
        p.handle_message(t0, &refusal).unwrap();
        assert!(matches!(
            p.poll_event(),
            Some(PhoneEvent::Failed(PairingError::Server { .. }))
        ));
    }

    #[test]
    fn accepted_without_peer_is_a_protocol_error() {
        let t0 = Instant::now();
        let mut p = start(t0);
        p.handle_message(t0, &pending(S1)).unwrap();
        let bad = ServerMessage::PairResult {
            session: Some(session(S1)),
            outcome: PairOutcome::Accepted,
            peer: None,
            auth: None,
        };
        p.handle_message(t0, &bad).unwrap();
        assert!(matches!(
            p.poll_event(),
            Some(PhoneEvent::Failed(PairingError::Protocol(_)))
        ));
    }
}
