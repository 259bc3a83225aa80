//! Pairing codes: a routing part the server sees and a secret part it never receives.
//!
//! A desktop shows two forms of the same code:
//! - the **short code** a person types, `K7P2QX-4HT9M`: the server's routing code, a dash, and
//!   [`SHORT_SECRET_CHARS`] characters of secret from [`ROUTING_ALPHABET`] (about 24.5 bits).
//!   The PAKE makes that enough: an attacker gets one online guess per attempt, and every
//!   attempt burns the code.
//! - the **QR code**, a URI `proxim://pair?v=1&server=…&code=K7P2QX&key=…` carrying the server
//!   URL, the routing code and a 256-bit secret.
//!
//! Only the routing part ever goes to the server; the secret is the PAKE's password.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proxim_protocol::{ROUTING_ALPHABET, RoutingCode};
use rand::Rng as _;
use zeroize::Zeroize;

/// Characters of secret in a short code.
pub const SHORT_SECRET_CHARS: usize = 5;

/// Bytes of secret in a QR code.
pub const QR_SECRET_BYTES: usize = 32;

/// The URI scheme of QR codes.
pub const QR_SCHEME: &str = "proxim";

/// Why a code could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// The short code is malformed.
    #[error("{0}")]
    Short(String),
    /// The QR URI is malformed.
    #[error("invalid pairing QR code: {0}")]
    Qr(String),
}

/// Which of the desktop's two secrets a phone uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// The short secret a person typed.
    Short,
    /// The high-entropy secret from the QR code.
    Qr,
}

/// A code's secret part. Never logged: `Debug` redacts it; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeSecret {
    kind: SecretKind,
    bytes: Vec<u8>,
}

impl CodeSecret {
    /// Which secret this is.
    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    /// The PAKE password for this secret and routing code. The routing code is part of it so
    /// that a secret only ever works with the code it was shown with.
    pub(crate) fn password(&self, routing: &RoutingCode) -> Vec<u8> {
        let mut password = Vec::with_capacity(32 + self.bytes.len());
        password.extend_from_slice(b"proxim code v1\0");
        password.extend_from_slice(routing.as_str().as_bytes());
        password.push(0);
        password.push(match self.kind {
            SecretKind::Short => b's',
            SecretKind::Qr => b'q',
        });
        password.extend_from_slice(&self.bytes);
        password
    }
}

impl Drop for CodeSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for CodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeSecret({:?}, <redacted>)", self.kind)
    }
}

/// A parsed pairing code: what a phone needs to pair.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    /// The routing part, sent to the server.
    pub routing: RoutingCode,
    /// The secret part, never sent.
    pub secret: CodeSecret,
    /// The signaling server, when the code came from a QR code.
    pub server: Option<String>,
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingCode")
            .field("routing", &self.routing)
            .field("secret", &self.secret)
            .field("server", &self.server)
            .finish()
    }
}

impl PairingCode {
    /// Parse what the phone got: a typed short code (case, spaces and dashes do not matter)
    /// or a scanned `proxim://pair?…` URI.
    pub fn parse(input: &str) -> Result<PairingCode, CodeError> {
        let input = input.trim();
        if input.len() > 4096 {
            return Err(CodeError::Short("too long to be a pairing code".into()));
        }
        if input
            .get(..QR_SCHEME.len() + 1)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxim:"))
        {
            return parse_uri(input);
        }
        parse_short(input)
    }

    /// A form safe for logs.
    pub fn redacted(&self) -> String {
        format!("{}+<secret>", self.routing.redacted())
    }
}

fn parse_short(typed: &str) -> Result<PairingCode, CodeError> {
    let normalized: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if let Some(bad) = normalized.chars().find(|c| !ROUTING_ALPHABET.contains(*c)) {
        let hint = match bad {
            '0' | 'O' => " (codes have no 0 or O)",
            '1' | 'I' | 'L' => " (codes have no 1, I or L)",
            'U' => " (codes have no U)",
            _ => "",
        };
        return Err(CodeError::Short(format!(
            "`{}` is not a character of pairing codes{hint}",
            bad.escape_default()
        )));
    }
    let len = normalized.chars().count();
    if len < 4 + SHORT_SECRET_CHARS {
        return Err(CodeError::Short(format!(
            "too short: a pairing code has at least {} characters (like K7P2QX-4HT9M)",
            4 + SHORT_SECRET_CHARS
        )));
    }
    let (routing, secret) = normalized.split_at(len - SHORT_SECRET_CHARS);
    let routing = RoutingCode::new(routing).map_err(|e| CodeError::Short(e.to_string()))?;
    Ok(PairingCode {
        routing,
        secret: CodeSecret {
            kind: SecretKind::Short,
            bytes: secret.as_bytes().to_vec(),
        },
        server: None,
    })
}

