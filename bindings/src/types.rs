//! Records and enums Kotlin sees: mirrors of core types, with `From` conversions.
//!
//! Durations cross as integers (`*_ms`, `*_micros`) so the Kotlin side needs no `java.time`
//! (older Android API levels lack it).

use std::time::Duration;

use proxim_core::ProximConfig;
use proxim_core::peer;

use crate::error::millis;

/// What a [`ProximCore`](crate::ProximCore) is built from.
#[derive(Debug, Clone, uniffi::Record)]
pub struct CoreConfig {
    /// The signaling server's WebSocket URL, e.g. `wss://proxim.example/ws`.
    pub server_url: String,
    /// The name the desktop shows for this device.
    pub device_name: String,
    /// Where Proxim keeps what must persist: the device id, the identity key and the trusted
    /// desktops (`connect()` needs it). On Android: `context.filesDir`. `None`: a new device id
    /// and identity per process, nothing remembered.
    #[uniffi(default = None)]
    pub data_dir: Option<String>,
    /// Where received files are saved. `None`: `<data_dir>/received`.
    #[uniffi(default = None)]
    pub download_dir: Option<String>,
    /// How long to wait for the desktop user to answer. `None`: core's default (90 s).
    #[uniffi(default = None)]
    pub pair_timeout_ms: Option<u64>,
    /// How long the direct connection may take after pairing. `None`: core's default (15 s).
    #[uniffi(default = None)]
    pub connect_timeout_ms: Option<u64>,
    /// Connect through a TURN relay only (iceTransportPolicy `relay`).
    #[uniffi(default = false)]
    pub force_relay: bool,
    /// Bind only these local IP addresses (e.g. `["127.0.0.1"]`). `None`: every interface.
    #[uniffi(default = None)]
    pub local_ips: Option<Vec<String>>,
    /// Extra trusted root certificates (PEM text) for `turns:` relays with a private CA.
    #[uniffi(default = None)]
    pub turn_roots_pem: Option<String>,
    /// Tell the signaling server how each direct connection went (path, time to connect,
    /// bytes, failure kind; never addresses or names), for its operator's monitoring.
    #[uniffi(default = true)]
    pub report_connections: bool,
}

impl CoreConfig {
    /// The core configuration this describes.
    pub(crate) fn to_core(&self) -> ProximConfig {
        let mut config = ProximConfig::new(self.server_url.clone(), self.device_name.clone());
        if let Some(dir) = &self.data_dir {
            config = config.with_data_dir(dir);
        }
        if let Some(dir) = &self.download_dir {
            config = config.with_download_dir(dir);
        }
        if let Some(ms) = self.pair_timeout_ms {
            config = config.with_pair_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.connect_timeout_ms {
            config = config.with_connect_timeout(Duration::from_millis(ms));
        }
        config = config
            .with_force_relay(self.force_relay)
            .with_report_connections(self.report_connections);
        if let Some(pem) = &self.turn_roots_pem {
            config = config.with_turn_roots_pem(pem.as_bytes());
        }
        if let Some(ips) = &self.local_ips {
            // Checked by `validate` when the core was created.
            let parsed: Vec<std::net::IpAddr> =
                ips.iter().filter_map(|ip| ip.parse().ok()).collect();
            config = config.with_local_ips(parsed);
        }
        config
    }
}

/// Where a pairing attempt is. Delivered to `ProximListener.onPairingState`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum PairingState {
    /// `pair()` or `connect()` started: reaching the desktop through the server (and, for a
    /// code, waiting for its user).
    Pairing,
    /// Paired and the data channel is open; `pair()`/`connect()` returns the connection.
    Connected {
        /// The id `Connection.id()` returns; later connection events carry it.
        connection_id: u64,
        /// The desktop's name.
        peer_name: String,
    },
    /// Pairing failed; `pair()`/`connect()` throws the matching `ProximException`.
    Failed {
        /// Why, in words.
        reason: String,
    },
    /// The coroutine calling `pair()`/`connect()` was cancelled; the desktop sees the request
    /// withdrawn.
    Cancelled,
}

/// How the desktop of a connection was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AuthMethod {
    /// A first pairing with the desktop's code (SPAKE2 over its secret):
    /// `Connection.comparisonCode()` is set.
    Code,
    /// A reconnect to a trusted desktop (`connect()`), by the identity keys of the first
    /// pairing.
    Trusted,
}

impl From<proxim_core::AuthMethod> for AuthMethod {
    fn from(method: proxim_core::AuthMethod) -> Self {
        match method {
            proxim_core::AuthMethod::Trusted => AuthMethod::Trusted,
            // `Code`, or a method added to core later: a first contact, not a remembered one.
            _ => AuthMethod::Code,
        }
    }
}

/// Which side a trusted device is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DeviceRole {
    /// A phone (seen from a desktop).
    Phone,
    /// A desktop (what a phone remembers).
    Desktop,
}

impl From<proxim_core::auth::DeviceRole> for DeviceRole {
    fn from(role: proxim_core::auth::DeviceRole) -> Self {
        match role {
            proxim_core::auth::DeviceRole::Phone => DeviceRole::Phone,
            proxim_core::auth::DeviceRole::Desktop => DeviceRole::Desktop,
        }
    }
}

