//! A minimal STUN responder codec (RFC 5389): Binding request in, Binding success response with
//! XOR-MAPPED-ADDRESS out. Nothing else.
//!
//! Sans-IO: [`answer`] takes a datagram and the address it came from and returns the bytes to
//! send back, or why it will not answer. Every input is attacker-controlled, so parsing never
//! indexes past what it checked and never panics. The async loop that owns the UDP socket is
//! [`crate::server`]'s STUN task.

use std::net::{IpAddr, SocketAddr};

/// The fixed value in bytes 4..8 of every RFC 5389 message.
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub(crate) const HEADER_LEN: usize = 20;
/// Message type: Binding request.
pub(crate) const BINDING_REQUEST: u16 = 0x0001;
/// Message type: Binding success response.
pub(crate) const BINDING_SUCCESS: u16 = 0x0101;
/// Attribute type: XOR-MAPPED-ADDRESS.
pub(crate) const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Attribute type: FINGERPRINT.
pub(crate) const ATTR_FINGERPRINT: u16 = 0x8028;
/// XORed into the CRC-32 of a FINGERPRINT attribute.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why a datagram is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    /// Shorter than the 20-byte header.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The two top bits of the message type are not zero.
    #[error("not a STUN message (top bits set)")]
    NotStun,
    /// Bytes 4..8 are not the magic cookie (an RFC 3489 client, or not STUN at all).
    #[error("wrong magic cookie")]
    WrongCookie,
    /// The length field is not a multiple of 4 or does not match the datagram.
    #[error("length field does not match the datagram")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    /// A FINGERPRINT attribute is present but wrong, or not last.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

/// What the responder does with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A Binding request: send these bytes back to the sender.
    Answer(Vec<u8>),
    /// Well-formed STUN, but not a Binding request (a response, an indication, another
    /// method): ignored.
    Ignore,
}

/// Decide what to do with one datagram from `from`.
pub(crate) fn answer(datagram: &[u8], from: SocketAddr) -> Result<Verdict, Malformed> {
    let message = Message::parse(datagram)?;
    if message.msg_type != BINDING_REQUEST {
        return Ok(Verdict::Ignore);
    }
    Ok(Verdict::Answer(binding_success(
        &message.transaction_id,
        unmap(from),
    )))
}

/// A parsed STUN message header with its attribute bytes checked for framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// Message type (method and class).
    pub(crate) msg_type: u16,
    /// The 96-bit transaction id.
    pub(crate) transaction_id: [u8; 12],
}

impl Message {
    /// Parse a datagram: header, length, cookie, attribute framing, FINGERPRINT if present.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Self, Malformed> {
        let header = datagram.get(..HEADER_LEN).ok_or(Malformed::TooShort)?;
        let msg_type = u16::from_be_bytes([header[0], header[1]]);
        if msg_type & 0xC000 != 0 {
            return Err(Malformed::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(Malformed::WrongCookie);
        }
        if length % 4 != 0 || datagram.len() != HEADER_LEN + length {
            return Err(Malformed::BadLength);
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&header[8..HEADER_LEN]);

        // Walk the attributes: each is type (2), length (2), value padded to 4 bytes.
        let mut offset = HEADER_LEN;
        while offset < datagram.len() {
            let tlv = datagram
                .get(offset..offset + 4)
                .ok_or(Malformed::TruncatedAttribute)?;
            let attr_type = u16::from_be_bytes([tlv[0], tlv[1]]);
            let attr_len = usize::from(u16::from_be_bytes([tlv[2], tlv[3]]));
            let value_start = offset + 4;
            let padded = attr_len.div_ceil(4) * 4;
            let value = datagram
                .get(value_start..value_start + attr_len)
                .ok_or(Malformed::TruncatedAttribute)?;
            let next = value_start + padded;
            if next > datagram.len() {
                return Err(Malformed::TruncatedAttribute);
            }
            if attr_type == ATTR_FINGERPRINT {
                // FINGERPRINT is the last attribute; its CRC covers everything before it.
                if attr_len != 4 || next != datagram.len() {
                    return Err(Malformed::BadFingerprint);
                }
                let expected = crc32(&datagram[..offset]) ^ FINGERPRINT_XOR;
                let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                if got != expected {
                    return Err(Malformed::BadFingerprint);
                }
            }
            offset = next;
        }
        Ok(Message {
            msg_type,
            transaction_id,
        })
    }
}

