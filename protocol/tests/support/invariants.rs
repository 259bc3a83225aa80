//! The invariants every decoder of `proxim-protocol` upholds, checked on any input.
//!
//! One source for two runners: the stable mutation test (`tests/mutation.rs`) and the cargo-fuzz
//! targets (`fuzz/`, which include this file by path). A check returns what the decoder made of
//! the input, or the broken invariant as an error; it never decides how to report it.
//!
//! The invariants:
//! - a frame over [`MAX_FRAME_BYTES`] is refused as [`DecodeError::TooLarge`] with its size,
//!   and no frame within the limit is;
//! - a frame that decodes re-encodes to JSON that decodes to the same message, whose `type` tag
//!   is the message's `kind()`, and padding it with whitespace up to the limit changes nothing;
//! - a decode error maps to the [`ErrorCode`] of its kind, and its text is one line (no control
//!   characters) short enough to log and to send back in an `error` message;
//! - an ICE URL that parses prints to a URL that parses to the same value;
//! - the string newtypes accept exactly what their `new` accepts, through every door
//!   (`new`, `FromStr`, serde), and their `Debug` keeps secrets out of logs.

use std::fmt::Debug;

use proxim_protocol::ice::{IceScheme, IceTransport, IceUrl};
use proxim_protocol::{
    AuthPayload, CandidateLine, ClientMessage, ConnectionId, DecodeError, DeviceId, DeviceName,
    ErrorCode, MAX_FRAME_BYTES, MAX_TEXT_CHARS, ROUTING_ALPHABET, RoutingCode, Sdp, ServerMessage,
    SessionId, ShortText,
};

/// Every `type` a client may send: a new variant must join its strategy in `properties.rs` and
/// this list (kept by hand, apart from the crate's own, so that a forgotten one is caught).
pub const CLIENT_KINDS: &[&str] = &[
    "hello",
    "register_desktop",
    "pair_request",
    "connect_request",
    "renew_code",
    "pair_response",
    "signal",
    "leave",
    "ping",
    "pong",
    "bye",
    "connection_report",
];

/// Every `type` the server may send (see [`CLIENT_KINDS`]).
pub const SERVER_KINDS: &[&str] = &[
    "welcome",
    "registered",
    "pair_pending",
    "pair_prompt",
    "pair_result",
    "signal",
    "session_ended",
    "error",
    "ping",
    "pong",
    "bye",
];

/// Every `kind` of a relayed signal.
pub const SIGNAL_KINDS: &[&str] = &["offer", "answer", "candidate", "end_of_candidates", "auth"];

/// What a decoder made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The input decoded; the message's `type` (or the value type's name).
    Decoded(&'static str),
    /// The input was refused with this error code (or, for value types, just refused).
    Refused(&'static str),
}

/// A broken invariant, with what broke it.
pub type Violation = String;

/// The longest text a [`DecodeError`] may display, in characters: a known type tag, a fixed
/// phrase and a detail cut at [`MAX_TEXT_CHARS`].
pub const MAX_DECODE_ERROR_CHARS: usize = MAX_TEXT_CHARS + 128;

/// A message type of one direction.
pub trait Message: Debug + PartialEq + Sized {
    /// `ClientMessage` or `ServerMessage`, for reports.
    const NAME: &'static str;
    /// The type's decoder.
    fn decode(frame: &str) -> Result<Self, DecodeError>;
    /// The type's encoder.
    fn encode(&self) -> String;
    /// The `type` tag.
    fn kind(&self) -> &'static str;
    /// Checks of the decoded value beyond the round trip.
    fn check_decoded(&self) -> Result<(), Violation> {
        Ok(())
    }
}

impl Message for ClientMessage {
    const NAME: &'static str = "ClientMessage";
    fn decode(frame: &str) -> Result<Self, DecodeError> {
        ClientMessage::decode(frame)
    }
    fn encode(&self) -> String {
        ClientMessage::encode(self)
    }
    fn kind(&self) -> &'static str {
        ClientMessage::kind(self)
    }
}

