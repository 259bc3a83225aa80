//! [`DesktopPairing`]: the desktop's side of pairing, sans-IO.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use proxim_protocol::{
    AuthPayload, ClientMessage, PairOutcome, PeerDevice, RoutingCode, ServerMessage, SessionId,
};
use tracing::{debug, info};

use super::{PairingError, short};

/// How long an answered prompt waits for the server's `pair_result` before it is closed as
/// timed out.
pub const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What the desktop's pairing machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DesktopPairingEvent {
    /// Registered: show `code` to the user. Also after a re-registration that kept the code.
    Registered(RoutingCode),
    /// Re-registered after a reconnect, and the server gave a different code.
    CodeChanged(RoutingCode),
    /// The server refused the registration; the machine needs a reconnect to try again.
    RegistrationFailed(PairingError),
    /// A phone asks to pair: ask the user, then [`DesktopPairing::accept`] or
    /// [`DesktopPairing::reject`] before `expires_at`.
    Prompt {
        /// The pairing session.
        session: SessionId,
        /// The phone.
        peer: PeerDevice,
        /// When the prompt expires.
        expires_at: Instant,
        /// The phone's opaque authentication payload, if any.
        auth: Option<AuthPayload>,
    },
    /// The pairing completed: signals may flow on `session`.
    Paired {
        /// The pairing session.
        session: SessionId,
        /// The phone.
        peer: PeerDevice,
        /// The phone's opaque authentication payload from the prompt, if any.
        auth: Option<AuthPayload>,
    },
    /// A prompt ended without pairing. A prompt closed because the signaling connection was
    /// lost reports [`PairOutcome::DesktopGone`] (that is what the phone is told).
    PromptClosed {
        /// The pairing session.
        session: SessionId,
        /// What happened.
        outcome: PairOutcome,
    },
}

/// The desktop's pairing state machine: registration and any number of concurrent prompts.
#[derive(Debug)]
pub struct DesktopPairing {
    me: PeerDevice,
    /// When the current code expires, by the server's word (`None`: never).
    code_expires_at: Option<Instant>,
    state: State,
    transmits: VecDeque<ClientMessage>,
    events: VecDeque<DesktopPairingEvent>,
}

#[derive(Debug)]
enum State {
    /// `register_desktop` sent; `previous` is the code before a reconnect.
    Registering { previous: Option<RoutingCode> },
    /// Registered; prompts waiting for the user or for the server's result.
    Registered {
        code: RoutingCode,
        prompts: BTreeMap<SessionId, Prompt>,
    },
    /// No connection (or the registration was refused): needs registration.
    Unregistered { previous: Option<RoutingCode> },
}

#[derive(Debug)]
struct Prompt {
    peer: PeerDevice,
    auth: Option<AuthPayload>,
    /// When the prompt closes by the local clock.
    deadline: Instant,
    /// Whether the user answered (then `deadline` is the answer grace).
    answered: bool,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Registering { .. } => f.write_str("registering"),
            State::Registered { code, prompts } => {
                write!(
                    f,
                    "registered({}, {} prompts)",
                    code.redacted(),
                    prompts.len()
                )
            }
            State::Unregistered { .. } => f.write_str("unregistered"),
        }
    }
}

