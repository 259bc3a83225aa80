//! The public API: register as a desktop, pair as a phone, get a [`Connection`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), proxim_core::ProximError> {
//! use proxim_core::{Desktop, DesktopEvent, Event, ProximConfig, pair};
//!
//! // Desktop: register, show the code, accept the first prompt.
//! let mut desktop = Desktop::register(ProximConfig::new("ws://127.0.0.1:8787/ws", "Desk")).await?;
//! println!("pairing code: {}", desktop.code());
//!
//! // Phone (another process, usually another device): pair with the code.
//! let code = desktop.code().to_owned();
//! let phone = tokio::spawn(async move {
//!     let mut connection = pair(&ProximConfig::new("ws://127.0.0.1:8787/ws", "Phone"), &code).await?;
//!     connection.send_text("hello").await?;
//!     connection.close().await;
//!     Ok::<_, proxim_core::ProximError>(())
//! });
//!
//! while let Some(event) = desktop.next_event().await {
//!     match event {
//!         DesktopEvent::Prompt { session, peer, .. } => {
//!             println!("{} wants to pair", peer.device_name);
//!             desktop.accept(&session).await?;
//!         }
//!         DesktopEvent::Connected(mut connection) => {
//!             if let Some(Event::Message(message)) = connection.next_event().await {
//!                 println!("got {message:?}");
//!             }
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxim_protocol::{DeviceId, PairOutcome, PeerDevice, RoutingCode, SessionId, Signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::handshake::{self, AuthMethod};
use crate::auth::{
    self, AuthError, CodeSecrets, DesktopHandshake, DeviceRole, Identity, LocalParty, PairingCode,
    PhoneHandshake, PhoneHello, RefuseReason, TrustedDevice, Verified,
};
use crate::link::LinkEvent;
use crate::pairing::{self, DesktopRegistration, PairTarget, PairedSession, PairingError};
use crate::peer::{
    self, Certificate, ChannelOptions, ChannelSender, ConnectionEvent, ConnectionState,
    ConnectionStats, DataChannel, Payload, PeerConfig, PeerError, PeerRole,
};
use crate::signaling::{SignalingClient, SignalingConfig, SignalingError, SignalingEvents};
use crate::transfer::{self, FileReport, ReceivedFile, TransferError, TransferProgress};
use crate::{ProximConfig, ProximError};

/// How many events may wait for the app before the connection stops reading from the network.
const EVENT_QUEUE: usize = 256;

// ---------------------------------------------------------------------------------------------
// Phone side
// ---------------------------------------------------------------------------------------------

/// Pair with the desktop showing `code` and open a direct connection to it (phone side).
///
/// `code` is what the desktop shows: the short code a person types (`K7P2QX-4HT9M`) or the
/// `proxim://pair?…` URI of its QR code (whose server then replaces
/// [`ProximConfig::server_url`]). Only the code's routing part goes to the server; its secret
/// drives a SPAKE2 handshake that authenticates both devices' DTLS fingerprints, so a server
/// that tampers with the connection gets [`ProximError::Intercepted`], never a connection.
/// With a data directory, the desktop is remembered: [`connect`] reaches it later without a
/// code.
///
/// Resolves once the data channel is open. Dropping the future cancels the pairing: the desktop
/// is told the request was withdrawn.
pub async fn pair(config: &ProximConfig, code: &str) -> Result<Connection, ProximError> {
    let code = PairingCode::parse(code).map_err(|e| ProximError::InvalidCode(e.to_string()))?;
    let me = config.device()?;
    let span = info_span!("pair", code = %code.redacted(), device = %me.device_id);
    async move {
        let mut config = config.clone();
        if let Some(server) = &code.server {
            config.server_url = server.clone();
        }
        let party = local_party(config.identity()?, &me)?;
        let (handshake, hello) = PhoneHandshake::pake(&code, party.0.clone());
        let connection = phone_connect(
            &config,
            PairTarget::Code(code.routing.clone()),
            me,
            hello,
            handshake,
            party.1,
        )
        .await?;
        remember(&config, &connection, DeviceRole::Desktop);
        Ok(connection)
    }
    .instrument(span)
    .await
}

/// Connect to a desktop paired before, without a code (phone side).
///
/// `desktop` is the desktop's device id, or a unique prefix of it, as listed by
/// [`trusted_devices`]. Both devices prove their identity keys from the first pairing and sign
/// their DTLS fingerprints with them. Fails with [`ProximError::NotTrusted`] when this device
/// does not trust that desktop, or the desktop no longer trusts this one (revoked), and with
/// [`ProximError::Intercepted`] when the answer is not signed by the remembered key.
pub async fn connect(config: &ProximConfig, desktop: &str) -> Result<Connection, ProximError> {
    if config.data_dir.is_none() {
        return Err(ProximError::InvalidConfig(
            "reconnecting to a trusted desktop needs a data directory (where the pairing is \
             remembered)"
                .into(),
        ));
    }
    let store = config.trust_store();
    let record = store
        .find_id(desktop, DeviceRole::Desktop)
        .map_err(|e| ProximError::Io(e.to_string()))?
        .ok_or_else(|| {
            ProximError::NotTrusted(format!(
                "no trusted desktop `{desktop}` on this device; pair with a code first"
            ))
        })?;
    let key = record.identity().ok_or_else(|| {
        ProximError::Io(format!(
            "the trust entry of `{}` is damaged",
            record.device_id
        ))
    })?;
    let desktop_id =
        DeviceId::new(record.device_id.clone()).map_err(|e| ProximError::Io(e.to_string()))?;
    let me = config.device()?;
    let span = info_span!("connect", desktop = %desktop_id, device = %me.device_id);
    async move {
        let party = local_party(config.identity()?, &me)?;
        let (handshake, hello) = PhoneHandshake::trusted(desktop_id.clone(), key, party.0.clone());
        let connection = phone_connect(
            config,
            PairTarget::Device(desktop_id),
            me,
            hello,
            handshake,
            party.1,
        )
        .await?;
        remember(config, &connection, DeviceRole::Desktop);
        Ok(connection)
    }
    .instrument(span)
    .await
}

/// The devices this one trusts (paired before), from its data directory.
pub fn trusted_devices(config: &ProximConfig) -> Result<Vec<TrustedDevice>, ProximError> {
    config
        .trust_store()
        .list()
        .map_err(|e| ProximError::Io(e.to_string()))
}

/// Forget a trusted device by id (or unique prefix): it needs a new pairing with a code to
/// connect again. Returns what was removed (empty: no such device).
pub fn revoke_device(config: &ProximConfig, id: &str) -> Result<Vec<TrustedDevice>, ProximError> {
    config
        .trust_store()
        .revoke(id)
        .map_err(|e| ProximError::Io(e.to_string()))
}

/// The phone's side after the hello is built: ask, verify the desktop's answer, confirm,
/// connect to the authenticated fingerprint.
async fn phone_connect(
    config: &ProximConfig,
    target: PairTarget,
    me: PeerDevice,
    hello: proxim_protocol::AuthPayload,
    handshake: PhoneHandshake,
    certificate: Certificate,
) -> Result<Connection, ProximError> {
    let started = Instant::now();
    let (client, mut events) = connect_signaling(config).await?;
    let paired = pairing::pair_as_phone(
        &client,
        &mut events,
        target,
        me,
        Some(hello),
        config.pair_timeout,
    )
    .await
    .map_err(|e| pairing_error(e, config.pair_timeout));
    let paired = match paired {
        Ok(paired) => paired,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    let paired_at = started.elapsed();
    let (verified, confirm) = match handshake.on_reply(&paired.session, paired.auth.as_ref()) {
        Ok(ok) => ok,
        Err(error) => {
            warn!(%error, "the desktop's answer does not verify; giving up");
            tell_abort(&client, &paired.session, handshake::abort_payload(&error)).await;
            client.close_session(&paired.session);
            client.close().await;
            return Err(auth_error(error));
        }
    };
    info!(
        peer = %verified.peer_name, method = ?verified.method, ?paired_at,
        "desktop verified; connecting"
    );
    if paired
        .link
        .outgoing
        .send(Signal::Auth { payload: confirm })
        .await
        .is_err()
    {
        client.close().await;
        return Err(ProximError::Signaling(
            "lost the signaling server before confirming".into(),
        ));
    }
    let session = paired.session.clone();
    let connection = Connection::establish(
        config,
        PeerRole::Offerer,
        client.welcome().ice_servers,
        paired,
        certificate,
        verified,
    )
    .await;
    if let Err(ProximError::Intercepted(_)) = &connection
        && let Some(abort) = local_interception(&connection)
    {
        tell_abort(&client, &session, abort).await;
    }
    // The direct path does not need the server any more.
    client.close().await;
    drop(events);
    let mut connection = connection?;
    connection.timings = SetupTimings {
        paired: paired_at,
        channel_open: started.elapsed(),
    };
    info!(open_at = ?connection.timings.channel_open, "data channel open");
    Ok(connection)
}

/// This device's side of a handshake: identity, name, a fresh DTLS certificate.
fn local_party(
    identity: Identity,
    me: &PeerDevice,
) -> Result<(LocalParty, Certificate), ProximError> {
    let (certificate, fingerprint) = peer::generate_certificate().map_err(peer_error)?;
    Ok((
        LocalParty {
            identity,
            name: me.device_name.as_str().to_owned(),
            fingerprint,
        },
        certificate,
    ))
}

/// Remember (or refresh) the other device of a verified connection in the trust list.
fn remember(config: &ProximConfig, connection: &Connection, role: DeviceRole) {
    let store = config.trust_store();
    if !store.is_persistent() {
        return;
    }
    let verified = &connection.verified;
    let now = auth::identity::unix_now();
    let result = match verified.method {
        AuthMethod::Trusted => store.touch(&verified.peer_identity, role),
        _ => store.add(TrustedDevice {
            device_id: connection.peer.device_id.as_str().to_owned(),
            name: verified.peer_name.clone(),
            public_key: verified.peer_identity.to_hex(),
            role,
            server_url: (role == DeviceRole::Desktop).then(|| config.server_url.clone()),
            paired_at: now,
            last_seen: now,
        }),
    };
    match result {
        Ok(()) => debug!(peer = %verified.peer_name, "trust list updated"),
        Err(error) => warn!(%error, "could not update the trust list"),
    }
}

// ---------------------------------------------------------------------------------------------
// Desktop side
// ---------------------------------------------------------------------------------------------

/// What happens on the desktop side.
#[derive(Debug)]
#[non_exhaustive]
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
    /// The current routing code, and its secrets (`None` between a use and the new code).
    routing: RoutingCode,
    secrets: Option<CodeSecrets>,
    code: String,
    me: PeerDevice,
    identity: Identity,
    config: ProximConfig,
    /// Code prompts waiting for the user, with the phone's hello.
    prompts: HashMap<SessionId, PhoneHello>,
    /// Accepted sessions waiting for the server's result, with their handshake.
    answered: HashMap<SessionId, (DesktopHandshake, Certificate)>,
    /// Results of the background connects; `true` when the attempt burns the code.
    connected_tx: mpsc::Sender<(DesktopEvent, bool)>,
    connected_rx: mpsc::Receiver<(DesktopEvent, bool)>,
}

impl Desktop {
    /// Connect to the signaling server and register; resolves once the pairing code is known.
    pub async fn register(config: ProximConfig) -> Result<Desktop, ProximError> {
        let me = config.device()?;
        let identity = config.identity()?;
        let (client, events) = connect_signaling(&config).await?;
        let registration = DesktopRegistration::register(client, events, me.clone())
            .await
            .map_err(|e| pairing_error(e, config.pair_timeout))?;
        let routing = registration.code().clone();
        let secrets = CodeSecrets::generate();
        let code = secrets.short_code(&routing);
        let (connected_tx, connected_rx) = mpsc::channel(16);
        info!(code = %routing.redacted(), identity = %identity.public().short(), "desktop registered");
        Ok(Desktop {
            registration,
            routing,
            secrets: Some(secrets),
            code,
            me,
            identity,
            config,
            prompts: HashMap::new(),
            answered: HashMap::new(),
            connected_tx,
            connected_rx,
        })
    }

    /// The short pairing code to show the user: `ROUTING-SECRET`. It changes after every
    /// pairing attempt ([`DesktopEvent::CodeChanged`]).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The URI to show as a QR code: the server URL, the routing code and a 256-bit secret.
    pub fn qr_uri(&self) -> String {
        match &self.secrets {
            Some(secrets) => secrets.qr_uri(&self.routing, &self.config.server_url),
            None => String::new(),
        }
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
                Some((ready, burn)) = self.connected_rx.recv() => {
                    if burn {
                        self.burn_code("the phone did not verify").await;
                    }
                    return Some(ready);
                }
                event = self.registration.next() => event?,
            };
            match event {
                pairing::DesktopEvent::Prompt {
                    session,
                    peer,
                    expires_in,
                    auth,
                } => {
                    if let Some(event) = self.prompt(session, peer, expires_in, auth).await {
                        return Some(event);
                    }
                }
                pairing::DesktopEvent::PromptClosed { session, outcome } => {
                    self.prompts.remove(&session);
                    if let Some((handshake, _)) = self.answered.remove(&session)
                        && handshake.is_code_pairing()
                    {
                        // Answered but never paired: the reply may have reached the phone.
                        self.burn_code("an answered prompt closed without pairing")
                            .await;
                    }
                    return Some(DesktopEvent::PromptClosed { session, outcome });
                }
                pairing::DesktopEvent::Paired(paired) => self.spawn_connect(paired),
                pairing::DesktopEvent::CodeChanged(code) => {
                    let secrets = CodeSecrets::generate();
                    self.code = secrets.short_code(&code);
                    self.routing = code;
                    self.secrets = Some(secrets);
                    return Some(DesktopEvent::CodeChanged(self.code.clone()));
                }
                pairing::DesktopEvent::Disconnected => return Some(DesktopEvent::ServerLost),
                pairing::DesktopEvent::Reconnected => {
                    return Some(DesktopEvent::ServerReconnected);
                }
            }
        }
    }

    /// A prompt arrived: code prompts go to the user; trusted phones are answered here.
    async fn prompt(
        &mut self,
        session: SessionId,
        peer: PeerDevice,
        expires_in: Duration,
        auth: Option<proxim_protocol::AuthPayload>,
    ) -> Option<DesktopEvent> {
        let refuse = |reason: RefuseReason, why: String| (reason, why);
        let refusal = match PhoneHello::decode(auth.as_ref()) {
            Ok(hello @ PhoneHello::Pake { .. }) => {
                let expired = self
                    .registration
                    .code_expires_at()
                    .is_some_and(|at| tokio::time::Instant::now() >= at);
                if expired {
                    // The server should have replaced it; do not trust it to.
                    self.burn_code("the code is past its expiry").await;
                }
                if self.secrets.is_none() {
                    refuse(
                        RefuseReason::CodeUsed,
                        "the code it used was already used".into(),
                    )
                } else {
                    self.prompts.insert(session.clone(), hello);
                    return Some(DesktopEvent::Prompt {
                        session,
                        peer,
                        expires_in,
                    });
                }
            }
            Ok(hello @ PhoneHello::Trusted { .. }) => {
                let PhoneHello::Trusted { identity, .. } = &hello else {
                    return None;
                };
                match self
                    .config
                    .trust_store()
                    .find_key(identity, DeviceRole::Phone)
                {
                    Ok(Some(device)) => {
                        info!(phone = %device.name, "trusted phone reconnecting");
                        match self.answer_trusted(&session, &hello).await {
                            Ok(()) => return None,
                            Err(error) => refuse(RefuseReason::BadRequest, error.to_string()),
                        }
                    }
                    Ok(None) => refuse(
                        RefuseReason::NotTrusted,
                        "it is not a trusted device (never paired, or revoked)".into(),
                    ),
                    Err(error) => refuse(RefuseReason::NotTrusted, error.to_string()),
                }
            }
            Err(error) => refuse(RefuseReason::BadRequest, error.to_string()),
        };
        let (reason, why) = refusal;
        warn!(phone = %peer.device_name, %why, "refusing a connection request");
        if let Err(error) = self
            .registration
            .reject_with(&session, handshake::refusal_payload(reason))
            .await
        {
            debug!(%error, "could not send the refusal");
        }
        Some(DesktopEvent::Refused { peer, reason: why })
    }

    async fn answer_trusted(
        &mut self,
        session: &SessionId,
        hello: &PhoneHello,
    ) -> Result<(), ProximError> {
        let (party, certificate) = self.local_party()?;
        let (handshake, reply) =
            DesktopHandshake::respond_trusted(&self.me.device_id, session, hello, &party)
                .map_err(auth_error)?;
        self.answered
            .insert(session.clone(), (handshake, certificate));
        self.registration
            .accept_with(session, Some(reply))
            .await
            .map_err(|e| pairing_error(e, self.config.pair_timeout))
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
        let Some(secrets) = &self.secrets else {
            let _ = self
                .registration
                .reject_with(session, handshake::refusal_payload(RefuseReason::CodeUsed))
                .await;
            return Err(ProximError::CodeUsed);
        };
        let (party, certificate) = self.local_party()?;
        let answer =
            DesktopHandshake::respond_pake(secrets, &self.routing, session, &hello, &party);
        let (handshake, reply) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let _ = self
                    .registration
                    .reject_with(
                        session,
                        handshake::refusal_payload(RefuseReason::BadRequest),
                    )
                    .await;
                return Err(auth_error(error));
            }
        };
        self.answered
            .insert(session.clone(), (handshake, certificate));
        self.registration
            .accept_with(session, Some(reply))
            .await
            .map_err(|e| pairing_error(e, self.config.pair_timeout))
    }

    /// A code pairing attempt ended without a verified phone: its secret may have been
    /// guessed at, so it is spent. Ask the server for a new code; until it comes, code
    /// requests are refused.
    async fn burn_code(&mut self, why: &str) {
        if self.secrets.take().is_some() {
            warn!(code = %self.routing.redacted(), why, "burning the pairing code");
            if let Err(error) = self.registration.renew_code().await {
                warn!(%error, "could not ask for a new code");
            }
        }
    }

    /// Reject a prompt.
    pub async fn reject(&mut self, session: &SessionId) -> Result<(), ProximError> {
        self.prompts.remove(session);
        self.registration
            .reject(session)
            .await
            .map_err(|e| pairing_error(e, self.config.pair_timeout))
    }

    /// Unregister and disconnect from the signaling server. Open connections stay open.
    pub async fn close(self) {
        self.registration.client().close().await;
    }

    fn local_party(&self) -> Result<(LocalParty, Certificate), ProximError> {
        local_party(self.identity.clone(), &self.me)
    }

    /// Verify the phone's confirmation, then establish the direct connection in the
    /// background; the result comes out of next_event.
    fn spawn_connect(&mut self, paired: PairedSession) {
        let config = self.config.clone();
        let client = self.registration.client().clone();
        let ice_servers = client.welcome().ice_servers;
        let tx = self.connected_tx.clone();
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
                            ice_servers,
                            paired,
                            handshake,
                            certificate,
                        )
                        .await
                    }
                    None => Err((
                        ProximError::Intercepted(
                            "the server paired a session this desktop did not accept".into(),
                        ),
                        true,
                    )),
                };
                let (event, burn) = match result {
                    Ok(connection) => (DesktopEvent::Connected(connection), false),
                    Err((error, unverified)) => {
                        warn!(%error, "direct connection failed");
                        (
                            DesktopEvent::ConnectionFailed { peer, error },
                            code_pairing && unverified,
                        )
                    }
                };
                let _ = tx.send((event, burn)).await;
            }
            .instrument(span),
        );
    }
}

