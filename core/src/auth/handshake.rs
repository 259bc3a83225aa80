//! The handshakes that bind a connection to a pairing, sans-IO: plain functions from the
//! messages received to the messages to send, so every path is unit-tested without a network.
//!
//! **Code pairing (SPAKE2).**
//! ```text
//! phone                                                    desktop
//!  pake_hello {secret kind, X = SPAKE2-A(pw), id_p, name_p, fp_p}  (in pair_request)
//!   -------------------------------------------------------------->
//!               pake_reply {Y = SPAKE2-B(pw), id_d, name_d, fp_d, mac_d}  (in pair_response)
//!   <--------------------------------------------------------------
//!  pake_confirm {mac_p}                                    (signal auth, before the offer)
//!   -------------------------------------------------------------->
//! ```
//! `K = SPAKE2(pw)`; the transcript `T` hashes the session id, the routing code, the secret
//! kind, X, Y, both identity keys, names and DTLS fingerprints. HKDF over `K` (salt `T`) gives
//! one confirmation key per side and a comparison code; `mac = HMAC(k_side, T)`. A side that
//! verifies the other's MAC knows the other knew the secret *and* sent exactly these
//! fingerprints and keys: a server that swaps a fingerprint or answers with its own peer
//! cannot produce the MAC. SPAKE2 gives a guesser one guess per run and nothing to test
//! guesses offline; the desktop burns its code after every run.
//!
//! **Trusted reconnect (Ed25519).** The phone sends `trusted_hello {id_p, nonce_p, name_p,
//! fp_p}`; the desktop, which has `id_p` in its trust list, answers `trusted_reply {id_d,
//! nonce_d, name_d, fp_d, sig_d}`; the phone checks `id_d` is the key it remembered and sends
//! `trusted_confirm {sig_p}`. Both signatures cover the session id, the desktop's device id,
//! both keys, both nonces, names and fingerprints, so an old message replayed into a new
//! session fails.

use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use proxim_protocol::{AuthPayload, DeviceId, RoutingCode, SessionId};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity as PakeId, Password, Spake2};

use super::AuthError;
use super::code::{CodeSecret, CodeSecrets, PairingCode, SecretKind};
use super::identity::{Identity, PublicIdentity};
use super::wire::{AUTH_VERSION, AbortReason, AuthMessage, Bytes, Fingerprint, RefuseReason};

const PAKE_ID_PHONE: &[u8] = b"proxim phone";
const PAKE_ID_DESKTOP: &[u8] = b"proxim desktop";

/// How the other device was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A first pairing with a code (SPAKE2).
    Code,
    /// A reconnect of a trusted device (identity keys).
    Trusted,
}

/// What a completed handshake proved about the other device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// How.
    pub method: AuthMethod,
    /// Its identity key.
    pub peer_identity: PublicIdentity,
    /// Its name, as it authenticated it.
    pub peer_name: String,
    /// The DTLS certificate fingerprint it must present.
    pub peer_fingerprint: Fingerprint,
    /// A code both screens can show to compare (code pairing only): 6 digits, `123 456`.
    pub comparison: Option<String>,
}

/// What this device brings to a handshake.
#[derive(Debug, Clone)]
pub struct LocalParty {
    /// Its identity key.
    pub identity: Identity,
    /// Its name.
    pub name: String,
    /// Its DTLS certificate fingerprint.
    pub fingerprint: Fingerprint,
}

// ---------------------------------------------------------------------------------------------
// Phone
// ---------------------------------------------------------------------------------------------

/// The phone's half of a handshake, from the hello to the confirmation.
#[derive(Debug)]
pub struct PhoneHandshake {
    me: LocalParty,
    mode: PhoneMode,
}

enum PhoneMode {
    Pake {
        spake: Spake2<Ed25519Group>,
        routing: RoutingCode,
        kind: SecretKind,
        pake_a: [u8; 33],
    },
    Trusted {
        desktop_id: DeviceId,
        desktop_key: PublicIdentity,
        nonce: [u8; 32],
    },
}