impl Message for ServerMessage {
    const NAME: &'static str = "ServerMessage";
    fn decode(frame: &str) -> Result<Self, DecodeError> {
        ServerMessage::decode(frame)
    }
    fn encode(&self) -> String {
        ServerMessage::encode(self)
    }
    fn kind(&self) -> &'static str {
        ServerMessage::kind(self)
    }
    /// The core parses the ICE URLs of a `welcome` with [`IceUrl::parse`]: check them too.
    fn check_decoded(&self) -> Result<(), Violation> {
        if let ServerMessage::Welcome { ice_servers, .. } = self {
            for url in ice_servers.iter().flat_map(|s| &s.urls) {
                check_ice_url(url)?;
            }
        }
        Ok(())
    }
}

/// Decode `frame` as a client message and check every frame invariant.
pub fn check_client_frame(frame: &str) -> Result<Outcome, Violation> {
    check_frame::<ClientMessage>(frame)
}

/// Decode `frame` as a server message and check every frame invariant.
pub fn check_server_frame(frame: &str) -> Result<Outcome, Violation> {
    check_frame::<ServerMessage>(frame)
}

/// Decode `frame` as an `M` and check every frame invariant.
pub fn check_frame<M: Message>(frame: &str) -> Result<Outcome, Violation> {
    let name = M::NAME;
    let decoded = M::decode(frame);
    if frame.len() > MAX_FRAME_BYTES {
        let want = DecodeError::TooLarge {
            size: frame.len(),
            max: MAX_FRAME_BYTES,
        };
        return match decoded {
            Err(e) if e == want => check_error(&e).map(Outcome::Refused),
            other => Err(format!(
                "{name}: a frame of {} bytes decoded to {other:?}, not {want:?}",
                frame.len()
            )),
        };
    }
    // Any frame padded past the limit is refused, whatever it holds.
    let past_limit = padded(frame, MAX_FRAME_BYTES + 1);
    if !matches!(M::decode(&past_limit), Err(DecodeError::TooLarge { size, .. }) if size == past_limit.len())
    {
        return Err(format!(
            "{name}: a frame padded past the limit is not TooLarge"
        ));
    }
    match decoded {
        Err(e) => {
            if matches!(e, DecodeError::TooLarge { .. }) {
                return Err(format!(
                    "{name}: a frame of {} bytes (within the limit) is {e:?}",
                    frame.len()
                ));
            }
            check_error(&e).map(Outcome::Refused)
        }
        Ok(message) => {
            check_round_trip(&message)?;
            message.check_decoded()?;
            // Trailing whitespace is JSON too: the same frame padded to exactly the limit
            // decodes to the same message.
            let at_limit = padded(frame, MAX_FRAME_BYTES);
            match M::decode(&at_limit) {
                Ok(again) if again == message => {}
                other => {
                    return Err(format!(
                        "{name}: padded to the limit, {message:?} decoded to {other:?}"
                    ));
                }
            }
            Ok(Outcome::Decoded(message.kind()))
        }
    }
}

/// Encode `message`, decode the frame again and compare.
pub fn check_round_trip<M: Message>(message: &M) -> Result<(), Violation> {
    let name = M::NAME;
    let encoded = message.encode();
    if encoded.len() > MAX_FRAME_BYTES {
        return Err(format!(
            "{name}: {message:?} encodes to {} bytes, past the frame limit",
            encoded.len()
        ));
    }
    match M::decode(&encoded) {
        Ok(again) if &again == message => {}
        other => {
            return Err(format!(
                "{name}: {message:?} encodes to {encoded} which decodes to {other:?}"
            ));
        }
    }
    let tag = serde_json::from_str::<serde_json::Value>(&encoded)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    if tag.as_deref() != Some(message.kind()) {
        return Err(format!(
            "{name}: {message:?} encodes with type {tag:?}, not {:?}",
            message.kind()
        ));
    }
    if message.encode() != encoded {
        return Err(format!("{name}: encoding {message:?} is not deterministic"));
    }
    Ok(())
}