/// The desktop's side after accepting: wait for the phone's confirmation (it comes before the
/// offer), verify it, connect to the authenticated fingerprint. The error says whether the
/// phone was left unverified (then a code pairing burns its code).
async fn desktop_connect(
    config: &ProximConfig,
    client: &SignalingClient,
    ice_servers: Vec<proxim_protocol::IceServer>,
    mut paired: PairedSession,
    handshake: DesktopHandshake,
    certificate: Certificate,
) -> Result<Connection, (ProximError, bool)> {
    let first = tokio::time::timeout(config.connect_timeout, paired.link.incoming.recv()).await;
    let verified = match first {
        Ok(Some(LinkEvent::Signal(Signal::Auth { payload }))) => handshake.on_confirm(&payload),
        Ok(Some(LinkEvent::Signal(other))) => Err(AuthError::Unexpected(match other {
            Signal::Offer { .. } => "offer before the confirmation",
            _ => "signal before the confirmation",
        })),
        Ok(Some(LinkEvent::Ended(_))) => {
            client.close_session(&paired.session);
            return Err((
                ProximError::ConnectionFailed(
                    "the phone left before confirming the pairing".into(),
                ),
                true,
            ));
        }
        Ok(Some(LinkEvent::Lost) | None) => {
            return Err((
                ProximError::ConnectionFailed(
                    "lost the signaling server before the phone confirmed".into(),
                ),
                true,
            ));
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
            return Err((auth_error(error), true));
        }
    };
    info!(peer = %verified.peer_name, method = ?verified.method, "phone verified; connecting");
    let session = paired.session.clone();
    let connection = Connection::establish(
        config,
        PeerRole::Answerer,
        ice_servers,
        paired,
        certificate,
        verified,
    )
    .await;
    if let Some(abort) = local_interception(&connection) {
        tell_abort(client, &session, abort).await;
    }
    let connection = connection.map_err(|error| {
        // A verified phone whose SDP then carries another fingerprint: someone is in the
        // middle; the code is spent too.
        let intercepted = matches!(error, ProximError::Intercepted(_));
        (error, intercepted)
    })?;
    remember(config, &connection, DeviceRole::Phone);
    Ok(connection)
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// What happens on an open [`Connection`].
#[derive(Debug)]
#[non_exhaustive]
// Path changes are rare and carry the whole stats snapshot; boxing it would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A message on the default channel.
    Message(Payload),
    /// The other side opened an extra channel (not a file transfer).
    ChannelOpened(DataChannel),
    /// Progress of an incoming file.
    FileProgress(TransferProgress),
    /// An incoming file arrived and its SHA-256 matched.
    FileReceived(ReceivedFile),
    /// An incoming file failed.
    FileFailed {
        /// Why.
        error: ProximError,
    },
    /// The connection state changed.
    StateChanged {
        /// The previous state.
        old: ConnectionState,
        /// The new state.
        new: ConnectionState,
    },
    /// The path in use changed (first when the connection is up): host, srflx, prflx or
    /// relay, the addresses, and for a relay how this side reaches it.
    PathChanged(peer::ConnectionStats),
    /// The connection is closed; no more events follow.
    Closed {
        /// Why.
        reason: String,
    },
}

