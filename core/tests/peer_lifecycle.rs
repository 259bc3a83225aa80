//! Two peers over loopback: establish timing, silent STUN servers, back-pressure, close,
//! the peer leaving before connecting.

mod peer_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peer_common::{config, connect, connect_with, tapped_link, within};
use proxim_core::SignalLink;
use proxim_core::peer::{
    ConnectionEvent, ConnectionState, Payload, PeerConnection, PeerError, PeerRole,
    RECV_QUEUE_BYTES, SEND_HIGH_WATER,
};
use proxim_protocol::IceServer;
use proxim_testkit::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn establish_time_over_loopback() {
    init_tracing();
    let mut times = Vec::new();
    for _ in 0..20 {
        let (a, b, elapsed) = connect_with(
            config(PeerRole::Offerer, vec![]),
            config(PeerRole::Answerer, vec![]),
        )
        .await
        .expect("connect");
        times.push(elapsed);
        a.connection.close().await;
        b.connection.close().await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "establish over loopback (offer to channel open, 20 runs): p50 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stun_server_does_not_delay_connecting() {
    init_tracing();
    // A bound socket that never answers, and a port nobody listens on.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let servers = vec![IceServer {
        urls: vec![
            format!("stun:{}", silent.local_addr().unwrap()),
            "stun:127.0.0.1:9".to_owned(),
        ],
        username: None,
        credential: None,
    }];
    let offerer = config(PeerRole::Offerer, servers.clone());
    let stun_timeout = offerer.stun_timeout;
    let (a, b, elapsed) = connect_with(offerer, config(PeerRole::Answerer, servers))
        .await
        .expect("connect despite a silent STUN server");
    println!(
        "establish with a silent STUN server: {:.1} ms",
        elapsed.as_secs_f64() * 1000.0
    );
    assert!(
        elapsed < stun_timeout,
        "took {elapsed:?}, STUN timeout is {stun_timeout:?}"
    );
    // The STUN request did go out to the silent server.
    silent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = silent
        .recv_from(&mut buf)
        .expect("a STUN request reached the server");
    assert!(n >= 20 && buf[4..8] == [0x21, 0x12, 0xA4, 0x42], "not STUN");
    a.connection.close().await;
    b.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_waits_for_a_slow_receiver_and_everything_arrives() {
    init_tracing();
    let (a, mut b) = connect().await;
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let max_buffered = Arc::new(AtomicUsize::new(0));
    let sender = a.channel.sender();
    let (sent2, max2) = (sent.clone(), max_buffered.clone());
    let started = Instant::now();
    let send = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0xA5u8; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            sender.send(Payload::Binary(chunk.clone())).await.unwrap();
            sent2.fetch_add(CHUNK, Ordering::SeqCst);
            max2.fetch_max(sender.buffered_amount(), Ordering::SeqCst);
        }
    });

    // Slow phase: read 4 MiB at ~1 message per 2 ms, then look at how far the sender got.
    let mut received = 0usize;
    for _ in 0..64 {
        let m = within("recv", b.channel.recv()).await.expect("message");
        received += m.len();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ahead = sent.load(Ordering::SeqCst) - received;
    // What may legitimately sit between the two apps: the sender's high-water mark, the SCTP
    // window in flight (1 MiB), the receiver's queue and what it decoded past a full queue
    // (at most one more window). An unbounded sender would be ~60 MiB ahead.
    let bound = SEND_HIGH_WATER + 2 * 1024 * 1024 + RECV_QUEUE_BYTES + 4 * 1024 * 1024;
    println!(
        "slow phase: received {} MiB, sender {} MiB ahead (bound {} MiB), max buffered {} KiB",
        received >> 20,
        ahead >> 20,
        bound >> 20,
        max_buffered.load(Ordering::SeqCst) >> 10
    );
    assert!(
        ahead <= bound,
        "sender ran {ahead} bytes ahead of a slow receiver"
    );
    assert!(
        !send.is_finished(),
        "64 MiB were accepted while the receiver read 4 MiB"
    );

    // Fast phase: drain everything.
    while received < TOTAL {
        match within("recv", b.channel.recv()).await {
            Some(Payload::Binary(m)) => {
                assert!(m.iter().all(|&x| x == 0xA5));
                received += m.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    within("sender", send).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(received, TOTAL);
    assert!(max_buffered.load(Ordering::SeqCst) <= SEND_HIGH_WATER + CHUNK + 64 * 2);
    println!("64 MiB with a slow start: {secs:.2} s");
    a.connection.close().await;
    b.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_one_side_is_seen_by_the_other() {
    init_tracing();
    let (a, mut b) = connect().await;
    a.channel.send(Payload::Text("bye".into())).await.unwrap();
    assert_eq!(
        within("recv", b.channel.recv()).await,
        Some(Payload::Text("bye".into()))
    );
    let closed_at = Instant::now();
    within("close", a.connection.close()).await;
    within("close again", a.connection.close()).await;
    assert_eq!(a.connection.state(), ConnectionState::Closed);
    assert!(matches!(
        a.channel.send(Payload::Text("late".into())).await,
        Err(PeerError::ChannelClosed | PeerError::Closed)
    ));
    // The other side: its channel ends and the connection reports the end.
    assert_eq!(within("channel end", b.channel.recv()).await, None);
    let mut saw_closed_state = false;
    let reason = loop {
        match within("events", b.events.next()).await {
            Some(ConnectionEvent::Closed { reason, .. }) => break reason,
            Some(ConnectionEvent::StateChanged { new, .. }) => {
                saw_closed_state |= new == ConnectionState::Closed;
            }
            Some(_) => continue,
            None => panic!("events ended without Closed"),
        }
    };
    let seen_after = closed_at.elapsed();
    println!("remote saw the close after {seen_after:?}: {reason}");
    assert!(saw_closed_state);
    // The goodbye (SCTP ABORT, DTLS close_notify) arrives at once; not the 5 s ICE timeout.
    assert!(seen_after < Duration::from_secs(2), "{seen_after:?}");
    assert!(within("events end", b.events.next()).await.is_none());
    b.connection.close().await;
    b.connection.close().await;
    assert_eq!(b.connection.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_driver() {
    init_tracing();
    let (a, mut b) = connect().await;
    let dropped_at = Instant::now();
    drop(a);
    let reason = loop {
        match within("events", b.events.next()).await {
            Some(ConnectionEvent::Closed { reason, .. }) => break reason,
            Some(_) => continue,
            None => panic!("events ended without Closed"),
        }
    };
    println!(
        "remote saw the drop after {:?}: {reason}",
        dropped_at.elapsed()
    );
    assert!(dropped_at.elapsed() < Duration::from_secs(2));
    assert_eq!(within("channel end", b.channel.recv()).await, None);
    assert_eq!(b.connection.state(), ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_leaving_before_connecting_fails_quickly() {
    init_tracing();
    let (a, b) = SignalLink::pair();
    // The answerer is gone: its link end is dropped, so the offerer sees it leave.
    drop(b);
    let started = Instant::now();
    let result = within(
        "establish",
        PeerConnection::establish(config(PeerRole::Offerer, vec![]), a),
    )
    .await;
    assert!(matches!(result, Err(PeerError::PeerLeft)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answering_times_out_with_a_reason() {
    init_tracing();
    let (a, _b) = SignalLink::pair();
    let mut offerer = config(PeerRole::Offerer, vec![]);
    offerer.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = within("establish", PeerConnection::establish(offerer, a)).await;
    match result {
        Err(PeerError::Timeout { after, reason }) => {
            assert_eq!(after, Duration::from_millis(300));
            assert!(reason.contains("offer/answer"), "{reason}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_relay_without_relays_is_an_error() {
    let (a, _b) = SignalLink::pair();
    let mut offerer = config(PeerRole::Offerer, vec![]);
    offerer.force_relay = true;
    let result = within("establish", PeerConnection::establish(offerer, a)).await;
    assert!(
        matches!(result, Err(PeerError::IceFailed { .. })),
        "{result:?}"
    );
}

/// Forward signals from `from` to `to`, pointing every candidate at a port nobody listens on
/// (and stripping the candidates from the descriptions): no pair can ever succeed.
async fn blackhole_candidates(
    mut from: tokio::sync::mpsc::Receiver<proxim_protocol::Signal>,
    to: tokio::sync::mpsc::Sender<proxim_core::LinkEvent>,
    dead_port: u16,
) {
    use proxim_protocol::{CandidateLine, Sdp, Signal};
    while let Some(signal) = from.recv().await {
        let signal = match signal {
            Signal::Offer { sdp } => Signal::Offer {
                sdp: Sdp::new(strip_candidates(sdp.as_str())).expect("valid SDP"),
            },
            Signal::Answer { sdp } => Signal::Answer {
                sdp: Sdp::new(strip_candidates(sdp.as_str())).expect("valid SDP"),
            },
            Signal::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                // candidate:<foundation> <component> udp <priority> <ip> <port> typ …
                let mut fields: Vec<String> =
                    candidate.as_str().split(' ').map(str::to_owned).collect();
                fields[5] = dead_port.to_string();
                Signal::Candidate {
                    candidate: CandidateLine::new(fields.join(" ")).expect("valid candidate"),
                    sdp_mid,
                    sdp_mline_index,
                }
            }
            other => other,
        };
        if to
            .send(proxim_core::LinkEvent::Signal(signal))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn strip_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|line| !line.starts_with("a=candidate"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_working_pair_fails_fast_with_the_reason() {
    init_tracing();
    // A bound, silent socket: checks to it go nowhere.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let (a, b) = (tapped_link(), tapped_link());
    tokio::spawn(blackhole_candidates(a.sent, b.deliver, dead_port));
    tokio::spawn(blackhole_candidates(b.sent, a.deliver, dead_port));
    let (a_link, b_link) = (a.link, b.link);
    let started = Instant::now();
    let offerer = config(PeerRole::Offerer, vec![]); // connect timeout: 15 s
    let answerer = config(PeerRole::Answerer, vec![]);
    let (a, b) = within("both sides give up", async {
        tokio::join!(
            PeerConnection::establish(offerer, a_link),
            PeerConnection::establish(answerer, b_link)
        )
    })
    .await;
    let elapsed = started.elapsed();
    // Both sides report the ICE failure, including the one that gives up second and sees the
    // other leave the signaling session first.
    for (side, result) in [("offerer", a), ("answerer", b)] {
        match result {
            Err(PeerError::IceFailed { reason }) => {
                assert!(
                    reason.contains("no candidate pair succeeded"),
                    "{side}: {reason}"
                );
                assert!(reason.contains("offers no TURN relay"), "{side}: {reason}");
            }
            other => panic!("{side}: expected an ICE failure, got {other:?}"),
        }
    }
    // Every pair's checks give up after 2 s; the connect timeout (15 s) is not waited for.
    assert!(elapsed < Duration::from_secs(6), "failed after {elapsed:?}");
    drop(dead);
}
