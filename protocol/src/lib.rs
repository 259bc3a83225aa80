//! Wire messages of the Proxim signaling protocol.
//!
//! One WebSocket carries JSON text frames. Every frame is one message, tagged by its `type`
//! field. The direction is part of the type: a client decodes only [`ServerMessage`], the server
//! only [`ClientMessage`], so a message sent the wrong way is a decode error, not a surprise in
//! the state machine.
//!
//! ```text
//! client                                   server
//!   | hello {version, client}                 |
//!   |---------------------------------------->|
//!   |     welcome {connection_id, ice_servers,|
//!   |      heartbeat_interval_ms, version}    |
//!   |<----------------------------------------|
//! desktop: register_desktop -> registered {code, expires_in_ms}
//!          renew_code -> registered {code}        (after a code was used or burned)
//! phone:   pair_request {code} -> pair_pending {session}
//!          connect_request {desktop} -> pair_pending {session}   (a trusted device, no code)
//! desktop: pair_prompt {session} -> pair_response {accept}
//!          both: pair_result {session, outcome}
//! both:    signal {session, signal: offer | answer | candidate | end_of_candidates | auth}
//! both:    refresh_ice_servers -> ice_servers {ice_servers}   (fresh TURN credentials)
//! ```
//!
//! The protocol is versioned by [`PROTOCOL_VERSION`], exchanged in `hello`/`welcome`. Decoding
//! is "parse, don't validate": identifiers, codes and payloads are newtypes that only exist when
//! valid, and a bad frame becomes a typed [`DecodeError`] that says what was wrong.
//!
//! Pairing messages carry an optional opaque [`AuthPayload`]: the server relays it untouched, so
//! the two devices can run a PAKE over a secret the server never sees.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod ice;
mod report;

