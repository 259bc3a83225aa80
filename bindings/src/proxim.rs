//! [`ProximCore`]: the entry point Kotlin creates from a [`CoreConfig`].

use std::sync::Arc;

use proxim_core::ProximError;
use tracing::{Instrument, Span, info_span};

use crate::ProximException;
use crate::connection::Connection;
use crate::listener::{Dispatcher, ProximListener};
use crate::runtime::run;
use crate::types::{CoreConfig, PairingState, TrustedDevice};

/// Proxim for one app (or one test): pairs with desktops and hands out [`Connection`]s.
///
/// Create it once with the server URL, the device name and a data directory, then call
/// `pair(code)` (first time) or `connect(desktopId)` (a trusted desktop) from a coroutine. Any number may exist in one process; they share one runtime.
#[derive(Debug, uniffi::Object)]
pub struct ProximCore {
    config: CoreConfig,
    events: Dispatcher,
}

#[uniffi::export(async_runtime = "tokio")]
impl ProximCore {
    /// Check `config` and start. `listener` receives pairing states and connection events on a
    /// Proxim thread (see `ProximListener`).
    #[uniffi::constructor(default(listener = None))]
    pub fn new(
        config: CoreConfig,
        listener: Option<Arc<dyn ProximListener>>,
    ) -> Result<Arc<ProximCore>, ProximException> {
        validate(&config)?;
        // Start the runtime now so that a failure shows here rather than on the first pair().
        crate::runtime::handle()?;
        Ok(Arc::new(ProximCore {
            events: Dispatcher::start(listener)?,
            config,
        }))
    }

    /// The configuration this core was made from.
    pub fn config(&self) -> CoreConfig {
        self.config.clone()
    }

    /// Pair with the desktop showing `code` and open a direct connection to it.
    ///
    /// `code` is what the desktop shows: the short code (`K7P2QX-4HT9M`) or the
    /// `proxim://pair?…` link of its QR code (whose server replaces `CoreConfig.serverUrl`).
    /// Only the routing part reaches the server; the secret authenticates both devices, so
    /// `connection.comparisonCode()` matches the desktop's. With a `dataDir`, the desktop is
    /// remembered: `connect()` reaches it later without a code.
    ///
    /// Returns once the data channel is open. Throws `ProximException` (`InvalidCode`,
    /// `UnknownCode`, `CodeUsed`, `CodeExpired`, `Intercepted`, `Rejected`, `TimedOut`,
    /// `ServerUnreachable`, `ConnectionFailed`…). A wrong secret is `Intercepted` and burns the
    /// desktop's code: it shows a new one. Cancelling the calling coroutine cancels the
    /// pairing: the desktop sees the request withdrawn, nothing keeps running, and the listener
    /// gets `PairingState.Cancelled`.
    pub async fn pair(&self, code: String) -> Result<Arc<Connection>, ProximException> {
        let config = self.config.to_core();
        let span = info_span!("ffi_pair", device = %self.config.device_name);
        self.open(span, async move { proxim_core::pair(&config, &code).await })
            .await
    }

    /// Reconnect to a desktop paired before (see `trustedDevices()`), without a code.
    ///
    /// `desktopId` is its `TrustedDevice.deviceId` or a unique prefix of it; needs the
    /// `dataDir` of the pairing. Reports to the listener and is cancelled exactly like
    /// `pair()`. Throws `ProximException.NotTrusted` when this device does not know that
    /// desktop or the desktop revoked it, `DesktopOffline` when it is not connected to the
    /// server, `Intercepted` when the answer is not signed by the remembered key, and the
    /// network errors of `pair()`.
    pub async fn connect(&self, desktop_id: String) -> Result<Arc<Connection>, ProximException> {
        let config = self.config.to_core();
        let span =
            info_span!("ffi_connect", device = %self.config.device_name, desktop = %desktop_id);
        self.open(span, async move {
            proxim_core::connect(&config, &desktop_id).await
        })
        .await
    }

