//! [`ProximCore`]: the entry point Kotlin creates from a [`CoreConfig`].

use std::sync::Arc;

use tracing::{Instrument, info_span};

use crate::ProximException;
use crate::connection::Connection;
use crate::listener::{Dispatcher, ProximListener};
use crate::runtime::run;
use crate::types::{CoreConfig, PairingState};

/// Proxim for one app (or one test): pairs with desktops and hands out [`Connection`]s.
///
/// Create it once with the server URL, the device name and a data directory, then call
/// `pair(code)` from a coroutine. Any number may exist in one process; they share one runtime.
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
    /// Returns once the data channel is open. Throws `ProximException` (`InvalidCode`,
    /// `UnknownCode`, `Rejected`, `TimedOut`, `ServerUnreachable`, `ConnectionFailed`…).
    /// Cancelling the calling coroutine cancels the pairing: the desktop sees the request
    /// withdrawn, nothing keeps running, and the listener gets `PairingState.Cancelled`.
    pub async fn pair(&self, code: String) -> Result<Arc<Connection>, ProximException> {
        let config = self.config.to_core();
        let events = self.events.clone();
        let span = info_span!("ffi_pair", device = %self.config.device_name);
        run(async move {
            events.pairing(PairingState::Pairing);
            let mut outcome = PairingOutcome::new(&events);
            match proxim_core::pair(&config, &code).await {
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
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = local.block_on(core.pair("0O!".into()));
        assert!(
            matches!(result, Err(ProximException::InvalidCode { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn an_unreachable_server_is_reported_as_such() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let core = ProximCore::new(config("ws://127.0.0.1:1/ws", "Phone"), None).unwrap();
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = local.block_on(core.pair("ABCDEF-ABCDE".into()));
        assert!(
            matches!(result, Err(ProximException::ServerUnreachable { .. })),
            "{result:?}"
        );
    }
}