pub use report::{
    ConnectionOutcome, ConnectionReport, MAX_REPORT_TOKEN_BYTES, PathKind, RelayProtocol,
    ReportToken,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest text frame either side accepts, in bytes. SDP offers are a few KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;

/// Longest opaque authentication payload, in characters.
pub const MAX_AUTH_PAYLOAD_CHARS: usize = 8192;

/// Longest SDP accepted in an offer or answer, in bytes.
pub const MAX_SDP_BYTES: usize = 48 * 1024;

/// Longest ICE candidate line, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// Longest free-text field (reasons, software names, error messages), in characters.
pub const MAX_TEXT_CHARS: usize = 512;

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// A message a client (phone or desktop) sends to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientMessage {
    /// First message on every connection.
    Hello {
        /// The protocol version the client speaks.
        version: u16,
        /// Client software and version, for logs (e.g. `proxim-core/0.1.0`).
        client: ShortText,
    },
    /// Register this connection as a desktop that accepts pairing requests.
    RegisterDesktop {
        /// Stable id of the desktop device.
        device_id: DeviceId,
        /// Name shown to the phone user.
        device_name: DeviceName,
    },
    /// Ask the desktop that owns `code` to pair (phone side).
    PairRequest {
        /// The routing part of the pairing code the desktop shows.
        code: RoutingCode,
        /// Stable id of the phone device.
        device_id: DeviceId,
        /// Name shown to the desktop user.
        device_name: DeviceName,
        /// Opaque authentication payload relayed to the desktop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthPayload>,
    },
    /// Reconnect to a desktop this phone paired with before, by its device id, without a code.
    /// The server routes it like a `pair_request`; the devices authenticate each other with
    /// the identity keys they remembered (in `auth`).
    ConnectRequest {
        /// The device id of the desktop to reach.
        desktop: DeviceId,
        /// Stable id of the phone device.
        device_id: DeviceId,
        /// Name shown to the desktop user.
        device_name: DeviceName,
        /// Opaque authentication payload relayed to the desktop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthPayload>,
    },
    /// The desktop's code was used (or burned by a failed attempt): retire it and assign a
    /// fresh one, answered with `registered`. Phones that try the old code are told
    /// [`PairOutcome::CodeUsed`].
    RenewCode,
    /// Ask for fresh ICE servers (new time-limited TURN credentials, before those of the
    /// `welcome` expire), answered with [`ServerMessage::IceServers`].
    RefreshIceServers,
    /// The desktop user's answer to a [`ServerMessage::PairPrompt`].
    PairResponse {
        /// The session of the prompt being answered.
        session: SessionId,
        /// Whether the user accepted.
        accept: bool,
        /// Opaque authentication payload relayed to the phone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthPayload>,
    },
    /// A WebRTC signal for the other member of a pairing session.
    Signal {
        /// The pairing session.
        session: SessionId,
        /// The signal itself.
        signal: Signal,
    },
    /// Take an accepted session back after this device's connection dropped (a new network,
    /// a server that lost the old connection): this connection becomes the member the token
    /// was given to. Answered with `resumed`, or `session_ended` (reason `over`) when the
    /// session is gone or the token is not that member's.
    Resume {
        /// The session.
        session: SessionId,
        /// The member's token from `session_token`.
        token: ResumeToken,
    },
    /// Leave a pairing session (cancelled pairing, closed connection). The peer is told.
    Leave {
        /// The session to leave.
        session: SessionId,
    },
    /// Heartbeat; the server answers with `pong` carrying the same `seq`.
    Ping {
        /// Sequence number echoed in the pong.
        seq: u64,
    },
    /// Answer to a server `ping`.
    Pong {
        /// The sequence number of the ping.
        seq: u64,
    },
    /// The client is going away.
    Bye {
        /// Why, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ShortText>,
    },
    /// How this side's direct connection of a session went (connected, failed, closed), for
    /// the operator's event stream. Optional; a session this connection was a member of, live
    /// or recently ended. Not answered, and beyond the server's budget for reports dropped
    /// silently (counted).
    ConnectionReport {
        /// The pairing session the connection belongs to.
        session: SessionId,
        /// What happened.
        outcome: ConnectionOutcome,
        /// The details this side knows.
        #[serde(default)]
        report: ConnectionReport,
    },
}

