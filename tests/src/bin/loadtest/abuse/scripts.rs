//! The scripts abusive connections run: frames of every kind of abuse, each paired with the
//! answer the server must give.

use proxim_protocol::{
    ClientMessage, DeviceId, DeviceName, ErrorCode, PROTOCOL_VERSION, RoutingCode, Sdp, SessionId,
    ShortText, Signal,
};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio_tungstenite::tungstenite::Message;

use super::judge::Expect;
use super::tally::Category;

/// The protocol's frame limit, and the transport's (the server accepts frames up to twice the
/// protocol limit so that it can answer `frame_too_large`; longer ones end the connection).
const MAX_FRAME: usize = proxim_protocol::MAX_FRAME_BYTES;
const TRANSPORT_MAX_FRAME: usize = 2 * MAX_FRAME;

/// One frame of a script.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) frame: Message,
    pub(crate) expect: Expect,
    pub(crate) category: Category,
    /// Send only once every earlier frame was answered.
    pub(crate) wait_for_answers: bool,
}

impl Step {
    pub(crate) fn text(text: impl Into<String>, expect: Expect, category: Category) -> Step {
        Step {
            frame: Message::text(text.into()),
            expect,
            category,
            wait_for_answers: false,
        }
    }

    pub(crate) fn message(message: &ClientMessage, expect: Expect, category: Category) -> Step {
        Step::text(message.encode(), expect, category)
    }
}

pub(crate) enum Script {
    Steps(Vec<Step>),
    /// Two connections: a desktop, and a phone that tries its code too often.
    CodeAttempts,
}

pub(crate) fn pick_script(rng: &mut StdRng) -> Script {
    let roll = rng.random_range(0..100u32);
    match roll {
        0..40 => Script::Steps(mixed(rng)),
        40..52 => Script::Steps(out_of_order(rng)),
        52..64 => Script::Steps(random_codes(rng)),
        64..76 => Script::Steps(flood(rng)),
        76..88 => Script::Steps(oversized(rng)),
        88..93 => Script::Steps(huge(rng)),
        _ => Script::CodeAttempts,
    }
}

pub(crate) fn hello() -> ClientMessage {
    ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        client: ShortText::truncated("proxim-loadtest/0"),
    }
}

pub(crate) fn hello_step() -> Step {
    Step::message(&hello(), Expect::Welcome, Category::Valid)
}

/// `hello`, then 10–30 single bad frames of every kind, sometimes an oversized one last.
fn mixed(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = vec![hello_step()];
    let n = rng.random_range(10..=30);
    for _ in 0..n {
        steps.push(single_bad_frame(rng, true));
    }
    if rng.random_bool(0.2) {
        steps.push(oversized_step(rng));
    }
    steps
}

