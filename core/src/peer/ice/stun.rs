//! STUN messages for ICE (RFC 8489 with the ICE attributes of RFC 8445): Binding requests,
//! success and error responses, with short-term MESSAGE-INTEGRITY and FINGERPRINT.
//!
//! Decoding borrows the datagram and checks structure, the magic cookie and attribute bounds;
//! integrity and fingerprint are checked on demand ([`StunMessage::verify`]), since the key
//! depends on who sent the message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The magic cookie of RFC 5389 and later.
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_a442;
const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

const BINDING: u16 = 0x0001;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
const ATTR_ICE_CONTROLLING: u16 = 0x802a;

/// A STUN transaction id.
pub(crate) type TransactionId = [u8; 12];

/// The class of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Why a datagram is not a usable STUN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StunError {
    #[error("not a STUN message")]
    NotStun,
    #[error("STUN attribute {0:#06x} runs past the message")]
    Truncated(u16),
    #[error("STUN message without integrity")]
    NoIntegrity,
    #[error("STUN message integrity does not match")]
    BadIntegrity,
    #[error("STUN fingerprint does not match")]
    BadFingerprint,
}

/// Whether `data` looks like STUN (first two bits zero, magic cookie, sane length).
pub(crate) fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN
        && data[0] < 4
        && u32::from_be_bytes([data[4], data[5], data[6], data[7]]) == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([data[2], data[3]])) + HEADER_LEN == data.len()
}

/// A decoded message, borrowing its datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StunMessage<'a> {
    raw: &'a [u8],
    pub(crate) class: Class,
    pub(crate) method: u16,
    pub(crate) transaction: TransactionId,
}