/// A message the server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome {
        /// The protocol version the server speaks on this connection.
        version: u16,
        /// Server-assigned id of this connection.
        connection_id: ConnectionId,
        /// The ICE servers the client must use.
        ice_servers: Vec<IceServer>,
        /// How often the client must send `ping`, in milliseconds.
        heartbeat_interval_ms: u64,
        /// Silence after which the server drops the connection, in milliseconds.
        heartbeat_timeout_ms: u64,
    },
    /// The desktop is registered; it shows `code` to the user.
    Registered {
        /// The routing code the desktop displays (with its own secret appended).
        code: RoutingCode,
        /// How long the code stays valid, in milliseconds; the server then retires it and
        /// sends a new `registered`. Absent: no expiry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in_ms: Option<u64>,
    },
    /// The phone's request reached the desktop, which is now asking its user. The phone can
    /// withdraw the request with `leave {session}`.
    PairPending {
        /// The new pairing session.
        session: SessionId,
        /// How long the desktop has to answer, in milliseconds.
        expires_in_ms: u64,
    },
    /// A phone asks to pair; the desktop user must accept or reject.
    PairPrompt {
        /// The new pairing session.
        session: SessionId,
        /// The phone asking.
        peer: PeerDevice,
        /// How long the desktop has to answer, in milliseconds.
        expires_in_ms: u64,
        /// Opaque authentication payload from the phone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthPayload>,
    },
    /// The outcome of a pairing request, sent to both sides.
    PairResult {
        /// The pairing session (absent when the code was unknown and no session exists).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionId>,
        /// What happened.
        outcome: PairOutcome,
        /// The other device, when accepted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<PeerDevice>,
        /// Opaque authentication payload from the desktop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthPayload>,
    },
    /// A WebRTC signal from the other member of a session.
    Signal {
        /// The pairing session.
        session: SessionId,
        /// The signal itself.
        signal: Signal,
    },
    /// Sent to each member once a session is accepted: the secret that lets this device take
    /// the session back from another connection (`resume`) when its connection drops. The
    /// server keeps the session for a grace period after a member's connection is lost.
    SessionToken {
        /// The session.
        session: SessionId,
        /// This member's token; only this connection ever sees it.
        token: ResumeToken,
    },
    /// The `resume` worked: signals for the session flow on this connection again (the ones
    /// that came meanwhile follow).
    Resumed {
        /// The session.
        session: SessionId,
    },
    /// Fresh ICE servers, the answer to [`ClientMessage::RefreshIceServers`]: use them (their
    /// TURN credentials) for allocations from now on.
    IceServers {
        /// The ICE servers, as in `welcome`.
        ice_servers: Vec<IceServer>,
    },
    /// The other member's device started afresh (a new connection registered, or asked to
    /// pair or connect, with its device id) while its old connection is away from `session`:
    /// most likely the old process is gone and will not resume. A hint, not proof (a device id
    /// is not authenticated): act on it only when the direct path to the device is silent too.
    PeerRestarted {
        /// The session whose other member restarted.
        session: SessionId,
    },
    /// The other member of a session left or was dropped.
    SessionEnded {
        /// The session that ended.
        session: SessionId,
        /// Why.
        reason: SessionEndReason,
    },
    /// Something the client sent was refused. The connection stays open unless a `bye` follows.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: ShortText,
    },
    /// Heartbeat from the server.
    Ping {
        /// Sequence number echoed in the pong.
        seq: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        /// The sequence number of the ping.
        seq: u64,
    },
    /// The server is closing this connection.
    Bye {
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ShortText>,
    },
}

