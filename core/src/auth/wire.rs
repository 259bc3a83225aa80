//! The authentication messages the devices exchange through the server as opaque payloads.
//!
//! Each [`AuthMessage`] is JSON inside base64url (the protocol's [`AuthPayload`]). Binary fields
//! are fixed-size and base64url too; the decoder checks every size and refuses unknown fields,
//! so a tampered payload is a typed [`WireError`], never a panic or a half-read message.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proxim_protocol::{AuthPayload, MAX_AUTH_PAYLOAD_CHARS};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::code::SecretKind;

/// The version of the authentication messages.
pub const AUTH_VERSION: u8 = 1;

/// Longest device name inside an authentication message, in characters.
const MAX_NAME_CHARS: usize = 64;

/// Why an authentication payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed authentication payload: {0}")]
pub struct WireError(pub String);

/// Fixed-size bytes, base64url (no padding) on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes<{N}>({}…)", hex::encode(&self.0[..N.min(4)]))
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.len() > N * 2 + 4 {
            return Err(serde::de::Error::custom(format!("expected {N} bytes")));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("not base64url"))?;
        let array: [u8; N] = bytes.try_into().map_err(|v: Vec<u8>| {
            serde::de::Error::custom(format!("{} bytes, expected {N}", v.len()))
        })?;
        Ok(Bytes(array))
    }
}

/// A DTLS certificate fingerprint: SHA-256, 32 bytes. Shown as in SDP: `ab:cd:…` lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub Bytes<32>);

impl Fingerprint {
    /// Parse the value of an SDP `a=fingerprint:sha-256 AB:CD:…` line (the part after the
    /// algorithm), case-insensitive.
    pub fn from_sdp_value(value: &str) -> Option<Fingerprint> {
        let mut bytes = [0u8; 32];
        let mut parts = value.trim().split(':');
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Fingerprint(Bytes(bytes)))
    }

    /// The SDP form: `ab:cd:…`.
    pub fn to_sdp_value(&self) -> String {
        let hex: Vec<String> = self.0.0.iter().map(|b| format!("{b:02x}")).collect();
        hex.join(":")
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", &self.to_sdp_value()[..11])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_sdp_value())
    }
}

/// Why a device refuses a connection, told to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefuseReason {
    /// The desktop does not (or no longer) trust this phone's identity key.
    NotTrusted,
    /// The code this request was made with is no longer the desktop's.
    CodeUsed,
    /// The request carried no valid authentication.
    BadRequest,
}

/// Why a device gives up the handshake, told to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbortReason {
    /// The other side's key confirmation did not verify (wrong code, or a man in the middle).
    KeyConfirmation,
    /// The other side's identity signature did not verify, or its key changed.
    Identity,
    /// The other side's message was malformed.
    Malformed,
    /// The other side's SDP carried a DTLS fingerprint it had not authenticated.
    Fingerprint,
}

