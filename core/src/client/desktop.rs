//! The desktop side: [`Desktop`] registers, turns pairing prompts into [`DesktopEvent`]s,
//! answers trusted phones itself, and connects each paired phone in the background. Which
//! code is live and when an attempt burns it is [`DesktopCode`]'s call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proxim_protocol::{AuthPayload, PairOutcome, PeerDevice, SessionId, Signal};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use super::code_policy::{CodeRequest, DesktopCode};
use super::connection::Connection;
use super::report::ReportSink;
use super::{connect_signaling, establish_verified, local_party, remember, short, tell_abort};
use crate::auth::handshake;
use crate::auth::{
    AuthError, CodeSecrets, DesktopHandshake, DeviceRole, Identity, LocalParty, PhoneHello,
    RefuseReason,
};
use crate::link::LinkEvent;
use crate::pairing::{self, DesktopRegistration, PairedSession};
use crate::peer::{Certificate, PeerRole};
use crate::signaling::SignalingClient;
use crate::{ProximConfig, ProximError};

/// What happens on the desktop side.
#[derive(Debug)]
#[non_exhaustive]
// `Connected` comes once per connection; boxing it would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
pub enum DesktopEvent {
    /// A phone asks to pair with the code; answer with [`Desktop::accept`] or
    /// [`Desktop::reject`]. (Trusted phones reconnecting are accepted without a prompt.)
    Prompt {
        /// The pairing session to answer.
        session: SessionId,
        /// The phone asking.
        peer: PeerDevice,
        /// How long the user has to answer.
        expires_in: Duration,
    },
    /// A prompt ended without a connection (rejected, timed out, withdrawn…).
    PromptClosed {
        /// The session.
        session: SessionId,
        /// What happened.
        outcome: PairOutcome,
    },
    /// A phone was refused without asking the user: it is not trusted (never paired, or
    /// revoked), or its request carried no valid authentication.
    Refused {
        /// The phone, as the server named it.
        peer: PeerDevice,
        /// Why.
        reason: String,
    },
    /// A phone paired (or a trusted one reconnected) and its direct connection is open.
    Connected(Connection),
    /// A phone paired but the direct connection could not be made, or the phone could not be
    /// authenticated ([`ProximError::Intercepted`]).
    ConnectionFailed {
        /// The phone.
        peer: PeerDevice,
        /// Why.
        error: ProximError,
    },
    /// The pairing code changed: after it was used or burned by a pairing attempt, when it
    /// expired, or after the server connection was re-established. Show the new one.
    CodeChanged(String),
    /// The connection to the signaling server was lost; Proxim is reconnecting.
    ServerLost,
    /// The connection to the signaling server is back.
    ServerReconnected,
}

/// A desktop registered with the signaling server, receiving pairing prompts.
#[derive(Debug)]
pub struct Desktop {
    registration: DesktopRegistration,
    /// The current code and whether it is still live.
    code: DesktopCode,
    me: PeerDevice,
    identity: Identity,
    config: ProximConfig,
    /// Code prompts waiting for the user, with the phone's hello.
    prompts: HashMap<SessionId, PhoneHello>,
    /// Accepted sessions waiting for the server's result, with their handshake.
    answered: HashMap<SessionId, (DesktopHandshake, Certificate)>,
    /// Results of the background connects.
    attempts_tx: mpsc::Sender<Attempt>,
    attempts_rx: mpsc::Receiver<Attempt>,
}

/// How a background connect ended.
#[derive(Debug)]
struct Attempt {
    /// What to tell the app.
    event: DesktopEvent,
    /// Whether the phone paired with the code (not as a trusted device).
    code_pairing: bool,
    /// Whether the phone proved it knew the code (or its identity key).
    phone_verified: bool,
}

/// Why [`desktop_connect`] failed, and whether the phone was verified first.
#[derive(Debug)]
struct ConnectFailure {
    error: ProximError,
    phone_verified: bool,
}

impl Desktop {
    /// Connect to the signaling server and register; resolves once the pairing code is known.
    pub async fn register(config: ProximConfig) -> Result<Desktop, ProximError> {
        let me = config.device()?;
        let identity = config.identity()?;
        let (client, events) = connect_signaling(&config).await?;
        let registration = DesktopRegistration::register(client, events, me.clone())
            .await
            .map_err(|error| config.pairing_failure(error))?;
        let code = DesktopCode::new(registration.code().clone(), CodeSecrets::generate());
        let (attempts_tx, attempts_rx) = mpsc::channel(16);
        info!(
            code = %code.routing().redacted(), identity = %identity.public().short(),
            "desktop registered"
        );
        Ok(Desktop {
            registration,
            code,
            me,
            identity,
            config,
            prompts: HashMap::new(),
            answered: HashMap::new(),
            attempts_tx,
            attempts_rx,
        })
    }