/// A WebRTC signal relayed between the two members of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Signal {
    /// SDP offer (sent by the phone).
    Offer {
        /// The SDP.
        sdp: Sdp,
    },
    /// SDP answer (sent by the desktop).
    Answer {
        /// The SDP.
        sdp: Sdp,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:` line, as in `RTCIceCandidateInit.candidate`.
        candidate: CandidateLine,
        /// Media stream id the candidate belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<ShortText>,
        /// Index of the m-line the candidate belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    /// The sender has gathered all its candidates.
    EndOfCandidates,
    /// Opaque authentication payload (key confirmation, fingerprint binding).
    Auth {
        /// The payload.
        payload: AuthPayload,
    },
}

/// The outcome of a pairing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PairOutcome {
    /// The desktop user accepted; signals may flow.
    Accepted,
    /// The desktop user rejected.
    Rejected,
    /// Nobody answered the prompt in time.
    TimedOut,
    /// No desktop owns this code.
    UnknownCode,
    /// The code expired; the desktop shows a new one.
    CodeExpired,
    /// The code was used by a pairing, or burned by a failed attempt; the desktop shows a new
    /// one.
    CodeUsed,
    /// The desktop named in a `connect_request` is not connected to this server.
    DesktopOffline,
    /// The desktop disconnected before answering.
    DesktopGone,
    /// The phone withdrew the request before the desktop answered.
    Cancelled,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionEndReason {
    /// The peer sent `leave` or `bye`.
    PeerLeft,
    /// The peer's connection closed.
    PeerDisconnected,
    /// The peer went silent past the heartbeat timeout and was dropped.
    PeerTimedOut,
    /// The session is over for this connection: a `resume` of a session that ended, or with
    /// a token that is not the member's.
    Over,
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame was not valid JSON or did not match any message.
    MalformedMessage,
    /// The frame's `type` is not a message this side accepts.
    UnknownMessageType,
    /// The frame was larger than [`MAX_FRAME_BYTES`]; the connection is closed.
    FrameTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryFrame,
    /// The client's protocol version is not supported; the connection is closed.
    UnsupportedVersion,
    /// `hello` must come first (and only once).
    HelloRequired,
    /// This connection already registered as a desktop or joined as a phone.
    AlreadyRegistered,
    /// The session does not exist (or is over).
    UnknownSession,
    /// The connection is not a member of that session.
    NotSessionMember,
    /// The request does not fit the session's state (e.g. a signal before acceptance).
    InvalidState,
    /// Too many messages or attempts.
    RateLimited,
    /// Too many pairing attempts for one code within the server's window; try again later.
    TooManyAttempts,
    /// The server is shedding load.
    Overloaded,
    /// An unexpected server failure.
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

// ---------------------------------------------------------------------------------------------
// Decoding and encoding
// ---------------------------------------------------------------------------------------------

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame exceeds [`MAX_FRAME_BYTES`].
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// The object has no string `type` field.
    #[error("message has no `type` field")]
    MissingType,
    /// The `type` is not a message this side accepts (as logged: control characters escaped,
    /// at most [`MAX_TEXT_CHARS`] characters).
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// The `type` is known but the fields are wrong.
    #[error("invalid `{kind}` message: {detail}")]
    Invalid {
        /// The message type.
        kind: String,
        /// What was wrong (control characters escaped, at most [`MAX_TEXT_CHARS`] characters).
        detail: String,
    },
}

impl DecodeError {
    /// The [`ErrorCode`] a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownType(_) => ErrorCode::UnknownMessageType,
            DecodeError::NotJson(_) | DecodeError::MissingType | DecodeError::Invalid { .. } => {
                ErrorCode::MalformedMessage
            }
        }
    }
}

/// Types of every message a client may send, for classifying decode errors.
const CLIENT_TYPES: &[&str] = &[
    "hello",
    "register_desktop",
    "pair_request",
    "connect_request",
    "renew_code",
    "refresh_ice_servers",
    "pair_response",
    "signal",
    "resume",
    "leave",
    "ping",
    "pong",
    "bye",
    "connection_report",
];

/// Types of every message the server may send.
const SERVER_TYPES: &[&str] = &[
    "welcome",
    "registered",
    "pair_pending",
    "pair_prompt",
    "pair_result",
    "signal",
    "session_token",
    "resumed",
    "ice_servers",
    "peer_restarted",
    "session_ended",
    "error",
    "ping",
    "pong",
    "bye",
];

impl ClientMessage {
    /// Decode one text frame received by the server.
    pub fn decode(frame: &str) -> Result<Self, DecodeError> {
        decode(frame, CLIENT_TYPES)
    }

    /// Encode as one text frame.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// The message's `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::RegisterDesktop { .. } => "register_desktop",
            ClientMessage::PairRequest { .. } => "pair_request",
            ClientMessage::ConnectRequest { .. } => "connect_request",
            ClientMessage::RenewCode => "renew_code",
            ClientMessage::RefreshIceServers => "refresh_ice_servers",
            ClientMessage::PairResponse { .. } => "pair_response",
            ClientMessage::Signal { .. } => "signal",
            ClientMessage::Resume { .. } => "resume",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Pong { .. } => "pong",
            ClientMessage::Bye { .. } => "bye",
            ClientMessage::ConnectionReport { .. } => "connection_report",
        }
    }
}

impl ServerMessage {
    /// Decode one text frame received by a client.
    pub fn decode(frame: &str) -> Result<Self, DecodeError> {
        decode(frame, SERVER_TYPES)
    }

