#![allow(clippy::unwrap_used)]
//! A deterministic mutation test over the pairing decoders (stable Rust, fixed budget; the
//! coverage-guided fuzz targets for the same decoders are in `fuzz/`).
//!
//! Seeds are valid authentication payloads of every kind, typed codes and QR links. Each case
//! mutates one (bytes and characters flipped, spans inserted, deleted, duplicated, spliced
//! between seeds, base64 re-encoded JSON edits) and feeds it to the decoder. Decoders must never
//! panic; what decodes must re-encode to something that decodes the same.
//!
//! `PROXIM_MUTATION_CASES` sets the number of cases (default 20 000); `PROXIM_MUTATION_SEED` the
//! seed (default fixed, printed on failure).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proxim_core::auth::handshake::{abort_payload, refusal_payload};
use proxim_core::auth::wire::Bytes;
use proxim_core::auth::{
    AuthError, AuthMessage, CodeSecrets, Fingerprint, Identity, LocalParty, PairingCode,
    PhoneHandshake, PhoneHello, RefuseReason,
};
use proxim_protocol::{AuthPayload, RoutingCode, SessionId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> usize {
    std::env::var("PROXIM_MUTATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("PROXIM_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_a07e)
}

fn party(name: &str) -> LocalParty {
    LocalParty {
        identity: Identity::ephemeral(),
        name: name.into(),
        fingerprint: Fingerprint(Bytes([0x5a; 32])),
    }
}

/// Valid payloads of every message kind, as base64url text.
fn payload_seeds() -> Vec<String> {
    let routing = RoutingCode::new("K7P2QX").unwrap();
    let secrets = CodeSecrets::generate();
    let code = PairingCode::parse(&secrets.short_code(&routing)).unwrap();
    let (_, pake_hello) = PhoneHandshake::pake(&code, party("Phone"));
    let desk_id = proxim_protocol::DeviceId::new("dev-desk").unwrap();
    let (_, trusted_hello) = PhoneHandshake::trusted(
        desk_id.clone(),
        Identity::ephemeral().public(),
        party("Phone"),
    );
    let session = SessionId::new("ab".repeat(16)).unwrap();
    let hello = PhoneHello::decode(Some(&pake_hello)).unwrap();
    let (_, pake_reply) = proxim_core::auth::DesktopHandshake::respond_pake(
        &secrets,
        &routing,
        &session,
        &hello,
        &party("Desk"),
    )
    .unwrap();
    let hello = PhoneHello::decode(Some(&trusted_hello)).unwrap();
    let (_, trusted_reply) = proxim_core::auth::DesktopHandshake::respond_trusted(
        &desk_id,
        &session,
        &hello,
        &party("Desk"),
    )
    .unwrap();
    let confirm = AuthMessage::PakeConfirm {
        mac: Bytes([1; 32]),
    }
    .encode();
    let trusted_confirm = AuthMessage::TrustedConfirm {
        sig: Bytes([2; 64]),
    }
    .encode();
    [
        pake_hello,
        trusted_hello,
        pake_reply,
        trusted_reply,
        confirm,
        trusted_confirm,
        refusal_payload(RefuseReason::NotTrusted),
        abort_payload(&AuthError::KeyConfirmation),
    ]
    .into_iter()
    .map(|p| p.into_string())
    .collect()
}

fn code_seeds() -> Vec<String> {
    let routing = RoutingCode::new("K7P2QX").unwrap();
    let secrets = CodeSecrets::generate();
    vec![
        secrets.short_code(&routing),
        secrets
            .short_code(&routing)
            .to_lowercase()
            .replace('-', " "),
        secrets.qr_uri(&routing, "wss://signal.example.invalid/ws"),
        secrets.qr_uri(&routing, "ws://198.18.0.1:8787/ws?a=b&c=d"),
    ]
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "1e999",
    "-0",
    "\\u0000",
    "\\ud800",
    "\"t\"",
    "\"v\"",
    "\"pake\"",
    "\"mac\"",
    "\"sig\"",
    "\"fp\"",
    "\"id\"",
    "\"name\"",
    "\"pake_hello\"",
    "\"trusted_reply\"",
    "\"abort\"",
    "%",
    "%00",
    "&",
    "=",
    "?",
    "#",
    "proxim://",
    "pair",
    "key=",
    "code=",
    "server=",
    "v=1",
    "é",
    "🦀",
    "\u{202e}",
];

/// One mutation of `input` (as bytes; the result may not be UTF-8, which callers handle).
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let token = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                out.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                out.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 32));
                let span: Vec<u8> = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, span);
            }
            5 => {
                let cut = rng.random_range(0..=len);
                out.truncate(cut);
            }
            6 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = rng.random_range(1..2048);
                let at = rng.random_range(0..=len);
                let fill = *b"A-_9";
                let byte = fill[rng.random_range(0..fill.len())];
                out.splice(at..at, std::iter::repeat_n(byte, n));
            }
        }
    }
    out
}