impl std::fmt::Debug for PhoneMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PhoneMode::Pake { .. } => f.write_str("Pake"),
            PhoneMode::Trusted { .. } => f.write_str("Trusted"),
        }
    }
}

impl PhoneHandshake {
    /// Start a code pairing; the payload goes in `pair_request`.
    pub fn pake(code: &PairingCode, me: LocalParty) -> (PhoneHandshake, AuthPayload) {
        let (spake, pake_a) = start(&code.secret, &code.routing, Side::Phone);
        let hello = AuthMessage::PakeHello {
            v: AUTH_VERSION,
            secret: code.secret.kind(),
            pake: Bytes(pake_a),
            id: Bytes(me.identity.public().0),
            name: me.name.clone(),
            fp: me.fingerprint,
        };
        let handshake = PhoneHandshake {
            me,
            mode: PhoneMode::Pake {
                spake,
                routing: code.routing.clone(),
                kind: code.secret.kind(),
                pake_a,
            },
        };
        (handshake, hello.encode())
    }

    /// Start a reconnect to a trusted desktop; the payload goes in `connect_request`.
    pub fn trusted(
        desktop_id: DeviceId,
        desktop_key: PublicIdentity,
        me: LocalParty,
    ) -> (PhoneHandshake, AuthPayload) {
        let nonce: [u8; 32] = rand::random();
        let hello = AuthMessage::TrustedHello {
            v: AUTH_VERSION,
            id: Bytes(me.identity.public().0),
            nonce: Bytes(nonce),
            name: me.name.clone(),
            fp: me.fingerprint,
        };
        let handshake = PhoneHandshake {
            me,
            mode: PhoneMode::Trusted {
                desktop_id,
                desktop_key,
                nonce,
            },
        };
        (handshake, hello.encode())
    }

    /// The desktop accepted with `reply` in session `session`: verify it. On success, send the
    /// returned confirmation to the desktop (as a `signal {kind: auth}`) before the offer.
    /// On failure, tell the desktop with [`abort_payload`].
    pub fn on_reply(
        self,
        session: &SessionId,
        reply: Option<&AuthPayload>,
    ) -> Result<(Verified, AuthPayload), AuthError> {
        let reply = reply.ok_or(AuthError::Missing("the desktop's reply"))?;
        let reply = AuthMessage::decode(reply).map_err(AuthError::Malformed)?;
        match (self.mode, reply) {
            (
                PhoneMode::Pake {
                    spake,
                    routing,
                    kind,
                    pake_a,
                },
                AuthMessage::PakeReply {
                    pake,
                    id,
                    name,
                    fp,
                    mac,
                },
            ) => {
                let key = spake
                    .finish(&pake.0)
                    .map_err(|_| AuthError::KeyConfirmation)?;
                let transcript = PakeTranscript {
                    session,
                    routing: &routing,
                    kind,
                    pake_a: &pake_a,
                    pake_b: &pake.0,
                    phone: (
                        &self.me.identity.public(),
                        &self.me.name,
                        &self.me.fingerprint,
                    ),
                    desktop: (&PublicIdentity(id.0), &name, &fp),
                }
                .hash();
                let keys = ConfirmKeys::derive(&key, &transcript);
                if !verify_mac(&keys.desktop, &transcript, &mac.0) {
                    return Err(AuthError::KeyConfirmation);
                }
                let confirm = AuthMessage::PakeConfirm {
                    mac: Bytes(compute_mac(&keys.phone, &transcript)),
                };
                let verified = Verified {
                    method: AuthMethod::Code,
                    peer_identity: PublicIdentity(id.0),
                    peer_name: name,
                    peer_fingerprint: fp,
                    comparison: Some(keys.comparison),
                };
                Ok((verified, confirm.encode()))
            }
            (
                PhoneMode::Trusted {
                    desktop_id,
                    desktop_key,
                    nonce,
                },
                AuthMessage::TrustedReply {
                    id,
                    nonce: desktop_nonce,
                    name,
                    fp,
                    sig,
                },
            ) => {
                if PublicIdentity(id.0) != desktop_key {
                    return Err(AuthError::IdentityChanged);
                }
                let transcript = TrustedTranscript {
                    session,
                    desktop_id: &desktop_id,
                    phone: (
                        &self.me.identity.public(),
                        &nonce,
                        &self.me.name,
                        &self.me.fingerprint,
                    ),
                    desktop: (&desktop_key, &desktop_nonce.0, &name, &fp),
                }
                .hash();
                if !desktop_key.verify(&signed(b"desktop", &transcript), &sig.0) {
                    return Err(AuthError::BadSignature);
                }
                let confirm = AuthMessage::TrustedConfirm {
                    sig: Bytes(self.me.identity.sign(&signed(b"phone", &transcript))),
                };
                let verified = Verified {
                    method: AuthMethod::Trusted,
                    peer_identity: desktop_key,
                    peer_name: name,
                    peer_fingerprint: fp,
                    comparison: None,
                };
                Ok((verified, confirm.encode()))
            }
            (_, other) => Err(AuthError::Unexpected(other.kind())),
        }
    }
}

