//! [`ProximError`]: the one error type of the public API, with variants an app can act on, and
//! the `From` impls that map each layer's error into it.

use std::time::Duration;

use crate::auth::handshake;
use crate::auth::{AuthError, RefuseReason, StoreError};
use crate::pairing::PairingError;
use crate::peer::PeerError;
use crate::signaling::SignalingError;
use crate::transfer::TransferError;

/// Why a Proxim operation failed.
///
/// The variants are what an app needs to decide what to tell its user; the layer errors they
/// come from are kept as text in the `reason`s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProximError {
    /// The configuration is invalid (bad device name, bad server URL…).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The pairing code is malformed.
    #[error("invalid pairing code: {0}")]
    InvalidCode(String),
    /// No desktop owns this pairing code (mistyped, or the desktop is gone).
    #[error("no desktop is showing this pairing code")]
    UnknownCode,
    /// The code expired; the desktop shows a new one.
    #[error("the pairing code expired; use the code the desktop shows now")]
    CodeExpired,
    /// The code was already used by a pairing, or burned by a failed attempt.
    #[error(
        "the pairing code was already used (or burned by a failed attempt); use the code the \
         desktop shows now"
    )]
    CodeUsed,
    /// The other device could not be authenticated, or what it sent does not match what it
    /// authenticated: the connection may have been intercepted. Never retried silently.
    #[error("the connection may have been intercepted: {0}")]
    Intercepted(String),
    /// The other device does not trust this one (never paired, or revoked): pair with a code.
    #[error("not trusted: {0}")]
    NotTrusted(String),
    /// The desktop asked for is not connected to the signaling server.
    #[error("the desktop is not connected to the signaling server")]
    DesktopOffline,
    /// The desktop user rejected the pairing.
    #[error("the desktop rejected the pairing")]
    Rejected,
    /// Nobody answered on the desktop in time.
    #[error("the desktop did not answer within {0:?}")]
    TimedOut(Duration),
    /// The desktop went away during pairing.
    #[error("the desktop disconnected during pairing")]
    DesktopGone,
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The signaling server cannot be reached.
    #[error("signaling server unreachable: {0}")]
    ServerUnreachable(String),
    /// The signaling server refused or broke the protocol.
    #[error("signaling failed: {0}")]
    Signaling(String),
    /// The direct connection could not be made or was lost.
    #[error("connection failed: {0}")]
    ConnectionFailed(String),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// A file transfer failed.
    #[error("file transfer failed: {reason}")]
    Transfer {
        /// What went wrong.
        reason: String,
        /// Whether sending the same file again picks up where this attempt stopped (it was cut
        /// short, not refused): see [`TransferError::can_resume`].
        resumable: bool,
    },
    /// A local I/O failure.
    #[error("I/O error: {0}")]
    Io(String),
}

// The layer errors become `ProximError`s here, one `From` per layer, so `?` does the mapping.

impl From<SignalingError> for ProximError {
    fn from(error: SignalingError) -> Self {
        match error {
            SignalingError::Unreachable(reason) => ProximError::ServerUnreachable(reason),
            other => ProximError::Signaling(other.to_string()),
        }
    }
}

/// A pairing failure, with the pairing timeout that was in force: [`PairingError::TimedOut`]
/// does not say how long it waited, [`ProximError::TimedOut`] does.
#[derive(Debug)]
pub(crate) struct PairingFailure {
    /// What failed.
    pub(crate) error: PairingError,
    /// The timeout in force ([`crate::ProximConfig::pair_timeout`]).
    pub(crate) timeout: Duration,
}

impl From<PairingFailure> for ProximError {
    fn from(PairingFailure { error, timeout }: PairingFailure) -> Self {
        match error {
            PairingError::Rejected => ProximError::Rejected,
            PairingError::TimedOut => ProximError::TimedOut(timeout),
            PairingError::UnknownCode => ProximError::UnknownCode,
            PairingError::CodeExpired => ProximError::CodeExpired,
            PairingError::CodeUsed => ProximError::CodeUsed,
            PairingError::DesktopOffline => ProximError::DesktopOffline,
            PairingError::Refused(payload) => match handshake::refusal_reason(&payload) {
                Some(RefuseReason::NotTrusted) => ProximError::NotTrusted(
                    "the desktop does not trust this device (never paired, or revoked); pair \
                     with a code"
                        .into(),
                ),
                Some(RefuseReason::CodeUsed) => ProximError::CodeUsed,
                _ => ProximError::Rejected,
            },
            PairingError::DesktopGone => ProximError::DesktopGone,
            PairingError::Cancelled => ProximError::Cancelled,
            PairingError::Signaling(e) => e.into(),
            other => ProximError::Signaling(other.to_string()),
        }
    }
}

impl From<AuthError> for ProximError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::NotTrusted => ProximError::NotTrusted(error.to_string()),
            AuthError::PeerAborted(reason) => ProximError::Intercepted(format!(
                "the other device could not verify this one ({reason:?}): the code was \
                 mistyped, or someone between the devices tried to take part"
            )),
            other => ProximError::Intercepted(other.to_string()),
        }
    }
}

impl From<PeerError> for ProximError {
    fn from(error: PeerError) -> Self {
        match error {
            PeerError::ChannelClosed => ProximError::Closed,
            PeerError::Intercepted(reason) | PeerError::RefusedByPeer(reason) => {
                ProximError::Intercepted(reason)
            }
            other => ProximError::ConnectionFailed(other.to_string()),
        }
    }
}

impl From<TransferError> for ProximError {
    fn from(error: TransferError) -> Self {
        match error {
            TransferError::Io(e) => ProximError::Io(e.to_string()),
            other => ProximError::Transfer {
                resumable: other.can_resume(),
                reason: other.to_string(),
            },
        }
    }
}

impl From<StoreError> for ProximError {
    fn from(error: StoreError) -> Self {
        ProximError::Io(error.to_string())
    }
}
