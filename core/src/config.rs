//! [`ProximConfig`]: what an app tells Proxim once, for both roles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxim_protocol::{DeviceId, DeviceName, PeerDevice};

use crate::ProximError;

/// Configuration shared by the desktop and the phone roles.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProximConfig {
    /// The signaling server's WebSocket URL, e.g. `ws://127.0.0.1:8787/ws`.
    pub server_url: String,
    /// The name the other device shows for this one.
    pub device_name: String,
    /// A stable device id. When `None`, it is read from (or created in) `data_dir`, or made up
    /// for this process when there is no data directory.
    pub device_id: Option<String>,
    /// Where Proxim keeps what must persist: the device id, the identity key and the trusted
    /// devices. Without one, nothing is remembered and every connection needs a code.
    pub data_dir: Option<PathBuf>,
    /// Where received files are saved. Defaults to `<data_dir>/received`, else the current
    /// directory.
    pub download_dir: Option<PathBuf>,
    /// How long a phone waits for the desktop user to answer.
    pub pair_timeout: Duration,
    /// How long establishing the direct connection may take after pairing.
    pub connect_timeout: Duration,
    /// How long the first connection to the signaling server may take.
    pub server_timeout: Duration,
    /// Offer loopback host candidates (useful for two peers on one machine).
    pub include_loopback: bool,
    /// Gather host candidates only on these local addresses (`None`: every usable interface).
    pub local_ips: Option<Vec<std::net::IpAddr>>,
    /// Connect through a TURN relay only (iceTransportPolicy `relay`): hides this device's
    /// addresses from the peer; fails when the server offers no working relay.
    pub force_relay: bool,
    /// Extra trusted root certificates (PEM) for `turns:` relays with a private CA.
    pub turn_roots_pem: Option<Vec<u8>>,
    /// Report each direct connection's outcome to the signaling server (`connection_report`,
    /// for the operator): the path kind (host, srflx, prflx, relay), the relay protocol, the
    /// time to connect, the RTT, and once it ends the duration and byte counts, or a short
    /// failure kind (`ice_failed`, `timeout`…). Never addresses, names or free text. Best
    /// effort: a report never delays or fails a connection. Default `true`.
    pub report_connections: bool,
}

impl ProximConfig {
    /// A configuration with defaults for everything but the server and the device name.
    pub fn new(server_url: impl Into<String>, device_name: impl Into<String>) -> Self {
        ProximConfig {
            server_url: server_url.into(),
            device_name: device_name.into(),
            device_id: None,
            data_dir: None,
            download_dir: None,
            pair_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(15),
            server_timeout: Duration::from_secs(10),
            include_loopback: true,
            local_ips: None,
            force_relay: false,
            turn_roots_pem: None,
            report_connections: true,
        }
    }

    /// Connect through a TURN relay only (see [`Self::force_relay`]).
    pub fn with_force_relay(mut self, force_relay: bool) -> Self {
        self.force_relay = force_relay;
        self
    }

    /// Trust these PEM root certificates for `turns:` relays, beyond the webpki roots.
    pub fn with_turn_roots_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.turn_roots_pem = Some(pem.into());
        self
    }

    /// Turn connection reports to the signaling server on or off (see
    /// [`Self::report_connections`]).
    pub fn with_report_connections(mut self, report: bool) -> Self {
        self.report_connections = report;
        self
    }

    /// Gather host candidates only on these local addresses.
    pub fn with_local_ips(mut self, ips: Vec<std::net::IpAddr>) -> Self {
        self.local_ips = Some(ips);
        self
    }

    /// Use only the loopback interface: both devices on this machine, no traffic elsewhere
    /// (demos, tests, benchmarks).
    pub fn loopback_only(mut self) -> Self {
        self.include_loopback = true;
        self.local_ips = Some(vec![std::net::Ipv4Addr::LOCALHOST.into()]);
        self
    }

    /// Set the data directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Set the directory received files are saved in.
    pub fn with_download_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.download_dir = Some(dir.into());
        self
    }

    /// Set a fixed device id.
    pub fn with_device_id(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// Set how long the phone waits for the desktop user.
    pub fn with_pair_timeout(mut self, timeout: Duration) -> Self {
        self.pair_timeout = timeout;
        self
    }

    /// Set how long establishing the direct connection may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Check the configuration and resolve this device's identity.
    pub(crate) fn device(&self) -> Result<PeerDevice, ProximError> {
        let device_name = DeviceName::new(self.device_name.clone())
            .map_err(|e| ProximError::InvalidConfig(e.to_string()))?;
        let device_id = match (&self.device_id, &self.data_dir) {
            (Some(id), _) => id.clone(),
            (None, Some(dir)) => load_or_create_device_id(dir)?,
            (None, None) => random_device_id(),
        };
        let device_id =
            DeviceId::new(device_id).map_err(|e| ProximError::InvalidConfig(e.to_string()))?;
        Ok(PeerDevice {
            device_id,
            device_name,
        })
    }

    /// This device's identity key: from the data directory (created on first use), or a
    /// fresh in-memory one when there is none (then nothing is remembered).
    pub fn identity(&self) -> Result<crate::auth::Identity, ProximError> {
        match &self.data_dir {
            Some(dir) => crate::auth::Identity::load_or_create(dir)
                .map_err(|e| ProximError::Io(e.to_string())),
            None => Ok(crate::auth::Identity::ephemeral()),
        }
    }

    /// The trusted-device list in the data directory (remembers nothing without one).
    pub fn trust_store(&self) -> crate::auth::TrustStore {
        match &self.data_dir {
            Some(dir) => crate::auth::TrustStore::open(dir),
            None => crate::auth::TrustStore::none(),
        }
    }

    /// The directory received files go to.
    pub fn resolved_download_dir(&self) -> PathBuf {
        match (&self.download_dir, &self.data_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(data)) => data.join("received"),
            (None, None) => PathBuf::from("."),
        }
    }
}

fn random_device_id() -> String {
    format!("dev-{}", hex::encode(rand::random::<[u8; 8]>()))
}

fn load_or_create_device_id(dir: &Path) -> Result<String, ProximError> {
    let path = dir.join("device_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if DeviceId::new(id.trim()).is_ok() => return Ok(id.trim().to_owned()),
        Ok(_) => tracing::warn!(path = %path.display(), "device id file is invalid; replacing it"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ProximError::Io(format!("reading {}: {e}", path.display()))),
    }
    let id = random_device_id();
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, &id))
        .map_err(|e| ProximError::Io(format!("writing {}: {e}", path.display())))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_persists_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let config = ProximConfig::new("ws://127.0.0.1:1/ws", "Desk").with_data_dir(dir.path());
        let first = config.device().unwrap();
        let second = config.device().unwrap();
        assert_eq!(first.device_id, second.device_id);
        assert_eq!(first.device_name.as_str(), "Desk");
    }

    #[test]
    fn a_bad_device_name_is_a_config_error() {
        let config = ProximConfig::new("ws://x/ws", "");
        assert!(matches!(
            config.device(),
            Err(ProximError::InvalidConfig(_))
        ));
    }
}
