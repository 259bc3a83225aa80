//! Parameters: those of INIT/INIT ACK, and those of RE-CONFIG (RFC 6525).

use bytes::{Buf, BufMut, Bytes};

use super::padded;

const STATE_COOKIE: u16 = 7;
const SUPPORTED_EXTENSIONS: u16 = 0x8008;
const FORWARD_TSN_SUPPORTED: u16 = 0xc000;
const ZERO_CHECKSUM_ACCEPTABLE: u16 = 0x8001;

const OUTGOING_RESET_REQUEST: u16 = 13;
const INCOMING_RESET_REQUEST: u16 = 14;
const RECONFIG_RESPONSE: u16 = 16;

/// The error detection method "DTLS" of the zero-checksum extension (RFC 9653 §5).
pub(crate) const ZERO_CHECKSUM_EDMID_DTLS: u32 = 1;

/// What INIT and INIT ACK carry beyond their fixed fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InitParams {
    /// Forward-TSN-Supported (RFC 3758).
    pub(crate) forward_tsn: bool,
    /// Supported Extensions: chunk types (RFC 5061 §4.2.7).
    pub(crate) extensions: Vec<u8>,
    /// Zero Checksum Acceptable, with its error detection method (RFC 9653).
    pub(crate) zero_checksum: Option<u32>,
    /// The State Cookie (INIT ACK only).
    pub(crate) cookie: Option<Bytes>,
}

impl InitParams {
    pub(crate) fn parse(mut body: Bytes) -> Result<InitParams, &'static str> {
        let mut params = InitParams::default();
        while body.remaining() >= 4 {
            let kind = u16::from_be_bytes([body[0], body[1]]);
            let length = usize::from(u16::from_be_bytes([body[2], body[3]]));
            if length < 4 || length > body.len() {
                return Err("parameter length out of bounds");
            }
            let value = body.slice(4..length);
            match kind {
                STATE_COOKIE => params.cookie = Some(value),
                SUPPORTED_EXTENSIONS => params.extensions = value.to_vec(),
                FORWARD_TSN_SUPPORTED => params.forward_tsn = true,
                ZERO_CHECKSUM_ACCEPTABLE if value.len() >= 4 => {
                    params.zero_checksum =
                        Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
                }
                // Addresses, ECN, adaptation layer, AUTH: not used over DTLS.
                _ => {}
            }
            body.advance(padded(length).min(body.len()));
        }
        Ok(params)
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        if self.forward_tsn {
            write_param_header(out, FORWARD_TSN_SUPPORTED, 4);
        }
        if !self.extensions.is_empty() {
            write_param_header(out, SUPPORTED_EXTENSIONS, 4 + self.extensions.len());
            out.put_slice(&self.extensions);
            pad(out);
        }
        if let Some(edmid) = self.zero_checksum {
            write_param_header(out, ZERO_CHECKSUM_ACCEPTABLE, 8);
            out.put_u32(edmid);
        }
        if let Some(cookie) = &self.cookie {
            write_param_header(out, STATE_COOKIE, 4 + cookie.len());
            out.put_slice(cookie);
            pad(out);
        }
    }

    /// Whether the peer said it supports a chunk type.
    pub(crate) fn supports(&self, chunk_type: u8) -> bool {
        self.extensions.contains(&chunk_type)
    }
}

/// The result field of a Re-configuration Response (RFC 6525 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconfigResult {
    SuccessNothingToDo,
    SuccessPerformed,
    Denied,
    ErrorWrongSsn,
    ErrorRequestAlreadyInProgress,
    ErrorBadSequenceNumber,
    InProgress,
    Other(u32),
}

impl ReconfigResult {
    fn from_u32(v: u32) -> ReconfigResult {
        match v {
            0 => ReconfigResult::SuccessNothingToDo,
            1 => ReconfigResult::SuccessPerformed,
            2 => ReconfigResult::Denied,
            3 => ReconfigResult::ErrorWrongSsn,
            4 => ReconfigResult::ErrorRequestAlreadyInProgress,
            5 => ReconfigResult::ErrorBadSequenceNumber,
            6 => ReconfigResult::InProgress,
            other => ReconfigResult::Other(other),
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            ReconfigResult::SuccessNothingToDo => 0,
            ReconfigResult::SuccessPerformed => 1,
            ReconfigResult::Denied => 2,
            ReconfigResult::ErrorWrongSsn => 3,
            ReconfigResult::ErrorRequestAlreadyInProgress => 4,
            ReconfigResult::ErrorBadSequenceNumber => 5,
            ReconfigResult::InProgress => 6,
            ReconfigResult::Other(v) => v,
        }
    }
}

/// One parameter of a RE-CONFIG chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReconfigParam {
    /// The sender resets its outgoing streams (our incoming ones).
    OutgoingReset {
        request_seq: u32,
        response_seq: u32,
        last_tsn: u32,
        streams: Vec<u16>,
    },
    /// The sender asks us to reset our outgoing streams.
    IncomingReset { request_seq: u32, streams: Vec<u16> },
    /// The answer to a request.
    Response {
        response_seq: u32,
        result: ReconfigResult,
    },
    /// A request type this implementation does not perform (answered "denied" when it has a
    /// request sequence number).
    Unsupported { kind: u16, request_seq: Option<u32> },
}

