//! The async drivers of the pairing machines over a [`SignalingClient`].
//!
//! Each driver follows the run-loop rule: after every input (a signaling event, a timer, a user
//! action) it sends every message the machine queued and handles every event, then waits for
//! the next input or the machine's next timeout.

use std::collections::VecDeque;
use std::time::Duration;

use proxim_protocol::{
    AuthPayload, ClientMessage, PairOutcome, PeerDevice, RoutingCode, SessionId,
};
use tracing::{Instrument, debug, info_span, warn};

use super::desktop::{DesktopPairing, DesktopPairingEvent};
use super::phone::{PairTarget, PhoneEvent, PhonePairing};
use super::{PairingError, short};
use crate::SignalLink;
use crate::clock::{now, sleep_until};
use crate::signaling::{SignalingClient, SignalingError, SignalingEvent, SignalingEvents};

/// How long [`DesktopRegistration::register`] waits for the server's `registered`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A completed pairing: who the other device is and the session's signaling link.
#[derive(Debug)]
#[non_exhaustive]
pub struct PairedSession {
    /// The pairing session.
    pub session: SessionId,
    /// The other device.
    pub peer: PeerDevice,
    /// The other device's opaque authentication payload, if any.
    pub auth: Option<AuthPayload>,
    /// The session's signaling channel, for the peer connection.
    pub link: SignalLink,
}

/// Pair with the desktop showing `code` (phone side).
///
/// Resolves once the desktop accepted, with the session's [`SignalLink`] open. Cancel-safe: if
/// this future is dropped before it resolves, the pairing is abandoned and, when the server
/// already named the session, `leave` is sent so the desktop's prompt ends.
pub async fn pair_as_phone(
    client: &SignalingClient,
    events: &mut SignalingEvents,
    target: PairTarget,
    me: PeerDevice,
    auth: Option<AuthPayload>,
    timeout: Duration,
) -> Result<PairedSession, PairingError> {
    let span = match &target {
        PairTarget::Code(code) => info_span!("pair-as-phone", code = %code.redacted()),
        PairTarget::Device(desktop) => info_span!("pair-as-phone", %desktop),
    };
    async move {
        let mut machine = PhonePairing::with_auth(target, me, auth, timeout, now());
        let mut guard = AbandonGuard {
            client,
            session: None,
        };
        loop {
            // Drain: messages first (a leave must go out before we return), then events.
            while let Some(message) = machine.poll_transmit() {
                if let Err(error) = client.send(message).await {
                    debug!(%error, "send failed");
                    machine.handle_disconnected(now());
                }
            }
            guard.session = machine.session().cloned();
            if let Some(event) = machine.poll_event() {
                guard.session = None;
                return match event {
                    PhoneEvent::Paired {
                        session,
                        peer,
                        auth,
                    } => {
                        let link = client.open_session(session.clone());
                        Ok(PairedSession {
                            session,
                            peer,
                            auth,
                            link,
                        })
                    }
                    PhoneEvent::Failed(error) => Err(error),
                };
            }
            let deadline = machine.poll_timeout();
            tokio::select! {
                event = events.next() => match event {
                    Some(SignalingEvent::Message(message)) => {
                        if let Err(error) = machine.handle_message(now(), &message) {
                            debug!(%error, kind = message.kind(), "message ignored");
                        }
                    }
                    Some(SignalingEvent::Disconnected { .. }) => machine.handle_disconnected(now()),
                    Some(SignalingEvent::Closed) | None => machine.handle_disconnected(now()),
                    Some(other) => debug!(?other, "signaling event ignored while pairing"),
                },
                () = sleep_until(deadline) => machine.handle_timeout(now()),
            }
        }
    }
    .instrument(span)
    .await
}

/// Sends `leave` for a session whose pairing future was dropped half-way.
struct AbandonGuard<'a> {
    client: &'a SignalingClient,
    session: Option<SessionId>,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            debug!(session = %short(&session), "pairing abandoned: leaving");
            self.client.close_session(&session);
        }
    }
}

