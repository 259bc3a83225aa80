//! The phone side: [`pair`] with a code, [`connect`] to a trusted desktop, and the trust list
//! this device keeps ([`trusted_devices`], [`revoke_device`]).

use std::time::Instant;

use proxim_protocol::{AuthPayload, DeviceId, PeerDevice, Signal};
use tracing::{Instrument, info, info_span, warn};

use super::connection::{Connection, SetupTimings};
use super::{connect_signaling, establish_verified, local_party, remember, tell_abort};
use crate::auth::handshake;
use crate::auth::{DeviceRole, PairingCode, PhoneHandshake, TrustedDevice};
use crate::pairing::{self, PairTarget};
use crate::peer::{Certificate, PeerRole};
use crate::{ProximConfig, ProximError};

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
        let (party, certificate) = local_party(config.identity()?, &me)?;
        let (handshake, hello) = PhoneHandshake::pake(&code, party);
        let target = PairTarget::Code(code.routing.clone());
        let connection = phone_connect(&config, target, me, hello, handshake, certificate).await?;
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
    let record = config
        .trust_store()
        .find_id(desktop, DeviceRole::Desktop)?
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
        let (party, certificate) = local_party(config.identity()?, &me)?;
        let (handshake, hello) = PhoneHandshake::trusted(desktop_id.clone(), key, party);
        let target = PairTarget::Device(desktop_id);
        let connection = phone_connect(config, target, me, hello, handshake, certificate).await?;
        remember(config, &connection, DeviceRole::Desktop);
        Ok(connection)
    }
    .instrument(span)
    .await
}

/// The devices this one trusts (paired before), from its data directory.
pub fn trusted_devices(config: &ProximConfig) -> Result<Vec<TrustedDevice>, ProximError> {
    Ok(config.trust_store().list()?)
}

/// Forget a trusted device by id (or unique prefix): it needs a new pairing with a code to
/// connect again. Returns what was removed (empty: no such device).
pub fn revoke_device(config: &ProximConfig, id: &str) -> Result<Vec<TrustedDevice>, ProximError> {
    Ok(config.trust_store().revoke(id)?)
}

/// The phone's side after the hello is built: ask, verify the desktop's answer, confirm,
/// connect to the authenticated fingerprint.
async fn phone_connect(
    config: &ProximConfig,
    target: PairTarget,
    me: PeerDevice,
    hello: AuthPayload,
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
    .await;
    let paired = match paired {
        Ok(paired) => paired,
        Err(error) => {
            client.close().await;
            return Err(config.pairing_failure(error).into());
        }
    };
    let paired_at = started.elapsed();
    let accepted_at = Instant::now();
    let (verified, confirm) = match handshake.on_reply(&paired.session, paired.auth.as_ref()) {
        Ok(ok) => ok,
        Err(error) => {
            warn!(%error, "the desktop's answer does not verify; giving up");
            tell_abort(&client, &paired.session, handshake::abort_payload(&error)).await;
            client.close_session(&paired.session);
            client.close().await;
            return Err(error.into());
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
    // The outcome is reported on signaling (when enabled) before it is closed.
    let connection = establish_verified(
        config,
        &client,
        PeerRole::Offerer,
        accepted_at,
        paired,
        certificate,
        verified,
    )
    .await;
    let mut connection = match connection {
        Ok(connection) => connection,
        Err(error) => {
            client.close().await;
            return Err(error);
        }
    };
    // The connection keeps signaling: an ICE restart (a network change) is signaled on it.
    connection.stay_on_signaling(client, events);
    connection.set_timings(SetupTimings {
        paired: paired_at,
        channel_open: started.elapsed(),
    });
    info!(open_at = ?connection.timings().channel_open, "data channel open");
    Ok(connection)
}