/// Mutate the JSON inside a payload, then re-encode it: reaches the field checks, not only
/// the base64 layer.
fn mutate_inner(rng: &mut StdRng, payload: &str, other: &str) -> String {
    let json = URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    let other = URL_SAFE_NO_PAD.decode(other).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(mutate(rng, &json, &other))
}

fn check_payload(text: &str) -> bool {
    match AuthMessage::decode_str(text) {
        Ok(message) => {
            let again = message.encode();
            assert_eq!(
                AuthMessage::decode(&again).as_ref(),
                Ok(&message),
                "re-encoding {text:?} changed it"
            );
            if let Ok(payload) = AuthPayload::new(text) {
                // The handshake entry points take the same input without panicking.
                let _ = PhoneHello::decode(Some(&payload));
            }
            true
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            false
        }
    }
}

#[test]
fn mutated_auth_payloads_never_panic_and_round_trip() {
    let seeds = payload_seeds();
    for s in &seeds {
        assert!(check_payload(s), "seed does not decode: {s}");
    }
    let mut rng = StdRng::seed_from_u64(seed());
    let (mut decoded, total) = (0usize, cases());
    for case in 0..total {
        let a = &seeds[rng.random_range(0..seeds.len())];
        let b = &seeds[rng.random_range(0..seeds.len())];
        let text = if rng.random_bool(0.5) {
            mutate_inner(&mut rng, a, b)
        } else {
            String::from_utf8_lossy(&mutate(&mut rng, a.as_bytes(), b.as_bytes())).into_owned()
        };
        let ok = std::panic::catch_unwind(|| check_payload(&text))
            .unwrap_or_else(|_| panic!("case {case} (seed {}) panicked on {text:?}", seed()));
        decoded += usize::from(ok);
    }
    println!("auth payloads: {total} mutated cases, {decoded} still decoded, 0 panics");
    assert!(
        decoded < total,
        "mutations never produced an invalid payload"
    );
}

#[test]
fn mutated_codes_and_links_never_panic() {
    let seeds = code_seeds();
    for s in &seeds {
        PairingCode::parse(s).unwrap_or_else(|e| panic!("seed {s}: {e}"));
    }
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xc0de);
    let (mut parsed, total) = (0usize, cases());
    for case in 0..total {
        let a = &seeds[rng.random_range(0..seeds.len())];
        let b = &seeds[rng.random_range(0..seeds.len())];
        let text =
            String::from_utf8_lossy(&mutate(&mut rng, a.as_bytes(), b.as_bytes())).into_owned();
        let result = std::panic::catch_unwind(|| PairingCode::parse(&text))
            .unwrap_or_else(|_| panic!("case {case} (seed {}) panicked on {text:?}", seed()));
        match result {
            Ok(code) => {
                parsed += 1;
                // What parses is a valid routing code.
                assert!(RoutingCode::new(code.routing.as_str()).is_ok());
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
    println!("codes and links: {total} mutated cases, {parsed} still parsed, 0 panics");
    assert!(parsed < total);
}
