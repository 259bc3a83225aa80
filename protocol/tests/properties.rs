//! Property test: valid messages of every variant, made up by proptest, encode to frames that
//! decode to the same message (and pass every frame invariant of `support/invariants.rs`).
//!
//! The budget is fixed: `PROXIM_PROPTEST_CASES` messages per direction (default 1000) from a
//! fixed seed (`PROXIM_PROPTEST_SEED`), so CI runs the same cases every time.

#[path = "support/invariants.rs"]
pub mod invariants;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use proxim_protocol::{
    AuthPayload, CandidateLine, ClientMessage, ConnectionId, ConnectionOutcome, ConnectionReport,
    DeviceId, DeviceName, ErrorCode, IceServer, MAX_AUTH_PAYLOAD_CHARS, MAX_CANDIDATE_BYTES,
    MAX_DEVICE_NAME_CHARS, MAX_SDP_BYTES, MAX_TEXT_CHARS, PairOutcome, PathKind, PeerDevice,
    ROUTING_ALPHABET, RelayProtocol, ReportToken, ResumeToken, RoutingCode, Sdp, ServerMessage,
    SessionEndReason, SessionId, ShortText, Signal,
};

/// Messages per direction when `PROXIM_PROPTEST_CASES` is unset.
const DEFAULT_CASES: u32 = 1000;

/// The seed when `PROXIM_PROPTEST_SEED` is unset.
const DEFAULT_SEED: u64 = 0x5052_4f58_494d;

#[test]
fn valid_client_messages_round_trip() {
    round_trip("client", client_message(), invariants::CLIENT_KINDS, |m| {
        invariants::check_client_frame(&m.encode()).map(|_| m.kind())
    });
}

