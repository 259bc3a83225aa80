//! [`Connection`]: an open, authenticated direct connection to the paired device, and the
//! event pump that turns the peer's channel and events into [`Event`]s (receiving incoming
//! files on the way).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxim_protocol::{IceServer, PeerDevice, SessionId};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::report::{CLOSED_LOCALLY, CloseReport, ReportSink, STATS_REFRESH, send_closed};
use super::short;
use crate::auth::{AuthMethod, Verified};
use crate::pairing::PairedSession;
use crate::peer::{
    self, Certificate, ChannelOptions, ChannelSender, ConnectionEvent, ConnectionState,
    ConnectionStats, DataChannel, Payload, PeerConfig, PeerError, PeerRole,
};
use crate::signaling::{SignalingClient, SignalingEvent, SignalingEvents};
use crate::transfer::{self, FileReport, ReceivedFile, TransferProgress};
use crate::{ProximConfig, ProximError};

/// How many events may wait for the app before the connection stops reading from the network.
const EVENT_QUEUE: usize = 256;
/// After a network change, the signaling server must answer within this long, or its
/// connection counts as lost and is replaced.
const NETWORK_CHANGE_PROBE: Duration = Duration::from_secs(3);

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
    /// The connection is looking for a new path (an ICE restart: the network changed, the
    /// path went silent, or the other device restarted). Channels and transfers stay; a
    /// [`Event::PathChanged`] follows once a path is found.
    Reconnecting {
        /// 1, 2, …: attempts since the path was last good.
        attempt: u32,
        /// When the first attempt started.
        since: Instant,
        /// Why.
        reason: String,
    },
    /// The connection is closed; no more events follow.
    Closed {
        /// Why.
        reason: String,
    },
}

/// How long setting up a connection took, measured from the start of
/// [`pair`](crate::pair) (phone) or from the pairing result (desktop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupTimings {
    /// Until the desktop accepted (zero on the desktop side).
    pub paired: Duration,
    /// Until the data channel was open.
    pub channel_open: Duration,
}

