//! [`ProximException`]: core's [`ProximError`] flattened into variants Kotlin can `when` over.

use proxim_core::ProximError;

/// Why a Proxim call failed. In Kotlin: `ProximException` with one subclass per variant, e.g.
/// `catch (e: ProximException.Rejected)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum ProximException {
    /// The configuration is invalid (bad device name, bad server URL…).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The pairing code is malformed (wrong length or characters).
    #[error("invalid pairing code: {reason}")]
    InvalidCode {
        /// What is wrong with it.
        reason: String,
    },
    /// No desktop is showing this pairing code.
    #[error("no desktop is showing this pairing code")]
    UnknownCode,
    /// The pairing code expired; the desktop shows a new one.
    #[error("the pairing code expired; use the code the desktop shows now")]
    CodeExpired,
    /// The pairing code was already used, or burned by a failed attempt (a wrong secret); the
    /// desktop shows a new one.
    #[error("the pairing code was already used; use the code the desktop shows now")]
    CodeUsed,
    /// The other device could not be authenticated (a mistyped secret, someone in the middle,
    /// a DTLS fingerprint that does not match). Show it to the user; never retry silently.
    #[error("the connection may have been intercepted: {reason}")]
    Intercepted {
        /// What did not verify.
        reason: String,
    },
    /// The desktop does not trust this device (it revoked it), or this device does not know
    /// that desktop: pair again with a code.
    #[error("not trusted: {reason}")]
    NotTrusted {
        /// Which side does not trust which.
        reason: String,
    },
    /// The desktop asked for by `connect()` is not connected to the signaling server.
    #[error("the desktop is not connected to the signaling server")]
    DesktopOffline,
    /// The desktop user rejected the pairing.
    #[error("the desktop rejected the pairing")]
    Rejected,
    /// Nobody answered on the desktop in time.
    #[error("the desktop did not answer within {after_ms} ms")]
    TimedOut {
        /// How long Proxim waited.
        after_ms: u64,
    },
    /// The desktop went away during pairing.
    #[error("the desktop disconnected during pairing")]
    DesktopGone,
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The signaling server cannot be reached.
    #[error("signaling server unreachable: {reason}")]
    ServerUnreachable {
        /// The underlying failure.
        reason: String,
    },
    /// The signaling server refused or broke the protocol.
    #[error("signaling failed: {reason}")]
    Signaling {
        /// The underlying failure.
        reason: String,
    },
    /// The direct connection could not be made or was lost.
    #[error("connection failed: {reason}")]
    ConnectionFailed {
        /// The underlying failure.
        reason: String,
    },
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// A file transfer failed.
    #[error("file transfer failed: {reason}")]
    Transfer {
        /// The underlying failure.
        reason: String,
        /// Whether calling `sendFile` again with the same file sends only what the other side
        /// is missing (the transfer was cut short: connection lost, cancelled), over this
        /// connection or the next one.
        resumable: bool,
    },
    /// A local I/O failure.
    #[error("I/O error: {reason}")]
    Io {
        /// The underlying failure.
        reason: String,
    },
    /// A failure inside the bindings themselves (a runtime that could not start, a panic).
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl From<ProximError> for ProximException {
    fn from(error: ProximError) -> Self {
        match error {
            ProximError::InvalidConfig(reason) => ProximException::InvalidConfig { reason },
            ProximError::InvalidCode(reason) => ProximException::InvalidCode { reason },
            ProximError::UnknownCode => ProximException::UnknownCode,
            ProximError::CodeExpired => ProximException::CodeExpired,
            ProximError::CodeUsed => ProximException::CodeUsed,
            ProximError::Intercepted(reason) => ProximException::Intercepted { reason },
            ProximError::NotTrusted(reason) => ProximException::NotTrusted { reason },
            ProximError::DesktopOffline => ProximException::DesktopOffline,
            ProximError::Rejected => ProximException::Rejected,
            ProximError::TimedOut(after) => ProximException::TimedOut {
                after_ms: millis(after),
            },
            ProximError::DesktopGone => ProximException::DesktopGone,
            ProximError::Cancelled => ProximException::Cancelled,
            ProximError::ServerUnreachable(reason) => ProximException::ServerUnreachable { reason },
            ProximError::Signaling(reason) => ProximException::Signaling { reason },
            ProximError::ConnectionFailed(reason) => ProximException::ConnectionFailed { reason },
            ProximError::Closed => ProximException::Closed,
            ProximError::Transfer { reason, resumable } => {
                ProximException::Transfer { reason, resumable }
            }
            ProximError::Io(reason) => ProximException::Io { reason },
            other => ProximException::Internal {
                reason: other.to_string(),
            },
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn core_errors_keep_their_meaning() {
        assert_eq!(
            ProximException::from(ProximError::Rejected),
            ProximException::Rejected
        );
        assert_eq!(
            ProximException::from(ProximError::TimedOut(Duration::from_secs(3))),
            ProximException::TimedOut { after_ms: 3000 }
        );
        assert_eq!(
            ProximException::from(ProximError::ConnectionFailed("ice".into())),
            ProximException::ConnectionFailed {
                reason: "ice".into()
            }
        );
        assert_eq!(
            ProximException::from(ProximError::CodeUsed),
            ProximException::CodeUsed
        );
        assert_eq!(
            ProximException::from(ProximError::CodeExpired),
            ProximException::CodeExpired
        );
        assert_eq!(
            ProximException::from(ProximError::DesktopOffline),
            ProximException::DesktopOffline
        );
        assert_eq!(
            ProximException::from(ProximError::Intercepted("mitm".into())),
            ProximException::Intercepted {
                reason: "mitm".into()
            }
        );
        assert_eq!(
            ProximException::from(ProximError::NotTrusted("revoked".into())),
            ProximException::NotTrusted {
                reason: "revoked".into()
            }
        );
    }
}