/// One authentication message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuthMessage {
    /// Phone → desktop, in `pair_request`: SPAKE2 message A over the code's secret.
    PakeHello {
        /// [`AUTH_VERSION`].
        v: u8,
        /// Which of the desktop's secrets the phone used.
        secret: SecretKind,
        /// SPAKE2 message (33 bytes).
        pake: Bytes<33>,
        /// The phone's identity key (Ed25519).
        id: Bytes<32>,
        /// The phone's name.
        name: String,
        /// The phone's DTLS certificate fingerprint.
        fp: Fingerprint,
    },
    /// Desktop → phone, in `pair_response`: SPAKE2 message B and the desktop's key
    /// confirmation, which covers both fingerprints and identity keys.
    PakeReply {
        /// SPAKE2 message (33 bytes).
        pake: Bytes<33>,
        /// The desktop's identity key.
        id: Bytes<32>,
        /// The desktop's name.
        name: String,
        /// The desktop's DTLS certificate fingerprint.
        fp: Fingerprint,
        /// HMAC of the transcript under the desktop's confirmation key.
        mac: Bytes<32>,
    },
    /// Phone → desktop, as a `signal {kind: auth}`: the phone's key confirmation.
    PakeConfirm {
        /// HMAC of the transcript under the phone's confirmation key.
        mac: Bytes<32>,
    },
    /// Phone → desktop, in `connect_request`: a trusted phone reconnecting.
    TrustedHello {
        /// [`AUTH_VERSION`].
        v: u8,
        /// The phone's identity key.
        id: Bytes<32>,
        /// A fresh random nonce.
        nonce: Bytes<32>,
        /// The phone's name.
        name: String,
        /// The phone's DTLS certificate fingerprint.
        fp: Fingerprint,
    },
    /// Desktop → phone, in `pair_response`: the desktop's signature over the transcript.
    TrustedReply {
        /// The desktop's identity key.
        id: Bytes<32>,
        /// A fresh random nonce.
        nonce: Bytes<32>,
        /// The desktop's name.
        name: String,
        /// The desktop's DTLS certificate fingerprint.
        fp: Fingerprint,
        /// Ed25519 signature over the transcript.
        sig: Bytes<64>,
    },
    /// Phone → desktop, as a `signal {kind: auth}`: the phone's signature over the transcript.
    TrustedConfirm {
        /// Ed25519 signature over the transcript.
        sig: Bytes<64>,
    },
    /// Desktop → phone, in a rejecting `pair_response`.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// Either way, as a `signal {kind: auth}`: the sender gives up.
    Abort {
        /// Why.
        reason: AbortReason,
    },
}

impl AuthMessage {
    /// Decode a payload; every field is checked.
    pub fn decode(payload: &AuthPayload) -> Result<AuthMessage, WireError> {
        Self::decode_str(payload.as_str())
    }

