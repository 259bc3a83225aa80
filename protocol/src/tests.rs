//! Golden tests: the exact JSON of every message is pinned, and decoding it gives the message back.

use super::*;

const SESSION: &str = "0123456789abcdef0123456789abcdef";
const CONN: &str = "fedcba9876543210fedcba9876543210";

fn session() -> SessionId {
    SessionId::new(SESSION).unwrap()
}

fn peer() -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Ana's phone").unwrap(),
    }
}

fn auth() -> AuthPayload {
    AuthPayload::new("c2VjcmV0LWZyZWU").unwrap()
}

fn client_golden(message: ClientMessage, json: &str) {
    assert_eq!(message.encode(), json, "encoding of {}", message.kind());
    assert_eq!(
        ClientMessage::decode(json).unwrap(),
        message,
        "decoding {json}"
    );
}

fn server_golden(message: ServerMessage, json: &str) {
    assert_eq!(message.encode(), json, "encoding of {}", message.kind());
    assert_eq!(
        ServerMessage::decode(json).unwrap(),
        message,
        "decoding {json}"
    );
}

#[test]
fn golden_client_messages() {
    client_golden(
        ClientMessage::Hello {
            version: 1,
            client: ShortText::new("proxim-core/0.1.0").unwrap(),
        },
        r#"{"type":"hello","version":1,"client":"proxim-core/0.1.0"}"#,
    );
    client_golden(
        ClientMessage::RegisterDesktop {
            device_id: DeviceId::new("desk-1").unwrap(),
            device_name: DeviceName::new("Workstation").unwrap(),
        },
        r#"{"type":"register_desktop","device_id":"desk-1","device_name":"Workstation"}"#,
    );
    client_golden(
        ClientMessage::PairRequest {
            code: RoutingCode::new("K7P2QX").unwrap(),
            device_id: DeviceId::new("phone-1").unwrap(),
            device_name: DeviceName::new("Ana's phone").unwrap(),
            auth: Some(auth()),
        },
        r#"{"type":"pair_request","code":"K7P2QX","device_id":"phone-1","device_name":"Ana's phone","auth":"c2VjcmV0LWZyZWU"}"#,
    );
    client_golden(
        ClientMessage::PairRequest {
            code: RoutingCode::new("K7P2QX").unwrap(),
            device_id: DeviceId::new("phone-1").unwrap(),
            device_name: DeviceName::new("Ana's phone").unwrap(),
            auth: None,
        },
        r#"{"type":"pair_request","code":"K7P2QX","device_id":"phone-1","device_name":"Ana's phone"}"#,
    );
    client_golden(
        ClientMessage::PairResponse {
            session: session(),
            accept: true,
            auth: None,
        },
        r#"{"type":"pair_response","session":"0123456789abcdef0123456789abcdef","accept":true}"#,
    );
    client_golden(
        ClientMessage::Signal {
            session: session(),
            signal: Signal::Offer {
                sdp: Sdp::new("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n").unwrap(),
            },
        },
        r#"{"type":"signal","session":"0123456789abcdef0123456789abcdef","signal":{"kind":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}}"#,
    );
    client_golden(
        ClientMessage::Leave { session: session() },
        r#"{"type":"leave","session":"0123456789abcdef0123456789abcdef"}"#,
    );
    client_golden(
        ClientMessage::ConnectRequest {
            desktop: DeviceId::new("desk-1").unwrap(),
            device_id: DeviceId::new("phone-1").unwrap(),
            device_name: DeviceName::new("Pixel").unwrap(),
            auth: Some(auth()),
        },
        r#"{"type":"connect_request","desktop":"desk-1","device_id":"phone-1","device_name":"Pixel","auth":"c2VjcmV0LWZyZWU"}"#,
    );
    client_golden(ClientMessage::RenewCode, r#"{"type":"renew_code"}"#);
    client_golden(
        ClientMessage::RefreshIceServers,
        r#"{"type":"refresh_ice_servers"}"#,
    );
    client_golden(ClientMessage::Ping { seq: 7 }, r#"{"type":"ping","seq":7}"#);
    client_golden(ClientMessage::Pong { seq: 8 }, r#"{"type":"pong","seq":8}"#);
    client_golden(
        ClientMessage::Bye {
            reason: Some(ShortText::new("shutting down").unwrap()),
        },
        r#"{"type":"bye","reason":"shutting down"}"#,
    );
    client_golden(ClientMessage::Bye { reason: None }, r#"{"type":"bye"}"#);
    client_golden(
        ClientMessage::ConnectionReport {
            session: SessionId::new("0123456789abcdef0123456789abcdef").unwrap(),
            outcome: ConnectionOutcome::Connected,
            report: ConnectionReport {
                path: Some(PathKind::Relay),
                relay_protocol: Some(RelayProtocol::Tcp),
                time_to_connect_ms: Some(412),
                rtt_ms: Some(31),
                ..ConnectionReport::default()
            },
        },
        r#"{"type":"connection_report","session":"0123456789abcdef0123456789abcdef","outcome":"connected","report":{"path":"relay","relay_protocol":"tcp","time_to_connect_ms":412,"rtt_ms":31}}"#,
    );
    client_golden(
        ClientMessage::ConnectionReport {
            session: SessionId::new("0123456789abcdef0123456789abcdef").unwrap(),
            outcome: ConnectionOutcome::Failed,
            report: ConnectionReport {
                failure: Some(ReportToken::new("ice_failed").unwrap()),
                ..ConnectionReport::default()
            },
        },
        r#"{"type":"connection_report","session":"0123456789abcdef0123456789abcdef","outcome":"failed","report":{"failure":"ice_failed"}}"#,
    );
}

#[test]
fn report_tokens_are_short_lowercase_words() {
    for good in ["ice_failed", "timeout", "a", "x0_9"] {
        assert!(ReportToken::new(good).is_ok(), "{good}");
    }
    for bad in ["", "ICE", "ice-failed", "pass word", "ä", &"a".repeat(33)] {
        assert!(ReportToken::new(bad).is_err(), "{bad:?}");
    }
    let smuggled = r#"{"type":"connection_report","session":"0123456789abcdef0123456789abcdef","outcome":"failed","report":{"failure":"code=ABCD-1234"}}"#;
    assert!(ClientMessage::decode(smuggled).is_err());
    let unknown_field = r#"{"type":"connection_report","session":"0123456789abcdef0123456789abcdef","outcome":"closed","report":{"device_name":"x"}}"#;
    assert!(ClientMessage::decode(unknown_field).is_err());
}

#[test]
fn golden_server_messages() {
    server_golden(
        ServerMessage::Welcome {
            version: 1,
            connection_id: ConnectionId::new(CONN).unwrap(),
            ice_servers: vec![
                IceServer {
                    urls: vec!["stun:198.18.0.1:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:198.18.0.1:3478?transport=udp".into()],
                    username: Some("1700000000:abc".into()),
                    credential: Some("pw".into()),
                },
            ],
            heartbeat_interval_ms: 15000,
            heartbeat_timeout_ms: 45000,
        },
        r#"{"type":"welcome","version":1,"connection_id":"fedcba9876543210fedcba9876543210","ice_servers":[{"urls":["stun:198.18.0.1:3478"]},{"urls":["turn:198.18.0.1:3478?transport=udp"],"username":"1700000000:abc","credential":"pw"}],"heartbeat_interval_ms":15000,"heartbeat_timeout_ms":45000}"#,
    );
    server_golden(
        ServerMessage::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["turn:198.18.0.1:3478?transport=udp".into()],
                username: Some("1700003600:abc".into()),
                credential: Some("pw2".into()),
            }],
        },
        r#"{"type":"ice_servers","ice_servers":[{"urls":["turn:198.18.0.1:3478?transport=udp"],"username":"1700003600:abc","credential":"pw2"}]}"#,
    );
    server_golden(
        ServerMessage::PeerRestarted { session: session() },
        r#"{"type":"peer_restarted","session":"0123456789abcdef0123456789abcdef"}"#,
    );
    server_golden(
        ServerMessage::Registered {
            code: RoutingCode::new("K7P2QX").unwrap(),
            expires_in_ms: None,
        },
        r#"{"type":"registered","code":"K7P2QX"}"#,
    );
    server_golden(
        ServerMessage::Registered {
            code: RoutingCode::new("K7P2QX").unwrap(),
            expires_in_ms: Some(600_000),
        },
        r#"{"type":"registered","code":"K7P2QX","expires_in_ms":600000}"#,
    );
    server_golden(
        ServerMessage::PairPending {
            session: session(),
            expires_in_ms: 60000,
        },
        r#"{"type":"pair_pending","session":"0123456789abcdef0123456789abcdef","expires_in_ms":60000}"#,
    );
    server_golden(
        ServerMessage::PairPrompt {
            session: session(),
            peer: peer(),
            expires_in_ms: 60000,
            auth: Some(auth()),
        },
        r#"{"type":"pair_prompt","session":"0123456789abcdef0123456789abcdef","peer":{"device_id":"phone-1","device_name":"Ana's phone"},"expires_in_ms":60000,"auth":"c2VjcmV0LWZyZWU"}"#,
    );
    server_golden(
        ServerMessage::PairResult {
            session: Some(session()),
            outcome: PairOutcome::Accepted,
            peer: Some(peer()),
            auth: None,
        },
        r#"{"type":"pair_result","session":"0123456789abcdef0123456789abcdef","outcome":"accepted","peer":{"device_id":"phone-1","device_name":"Ana's phone"}}"#,
    );
    server_golden(
        ServerMessage::PairResult {
            session: None,
            outcome: PairOutcome::UnknownCode,
            peer: None,
            auth: None,
        },
        r#"{"type":"pair_result","outcome":"unknown_code"}"#,
    );
    for (outcome, name) in [
        (PairOutcome::Rejected, "rejected"),
        (PairOutcome::TimedOut, "timed_out"),
        (PairOutcome::DesktopGone, "desktop_gone"),
        (PairOutcome::Cancelled, "cancelled"),
        (PairOutcome::CodeExpired, "code_expired"),
        (PairOutcome::CodeUsed, "code_used"),
        (PairOutcome::DesktopOffline, "desktop_offline"),
    ] {
        server_golden(
            ServerMessage::PairResult {
                session: Some(session()),
                outcome,
                peer: None,
                auth: None,
            },
            &format!(r#"{{"type":"pair_result","session":"{SESSION}","outcome":"{name}"}}"#),
        );
    }
    server_golden(
        ServerMessage::Signal {
            session: session(),
            signal: Signal::Candidate {
                candidate: CandidateLine::new(
                    "candidate:1 1 udp 2130706431 198.18.0.2 50000 typ host",
                )
                .unwrap(),
                sdp_mid: Some(ShortText::new("0").unwrap()),
                sdp_mline_index: Some(0),
            },
        },
        r#"{"type":"signal","session":"0123456789abcdef0123456789abcdef","signal":{"kind":"candidate","candidate":"candidate:1 1 udp 2130706431 198.18.0.2 50000 typ host","sdp_mid":"0","sdp_mline_index":0}}"#,
    );
    server_golden(
        ServerMessage::Signal {
            session: session(),
            signal: Signal::Answer {
                sdp: Sdp::new("v=0\r\n").unwrap(),
            },
        },
        r#"{"type":"signal","session":"0123456789abcdef0123456789abcdef","signal":{"kind":"answer","sdp":"v=0\r\n"}}"#,
    );
    server_golden(
        ServerMessage::Signal {
            session: session(),
            signal: Signal::EndOfCandidates,
        },
        r#"{"type":"signal","session":"0123456789abcdef0123456789abcdef","signal":{"kind":"end_of_candidates"}}"#,
    );
    server_golden(
        ServerMessage::Signal {
            session: session(),
            signal: Signal::Auth { payload: auth() },
        },
        r#"{"type":"signal","session":"0123456789abcdef0123456789abcdef","signal":{"kind":"auth","payload":"c2VjcmV0LWZyZWU"}}"#,
    );
    for (reason, name) in [
        (SessionEndReason::PeerLeft, "peer_left"),
        (SessionEndReason::PeerDisconnected, "peer_disconnected"),
        (SessionEndReason::PeerTimedOut, "peer_timed_out"),
    ] {
        server_golden(
            ServerMessage::SessionEnded {
                session: session(),
                reason,
            },
            &format!(r#"{{"type":"session_ended","session":"{SESSION}","reason":"{name}"}}"#),
        );
    }
    server_golden(
        ServerMessage::error(ErrorCode::NotSessionMember, "not yours"),
        r#"{"type":"error","code":"not_session_member","message":"not yours"}"#,
    );
    server_golden(ServerMessage::Ping { seq: 1 }, r#"{"type":"ping","seq":1}"#);
    server_golden(ServerMessage::Pong { seq: 2 }, r#"{"type":"pong","seq":2}"#);
    server_golden(
        ServerMessage::Bye {
            reason: Some(ShortText::new("heartbeat timeout").unwrap()),
        },
        r#"{"type":"bye","reason":"heartbeat timeout"}"#,
    );
}

#[test]
fn every_error_code_round_trips() {
    let codes = [
        (ErrorCode::MalformedMessage, "malformed_message"),
        (ErrorCode::UnknownMessageType, "unknown_message_type"),
        (ErrorCode::FrameTooLarge, "frame_too_large"),
        (ErrorCode::BinaryFrame, "binary_frame"),
        (ErrorCode::UnsupportedVersion, "unsupported_version"),
        (ErrorCode::HelloRequired, "hello_required"),
        (ErrorCode::AlreadyRegistered, "already_registered"),
        (ErrorCode::UnknownSession, "unknown_session"),
        (ErrorCode::NotSessionMember, "not_session_member"),
        (ErrorCode::InvalidState, "invalid_state"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::TooManyAttempts, "too_many_attempts"),
        (ErrorCode::Overloaded, "overloaded"),
        (ErrorCode::Internal, "internal"),
    ];
    for (code, name) in codes {
        server_golden(
            ServerMessage::error(code, "x"),
            &format!(r#"{{"type":"error","code":"{name}","message":"x"}}"#),
        );
    }
}

#[test]
fn unknown_error_code_from_a_newer_server_decodes() {
    let message =
        ServerMessage::decode(r#"{"type":"error","code":"brand_new","message":"m"}"#).unwrap();
    assert!(matches!(
        message,
        ServerMessage::Error {
            code: ErrorCode::Unknown,
            ..
        }
    ));
}

#[test]
fn malformed_frames_are_typed_errors() {
    assert!(matches!(
        ClientMessage::decode("{not json"),
        Err(DecodeError::NotJson(_))
    ));
    assert!(matches!(
        ClientMessage::decode("[1,2]"),
        Err(DecodeError::NotJson(_))
    ));
    assert_eq!(
        ClientMessage::decode(r#"{"seq":1}"#),
        Err(DecodeError::MissingType)
    );
    assert_eq!(
        ClientMessage::decode(r#"{"type":"launch_missiles"}"#),
        Err(DecodeError::UnknownType("launch_missiles".into()))
    );
    // A server-only message sent by a client is unknown in that direction.
    assert_eq!(
        ClientMessage::decode(r#"{"type":"welcome"}"#)
            .unwrap_err()
            .code(),
        ErrorCode::UnknownMessageType
    );
    let invalid = ClientMessage::decode(r#"{"type":"ping","seq":"x"}"#).unwrap_err();
    assert!(matches!(&invalid, DecodeError::Invalid { kind, .. } if kind == "ping"));
    assert_eq!(invalid.code(), ErrorCode::MalformedMessage);
    // Unknown fields are refused: typos do not pass silently.
    assert!(matches!(
        ClientMessage::decode(r#"{"type":"ping","seq":1,"sneaky":true}"#),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn value_types_are_validated_while_decoding() {
    // Session ids must be 128-bit hex.
    let short = r#"{"type":"leave","session":"abc"}"#;
    assert!(matches!(
        ClientMessage::decode(short),
        Err(DecodeError::Invalid { .. })
    ));
    // Codes outside the alphabet are refused.
    let bad_code = r#"{"type":"pair_request","code":"ABC0","device_id":"p","device_name":"n"}"#;
    assert!(matches!(
        ClientMessage::decode(bad_code),
        Err(DecodeError::Invalid { .. })
    ));
    // Control characters in names are refused.
    let bad_name = r#"{"type":"register_desktop","device_id":"d","device_name":"a\u0007b"}"#;
    assert!(matches!(
        ClientMessage::decode(bad_name),
        Err(DecodeError::Invalid { .. })
    ));
    // Candidates must be candidate lines.
    let bad_candidate = format!(
        r#"{{"type":"signal","session":"{SESSION}","signal":{{"kind":"candidate","candidate":"rm -rf"}}}}"#
    );
    assert!(matches!(
        ClientMessage::decode(&bad_candidate),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn decode_errors_are_short_single_lines() {
    // Found by the mutation test: serde quotes the offending value, which made error texts of
    // 64 KiB, and unknown names carried raw newlines into the log line.
    let long = format!(r#"{{"type":"ping","seq":"{}"}}"#, "x".repeat(60_000));
    let forged = r#"{"type":"ping","seq":1,"x\n2026-01-01 ERROR forged":1}"#;
    let unknown = r#"{"type":"\u001b[2Jping\n"}"#;
    for frame in [long.as_str(), forged, unknown] {
        let text = ClientMessage::decode(frame).unwrap_err().to_string();
        assert!(text.chars().count() <= MAX_TEXT_CHARS + 64, "{text}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    assert_eq!(
        ClientMessage::decode(unknown),
        Err(DecodeError::UnknownType(r"\u{1b}[2Jping\n".into()))
    );
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let big = format!(
        r#"{{"type":"bye","reason":"{}"}}"#,
        "x".repeat(MAX_FRAME_BYTES)
    );
    assert_eq!(
        ClientMessage::decode(&big),
        Err(DecodeError::TooLarge {
            size: big.len(),
            max: MAX_FRAME_BYTES
        })
    );
}

#[test]
fn typed_codes_are_normalized() {
    assert_eq!(
        RoutingCode::parse_typed("k7p2-qx").unwrap().as_str(),
        "K7P2QX"
    );
    assert_eq!(
        RoutingCode::parse_typed(" K7P 2QX ").unwrap().as_str(),
        "K7P2QX"
    );
    assert!(RoutingCode::parse_typed("K7").is_err());
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let server = IceServer {
        urls: vec!["turn:h".into()],
        username: Some("u".into()),
        credential: Some("hunter2".into()),
    };
    assert!(!format!("{server:?}").contains("hunter2"));
    let code = RoutingCode::new("K7P2QX").unwrap();
    assert!(!format!("{code:?}").contains("K7P2QX"));
    let request = ClientMessage::PairRequest {
        code,
        device_id: DeviceId::new("p").unwrap(),
        device_name: DeviceName::new("n").unwrap(),
        auth: Some(auth()),
    };
    let debug = format!("{request:?}");
    assert!(!debug.contains("K7P2QX"));
    assert!(!debug.contains("c2VjcmV0LWZyZWU"));
}

#[test]
fn short_text_truncates_on_char_boundaries() {
    let long = "é".repeat(MAX_TEXT_CHARS + 10);
    let text = ShortText::truncated(long);
    assert_eq!(text.as_str().chars().count(), MAX_TEXT_CHARS);
}