    /// The short pairing code to show the user: `ROUTING-SECRET`. It changes after every
    /// pairing attempt ([`DesktopEvent::CodeChanged`]).
    pub fn code(&self) -> &str {
        self.code.short_code()
    }

    /// The URI to show as a QR code: the server URL, the routing code and a 256-bit secret.
    pub fn qr_uri(&self) -> String {
        self.code.qr_uri(&self.config.server_url)
    }

    /// This desktop's identity key, in a short form a user can compare.
    pub fn identity(&self) -> String {
        self.identity.public().short()
    }

    /// This desktop's device id (what trusted phones reconnect to).
    pub fn device_id(&self) -> &str {
        self.me.device_id.as_str()
    }

    /// The next thing that happens. `None` once the desktop is closed.
    ///
    /// Cancel-safe: use it in `select!`.
    pub async fn next_event(&mut self) -> Option<DesktopEvent> {
        loop {
            let event = tokio::select! {
                Some(attempt) = self.attempts_rx.recv() => {
                    self.code.on_attempt_ended(attempt.code_pairing, attempt.phone_verified);
                    self.renew_burned_code().await;
                    return Some(attempt.event);
                }
                event = self.registration.next() => event?,
            };
            match event {
                pairing::RegistrationEvent::Prompt {
                    session,
                    peer,
                    expires_in,
                    auth,
                } => {
                    if let Some(event) = self.prompt(session, peer, expires_in, auth).await {
                        return Some(event);
                    }
                }
                pairing::RegistrationEvent::PromptClosed { session, outcome } => {
                    self.prompts.remove(&session);
                    let answered_with_code = self
                        .answered
                        .remove(&session)
                        .is_some_and(|(handshake, _)| handshake.is_code_pairing());
                    self.code.on_prompt_closed(answered_with_code);
                    self.renew_burned_code().await;
                    return Some(DesktopEvent::PromptClosed { session, outcome });
                }
                pairing::RegistrationEvent::Paired(paired) => self.spawn_connect(paired),
                pairing::RegistrationEvent::CodeChanged(routing) => {
                    self.code = DesktopCode::new(routing, CodeSecrets::generate());
                    return Some(DesktopEvent::CodeChanged(self.code().to_owned()));
                }
                pairing::RegistrationEvent::Disconnected => return Some(DesktopEvent::ServerLost),
                pairing::RegistrationEvent::Reconnected => {
                    return Some(DesktopEvent::ServerReconnected);
                }
            }
        }
    }