/// An open direct connection to the paired device.
///
/// Every method takes `&self`: one task can wait in [`Connection::next_event`] while others
/// send.
#[derive(Debug)]
pub struct Connection {
    timings: SetupTimings,
    verified: Verified,
    peer: PeerDevice,
    session: SessionId,
    inner: peer::PeerConnection,
    sender: ChannelSender,
    /// The pump's output; locked only while one caller waits for the next event.
    events: Mutex<mpsc::Receiver<Event>>,
    pump: JoinHandle<()>,
    /// When the default channel opened.
    up_at: Instant,
    /// The `closed` report, when this side reports on signaling (the desktop).
    close_report: Arc<CloseReport>,
    /// The phone's signaling connection, kept for ICE restarts while this connection lives;
    /// dropping this ends it (see [`Connection::stay_on_signaling`]).
    signaling: Option<oneshot::Sender<()>>,
    /// The signaling connection restarts are signaled on, probed when the network changes.
    signaling_client: Option<SignalingClient>,
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
        Ok(self.sender.send(Payload::Text(text.into())).await?)
    }

    /// Send a binary message on the default channel. Waits when the channel's buffer is full.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), ProximError> {
        Ok(self.sender.send(Payload::Binary(bytes.into())).await?)
    }

    /// Send a file; resolves once the other side has verified its SHA-256.
    pub async fn send_file(
        &self,
        path: &Path,
        progress: impl FnMut(TransferProgress) + Send,
    ) -> Result<FileReport, ProximError> {
        Ok(transfer::send_file(&self.inner, path, progress).await?)
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
        Ok(self.inner.open_channel(label, options).await?)
    }

    /// The next event. `None` after [`Event::Closed`].
    ///
    /// Cancel-safe. Concurrent callers take turns: each event goes to one of them.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// Current statistics: the path in use (host, srflx, relay), RTT, bytes.
    pub async fn stats(&self) -> Result<ConnectionStats, ProximError> {
        Ok(self.inner.stats().await?)
    }

    /// The device's network changed (Wi-Fi to cellular, an address came or went; on Android,
    /// call it from `ConnectivityManager.NetworkCallback`): restart ICE over signaling on the
    /// addresses there are now, keeping the channels and transfers. [`Event::Reconnecting`]
    /// and [`Event::PathChanged`] follow. Fails when signaling is gone (the path in use then
    /// stays as long as it works) or the connection is not up.
    pub async fn network_changed(&self) -> Result<(), ProximError> {
        Ok(network_changed(&self.inner, self.signaling_client.as_ref()).await?)
    }

    /// For apps without a network callback (the desktop CLI): look at the local addresses
    /// every `interval` and call [`Self::network_changed`] when they change (an interface or
    /// address came or went). Stops when the connection ends. A connection bound to fixed
    /// addresses ([`ProximConfig::local_ips`]) has nothing to watch.
    pub fn watch_network(&self, interval: Duration) {
        let peer = self.inner.clone();
        let client = self.signaling_client.clone();
        let task = async move {
            let mut last = peer::current_local_ips();
            loop {
                tokio::select! {
                    () = peer.wait_ended() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let now = peer::current_local_ips();
                if now == last {
                    continue;
                }
                info!(before = ?last, now = ?now, "local addresses changed");
                last = now;
                if let Err(error) = network_changed(&peer, client.as_ref()).await {
                    warn!(%error, "no ICE restart after the network change");
                }
            }
        };
        tokio::spawn(task.instrument(info_span!("network-watch", session = %short(&self.session))));
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state()
    }

    /// Close the connection. Idempotent.
    pub async fn close(&self) {
        self.close_report.refresh(&self.inner).await;
        self.close_report.closing_locally();
        self.inner.close().await;
        send_closed(&self.close_report, CLOSED_LOCALLY).await;
    }

    /// What the other device proved (for the trust list).
    pub(super) fn verified(&self) -> &Verified {
        &self.verified
    }

    /// The peer connection (for a stats snapshot).
    pub(super) fn peer(&self) -> &peer::PeerConnection {
        &self.inner
    }

    /// Send a `closed` report through `sink` when this connection ends (once; best effort).
    pub(super) fn report_close_to(&self, sink: ReportSink) {
        self.close_report.arm(sink, self.up_at);
    }

    /// Keep `client` (the phone's signaling connection) open while this connection lives, so
    /// that ICE restarts can be signaled; it `leave`s the session and closes when the
    /// connection ends or is dropped. Its events are only logged.
    pub(super) fn stay_on_signaling(
        &mut self,
        client: SignalingClient,
        mut events: SignalingEvents,
    ) {
        let (guard, mut released) = oneshot::channel::<()>();
        self.signaling = Some(guard);
        self.signaling_client = Some(client.clone());
        let peer = self.inner.clone();
        let session = self.session.clone();
        let task = async move {
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(SignalingEvent::Closed) | None => return,
                        Some(event) => debug!(?event, "signaling, while connected"),
                    },
                    () = peer.wait_ended() => break,
                    _ = &mut released => break,
                }
            }
            client.close_session(&session);
            client.close().await;
            debug!("connection over: signaling closed");
        };
        tokio::spawn(
            task.instrument(info_span!("connection-signaling", session = %short(&self.session))),
        );
    }

    /// The signaling connection this side's restarts go out on (the desktop's registration),
    /// to probe when the network changes.
    pub(super) fn attach_signaling(&mut self, client: &SignalingClient) {
        self.signaling_client = Some(client.clone());
    }

    /// Record the phone's timings, measured from the start of the pairing.
    pub(super) fn set_timings(&mut self, timings: SetupTimings) {
        self.timings = timings;
    }

    /// Open the peer connection for a paired session and start the event pump.
    pub(super) async fn establish(
        config: &ProximConfig,
        role: PeerRole,
        ice_servers: Vec<IceServer>,
        paired: PairedSession,
        certificate: Certificate,
        verified: Verified,
    ) -> Result<Connection, PeerError> {
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
        let established = peer::PeerConnection::establish(peer_config, link).await?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let sender = established.channel.sender();
        let close_report = Arc::new(CloseReport::default());
        let pump = tokio::spawn(
            pump(
                established.channel,
                established.events,
                Reporting {
                    peer: established.connection.clone(),
                    close: close_report.clone(),
                },
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
            events: Mutex::new(events),
            pump,
            up_at: Instant::now(),
            close_report,
            signaling: None,
            signaling_client: None,
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The pump ends when the channels close; the driver stops when its last handle drops.
        self.pump.abort();
        // Dropped while up: a local close. The report goes out on its own (best effort).
        if self.close_report.is_armed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let close = self.close_report.clone();
            runtime.spawn(async move { send_closed(&close, CLOSED_LOCALLY).await });
        }
    }
}

