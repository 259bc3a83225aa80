//! Typed chunks (RFC 9260 §3.3, RFC 3758 FORWARD TSN, RFC 6525 RE-CONFIG).

use bytes::{Buf, BufMut, Bytes};

use super::param::{InitParams, ReconfigParam, write_param_header};
use super::{CHUNK_HEADER_LEN, DATA_HEADER_LEN, WireError, padded};

/// Chunk type numbers.
pub(crate) mod chunk_type {
    pub(crate) const DATA: u8 = 0;
    pub(crate) const INIT: u8 = 1;
    pub(crate) const INIT_ACK: u8 = 2;
    pub(crate) const SACK: u8 = 3;
    pub(crate) const HEARTBEAT: u8 = 4;
    pub(crate) const HEARTBEAT_ACK: u8 = 5;
    pub(crate) const ABORT: u8 = 6;
    pub(crate) const SHUTDOWN: u8 = 7;
    pub(crate) const SHUTDOWN_ACK: u8 = 8;
    pub(crate) const ERROR: u8 = 9;
    pub(crate) const COOKIE_ECHO: u8 = 10;
    pub(crate) const COOKIE_ACK: u8 = 11;
    pub(crate) const SHUTDOWN_COMPLETE: u8 = 14;
    pub(crate) const RECONFIG: u8 = 130;
    pub(crate) const FORWARD_TSN: u8 = 192;
}

/// One chunk of a packet.
#[derive(Debug, Clone)]
pub(crate) enum Chunk {
    Data(DataChunk),
    Init(InitChunk),
    InitAck(InitChunk),
    Sack(SackChunk),
    /// The body (a Heartbeat Info parameter), echoed verbatim in the ACK.
    Heartbeat(Bytes),
    HeartbeatAck(Bytes),
    Abort(AbortChunk),
    Shutdown(ShutdownChunk),
    ShutdownAck,
    ShutdownComplete {
        t_bit: bool,
    },
    /// Error causes, kept raw (logged).
    Error(Bytes),
    CookieEcho(Bytes),
    CookieAck,
    ForwardTsn(ForwardTsnChunk),
    Reconfig(Vec<ReconfigParam>),
    Unknown(UnknownChunk),
}

/// A DATA chunk (RFC 9260 §3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataChunk {
    pub(crate) tsn: u32,
    pub(crate) stream: u16,
    pub(crate) ssn: u16,
    pub(crate) ppid: u32,
    /// U: unordered.
    pub(crate) unordered: bool,
    /// B: first fragment.
    pub(crate) begin: bool,
    /// E: last fragment.
    pub(crate) end: bool,
    /// I: the receiver should SACK at once (RFC 7053).
    pub(crate) immediate: bool,
    pub(crate) payload: Bytes,
}

/// INIT or INIT ACK (RFC 9260 §3.3.2, §3.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InitChunk {
    pub(crate) initiate_tag: u32,
    pub(crate) a_rwnd: u32,
    pub(crate) outbound_streams: u16,
    pub(crate) inbound_streams: u16,
    pub(crate) initial_tsn: u32,
    pub(crate) params: InitParams,
}

/// SACK (RFC 9260 §3.3.4). Gap blocks are offsets from the cumulative TSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SackChunk {
    pub(crate) cumulative_tsn: u32,
    pub(crate) a_rwnd: u32,
    pub(crate) gaps: Vec<(u16, u16)>,
    pub(crate) duplicates: Vec<u32>,
}

/// ABORT (RFC 9260 §3.3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AbortChunk {
    /// The verification tag is the sender's own (it had none of ours).
    pub(crate) t_bit: bool,
    pub(crate) causes: Bytes,
}

/// SHUTDOWN (RFC 9260 §3.3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShutdownChunk {
    pub(crate) cumulative_tsn: u32,
}

/// FORWARD TSN (RFC 3758 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardTsnChunk {
    pub(crate) new_cumulative_tsn: u32,
    /// `(stream, ssn)`: the last skipped ordered message per stream.
    pub(crate) streams: Vec<(u16, u16)>,
}

/// A chunk type this implementation does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownChunk {
    pub(crate) kind: u8,
}

impl UnknownChunk {
    /// The upper two bits of the type say what to do with an unknown chunk (RFC 9260 §3.2):
    /// `00` and `01` stop processing the packet.
    pub(crate) fn stop_processing(&self) -> bool {
        self.kind & 0x80 == 0
    }

    /// `01` and `11` ask for an ERROR reporting it.
    pub(crate) fn report(&self) -> bool {
        self.kind & 0x40 != 0
    }
}

impl AbortChunk {
    /// A readable reason from the error causes (RFC 9260 §3.3.10): user-initiated abort's
    /// reason, a protocol violation's text, or the cause codes.
    pub(crate) fn reason(&self) -> String {
        describe_causes(&self.causes)
    }
}