    /// Accept a prompt; a [`DesktopEvent::Connected`] follows once the phone proved it knows
    /// the code and the channel is open. An attempt that does not end verified (a wrong code,
    /// a phone that never confirms, an interception) burns the code: a new one follows in
    /// [`DesktopEvent::CodeChanged`].
    pub async fn accept(&mut self, session: &SessionId) -> Result<(), ProximError> {
        let Some(hello) = self.prompts.remove(session) else {
            return Err(ProximError::InvalidConfig(format!(
                "no open prompt for session {}",
                short(session)
            )));
        };
        let Some(secrets) = self.code.secrets() else {
            self.refuse(session, RefuseReason::CodeUsed).await;
            return Err(ProximError::CodeUsed);
        };
        let (party, certificate) = self.local_party()?;
        let answer =
            DesktopHandshake::respond_pake(secrets, self.code.routing(), session, &hello, &party);
        let (handshake, reply) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                self.refuse(session, RefuseReason::BadRequest).await;
                return Err(error.into());
            }
        };
        self.accept_with(session, handshake, certificate, reply)
            .await
    }

    /// Reject a prompt.
    pub async fn reject(&mut self, session: &SessionId) -> Result<(), ProximError> {
        self.prompts.remove(session);
        self.registration
            .reject(session)
            .await
            .map_err(|error| self.config.pairing_failure(error).into())
    }

    /// Unregister and disconnect from the signaling server. Open connections stay open.
    pub async fn close(self) {
        self.registration.client().close().await;
    }

    /// A prompt arrived: code prompts go to the user; trusted phones are answered here.
    async fn prompt(
        &mut self,
        session: SessionId,
        peer: PeerDevice,
        expires_in: Duration,
        auth: Option<AuthPayload>,
    ) -> Option<DesktopEvent> {
        let (reason, why) = match PhoneHello::decode(auth.as_ref()) {
            Ok(hello @ PhoneHello::Pake { .. }) => {
                let now = tokio::time::Instant::now().into_std();
                let expires_at = self.registration.code_expires_at().map(|at| at.into_std());
                let request = self.code.on_code_request(now, expires_at);
                self.renew_burned_code().await;
                match request {
                    CodeRequest::Refuse => (
                        RefuseReason::CodeUsed,
                        "the code it used was already used".to_owned(),
                    ),
                    CodeRequest::Prompt => {
                        self.prompts.insert(session.clone(), hello);
                        return Some(DesktopEvent::Prompt {
                            session,
                            peer,
                            expires_in,
                        });
                    }
                }
            }
            Ok(hello @ PhoneHello::Trusted { .. }) => match self.trusted_prompt(&hello) {
                Ok(()) => match self.answer_trusted(&session, &hello).await {
                    Ok(()) => return None,
                    Err(error) => (RefuseReason::BadRequest, error.to_string()),
                },
                Err(refusal) => refusal,
            },
            Err(error) => (RefuseReason::BadRequest, error.to_string()),
        };
        warn!(phone = %peer.device_name, %why, "refusing a connection request");
        self.refuse(&session, reason).await;
        Some(DesktopEvent::Refused { peer, reason: why })
    }

    /// Whether a trusted-device hello comes from a phone in the trust store.
    fn trusted_prompt(&self, hello: &PhoneHello) -> Result<(), (RefuseReason, String)> {
        let PhoneHello::Trusted { identity, .. } = hello else {
            return Err((RefuseReason::BadRequest, "not a trusted hello".into()));
        };
        match self
            .config
            .trust_store()
            .find_key(identity, DeviceRole::Phone)
        {
            Ok(Some(device)) => {
                info!(phone = %device.name, "trusted phone reconnecting");
                Ok(())
            }
            Ok(None) => Err((
                RefuseReason::NotTrusted,
                "it is not a trusted device (never paired, or revoked)".into(),
            )),
            Err(error) => Err((RefuseReason::NotTrusted, error.to_string())),
        }
    }

    async fn answer_trusted(
        &mut self,
        session: &SessionId,
        hello: &PhoneHello,
    ) -> Result<(), ProximError> {
        let (party, certificate) = self.local_party()?;
        let (handshake, reply) =
            DesktopHandshake::respond_trusted(&self.me.device_id, session, hello, &party)?;
        self.accept_with(session, handshake, certificate, reply)
            .await
    }

    /// Send the handshake's reply and keep it for the server's result.
    async fn accept_with(
        &mut self,
        session: &SessionId,
        handshake: DesktopHandshake,
        certificate: Certificate,
        reply: AuthPayload,
    ) -> Result<(), ProximError> {
        self.answered
            .insert(session.clone(), (handshake, certificate));
        self.registration
            .accept_with(session, Some(reply))
            .await
            .map_err(|error| self.config.pairing_failure(error).into())
    }

    /// Refuse a request, telling the phone why (best effort).
    async fn refuse(&mut self, session: &SessionId, reason: RefuseReason) {
        if let Err(error) = self
            .registration
            .reject_with(session, handshake::refusal_payload(reason))
            .await
        {
            debug!(%error, "could not send the refusal");
        }
    }

    /// After a burn, ask the server for a new code; until it comes, code requests are refused.
    async fn renew_burned_code(&mut self) {
        while self.code.poll_renew().is_some() {
            if let Err(error) = self.registration.renew_code().await {
                warn!(%error, "could not ask for a new code");
            }
        }
    }

    fn local_party(&self) -> Result<(LocalParty, Certificate), ProximError> {
        local_party(self.identity.clone(), &self.me)
    }

    /// Verify the phone's confirmation, then establish the direct connection in the
    /// background; the result comes out of next_event.
    fn spawn_connect(&mut self, paired: PairedSession) {
        let accepted_at = Instant::now();
        let config = self.config.clone();
        let client = self.registration.client().clone();
        let tx = self.attempts_tx.clone();
        let peer = paired.peer.clone();
        let answered = self.answered.remove(&paired.session);
        let span =
            info_span!("connect", session = %short(&paired.session), peer = %peer.device_name);
        tokio::spawn(
            async move {
                let code_pairing = answered
                    .as_ref()
                    .is_some_and(|(handshake, _)| handshake.is_code_pairing());
                let result = match answered {
                    Some((handshake, certificate)) => {
                        desktop_connect(
                            &config,
                            &client,
                            accepted_at,
                            paired,
                            handshake,
                            certificate,
                        )
                        .await
                    }
                    None => Err(ConnectFailure {
                        error: ProximError::Intercepted(
                            "the server paired a session this desktop did not accept".into(),
                        ),
                        phone_verified: false,
                    }),
                };
                let attempt = match result {
                    Ok(connection) => Attempt {
                        event: DesktopEvent::Connected(connection),
                        code_pairing,
                        phone_verified: true,
                    },
                    Err(ConnectFailure {
                        error,
                        phone_verified,
                    }) => {
                        warn!(%error, "direct connection failed");
                        Attempt {
                            event: DesktopEvent::ConnectionFailed { peer, error },
                            code_pairing,
                            phone_verified,
                        }
                    }
                };
                let _ = tx.send(attempt).await;
            }
            .instrument(span),
        );
    }
}