/// What the pump needs for the `closed` report: the peer (for stats snapshots, since the
/// driver is gone once the close is seen) and the shared report.
struct Reporting {
    peer: peer::PeerConnection,
    close: Arc<CloseReport>,
}

/// Move messages and events from the peer to the app, and receive incoming files. When the
/// connection ends, the `closed` report (if armed) goes out before [`Event::Closed`].
async fn pump(
    mut channel: DataChannel,
    mut events: peer::ConnectionEvents,
    reporting: Reporting,
    download_dir: PathBuf,
    tx: mpsc::Sender<Event>,
) {
    let mut channel_open = true;
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + STATS_REFRESH, STATS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = refresh.tick() => {
                reporting.close.refresh(&reporting.peer).await;
                continue;
            }
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
                    tokio::spawn(receive(
                        reporting.peer.clone(),
                        incoming,
                        download_dir.clone(),
                        tx.clone(),
                    ));
                    continue;
                }
                Some(ConnectionEvent::ChannelOpened(incoming)) => Event::ChannelOpened(incoming),
                Some(ConnectionEvent::StateChanged { old, new }) => Event::StateChanged { old, new },
                Some(ConnectionEvent::PathChanged(stats)) => Event::PathChanged(stats),
                Some(ConnectionEvent::Reconnecting { attempt, since, reason }) => {
                    Event::Reconnecting { attempt, since, reason }
                }
                Some(ConnectionEvent::Closed { reason, stats }) => {
                    if let Some(stats) = stats {
                        reporting.close.set_final(*stats);
                    }
                    send_closed(&reporting.close, &reason).await;
                    let _ = tx.send(Event::Closed { reason }).await;
                    return;
                }
                None => {
                    let reason = "connection dropped".to_owned();
                    send_closed(&reporting.close, &reason).await;
                    let _ = tx.send(Event::Closed { reason }).await;
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

/// The network changed: probe the signaling connection and restart ICE. The signaling socket
/// may have gone with the old network: it is checked now rather than at its heartbeat timeout
/// (a lost one reconnects and resumes the session, and the restart's offer follows).
async fn network_changed(
    peer: &peer::PeerConnection,
    signaling: Option<&SignalingClient>,
) -> Result<(), PeerError> {
    if let Some(client) = signaling {
        client.probe(NETWORK_CHANGE_PROBE);
    }
    peer.network_changed().await
}

/// Receive one incoming file and report how it went.
async fn receive(
    peer: peer::PeerConnection,
    channel: DataChannel,
    dir: PathBuf,
    tx: mpsc::Sender<Event>,
) {
    let progress_tx = tx.clone();
    let received = transfer::receive_file(channel, &dir, move |progress| {
        // Progress is advisory: when the app is behind, skip an update rather than wait.
        let _ = progress_tx.try_send(Event::FileProgress(progress));
    })
    .await;
    let result = transfer::explain_closed(&peer, received).await;
    let event = match result {
        Ok(file) => Event::FileReceived(file),
        Err(error) => {
            warn!(%error, "incoming file failed");
            Event::FileFailed {
                error: error.into(),
            }
        }
    };
    let _ = tx.send(event).await;
}
