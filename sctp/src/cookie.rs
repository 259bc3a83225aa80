//! The State Cookie (RFC 9260 §5.1.3): what this side needs to set up the association,
//! carried by the peer from INIT ACK to COOKIE ECHO and authenticated with an HMAC.

use bytes::{Buf, BufMut, Bytes};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 1 + 4 + 4 + 4 + 4 + 2 + 2 + 1 + 8;

/// What the cookie says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CookieContents {
    pub(crate) my_tag: u32,
    pub(crate) peer_tag: u32,
    pub(crate) peer_initial_tsn: u32,
    pub(crate) peer_a_rwnd: u32,
    pub(crate) peer_outbound_streams: u16,
    pub(crate) peer_inbound_streams: u16,
    pub(crate) peer_forward_tsn: bool,
    pub(crate) peer_reconfig: bool,
    pub(crate) peer_zero_checksum: bool,
    /// Milliseconds since the association was created, when the cookie was made.
    pub(crate) made_at_ms: u64,
}

/// Why a cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieError {
    Malformed,
    BadMac,
    WrongTag,
    Stale,
}

pub(crate) fn encode(secret: &[u8; 32], c: &CookieContents) -> Bytes {
    let mut out = Vec::with_capacity(BODY_LEN + MAC_LEN);
    out.put_u8(VERSION);
    out.put_u32(c.my_tag);
    out.put_u32(c.peer_tag);
    out.put_u32(c.peer_initial_tsn);
    out.put_u32(c.peer_a_rwnd);
    out.put_u16(c.peer_outbound_streams);
    out.put_u16(c.peer_inbound_streams);
    out.put_u8(
        u8::from(c.peer_forward_tsn)
            | (u8::from(c.peer_reconfig) << 1)
            | (u8::from(c.peer_zero_checksum) << 2),
    );
    out.put_u64(c.made_at_ms);
    let mac = mac(secret, &out);
    out.put_slice(&mac);
    Bytes::from(out)
}

/// Check and read a cookie made by [`encode`] with `secret` for `my_tag`, at most
/// `lifetime_ms` old at `now_ms`.
pub(crate) fn decode(
    secret: &[u8; 32],
    cookie: &[u8],
    my_tag: u32,
    now_ms: u64,
    lifetime_ms: u64,
) -> Result<CookieContents, CookieError> {
    if cookie.len() != BODY_LEN + MAC_LEN || cookie[0] != VERSION {
        return Err(CookieError::Malformed);
    }
    let (body, their_mac) = cookie.split_at(BODY_LEN);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| CookieError::BadMac)?;
    m.update(body);
    m.verify_truncated_left(their_mac)
        .map_err(|_| CookieError::BadMac)?;
    let mut b = &body[1..];
    let c = CookieContents {
        my_tag: b.get_u32(),
        peer_tag: b.get_u32(),
        peer_initial_tsn: b.get_u32(),
        peer_a_rwnd: b.get_u32(),
        peer_outbound_streams: b.get_u16(),
        peer_inbound_streams: b.get_u16(),
        peer_forward_tsn: b[0] & 1 != 0,
        peer_reconfig: b[0] & 2 != 0,
        peer_zero_checksum: b[0] & 4 != 0,
        made_at_ms: {
            b.advance(1);
            b.get_u64()
        },
    };
    if c.my_tag != my_tag {
        return Err(CookieError::WrongTag);
    }
    if now_ms.saturating_sub(c.made_at_ms) > lifetime_ms {
        return Err(CookieError::Stale);
    }
    Ok(c)
}

fn mac(secret: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let mut out = [0; MAC_LEN];
    if let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        m.update(body);
        out.copy_from_slice(&m.finalize().into_bytes()[..MAC_LEN]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> CookieContents {
        CookieContents {
            my_tag: 7,
            peer_tag: 9,
            peer_initial_tsn: 100,
            peer_a_rwnd: 1 << 20,
            peer_outbound_streams: 1024,
            peer_inbound_streams: 1024,
            peer_forward_tsn: true,
            peer_reconfig: true,
            peer_zero_checksum: false,
            made_at_ms: 50,
        }
    }

    #[test]
    fn a_cookie_round_trips_and_tampering_is_caught() {
        let secret = [3; 32];
        let cookie = encode(&secret, &contents());
        assert_eq!(decode(&secret, &cookie, 7, 60, 1000), Ok(contents()));
        let mut bad = cookie.to_vec();
        bad[6] ^= 1;
        assert_eq!(decode(&secret, &bad, 7, 60, 1000), Err(CookieError::BadMac));
        assert_eq!(
            decode(&[4; 32], &cookie, 7, 60, 1000),
            Err(CookieError::BadMac)
        );
        assert_eq!(
            decode(&secret, &cookie, 8, 60, 1000),
            Err(CookieError::WrongTag)
        );
        assert_eq!(
            decode(&secret, &cookie, 7, 5000, 1000),
            Err(CookieError::Stale)
        );
        assert_eq!(
            decode(&secret, &cookie[..10], 7, 60, 1000),
            Err(CookieError::Malformed)
        );
    }
}