/// Why the desktop refused, from the payload of a rejecting `pair_result`.
pub fn refusal_reason(payload: &AuthPayload) -> Option<RefuseReason> {
    match AuthMessage::decode(payload) {
        Ok(AuthMessage::Refused { reason }) => Some(reason),
        _ => None,
    }
}

/// The payload telling the other side this one gives up, and why.
pub fn abort_payload(error: &AuthError) -> AuthPayload {
    let reason = match error {
        AuthError::KeyConfirmation => AbortReason::KeyConfirmation,
        AuthError::BadSignature | AuthError::IdentityChanged | AuthError::NotTrusted => {
            AbortReason::Identity
        }
        _ => AbortReason::Malformed,
    };
    AuthMessage::Abort { reason }.encode()
}

/// The payload telling the other side this one gives up for `reason`.
pub fn abort_payload_for(reason: AbortReason) -> AuthPayload {
    AuthMessage::Abort { reason }.encode()
}

/// The payload of a refusal.
pub fn refusal_payload(reason: RefuseReason) -> AuthPayload {
    AuthMessage::Refused { reason }.encode()
}

// ---------------------------------------------------------------------------------------------
// Desktop
// ---------------------------------------------------------------------------------------------

/// A phone's hello, decoded, as the desktop sees it in a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PhoneHello {
    /// A first pairing with a code.
    Pake {
        /// Which secret the phone used.
        kind: SecretKind,
        /// The phone's identity key (claimed; proven only by the confirmation).
        identity: PublicIdentity,
        /// The phone's name (claimed).
        name: String,
        /// The raw message, for the reply.
        message: AuthMessage,
    },
    /// A trusted phone reconnecting.
    Trusted {
        /// The phone's identity key (claimed; proven only by the confirmation).
        identity: PublicIdentity,
        /// The phone's name (claimed).
        name: String,
        /// The raw message, for the reply.
        message: AuthMessage,
    },
}

impl PhoneHello {
    /// Decode the `auth` of a prompt.
    pub fn decode(auth: Option<&AuthPayload>) -> Result<PhoneHello, AuthError> {
        let auth = auth.ok_or(AuthError::Missing("the phone's hello"))?;
        let message = AuthMessage::decode(auth).map_err(AuthError::Malformed)?;
        match &message {
            AuthMessage::PakeHello {
                secret, id, name, ..
            } => Ok(PhoneHello::Pake {
                kind: *secret,
                identity: PublicIdentity(id.0),
                name: name.clone(),
                message,
            }),
            AuthMessage::TrustedHello { id, name, .. } => Ok(PhoneHello::Trusted {
                identity: PublicIdentity(id.0),
                name: name.clone(),
                message,
            }),
            other => Err(AuthError::Unexpected(other.kind())),
        }
    }
}

/// The desktop's half of a handshake, from the reply to the phone's confirmation.
pub struct DesktopHandshake {
    expected: Expected,
    verified: Verified,
}

impl std::fmt::Debug for DesktopHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesktopHandshake")
            .field("method", &self.verified.method)
            .finish_non_exhaustive()
    }
}

