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
            ProximError::Transfer(reason) => ProximException::Transfer { reason },
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
    }
}
