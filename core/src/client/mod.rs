//! The public API: register as a desktop, pair as a phone, get a [`Connection`].
//!
//! - [`phone`]: [`pair`] with a code, [`connect`] to a trusted desktop, the trust list.
//! - [`desktop`]: [`Desktop`] and its [`DesktopEvent`]s; [`code_policy`] decides, without I/O,
//!   when the desktop's pairing code is burned.
//! - [`connection`]: the open [`Connection`] and its [`Event`]s.
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
//!     let connection = pair(&ProximConfig::new("ws://127.0.0.1:8787/ws", "Phone"), &code).await?;
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
//!         DesktopEvent::Connected(connection) => {
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

mod code_policy;
mod connection;
mod desktop;
mod phone;
mod report;

use std::time::Instant;

use proxim_protocol::{AuthPayload, ClientMessage, PeerDevice, SessionId, Signal};
use tracing::{debug, warn};

use crate::auth::handshake::{self, AuthMethod};
use crate::auth::{self, AbortReason, DeviceRole, Identity, LocalParty, TrustedDevice, Verified};
use crate::error::PairingFailure;
use crate::pairing::{PairedSession, PairingError};
use crate::peer::{self, Certificate, PeerError, PeerRole};
use crate::signaling::{SignalingClient, SignalingConfig, SignalingEvents};
use crate::{ProximConfig, ProximError};
use report::ReportSink;

pub use connection::{Connection, Event, SetupTimings};
pub use desktop::{Desktop, DesktopEvent};
pub use phone::{connect, pair, revoke_device, trusted_devices};

impl ProximConfig {
    /// A pairing error, with this configuration's pairing timeout (for
    /// [`ProximError::TimedOut`]).
    fn pairing_failure(&self, error: PairingError) -> PairingFailure {
        PairingFailure {
            error,
            timeout: self.pair_timeout,
        }
    }
}

/// Connect to the configured signaling server.
async fn connect_signaling(
    config: &ProximConfig,
) -> Result<(SignalingClient, SignalingEvents), ProximError> {
    let mut signaling = SignalingConfig::new(config.server_url.clone());
    signaling.connect_timeout = config.server_timeout;
    Ok(SignalingClient::connect(signaling).await?)
}

/// Open the direct connection to a verified device, with the ICE servers of the latest
/// welcome. When this side finds the connection intercepted (the SDP's fingerprint is not the
/// authenticated one), it tells the other device why before failing; when the other device
/// refused first, it already knows.
///
/// Unless [`ProximConfig::report_connections`] is off, the outcome (`connected` or `failed`)
/// is reported on `client` before this returns, `time_to_connect_ms` counting from
/// `accepted_at` (when the pairing was accepted). The report is one bounded queue push.
async fn establish_verified(
    config: &ProximConfig,
    client: &SignalingClient,
    role: PeerRole,
    accepted_at: Instant,
    paired: PairedSession,
    certificate: Certificate,
    verified: Verified,
) -> Result<Connection, ProximError> {
    let session = paired.session.clone();
    let ice_servers = client.welcome().ice_servers;
    let result =
        Connection::establish(config, role, ice_servers, paired, certificate, verified).await;
    if let Err(PeerError::Intercepted(_)) = &result {
        let abort = handshake::abort_payload_for(AbortReason::Fingerprint);
        tell_abort(client, &session, abort).await;
    }
    if let Some(reports) = ReportSink::new(config.report_connections, client, &session) {
        reports.established(&result, accepted_at).await;
    }
    Ok(result?)
}

/// Tell the other device, on the signaling connection, that this one gives up and why. Sent
/// directly (not through the session link), so it goes out before a `leave` that follows.
async fn tell_abort(client: &SignalingClient, session: &SessionId, payload: AuthPayload) {
    let message = ClientMessage::Signal {
        session: session.clone(),
        signal: Signal::Auth { payload },
    };
    if let Err(error) = client.send(message).await {
        debug!(%error, "could not tell the other device why");
    }
}

