//! [`ProximError`]: the one error type of the public API, with variants an app can act on.

use std::time::Duration;

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
    #[error("file transfer failed: {0}")]
    Transfer(String),
    /// A local I/O failure.
    #[error("I/O error: {0}")]
    Io(String),
}