/// A decode error maps to its code, displays short, and survives the trip to the client.
pub fn check_error(error: &DecodeError) -> Result<&'static str, Violation> {
    let code = error.code();
    let (want, name) = match error {
        DecodeError::TooLarge { .. } => (ErrorCode::FrameTooLarge, "frame_too_large"),
        DecodeError::UnknownType(_) => (ErrorCode::UnknownMessageType, "unknown_message_type"),
        DecodeError::NotJson(_) => (ErrorCode::MalformedMessage, "not_json"),
        DecodeError::MissingType => (ErrorCode::MalformedMessage, "missing_type"),
        DecodeError::Invalid { .. } => (ErrorCode::MalformedMessage, "invalid"),
        _ => (code, "other"),
    };
    if code != want {
        return Err(format!("{error:?} maps to {code:?}, not {want:?}"));
    }
    // The error is logged (and sent back): short, and one line that the sender cannot forge.
    let text = error.to_string();
    let chars = text.chars().count();
    if text.is_empty() || chars > MAX_DECODE_ERROR_CHARS || text.chars().any(char::is_control) {
        return Err(format!(
            "{:?} displays as {chars} characters (limit {MAX_DECODE_ERROR_CHARS}), \
             control characters: {}",
            clip(&format!("{error:?}")),
            text.chars().any(char::is_control),
        ));
    }
    // The server answers with `ServerMessage::error(code, text)`: that must be a valid frame.
    check_round_trip(&ServerMessage::error(code, text))?;
    Ok(name)
}

/// Parse an ICE server URL and check that a valid one prints to itself.
pub fn check_ice_url(url: &str) -> Result<Outcome, Violation> {
    let parsed = match IceUrl::parse(url) {
        Err(e) => {
            if e.why.is_empty() || e.url != url {
                return Err(format!("ICE URL {url:?}: refused without a reason: {e:?}"));
            }
            return Ok(Outcome::Refused("invalid_ice_url"));
        }
        Ok(parsed) => parsed,
    };
    let consistent = !parsed.host.is_empty()
        && parsed.port != 0
        && parsed.is_tls() == matches!(parsed.scheme, IceScheme::Stuns | IceScheme::Turns)
        && parsed.is_turn() == matches!(parsed.scheme, IceScheme::Turn | IceScheme::Turns)
        && match parsed.scheme {
            IceScheme::Stun => parsed.transport == IceTransport::Udp,
            IceScheme::Stuns | IceScheme::Turns => parsed.transport == IceTransport::Tcp,
            IceScheme::Turn => true,
        };
    if !consistent {
        return Err(format!("ICE URL {url:?}: inconsistent {parsed:?}"));
    }
    let printed = parsed.to_string();
    match IceUrl::parse(&printed) {
        Ok(again) if again == parsed => Ok(Outcome::Decoded("ice_url")),
        other => Err(format!(
            "ICE URL {url:?}: {parsed:?} prints as {printed:?}, which parses to {other:?}"
        )),
    }
}

