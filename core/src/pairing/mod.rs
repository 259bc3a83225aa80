//! Pairing a phone with a desktop through the signaling server.
//!
//! ```text
//! phone                      server                      desktop
//!   |                          |<-- register_desktop ------|
//!   |                          |--- registered {code} ---->|   (desktop shows the code)
//!   |--- pair_request {code} ->|                           |
//!   |<-- pair_pending {s} -----|--- pair_prompt {s} ------>|   (desktop asks its user)
//!   |                          |<-- pair_response {s} -----|
//!   |<-- pair_result {s} ------|--- pair_result {s} ------>|
//!   |<======= signal {s} (offer, answer, candidates) =====>|
//! ```
//!
//! Two layers:
//! - [`PhonePairing`] and [`DesktopPairing`] are sans-IO state machines in the style of
//!   `quinn-proto`: feed them server messages (`handle_message`), time (`handle_timeout`) and
//!   user actions (`cancel`, `accept`, `reject`), then drain `poll_transmit` (messages for the
//!   server), `poll_event` and `poll_timeout`. They never panic on unexpected input: it is
//!   ignored and reported as a [`PairingError`] value, and the state is unchanged.
//! - [`pair_as_phone`] and [`DesktopRegistration`] drive them over a
//!   [`SignalingClient`](crate::signaling::SignalingClient).

mod desktop;
mod driver;
mod phone;
#[cfg(test)]
mod test_support;

use proxim_protocol::{AuthPayload, ErrorCode, SessionId};

use crate::signaling::SignalingError;

pub use desktop::{ANSWER_GRACE, DesktopPairing, DesktopPairingEvent};
pub use driver::{
    DesktopRegistration, PairedSession, REGISTER_TIMEOUT, RegistrationEvent, pair_as_phone,
};
pub use phone::{PairTarget, PhoneEvent, PhonePairing};

/// Why pairing failed, or why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The desktop user rejected the request.
    #[error("the desktop rejected the pairing")]
    Rejected,
    /// The desktop refused, with its reason in an authentication payload (e.g. it no longer
    /// trusts this device).
    #[error("the desktop refused the connection")]
    Refused(AuthPayload),
    /// The code expired; the desktop shows a new one.
    #[error("the pairing code expired")]
    CodeExpired,
    /// The code was already used, or burned by a failed attempt.
    #[error("the pairing code was already used")]
    CodeUsed,
    /// The desktop asked for by device id is not connected to the server.
    #[error("the desktop is not connected to the signaling server")]
    DesktopOffline,
    /// Nobody answered in time.
    #[error("pairing timed out")]
    TimedOut,
    /// No desktop owns the code.
    #[error("no desktop owns this pairing code")]
    UnknownCode,
    /// The desktop disconnected before answering.
    #[error("the desktop went away")]
    DesktopGone,
    /// Pairing was cancelled (locally, or the phone withdrew).
    #[error("pairing cancelled")]
    Cancelled,
    /// The signaling connection was lost while pairing.
    #[error("lost the signaling server while pairing")]
    ServerLost,
    /// The server refused a pairing message.
    #[error("server refused: {code:?}: {message}")]
    Server {
        /// The machine-readable reason.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The signaling client failed.
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    /// The input does not fit the current state (duplicate, out of order, after the end); it
    /// was ignored.
    #[error("unexpected in this state: {0}")]
    InvalidState(String),
    /// The session is not one this machine knows (wrong session, or no longer pending); the
    /// input was ignored.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The server broke the pairing protocol (e.g. accepted without naming the peer).
    #[error("pairing protocol violation: {0}")]
    Protocol(String),
}

/// Session ids are unguessable tokens: logs show a prefix only.
fn short(session: &SessionId) -> &str {
    session.as_str().get(..8).unwrap_or("?")
}