    /// Decode the base64url text of a payload (for fuzzing and tests).
    pub fn decode_str(text: &str) -> Result<AuthMessage, WireError> {
        if text.len() > MAX_AUTH_PAYLOAD_CHARS {
            return Err(WireError(format!("{} characters is too long", text.len())));
        }
        let json = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| WireError("not base64url".into()))?;
        let message: AuthMessage =
            serde_json::from_slice(&json).map_err(|e| WireError(e.to_string()))?;
        message.validate()?;
        Ok(message)
    }

    /// Encode as a payload.
    pub fn encode(&self) -> AuthPayload {
        // Serializing these types cannot fail, and the result is well under the payload limit
        // (the largest message is a few hundred bytes), so the payload is always valid.
        let json = serde_json::to_vec(self).unwrap_or_default();
        AuthPayload::new(URL_SAFE_NO_PAD.encode(json))
            .unwrap_or_else(|_| AuthPayload::new("e30").unwrap_or_else(|_| std::process::abort()))
    }

    /// The message's tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthMessage::PakeHello { .. } => "pake_hello",
            AuthMessage::PakeReply { .. } => "pake_reply",
            AuthMessage::PakeConfirm { .. } => "pake_confirm",
            AuthMessage::TrustedHello { .. } => "trusted_hello",
            AuthMessage::TrustedReply { .. } => "trusted_reply",
            AuthMessage::TrustedConfirm { .. } => "trusted_confirm",
            AuthMessage::Refused { .. } => "refused",
            AuthMessage::Abort { .. } => "abort",
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        let (version, name) = match self {
            AuthMessage::PakeHello { v, name, .. } | AuthMessage::TrustedHello { v, name, .. } => {
                (Some(*v), Some(name))
            }
            AuthMessage::PakeReply { name, .. } | AuthMessage::TrustedReply { name, .. } => {
                (None, Some(name))
            }
            _ => (None, None),
        };
        if let Some(v) = version
            && v != AUTH_VERSION
        {
            return Err(WireError(format!("version {v} is not supported")));
        }
        if let Some(name) = name {
            let chars = name.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
                return Err(WireError(
                    "the device name is empty, too long or has control characters".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(byte: u8) -> Fingerprint {
        Fingerprint(Bytes([byte; 32]))
    }

    fn samples() -> Vec<AuthMessage> {
        vec![
            AuthMessage::PakeHello {
                v: AUTH_VERSION,
                secret: SecretKind::Short,
                pake: Bytes([7; 33]),
                id: Bytes([1; 32]),
                name: "Ana's phone".into(),
                fp: fp(0xab),
            },
            AuthMessage::PakeReply {
                pake: Bytes([8; 33]),
                id: Bytes([2; 32]),
                name: "Desk".into(),
                fp: fp(0xcd),
                mac: Bytes([3; 32]),
            },
            AuthMessage::PakeConfirm {
                mac: Bytes([4; 32]),
            },
            AuthMessage::TrustedHello {
                v: AUTH_VERSION,
                id: Bytes([1; 32]),
                nonce: Bytes([5; 32]),
                name: "Ana's phone".into(),
                fp: fp(1),
            },
            AuthMessage::TrustedReply {
                id: Bytes([2; 32]),
                nonce: Bytes([6; 32]),
                name: "Desk".into(),
                fp: fp(2),
                sig: Bytes([9; 64]),
            },
            AuthMessage::TrustedConfirm {
                sig: Bytes([9; 64]),
            },
            AuthMessage::Refused {
                reason: RefuseReason::NotTrusted,
            },
            AuthMessage::Abort {
                reason: AbortReason::KeyConfirmation,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let payload = message.encode();
            assert_eq!(AuthMessage::decode(&payload).unwrap(), message);
        }
    }

    #[test]
    fn the_json_is_pinned() {
        let payload = AuthMessage::PakeConfirm {
            mac: Bytes([0; 32]),
        }
        .encode();
        let json = URL_SAFE_NO_PAD.decode(payload.as_str()).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"t":"pake_confirm","mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
        );
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn tampered_payloads_are_typed_errors() {
        let good_mac = URL_SAFE_NO_PAD.encode([0u8; 32]);
        for (text, needle) in [
            ("***".to_owned(), "base64url"),
            (b64("not json"), "expected"),
            (b64(r#"{"t":"pake_confirm"}"#), "missing field"),
            (b64(r#"{"t":"nope"}"#), "unknown variant"),
            (
                b64(&format!(
                    r#"{{"t":"pake_confirm","mac":"{good_mac}","x":1}}"#
                )),
                "unknown field",
            ),
            (b64(r#"{"t":"pake_confirm","mac":"AAAA"}"#), "expected 32"),
            (b64(r#"{"t":"pake_confirm","mac":"!!"}"#), "base64url"),
            (b64(r#"{"t":"pake_confirm","mac":7}"#), "invalid type"),
            (
                b64(r#"{"t":"refused","reason":"because"}"#),
                "unknown variant",
            ),
            ("A".repeat(MAX_AUTH_PAYLOAD_CHARS + 1), "too long"),
        ] {
            let error = AuthMessage::decode_str(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn versions_and_names_are_checked() {
        let mut hello = samples().remove(0);
        if let AuthMessage::PakeHello { v, .. } = &mut hello {
            *v = 9;
        }
        let error = AuthMessage::decode(&hello.encode())
            .unwrap_err()
            .to_string();
        assert!(error.contains("version 9"), "{error}");
        let mut hello = samples().remove(0);
        if let AuthMessage::PakeHello { name, .. } = &mut hello {
            *name = "bad\nname".into();
        }
        assert!(AuthMessage::decode(&hello.encode()).is_err());
    }

    #[test]
    fn fingerprints_parse_as_in_sdp() {
        let value = "AB:cd:".to_owned() + &["00"; 30].join(":");
        let parsed = Fingerprint::from_sdp_value(&value).unwrap();
        assert_eq!(parsed.0.0[0], 0xab);
        assert_eq!(parsed.to_sdp_value(), value.to_lowercase());
        assert!(Fingerprint::from_sdp_value(&value[..value.len() - 3]).is_none());
        assert!(Fingerprint::from_sdp_value(&(value.clone() + ":00")).is_none());
        assert!(Fingerprint::from_sdp_value("zz").is_none());
        assert!(Fingerprint::from_sdp_value("").is_none());
    }
}
