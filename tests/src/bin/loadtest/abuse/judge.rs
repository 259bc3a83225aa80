//! What answer a frame must get ([`Expect`]) and whether the server's reply is it
//! ([`judge`]).

use proxim_protocol::{ErrorCode, PairOutcome, ServerMessage};

use super::scripts::Step;

/// The answer a frame must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    Error(ErrorCode),
    Welcome,
    Pong(u64),
    Registered,
    /// `pair_result {outcome: unknown_code}` (or, if a random code hits a live one,
    /// `pair_pending`).
    UnknownCode,
    PairPending,
    /// The transport closes the connection (a frame over the transport limit); an error
    /// `frame_too_large` is accepted too.
    TransportClose,
}

/// Whether the server closes the connection after a frame: documented for `frame_too_large`,
/// `unsupported_version` and the flooder's last `rate_limited`.
pub(crate) fn closes_after(expect: &Expect) -> bool {
    matches!(
        expect,
        Expect::Error(ErrorCode::FrameTooLarge | ErrorCode::UnsupportedVersion)
            | Expect::TransportClose
    )
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Expected,
    RateLimited,
    Wrong(String),
}

pub(crate) fn judge(step: &Step, message: &ServerMessage) -> Outcome {
    let ok = match (&step.expect, message) {
        (Expect::Error(want), ServerMessage::Error { code, .. }) => code == want,
        (Expect::Welcome, ServerMessage::Welcome { .. }) => true,
        (Expect::Pong(want), ServerMessage::Pong { seq }) => seq == want,
        (Expect::Registered, ServerMessage::Registered { .. }) => true,
        (
            Expect::UnknownCode,
            ServerMessage::PairResult {
                session: None,
                outcome: PairOutcome::UnknownCode,
                ..
            },
        ) => true,
        (Expect::UnknownCode | Expect::PairPending, ServerMessage::PairPending { .. }) => true,
        (
            Expect::TransportClose,
            ServerMessage::Error {
                code: ErrorCode::FrameTooLarge,
                ..
            },
        ) => true,
        _ => false,
    };
    if ok {
        return Outcome::Expected;
    }
    if let ServerMessage::Error {
        code: ErrorCode::RateLimited,
        ..
    } = message
    {
        return Outcome::RateLimited;
    }
    Outcome::Wrong(format!(
        "expected {:?}, got {}",
        step.expect,
        describe(message)
    ))
}

/// Messages the server sends on its own, not as the answer to a frame.
pub(crate) fn is_unsolicited(message: &ServerMessage) -> bool {
    matches!(
        message,
        ServerMessage::PairPrompt { .. }
            | ServerMessage::SessionEnded { .. }
            | ServerMessage::Ping { .. }
            | ServerMessage::Bye { .. }
            | ServerMessage::SessionToken { .. }
            | ServerMessage::PairResult {
                session: Some(_),
                ..
            }
    )
}

fn describe(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Error { code, message } => format!("error {} ({message})", wire_name(*code)),
        other => other.kind().to_owned(),
    }
}

/// An error code as it appears on the wire (`malformed_message`).
pub(crate) fn wire_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}
