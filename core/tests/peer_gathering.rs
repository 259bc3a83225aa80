//! What a peer trickles over signaling: the offer, host candidates, server-reflexive
//! candidates from a (fake, loopback) STUN server, then end-of-candidates.

mod peer_common;

use std::time::Duration;

use peer_common::{config, within};
use proxim_core::peer::{PeerConnection, PeerError, PeerRole};
use proxim_core::{LinkEvent, SignalLink};
use proxim_protocol::{IceServer, Signal};
use proxim_testkit::init_tracing;
use rtc::stun::message::{BINDING_SUCCESS, Message};
use rtc::stun::xoraddr::XorMappedAddress;
use tokio::sync::mpsc;

/// Answer one Binding request with a made-up mapped address (198.18.0.9:40000).
async fn fake_stun_server(socket: tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).await.expect("fake STUN server");
    let mut request = Message {
        raw: buf[..n].to_vec(),
        ..Message::default()
    };
    request.decode().expect("fake STUN server");
    let mut answer = Message::new();
    answer
        .build(&[
            Box::new(request.transaction_id),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: "198.18.0.9".parse().expect("fake STUN server"),
                port: 40000,
            }),
        ])
        .expect("fake STUN server");
    socket
        .send_to(&answer.raw, from)
        .await
        .expect("fake STUN server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_then_srflx_candidates_then_end_of_candidates() {
    init_tracing();
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // By name: exercises the asynchronous resolution path.
    let stun_url = format!("stun:localhost:{}", stun.local_addr().unwrap().port());
    let server = tokio::spawn(fake_stun_server(stun));

    let (outgoing, mut sent) = mpsc::channel(64);
    let (incoming_tx, incoming) = mpsc::channel(64);
    let link = SignalLink { outgoing, incoming };
    let mut offerer = config(
        PeerRole::Offerer,
        vec![IceServer {
            urls: vec![stun_url, "turn:198.18.0.1:3478".to_owned()],
            username: Some("u".into()),
            credential: Some("p".into()),
        }],
    );
    offerer.connect_timeout = Duration::from_secs(5);
    let peer = tokio::spawn(PeerConnection::establish(offerer, link));

    let mut kinds = Vec::new();
    let mut srflx = None;
    loop {
        let signal = within("signal", sent.recv()).await.expect("link open");
        match &signal {
            Signal::Offer { sdp } => {
                // Candidates are trickled, not listed in the offer.
                assert!(!sdp.as_str().contains("a=candidate"), "{}", sdp.as_str());
                assert!(sdp.as_str().contains("a=ice-options:trickle"));
                kinds.push("offer");
            }
            Signal::Candidate { candidate, .. } => {
                let line = candidate.as_str();
                if line.contains("typ srflx") {
                    srflx = Some(line.to_owned());
                    kinds.push("srflx");
                } else {
                    assert!(line.contains("typ host"), "{line}");
                    kinds.push("host");
                }
            }
            Signal::EndOfCandidates => {
                kinds.push("end");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    within("stun server", server).await.unwrap();
    assert_eq!(kinds, ["offer", "host", "srflx", "end"]);
    let srflx = srflx.unwrap();
    assert!(
        srflx.contains("198.18.0.9 40000 typ srflx raddr 127.0.0.1"),
        "{srflx}"
    );

    // Nobody answers: the peer leaves, and establish says so.
    incoming_tx
        .send(LinkEvent::Ended(
            proxim_protocol::SessionEndReason::PeerLeft,
        ))
        .await
        .unwrap();
    let result = within("establish", peer).await.unwrap();
    assert!(matches!(result, Err(PeerError::PeerLeft)), "{result:?}");
}

/// Answer Binding requests as a STUN server behind an IPv6 "NAT" would: the sender's port on
/// another address (2001:2::9), until the test ends. (An answer equal to the host address
/// would be a redundant candidate, which ICE drops.)
async fn echo_stun_server(socket: tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let mut request = Message {
            raw: buf[..n].to_vec(),
            ..Message::default()
        };
        if request.decode().is_err() {
            continue;
        }
        let mut answer = Message::new();
        let built = answer.build(&[
            Box::new(request.transaction_id),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: "2001:2::9".parse().expect("an IPv6 address"),
                port: from.port(),
            }),
        ]);
        if built.is_ok() {
            let _ = socket.send_to(&answer.raw, from).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_host_and_server_reflexive_candidates_connect() {
    init_tracing();
    let stun = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let stun_url = format!("stun:[::1]:{}", stun.local_addr().unwrap().port());
    let server = tokio::spawn(echo_stun_server(stun));
    let servers = vec![IceServer {
        urls: vec![stun_url],
        username: None,
        credential: None,
    }];
    let v6 = |role| {
        let mut c = config(role, servers.clone());
        c.local_ips = Some(vec![std::net::Ipv6Addr::LOCALHOST.into()]);
        c
    };

    // The offerer's trickle: a host and a server-reflexive candidate, both IPv6.
    let (outgoing, mut sent) = mpsc::channel(64);
    let (_incoming_tx, incoming) = mpsc::channel(64);
    let probe = tokio::spawn(PeerConnection::establish(
        v6(PeerRole::Offerer),
        SignalLink { outgoing, incoming },
    ));
    let mut lines = Vec::new();
    loop {
        match within("signal", sent.recv()).await.expect("link open") {
            Signal::Candidate { candidate, .. } => lines.push(candidate.as_str().to_owned()),
            Signal::EndOfCandidates => break,
            _ => {}
        }
    }
    probe.abort();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("::1") && l.contains("typ host")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("typ srflx") && l.contains("raddr ::1")),
        "{lines:?}"
    );

    // Two IPv6-only peers connect over ::1.
    let (a, b, _) = peer_common::connect_with(v6(PeerRole::Offerer), v6(PeerRole::Answerer))
        .await
        .expect("IPv6 peers connect");
    let stats = within("stats", a.connection.stats()).await.unwrap();
    assert!(stats.local.address.is_ipv6(), "{stats:?}");
    assert!(stats.remote.address.is_ipv6(), "{stats:?}");
    a.connection.close().await;
    b.connection.close().await;
    server.abort();
}