    /// The desktops this device paired with, from `<dataDir>/trusted_devices.json` (empty
    /// without a `dataDir`). Reads the file: call it off the main thread. Throws
    /// `ProximException.Io` when the file cannot be read.
    pub fn trusted_devices(&self) -> Result<Vec<TrustedDevice>, ProximException> {
        let devices = proxim_core::trusted_devices(&self.config.to_core())?;
        Ok(devices.into_iter().map(TrustedDevice::from).collect())
    }

    /// Forget the trusted device `id` (its device id or a unique prefix): `connect()` to it
    /// fails with `NotTrusted` until a new pairing with a code. Returns what was removed
    /// (empty: no such device). Writes the file: call it off the main thread. Throws
    /// `ProximException.Io` when the file cannot be read or written.
    pub fn revoke_device(&self, id: String) -> Result<Vec<TrustedDevice>, ProximException> {
        let removed = proxim_core::revoke_device(&self.config.to_core(), &id)?;
        Ok(removed.into_iter().map(TrustedDevice::from).collect())
    }
}

impl ProximCore {
    /// Run a pairing or reconnect on the runtime and report it to the listener: `Pairing`,
    /// then `Connected` (before the connection's own events), `Failed` or `Cancelled`.
    async fn open<F>(&self, span: Span, opening: F) -> Result<Arc<Connection>, ProximException>
    where
        F: Future<Output = Result<proxim_core::Connection, ProximError>> + Send + 'static,
    {
        let events = self.events.clone();
        run(async move {
            events.pairing(PairingState::Pairing);
            let mut outcome = PairingOutcome::new(&events);
            match opening.await {
                Ok(connection) => {
                    let connection = Connection::new(connection, events.clone());
                    // Connected first, then the connection's own events.
                    outcome.report(PairingState::Connected {
                        connection_id: connection.id(),
                        peer_name: connection.peer_name(),
                    });
                    connection.start_events()?;
                    Ok(Arc::new(connection))
                }
                Err(error) => {
                    let error = ProximException::from(error);
                    outcome.report(PairingState::Failed {
                        reason: error.to_string(),
                    });
                    Err(error)
                }
            }
        }
        .instrument(span))
        .await
    }
}

/// Reports how a pairing ended; `Cancelled` if it is dropped before (the coroutine was
/// cancelled and the task aborted).
struct PairingOutcome<'a> {
    events: &'a Dispatcher,
    reported: bool,
}

impl<'a> PairingOutcome<'a> {
    fn new(events: &'a Dispatcher) -> Self {
        PairingOutcome {
            events,
            reported: false,
        }
    }

    fn report(&mut self, state: PairingState) {
        self.reported = true;
        self.events.pairing(state);
    }
}

impl Drop for PairingOutcome<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.events.pairing(PairingState::Cancelled);
        }
    }
}