/// How long setting up a connection took, measured from the start of [`pair`] (phone) or from
/// the pairing result (desktop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupTimings {
    /// Until the desktop accepted (zero on the desktop side).
    pub paired: Duration,
    /// Until the data channel was open.
    pub channel_open: Duration,
}

/// An open direct connection to the paired device.
#[derive(Debug)]
pub struct Connection {
    timings: SetupTimings,
    verified: Verified,
    peer: PeerDevice,
    session: SessionId,
    inner: peer::Connection,
    sender: ChannelSender,
    events: mpsc::Receiver<Event>,
    pump: JoinHandle<()>,
}

impl Connection {
    /// The device on the other side.
    pub fn peer_device(&self) -> &PeerDevice {
        &self.peer
    }

    /// How the other device was authenticated: by a code (first pairing) or as a trusted
    /// device (its identity key).
    pub fn auth_method(&self) -> AuthMethod {
        self.verified.method
    }

    /// The other device's identity key, in a short form a user can compare.
    pub fn peer_identity(&self) -> String {
        self.verified.peer_identity.short()
    }

    /// After a code pairing, a 6-digit code (`123 456`) both devices derive from the pairing
    /// key: the same on both screens means nobody is in the middle. `None` on reconnects.
    pub fn comparison_code(&self) -> Option<&str> {
        self.verified.comparison.as_deref()
    }