impl<'a> StunMessage<'a> {
    pub(crate) fn parse(raw: &'a [u8]) -> Result<StunMessage<'a>, StunError> {
        if !is_stun(raw) {
            return Err(StunError::NotStun);
        }
        let kind = u16::from_be_bytes([raw[0], raw[1]]);
        let class = match ((kind >> 7) & 0x2) | ((kind >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let method = (kind & 0x000f) | ((kind >> 1) & 0x0070) | ((kind >> 2) & 0x0f80);
        let mut transaction = [0; 12];
        transaction.copy_from_slice(&raw[8..20]);
        let msg = StunMessage {
            raw,
            class,
            method,
            transaction,
        };
        // Walk the attributes once so later lookups cannot run out of bounds.
        let mut offset = HEADER_LEN;
        while offset < raw.len() {
            if offset + 4 > raw.len() {
                return Err(StunError::Truncated(0));
            }
            let t = u16::from_be_bytes([raw[offset], raw[offset + 1]]);
            let len = usize::from(u16::from_be_bytes([raw[offset + 2], raw[offset + 3]]));
            if offset + 4 + len > raw.len() {
                return Err(StunError::Truncated(t));
            }
            offset += 4 + padded(len);
        }
        Ok(msg)
    }

    pub(crate) fn is_binding(&self) -> bool {
        self.method == BINDING
    }

    /// The value of the first attribute of type `t`, and its offset.
    fn attribute(&self, t: u16) -> Option<(usize, &'a [u8])> {
        let raw = self.raw;
        let mut offset = HEADER_LEN;
        while offset + 4 <= raw.len() {
            let at = u16::from_be_bytes([raw[offset], raw[offset + 1]]);
            let len = usize::from(u16::from_be_bytes([raw[offset + 2], raw[offset + 3]]));
            let value = raw.get(offset + 4..offset + 4 + len)?;
            if at == t {
                return Some((offset, value));
            }
            offset += 4 + padded(len);
        }
        None
    }

    pub(crate) fn username(&self) -> Option<&'a str> {
        std::str::from_utf8(self.attribute(ATTR_USERNAME)?.1).ok()
    }

    pub(crate) fn priority(&self) -> Option<u32> {
        let v = self.attribute(ATTR_PRIORITY)?.1;
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }

    pub(crate) fn use_candidate(&self) -> bool {
        self.attribute(ATTR_USE_CANDIDATE).is_some()
    }

    /// The tie-breaker of ICE-CONTROLLING, if present.
    pub(crate) fn controlling(&self) -> Option<u64> {
        let v = self.attribute(ATTR_ICE_CONTROLLING)?.1;
        Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
    }

    /// The tie-breaker of ICE-CONTROLLED, if present.
    pub(crate) fn controlled(&self) -> Option<u64> {
        let v = self.attribute(ATTR_ICE_CONTROLLED)?.1;
        Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
    }

    /// The error code of an error response.
    pub(crate) fn error_code(&self) -> Option<u16> {
        let v = self.attribute(ATTR_ERROR_CODE)?.1;
        let class = u16::from(*v.get(2)? & 0x7);
        Some(class * 100 + u16::from(*v.get(3)?))
    }

    /// XOR-MAPPED-ADDRESS (or the old MAPPED-ADDRESS).
    pub(crate) fn mapped_address(&self) -> Option<SocketAddr> {
        if let Some((_, v)) = self.attribute(ATTR_XOR_MAPPED_ADDRESS) {
            return decode_address(v, Some(&self.transaction));
        }
        decode_address(self.attribute(ATTR_MAPPED_ADDRESS)?.1, None)
    }

    /// Check MESSAGE-INTEGRITY with `key` (and FINGERPRINT when present).
    pub(crate) fn verify(&self, key: &[u8]) -> Result<(), StunError> {
        if let Some((offset, value)) = self.attribute(ATTR_FINGERPRINT) {
            let expected = fingerprint(self.raw, offset);
            if value.len() != 4 || value != expected.to_be_bytes() {
                return Err(StunError::BadFingerprint);
            }
        }
        let (offset, value) = self
            .attribute(ATTR_MESSAGE_INTEGRITY)
            .ok_or(StunError::NoIntegrity)?;
        if value.len() != 20 {
            return Err(StunError::BadIntegrity);
        }
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(key).map_err(|_| StunError::BadIntegrity)?;
        // The length field counts up to and including MESSAGE-INTEGRITY.
        let length = (offset + 24 - HEADER_LEN) as u16;
        mac.update(&self.raw[..2]);
        mac.update(&length.to_be_bytes());
        mac.update(&self.raw[4..offset]);
        mac.verify_slice(value).map_err(|_| StunError::BadIntegrity)
    }
}

/// Builds one message.
#[derive(Debug)]
pub(crate) struct StunWriter {
    buf: Vec<u8>,
}

impl StunWriter {
    pub(crate) fn new(class: Class, transaction: &TransactionId) -> StunWriter {
        let class_bits: u16 = match class {
            Class::Request => 0x0000,
            Class::Indication => 0x0010,
            Class::Success => 0x0100,
            Class::Error => 0x0110,
        };
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&(BINDING | class_bits).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction);
        StunWriter { buf }
    }

    fn attribute(&mut self, t: u16, value: &[u8]) {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self.set_length(self.buf.len());
    }

    fn set_length(&mut self, end: usize) {
        let length = (end - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
    }

    pub(crate) fn username(mut self, username: &str) -> Self {
        self.attribute(ATTR_USERNAME, username.as_bytes());
        self
    }

    pub(crate) fn priority(mut self, priority: u32) -> Self {
        self.attribute(ATTR_PRIORITY, &priority.to_be_bytes());
        self
    }

    pub(crate) fn use_candidate(mut self) -> Self {
        self.attribute(ATTR_USE_CANDIDATE, &[]);
        self
    }

    pub(crate) fn controlling(mut self, tie_breaker: u64) -> Self {
        self.attribute(ATTR_ICE_CONTROLLING, &tie_breaker.to_be_bytes());
        self
    }

    pub(crate) fn controlled(mut self, tie_breaker: u64) -> Self {
        self.attribute(ATTR_ICE_CONTROLLED, &tie_breaker.to_be_bytes());
        self
    }

    pub(crate) fn xor_mapped_address(mut self, addr: SocketAddr) -> Self {
        let transaction: TransactionId = self.buf[8..20].try_into().unwrap_or([0; 12]);
        let value = encode_xor_address(addr, &transaction);
        self.attribute(ATTR_XOR_MAPPED_ADDRESS, &value);
        self
    }

    pub(crate) fn error_code(mut self, code: u16, reason: &str) -> Self {
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        self.attribute(ATTR_ERROR_CODE, &value);
        self
    }

    /// Add MESSAGE-INTEGRITY (with `key`) and FINGERPRINT; the message is done.
    pub(crate) fn finish(mut self, key: Option<&[u8]>) -> Vec<u8> {
        if let Some(key) = key {
            let offset = self.buf.len();
            self.set_length(offset + 24);
            let mut value = [0u8; 20];
            if let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) {
                mac.update(&self.buf);
                value.copy_from_slice(&mac.finalize().into_bytes());
            }
            self.attribute(ATTR_MESSAGE_INTEGRITY, &value);
        }
        let offset = self.buf.len();
        self.set_length(offset + 8);
        let crc = fingerprint(&self.buf, offset);
        self.attribute(ATTR_FINGERPRINT, &crc.to_be_bytes());
        self.buf
    }
}

/// A random transaction id.
pub(crate) fn new_transaction() -> TransactionId {
    rand::random()
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// The FINGERPRINT of the message up to `offset` (the header's length already covering it).
fn fingerprint(raw: &[u8], offset: usize) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut digest = CRC.digest();
    let length = (offset + 8 - HEADER_LEN) as u16;
    digest.update(&raw[..2]);
    digest.update(&length.to_be_bytes());
    digest.update(&raw[4..offset]);
    digest.finalize() ^ FINGERPRINT_XOR
}

fn decode_address(v: &[u8], xor: Option<&TransactionId>) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let mut port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match family {
        1 => {
            let mut b: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            if xor.is_some() {
                for (x, c) in b.iter_mut().zip(cookie) {
                    *x ^= c;
                }
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        2 => {
            let mut b: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            if let Some(t) = xor {
                let key: Vec<u8> = cookie.iter().chain(t.iter()).copied().collect();
                for (x, k) in b.iter_mut().zip(key) {
                    *x ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn encode_xor_address(addr: SocketAddr, transaction: &TransactionId) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut out = vec![0];
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(cookie).map(|(b, c)| b ^ c));
        }
        IpAddr::V6(ip) => {
            out.push(2);
            out.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(transaction.iter());
            out.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_round_trips_with_integrity_and_fingerprint() {
        let t = new_transaction();
        let raw = StunWriter::new(Class::Request, &t)
            .username("abcd:efgh")
            .priority(0x6e00_01ff)
            .controlling(42)
            .use_candidate()
            .finish(Some(b"secret-password"));
        let m = StunMessage::parse(&raw).unwrap();
        assert_eq!(m.class, Class::Request);
        assert!(m.is_binding());
        assert_eq!(m.transaction, t);
        assert_eq!(m.username(), Some("abcd:efgh"));
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        assert_eq!(m.controlling(), Some(42));
        assert_eq!(m.controlled(), None);
        assert!(m.use_candidate());
        m.verify(b"secret-password").unwrap();
        assert_eq!(m.verify(b"wrong"), Err(StunError::BadIntegrity));
        let mut bad = raw.clone();
        bad[25] ^= 1;
        let m = StunMessage::parse(&bad).unwrap();
        assert_eq!(m.verify(b"secret-password"), Err(StunError::BadFingerprint));
    }

    #[test]
    fn responses_carry_the_mapped_address_both_families() {
        for addr in ["198.18.0.5:40000", "[2001:2::5]:40001"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let t = new_transaction();
            let raw = StunWriter::new(Class::Success, &t)
                .xor_mapped_address(addr)
                .finish(Some(b"pw"));
            let m = StunMessage::parse(&raw).unwrap();
            assert_eq!(m.class, Class::Success);
            assert_eq!(m.mapped_address(), Some(addr));
            m.verify(b"pw").unwrap();
        }
        let raw = StunWriter::new(Class::Error, &new_transaction())
            .error_code(487, "Role Conflict")
            .finish(None);
        let m = StunMessage::parse(&raw).unwrap();
        assert_eq!(m.class, Class::Error);
        assert_eq!(m.error_code(), Some(487));
        assert_eq!(m.verify(b"x"), Err(StunError::NoIntegrity));
    }

    #[test]
    fn truncated_or_foreign_datagrams_are_refused() {
        assert_eq!(
            StunMessage::parse(&[0; 10]).unwrap_err(),
            StunError::NotStun
        );
        assert_eq!(
            StunMessage::parse(&[22; 40]).unwrap_err(),
            StunError::NotStun
        );
        let mut raw = StunWriter::new(Class::Request, &new_transaction())
            .username("a:b")
            .finish(None);
        // An attribute length that runs past the end.
        raw[23] = 200;
        assert!(StunMessage::parse(&raw).is_err());
    }

    #[test]
    fn decodes_a_message_built_by_another_implementation() {
        // The RFC 5769 §2.1 sample request (USERNAME "evtj:h6vY", password
        // "VOkJxbRl1RmTxUk/WvJxBt").
        let sample: [u8; 108] = [
            0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e,
            0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24,
            0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1,
            0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68,
            0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c,
            0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5,
            0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
        ];
        let m = StunMessage::parse(&sample).unwrap();
        assert_eq!(m.username(), Some("evtj:h6vY"));
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        assert_eq!(m.controlled(), Some(0x932f_f9b1_5126_3b36));
        m.verify(b"VOkJxbRl1RmTxUk/WvJxBt").unwrap();
    }
}
