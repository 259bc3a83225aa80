//! The text messages of the transfer protocol, parsed into [`Control`] and checked on the way in.

use serde::{Deserialize, Serialize};

use super::TransferError;

/// Longest file name accepted in a header, in bytes.
pub(super) const MAX_NAME_BYTES: usize = 1024;
/// Longest control message (header, trailer, ack…) accepted, in bytes.
const MAX_CONTROL_BYTES: usize = 4096;
/// Hex digits of a content id (128 bits).
pub(super) const CONTENT_ID_HEX: usize = 32;

/// The text messages of the transfer protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Control {
    /// First message from the sender. Version 2 carries the content id the receiver keeps its
    /// part file under; the receiver answers with [`Control::Accept`]. Version 1 has none and
    /// data follows at once.
    Header {
        version: u32,
        name: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_id: Option<String>,
    },
    /// The receiver (version 2): it holds the first `offset` bytes already, whose SHA-256 is
    /// `prefix_sha256` (present when `offset > 0`).
    Accept {
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_sha256: Option<String>,
    },
    /// The sender (version 2): data follows from `offset`, either the receiver's offset (its
    /// prefix matched the file) or 0 (start over).
    Start { offset: u64 },
    /// Last message from the sender.
    Trailer { sha256: String },
    /// The receiver's verdict.
    Ack {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Control {
    pub(super) fn encode(&self) -> String {
        // Serializing these plain structs to a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and check a control message from the other side.
    pub(super) fn decode(text: &str) -> Result<Self, TransferError> {
        if text.len() > MAX_CONTROL_BYTES {
            return Err(TransferError::Protocol(format!(
                "control message of {} bytes exceeds {MAX_CONTROL_BYTES}",
                text.len()
            )));
        }
        let message: Control = serde_json::from_str(text)
            .map_err(|e| TransferError::Protocol(format!("bad control message: {e}")))?;
        match &message {
            Control::Header { name, .. } if name.is_empty() || name.len() > MAX_NAME_BYTES => {
                Err(TransferError::BadName(format!(
                    "name of {} bytes (1..={MAX_NAME_BYTES} allowed)",
                    name.len()
                )))
            }
            Control::Header {
                content_id: Some(id),
                ..
            } if !is_lower_hex(id, CONTENT_ID_HEX) => Err(TransferError::Protocol(format!(
                "content id is not {CONTENT_ID_HEX} lowercase hex digits"
            ))),
            Control::Accept {
                offset,
                prefix_sha256,
            } => match prefix_sha256 {
                Some(hash) if !is_sha256_hex(hash) => Err(TransferError::Protocol(
                    "prefix hash is not 64 lowercase hex digits".to_owned(),
                )),
                None if *offset > 0 => Err(TransferError::Protocol(
                    "accept at an offset without the prefix's hash".to_owned(),
                )),
                _ => Ok(message),
            },
            Control::Trailer { sha256 } if !is_sha256_hex(sha256) => Err(TransferError::Protocol(
                "trailer hash is not 64 lowercase hex digits".to_owned(),
            )),
            Control::Ack {
                sha256: Some(sha256),
                ..
            } if !is_sha256_hex(sha256) => Err(TransferError::Protocol(
                "ack hash is not 64 lowercase hex digits".to_owned(),
            )),
            _ => Ok(message),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Control::Header { .. } => "header",
            Control::Accept { .. } => "accept",
            Control::Start { .. } => "start",
            Control::Trailer { .. } => "trailer",
            Control::Ack { .. } => "ack",
        }
    }
}

pub(super) fn is_sha256_hex(text: &str) -> bool {
    is_lower_hex(text, 64)
}

pub(super) fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn control_messages_round_trip() {
        let messages = [
            Control::Header {
                version: 1,
                name: "photo.jpg".to_owned(),
                size: 12345,
                content_id: None,
            },
            Control::Header {
                version: 2,
                name: "photo.jpg".to_owned(),
                size: 12345,
                content_id: Some(ID.to_owned()),
            },
            Control::Accept {
                offset: 0,
                prefix_sha256: None,
            },
            Control::Accept {
                offset: 65536,
                prefix_sha256: Some(HASH.to_owned()),
            },
            Control::Start { offset: 65536 },
            Control::Trailer {
                sha256: HASH.to_owned(),
            },
            Control::Ack {
                ok: true,
                sha256: Some(HASH.to_owned()),
                error: None,
            },
            Control::Ack {
                ok: false,
                sha256: None,
                error: Some("nope".to_owned()),
            },
        ];
        for message in messages {
            assert_eq!(Control::decode(&message.encode()).unwrap(), message);
        }
        assert_eq!(
            Control::decode(r#"{"type":"header","version":1,"name":"a","size":0}"#).unwrap(),
            Control::Header {
                version: 1,
                name: "a".to_owned(),
                size: 0,
                content_id: None,
            }
        );
        // The wire form, as another implementation would write it.
        assert_eq!(
            Control::Accept {
                offset: 7,
                prefix_sha256: Some(HASH.to_owned())
            }
            .encode(),
            format!(r#"{{"type":"accept","offset":7,"prefix_sha256":"{HASH}"}}"#)
        );
        assert_eq!(
            Control::Start { offset: 7 }.encode(),
            r#"{"type":"start","offset":7}"#
        );
    }

    #[test]
    fn malformed_control_messages_are_typed_errors() {
        let long_name = format!(
            r#"{{"type":"header","version":1,"name":"{}","size":1}}"#,
            "a".repeat(MAX_NAME_BYTES + 1)
        );
        let huge = format!(r#"{{"type":"trailer","sha256":"{}"}}"#, "0".repeat(5000));
        let protocol_errors = [
            "",
            "not json",
            "{}",
            "[]",
            "null",
            r#"{"type":"header"}"#,
            r#"{"type":"header","version":1,"name":"a"}"#,
            r#"{"type":"header","version":1,"name":"a","size":-1}"#,
            r#"{"type":"header","version":1,"name":"a","size":"12"}"#,
            r#"{"type":"header","version":1,"name":"a","size":18446744073709551616}"#,
            r#"{"type":"header","version":-1,"name":"a","size":1}"#,
            r#"{"type":"header","version":1,"name":7,"size":1}"#,
            r#"{"type":"header","version":2,"name":"a","size":1,"content_id":"abc"}"#,
            r#"{"type":"header","version":2,"name":"a","size":1,"content_id":"0123456789ABCDEF0123456789ABCDEF"}"#,
            r#"{"type":"header","version":2,"name":"a","size":1,"content_id":7}"#,
            r#"{"type":"accept"}"#,
            r#"{"type":"accept","offset":5}"#,
            r#"{"type":"accept","offset":5,"prefix_sha256":"abc"}"#,
            r#"{"type":"accept","offset":-1}"#,
            r#"{"type":"start"}"#,
            r#"{"type":"start","offset":"0"}"#,
            r#"{"type":"trailer"}"#,
            r#"{"type":"trailer","sha256":"abc"}"#,
            r#"{"type":"trailer","sha256":"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"}"#,
            r#"{"type":"trailer","sha256":"zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
            r#"{"type":"ack","sha256":"abc"}"#,
            r#"{"type":"ack","ok":true,"sha256":"abc"}"#,
            r#"{"type":"bogus","ok":true}"#,
            r#"{"type":"header","version":1,"name":"a","size":1"#,
            &huge,
        ];
        for text in protocol_errors {
            match Control::decode(text) {
                Err(TransferError::Protocol(_)) => {}
                other => panic!("{text:?} gave {other:?}"),
            }
        }
        for text in [
            r#"{"type":"header","version":1,"name":"","size":1}"#,
            long_name.as_str(),
        ] {
            assert!(
                matches!(Control::decode(text), Err(TransferError::BadName(_))),
                "{text:?}"
            );
        }
    }
}