/// This device's side of a handshake: identity, name, a fresh DTLS certificate.
fn local_party(
    identity: Identity,
    me: &PeerDevice,
) -> Result<(LocalParty, Certificate), ProximError> {
    let (certificate, fingerprint) = peer::generate_certificate()?;
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
    let verified = connection.verified();
    let update = TrustUpdate::after(
        verified,
        connection.peer_device(),
        role,
        &config.server_url,
        auth::identity::unix_now(),
    );
    let result = match update {
        TrustUpdate::Touch => store.touch(&verified.peer_identity, role),
        TrustUpdate::Add(device) => store.add(device),
    };
    match result {
        Ok(()) => debug!(peer = %verified.peer_name, "trust list updated"),
        Err(error) => warn!(%error, "could not update the trust list"),
    }
}

/// What a verified connection changes in the trust list.
#[derive(Debug, PartialEq, Eq)]
enum TrustUpdate {
    /// A trusted device reconnected: refresh when it was last seen.
    Touch,
    /// A code pairing: add (or replace) the device.
    Add(TrustedDevice),
}

impl TrustUpdate {
    /// The update for the device `peer`, verified as `verified`, playing `role`, at `now`
    /// (Unix seconds). A desktop entry keeps the server it was reached through.
    fn after(
        verified: &Verified,
        peer: &PeerDevice,
        role: DeviceRole,
        server_url: &str,
        now: u64,
    ) -> TrustUpdate {
        match verified.method {
            AuthMethod::Trusted => TrustUpdate::Touch,
            _ => TrustUpdate::Add(TrustedDevice {
                device_id: peer.device_id.as_str().to_owned(),
                name: verified.peer_name.clone(),
                public_key: verified.peer_identity.to_hex(),
                role,
                server_url: (role == DeviceRole::Desktop).then(|| server_url.to_owned()),
                paired_at: now,
                last_seen: now,
            }),
        }
    }
}

/// Session ids are unguessable tokens: logs show a prefix only.
fn short(session: &SessionId) -> &str {
    session.as_str().get(..8).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use proxim_protocol::{DeviceId, DeviceName};

    use super::*;
    use crate::auth::Fingerprint;

    fn verified(method: AuthMethod) -> Verified {
        Verified {
            method,
            peer_identity: Identity::ephemeral().public(),
            peer_name: "Desk".into(),
            peer_fingerprint: Fingerprint::from_sdp_value(&["AB"; 32].join(":"))
                .expect("valid fingerprint"),
            comparison: None,
        }
    }

    fn device() -> PeerDevice {
        PeerDevice {
            device_id: DeviceId::new("device-1".to_owned()).expect("valid id"),
            device_name: DeviceName::new("Desk".to_owned()).expect("valid name"),
        }
    }

    #[test]
    fn a_trusted_reconnect_only_touches_the_entry() {
        let update = TrustUpdate::after(
            &verified(AuthMethod::Trusted),
            &device(),
            DeviceRole::Desktop,
            "ws://server/ws",
            7,
        );
        assert_eq!(update, TrustUpdate::Touch);
    }

    #[test]
    fn a_code_pairing_adds_the_device_and_a_desktop_keeps_its_server() {
        for (role, server) in [
            (DeviceRole::Desktop, Some("ws://server/ws".to_owned())),
            (DeviceRole::Phone, None),
        ] {
            let verified = verified(AuthMethod::Code);
            let update = TrustUpdate::after(&verified, &device(), role, "ws://server/ws", 7);
            let TrustUpdate::Add(entry) = update else {
                panic!("{role:?}: expected an added entry, got {update:?}");
            };
            assert_eq!(entry.device_id, "device-1");
            assert_eq!(entry.public_key, verified.peer_identity.to_hex());
            assert_eq!(entry.server_url, server, "{role:?}");
            assert_eq!((entry.paired_at, entry.last_seen), (7, 7));
        }
    }
}