/// A device this one paired with, from `<dataDir>/trusted_devices.json`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TrustedDevice {
    /// Its device id: what `ProximCore.connect()` takes (a unique prefix also works).
    pub device_id: String,
    /// Its name, as it authenticated itself during pairing.
    pub name: String,
    /// Its identity key, lowercase hex.
    pub public_key: String,
    /// `DESKTOP` for what a phone remembers.
    pub role: DeviceRole,
    /// The signaling server it was paired through, if known.
    pub server_url: Option<String>,
    /// When it was paired, seconds since the Unix epoch.
    pub paired_at: u64,
    /// When it last connected, seconds since the Unix epoch.
    pub last_seen: u64,
}

impl From<proxim_core::TrustedDevice> for TrustedDevice {
    fn from(device: proxim_core::TrustedDevice) -> Self {
        TrustedDevice {
            device_id: device.device_id,
            name: device.name,
            public_key: device.public_key,
            role: device.role.into(),
            server_url: device.server_url,
            paired_at: device.paired_at,
            last_seen: device.last_seen,
        }
    }
}

/// The state of a direct connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Created, nothing happened yet.
    New,
    /// Offer/answer and ICE in progress.
    Connecting,
    /// ICE, DTLS and SCTP are up.
    Connected,
    /// Consent lost; it may come back.
    Disconnected,
    /// It failed and will not come back.
    Failed,
    /// Closed by either side.
    Closed,
}

impl From<peer::ConnectionState> for ConnectionState {
    fn from(state: peer::ConnectionState) -> Self {
        match state {
            peer::ConnectionState::New => ConnectionState::New,
            peer::ConnectionState::Connecting => ConnectionState::Connecting,
            peer::ConnectionState::Connected => ConnectionState::Connected,
            peer::ConnectionState::Disconnected => ConnectionState::Disconnected,
            peer::ConnectionState::Failed => ConnectionState::Failed,
            peer::ConnectionState::Closed => ConnectionState::Closed,
            // A state added to core later: the closest safe reading.
            _ => ConnectionState::Connecting,
        }
    }
}

/// The kind of network path (ICE candidate type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PathType {
    /// Direct between local interface addresses (same network).
    Host,
    /// Through a NAT, using the address a STUN server saw (server reflexive).
    Srflx,
    /// Through a NAT, using an address learned from a connectivity check (peer reflexive).
    Prflx,
    /// Through a TURN relay.
    Relay,
}

impl From<peer::CandidateKind> for PathType {
    fn from(kind: peer::CandidateKind) -> Self {
        match kind {
            peer::CandidateKind::Host => PathType::Host,
            peer::CandidateKind::Srflx => PathType::Srflx,
            peer::CandidateKind::Prflx => PathType::Prflx,
            peer::CandidateKind::Relay => PathType::Relay,
            // A kind added to core later: report the most conservative path.
            _ => PathType::Relay,
        }
    }
}

/// One end of the selected candidate pair.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CandidateInfo {
    /// Host, srflx, prflx or relay.
    pub kind: PathType,
    /// `ip:port`.
    pub address: String,
    /// `udp` or `tcp`.
    pub protocol: String,
    /// For a local relay candidate, how this device reaches the TURN server: `udp`, `tcp` or
    /// `tls`.
    pub relay_protocol: Option<String>,
}

impl From<peer::CandidateInfo> for CandidateInfo {
    fn from(info: peer::CandidateInfo) -> Self {
        CandidateInfo {
            kind: info.kind.into(),
            address: info.address.to_string(),
            protocol: info.protocol,
            relay_protocol: info.relay_protocol.map(|t| t.to_string()),
        }
    }
}

/// A snapshot of a connection's statistics.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConnectionStats {
    /// The path in use: relay if either side is relayed, else srflx/prflx, else host.
    pub path: PathType,
    /// The local end of the selected pair.
    pub local: CandidateInfo,
    /// The remote end of the selected pair.
    pub remote: CandidateInfo,
    /// The latest round-trip time measured by ICE, in microseconds, if any.
    pub rtt_micros: Option<u64>,
    /// Data channel payload bytes sent.
    pub bytes_sent: u64,
    /// Data channel payload bytes received.
    pub bytes_received: u64,
    /// Data channel messages sent.
    pub messages_sent: u64,
    /// Data channel messages received.
    pub messages_received: u64,
}

impl From<peer::ConnectionStats> for ConnectionStats {
    fn from(stats: peer::ConnectionStats) -> Self {
        ConnectionStats {
            path: stats.path().into(),
            rtt_micros: stats
                .rtt
                .map(|rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            messages_sent: stats.messages_sent,
            messages_received: stats.messages_received,
            local: stats.local.into(),
            remote: stats.remote.into(),
        }
    }
}

/// Which way a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TransferDirection {
    /// This device sends (`Connection.sendFile`).
    Sending,
    /// The other device sends; the file lands in the download directory.
    Receiving,
}