enum Expected {
    Mac {
        key: [u8; 32],
        transcript: [u8; 32],
    },
    Signature {
        key: PublicIdentity,
        message: Vec<u8>,
    },
}

impl DesktopHandshake {
    /// Answer a code pairing: the payload goes in the accepting `pair_response`. The code's
    /// secrets must be burned after this, whatever happens next.
    pub fn respond_pake(
        secrets: &CodeSecrets,
        routing: &RoutingCode,
        session: &SessionId,
        hello: &PhoneHello,
        me: &LocalParty,
    ) -> Result<(DesktopHandshake, AuthPayload), AuthError> {
        let PhoneHello::Pake {
            message:
                AuthMessage::PakeHello {
                    secret: kind,
                    pake: pake_a,
                    id,
                    name,
                    fp,
                    ..
                },
            ..
        } = hello
        else {
            return Err(AuthError::Unexpected("trusted_hello"));
        };
        let (spake, pake_b) = start(secrets.get(*kind), routing, Side::Desktop);
        let key = spake.finish(&pake_a.0).map_err(|_| {
            AuthError::Malformed(super::wire::WireError("bad SPAKE2 message".into()))
        })?;
        let phone_key = PublicIdentity(id.0);
        let transcript = PakeTranscript {
            session,
            routing,
            kind: *kind,
            pake_a: &pake_a.0,
            pake_b: &pake_b,
            phone: (&phone_key, name, fp),
            desktop: (&me.identity.public(), &me.name, &me.fingerprint),
        }
        .hash();
        let keys = ConfirmKeys::derive(&key, &transcript);
        let reply = AuthMessage::PakeReply {
            pake: Bytes(pake_b),
            id: Bytes(me.identity.public().0),
            name: me.name.clone(),
            fp: me.fingerprint,
            mac: Bytes(compute_mac(&keys.desktop, &transcript)),
        };
        let handshake = DesktopHandshake {
            expected: Expected::Mac {
                key: keys.phone,
                transcript,
            },
            verified: Verified {
                method: AuthMethod::Code,
                peer_identity: phone_key,
                peer_name: name.clone(),
                peer_fingerprint: *fp,
                comparison: Some(keys.comparison),
            },
        };
        Ok((handshake, reply.encode()))
    }

    /// Answer a trusted phone's reconnect (`phone_key` is in the trust list): the payload goes
    /// in the accepting `pair_response`.
    pub fn respond_trusted(
        my_device_id: &DeviceId,
        session: &SessionId,
        hello: &PhoneHello,
        me: &LocalParty,
    ) -> Result<(DesktopHandshake, AuthPayload), AuthError> {
        let PhoneHello::Trusted {
            message:
                AuthMessage::TrustedHello {
                    id,
                    nonce: phone_nonce,
                    name,
                    fp,
                    ..
                },
            ..
        } = hello
        else {
            return Err(AuthError::Unexpected("pake_hello"));
        };
        let phone_key = PublicIdentity(id.0);
        let nonce: [u8; 32] = rand::random();
        let transcript = TrustedTranscript {
            session,
            desktop_id: my_device_id,
            phone: (&phone_key, &phone_nonce.0, name, fp),
            desktop: (&me.identity.public(), &nonce, &me.name, &me.fingerprint),
        }
        .hash();
        let reply = AuthMessage::TrustedReply {
            id: Bytes(me.identity.public().0),
            nonce: Bytes(nonce),
            name: me.name.clone(),
            fp: me.fingerprint,
            sig: Bytes(me.identity.sign(&signed(b"desktop", &transcript))),
        };
        let handshake = DesktopHandshake {
            expected: Expected::Signature {
                key: phone_key,
                message: signed(b"phone", &transcript),
            },
            verified: Verified {
                method: AuthMethod::Trusted,
                peer_identity: phone_key,
                peer_name: name.clone(),
                peer_fingerprint: *fp,
                comparison: None,
            },
        };
        Ok((handshake, reply.encode()))
    }

    /// Whether this is a code pairing (whose failure burns the code).
    pub fn is_code_pairing(&self) -> bool {
        self.verified.method == AuthMethod::Code
    }