fn parse_uri(input: &str) -> Result<PairingCode, CodeError> {
    let url = url::Url::parse(input).map_err(|e| CodeError::Qr(e.to_string()))?;
    if !url.scheme().eq_ignore_ascii_case(QR_SCHEME) {
        return Err(CodeError::Qr(format!(
            "scheme `{}` is not proxim",
            url.scheme()
        )));
    }
    let target = url
        .host_str()
        .unwrap_or_else(|| url.path().trim_matches('/'));
    if target != "pair" {
        return Err(CodeError::Qr(format!("`{target}` is not a pairing link")));
    }
    let (mut version, mut server, mut code, mut key) = (None, None, None, None);
    for (name, value) in url.query_pairs() {
        let slot = match name.as_ref() {
            "v" => &mut version,
            "server" => &mut server,
            "code" => &mut code,
            "key" => &mut key,
            // Newer codes may carry more; what this version does not know is ignored.
            _ => continue,
        };
        if slot.is_some() {
            return Err(CodeError::Qr(format!("`{name}` appears twice")));
        }
        *slot = Some(value.into_owned());
    }
    match version.as_deref() {
        Some("1") => {}
        Some(v) => return Err(CodeError::Qr(format!("version {v} is not supported"))),
        None => return Err(CodeError::Qr("no version".into())),
    }
    let server = server.ok_or_else(|| CodeError::Qr("no server".into()))?;
    let parsed = url::Url::parse(&server).map_err(|e| CodeError::Qr(format!("server: {e}")))?;
    if !matches!(parsed.scheme(), "ws" | "wss") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(CodeError::Qr(
            "the server must be a ws:// or wss:// URL".into(),
        ));
    }
    // The normalized form: what the signaling client will dial, not a look-alike of it.
    let server = parsed.to_string();
    let code = code.ok_or_else(|| CodeError::Qr("no code".into()))?;
    let routing = RoutingCode::new(code).map_err(|e| CodeError::Qr(e.to_string()))?;
    let key = key.ok_or_else(|| CodeError::Qr("no key".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(key.as_bytes())
        .map_err(|_| CodeError::Qr("the key is not base64url".into()))?;
    if bytes.len() != QR_SECRET_BYTES {
        return Err(CodeError::Qr(format!(
            "the key has {} bytes, not {QR_SECRET_BYTES}",
            bytes.len()
        )));
    }
    Ok(PairingCode {
        routing,
        secret: CodeSecret {
            kind: SecretKind::Qr,
            bytes,
        },
        server: Some(server),
    })
}

/// The desktop's two secrets for its current routing code.
#[derive(Clone)]
pub struct CodeSecrets {
    short: CodeSecret,
    qr: CodeSecret,
}

impl fmt::Debug for CodeSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeSecrets(<redacted>)")
    }
}

impl CodeSecrets {
    /// Fresh secrets from the operating system's CSPRNG.
    pub fn generate() -> CodeSecrets {
        let mut rng = rand::rng();
        let alphabet = ROUTING_ALPHABET.as_bytes();
        let short: Vec<u8> = (0..SHORT_SECRET_CHARS)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let mut qr = vec![0u8; QR_SECRET_BYTES];
        rng.fill(&mut qr[..]);
        CodeSecrets {
            short: CodeSecret {
                kind: SecretKind::Short,
                bytes: short,
            },
            qr: CodeSecret {
                kind: SecretKind::Qr,
                bytes: qr,
            },
        }
    }

    /// The secret of `kind`.
    pub fn get(&self, kind: SecretKind) -> &CodeSecret {
        match kind {
            SecretKind::Short => &self.short,
            SecretKind::Qr => &self.qr,
        }
    }

    /// The short code to show: `ROUTING-SECRET`.
    pub fn short_code(&self, routing: &RoutingCode) -> String {
        // The short secret is drawn from the ASCII alphabet.
        let secret = String::from_utf8_lossy(&self.short.bytes);
        format!("{}-{secret}", routing.as_str())
    }

    /// The URI to put in a QR code.
    pub fn qr_uri(&self, routing: &RoutingCode, server: &str) -> String {
        let mut url = url::Url::parse("proxim://pair").unwrap_or_else(|_| unreachable_url());
        url.query_pairs_mut()
            .append_pair("v", "1")
            .append_pair("server", server)
            .append_pair("code", routing.as_str())
            .append_pair("key", &URL_SAFE_NO_PAD.encode(&self.qr.bytes));
        url.to_string()
    }
}

