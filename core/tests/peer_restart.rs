//! ICE restarts between two real peers over loopback UDP: a side whose address changes
//! mid-stream moves to a new path, the channels and everything they hold carry on.

mod peer_common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peer_common::{config, connect, default_channel_works, tapped_link, within};
use proxim_core::link::LinkEvent;
use proxim_core::peer::{
    ConnectionEvent, ConnectionEvents, Payload, PeerConnection, PeerError, PeerRole,
};
use proxim_testkit::init_tracing;

/// Events until a `PathChanged`: the `Reconnecting` attempts seen on the way, and the new
/// path's local address.
async fn until_path_changed(events: &mut ConnectionEvents) -> (Vec<u32>, std::net::SocketAddr) {
    let mut attempts = Vec::new();
    loop {
        match within("events", events.next()).await.expect("events ended") {
            ConnectionEvent::Reconnecting { attempt, .. } => attempts.push(attempt),
            ConnectionEvent::PathChanged(stats) => return (attempts, stats.local.address),
            ConnectionEvent::Closed { reason, .. } => panic!("closed: {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_whose_address_changes_mid_stream_moves_to_a_new_path_losing_nothing() {
    init_tracing();
    let (mut a, mut b) = connect().await;
    // Both start on 127.0.0.1; the first PathChanged says so.
    let (_, first) = until_path_changed(&mut a.events).await;
    assert_eq!(first.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));

    // A streams numbered 16 KiB messages; half way, its "network" changes: the socket on
    // 127.0.0.1 is closed and one on 127.0.0.2 takes over (a phone moving from Wi-Fi to
    // cellular gets a new address the same way).
    const MESSAGES: u32 = 2_000;
    const SWITCH_AT: u32 = 1_000;
    let sender = a.channel.sender();
    let connection = a.connection.clone();
    let send = tokio::spawn(async move {
        let mut switched_at = None;
        for i in 0..MESSAGES {
            if i == SWITCH_AT {
                switched_at = Some(Instant::now());
                connection
                    .set_local_ips(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))])
                    .await
                    .expect("a restart starts");
            }
            let mut message = vec![0u8; 16 * 1024];
            message[..4].copy_from_slice(&i.to_be_bytes());
            sender
                .send(Payload::Binary(Bytes::from(message)))
                .await
                .unwrap();
        }
        switched_at.expect("switched")
    });
    let mut first_after_switch = None;
    for expected in 0..MESSAGES {
        let message = within("message", b.channel.recv())
            .await
            .expect("a message");
        let Payload::Binary(data) = message else {
            panic!("text?")
        };
        let n = u32::from_be_bytes(data[..4].try_into().unwrap());
        assert_eq!(n, expected, "messages arrive once each, in order");
        if n == SWITCH_AT {
            first_after_switch = Some(Instant::now());
        }
    }
    let switched_at = within("sender", send).await.unwrap();
    let (attempts, local) = until_path_changed(&mut a.events).await;
    assert_eq!(attempts, [1]);
    assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (_, b_first) = until_path_changed(&mut b.events).await;
    let (b_attempts, b_now) = until_path_changed(&mut b.events).await;
    assert_eq!(b_attempts, [1]);
    assert_eq!(b_first, b_now, "B's own address stays");
    let stats = a.connection.stats().await.unwrap();
    assert_eq!(stats.local.address, local);
    let recovery = first_after_switch
        .unwrap()
        .saturating_duration_since(switched_at);
    println!(
        "address change mid-stream: first message sent after it arrived {:.1} ms later",
        recovery.as_secs_f64() * 1000.0
    );
    // And the connection holds on the new path.
    default_channel_works(&a.channel, &mut b.channel).await;
    a.connection.close().await;
    b.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_signaling_network_changed_says_so_and_the_path_stays() {
    init_tracing();
    // Two tapped links bridged by the test, which can cut the bridge: A then hears that
    // signaling is lost.
    let (mut ta, mut tb) = (tapped_link(), tapped_link());
    let (cut, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    let (a_deliver, b_deliver) = (ta.deliver.clone(), tb.deliver.clone());
    let bridge = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(s) = ta.sent.recv() => { let _ = b_deliver.send(LinkEvent::Signal(s)).await; }
                Some(s) = tb.sent.recv() => { let _ = a_deliver.send(LinkEvent::Signal(s)).await; }
                _ = &mut cut_rx => {
                    let _ = a_deliver.send(LinkEvent::Lost).await;
                    return;
                }
            }
        }
    });
    let (a, b) = within("establish", async {
        tokio::join!(
            PeerConnection::establish(config(PeerRole::Offerer, vec![]), ta.link),
            PeerConnection::establish(config(PeerRole::Answerer, vec![]), tb.link)
        )
    })
    .await;
    let (a, mut b) = (a.expect("A"), b.expect("B"));
    cut.send(()).unwrap();
    bridge.await.unwrap();
    let started = Instant::now();
    let result = loop {
        let result = a.connection.network_changed().await;
        if result.is_err() || started.elapsed() > Duration::from_secs(5) {
            break result;
        }
        // (Until the driver has taken the link's end.)
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(result, Err(PeerError::NoSignaling)), "{result:?}");
    // The path in use is untouched.
    default_channel_works(&a.channel, &mut b.channel).await;
    a.connection.close().await;
    b.connection.close().await;
}