#[test]
fn valid_server_messages_round_trip() {
    round_trip("server", server_message(), invariants::SERVER_KINDS, |m| {
        invariants::check_server_frame(&m.encode()).map(|_| m.kind())
    });
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

fn round_trip<M: Clone + Debug>(
    direction: &str,
    strategy: impl Strategy<Value = M>,
    kinds: &[&'static str],
    check: impl Fn(&M) -> Result<&'static str, String>,
) {
    let cases = env_number("PROXIM_PROPTEST_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let seed = env_number("PROXIM_PROPTEST_SEED").unwrap_or(DEFAULT_SEED);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let started = Instant::now();
    let seen = std::cell::RefCell::new(BTreeMap::<&'static str, u32>::new());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |message| {
        let kind = check(&message).map_err(TestCaseError::fail)?;
        *seen.borrow_mut().entry(kind).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{direction} messages (seed {seed:#x}, {cases} cases): {e}");
    }
    let seen = seen.into_inner();
    let ran: u32 = seen.values().sum();
    // Straight to stderr, past the test harness's capture: CI logs show what ran.
    let _ = writeln!(
        std::io::stderr(),
        "properties {direction}: {ran} valid messages round-tripped in {:.1} s (seed {seed:#x}): {seen:?}",
        started.elapsed().as_secs_f64()
    );
    if cases >= 200 {
        let missing: Vec<_> = kinds.iter().filter(|k| !seen.contains_key(*k)).collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim().replace('_', "");
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

// ---------------------------------------------------------------------------------------------
// Strategies: valid messages
// ---------------------------------------------------------------------------------------------

fn client_message() -> impl Strategy<Value = ClientMessage> {
    Union::new(vec![
        (any::<u16>(), short_text())
            .prop_map(|(version, client)| ClientMessage::Hello { version, client })
            .boxed(),
        (device_id(), device_name())
            .prop_map(|(device_id, device_name)| ClientMessage::RegisterDesktop {
                device_id,
                device_name,
            })
            .boxed(),
        (
            routing_code(),
            device_id(),
            device_name(),
            proptest::option::of(auth()),
        )
            .prop_map(
                |(code, device_id, device_name, auth)| ClientMessage::PairRequest {
                    code,
                    device_id,
                    device_name,
                    auth,
                },
            )
            .boxed(),
        (
            device_id(),
            device_id(),
            device_name(),
            proptest::option::of(auth()),
        )
            .prop_map(
                |(desktop, device_id, device_name, auth)| ClientMessage::ConnectRequest {
                    desktop,
                    device_id,
                    device_name,
                    auth,
                },
            )
            .boxed(),
        Just(ClientMessage::RenewCode).boxed(),
        (session_id(), any::<bool>(), proptest::option::of(auth()))
            .prop_map(|(session, accept, auth)| ClientMessage::PairResponse {
                session,
                accept,
                auth,
            })
            .boxed(),
        (session_id(), signal())
            .prop_map(|(session, signal)| ClientMessage::Signal { session, signal })
            .boxed(),
        (session_id(), resume_token())
            .prop_map(|(session, token)| ClientMessage::Resume { session, token })
            .boxed(),
        session_id()
            .prop_map(|session| ClientMessage::Leave { session })
            .boxed(),
        any::<u64>()
            .prop_map(|seq| ClientMessage::Ping { seq })
            .boxed(),
        any::<u64>()
            .prop_map(|seq| ClientMessage::Pong { seq })
            .boxed(),
        proptest::option::of(short_text())
            .prop_map(|reason| ClientMessage::Bye { reason })
            .boxed(),
        (session_id(), connection_outcome(), connection_report())
            .prop_map(
                |(session, outcome, report)| ClientMessage::ConnectionReport {
                    session,
                    outcome,
                    report,
                },
            )
            .boxed(),
    ])
}

fn connection_outcome() -> impl Strategy<Value = ConnectionOutcome> {
    prop_oneof![
        Just(ConnectionOutcome::Connected),
        Just(ConnectionOutcome::Failed),
        Just(ConnectionOutcome::Closed),
    ]
}

fn connection_report() -> impl Strategy<Value = ConnectionReport> {
    let path = prop_oneof![
        Just(PathKind::Host),
        Just(PathKind::Srflx),
        Just(PathKind::Prflx),
        Just(PathKind::Relay),
    ];
    let relay = prop_oneof![
        Just(RelayProtocol::Udp),
        Just(RelayProtocol::Tcp),
        Just(RelayProtocol::Tls),
    ];
    let token = "[a-z0-9_]{1,32}".prop_map(|s| ReportToken::new(s).expect("token"));
    (
        proptest::option::of(path),
        proptest::option::of(relay),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(token),
    )
        .prop_map(
            |(
                path,
                relay_protocol,
                time_to_connect_ms,
                rtt_ms,
                duration_ms,
                bytes_sent,
                bytes_received,
                failure,
            )| {
                ConnectionReport {
                    path,
                    relay_protocol,
                    time_to_connect_ms,
                    rtt_ms,
                    duration_ms,
                    bytes_sent,
                    bytes_received,
                    failure,
                }
            },
        )
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    Union::new(vec![
        (
            any::<u16>(),
            hex128().prop_map(|s| ConnectionId::new(s).expect("hex")),
            proptest::collection::vec(ice_server(), 0..4),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(version, connection_id, ice_servers, interval, timeout)| {
                ServerMessage::Welcome {
                    version,
                    connection_id,
                    ice_servers,
                    heartbeat_interval_ms: interval,
                    heartbeat_timeout_ms: timeout,
                }
            })
            .boxed(),
        (routing_code(), proptest::option::of(any::<u64>()))
            .prop_map(|(code, expires_in_ms)| ServerMessage::Registered {
                code,
                expires_in_ms,
            })
            .boxed(),
        (session_id(), any::<u64>())
            .prop_map(|(session, expires_in_ms)| ServerMessage::PairPending {
                session,
                expires_in_ms,
            })
            .boxed(),
        (
            session_id(),
            peer(),
            any::<u64>(),
            proptest::option::of(auth()),
        )
            .prop_map(
                |(session, peer, expires_in_ms, auth)| ServerMessage::PairPrompt {
                    session,
                    peer,
                    expires_in_ms,
                    auth,
                },
            )
            .boxed(),
        (
            proptest::option::of(session_id()),
            pair_outcome(),
            proptest::option::of(peer()),
            proptest::option::of(auth()),
        )
            .prop_map(|(session, outcome, peer, auth)| ServerMessage::PairResult {
                session,
                outcome,
                peer,
                auth,
            })
            .boxed(),
        (session_id(), signal())
            .prop_map(|(session, signal)| ServerMessage::Signal { session, signal })
            .boxed(),
        (session_id(), resume_token())
            .prop_map(|(session, token)| ServerMessage::SessionToken { session, token })
            .boxed(),
        session_id()
            .prop_map(|session| ServerMessage::Resumed { session })
            .boxed(),
        (session_id(), session_end_reason())
            .prop_map(|(session, reason)| ServerMessage::SessionEnded { session, reason })
            .boxed(),
        (error_code(), short_text())
            .prop_map(|(code, message)| ServerMessage::Error { code, message })
            .boxed(),
        any::<u64>()
            .prop_map(|seq| ServerMessage::Ping { seq })
            .boxed(),
        any::<u64>()
            .prop_map(|seq| ServerMessage::Pong { seq })
            .boxed(),
        proptest::option::of(short_text())
            .prop_map(|reason| ServerMessage::Bye { reason })
            .boxed(),
    ])
}

fn signal() -> impl Strategy<Value = Signal> {
    prop_oneof![
        sdp().prop_map(|sdp| Signal::Offer { sdp }),
        sdp().prop_map(|sdp| Signal::Answer { sdp }),
        (
            candidate(),
            proptest::option::of(short_text()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(|(candidate, sdp_mid, sdp_mline_index)| Signal::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            }),
        Just(Signal::EndOfCandidates),
        auth().prop_map(|payload| Signal::Auth { payload }),
    ]
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    let url = prop_oneof![
        "(stun|stuns|turn|turns):[a-z0-9.-]{1,30}(:[0-9]{1,5})?(\\?transport=(udp|tcp))?",
        any::<String>(),
    ];
    (
        proptest::collection::vec(url, 0..4),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(urls, username, credential)| IceServer {
            urls,
            username,
            credential,
        })
}

fn peer() -> impl Strategy<Value = PeerDevice> {
    (device_id(), device_name()).prop_map(|(device_id, device_name)| PeerDevice {
        device_id,
        device_name,
    })
}

fn pair_outcome() -> impl Strategy<Value = PairOutcome> {
    prop::sample::select(vec![
        PairOutcome::Accepted,
        PairOutcome::Rejected,
        PairOutcome::TimedOut,
        PairOutcome::UnknownCode,
        PairOutcome::CodeExpired,
        PairOutcome::CodeUsed,
        PairOutcome::DesktopOffline,
        PairOutcome::DesktopGone,
        PairOutcome::Cancelled,
    ])
}

fn session_end_reason() -> impl Strategy<Value = SessionEndReason> {
    prop::sample::select(vec![
        SessionEndReason::PeerLeft,
        SessionEndReason::PeerDisconnected,
        SessionEndReason::PeerTimedOut,
        SessionEndReason::Over,
    ])
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::MalformedMessage,
        ErrorCode::UnknownMessageType,
        ErrorCode::FrameTooLarge,
        ErrorCode::BinaryFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HelloRequired,
        ErrorCode::AlreadyRegistered,
        ErrorCode::UnknownSession,
        ErrorCode::NotSessionMember,
        ErrorCode::InvalidState,
        ErrorCode::RateLimited,
        ErrorCode::TooManyAttempts,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ])
}

// Value types: valid by construction, often at their limits.

fn hex128() -> impl Strategy<Value = String> {
    "[0-9a-f]{32}"
}

fn resume_token() -> impl Strategy<Value = ResumeToken> {
    hex128().prop_map(|s| ResumeToken::new(s).expect("hex"))
}

fn session_id() -> impl Strategy<Value = SessionId> {
    hex128().prop_map(|s| SessionId::new(s).expect("hex"))
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| DeviceId::new(s).expect("device id"))
}

fn device_name() -> impl Strategy<Value = DeviceName> {
    let printable = any::<char>().prop_filter("no control characters", |c| !c.is_control());
    proptest::collection::vec(printable, 1..=MAX_DEVICE_NAME_CHARS)
        .prop_map(|chars| DeviceName::new(chars.into_iter().collect::<String>()).expect("name"))
}

fn routing_code() -> impl Strategy<Value = RoutingCode> {
    let alphabet: Vec<char> = ROUTING_ALPHABET.chars().collect();
    proptest::collection::vec(prop::sample::select(alphabet), 4..=16)
        .prop_map(|chars| RoutingCode::new(chars.into_iter().collect::<String>()).expect("code"))
}

fn auth() -> impl Strategy<Value = AuthPayload> {
    let short = "[A-Za-z0-9_-]{1,64}".boxed();
    let long = at_length(
        MAX_AUTH_PAYLOAD_CHARS,
        "",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    );
    prop_oneof![3 => short, 1 => long].prop_map(|s| AuthPayload::new(s).expect("auth"))
}

fn sdp() -> impl Strategy<Value = Sdp> {
    // Real SDP: printable ASCII lines ending in CRLF (each CRLF is 4 bytes once escaped).
    let short = "v=0\r\n([ -~]{0,40}\r\n){0,8}".boxed();
    let long = at_length(
        MAX_SDP_BYTES,
        "v=0\r\n",
        "a=candidate:1 1 udp 9 x 1 typ host\r\n",
    );
    prop_oneof![4 => short, 1 => long].prop_map(|s| Sdp::new(s).expect("sdp"))
}

fn candidate() -> impl Strategy<Value = CandidateLine> {
    let printable = any::<char>().prop_filter("no control characters", |c| !c.is_control());
    let short = proptest::collection::vec(printable, 0..40)
        .prop_map(|chars| format!("candidate:{}", chars.into_iter().collect::<String>()))
        .boxed();
    let long = at_length(MAX_CANDIDATE_BYTES, "candidate:", "1 1 udp 2130706431 é ");
    prop_oneof![3 => short, 1 => long].prop_map(|s| CandidateLine::new(s).expect("candidate"))
}

fn short_text() -> impl Strategy<Value = ShortText> {
    let short = ".{0,40}".boxed();
    let long = (MAX_TEXT_CHARS - 8..=MAX_TEXT_CHARS, any::<char>())
        .prop_map(|(chars, c)| c.to_string().repeat(chars))
        .boxed();
    prop_oneof![3 => short, 1 => long].prop_map(|s| ShortText::new(s).expect("text"))
}

/// `prefix`, then `pattern` repeated and cut so the string is a few bytes under or exactly
/// `max` bytes long (on a character boundary).
fn at_length(max: usize, prefix: &'static str, pattern: &'static str) -> BoxedStrategy<String> {
    let starts: Vec<usize> = pattern.char_indices().map(|(i, _)| i).collect();
    (0..8usize, prop::sample::select(starts))
        .prop_map(move |(under, at)| {
            let rotated = format!("{}{}", &pattern[at..], &pattern[..at]);
            let mut s = prefix.to_owned();
            while s.len() < max {
                s.push_str(&rotated);
            }
            let mut cut = max - under;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s
        })
        .boxed()
}