    /// Encode as one text frame.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// Build an error message; the text is truncated to [`MAX_TEXT_CHARS`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: ShortText::truncated(message),
        }
    }

    /// The message's `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::Registered { .. } => "registered",
            ServerMessage::PairPending { .. } => "pair_pending",
            ServerMessage::PairPrompt { .. } => "pair_prompt",
            ServerMessage::PairResult { .. } => "pair_result",
            ServerMessage::Signal { .. } => "signal",
            ServerMessage::SessionToken { .. } => "session_token",
            ServerMessage::Resumed { .. } => "resumed",
            ServerMessage::IceServers { .. } => "ice_servers",
            ServerMessage::PeerRestarted { .. } => "peer_restarted",
            ServerMessage::SessionEnded { .. } => "session_ended",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Ping { .. } => "ping",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Bye { .. } => "bye",
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(frame: &str, known: &[&str]) -> Result<T, DecodeError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge {
            size: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    match serde_json::from_str::<T>(frame) {
        Ok(message) => Ok(message),
        Err(typed_error) => Err(classify(frame, known, &typed_error)),
    }
}

/// Explain why a frame failed to decode: bad JSON, no type, unknown type, or bad fields.
fn classify(frame: &str, known: &[&str], typed_error: &serde_json::Error) -> DecodeError {
    let value: serde_json::Value = match serde_json::from_str(frame) {
        Ok(value) => value,
        Err(e) => return DecodeError::NotJson(e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return DecodeError::NotJson("expected an object".to_owned());
    };
    match object.get("type").and_then(|t| t.as_str()) {
        None => DecodeError::MissingType,
        Some(kind) if !known.contains(&kind) => DecodeError::UnknownType(loggable(kind)),
        Some(kind) => DecodeError::Invalid {
            kind: kind.to_owned(),
            detail: loggable(&typed_error.to_string()),
        },
    }
}

/// Text from a frame made safe for one log line: control characters escaped (a sender cannot
/// start a forged line), cut at [`MAX_TEXT_CHARS`] characters (serde's messages quote the
/// offending value, which may be 64 KiB long).
fn loggable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let (escaped, plain) = match c.is_control() {
                true => (Some(c.escape_default()), None),
                false => (None, Some(c)),
            };
            escaped.into_iter().flatten().chain(plain)
        })
        .take(MAX_TEXT_CHARS)
        .collect()
}

fn encode<T: Serialize>(message: &T) -> String {
    // Every protocol type serializes to a JSON object with string keys; this cannot fail.
    serde_json::to_string(message).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","code":"internal","message":"encode failed: {e}"}}"#)
    })
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// An ICE server the client must use, as in `RTCIceServer`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password. Never logged: `Debug` redacts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The device on the other side of a pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDevice {
    /// Its stable id.
    pub device_id: DeviceId,
    /// Its display name.
    pub device_name: DeviceName,
}

/// Why a string could not become one of the protocol's value types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct InvalidValue {
    what: &'static str,
    why: &'static str,
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parse and validate.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
                let value: String = value.into();
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(&value).map_err(|why| InvalidValue { what: $what, why })?;
                Ok(Self(value))
            }

            /// The string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

