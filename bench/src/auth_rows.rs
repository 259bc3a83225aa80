//! SETUP rows for what pairing without trusting the server costs: the SPAKE2 handshake of both
//! sides (with their DTLS certificates), and a peer establish with the fingerprint binding on,
//! beside the plain establish row of the same run.

use std::time::Duration;

use anyhow::Context as _;
use proxim_core::auth::{
    CodeSecrets, DesktopHandshake, Identity, LocalParty, PairingCode, PhoneHandshake, PhoneHello,
};
use proxim_core::peer::{Established, PeerConfig, PeerRole, generate_certificate};
use proxim_protocol::{RoutingCode, SessionId};

use crate::Params;
use crate::measure::{Outcome, repeat_setup, runtime};
use crate::proxim_rows::establish_with;

const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Both sides of a code pairing's handshake, certificates included: hello, reply, confirm.
pub(crate) fn run_handshake(params: &Params) -> anyhow::Result<Outcome> {
    let routing = RoutingCode::new("K7P2QX").context("routing code")?;
    let session = SessionId::new("ab".repeat(16)).context("session id")?;
    let phone_identity = Identity::ephemeral();
    let desk_identity = Identity::ephemeral();
    runtime()?.block_on(async {
        Ok(repeat_setup(
            params,
            TRIAL_TIMEOUT,
            async || {
                let secrets = CodeSecrets::generate();
                let code = PairingCode::parse(&secrets.short_code(&routing))?;
                let (_, phone_fp) = generate_certificate()?;
                let (_, desk_fp) = generate_certificate()?;
                let phone = LocalParty {
                    identity: phone_identity.clone(),
                    name: "Phone".into(),
                    fingerprint: phone_fp,
                };
                let desk = LocalParty {
                    identity: desk_identity.clone(),
                    name: "Desk".into(),
                    fingerprint: desk_fp,
                };
                let (handshake, hello) = PhoneHandshake::pake(&code, phone);
                let hello = PhoneHello::decode(Some(&hello))?;
                let (desk_handshake, reply) =
                    DesktopHandshake::respond_pake(&secrets, &routing, &session, &hello, &desk)?;
                let (_, confirm) = handshake.on_reply(&session, Some(&reply))?;
                desk_handshake.on_confirm(&confirm)?;
                Ok(())
            },
            async |()| {},
        )
        .await)
    })
}

/// A peer establish with made-beforehand certificates and the fingerprint check on both sides.
pub(crate) fn run_establish(params: &Params) -> anyhow::Result<Outcome> {
    runtime()?.block_on(async {
        Ok(repeat_setup(
            params,
            TRIAL_TIMEOUT,
            async || {
                let (cert_a, fp_a) = generate_certificate()?;
                let (cert_b, fp_b) = generate_certificate()?;
                let mut offerer = PeerConfig::new(PeerRole::Offerer, vec![]);
                offerer.certificate = Some(cert_a);
                offerer.expected_remote_fingerprint = Some(fp_b);
                let mut answerer = PeerConfig::new(PeerRole::Answerer, vec![]);
                answerer.certificate = Some(cert_b);
                answerer.expected_remote_fingerprint = Some(fp_a);
                establish_with(offerer, answerer).await
            },
            async |(offerer, answerer): (Established, Established)| {
                tokio::join!(offerer.connection.close(), answerer.connection.close());
            },
        )
        .await)
    })
}