impl DesktopPairing {
    /// Start registering as `me`; `register_desktop` is ready to transmit.
    pub fn new(me: PeerDevice, now: Instant) -> Self {
        let _ = now;
        let mut machine = DesktopPairing {
            me,
            code_expires_at: None,
            state: State::Registering { previous: None },
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        machine.send_registration();
        machine
    }

    /// Feed a server message. `Err` means it was unexpected and ignored; the state is unchanged.
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: &ServerMessage,
    ) -> Result<(), PairingError> {
        if let (
            State::Registering { .. } | State::Registered { .. },
            ServerMessage::Registered { expires_in_ms, .. },
        ) = (&self.state, message)
        {
            self.code_expires_at = expires_in_ms.map(|ms| now + Duration::from_millis(ms));
        }
        match (&mut self.state, message) {
            (State::Registering { previous }, ServerMessage::Registered { code, .. }) => {
                let event = match previous {
                    Some(old) if old != code => DesktopPairingEvent::CodeChanged(code.clone()),
                    _ => DesktopPairingEvent::Registered(code.clone()),
                };
                self.events.push_back(event);
                self.transition(
                    State::Registered {
                        code: code.clone(),
                        prompts: BTreeMap::new(),
                    },
                    "registered",
                );
                Ok(())
            }
            (State::Registering { previous }, ServerMessage::Error { code, message }) => {
                let previous = previous.take();
                let error = PairingError::Server {
                    code: *code,
                    message: message.as_str().to_owned(),
                };
                self.events
                    .push_back(DesktopPairingEvent::RegistrationFailed(error));
                self.transition(State::Unregistered { previous }, "registration refused");
                Ok(())
            }
            (
                State::Registered { prompts, .. },
                ServerMessage::PairPrompt {
                    session,
                    peer,
                    expires_in_ms,
                    auth,
                },
            ) => {
                if prompts.contains_key(session) {
                    return Err(PairingError::InvalidState(format!(
                        "duplicate prompt for session {}",
                        short(session)
                    )));
                }
                let expires_at = now + Duration::from_millis(*expires_in_ms);
                info!(session = %short(session), peer = %peer.device_name, "pair prompt");
                prompts.insert(
                    session.clone(),
                    Prompt {
                        peer: peer.clone(),
                        auth: auth.clone(),
                        deadline: expires_at,
                        answered: false,
                    },
                );
                self.events.push_back(DesktopPairingEvent::Prompt {
                    session: session.clone(),
                    peer: peer.clone(),
                    expires_at,
                    auth: auth.clone(),
                });
                Ok(())
            }
            (
                State::Registered { prompts, .. },
                ServerMessage::PairResult {
                    session: Some(session),
                    outcome,
                    ..
                },
            ) => {
                let Some(prompt) = prompts.remove(session) else {
                    return Err(PairingError::UnknownSession(session.clone()));
                };
                let event = if *outcome == PairOutcome::Accepted {
                    info!(session = %short(session), "paired");
                    DesktopPairingEvent::Paired {
                        session: session.clone(),
                        peer: prompt.peer,
                        auth: prompt.auth,
                    }
                } else {
                    info!(session = %short(session), ?outcome, "prompt closed");
                    DesktopPairingEvent::PromptClosed {
                        session: session.clone(),
                        outcome: *outcome,
                    }
                };
                self.events.push_back(event);
                Ok(())
            }
            (
                State::Registered { prompts, .. },
                ServerMessage::SessionEnded { session, reason },
            ) => {
                // The phone left before the result (the server normally says pair_result
                // cancelled first; this covers a server that only ends the session).
                if prompts.remove(session).is_none() {
                    return Err(PairingError::UnknownSession(session.clone()));
                }
                debug!(session = %short(session), ?reason, "prompt's session ended");
                self.events.push_back(DesktopPairingEvent::PromptClosed {
                    session: session.clone(),
                    outcome: PairOutcome::Cancelled,
                });
                Ok(())
            }
            (State::Registered { code, .. }, ServerMessage::Registered { code: new, .. }) => {
                // The server retired the code (expired, or renewed after a use) and assigned a
                // new one; open prompts stay.
                if new != code {
                    info!(old = %code.redacted(), new = %new.redacted(), "code replaced");
                    *code = new.clone();
                    self.events
                        .push_back(DesktopPairingEvent::CodeChanged(new.clone()));
                }
                Ok(())
            }
            (state, message) => Err(PairingError::InvalidState(format!(
                "`{}` while {state}",
                message.kind()
            ))),
        }
    }

    /// The user accepts a pending prompt: `pair_response {accept: true}`. `Paired` follows the
    /// server's `pair_result`.
    pub fn accept(
        &mut self,
        now: Instant,
        session: &SessionId,
        auth: Option<AuthPayload>,
    ) -> Result<(), PairingError> {
        self.answer(now, session, true, auth)
    }

    /// The user rejects a pending prompt: `pair_response {accept: false}`.
    pub fn reject(&mut self, now: Instant, session: &SessionId) -> Result<(), PairingError> {
        self.answer(now, session, false, None)
    }

    /// Reject a pending prompt with a reason for the phone in `auth`.
    pub fn reject_with(
        &mut self,
        now: Instant,
        session: &SessionId,
        auth: AuthPayload,
    ) -> Result<(), PairingError> {
        self.answer(now, session, false, Some(auth))
    }

    /// The code was used (or burned by a failed attempt): ask the server for a new one.
    /// [`DesktopPairingEvent::CodeChanged`] follows.
    pub fn renew_code(&mut self) -> Result<(), PairingError> {
        if !matches!(self.state, State::Registered { .. }) {
            return Err(PairingError::InvalidState(format!(
                "renewing the code while {}",
                self.state
            )));
        }
        self.transmits.push_back(ClientMessage::RenewCode);
        Ok(())
    }

