//! Pairing that does not trust the signaling server.
//!
//! Whoever runs a WebRTC signaling server can swap the DTLS fingerprints in the SDP it relays
//! and sit in the middle. Proxim binds every connection to something the server never sees:
//!
//! - [`code`]: what a desktop shows is a routing part (for the server) plus a secret (never
//!   sent). The short code carries a short secret, the QR code a 256-bit one.
//! - [`handshake`]: a first pairing runs SPAKE2 over the secret, through the server as opaque
//!   payloads, and the key confirmation covers each side's DTLS fingerprint and identity key.
//!   Later connections of a trusted device sign the fingerprints with the identity keys.
//! - [`identity`]: each device's long-term Ed25519 key and its list of trusted devices.
//! - [`wire`]: the messages, JSON in base64url, decoded strictly.
//!
//! The peer driver then refuses any SDP whose fingerprint is not the authenticated one
//! ([`crate::peer::PeerConfig::expected_remote_fingerprint`]), and rtc refuses any DTLS
//! certificate that does not match the SDP: a mismatch anywhere is
//! [`ProximError::Intercepted`](crate::ProximError::Intercepted), never a silent connection.

pub mod code;
pub mod handshake;
pub mod identity;
pub mod wire;

pub use code::{CodeError, CodeSecrets, PairingCode, SecretKind};
pub use handshake::{
    AuthMethod, DesktopHandshake, LocalParty, PhoneHandshake, PhoneHello, Verified,
};
pub use identity::{DeviceRole, Identity, PublicIdentity, StoreError, TrustStore, TrustedDevice};
pub use wire::{AbortReason, AuthMessage, Fingerprint, RefuseReason, WireError};

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The other side sent no authentication where it must.
    #[error("{0} carried no authentication (an old or altered client, or a server that strips it)")]
    Missing(&'static str),
    /// The other side's payload did not decode.
    #[error(transparent)]
    Malformed(WireError),
    /// A message that does not belong at this step.
    #[error("unexpected `{0}` message in the handshake")]
    Unexpected(&'static str),
    /// The key confirmation did not verify: the other side does not know the code's secret, or
    /// what it sent was altered on the way.
    #[error(
        "the other device did not prove it knows the pairing code: the code was mistyped, or \
         someone between the devices tried to take part"
    )]
    KeyConfirmation,
    /// A trusted device's signature did not verify.
    #[error("the other device's identity signature does not verify")]
    BadSignature,
    /// The desktop answering is not the one this phone trusts (another identity key).
    #[error("the desktop's identity key is not the one remembered from pairing")]
    IdentityChanged,
    /// The desktop does not trust this phone.
    #[error("the desktop does not trust this device")]
    NotTrusted,
    /// The other side gave up.
    #[error("the other device gave up the handshake ({0:?})")]
    PeerAborted(AbortReason),
}