    /// How long setting this connection up took.
    pub fn timings(&self) -> SetupTimings {
        self.timings
    }

    /// The pairing session this connection came from.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// Send a text message on the default (reliable, ordered) channel. Waits when the channel's
    /// buffer is full.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ProximError> {
        self.sender
            .send(Payload::Text(text.into()))
            .await
            .map_err(peer_error)
    }

    /// Send a binary message on the default channel. Waits when the channel's buffer is full.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), ProximError> {
        self.sender
            .send(Payload::Binary(bytes.into()))
            .await
            .map_err(peer_error)
    }

    /// Send a file; resolves once the other side has verified its SHA-256.
    pub async fn send_file(
        &self,
        path: &Path,
        progress: impl FnMut(TransferProgress) + Send,
    ) -> Result<FileReport, ProximError> {
        transfer::send_file(&self.inner, path, progress)
            .await
            .map_err(transfer_error)
    }

    /// Open an extra data channel (e.g. unreliable, for real-time data).
    pub async fn open_channel(
        &self,
        label: &str,
        options: ChannelOptions,
    ) -> Result<DataChannel, ProximError> {
        if transfer::is_transfer_channel(label) {
            return Err(ProximError::InvalidConfig(format!(
                "channel label `{label}` is reserved for file transfers"
            )));
        }
        self.inner
            .open_channel(label, options)
            .await
            .map_err(peer_error)
    }

    /// The next event. `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Current statistics: the path in use (host, srflx, relay), RTT, bytes.
    pub async fn stats(&self) -> Result<ConnectionStats, ProximError> {
        self.inner.stats().await.map_err(peer_error)
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state()
    }

    /// Close the connection. Idempotent.
    pub async fn close(&self) {
        self.inner.close().await;
    }

    /// Open the peer connection for a paired session and start the event pump.
    async fn establish(
        config: &ProximConfig,
        role: PeerRole,
        ice_servers: Vec<proxim_protocol::IceServer>,
        paired: PairedSession,
        certificate: Certificate,
        verified: Verified,
    ) -> Result<Connection, ProximError> {
        let PairedSession {
            session,
            peer,
            link,
            ..
        } = paired;
        let started = Instant::now();
        let mut peer_config = PeerConfig::new(role, ice_servers);
        peer_config.connect_timeout = config.connect_timeout;
        peer_config.include_loopback = config.include_loopback;
        peer_config.local_ips = config.local_ips.clone();
        peer_config.force_relay = config.force_relay;
        peer_config.turn_roots_pem = config.turn_roots_pem.clone();
        peer_config.certificate = Some(certificate);
        peer_config.expected_remote_fingerprint = Some(verified.peer_fingerprint);
        let established = peer::Connection::establish(peer_config, link)
            .await
            .map_err(peer_error)?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let sender = established.channel.sender();
        let pump = tokio::spawn(
            pump(
                established.channel,
                established.events,
                config.resolved_download_dir(),
                tx,
            )
            .instrument(info_span!("connection", session = %short(&session))),
        );
        Ok(Connection {
            verified,
            timings: SetupTimings {
                paired: Duration::ZERO,
                channel_open: started.elapsed(),
            },
            peer,
            session,
            inner: established.connection,
            sender,
            events,
            pump,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The pump ends when the channels close; the driver stops when its last handle drops.
        self.pump.abort();
    }
}

/// Move messages and events from the peer to the app, and receive incoming files.
async fn pump(
    mut channel: DataChannel,
    mut events: peer::ConnectionEvents,
    download_dir: PathBuf,
    tx: mpsc::Sender<Event>,
) {
    let mut channel_open = true;
    loop {
        let event = tokio::select! {
            message = channel.recv(), if channel_open => match message {
                Some(payload) => Event::Message(payload),
                None => {
                    channel_open = false;
                    continue;
                }
            },
            event = events.next() => match event {
                Some(ConnectionEvent::ChannelOpened(incoming))
                    if transfer::is_transfer_channel(incoming.label()) =>
                {
                    tokio::spawn(receive(incoming, download_dir.clone(), tx.clone()));
                    continue;
                }
                Some(ConnectionEvent::ChannelOpened(incoming)) => Event::ChannelOpened(incoming),
                Some(ConnectionEvent::StateChanged { old, new }) => Event::StateChanged { old, new },
                Some(ConnectionEvent::PathChanged(stats)) => Event::PathChanged(stats),
                Some(ConnectionEvent::Closed { reason }) => {
                    let _ = tx.send(Event::Closed { reason }).await;
                    return;
                }
                None => {
                    let _ = tx.send(Event::Closed { reason: "connection dropped".into() }).await;
                    return;
                }
            },
        };
        if tx.send(event).await.is_err() {
            debug!("app dropped the connection; pump stops");
            return;
        }
    }
}

async fn receive(channel: DataChannel, dir: PathBuf, tx: mpsc::Sender<Event>) {
    let progress_tx = tx.clone();
    let result = transfer::receive_file(channel, &dir, move |progress| {
        // Progress is advisory: when the app is behind, skip an update rather than wait.
        let _ = progress_tx.try_send(Event::FileProgress(progress));
    })
    .await;
    let event = match result {
        Ok(file) => Event::FileReceived(file),
        Err(error) => {
            warn!(%error, "incoming file failed");
            Event::FileFailed {
                error: transfer_error(error),
            }
        }
    };
    let _ = tx.send(event).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn connect_signaling(
    config: &ProximConfig,
) -> Result<(SignalingClient, SignalingEvents), ProximError> {
    let mut signaling = SignalingConfig::new(config.server_url.clone());
    signaling.connect_timeout = config.server_timeout;
    SignalingClient::connect(signaling)
        .await
        .map_err(signaling_error)
}

fn short(session: &SessionId) -> &str {
    session.as_str().get(..8).unwrap_or("?")
}

fn signaling_error(error: SignalingError) -> ProximError {
    match error {
        SignalingError::Unreachable(reason) => ProximError::ServerUnreachable(reason),
        other => ProximError::Signaling(other.to_string()),
    }
}

fn pairing_error(error: PairingError, timeout: Duration) -> ProximError {
    match error {
        PairingError::Rejected => ProximError::Rejected,
        PairingError::TimedOut => ProximError::TimedOut(timeout),
        PairingError::UnknownCode => ProximError::UnknownCode,
        PairingError::CodeExpired => ProximError::CodeExpired,
        PairingError::CodeUsed => ProximError::CodeUsed,
        PairingError::DesktopOffline => ProximError::DesktopOffline,
        PairingError::Refused(payload) => match handshake::refusal_reason(&payload) {
            Some(RefuseReason::NotTrusted) => ProximError::NotTrusted(
                "the desktop does not trust this device (never paired, or revoked); pair with \
                 a code"
                    .into(),
            ),
            Some(RefuseReason::CodeUsed) => ProximError::CodeUsed,
            _ => ProximError::Rejected,
        },
        PairingError::DesktopGone => ProximError::DesktopGone,
        PairingError::Cancelled => ProximError::Cancelled,
        PairingError::Signaling(e) => signaling_error(e),
        other => ProximError::Signaling(other.to_string()),
    }
}

/// Tell the other device, on the signaling connection, that this one gives up and why. Sent
/// directly (not through the session link), so it goes out before a `leave` that follows.
async fn tell_abort(
    client: &SignalingClient,
    session: &SessionId,
    payload: proxim_protocol::AuthPayload,
) {
    let message = proxim_protocol::ClientMessage::Signal {
        session: session.clone(),
        signal: Signal::Auth { payload },
    };
    if let Err(error) = client.send(message).await {
        debug!(%error, "could not tell the other device why");
    }
}

/// The abort to send when this side detected an interception itself (not when the other side
/// refused first).
fn local_interception<T>(result: &Result<T, ProximError>) -> Option<proxim_protocol::AuthPayload> {
    match result {
        Err(ProximError::Intercepted(reason)) if !reason.starts_with(REFUSED_BY_PEER) => {
            Some(handshake::abort_payload_for(auth::AbortReason::Fingerprint))
        }
        _ => None,
    }
}

/// How a refusal by the other device starts, to tell it from a local detection.
const REFUSED_BY_PEER: &str = "the other device refused";

fn auth_error(error: AuthError) -> ProximError {
    match error {
        AuthError::NotTrusted => ProximError::NotTrusted(error.to_string()),
        AuthError::PeerAborted(reason) => ProximError::Intercepted(format!(
            "the other device could not verify this one ({reason:?}): the code was mistyped, \
             or someone between the devices tried to take part"
        )),
        other => ProximError::Intercepted(other.to_string()),
    }
}

fn peer_error(error: PeerError) -> ProximError {
    match error {
        PeerError::ChannelClosed => ProximError::Closed,
        PeerError::Intercepted(reason) => ProximError::Intercepted(reason),
        PeerError::RefusedByPeer(reason) => ProximError::Intercepted(reason),
        other => ProximError::ConnectionFailed(other.to_string()),
    }
}

fn transfer_error(error: TransferError) -> ProximError {
    match error {
        TransferError::Io(e) => ProximError::Io(e.to_string()),
        other => ProximError::Transfer(other.to_string()),
    }
}