/// Run `value` through [`RoutingCode::parse_typed`] and every string newtype's `new`.
///
/// Returns one outcome per type, in a fixed order.
pub fn check_value_strings(value: &str) -> Result<Vec<Outcome>, Violation> {
    // The value as a JSON string, as it arrives inside a frame.
    let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
    let outcomes = vec![
        check_typed_code(value)?,
        check_newtype::<ConnectionId>("connection_id", value, &json)?,
        check_newtype::<SessionId>("session_id", value, &json)?,
        check_newtype::<DeviceId>("device_id", value, &json)?,
        check_newtype::<DeviceName>("device_name", value, &json)?,
        check_newtype::<RoutingCode>("routing_code", value, &json)?,
        check_newtype::<AuthPayload>("auth_payload", value, &json)?,
        check_newtype::<Sdp>("sdp", value, &json)?,
        check_newtype::<CandidateLine>("candidate", value, &json)?,
        check_newtype::<ShortText>("short_text", value, &json)?,
    ];
    check_secret_debug::<RoutingCode>(value, 1)?;
    check_secret_debug::<AuthPayload>(value, 24)?;
    check_secret_debug::<Sdp>(value, 24)?;
    let truncated = ShortText::truncated(value);
    let prefix = value.starts_with(truncated.as_str());
    let full = truncated.as_str().len() == value.len();
    let fits = value.chars().count() <= MAX_TEXT_CHARS;
    if ShortText::new(truncated.as_str()).is_err() || !prefix || full != fits {
        return Err(format!(
            "ShortText::truncated({:?}) gave {:?}",
            clip(value),
            clip(truncated.as_str())
        ));
    }
    Ok(outcomes)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The string newtypes, seen through the doors that build them.
pub trait StringNewtype:
    Debug
    + Clone
    + PartialEq
    + std::str::FromStr
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Sized
{
    /// `new`.
    fn build(value: &str) -> Result<Self, String>;
    /// `as_str`.
    fn text(&self) -> &str;
}

macro_rules! string_newtypes {
    ($($ty:ty),*) => {$(
        impl StringNewtype for $ty {
            fn build(value: &str) -> Result<Self, String> {
                <$ty>::new(value).map_err(|e| e.to_string())
            }
            fn text(&self) -> &str {
                self.as_str()
            }
        }
    )*};
}

string_newtypes!(
    ConnectionId,
    SessionId,
    DeviceId,
    DeviceName,
    RoutingCode,
    AuthPayload,
    Sdp,
    CandidateLine,
    ShortText
);

fn check_newtype<T: StringNewtype>(
    name: &'static str,
    value: &str,
    json: &str,
) -> Result<Outcome, Violation> {
    let built = T::build(value);
    let parsed = value.parse::<T>().ok();
    let deserialized = serde_json::from_str::<T>(json).ok();
    if built.as_ref().ok() != parsed.as_ref() || built.as_ref().ok() != deserialized.as_ref() {
        return Err(format!(
            "{name} {:?}: new, FromStr and serde disagree: {built:?} / {parsed:?} / {deserialized:?}",
            clip(value)
        ));
    }
    match built {
        Err(why) if why.is_empty() => Err(format!("{name} {:?}: refused silently", clip(value))),
        Err(_) => Ok(Outcome::Refused(name)),
        Ok(v) => {
            let encoded = serde_json::to_string(&v).map_err(|e| e.to_string())?;
            if v.text() != value || encoded != json {
                return Err(format!(
                    "{name} {:?}: stored or serialized differently",
                    clip(value)
                ));
            }
            Ok(Outcome::Decoded(name))
        }
    }
}

fn check_typed_code(typed: &str) -> Result<Outcome, Violation> {
    let Ok(code) = RoutingCode::parse_typed(typed) else {
        // A valid code is its own typed form: if `new` takes it, `parse_typed` must too.
        if RoutingCode::new(typed).is_ok() {
            return Err(format!("parse_typed refuses the valid code {typed:?}"));
        }
        return Ok(Outcome::Refused("typed_code"));
    };
    let text = code.as_str();
    let well_formed = (4..=16).contains(&text.len())
        && text
            .bytes()
            .all(|b| ROUTING_ALPHABET.as_bytes().contains(&b));
    if !well_formed || RoutingCode::parse_typed(text).as_ref() != Ok(&code) {
        return Err(format!("parse_typed({typed:?}) gave {text:?}"));
    }
    if RoutingCode::new(typed).is_ok_and(|direct| direct != code) {
        return Err(format!("parse_typed({typed:?}) differs from new"));
    }
    Ok(Outcome::Decoded("typed_code"))
}

/// A secret's `Debug` must not show it; `min_len` skips values short enough to appear in the
/// redacted form by chance (`AuthPayload(5 chars)` contains `chars`).
fn check_secret_debug<T: StringNewtype>(value: &str, min_len: usize) -> Result<(), Violation> {
    match T::build(value) {
        Ok(v) if value.len() >= min_len && format!("{v:?}").contains(value) => {
            Err(format!("{v:?} shows the secret {:?}", clip(value)))
        }
        _ => Ok(()),
    }
}

/// `frame` followed by spaces up to `len` bytes.
fn padded(frame: &str, len: usize) -> String {
    let mut out = String::with_capacity(len.max(frame.len()));
    out.push_str(frame);
    out.push_str(&" ".repeat(len.saturating_sub(frame.len())));
    out
}

/// The start of a long value, for reports.
pub fn clip(value: &str) -> String {
    const SHOWN: usize = 200;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…({} bytes)", &value[..cut], value.len()),
        None => value.to_owned(),
    }
}