impl ReconfigParam {
    pub(crate) fn parse_all(mut body: Bytes) -> Result<Vec<ReconfigParam>, &'static str> {
        let mut out = Vec::new();
        while body.remaining() >= 4 {
            let kind = u16::from_be_bytes([body[0], body[1]]);
            let length = usize::from(u16::from_be_bytes([body[2], body[3]]));
            if length < 4 || length > body.len() {
                return Err("parameter length out of bounds");
            }
            let mut value = body.slice(4..length);
            let param = match kind {
                OUTGOING_RESET_REQUEST => {
                    if value.len() < 12 || !value.len().is_multiple_of(2) {
                        return Err("bad outgoing reset request");
                    }
                    let request_seq = value.get_u32();
                    let response_seq = value.get_u32();
                    let last_tsn = value.get_u32();
                    let streams = streams(&mut value);
                    ReconfigParam::OutgoingReset {
                        request_seq,
                        response_seq,
                        last_tsn,
                        streams,
                    }
                }
                INCOMING_RESET_REQUEST => {
                    if value.len() < 4 || !value.len().is_multiple_of(2) {
                        return Err("bad incoming reset request");
                    }
                    let request_seq = value.get_u32();
                    ReconfigParam::IncomingReset {
                        request_seq,
                        streams: streams(&mut value),
                    }
                }
                RECONFIG_RESPONSE => {
                    if value.len() < 8 {
                        return Err("bad re-configuration response");
                    }
                    ReconfigParam::Response {
                        response_seq: value.get_u32(),
                        result: ReconfigResult::from_u32(value.get_u32()),
                    }
                }
                kind => ReconfigParam::Unsupported {
                    kind,
                    request_seq: (value.len() >= 4).then(|| value.get_u32()),
                },
            };
            out.push(param);
            body.advance(padded(length).min(body.len()));
        }
        if out.is_empty() {
            return Err("no parameters");
        }
        Ok(out)
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            ReconfigParam::OutgoingReset {
                request_seq,
                response_seq,
                last_tsn,
                streams,
            } => {
                write_param_header(out, OUTGOING_RESET_REQUEST, 16 + 2 * streams.len());
                out.put_u32(*request_seq);
                out.put_u32(*response_seq);
                out.put_u32(*last_tsn);
                for s in streams {
                    out.put_u16(*s);
                }
            }
            ReconfigParam::IncomingReset {
                request_seq,
                streams,
            } => {
                write_param_header(out, INCOMING_RESET_REQUEST, 8 + 2 * streams.len());
                out.put_u32(*request_seq);
                for s in streams {
                    out.put_u16(*s);
                }
            }
            ReconfigParam::Response {
                response_seq,
                result,
            } => {
                write_param_header(out, RECONFIG_RESPONSE, 12);
                out.put_u32(*response_seq);
                out.put_u32(result.to_u32());
            }
            ReconfigParam::Unsupported { .. } => return,
        }
        pad(out);
    }
}

fn streams(value: &mut Bytes) -> Vec<u16> {
    let mut out = Vec::with_capacity(value.len() / 2);
    while value.remaining() >= 2 {
        out.push(value.get_u16());
    }
    out
}

pub(crate) fn write_param_header(out: &mut Vec<u8>, kind: u16, length: usize) {
    out.put_u16(kind);
    out.put_u16(length as u16);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_params_round_trip() {
        let params = InitParams {
            forward_tsn: true,
            extensions: vec![130, 192],
            zero_checksum: Some(ZERO_CHECKSUM_EDMID_DTLS),
            cookie: Some(Bytes::from_static(b"abcde")),
        };
        let mut out = Vec::new();
        params.write(&mut out);
        assert_eq!(out.len() % 4, 0);
        assert_eq!(InitParams::parse(Bytes::from(out)).unwrap(), params);
    }

    #[test]
    fn reconfig_params_round_trip() {
        let params = vec![
            ReconfigParam::OutgoingReset {
                request_seq: 10,
                response_seq: 9,
                last_tsn: 1234,
                streams: vec![1, 3, 5],
            },
            ReconfigParam::Response {
                response_seq: 4,
                result: ReconfigResult::InProgress,
            },
            ReconfigParam::IncomingReset {
                request_seq: 11,
                streams: vec![2],
            },
        ];
        let mut out = Vec::new();
        for p in &params {
            p.write(&mut out);
        }
        assert_eq!(ReconfigParam::parse_all(Bytes::from(out)).unwrap(), params);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(InitParams::parse(Bytes::from_static(&[0, 7, 0, 99])).is_err());
        assert!(ReconfigParam::parse_all(Bytes::from_static(&[0, 13, 0, 8, 0, 0, 0, 0])).is_err());
        assert!(ReconfigParam::parse_all(Bytes::new()).is_err());
    }
}