/// What can be checked before any network I/O.
fn validate(config: &CoreConfig) -> Result<(), ProximException> {
    let url = config.server_url.trim();
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(ProximException::InvalidConfig {
            reason: format!("server URL must start with ws:// or wss://, got `{url}`"),
        });
    }
    if config.device_name.trim().is_empty() {
        return Err(ProximException::InvalidConfig {
            reason: "device name is empty".into(),
        });
    }
    for ip in config.local_ips.iter().flatten() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ProximException::InvalidConfig {
                reason: format!("local IP `{ip}` is not an IP address"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, name: &str) -> CoreConfig {
        CoreConfig {
            server_url: url.into(),
            device_name: name.into(),
            data_dir: None,
            download_dir: None,
            pair_timeout_ms: None,
            connect_timeout_ms: None,
            force_relay: false,
            local_ips: None,
            turn_roots_pem: None,
            report_connections: true,
        }
    }

    #[test]
    fn bad_configs_are_refused_up_front() {
        assert!(matches!(
            ProximCore::new(config("http://x/ws", "Phone"), None),
            Err(ProximException::InvalidConfig { .. })
        ));
        assert!(matches!(
            ProximCore::new(config("ws://x/ws", " "), None),
            Err(ProximException::InvalidConfig { .. })
        ));
        let mut bad_ip = config("ws://x/ws", "Phone");
        bad_ip.local_ips = Some(vec!["127.0.0.1".into(), "not-an-ip".into()]);
        assert!(matches!(
            ProximCore::new(bad_ip, None),
            Err(ProximException::InvalidConfig { reason }) if reason.contains("not-an-ip")
        ));
        assert!(ProximCore::new(config("ws://127.0.0.1:1/ws", "Phone"), None).is_ok());
    }

    #[test]
    fn a_malformed_code_fails_before_any_network_io() {
        let core = ProximCore::new(config("ws://127.0.0.1:1/ws", "Phone"), None).unwrap();
        let result = local_runtime().block_on(core.pair("0O!".into()));
        assert!(
            matches!(result, Err(ProximException::InvalidCode { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn an_unreachable_server_is_reported_as_such() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let core = ProximCore::new(config("ws://127.0.0.1:1/ws", "Phone"), None).unwrap();
        let result = local_runtime().block_on(core.pair("ABCDEF-ABCDE".into()));
        assert!(
            matches!(result, Err(ProximException::ServerUnreachable { .. })),
            "{result:?}"
        );
    }

    fn local_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn trusted_devices_are_listed_and_revoked_and_a_revoked_one_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut with_dir = config("ws://127.0.0.1:1/ws", "Phone");
        with_dir.data_dir = Some(dir.path().display().to_string());
        let core = ProximCore::new(with_dir, None).unwrap();
        assert_eq!(core.trusted_devices().unwrap(), vec![]);
        proxim_core::auth::TrustStore::open(dir.path())
            .add(proxim_core::TrustedDevice {
                device_id: "desk-0123456789".into(),
                name: "Desk".into(),
                public_key: "ab".repeat(32),
                role: proxim_core::auth::DeviceRole::Desktop,
                server_url: Some("ws://127.0.0.1:1/ws".into()),
                paired_at: 10,
                last_seen: 20,
            })
            .unwrap();
        let expected = TrustedDevice {
            device_id: "desk-0123456789".into(),
            name: "Desk".into(),
            public_key: "ab".repeat(32),
            role: crate::types::DeviceRole::Desktop,
            server_url: Some("ws://127.0.0.1:1/ws".into()),
            paired_at: 10,
            last_seen: 20,
        };
        assert_eq!(core.trusted_devices().unwrap(), vec![expected.clone()]);
        assert_eq!(core.revoke_device("nobody".into()).unwrap(), vec![]);
        assert_eq!(
            core.revoke_device("desk-0123".into()).unwrap(),
            vec![expected]
        );
        assert_eq!(core.trusted_devices().unwrap(), vec![]);
        // Refused before any network I/O (the server URL leads nowhere).
        let result = local_runtime().block_on(core.connect("desk-0123456789".into()));
        assert!(
            matches!(result, Err(ProximException::NotTrusted { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_damaged_trust_list_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trusted_devices.json"), "{").unwrap();
        let mut with_dir = config("ws://127.0.0.1:1/ws", "Phone");
        with_dir.data_dir = Some(dir.path().display().to_string());
        let core = ProximCore::new(with_dir, None).unwrap();
        assert!(
            matches!(core.trusted_devices(), Err(ProximException::Io { .. })),
            "{:?}",
            core.trusted_devices()
        );
    }

    #[test]
    fn connect_needs_a_data_dir() {
        let core = ProximCore::new(config("ws://127.0.0.1:1/ws", "Phone"), None).unwrap();
        assert_eq!(core.trusted_devices().unwrap(), vec![]);
        let result = local_runtime().block_on(core.connect("desk".into()));
        assert!(
            matches!(result, Err(ProximException::InvalidConfig { .. })),
            "{result:?}"
        );
    }
}