#[cold]
fn unreachable_url() -> url::Url {
    // `proxim://pair` is a valid URL; this is never reached.
    url::Url::parse("proxim://pair/").unwrap_or_else(|_| std::process::abort())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> RoutingCode {
        RoutingCode::new("K7P2QX").unwrap()
    }

    #[test]
    fn short_code_round_trips_however_it_is_typed() {
        let secrets = CodeSecrets::generate();
        let shown = secrets.short_code(&routing());
        assert_eq!(shown.len(), 6 + 1 + SHORT_SECRET_CHARS);
        for typed in [
            shown.clone(),
            shown.to_lowercase(),
            shown.replace('-', " "),
            shown.replace('-', ""),
            format!("  {}  ", shown.to_lowercase()),
        ] {
            let code = PairingCode::parse(&typed).unwrap();
            assert_eq!(code.routing, routing());
            assert_eq!(&code.secret, secrets.get(SecretKind::Short), "{typed}");
            assert_eq!(code.server, None);
        }
    }

    #[test]
    fn qr_uri_round_trips_with_the_server() {
        let secrets = CodeSecrets::generate();
        let uri = secrets.qr_uri(&routing(), "wss://signal.example.invalid/ws?x=1&y=2");
        let code = PairingCode::parse(&uri).unwrap();
        assert_eq!(code.routing, routing());
        assert_eq!(&code.secret, secrets.get(SecretKind::Qr));
        assert_eq!(
            code.server.as_deref(),
            Some("wss://signal.example.invalid/ws?x=1&y=2")
        );
        assert!(!uri.contains(&secrets.short_code(&routing())));
    }

    /// Found by the `pairing_code` fuzz target: `wss:o/…` parses as a URL; the code keeps the
    /// normalized form (`wss://o/…`), so what is shown and what is dialled agree.
    #[test]
    fn qr_servers_are_normalized() {
        let code = PairingCode::parse(
            "proxim://pair?v=1&server=wss%3A%6F%2Fsignal.example.inval`d%2Fws&code=K7P2QX\
             &key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap();
        let server = code.server.unwrap();
        assert!(server.starts_with("wss://"), "{server}");
    }

    #[test]
    fn secrets_differ_and_are_redacted() {
        let a = CodeSecrets::generate();
        let b = CodeSecrets::generate();
        assert_ne!(a.get(SecretKind::Qr), b.get(SecretKind::Qr));
        let code = PairingCode::parse(&a.short_code(&routing())).unwrap();
        let debug = format!("{code:?} {a:?}");
        let secret = a.short_code(&routing())[7..].to_owned();
        assert!(!debug.contains(&secret), "{debug}");
        assert!(!code.redacted().contains(&secret));
    }

    #[test]
    fn passwords_bind_the_routing_code_and_kind() {
        let secrets = CodeSecrets::generate();
        let other = RoutingCode::new("ABCDEF").unwrap();
        let short = secrets.get(SecretKind::Short);
        assert_ne!(short.password(&routing()), short.password(&other));
        assert_ne!(
            short.password(&routing()),
            secrets.get(SecretKind::Qr).password(&routing())
        );
    }

    #[test]
    fn bad_codes_are_clear_errors() {
        for (input, needle) in [
            ("", "too short"),
            ("K7P2-4HT9", "too short"),
            ("K7P2QX-4HT0M", "not a character"),
            ("K7P2QX-4HTIM", "no 1, I or L"),
            ("K7P2QXK7P2QXK7P2QX-4HT9M", "4 to 16"),
            (
                "proxim://pair?v=2&server=ws://a/ws&code=K7P2QX&key=AA",
                "version 2",
            ),
            ("proxim://pair?v=1&code=K7P2QX&key=AA", "no server"),
            (
                "proxim://pair?v=1&server=http://a/&code=K7P2QX&key=AA",
                "ws://",
            ),
            (
                "proxim://pair?v=1&server=ws://a/ws&code=K7P2QX&key=AA",
                "bytes",
            ),
            (
                "proxim://pair?v=1&server=ws://a/ws&code=K7P2QX&key=%%%",
                "base64url",
            ),
            (
                "proxim://pair?v=1&v=1&server=ws://a/ws&code=K7P2QX",
                "twice",
            ),
            ("proxim://other?v=1", "not a pairing link"),
            (
                "proxim://pair?v=1&server=ws%3A&code=K7P2QX&key=AA",
                "server",
            ),
            (
                "proxim://pair?v=1&server=ws://a/ws&code=k0&key=AA",
                "pairing code",
            ),
        ] {
            let error = PairingCode::parse(input).unwrap_err().to_string();
            assert!(error.contains(needle), "{input:?}: {error}");
        }
    }
}
