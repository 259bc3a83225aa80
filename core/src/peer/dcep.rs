//! The Data Channel Establishment Protocol (RFC 8832) and the payload protocol identifiers of
//! data channel messages (RFC 8831 §8).

use bytes::{BufMut, Bytes};

use super::ChannelOptions;

/// DCEP messages.
pub(crate) const PPID_DCEP: u32 = 50;
/// A text message.
pub(crate) const PPID_STRING: u32 = 51;
/// A binary message.
pub(crate) const PPID_BINARY: u32 = 53;
/// An empty text message (sent as one zero byte).
pub(crate) const PPID_STRING_EMPTY: u32 = 56;
/// An empty binary message (sent as one zero byte).
pub(crate) const PPID_BINARY_EMPTY: u32 = 57;
/// The deprecated partial text PPID some old stacks send (its binary twin, 52, is binary
/// anyway).
pub(crate) const PPID_STRING_PARTIAL: u32 = 54;

const MSG_OPEN: u8 = 0x03;
const MSG_ACK: u8 = 0x02;
/// Longest label or protocol accepted.
const MAX_NAME: usize = 1024;

/// A DCEP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DcepMessage {
    Open {
        options: ChannelOptions,
        priority: u16,
        label: String,
        protocol: String,
    },
    Ack,
}

/// Why a DCEP message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DcepError {
    #[error("empty DCEP message")]
    Empty,
    #[error("unknown DCEP message type {0:#04x}")]
    UnknownType(u8),
    #[error("DATA_CHANNEL_OPEN too short")]
    Truncated,
    #[error("unknown channel type {0:#04x}")]
    UnknownChannelType(u8),
    #[error("label or protocol longer than {MAX_NAME} bytes or not UTF-8")]
    BadName,
}

impl DcepMessage {
    pub(crate) fn parse(data: &[u8]) -> Result<DcepMessage, DcepError> {
        match data.first() {
            None => Err(DcepError::Empty),
            Some(&MSG_ACK) => Ok(DcepMessage::Ack),
            Some(&MSG_OPEN) => {
                if data.len() < 12 {
                    return Err(DcepError::Truncated);
                }
                let channel_type = data[1];
                let priority = u16::from_be_bytes([data[2], data[3]]);
                let param = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let label_len = usize::from(u16::from_be_bytes([data[8], data[9]]));
                let protocol_len = usize::from(u16::from_be_bytes([data[10], data[11]]));
                if label_len > MAX_NAME || protocol_len > MAX_NAME {
                    return Err(DcepError::BadName);
                }
                let label = data.get(12..12 + label_len).ok_or(DcepError::Truncated)?;
                let protocol = data
                    .get(12 + label_len..12 + label_len + protocol_len)
                    .ok_or(DcepError::Truncated)?;
                let ordered = channel_type & 0x80 == 0;
                let param16 = param.min(u32::from(u16::MAX)) as u16;
                let (max_retransmits, max_packet_life_time) = match channel_type & 0x7f {
                    0x00 => (None, None),
                    0x01 => (Some(param16), None),
                    0x02 => (None, Some(param16)),
                    other => return Err(DcepError::UnknownChannelType(other)),
                };
                Ok(DcepMessage::Open {
                    options: ChannelOptions {
                        ordered,
                        max_retransmits,
                        max_packet_life_time,
                    },
                    priority,
                    label: String::from_utf8(label.to_vec()).map_err(|_| DcepError::BadName)?,
                    protocol: String::from_utf8(protocol.to_vec())
                        .map_err(|_| DcepError::BadName)?,
                })
            }
            Some(other) => Err(DcepError::UnknownType(*other)),
        }
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            DcepMessage::Ack => Bytes::from_static(&[MSG_ACK]),
            DcepMessage::Open {
                options,
                priority,
                label,
                protocol,
            } => {
                let (kind, param) = match (options.max_retransmits, options.max_packet_life_time) {
                    (Some(n), _) => (0x01, u32::from(n)),
                    (None, Some(ms)) => (0x02, u32::from(ms)),
                    (None, None) => (0x00, 0),
                };
                let kind = if options.ordered { kind } else { kind | 0x80 };
                let mut out = Vec::with_capacity(12 + label.len() + protocol.len());
                out.put_u8(MSG_OPEN);
                out.put_u8(kind);
                out.put_u16(*priority);
                out.put_u32(param);
                out.put_u16(label.len() as u16);
                out.put_u16(protocol.len() as u16);
                out.put_slice(label.as_bytes());
                out.put_slice(protocol.as_bytes());
                Bytes::from(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trips_for_every_channel_type() {
        for options in [
            ChannelOptions::default(),
            ChannelOptions::unreliable(),
            ChannelOptions {
                ordered: true,
                max_retransmits: None,
                max_packet_life_time: Some(150),
            },
            ChannelOptions {
                ordered: false,
                max_retransmits: Some(3),
                max_packet_life_time: None,
            },
        ] {
            let m = DcepMessage::Open {
                options: options.clone(),
                priority: 256,
                label: "proxim-file/1".into(),
                protocol: String::new(),
            };
            assert_eq!(DcepMessage::parse(&m.to_bytes()).unwrap(), m);
        }
        assert_eq!(
            DcepMessage::parse(&DcepMessage::Ack.to_bytes()).unwrap(),
            DcepMessage::Ack
        );
    }

    #[test]
    fn bad_messages_are_errors() {
        assert_eq!(DcepMessage::parse(&[]), Err(DcepError::Empty));
        assert_eq!(DcepMessage::parse(&[9]), Err(DcepError::UnknownType(9)));
        assert_eq!(DcepMessage::parse(&[3, 0, 0]), Err(DcepError::Truncated));
        let mut open = DcepMessage::Open {
            options: ChannelOptions::default(),
            priority: 0,
            label: "x".into(),
            protocol: String::new(),
        }
        .to_bytes()
        .to_vec();
        open[1] = 0x05;
        assert_eq!(
            DcepMessage::parse(&open),
            Err(DcepError::UnknownChannelType(5))
        );
        open[1] = 0;
        open[9] = 200; // label longer than the message
        assert_eq!(DcepMessage::parse(&open), Err(DcepError::Truncated));
    }
}