    /// Let time pass: unanswered prompts expire, answered ones give up waiting for a result.
    pub fn handle_timeout(&mut self, now: Instant) {
        let State::Registered { prompts, .. } = &mut self.state else {
            return;
        };
        let expired: Vec<SessionId> = prompts
            .iter()
            .filter(|(_, prompt)| now >= prompt.deadline)
            .map(|(session, _)| session.clone())
            .collect();
        for session in expired {
            prompts.remove(&session);
            info!(session = %short(&session), "prompt expired");
            self.events.push_back(DesktopPairingEvent::PromptClosed {
                session,
                outcome: PairOutcome::TimedOut,
            });
        }
    }

    /// The signaling connection is gone: every prompt closes, and the desktop needs to
    /// register again once reconnected.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        let previous = match &mut self.state {
            State::Registered { code, prompts } => {
                for (session, _) in std::mem::take(prompts) {
                    self.events.push_back(DesktopPairingEvent::PromptClosed {
                        session,
                        outcome: PairOutcome::DesktopGone,
                    });
                }
                Some(code.clone())
            }
            State::Registering { previous } | State::Unregistered { previous } => previous.take(),
        };
        self.transition(
            State::Unregistered { previous },
            "signaling connection lost",
        );
    }

    /// The signaling connection is back: register again (the server gives the same device the
    /// same code).
    pub fn handle_reconnected(&mut self, now: Instant) -> Result<(), PairingError> {
        let _ = now;
        let State::Unregistered { previous } = &mut self.state else {
            return Err(PairingError::InvalidState(format!(
                "reconnected while {}",
                self.state
            )));
        };
        let previous = previous.take();
        self.send_registration();
        self.transition(State::Registering { previous }, "reconnected");
        Ok(())
    }

    /// The next message for the server.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DesktopPairingEvent> {
        self.events.pop_front()
    }

    /// When [`DesktopPairing::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Registered { prompts, .. } => prompts.values().map(|p| p.deadline).min(),
            _ => None,
        }
    }

    /// The code being shown, when registered.
    pub fn code(&self) -> Option<&RoutingCode> {
        match &self.state {
            State::Registered { code, .. } => Some(code),
            _ => None,
        }
    }

    /// When the code being shown expires (`None`: it does not).
    pub fn code_expires_at(&self) -> Option<Instant> {
        self.code_expires_at
    }

    /// The sessions of the prompts still open.
    pub fn pending_prompts(&self) -> Vec<SessionId> {
        match &self.state {
            State::Registered { prompts, .. } => prompts.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn answer(
        &mut self,
        now: Instant,
        session: &SessionId,
        accept: bool,
        auth: Option<AuthPayload>,
    ) -> Result<(), PairingError> {
        let State::Registered { prompts, .. } = &mut self.state else {
            return Err(PairingError::InvalidState(format!(
                "answering a prompt while {}",
                self.state
            )));
        };
        let prompt = prompts
            .get_mut(session)
            .ok_or_else(|| PairingError::UnknownSession(session.clone()))?;
        if prompt.answered {
            return Err(PairingError::InvalidState(format!(
                "prompt {} already answered",
                short(session)
            )));
        }
        if now >= prompt.deadline {
            return Err(PairingError::TimedOut);
        }
        prompt.answered = true;
        prompt.deadline = now + ANSWER_GRACE;
        info!(session = %short(session), accept, "answering prompt");
        self.transmits.push_back(ClientMessage::PairResponse {
            session: session.clone(),
            accept,
            auth,
        });
        Ok(())
    }

    fn send_registration(&mut self) {
        self.transmits.push_back(ClientMessage::RegisterDesktop {
            device_id: self.me.device_id.clone(),
            device_name: self.me.device_name.clone(),
        });
    }

    /// The one place the state changes.
    fn transition(&mut self, new: State, reason: &str) {
        let old = std::mem::replace(&mut self.state, new);
        info!("desktop pairing {old} -> {} ({reason})", self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::test_support::{S1, S2, S3, code, device, pair_result, session};
    use proxim_protocol::ErrorCode;

    fn prompt(s: &str, expires_in_ms: u64) -> ServerMessage {
        ServerMessage::PairPrompt {
            session: session(s),
            peer: device("phone"),
            expires_in_ms,
            auth: None,
        }
    }

    fn result(s: &str, outcome: PairOutcome) -> ServerMessage {
        pair_result(Some(s), outcome, "phone")
    }

    fn events(d: &mut DesktopPairing) -> Vec<DesktopPairingEvent> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    /// The server's `registered`, handing out `c`.
    fn registered_as(c: &str, expires_in_ms: Option<u64>) -> ServerMessage {
        ServerMessage::Registered {
            code: code(c),
            expires_in_ms,
        }
    }

    /// The server hands `d` the code `ABCD` (its first, or the one it had): `Registered`.
    fn register_abcd(d: &mut DesktopPairing, now: Instant) {
        d.handle_message(now, &registered_as("ABCD", None)).unwrap();
        assert_eq!(
            events(d),
            vec![DesktopPairingEvent::Registered(code("ABCD"))]
        );
    }

    fn registered(t0: Instant) -> DesktopPairing {
        let mut d = DesktopPairing::new(device("desk"), t0);
        assert!(matches!(
            d.poll_transmit(),
            Some(ClientMessage::RegisterDesktop { .. })
        ));
        register_abcd(&mut d, t0);
        d
    }

    #[test]
    fn prompt_accept_paired() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        assert_eq!(
            events(&mut d),
            vec![DesktopPairingEvent::Prompt {
                session: session(S1),
                peer: device("phone"),
                expires_at: t0 + Duration::from_secs(60),
                auth: None
            }]
        );
        let t1 = t0 + Duration::from_secs(5);
        d.accept(t1, &session(S1), None).unwrap();
        assert_eq!(
            d.poll_transmit(),
            Some(ClientMessage::PairResponse {
                session: session(S1),
                accept: true,
                auth: None
            })
        );
        assert!(d.accept(t1, &session(S1), None).is_err(), "answer once");
        d.handle_message(t1, &result(S1, PairOutcome::Accepted))
            .unwrap();
        assert_eq!(
            events(&mut d),
            vec![DesktopPairingEvent::Paired {
                session: session(S1),
                peer: device("phone"),
                auth: None
            }]
        );
        assert_eq!(d.poll_timeout(), None);
        // A duplicate result is refused and changes nothing.
        assert_eq!(
            d.handle_message(t1, &result(S1, PairOutcome::Accepted)),
            Err(PairingError::UnknownSession(session(S1)))
        );
        assert!(events(&mut d).is_empty());
    }

    #[test]
    fn reject_closes_the_prompt() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        events(&mut d);
        d.reject(t0, &session(S1)).unwrap();
        assert!(matches!(
            d.poll_transmit(),
            Some(ClientMessage::PairResponse { accept: false, .. })
        ));
        d.handle_message(t0, &result(S1, PairOutcome::Rejected))
            .unwrap();
        assert_eq!(
            events(&mut d),
            vec![DesktopPairingEvent::PromptClosed {
                session: session(S1),
                outcome: PairOutcome::Rejected
            }]
        );
    }

    #[test]
    fn unanswered_prompt_times_out_locally() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 30_000)).unwrap();
        events(&mut d);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        d.handle_timeout(t0 + Duration::from_secs(29));
        assert!(events(&mut d).is_empty());
        let late = t0 + Duration::from_secs(30);
        assert_eq!(
            d.accept(late, &session(S1), None),
            Err(PairingError::TimedOut)
        );
        d.handle_timeout(late);
        assert_eq!(
            events(&mut d),
            vec![DesktopPairingEvent::PromptClosed {
                session: session(S1),
                outcome: PairOutcome::TimedOut
            }]
        );
        // The server's timed_out arriving afterwards is for a prompt already closed.
        assert!(
            d.handle_message(late, &result(S1, PairOutcome::TimedOut))
                .is_err()
        );
        assert!(events(&mut d).is_empty());
        assert_eq!(
            d.accept(late, &session(S1), None),
            Err(PairingError::UnknownSession(session(S1)))
        );
    }

    #[test]
    fn answered_prompt_without_result_closes_after_the_grace() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        d.accept(t0, &session(S1), None).unwrap();
        assert_eq!(d.poll_timeout(), Some(t0 + ANSWER_GRACE));
        d.handle_timeout(t0 + ANSWER_GRACE);
        assert!(events(&mut d).contains(&DesktopPairingEvent::PromptClosed {
            session: session(S1),
            outcome: PairOutcome::TimedOut
        }));
    }

    #[test]
    fn multiple_concurrent_prompts() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        d.handle_message(t0 + Duration::from_secs(1), &prompt(S2, 10_000))
            .unwrap();
        d.handle_message(t0 + Duration::from_secs(2), &prompt(S3, 60_000))
            .unwrap();
        assert!(
            d.handle_message(t0, &prompt(S2, 10_000)).is_err(),
            "duplicate prompt"
        );
        assert_eq!(events(&mut d).len(), 3);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(11)));
        d.accept(t0 + Duration::from_secs(3), &session(S3), None)
            .unwrap();
        d.reject(t0 + Duration::from_secs(3), &session(S1)).unwrap();
        d.handle_timeout(t0 + Duration::from_secs(11));
        d.handle_message(
            t0 + Duration::from_secs(12),
            &result(S3, PairOutcome::Accepted),
        )
        .unwrap();
        d.handle_message(
            t0 + Duration::from_secs(12),
            &result(S1, PairOutcome::Rejected),
        )
        .unwrap();
        let got = events(&mut d);
        assert_eq!(
            got,
            vec![
                DesktopPairingEvent::PromptClosed {
                    session: session(S2),
                    outcome: PairOutcome::TimedOut
                },
                DesktopPairingEvent::Paired {
                    session: session(S3),
                    peer: device("phone"),
                    auth: None
                },
                DesktopPairingEvent::PromptClosed {
                    session: session(S1),
                    outcome: PairOutcome::Rejected
                },
            ]
        );
        assert!(d.pending_prompts().is_empty());
    }

    #[test]
    fn wrong_session_and_out_of_order_are_refused() {
        let t0 = Instant::now();
        let mut d = DesktopPairing::new(device("desk"), t0);
        d.poll_transmit();
        // A prompt before registration.
        assert!(d.handle_message(t0, &prompt(S1, 60_000)).is_err());
        assert_eq!(
            d.accept(t0, &session(S1), None),
            Err(PairingError::InvalidState(
                "answering a prompt while registering".into()
            ))
        );
        d.handle_message(t0, &registered_as("ABCD", None)).unwrap();
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        while d.poll_event().is_some() {}
        // A later `registered` replaces the code (expired, or renewed after a use); the open
        // prompt stays.
        d.handle_message(t0, &registered_as("WXYZ", Some(1000)))
            .unwrap();
        assert_eq!(d.code(), Some(&code("WXYZ")));
        assert_eq!(
            d.poll_event(),
            Some(DesktopPairingEvent::CodeChanged(code("WXYZ")))
        );
        assert_eq!(d.pending_prompts(), vec![session(S1)]);
        // The same code again changes nothing.
        d.handle_message(t0, &registered_as("WXYZ", None)).unwrap();
        assert_eq!(d.poll_event(), None);
        assert_eq!(d.renew_code(), Ok(()));
        assert_eq!(d.poll_transmit(), Some(ClientMessage::RenewCode));
        assert_eq!(
            d.handle_message(t0, &result(S2, PairOutcome::Accepted)),
            Err(PairingError::UnknownSession(session(S2)))
        );
        assert_eq!(
            d.reject(t0, &session(S2)),
            Err(PairingError::UnknownSession(session(S2)))
        );
        assert_eq!(d.pending_prompts(), vec![session(S1)]);
    }

    #[test]
    fn disconnect_closes_prompts_and_reconnect_registers_again() {
        let t0 = Instant::now();
        let mut d = registered(t0);
        d.handle_message(t0, &prompt(S1, 60_000)).unwrap();
        d.handle_message(t0, &prompt(S2, 60_000)).unwrap();
        events(&mut d);
        d.handle_disconnected(t0 + Duration::from_secs(1));
        let closed = events(&mut d);
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|e| matches!(
            e,
            DesktopPairingEvent::PromptClosed {
                outcome: PairOutcome::DesktopGone,
                ..
            }
        )));
        assert_eq!(d.code(), None);
        assert_eq!(d.poll_timeout(), None);
        assert!(d.accept(t0, &session(S1), None).is_err());

        d.handle_reconnected(t0 + Duration::from_secs(3)).unwrap();
        assert!(matches!(
            d.poll_transmit(),
            Some(ClientMessage::RegisterDesktop { .. })
        ));
        assert!(d.handle_reconnected(t0).is_err(), "already registering");
        // Same code back: Registered again, not CodeChanged.
        register_abcd(&mut d, t0);

        // Another loss, and this time the server hands out a new code.
        d.handle_disconnected(t0 + Duration::from_secs(4));
        d.handle_reconnected(t0 + Duration::from_secs(5)).unwrap();
        d.handle_message(t0, &registered_as("WXYZ", None)).unwrap();
        assert_eq!(
            events(&mut d),
            vec![DesktopPairingEvent::CodeChanged(code("WXYZ"))]
        );
    }

    #[test]
    fn refused_registration_is_reported() {
        let t0 = Instant::now();
        let mut d = DesktopPairing::new(device("desk"), t0);
        d.handle_message(
            t0,
            &ServerMessage::error(ErrorCode::AlreadyRegistered, "no"),
        )
        .unwrap();
        assert!(matches!(
            events(&mut d)[..],
            [DesktopPairingEvent::RegistrationFailed(
                PairingError::Server {
                    code: ErrorCode::AlreadyRegistered,
                    ..
                }
            )]
        ));
        assert_eq!(d.code(), None);
    }
}