macro_rules! display_in_clear {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_newtype!(
    /// Server-assigned connection id: 32 lowercase hex digits (128 random bits).
    ConnectionId,
    "connection id",
    check_hex128
);
string_newtype!(
    /// Pairing session id: 32 lowercase hex digits (128 random bits), unguessable.
    SessionId,
    "session id",
    check_hex128
);
string_newtype!(
    /// Stable device id: 1–64 characters of `[A-Za-z0-9_-]`.
    DeviceId,
    "device id",
    |s| {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1 to 64 characters");
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("may only contain letters, digits, '-' and '_'");
        }
        Ok(())
    }
);
string_newtype!(
    /// Human-readable device name: 1–64 characters, no control characters.
    DeviceName,
    "device name",
    |s| {
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_DEVICE_NAME_CHARS {
            return Err("must be 1 to 64 characters");
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(())
    }
);
string_newtype!(
    /// The routing part of a pairing code: 4–16 characters of [`ROUTING_ALPHABET`].
    ///
    /// The server sees it (it routes the request to the desktop). It is not a secret, but it is
    /// still redacted in logs, since with today's codes it is what a stranger would type.
    RoutingCode,
    "pairing code",
    |s| {
        if s.len() < 4 || s.len() > 16 {
            return Err("must be 4 to 16 characters");
        }
        if !s.bytes().all(|b| ROUTING_ALPHABET.as_bytes().contains(&b)) {
            return Err("contains a character that is not in the code alphabet");
        }
        Ok(())
    }
);
string_newtype!(
    /// Opaque authentication payload: base64url (no padding), at most 8192 characters.
    AuthPayload,
    "auth payload",
    |s| {
        if s.is_empty() || s.len() > MAX_AUTH_PAYLOAD_CHARS {
            return Err("must be 1 to 8192 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("must be base64url without padding");
        }
        Ok(())
    }
);
string_newtype!(
    /// An SDP offer or answer, at most [`MAX_SDP_BYTES`].
    Sdp,
    "sdp",
    |s| {
        if s.is_empty() || s.len() > MAX_SDP_BYTES {
            return Err("must be 1 byte to 48 KiB");
        }
        if !s.starts_with("v=0") {
            return Err("must start with `v=0`");
        }
        Ok(())
    }
);
string_newtype!(
    /// An ICE candidate line, at most [`MAX_CANDIDATE_BYTES`]. Empty means end of candidates in
    /// the browser API; here that is [`Signal::EndOfCandidates`], so it must not be empty.
    CandidateLine,
    "candidate",
    |s| {
        if s.is_empty() || s.len() > MAX_CANDIDATE_BYTES {
            return Err("must be 1 to 1024 bytes");
        }
        if !s.starts_with("candidate:") {
            return Err("must start with `candidate:`");
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(())
    }
);
string_newtype!(
    /// Free text (reasons, messages, software names): at most [`MAX_TEXT_CHARS`] characters.
    ShortText,
    "text",
    |s| {
        if s.chars().count() > MAX_TEXT_CHARS {
            return Err("must be at most 512 characters");
        }
        Ok(())
    }
);

string_newtype!(
    /// A member's secret for resuming a session: 32 lowercase hex digits (128 random bits).
    /// Never logged in clear.
    ResumeToken,
    "resume token",
    check_hex128
);

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(…)")
    }
}

display_in_clear!(
    ConnectionId,
    SessionId,
    DeviceId,
    DeviceName,
    ShortText,
    CandidateLine
);

/// Characters of a routing code: digits and capitals without look-alikes (no 0/O, 1/I/L, U).
pub const ROUTING_ALPHABET: &str = "23456789ABCDEFGHJKMNPQRSTVWXYZ";

impl RoutingCode {
    /// Parse what a person typed: case-insensitive, spaces and dashes ignored.
    pub fn parse_typed(typed: &str) -> Result<Self, InvalidValue> {
        let normalized: String = typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        Self::new(normalized)
    }

    /// A form safe for logs: the first character and the length.
    pub fn redacted(&self) -> String {
        let first = self.0.chars().next().unwrap_or('?');
        format!("{first}…({} chars)", self.0.len())
    }
}

impl fmt::Debug for RoutingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingCode({})", self.redacted())
    }
}

impl fmt::Debug for AuthPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthPayload({} chars)", self.0.len())
    }
}

impl fmt::Debug for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sdp({} bytes)", self.0.len())
    }
}

impl ShortText {
    /// Make a text from anything, cutting it at [`MAX_TEXT_CHARS`] characters.
    pub fn truncated(value: impl Into<String>) -> Self {
        let value: String = value.into();
        match value.char_indices().nth(MAX_TEXT_CHARS) {
            Some((cut, _)) => Self(value[..cut].to_owned()),
            None => Self(value),
        }
    }
}

fn check_hex128(s: &str) -> Result<(), &'static str> {
    if s.len() != 32 {
        return Err("must be 32 hex digits");
    }
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("must be lowercase hex");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