/// What happens to a [`DesktopRegistration`]: the machine's [`DesktopPairingEvent`]s as the
/// driver delivers them (a paired session's link open, a prompt's expiry as a duration, the
/// connection's loss and return). [`crate::Desktop`] turns them into [`crate::DesktopEvent`]s.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistrationEvent {
    /// A phone asks to pair: answer with [`DesktopRegistration::accept`] or
    /// [`DesktopRegistration::reject`].
    Prompt {
        /// The pairing session.
        session: SessionId,
        /// The phone.
        peer: PeerDevice,
        /// How long the user has to answer.
        expires_in: Duration,
        /// The phone's opaque authentication payload, if any.
        auth: Option<AuthPayload>,
    },
    /// A phone paired; its session link is open.
    Paired(PairedSession),
    /// A prompt ended without pairing.
    PromptClosed {
        /// The pairing session.
        session: SessionId,
        /// What happened.
        outcome: PairOutcome,
    },
    /// The server gave a different code after a reconnect.
    CodeChanged(RoutingCode),
    /// The signaling connection was lost (prompts were closed); reconnecting.
    Disconnected,
    /// The signaling connection is back and the desktop registers again.
    Reconnected,
}

/// A desktop registered with the signaling server: owns the event stream and the pairing
/// machine.
#[derive(Debug)]
pub struct DesktopRegistration {
    client: SignalingClient,
    events: SignalingEvents,
    machine: DesktopPairing,
    code: RoutingCode,
    /// Messages the machine queued, sent oldest first (kept until sent: cancel-safe).
    outgoing: VecDeque<ClientMessage>,
    /// Events ready for the application.
    ready: VecDeque<RegistrationEvent>,
    /// The span all of this registration's work is logged in.
    span: tracing::Span,
}

impl DesktopRegistration {
    /// Register as `me`; resolves once the server assigned a code.
    pub async fn register(
        client: SignalingClient,
        events: SignalingEvents,
        me: PeerDevice,
    ) -> Result<DesktopRegistration, PairingError> {
        let span = info_span!("desktop", device = %me.device_id);
        Self::register_in(client, events, me, span.clone())
            .instrument(span)
            .await
    }

    async fn register_in(
        client: SignalingClient,
        mut events: SignalingEvents,
        me: PeerDevice,
        span: tracing::Span,
    ) -> Result<DesktopRegistration, PairingError> {
        let mut machine = DesktopPairing::new(me, now());
        while let Some(message) = machine.poll_transmit() {
            client.send(message).await?;
        }
        let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
        let code = loop {
            if let Some(event) = machine.poll_event() {
                match event {
                    DesktopPairingEvent::Registered(code)
                    | DesktopPairingEvent::CodeChanged(code) => break code,
                    DesktopPairingEvent::RegistrationFailed(error) => return Err(error),
                    other => debug!(?other, "event before registration ignored"),
                }
                continue;
            }
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .map_err(|_| PairingError::TimedOut)?;
            match event {
                Some(SignalingEvent::Message(message)) => {
                    if let Err(error) = machine.handle_message(now(), &message) {
                        debug!(%error, kind = message.kind(), "message ignored");
                    }
                }
                Some(SignalingEvent::Disconnected { .. } | SignalingEvent::Closed) | None => {
                    return Err(PairingError::ServerLost);
                }
                Some(other) => debug!(?other, "signaling event ignored while registering"),
            }
        };
        Ok(DesktopRegistration {
            client,
            events,
            machine,
            code,
            outgoing: VecDeque::new(),
            ready: VecDeque::new(),
            span,
        })
    }

    /// The code to show the user.
    pub fn code(&self) -> &RoutingCode {
        &self.code
    }

    /// When the code expires, by the server's word (`None`: it does not).
    pub fn code_expires_at(&self) -> Option<tokio::time::Instant> {
        self.machine
            .code_expires_at()
            .map(tokio::time::Instant::from_std)
    }

    /// The next event; `None` once the signaling client is closed. Cancel-safe.
    pub async fn next(&mut self) -> Option<RegistrationEvent> {
        let span = self.span.clone();
        self.next_in_span().instrument(span).await
    }

