//! ICE server URLs (RFC 7064 `stun:`/`stuns:`, RFC 7065 `turn:`/`turns:`), parsed once.
//!
//! The server validates its configuration with this parser at startup; the core parses the
//! URLs it receives in `welcome` with the same code, so both sides agree on what is valid.

use std::fmt;

/// The scheme of an ICE server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IceScheme {
    /// `stun:` — STUN over UDP.
    Stun,
    /// `stuns:` — STUN over TLS.
    Stuns,
    /// `turn:` — TURN over UDP (default) or TCP.
    Turn,
    /// `turns:` — TURN over TLS.
    Turns,
}

/// The transport to reach an ICE server with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IceTransport {
    /// UDP.
    Udp,
    /// TCP (for `turns:`/`stuns:` this is TLS over TCP).
    Tcp,
}

/// A parsed ICE server URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IceUrl {
    /// The scheme.
    pub scheme: IceScheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (defaults: 3478, or 5349 for the TLS schemes).
    pub port: u16,
    /// Transport (defaults: UDP for `stun:`/`turn:`, TCP for `stuns:`/`turns:`).
    pub transport: IceTransport,
}

/// Why an ICE URL is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ICE server URL `{url}`: {why}")]
pub struct InvalidIceUrl {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl IceUrl {
    /// Parse one URL such as `stun:198.18.0.1:3478` or `turn:relay.example:443?transport=tcp`.
    pub fn parse(url: &str) -> Result<Self, InvalidIceUrl> {
        let fail = |why| InvalidIceUrl {
            url: url.to_owned(),
            why,
        };
        let (scheme_str, rest) = url
            .split_once(':')
            .ok_or_else(|| fail("expected `stun:`, `stuns:`, `turn:` or `turns:`"))?;
        let scheme = match scheme_str.to_ascii_lowercase().as_str() {
            "stun" => IceScheme::Stun,
            "stuns" => IceScheme::Stuns,
            "turn" => IceScheme::Turn,
            "turns" => IceScheme::Turns,
            _ => return Err(fail("expected `stun:`, `stuns:`, `turn:` or `turns:`")),
        };
        if rest.starts_with("//") {
            return Err(fail("ICE URLs have no `//` after the scheme"));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let tls = matches!(scheme, IceScheme::Stuns | IceScheme::Turns);
        let mut transport = if tls {
            IceTransport::Tcp
        } else {
            IceTransport::Udp
        };
        if let Some(query) = query {
            if matches!(scheme, IceScheme::Stun | IceScheme::Stuns) {
                return Err(fail("STUN URLs take no query"));
            }
            transport = match query.to_ascii_lowercase().as_str() {
                "transport=udp" if !tls => IceTransport::Udp,
                "transport=udp" => return Err(fail("`turns:` runs over TLS, not UDP")),
                "transport=tcp" => IceTransport::Tcp,
                _ => return Err(fail("the only query is `transport=udp` or `transport=tcp`")),
            };
        }
        let default_port = if tls { 5349 } else { 3478 };
        let (host, port) = split_host_port(authority).map_err(fail)?;
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| fail("bad port"))?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(fail("missing host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        {
            return Err(fail(
                "host has characters that belong in no host name or address",
            ));
        }
        Ok(IceUrl {
            scheme,
            host: host.to_owned(),
            port,
            transport,
        })
    }

    /// Whether this is a TURN URL (`turn:` or `turns:`), which needs credentials.
    pub fn is_turn(&self) -> bool {
        matches!(self.scheme, IceScheme::Turn | IceScheme::Turns)
    }

    /// Whether the server is reached over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme, IceScheme::Stuns | IceScheme::Turns)
    }

    /// `host:port`, with brackets around IPv6 addresses, ready for name resolution.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            IceScheme::Stun => "stun",
            IceScheme::Stuns => "stuns",
            IceScheme::Turn => "turn",
            IceScheme::Turns => "turns",
        };
        write!(f, "{scheme}:{}", self.host_port())?;
        if self.scheme == IceScheme::Turn && self.transport == IceTransport::Tcp {
            f.write_str("?transport=tcp")?;
        }
        Ok(())
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed `[` in IPv6 address")?;
        match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or("unexpected text after `]`"),
        }
    } else if authority.matches(':').count() > 1 {
        Err("IPv6 addresses must be in brackets")
    } else {
        match authority.split_once(':') {
            Some((h, p)) => Ok((h, Some(p))),
            None => Ok((authority, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = IceUrl::parse("stun:198.18.0.1").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.transport),
            (IceScheme::Stun, 3478, IceTransport::Udp)
        );
        let u = IceUrl::parse("turn:relay.example:443?transport=tcp").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("relay.example", 443, IceTransport::Tcp)
        );
        let u = IceUrl::parse("turns:relay.example").unwrap();
        assert_eq!(
            (u.port, u.transport, u.is_tls()),
            (5349, IceTransport::Tcp, true)
        );
        let u = IceUrl::parse("stun:[2001:db8::1]:3479").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 3479));
        assert_eq!(u.host_port(), "[2001:db8::1]:3479");
        assert_eq!(u.to_string(), "stun:[2001:db8::1]:3479");
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        for bad in [
            "http://x",
            "stun://198.18.0.1",
            "stun:",
            "stun:host:0",
            "stun:host:99999",
            "turn:host?transport=sctp",
            "turns:host?transport=udp",
            "stun:host?transport=udp",
            "stun:2001:db8::1",
            "stun:[2001:db8::1",
            "stun:ho st",
        ] {
            let err = IceUrl::parse(bad).unwrap_err();
            assert!(!err.why.is_empty(), "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
