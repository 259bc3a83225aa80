//! Which address a connection comes from: the TCP peer, or — only when that peer is a trusted
//! reverse proxy — the client it names in `Forwarded` (RFC 7239) or `X-Forwarded-For`.
//!
//! Anyone can send those headers, so they are read only from peers in
//! [`TrustedProxies`] (`PROXIM_TRUSTED_PROXIES`). The forwarded chain is walked from the right
//! (the hop nearest to this server) past every trusted proxy; the first address that is not a
//! trusted proxy is the client. An entry that does not parse (`unknown`, an obfuscated
//! identifier, garbage) stops the walk at the last trusted hop, so a forged value can never
//! name an arbitrary address. `Forwarded` wins over `X-Forwarded-For` when both are present.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// Reverse proxies whose forwarded-client headers are believed: IP addresses and CIDR blocks.
/// Empty by default: forwarded headers are ignored.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// No trusted proxies: the TCP peer address is always the client address.
    pub fn none() -> Self {
        TrustedProxies::default()
    }

    /// Parse a comma-separated list of IP addresses and CIDR blocks, e.g.
    /// `10.0.0.0/8, 192.168.1.7, fd00::/8`. Blank entries are ignored.
    pub fn parse(list: &str) -> Result<Self, InvalidTrustedProxy> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                IpNet::parse(entry).ok_or_else(|| InvalidTrustedProxy {
                    entry: entry.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.nets.iter().map(ToString::to_string))
            .finish()
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.nets.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// A [`TrustedProxies`] entry that is neither an IP address nor a CIDR block. Converts into
/// [`crate::ConfigError::Invalid`] naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTrustedProxy {
    entry: String,
}

impl InvalidTrustedProxy {
    /// The setting the entry came from, as named in error messages.
    pub(crate) const SETTING: &'static str =
        "trusted proxies (--trusted-proxies / PROXIM_TRUSTED_PROXIES)";

    /// What is wrong with the entry.
    pub(crate) fn why(&self) -> String {
        format!(
            "`{}` is not an IP address or CIDR block (e.g. 10.0.0.0/8)",
            self.entry
        )
    }
}

impl fmt::Display for InvalidTrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", Self::SETTING, self.why())
    }
}

impl std::error::Error for InvalidTrustedProxy {}

/// The client address of a connection from TCP peer `peer` that sent `headers`.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = header_values(headers, "forwarded");
    let hops: Vec<Option<IpAddr>> = if forwarded.is_empty() {
        header_values(headers, "x-forwarded-for")
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(parse_node)
            .collect()
    } else {
        forwarded
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(forwarded_for)
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev().take(MAX_HOPS) {
        let Some(ip) = hop else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// How many forwarded hops are looked at, from the right.
const MAX_HOPS: usize = 16;

/// Every value of header `name` (a value that is not visible ASCII becomes an unparseable
/// hop, which stops the walk).
fn header_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("unknown"))
        .collect()
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.1;proto=https`), if it is an IP.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value))
            .flatten()
    })
}

/// A node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// optionally in double quotes. `unknown` and obfuscated identifiers are `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node)
        .trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let inner = node.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.trim(), Some(prefix.trim().parse::<u8>().ok()?)),
            None => (text, None),
        };
        let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn trusted_proxy_lists_parse_addresses_and_cidrs() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,, fd00::/8, 0.0.0.0/0 ").unwrap();
        assert_eq!(
            t.to_string(),
            "10.0.0.0/8,192.168.1.7/32,fd00::/8,0.0.0.0/0"
        );
        let t = TrustedProxies::parse("10.0.0.0/8,192.168.1.7,fd00::/8").unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        // IPv4-mapped IPv6 peers (dual-stack sockets) match IPv4 entries.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in [
            "10.0.0.0/33",
            "nope",
            "10.0.0.1/x",
            "::/129",
            "10.0.0.0/8/8",
        ] {
            let err = TrustedProxies::parse(bad).unwrap_err().to_string();
            assert!(err.contains("PROXIM_TRUSTED_PROXIES"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let none = TrustedProxies::none();
        let forged = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        assert_eq!(client_ip(ip("127.0.0.1"), &forged, &none), ip("127.0.0.1"));
        let other = TrustedProxies::parse("10.0.0.1").unwrap();
        assert_eq!(
            client_ip(ip("203.0.113.5"), &forged, &other),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_client() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let peer = ip("127.0.0.1");
        let xff = |v: &str| client_ip(peer, &headers(&[("x-forwarded-for", v)]), &t);
        assert_eq!(xff("198.51.100.1"), ip("198.51.100.1"));
        // The rightmost untrusted hop is the client; what it was told before is not believed.
        assert_eq!(
            xff("203.0.113.66, 198.51.100.1, 10.1.1.1"),
            ip("198.51.100.1")
        );
        assert_eq!(xff("198.51.100.1:5000"), ip("198.51.100.1"));
        assert_eq!(xff("[2001:db8::7]:443"), ip("2001:db8::7"));
        // Every hop trusted: the leftmost is the client.
        assert_eq!(xff("10.0.0.9, 10.0.0.8"), ip("10.0.0.9"));
        // Garbage stops at the last trusted hop.
        assert_eq!(xff("198.51.100.1, garbage"), peer);
        assert_eq!(xff("unknown, 10.0.0.5"), ip("10.0.0.5"));
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &t), peer);

        let fwd = |v: &str| client_ip(peer, &headers(&[("forwarded", v)]), &t);
        assert_eq!(fwd("for=198.51.100.2"), ip("198.51.100.2"));
        assert_eq!(
            fwd(r#"for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.3"#),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(fwd("proto=https;for=192.0.2.43:47011"), ip("192.0.2.43"));
        assert_eq!(fwd("for=_hidden"), peer);
        assert_eq!(fwd("by=10.0.0.1"), peer);
        // `Forwarded` wins over `X-Forwarded-For`; several header lines form one list.
        let both = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("forwarded", "for=198.51.100.3"),
            ("forwarded", "for=10.0.0.4"),
        ]);
        assert_eq!(client_ip(peer, &both, &t), ip("198.51.100.3"));
        // A long forged chain is only read MAX_HOPS deep.
        let long = vec!["10.0.0.1"; 100].join(",");
        assert_eq!(xff(&format!("198.51.100.1,{long}")), ip("10.0.0.1"));
    }
}