/// How far a file transfer is.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TransferProgress {
    /// The file's name.
    pub name: String,
    /// Bytes done so far.
    pub bytes_done: u64,
    /// The file's size.
    pub total: u64,
}

impl From<proxim_core::transfer::TransferProgress> for TransferProgress {
    fn from(progress: proxim_core::transfer::TransferProgress) -> Self {
        TransferProgress {
            name: progress.name,
            bytes_done: progress.bytes_done,
            total: progress.total,
        }
    }
}

/// A file that arrived and whose SHA-256 matched.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReceivedFile {
    /// Where it was saved.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Bytes kept from an earlier, interrupted attempt (not received again).
    pub resumed_from: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl From<proxim_core::transfer::ReceivedFile> for ReceivedFile {
    fn from(file: proxim_core::transfer::ReceivedFile) -> Self {
        ReceivedFile {
            path: file.path.display().to_string(),
            bytes: file.bytes,
            resumed_from: file.resumed_from,
            sha256: file.sha256,
        }
    }
}

/// The outcome of `Connection.sendFile`: the other side verified the SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FileReport {
    /// The file's name as sent.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Bytes the receiver already held from an earlier, interrupted attempt: not sent again.
    pub resumed_from: u64,
    /// How long sending took, in milliseconds.
    pub elapsed_ms: u64,
    /// Its SHA-256, lowercase hex, as verified by the receiver.
    pub sha256: String,
}

impl From<proxim_core::transfer::FileReport> for FileReport {
    fn from(report: proxim_core::transfer::FileReport) -> Self {
        FileReport {
            name: report.name,
            bytes: report.bytes,
            resumed_from: report.resumed_from,
            elapsed_ms: millis(report.elapsed),
            sha256: report.sha256,
        }
    }
}

/// What happens on an open connection. Delivered to `ProximListener.onConnectionEvent`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionEvent {
    /// The connection state changed.
    StateChanged {
        /// The previous state.
        old: ConnectionState,
        /// The new state.
        new: ConnectionState,
    },
    /// A text message arrived.
    TextReceived {
        /// The message.
        text: String,
    },
    /// A binary message arrived.
    BytesReceived {
        /// The message.
        bytes: Vec<u8>,
    },
    /// A file transfer progressed (advisory: updates may be skipped, the last one is sent).
    FileProgress {
        /// Sending or receiving.
        direction: TransferDirection,
        /// How far it is.
        progress: TransferProgress,
    },
    /// An incoming file arrived and its SHA-256 matched.
    FileReceived {
        /// The file.
        file: ReceivedFile,
    },
    /// A file transfer failed.
    FileFailed {
        /// Sending or receiving.
        direction: TransferDirection,
        /// Why, in words.
        reason: String,
    },
    /// The path in use changed (first once the connection is up): `stats.path` is HOST,
    /// SRFLX, PRFLX or RELAY, `stats.local.relayProtocol` how a relay is reached.
    PathChanged {
        /// The connection's statistics at that moment.
        stats: ConnectionStats,
    },
    /// The connection looks for a new path (an ICE restart: the network changed, the path
    /// went silent, or the other device restarted); channels and transfers stay. A
    /// `PathChanged` follows once a path is found.
    Reconnecting {
        /// 1, 2, …: attempts since the path was last good.
        attempt: u32,
        /// Milliseconds since the first attempt started.
        since_ms: u64,
        /// Why, in words.
        reason: String,
    },
    /// The other side opened an extra data channel (Proxim does not read it yet).
    ChannelOpened {
        /// Its label.
        label: String,
    },
    /// The connection closed; no more events follow for it.
    Closed {
        /// Why.
        reason: String,
    },
}

impl ConnectionEvent {
    /// The mirror of a core event, or `None` for an event this version does not know.
    pub(crate) fn from_core(event: proxim_core::Event) -> Option<Self> {
        use proxim_core::Event;
        Some(match event {
            Event::Message(peer::Payload::Text(text)) => ConnectionEvent::TextReceived { text },
            Event::Message(peer::Payload::Binary(bytes)) => ConnectionEvent::BytesReceived {
                bytes: bytes.to_vec(),
            },
            Event::Message(_) => return None,
            Event::ChannelOpened(channel) => ConnectionEvent::ChannelOpened {
                label: channel.label().to_owned(),
            },
            Event::FileProgress(progress) => ConnectionEvent::FileProgress {
                direction: TransferDirection::Receiving,
                progress: progress.into(),
            },
            Event::FileReceived(file) => ConnectionEvent::FileReceived { file: file.into() },
            Event::FileFailed { error } => ConnectionEvent::FileFailed {
                direction: TransferDirection::Receiving,
                reason: error.to_string(),
            },
            Event::StateChanged { old, new } => ConnectionEvent::StateChanged {
                old: old.into(),
                new: new.into(),
            },
            Event::PathChanged(stats) => ConnectionEvent::PathChanged {
                stats: stats.into(),
            },
            Event::Reconnecting {
                attempt,
                since,
                reason,
            } => ConnectionEvent::Reconnecting {
                attempt,
                since_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                reason,
            },
            Event::Closed { reason } => ConnectionEvent::Closed { reason },
            _ => return None,
        })
    }
}