    /// The phone's confirmation arrived: verify it.
    pub fn on_confirm(self, confirm: &AuthPayload) -> Result<Verified, AuthError> {
        let message = AuthMessage::decode(confirm).map_err(AuthError::Malformed)?;
        match (self.expected, message) {
            (Expected::Mac { key, transcript }, AuthMessage::PakeConfirm { mac }) => {
                if verify_mac(&key, &transcript, &mac.0) {
                    Ok(self.verified)
                } else {
                    Err(AuthError::KeyConfirmation)
                }
            }
            (Expected::Signature { key, message }, AuthMessage::TrustedConfirm { sig }) => {
                if key.verify(&message, &sig.0) {
                    Ok(self.verified)
                } else {
                    Err(AuthError::BadSignature)
                }
            }
            (_, AuthMessage::Abort { reason }) => Err(AuthError::PeerAborted(reason)),
            (_, other) => Err(AuthError::Unexpected(other.kind())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key schedule
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Side {
    Phone,
    Desktop,
}

fn start(
    secret: &CodeSecret,
    routing: &RoutingCode,
    side: Side,
) -> (Spake2<Ed25519Group>, [u8; 33]) {
    let password = Password::new(secret.password(routing));
    let (phone, desktop) = (PakeId::new(PAKE_ID_PHONE), PakeId::new(PAKE_ID_DESKTOP));
    let (spake, message) = match side {
        Side::Phone => Spake2::<Ed25519Group>::start_a(&password, &phone, &desktop),
        Side::Desktop => Spake2::<Ed25519Group>::start_b(&password, &phone, &desktop),
    };
    let mut out = [0u8; 33];
    // SPAKE2 over Ed25519 messages are a side byte plus a 32-byte point.
    let n = message.len().min(33);
    out[..n].copy_from_slice(&message[..n]);
    (spake, out)
}

struct PakeTranscript<'a> {
    session: &'a SessionId,
    routing: &'a RoutingCode,
    kind: SecretKind,
    pake_a: &'a [u8; 33],
    pake_b: &'a [u8; 33],
    phone: (&'a PublicIdentity, &'a String, &'a Fingerprint),
    desktop: (&'a PublicIdentity, &'a String, &'a Fingerprint),
}

impl PakeTranscript<'_> {
    fn hash(&self) -> [u8; 32] {
        let mut h = Transcript::new(b"proxim pake v1");
        h.field(self.session.as_str().as_bytes());
        h.field(self.routing.as_str().as_bytes());
        h.field(match self.kind {
            SecretKind::Short => b"short",
            SecretKind::Qr => b"qr",
        });
        h.field(self.pake_a);
        h.field(self.pake_b);
        for (key, name, fp) in [self.phone, self.desktop] {
            h.field(&key.0);
            h.field(name.as_bytes());
            h.field(&fp.0.0);
        }
        h.finish()
    }
}

struct TrustedTranscript<'a> {
    session: &'a SessionId,
    desktop_id: &'a DeviceId,
    phone: (
        &'a PublicIdentity,
        &'a [u8; 32],
        &'a String,
        &'a Fingerprint,
    ),
    desktop: (
        &'a PublicIdentity,
        &'a [u8; 32],
        &'a String,
        &'a Fingerprint,
    ),
}

impl TrustedTranscript<'_> {
    fn hash(&self) -> [u8; 32] {
        let mut h = Transcript::new(b"proxim trusted v1");
        h.field(self.session.as_str().as_bytes());
        h.field(self.desktop_id.as_str().as_bytes());
        for (key, nonce, name, fp) in [self.phone, self.desktop] {
            h.field(&key.0);
            h.field(nonce);
            h.field(name.as_bytes());
            h.field(&fp.0.0);
        }
        h.finish()
    }
}

/// A SHA-256 over length-prefixed fields: no two different field lists hash the same input.
struct Transcript(Sha256);

impl Transcript {
    fn new(label: &[u8]) -> Transcript {
        let mut t = Transcript(Sha256::new());
        t.field(label);
        t
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

fn signed(role: &[u8], transcript: &[u8; 32]) -> Vec<u8> {
    let mut message = b"proxim trusted signature v1 ".to_vec();
    message.extend_from_slice(role);
    message.push(0);
    message.extend_from_slice(transcript);
    message
}

struct ConfirmKeys {
    phone: [u8; 32],
    desktop: [u8; 32],
    comparison: String,
}

impl ConfirmKeys {
    fn derive(key: &[u8], transcript: &[u8; 32]) -> ConfirmKeys {
        let hk = Hkdf::<Sha256>::new(Some(transcript), key);
        let mut phone = [0u8; 32];
        let mut desktop = [0u8; 32];
        let mut sas = [0u8; 4];
        // 32-byte outputs of HKDF-SHA256 never exceed its limit (255 × 32 bytes).
        let _ = hk.expand(b"proxim phone confirm", &mut phone);
        let _ = hk.expand(b"proxim desktop confirm", &mut desktop);
        let _ = hk.expand(b"proxim comparison", &mut sas);
        let number = u32::from_be_bytes(sas) % 1_000_000;
        ConfirmKeys {
            phone,
            desktop,
            comparison: format!("{:03} {:03}", number / 1000, number % 1000),
        }
    }
}

fn compute_mac(key: &[u8; 32], transcript: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(transcript);
    mac.finalize().into_bytes().into()
}

fn verify_mac(key: &[u8; 32], transcript: &[u8; 32], tag: &[u8; 32]) -> bool {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(transcript);
    // Constant time.
    mac.verify_slice(tag).is_ok()
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this is never reached.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(s: u8) -> SessionId {
        SessionId::new(format!("{s:02x}").repeat(16)).unwrap()
    }

    fn party(name: &str, fp: u8) -> LocalParty {
        LocalParty {
            identity: Identity::ephemeral(),
            name: name.into(),
            fingerprint: Fingerprint(Bytes([fp; 32])),
        }
    }

    fn routing() -> RoutingCode {
        RoutingCode::new("K7P2QX").unwrap()
    }

    fn typed(secrets: &CodeSecrets) -> PairingCode {
        PairingCode::parse(&secrets.short_code(&routing())).unwrap()
    }

    /// Run a whole code pairing; returns what each side verified.
    fn pake_run(
        phone_code: &PairingCode,
        secrets: &CodeSecrets,
        phone: LocalParty,
        desk: &LocalParty,
    ) -> (
        Result<Verified, AuthError>,
        Option<Result<Verified, AuthError>>,
    ) {
        let s = session(1);
        let (hs, hello) = PhoneHandshake::pake(phone_code, phone);
        let hello = PhoneHello::decode(Some(&hello)).unwrap();
        let (desk_hs, reply) =
            DesktopHandshake::respond_pake(secrets, &routing(), &s, &hello, desk).unwrap();
        match hs.on_reply(&s, Some(&reply)) {
            Ok((verified, confirm)) => (Ok(verified), Some(desk_hs.on_confirm(&confirm))),
            Err(e) => (Err(e), None),
        }
    }

    #[test]
    fn code_pairing_verifies_both_sides_and_their_fingerprints() {
        let secrets = CodeSecrets::generate();
        let phone = party("Phone", 1);
        let phone_key = phone.identity.public();
        let desk = party("Desk", 2);
        for code in [
            typed(&secrets),
            PairingCode::parse(&secrets.qr_uri(&routing(), "ws://198.18.0.1/ws")).unwrap(),
        ] {
            let (p, d) = pake_run(&code, &secrets, phone.clone(), &desk);
            let (p, d) = (p.unwrap(), d.unwrap().unwrap());
            assert_eq!(p.peer_fingerprint, desk.fingerprint);
            assert_eq!(p.peer_identity, desk.identity.public());
            assert_eq!(p.peer_name, "Desk");
            assert_eq!(d.peer_fingerprint, phone.fingerprint);
            assert_eq!(d.peer_identity, phone_key);
            assert_eq!(p.comparison, d.comparison);
            assert_eq!(p.comparison.as_ref().unwrap().len(), 7);
        }
    }

    #[test]
    fn a_wrong_secret_fails_key_confirmation_on_the_phone() {
        let secrets = CodeSecrets::generate();
        let other = CodeSecrets::generate();
        let (p, d) = pake_run(
            &typed(&other),
            &secrets,
            party("Phone", 1),
            &party("Desk", 2),
        );
        assert_eq!(p.unwrap_err(), AuthError::KeyConfirmation);
        assert!(d.is_none());
    }

    #[test]
    fn the_other_secret_kind_does_not_work() {
        // A phone that claims the QR secret but holds the short one.
        let secrets = CodeSecrets::generate();
        let mut code = typed(&secrets);
        code.secret = PairingCode::parse(&CodeSecrets::generate().qr_uri(&routing(), "ws://a/ws"))
            .unwrap()
            .secret;
        let (p, _) = pake_run(&code, &secrets, party("Phone", 1), &party("Desk", 2));
        assert_eq!(p.unwrap_err(), AuthError::KeyConfirmation);
    }

    /// A server that rewrites any field of the reply (fingerprint, key, name, PAKE message)
    /// breaks the desktop's MAC.
    #[test]
    fn a_tampered_reply_is_detected() {
        let secrets = CodeSecrets::generate();
        let desk = party("Desk", 2);
        let s = session(1);
        for field in 0..4 {
            let (hs, hello) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
            let hello = PhoneHello::decode(Some(&hello)).unwrap();
            let (_, reply) =
                DesktopHandshake::respond_pake(&secrets, &routing(), &s, &hello, &desk).unwrap();
            let mut reply = AuthMessage::decode(&reply).unwrap();
            if let AuthMessage::PakeReply {
                pake, id, name, fp, ..
            } = &mut reply
            {
                match field {
                    0 => fp.0.0[0] ^= 1,
                    1 => id.0 = Identity::ephemeral().public().0,
                    2 => name.push('!'),
                    _ => pake.0[5] ^= 1,
                }
            }
            let error = hs.on_reply(&s, Some(&reply.encode())).unwrap_err();
            assert_eq!(error, AuthError::KeyConfirmation, "field {field}");
        }
    }

    /// A server that rewrites the phone's fingerprint in the hello makes the desktop's
    /// transcript differ from the phone's: the phone rejects the desktop's MAC.
    #[test]
    fn a_tampered_hello_is_detected() {
        let secrets = CodeSecrets::generate();
        let s = session(1);
        let (hs, hello) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
        let mut message = AuthMessage::decode(&hello).unwrap();
        if let AuthMessage::PakeHello { fp, .. } = &mut message {
            fp.0.0[31] ^= 0x80;
        }
        let hello = PhoneHello::decode(Some(&message.encode())).unwrap();
        let (_, reply) =
            DesktopHandshake::respond_pake(&secrets, &routing(), &s, &hello, &party("Desk", 2))
                .unwrap();
        assert_eq!(
            hs.on_reply(&s, Some(&reply)).unwrap_err(),
            AuthError::KeyConfirmation
        );
    }

    /// Messages recorded from an earlier session do not work in a new one.
    #[test]
    fn replayed_messages_fail() {
        let secrets = CodeSecrets::generate();
        let desk = party("Desk", 2);
        let phone = party("Phone", 1);
        // Session 1, recorded.
        let (hs1, hello1) = PhoneHandshake::pake(&typed(&secrets), phone.clone());
        let decoded1 = PhoneHello::decode(Some(&hello1)).unwrap();
        let (desk1, reply1) =
            DesktopHandshake::respond_pake(&secrets, &routing(), &session(1), &decoded1, &desk)
                .unwrap();
        let (_, confirm1) = hs1.on_reply(&session(1), Some(&reply1)).unwrap();
        desk1.on_confirm(&confirm1).unwrap();

        // The attacker replays the phone's hello and confirmation into session 2.
        let (desk2, _) =
            DesktopHandshake::respond_pake(&secrets, &routing(), &session(2), &decoded1, &desk)
                .unwrap();
        assert_eq!(
            desk2.on_confirm(&confirm1).unwrap_err(),
            AuthError::KeyConfirmation
        );

        // The attacker replays the desktop's reply to a new phone run.
        let (hs3, _) = PhoneHandshake::pake(&typed(&secrets), phone.clone());
        assert_eq!(
            hs3.on_reply(&session(1), Some(&reply1)).unwrap_err(),
            AuthError::KeyConfirmation
        );
    }

    #[test]
    fn trusted_reconnect_verifies_and_resists_replay_and_key_change() {
        let desk = party("Desk", 2);
        let desk_id = DeviceId::new("dev-desk").unwrap();
        let phone = party("Phone", 1);
        let run = |s: &SessionId, desktop: &LocalParty| {
            let (hs, hello) =
                PhoneHandshake::trusted(desk_id.clone(), desk.identity.public(), phone.clone());
            let decoded = PhoneHello::decode(Some(&hello)).unwrap();
            let (dhs, reply) =
                DesktopHandshake::respond_trusted(&desk_id, s, &decoded, desktop).unwrap();
            (hs, dhs, reply)
        };
        let (hs, dhs, reply) = run(&session(1), &desk);
        let (verified, confirm) = hs.on_reply(&session(1), Some(&reply)).unwrap();
        assert_eq!(verified.peer_fingerprint, desk.fingerprint);
        assert_eq!(verified.method, AuthMethod::Trusted);
        let d = dhs.on_confirm(&confirm).unwrap();
        assert_eq!(d.peer_identity, phone.identity.public());
        assert_eq!(d.peer_fingerprint, phone.fingerprint);

        // Replays into a new session fail both ways.
        let (_, dhs2, _) = run(&session(2), &desk);
        assert_eq!(
            dhs2.on_confirm(&confirm).unwrap_err(),
            AuthError::BadSignature
        );
        let (hs3, _, _) = run(&session(3), &desk);
        assert_eq!(
            hs3.on_reply(&session(3), Some(&reply)).unwrap_err(),
            AuthError::BadSignature
        );

        // Another desktop (another key) answering: the key changed.
        let impostor = party("Desk", 9);
        let (hs4, _, reply4) = run(&session(4), &impostor);
        assert_eq!(
            hs4.on_reply(&session(4), Some(&reply4)).unwrap_err(),
            AuthError::IdentityChanged
        );

        // A swapped fingerprint breaks the signature.
        let (hs5, _, reply5) = run(&session(5), &desk);
        let mut message = AuthMessage::decode(&reply5).unwrap();
        if let AuthMessage::TrustedReply { fp, .. } = &mut message {
            fp.0.0[0] ^= 1;
        }
        assert_eq!(
            hs5.on_reply(&session(5), Some(&message.encode()))
                .unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn missing_malformed_and_unexpected_payloads_are_errors() {
        let secrets = CodeSecrets::generate();
        let s = session(1);
        let (hs, _) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
        assert!(matches!(hs.on_reply(&s, None), Err(AuthError::Missing(_))));
        let (hs, _) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
        let junk = AuthPayload::new("e30").unwrap();
        assert!(matches!(
            hs.on_reply(&s, Some(&junk)),
            Err(AuthError::Malformed(_))
        ));
        let (hs, _) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
        let refusal = refusal_payload(RefuseReason::NotTrusted);
        assert_eq!(
            hs.on_reply(&s, Some(&refusal)).unwrap_err(),
            AuthError::Unexpected("refused")
        );
        assert_eq!(refusal_reason(&refusal), Some(RefuseReason::NotTrusted));
        assert!(matches!(
            PhoneHello::decode(None),
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            PhoneHello::decode(Some(&refusal)),
            Err(AuthError::Unexpected("refused"))
        ));

        let (_, hello) = PhoneHandshake::pake(&typed(&secrets), party("Phone", 1));
        let hello = PhoneHello::decode(Some(&hello)).unwrap();
        let (dhs, _) =
            DesktopHandshake::respond_pake(&secrets, &routing(), &s, &hello, &party("D", 2))
                .unwrap();
        let abort = abort_payload(&AuthError::KeyConfirmation);
        assert_eq!(
            dhs.on_confirm(&abort).unwrap_err(),
            AuthError::PeerAborted(AbortReason::KeyConfirmation)
        );
    }
}