/// A readable summary of error causes.
pub(crate) fn describe_causes(causes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = causes;
    while rest.len() >= 4 {
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if length < 4 || length > rest.len() {
            break;
        }
        let info = &rest[4..length];
        let text: String = String::from_utf8_lossy(info)
            .chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect();
        out.push(match code {
            1 => "invalid stream identifier".to_owned(),
            3 => "stale cookie".to_owned(),
            6 => "unrecognized chunk type".to_owned(),
            10 => "cookie received while shutting down".to_owned(),
            12 if text.is_empty() => "user-initiated abort".to_owned(),
            12 => format!("user-initiated abort: {text}"),
            13 if text.is_empty() => "protocol violation".to_owned(),
            13 => format!("protocol violation: {text}"),
            other => format!("error cause {other}"),
        });
        rest = &rest[padded(length).min(rest.len())..];
    }
    if out.is_empty() {
        "no reason given".to_owned()
    } else {
        out.join("; ")
    }
}

impl Chunk {
    /// Decode one chunk body.
    pub(crate) fn parse(kind: u8, flags: u8, mut body: Bytes) -> Result<Chunk, WireError> {
        use chunk_type::*;
        Ok(match kind {
            DATA => {
                if body.len() < DATA_HEADER_LEN - CHUNK_HEADER_LEN {
                    return Err(malformed("DATA", "shorter than its header"));
                }
                let tsn = body.get_u32();
                let stream = body.get_u16();
                let ssn = body.get_u16();
                let ppid = body.get_u32();
                if body.is_empty() {
                    return Err(malformed("DATA", "no user data"));
                }
                Chunk::Data(DataChunk {
                    tsn,
                    stream,
                    ssn,
                    ppid,
                    unordered: flags & 0x04 != 0,
                    begin: flags & 0x02 != 0,
                    end: flags & 0x01 != 0,
                    immediate: flags & 0x08 != 0,
                    payload: body,
                })
            }
            INIT | INIT_ACK => {
                let name = if kind == INIT { "INIT" } else { "INIT ACK" };
                if body.len() < 16 {
                    return Err(malformed(name, "shorter than its fixed fields"));
                }
                let init = InitChunk {
                    initiate_tag: body.get_u32(),
                    a_rwnd: body.get_u32(),
                    outbound_streams: body.get_u16(),
                    inbound_streams: body.get_u16(),
                    initial_tsn: body.get_u32(),
                    params: InitParams::parse(body).map_err(|what| malformed(name, what))?,
                };
                if init.initiate_tag == 0 {
                    return Err(malformed(name, "initiate tag is zero"));
                }
                if init.outbound_streams == 0 || init.inbound_streams == 0 {
                    return Err(malformed(name, "zero streams"));
                }
                if kind == INIT {
                    Chunk::Init(init)
                } else {
                    if init.params.cookie.is_none() {
                        return Err(malformed(name, "no state cookie"));
                    }
                    Chunk::InitAck(init)
                }
            }
            SACK => {
                if body.len() < 12 {
                    return Err(malformed("SACK", "shorter than its fixed fields"));
                }
                let cumulative_tsn = body.get_u32();
                let a_rwnd = body.get_u32();
                let gap_count = usize::from(body.get_u16());
                let dup_count = usize::from(body.get_u16());
                if body.len() < gap_count * 4 + dup_count * 4 {
                    return Err(malformed("SACK", "fewer blocks than announced"));
                }
                let mut gaps = Vec::with_capacity(gap_count);
                for _ in 0..gap_count {
                    let start = body.get_u16();
                    let end = body.get_u16();
                    if start == 0 || end < start {
                        return Err(malformed("SACK", "gap block out of order"));
                    }
                    gaps.push((start, end));
                }
                let mut duplicates = Vec::with_capacity(dup_count.min(256));
                for _ in 0..dup_count {
                    duplicates.push(body.get_u32());
                }
                Chunk::Sack(SackChunk {
                    cumulative_tsn,
                    a_rwnd,
                    gaps,
                    duplicates,
                })
            }
            HEARTBEAT => Chunk::Heartbeat(body),
            HEARTBEAT_ACK => Chunk::HeartbeatAck(body),
            ABORT => Chunk::Abort(AbortChunk {
                t_bit: flags & 0x01 != 0,
                causes: body,
            }),
            SHUTDOWN => {
                if body.len() < 4 {
                    return Err(malformed("SHUTDOWN", "no cumulative TSN"));
                }
                Chunk::Shutdown(ShutdownChunk {
                    cumulative_tsn: body.get_u32(),
                })
            }
            SHUTDOWN_ACK => Chunk::ShutdownAck,
            SHUTDOWN_COMPLETE => Chunk::ShutdownComplete {
                t_bit: flags & 0x01 != 0,
            },
            ERROR => Chunk::Error(body),
            COOKIE_ECHO => Chunk::CookieEcho(body),
            COOKIE_ACK => Chunk::CookieAck,
            FORWARD_TSN => {
                if body.len() < 4 || !(body.len() - 4).is_multiple_of(4) {
                    return Err(malformed("FORWARD TSN", "bad length"));
                }
                let new_cumulative_tsn = body.get_u32();
                let mut streams = Vec::with_capacity(body.len() / 4);
                while body.remaining() >= 4 {
                    streams.push((body.get_u16(), body.get_u16()));
                }
                Chunk::ForwardTsn(ForwardTsnChunk {
                    new_cumulative_tsn,
                    streams,
                })
            }
            RECONFIG => Chunk::Reconfig(
                ReconfigParam::parse_all(body).map_err(|what| malformed("RE-CONFIG", what))?,
            ),
            kind => Chunk::Unknown(UnknownChunk { kind }),
        })
    }