    async fn next_in_span(&mut self) -> Option<RegistrationEvent> {
        loop {
            self.flush().await;
            self.collect();
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                event = self.events.next() => match event {
                    Some(SignalingEvent::Message(message)) => {
                        if let Err(error) = self.machine.handle_message(now(), &message) {
                            debug!(%error, kind = message.kind(), "message ignored");
                        }
                    }
                    Some(SignalingEvent::Disconnected { error }) => {
                        warn!(%error, "signaling lost");
                        self.outgoing.clear();
                        self.machine.handle_disconnected(now());
                        self.collect();
                        self.ready.push_back(RegistrationEvent::Disconnected);
                    }
                    Some(SignalingEvent::Reconnected(_)) => {
                        if let Err(error) = self.machine.handle_reconnected(now()) {
                            debug!(%error, "reconnect without a loss; registering anyway");
                            self.machine.handle_disconnected(now());
                            self.collect();
                            let _ = self.machine.handle_reconnected(now());
                        }
                        self.ready.push_back(RegistrationEvent::Reconnected);
                    }
                    Some(SignalingEvent::Reconnecting { attempt, delay }) => {
                        debug!(attempt, ?delay, "reconnecting");
                    }
                    Some(SignalingEvent::Closed) | None => {
                        self.machine.handle_disconnected(now());
                        self.collect();
                        return self.ready.pop_front();
                    }
                },
                () = sleep_until(deadline) => self.machine.handle_timeout(now()),
            }
        }
    }

    /// Accept a prompt; [`RegistrationEvent::Paired`] follows from [`DesktopRegistration::next`].
    pub async fn accept(&mut self, session: &SessionId) -> Result<(), PairingError> {
        self.accept_with(session, None).await
    }

    /// Accept a prompt with an authentication payload for the phone.
    pub async fn accept_with(
        &mut self,
        session: &SessionId,
        auth: Option<AuthPayload>,
    ) -> Result<(), PairingError> {
        self.machine.accept(now(), session, auth)?;
        self.flush_checked().await
    }

    /// Reject a prompt with a reason for the phone in `auth`.
    pub async fn reject_with(
        &mut self,
        session: &SessionId,
        auth: AuthPayload,
    ) -> Result<(), PairingError> {
        self.machine.reject_with(now(), session, auth)?;
        self.flush_checked().await
    }

    /// Ask the server for a new code (the current one was used or burned);
    /// [`RegistrationEvent::CodeChanged`] follows.
    pub async fn renew_code(&mut self) -> Result<(), PairingError> {
        self.machine.renew_code()?;
        self.flush_checked().await
    }

    /// Reject a prompt; [`RegistrationEvent::PromptClosed`] follows.
    pub async fn reject(&mut self, session: &SessionId) -> Result<(), PairingError> {
        self.machine.reject(now(), session)?;
        self.flush_checked().await
    }

    /// The signaling client (for ICE servers, or to close it).
    pub fn client(&self) -> &SignalingClient {
        &self.client
    }

    /// Send what the machine queued; a message is dropped from the queue only once the client
    /// took it, so a cancelled call loses nothing.
    async fn flush(&mut self) {
        if let Err(error) = self.flush_checked().await {
            debug!(%error, "could not send; the connection is down");
        }
    }

    async fn flush_checked(&mut self) -> Result<(), PairingError> {
        while let Some(message) = self.machine.poll_transmit() {
            self.outgoing.push_back(message);
        }
        while let Some(message) = self.outgoing.front() {
            match self.client.send(message.clone()).await {
                Ok(()) => {
                    self.outgoing.pop_front();
                }
                Err(error @ (SignalingError::NotConnected | SignalingError::Closed)) => {
                    // Nothing queued survives a reconnect: registration starts over.
                    self.outgoing.clear();
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Turn the machine's events into application events.
    fn collect(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            let event = match event {
                DesktopPairingEvent::Prompt {
                    session,
                    peer,
                    expires_at,
                    auth,
                } => RegistrationEvent::Prompt {
                    session,
                    peer,
                    expires_in: expires_at.saturating_duration_since(now()),
                    auth,
                },
                DesktopPairingEvent::Paired {
                    session,
                    peer,
                    auth,
                } => {
                    let link = self.client.open_session(session.clone());
                    RegistrationEvent::Paired(PairedSession {
                        session,
                        peer,
                        auth,
                        link,
                    })
                }
                DesktopPairingEvent::PromptClosed { session, outcome } => {
                    RegistrationEvent::PromptClosed { session, outcome }
                }
                DesktopPairingEvent::CodeChanged(code) => {
                    self.code = code.clone();
                    RegistrationEvent::CodeChanged(code)
                }
                DesktopPairingEvent::Registered(code) => {
                    debug!(code = %code.redacted(), "registered again");
                    continue;
                }
                DesktopPairingEvent::RegistrationFailed(error) => {
                    warn!(%error, "registration refused; waiting for the next reconnect");
                    continue;
                }
            };
            self.ready.push_back(event);
        }
    }
}
