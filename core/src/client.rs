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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxim_protocol::{PairOutcome, PeerDevice, RoutingCode, SessionId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::pairing::{self, DesktopRegistration, PairedSession, PairingError};
use crate::peer::{
    self, ChannelOptions, ChannelSender, ConnectionEvent, ConnectionState, ConnectionStats,
    DataChannel, Payload, PeerConfig, PeerError, PeerRole,
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
/// Resolves once the data channel is open. Dropping the future cancels the pairing: the desktop
/// is told the request was withdrawn.
pub async fn pair(config: &ProximConfig, code: &str) -> Result<Connection, ProximError> {
    let code =
        RoutingCode::parse_typed(code).map_err(|e| ProximError::InvalidCode(e.to_string()))?;
    let me = config.device()?;
    let span = info_span!("pair", code = %code.redacted(), device = %me.device_id);
    async move {
        let started = Instant::now();
        let (client, mut events) = connect_signaling(config).await?;
        let paired = pairing::pair_as_phone(&client, &mut events, code, me, config.pair_timeout)
            .await
            .map_err(|e| pairing_error(e, config.pair_timeout))?;
        let paired_at = started.elapsed();
        info!(peer = %paired.peer.device_name, ?paired_at, "paired; connecting");
        let connection = Connection::establish(
            config,
            PeerRole::Offerer,
            client.welcome().ice_servers,
            paired,
        )
        .await;
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
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------------------------
// Desktop side
// ---------------------------------------------------------------------------------------------

/// What happens on the desktop side.
#[derive(Debug)]
#[non_exhaustive]
pub enum DesktopEvent {
    /// A phone asks to pair; answer with [`Desktop::accept`] or [`Desktop::reject`].
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
    /// A phone paired and its direct connection is open.
    Connected(Connection),
    /// A phone paired but the direct connection could not be made.
    ConnectionFailed {
        /// The phone.
        peer: PeerDevice,
        /// Why.
        error: ProximError,
    },
    /// The pairing code changed (after the server connection was re-established).
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
    code: String,
    config: ProximConfig,
    connected_tx: mpsc::Sender<DesktopEvent>,
    connected_rx: mpsc::Receiver<DesktopEvent>,
}

impl Desktop {
    /// Connect to the signaling server and register; resolves once the pairing code is known.
    pub async fn register(config: ProximConfig) -> Result<Desktop, ProximError> {
        let me = config.device()?;
        let (client, events) = connect_signaling(&config).await?;
        let registration = DesktopRegistration::register(client, events, me)
            .await
            .map_err(|e| pairing_error(e, config.pair_timeout))?;
        let code = registration.code().as_str().to_owned();
        let (connected_tx, connected_rx) = mpsc::channel(16);
        info!(code = %registration.code().redacted(), "desktop registered");
        Ok(Desktop {
            registration,
            code,
            config,
            connected_tx,
            connected_rx,
        })
    }

    /// The pairing code to show the user.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The next thing that happens. `None` once the desktop is closed.
    ///
    /// Cancel-safe: use it in `select!`.
    pub async fn next_event(&mut self) -> Option<DesktopEvent> {
        loop {
            let event = tokio::select! {
                Some(ready) = self.connected_rx.recv() => return Some(ready),
                event = self.registration.next() => event?,
            };
            match event {
                pairing::DesktopEvent::Prompt {
                    session,
                    peer,
                    expires_in,
                } => {
                    return Some(DesktopEvent::Prompt {
                        session,
                        peer,
                        expires_in,
                    });
                }
                pairing::DesktopEvent::PromptClosed { session, outcome } => {
                    return Some(DesktopEvent::PromptClosed { session, outcome });
                }
                pairing::DesktopEvent::Paired(paired) => self.spawn_connect(paired),
                pairing::DesktopEvent::CodeChanged(code) => {
                    self.code = code.as_str().to_owned();
                    return Some(DesktopEvent::CodeChanged(self.code.clone()));
                }
                pairing::DesktopEvent::Disconnected => return Some(DesktopEvent::ServerLost),
                pairing::DesktopEvent::Reconnected => {
                    return Some(DesktopEvent::ServerReconnected);
                }
            }
        }
    }

    /// Accept a prompt; a [`DesktopEvent::Connected`] follows once the channel is open.
    pub async fn accept(&mut self, session: &SessionId) -> Result<(), ProximError> {
        self.registration
            .accept(session)
            .await
            .map_err(|e| pairing_error(e, self.config.pair_timeout))
    }

    /// Reject a prompt.
    pub async fn reject(&mut self, session: &SessionId) -> Result<(), ProximError> {
        self.registration
            .reject(session)
            .await
            .map_err(|e| pairing_error(e, self.config.pair_timeout))
    }

    /// Unregister and disconnect from the signaling server. Open connections stay open.
    pub async fn close(self) {
        self.registration.client().close().await;
    }

    /// Establish the direct connection in the background; the result comes out of next_event.
    fn spawn_connect(&self, paired: PairedSession) {
        let config = self.config.clone();
        let ice_servers = self.registration.client().welcome().ice_servers;
        let tx = self.connected_tx.clone();
        let peer = paired.peer.clone();
        let span =
            info_span!("connect", session = %short(&paired.session), peer = %peer.device_name);
        tokio::spawn(
            async move {
                let event =
                    match Connection::establish(&config, PeerRole::Answerer, ice_servers, paired)
                        .await
                    {
                        Ok(connection) => DesktopEvent::Connected(connection),
                        Err(error) => {
                            warn!(%error, "direct connection failed");
                            DesktopEvent::ConnectionFailed { peer, error }
                        }
                    };
                let _ = tx.send(event).await;
            }
            .instrument(span),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// What happens on an open [`Connection`].
#[derive(Debug)]
#[non_exhaustive]
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
        PairingError::DesktopGone => ProximError::DesktopGone,
        PairingError::Cancelled => ProximError::Cancelled,
        PairingError::Signaling(e) => signaling_error(e),
        other => ProximError::Signaling(other.to_string()),
    }
}

fn peer_error(error: PeerError) -> ProximError {
    match error {
        PeerError::ChannelClosed => ProximError::Closed,
        other => ProximError::ConnectionFailed(other.to_string()),
    }
}

fn transfer_error(error: TransferError) -> ProximError {
    match error {
        TransferError::Io(e) => ProximError::Io(e.to_string()),
        other => ProximError::Transfer(other.to_string()),
    }
}