    /// Encoded size, padding included.
    pub(crate) fn encoded_len(&self) -> usize {
        let mut scratch = Vec::new();
        self.write(&mut scratch);
        scratch.len()
    }

    /// Append the chunk (padded to 4 bytes).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        use chunk_type::*;
        let start = out.len();
        match self {
            Chunk::Data(d) => {
                d.write(out);
                return;
            }
            Chunk::Init(init) | Chunk::InitAck(init) => {
                let kind = if matches!(self, Chunk::Init(_)) {
                    INIT
                } else {
                    INIT_ACK
                };
                header(out, kind, 0);
                out.put_u32(init.initiate_tag);
                out.put_u32(init.a_rwnd);
                out.put_u16(init.outbound_streams);
                out.put_u16(init.inbound_streams);
                out.put_u32(init.initial_tsn);
                init.params.write(out);
            }
            Chunk::Sack(s) => {
                header(out, SACK, 0);
                out.put_u32(s.cumulative_tsn);
                out.put_u32(s.a_rwnd);
                out.put_u16(s.gaps.len() as u16);
                out.put_u16(s.duplicates.len() as u16);
                for (start, end) in &s.gaps {
                    out.put_u16(*start);
                    out.put_u16(*end);
                }
                for d in &s.duplicates {
                    out.put_u32(*d);
                }
            }
            Chunk::Heartbeat(body) => {
                header(out, HEARTBEAT, 0);
                out.put_slice(body);
            }
            Chunk::HeartbeatAck(body) => {
                header(out, HEARTBEAT_ACK, 0);
                out.put_slice(body);
            }
            Chunk::Abort(a) => {
                header(out, ABORT, u8::from(a.t_bit));
                out.put_slice(&a.causes);
            }
            Chunk::Shutdown(s) => {
                header(out, SHUTDOWN, 0);
                out.put_u32(s.cumulative_tsn);
            }
            Chunk::ShutdownAck => header(out, SHUTDOWN_ACK, 0),
            Chunk::ShutdownComplete { t_bit } => header(out, SHUTDOWN_COMPLETE, u8::from(*t_bit)),
            Chunk::Error(causes) => {
                header(out, ERROR, 0);
                out.put_slice(causes);
            }
            Chunk::CookieEcho(cookie) => {
                header(out, COOKIE_ECHO, 0);
                out.put_slice(cookie);
            }
            Chunk::CookieAck => header(out, COOKIE_ACK, 0),
            Chunk::ForwardTsn(f) => {
                header(out, FORWARD_TSN, 0);
                out.put_u32(f.new_cumulative_tsn);
                for (stream, ssn) in &f.streams {
                    out.put_u16(*stream);
                    out.put_u16(*ssn);
                }
            }
            Chunk::Reconfig(params) => {
                header(out, RECONFIG, 0);
                for p in params {
                    p.write(out);
                }
            }
            Chunk::Unknown(u) => header(out, u.kind, 0),
        }
        finish(out, start);
    }
}

impl DataChunk {
    /// Encoded size of a DATA chunk with `payload` bytes, padding included.
    pub(crate) fn encoded_len_for(payload: usize) -> usize {
        padded(DATA_HEADER_LEN + payload)
    }

    /// Append the chunk (padded to 4 bytes).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let flags = (u8::from(self.immediate) << 3)
            | (u8::from(self.unordered) << 2)
            | (u8::from(self.begin) << 1)
            | u8::from(self.end);
        header(out, chunk_type::DATA, flags);
        out.put_u32(self.tsn);
        out.put_u16(self.stream);
        out.put_u16(self.ssn);
        out.put_u32(self.ppid);
        out.put_slice(&self.payload);
        finish(out, start);
    }
}

/// An error cause (RFC 9260 §3.3.10): code, then the info.
pub(crate) fn error_cause(code: u16, info: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(padded(4 + info.len()));
    write_param_header(&mut out, code, 4 + info.len());
    out.put_slice(info);
    while out.len() % 4 != 0 {
        out.put_u8(0);
    }
    out
}

fn header(out: &mut Vec<u8>, kind: u8, flags: u8) {
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u16(0);
}

/// Write the length of the chunk that starts at `start` and pad it to 4 bytes.
fn finish(out: &mut Vec<u8>, start: usize) {
    let length = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&length.to_be_bytes());
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn malformed(kind: &'static str, what: &'static str) -> WireError {
    WireError::Malformed { kind, what }
}