/// Frames before `hello`, `hello`, then frames that do not fit the state.
fn out_of_order(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..rng.random_range(2..=6) {
        let before = match rng.random_range(0..6) {
            0 => signal(random_session(rng), rng),
            1 => pair_response(random_session(rng)),
            2 => leave(random_session(rng)),
            3 => register_desktop(rng),
            4 => pair_request(random_code(rng), rng),
            _ => ClientMessage::Ping { seq: 1 },
        };
        steps.push(Step::message(
            &before,
            Expect::Error(ErrorCode::HelloRequired),
            Category::OutOfOrder,
        ));
    }
    // Decoding comes first: a bad frame before hello is still a bad frame.
    steps.push(Step::text(
        "{\"type\":",
        Expect::Error(ErrorCode::MalformedMessage),
        Category::Malformed,
    ));
    steps.push(hello_step());
    steps.push(Step::message(
        &hello(),
        Expect::Error(ErrorCode::InvalidState),
        Category::OutOfOrder,
    ));
    for _ in 0..rng.random_range(2..=5) {
        steps.push(unknown_session_step(rng));
    }
    steps.push(Step::message(
        &register_desktop(rng),
        Expect::Registered,
        Category::Valid,
    ));
    steps.push(Step::message(
        &pair_request(random_code(rng), rng),
        Expect::Error(ErrorCode::AlreadyRegistered),
        Category::OutOfOrder,
    ));
    steps.push(Step::message(
        &register_desktop(rng),
        Expect::Error(ErrorCode::AlreadyRegistered),
        Category::OutOfOrder,
    ));
    for _ in 0..rng.random_range(0..=3) {
        steps.push(unknown_session_step(rng));
    }
    if rng.random_bool(0.3) {
        // The version is checked on the first hello only: a second one is out of order.
        let version = rng.random_range(2..=u16::MAX);
        steps.push(Step::text(
            format!(r#"{{"type":"hello","version":{version},"client":"x"}}"#),
            Expect::Error(ErrorCode::InvalidState),
            Category::OutOfOrder,
        ));
    }
    steps
}

/// `hello` (sometimes a bad-version `hello` first, which ends the connection), then pair
/// requests for random codes.
fn random_codes(rng: &mut StdRng) -> Vec<Step> {
    if rng.random_bool(0.1) {
        return vec![Step::text(
            format!(
                r#"{{"type":"hello","version":{},"client":"old"}}"#,
                rng.random_range(2..=999u16)
            ),
            Expect::Error(ErrorCode::UnsupportedVersion),
            Category::BadVersion,
        )];
    }
    let mut steps = vec![hello_step()];
    for _ in 0..rng.random_range(10..=40) {
        steps.push(Step::message(
            &pair_request(random_code(rng), rng),
            Expect::UnknownCode,
            Category::RandomCode,
        ));
    }
    steps
}

/// `hello`, then 250–500 frames as fast as the socket takes them.
fn flood(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = vec![hello_step()];
    for seq in 0..rng.random_range(250..=500u64) {
        let mut step = if rng.random_bool(0.6) {
            Step::message(
                &ClientMessage::Ping { seq },
                Expect::Pong(seq),
                Category::Flood,
            )
        } else {
            single_bad_frame(rng, true)
        };
        step.category = Category::Flood;
        steps.push(step);
    }
    steps
}

/// Sometimes `hello`, a few bad frames, then one frame over 64 KiB that ends the connection.
fn oversized(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = Vec::new();
    if rng.random_bool(0.7) {
        steps.push(hello_step());
        for _ in 0..rng.random_range(0..4) {
            steps.push(single_bad_frame(rng, true));
        }
    }
    steps.push(oversized_step(rng));
    steps
}

/// `hello`, then one frame over the transport limit, sent once `welcome` arrived.
fn huge(rng: &mut StdRng) -> Vec<Step> {
    let size = rng.random_range(TRANSPORT_MAX_FRAME + 1024..=3 * TRANSPORT_MAX_FRAME);
    let frame = if rng.random_bool(0.5) {
        Message::text(padded_json(size))
    } else {
        Message::binary(vec![0xA5u8; size])
    };
    vec![
        hello_step(),
        Step {
            frame,
            expect: Expect::TransportClose,
            category: Category::Huge,
            wait_for_answers: true,
        },
    ]
}

fn oversized_step(rng: &mut StdRng) -> Step {
    let size = rng.random_range(MAX_FRAME + 1..TRANSPORT_MAX_FRAME - 1024);
    let frame = match rng.random_range(0..3) {
        0 => Message::text(padded_json(size)),
        1 => Message::text("x".repeat(size)),
        _ => Message::binary(vec![0x5Au8; size]),
    };
    Step {
        frame,
        expect: Expect::Error(ErrorCode::FrameTooLarge),
        category: Category::Oversized,
        wait_for_answers: false,
    }
}

/// A syntactically valid client message padded to `size` bytes.
fn padded_json(size: usize) -> String {
    let head = r#"{"type":"hello","version":1,"client":""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "a".repeat(pad))
}

/// One small bad frame of a random kind (for a greeted connection when `greeted`).
fn single_bad_frame(rng: &mut StdRng, greeted: bool) -> Step {
    match rng.random_range(0..9) {
        0 | 1 => malformed_step(rng),
        2 => unknown_type_step(rng),
        3 => wrong_direction_step(rng),
        4 => Step {
            frame: Message::binary(vec![rng.random::<u8>(); rng.random_range(0..2048)]),
            expect: Expect::Error(ErrorCode::BinaryFrame),
            category: Category::Binary,
            wait_for_answers: false,
        },
        5 if greeted => unknown_session_step(rng),
        6 if greeted => Step::message(
            &hello(),
            Expect::Error(ErrorCode::InvalidState),
            Category::OutOfOrder,
        ),
        7 if greeted => Step::message(
            &pair_request(random_code(rng), rng),
            Expect::UnknownCode,
            Category::RandomCode,
        ),
        _ => {
            let seq = rng.random::<u32>().into();
            Step::message(
                &ClientMessage::Ping { seq },
                Expect::Pong(seq),
                Category::Valid,
            )
        }
    }
}

fn malformed_step(rng: &mut StdRng) -> Step {
    const FRAMES: &[&str] = &[
        "",
        "not json",
        "{",
        "{\"type\":",
        "[1,2,3]",
        "42",
        "null",
        "\"hello\"",
        "{}",
        "{\"no_type\":true}",
        "{\"type\":42}",
        "{\"type\":null}",
        "{\"type\":\"hello\",\"version\":\"one\",\"client\":\"x\"}",
        "{\"type\":\"hello\",\"version\":1}",
        "{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"seq\":-1}",
        "{\"type\":\"ping\",\"seq\":1,\"extra\":1}",
        "{\"type\":\"signal\",\"session\":\"nothex\",\"signal\":{\"kind\":\"offer\",\"sdp\":\"v=0\"}}",
        "{\"type\":\"signal\",\"session\":\"00000000000000000000000000000000\",\"signal\":{\"kind\":\"bogus\"}}",
        "{\"type\":\"pair_request\",\"code\":\"0OIL\",\"device_id\":\"a\",\"device_name\":\"b\"}",
        "{\"type\":\"register_desktop\",\"device_id\":\"bad id!\",\"device_name\":\"x\"}",
        "{\"type\":\"pair_response\",\"session\":\"00000000000000000000000000000000\",\"accept\":\"yes\"}",
        "{\"type\":\"leave\"}",
        "\u{feff}{\"type\":\"ping\",\"seq\":1}",
        "{\"type\":\"ping\",\"seq\":1}}",
    ];
    let frame = if rng.random_bool(0.15) {
        // Random printable garbage.
        let len = rng.random_range(1..200);
        (0..len)
            .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
            .filter(|c| *c != '{' && *c != '[' && *c != '"' && !c.is_ascii_digit() && *c != '-')
            .collect::<String>()
            + "!"
    } else {
        FRAMES.choose(rng).copied().unwrap_or("{").to_owned()
    };
    Step::text(
        frame,
        Expect::Error(ErrorCode::MalformedMessage),
        Category::Malformed,
    )
}

fn unknown_type_step(rng: &mut StdRng) -> Step {
    const TYPES: &[&str] = &[
        "frobnicate",
        "HELLO",
        "Hello",
        "hello ",
        "admin",
        "shutdown",
        "stats",
        "register",
        "pair",
        "",
    ];
    let kind = if rng.random_bool(0.3) {
        format!("t{:x}", rng.random::<u64>())
    } else {
        TYPES.choose(rng).copied().unwrap_or("x").to_owned()
    };
    Step::text(
        serde_json::json!({ "type": kind, "seq": 1 }).to_string(),
        Expect::Error(ErrorCode::UnknownMessageType),
        Category::UnknownType,
    )
}

/// A message only the server sends, sent by a client.
fn wrong_direction_step(rng: &mut StdRng) -> Step {
    let session = random_session(rng);
    let frame = match rng.random_range(0..7) {
        0 => serde_json::json!({
            "type": "welcome", "version": 1, "connection_id": session, "ice_servers": [],
            "heartbeat_interval_ms": 15000, "heartbeat_timeout_ms": 45000,
        }),
        1 => serde_json::json!({ "type": "registered", "code": "K7P2QX" }),
        2 => serde_json::json!({ "type": "pair_pending", "session": session, "expires_in_ms": 1 }),
        3 => serde_json::json!({
            "type": "pair_prompt", "session": session, "expires_in_ms": 60000,
            "peer": { "device_id": "evil", "device_name": "Evil" },
        }),
        4 => serde_json::json!({
            "type": "pair_result", "session": session, "outcome": "accepted",
            "peer": { "device_id": "evil", "device_name": "Evil" },
        }),
        5 => serde_json::json!({
            "type": "session_ended", "session": session, "reason": "peer_left",
        }),
        _ => serde_json::json!({ "type": "error", "code": "internal", "message": "gotcha" }),
    };
    Step::text(
        frame.to_string(),
        Expect::Error(ErrorCode::UnknownMessageType),
        Category::WrongDirection,
    )
}

fn unknown_session_step(rng: &mut StdRng) -> Step {
    let session = random_session(rng);
    let message = match rng.random_range(0..3) {
        0 => signal(session, rng),
        1 => pair_response(session),
        _ => leave(session),
    };
    Step::message(
        &message,
        Expect::Error(ErrorCode::UnknownSession),
        Category::OutOfOrder,
    )
}

fn signal(session: SessionId, rng: &mut StdRng) -> ClientMessage {
    let signal = match rng.random_range(0..3) {
        0 => Signal::EndOfCandidates,
        1 => Signal::Offer {
            sdp: Sdp::new(format!("v=0\r\ns={}\r\n", rng.random::<u32>())).expect("an SDP"),
        },
        _ => Signal::Answer {
            sdp: Sdp::new("v=0\r\ns=-\r\n").expect("an SDP"),
        },
    };
    ClientMessage::Signal { session, signal }
}

fn pair_response(session: SessionId) -> ClientMessage {
    ClientMessage::PairResponse {
        session,
        accept: true,
        auth: None,
    }
}

fn leave(session: SessionId) -> ClientMessage {
    ClientMessage::Leave { session }
}

pub(crate) fn register_desktop(rng: &mut StdRng) -> ClientMessage {
    ClientMessage::RegisterDesktop {
        device_id: device_id(rng, "desk"),
        device_name: device_name("Abusive desktop"),
    }
}

pub(crate) fn pair_request(code: RoutingCode, rng: &mut StdRng) -> ClientMessage {
    ClientMessage::PairRequest {
        code,
        device_id: device_id(rng, "phone"),
        device_name: device_name("Abusive phone"),
        auth: None,
    }
}

fn random_session(rng: &mut StdRng) -> SessionId {
    SessionId::new(format!("{:032x}", rng.random::<u128>())).expect("32 hex digits")
}

/// A random 6-character code, the server's default length (a live code is hit with odds of
/// about one in 30^6 per request; `judge` accepts `pair_pending` then).
fn random_code(rng: &mut StdRng) -> RoutingCode {
    let alphabet = proxim_protocol::ROUTING_ALPHABET.as_bytes();
    let code: String = (0..6)
        .map(|_| char::from(*alphabet.choose(rng).unwrap_or(&b'K')))
        .collect();
    RoutingCode::new(code).expect("6 characters of the alphabet")
}

fn device_id(rng: &mut StdRng, prefix: &str) -> DeviceId {
    DeviceId::new(format!("{prefix}-{:016x}", rng.random::<u64>())).expect("a valid device id")
}

fn device_name(name: &str) -> DeviceName {
    DeviceName::new(name).expect("a valid device name")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_script_frame_is_judged_by_the_protocol_the_way_the_script_expects() {
        // Frames expected to fail decoding must fail with the expected code.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let Script::Steps(steps) = pick_script(&mut rng) else {
                continue;
            };
            for step in steps {
                let Message::Text(text) = &step.frame else {
                    continue;
                };
                let decoded = ClientMessage::decode(text.as_str());
                match step.expect {
                    Expect::Error(
                        code @ (ErrorCode::MalformedMessage
                        | ErrorCode::UnknownMessageType
                        | ErrorCode::FrameTooLarge),
                    ) if text.len() <= MAX_FRAME => {
                        assert_eq!(decoded.unwrap_err().code(), code, "{text}");
                    }
                    Expect::Error(ErrorCode::FrameTooLarge) | Expect::TransportClose => {
                        assert!(text.len() > MAX_FRAME);
                    }
                    _ => assert!(decoded.is_ok(), "{text}: {decoded:?}"),
                }
            }
        }
    }
}