/// A Binding success response telling the client `mapped`, with a FINGERPRINT.
pub(crate) fn binding_success(transaction_id: &[u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let mut value = Vec::with_capacity(20);
    value.push(0);
    let port = mapped.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match mapped.ip() {
        IpAddr::V4(ip) => {
            value.push(0x01);
            value.extend_from_slice(&port.to_be_bytes());
            let x = u32::from(ip) ^ MAGIC_COOKIE;
            value.extend_from_slice(&x.to_be_bytes());
        }
        IpAddr::V6(ip) => {
            value.push(0x02);
            value.extend_from_slice(&port.to_be_bytes());
            let key = xor_key(transaction_id);
            value.extend(ip.octets().iter().zip(key.iter()).map(|(a, k)| a ^ k));
        }
    }
    // Header, XOR-MAPPED-ADDRESS (4 + value), FINGERPRINT (4 + 4).
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + value.len() + 8);
    let body_len = 4 + value.len() + 8;
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&(body_len as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    let crc = crc32(&out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The 16-byte key IPv6 addresses are XORed with: the cookie, then the transaction id.
fn xor_key(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction_id);
    key
}

/// An IPv4 client seen through a dual-stack socket (`::ffff:a.b.c.d`) is told its IPv4 address.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// CRC-32 (ISO-HDLC, the one in zlib and Ethernet), bit by bit: messages are tiny.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TXID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn request(txid: &[u8; 12]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(txid);
        r
    }

    /// Decode XOR-MAPPED-ADDRESS from a response, independently of the encoder.
    fn mapped_address(response: &[u8]) -> SocketAddr {
        assert_eq!(&response[0..2], &[0x01, 0x01]);
        assert_eq!(&response[20..22], &[0x00, 0x20]);
        let len = usize::from(u16::from_be_bytes([response[22], response[23]]));
        let v = &response[24..24 + len];
        let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
        match v[1] {
            1 => {
                let ip = Ipv4Addr::new(v[4] ^ 0x21, v[5] ^ 0x12, v[6] ^ 0xA4, v[7] ^ 0x42);
                SocketAddr::new(ip.into(), port)
            }
            2 => {
                let mut key = vec![0x21, 0x12, 0xA4, 0x42];
                key.extend_from_slice(&response[8..20]);
                let mut o = [0u8; 16];
                for (out, (a, k)) in o.iter_mut().zip(v[4..20].iter().zip(&key)) {
                    *out = a ^ k;
                }
                SocketAddr::new(Ipv6Addr::from(o).into(), port)
            }
            f => panic!("family {f}"),
        }
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn answers_an_ipv4_binding_request() {
        let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let Verdict::Answer(resp) = answer(&request(&TXID), from).unwrap() else {
            panic!("no answer");
        };
        assert_eq!(resp.len(), 20 + 12 + 8);
        assert_eq!(&resp[8..20], &TXID);
        assert_eq!(&resp[4..8], &[0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(u16::from_be_bytes([resp[2], resp[3]]), 20);
        // RFC 5769 §2.2: 192.0.2.1:32853 encodes as a1 47 e1 12 a6 43.
        assert_eq!(
            &resp[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(mapped_address(&resp), from);
        // The response parses, including its FINGERPRINT, and is not answered in turn.
        let parsed = Message::parse(&resp).unwrap();
        assert_eq!(parsed.msg_type, BINDING_SUCCESS);
        assert_eq!(answer(&resp, from), Ok(Verdict::Ignore));
    }

    #[test]
    fn answers_an_ipv6_binding_request() {
        let from: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let Verdict::Answer(resp) = answer(&request(&TXID), from).unwrap() else {
            panic!("no answer");
        };
        assert_eq!(resp.len(), 20 + 24 + 8);
        assert_eq!(mapped_address(&resp), from);
        Message::parse(&resp).unwrap();
    }

    #[test]
    fn ipv4_mapped_clients_hear_their_ipv4_address() {
        let from: SocketAddr = "[::ffff:198.51.100.7]:4000".parse().unwrap();
        let Verdict::Answer(resp) = answer(&request(&TXID), from).unwrap() else {
            panic!("no answer");
        };
        assert_eq!(
            mapped_address(&resp),
            "198.51.100.7:4000".parse::<std::net::SocketAddr>().unwrap()
        );
    }

    #[test]
    fn accepts_attributes_and_a_correct_fingerprint() {
        let mut r = request(&TXID);
        // SOFTWARE "abc" (padded to 4), then FINGERPRINT.
        r.extend_from_slice(&[0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0]);
        let len = (r.len() - 20 + 8) as u16;
        r[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32(&r) ^ FINGERPRINT_XOR;
        r.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
        r.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            answer(&r, "127.0.0.1:1".parse().unwrap()),
            Ok(Verdict::Answer(_))
        ));
        // Flip one bit of the fingerprint.
        let last = r.len() - 1;
        r[last] ^= 1;
        assert_eq!(Message::parse(&r), Err(Malformed::BadFingerprint));
    }

    #[test]
    fn refuses_garbage_short_and_wrong_cookie() {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(answer(&[], from), Err(Malformed::TooShort));
        assert_eq!(
            answer(&request(&TXID)[..19], from),
            Err(Malformed::TooShort)
        );
        let mut r = request(&TXID);
        r[4] = 0;
        assert_eq!(answer(&r, from), Err(Malformed::WrongCookie));
        let mut r = request(&TXID);
        r[0] = 0x40;
        assert_eq!(answer(&r, from), Err(Malformed::NotStun));
        // Length says 4 but nothing follows; length not a multiple of 4; trailing bytes.
        let mut r = request(&TXID);
        r[3] = 4;
        assert_eq!(answer(&r, from), Err(Malformed::BadLength));
        let mut r = request(&TXID);
        r[3] = 3;
        r.extend_from_slice(&[0, 0, 0]);
        assert_eq!(answer(&r, from), Err(Malformed::BadLength));
        let mut r = request(&TXID);
        r.push(0);
        assert_eq!(answer(&r, from), Err(Malformed::BadLength));
        // An attribute claiming more than the message holds.
        let mut r = request(&TXID);
        r[3] = 8;
        r.extend_from_slice(&[0x80, 0x22, 0x00, 0x10, b'a', b'b', b'c', b'd']);
        assert_eq!(answer(&r, from), Err(Malformed::TruncatedAttribute));
        // A FINGERPRINT that is not last.
        let mut r = request(&TXID);
        r[3] = 16;
        r.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
        r.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        assert_eq!(answer(&r, from), Err(Malformed::BadFingerprint));
    }

    #[test]
    fn ignores_other_methods_and_classes() {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for msg_type in [0x0011u16, 0x0003, 0x0111, 0x0101] {
            let mut r = request(&TXID);
            r[0..2].copy_from_slice(&msg_type.to_be_bytes());
            assert_eq!(answer(&r, from), Ok(Verdict::Ignore), "{msg_type:#06x}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every prefix and single-byte mutation of a valid message
        // with attributes, plus pseudo-random datagrams with a valid header.
        let mut base = request(&TXID);
        base[3] = 8;
        base.extend_from_slice(&[0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0]);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for cut in 0..=base.len() {
            let _ = answer(&base[..cut], from);
        }
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = base.clone();
                m[i] = v;
                let _ = answer(&m, from);
            }
        }
        let mut seed = 0x1234_5678u32;
        for n in 0..2000usize {
            let len = n % 64;
            let mut m = request(&TXID);
            m[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                m.push(seed as u8);
            }
            let _ = answer(&m, from);
        }
    }
}