/// The desktop's side after accepting: wait for the phone's confirmation (it comes before the
/// offer), verify it, connect to the authenticated fingerprint. The failure says whether the
/// phone was verified (if not, a code pairing burns its code).
///
/// The desktop stays on signaling: besides the `connected`/`failed` report of the setup, a
/// connection that was up reports `closed` when it ends (unless reports are off).
async fn desktop_connect(
    config: &ProximConfig,
    client: &SignalingClient,
    accepted_at: Instant,
    mut paired: PairedSession,
    handshake: DesktopHandshake,
    certificate: Certificate,
) -> Result<Connection, ConnectFailure> {
    let unverified = |error: ProximError| ConnectFailure {
        error,
        phone_verified: false,
    };
    // The phone's confirmation; a signaling hiccup meanwhile (resumed) only delays it.
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let first = loop {
        match tokio::time::timeout_at(deadline, paired.link.incoming.recv()).await {
            Ok(Some(
                LinkEvent::Interrupted
                | LinkEvent::Resumed
                | LinkEvent::IceServers(_)
                | LinkEvent::PeerRestarted,
            )) => {
                continue;
            }
            other => break other,
        }
    };
    let verified = match first {
        Ok(Some(LinkEvent::Signal(Signal::Auth { payload }))) => handshake.on_confirm(&payload),
        Ok(Some(LinkEvent::Signal(other))) => Err(AuthError::Unexpected(match other {
            Signal::Offer { .. } => "offer before the confirmation",
            _ => "signal before the confirmation",
        })),
        Ok(Some(LinkEvent::Ended(_))) => {
            client.close_session(&paired.session);
            return Err(unverified(ProximError::ConnectionFailed(
                "the phone left before confirming the pairing".into(),
            )));
        }
        // (Not returned by the loop above.)
        Ok(
            Some(
                LinkEvent::Lost
                | LinkEvent::Interrupted
                | LinkEvent::Resumed
                | LinkEvent::IceServers(_)
                | LinkEvent::PeerRestarted,
            )
            | None,
        ) => {
            return Err(unverified(ProximError::ConnectionFailed(
                "lost the signaling server before the phone confirmed".into(),
            )));
        }
        Err(_) => Err(AuthError::Missing(
            "the phone's confirmation (none in time)",
        )),
    };
    let verified = match verified {
        Ok(verified) => verified,
        Err(error) => {
            warn!(%error, "the phone does not verify; refusing it");
            if !matches!(error, AuthError::PeerAborted(_)) {
                tell_abort(client, &paired.session, handshake::abort_payload(&error)).await;
            }
            client.close_session(&paired.session);
            return Err(unverified(error.into()));
        }
    };
    info!(peer = %verified.peer_name, method = ?verified.method, "phone verified; connecting");
    let session = paired.session.clone();
    let mut connection = establish_verified(
        config,
        client,
        PeerRole::Answerer,
        accepted_at,
        paired,
        certificate,
        verified,
    )
    .await
    .map_err(|error| {
        // A verified phone whose SDP then carries another fingerprint: someone is in the
        // middle; the code is spent too.
        let intercepted = matches!(error, ProximError::Intercepted(_));
        ConnectFailure {
            error,
            phone_verified: !intercepted,
        }
    })?;
    if let Some(reports) = ReportSink::new(config.report_connections, client, &session) {
        connection.report_close_to(reports);
    }
    connection.attach_signaling(client);
    remember(config, &connection, DeviceRole::Phone);
    Ok(connection)
}
