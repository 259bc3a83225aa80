//! Two peers over loopback: establish, messages both ways, ordering, more channels, stats.

mod peer_common;

use bytes::Bytes;
use peer_common::{connect, default_channel_works, within};
use proxim_core::peer::{
    CandidateKind, ChannelOptions, ConnectionEvent, ConnectionState, DEFAULT_CHANNEL, Payload,
    PeerError,
};
use proxim_testkit::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_both_ways() {
    init_tracing();
    let (mut a, mut b) = connect().await;
    assert_eq!(a.channel.label(), DEFAULT_CHANNEL);
    assert_eq!(b.channel.label(), DEFAULT_CHANNEL);
    assert_eq!(a.channel.options(), &ChannelOptions::default());
    assert_eq!(a.connection.state(), ConnectionState::Connected);

    a.channel
        .send(Payload::Text("hello from the phone".into()))
        .await
        .unwrap();
    a.channel
        .send(Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])))
        .await
        .unwrap();
    b.channel
        .send(Payload::Text("hello from the desktop".into()))
        .await
        .unwrap();
    // The largest message the peer accepts (its a=max-message-size, 256 KiB) goes through.
    b.channel
        .send(Payload::Binary(Bytes::from(vec![7u8; 262_144])))
        .await
        .unwrap();

    // One byte more is refused up front with a clear error, and nothing is sent.
    assert!(matches!(
        a.channel
            .send(Payload::Binary(Bytes::from(vec![0u8; 262_145])))
            .await,
        Err(PeerError::MessageTooLarge {
            size: 262_145,
            max: 262_144
        })
    ));
    assert_eq!(
        within("b recv", b.channel.recv()).await,
        Some(Payload::Text("hello from the phone".into()))
    );
    assert_eq!(
        within("b recv", b.channel.recv()).await,
        Some(Payload::Binary(Bytes::from_static(&[0, 1, 2, 255])))
    );
    assert_eq!(
        within("a recv", a.channel.recv()).await,
        Some(Payload::Text("hello from the desktop".into()))
    );
    assert_eq!(
        within("a recv", a.channel.recv()).await,
        Some(Payload::Binary(Bytes::from(vec![7u8; 262_144])))
    );
    a.connection.close().await;
    b.connection.close().await;
}

/// Deterministic message `i`: its length varies from 0 to ~16 KiB, its bytes encode `i`.
fn message(i: u32) -> Vec<u8> {
    let len = ((i as usize).wrapping_mul(7919)) % 16_384;
    let mut v = Vec::with_capacity(len + 4);
    v.extend_from_slice(&i.to_be_bytes());
    v.extend((0..len).map(|k| (i as usize + k) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_intact_and_in_order() {
    init_tracing();
    let (a, mut b) = connect().await;
    const N: u32 = 10_000;
    let sender = a.channel.sender();
    let send = tokio::spawn(async move {
        for i in 0..N {
            sender
                .send(Payload::Binary(Bytes::from(message(i))))
                .await
                .unwrap();
        }
    });
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    for i in 0..N {
        match within("recv", b.channel.recv()).await {
            Some(Payload::Binary(got)) => {
                assert_eq!(got.as_ref(), message(i).as_slice(), "message {i}");
                bytes += got.len();
            }
            other => panic!("message {i}: got {other:?}"),
        }
    }
    within("sender", send).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "10k messages, {:.1} MB in {:.3} s: {:.1} MB/s",
        bytes as f64 / 1e6,
        secs,
        bytes as f64 / 1e6 / secs
    );
    a.connection.close().await;
    b.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_arrives_as_event_and_unreliable_works() {
    init_tracing();
    let (mut a, mut b) = connect().await;

    let mut files = within(
        "open",
        a.connection
            .open_channel("files", ChannelOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(files.label(), "files");
    let mut remote_files = loop {
        match within("event", b.events.next()).await {
            Some(ConnectionEvent::ChannelOpened(c)) => break c,
            Some(_) => continue,
            None => panic!("events ended"),
        }
    };
    assert_eq!(remote_files.label(), "files");
    files.send(Payload::Text("on files".into())).await.unwrap();
    assert_eq!(
        within("recv", remote_files.recv()).await,
        Some(Payload::Text("on files".into()))
    );
    remote_files
        .send(Payload::Text("back".into()))
        .await
        .unwrap();
    assert_eq!(
        within("recv", files.recv()).await,
        Some(Payload::Text("back".into()))
    );

    // Closing a channel ends it on the other side; the connection stays up.
    files.close().await;
    files.close().await;
    assert_eq!(within("channel end", remote_files.recv()).await, None);
    assert!(matches!(
        remote_files.send(Payload::Text("late".into())).await,
        Err(PeerError::ChannelClosed)
    ));

    // Unreliable, opened from the answerer side this time.
    let datagrams = within(
        "open",
        b.connection
            .open_channel("datagrams", ChannelOptions::unreliable()),
    )
    .await
    .unwrap();
    let mut remote_datagrams = within("event", a.events.next_channel())
        .await
        .expect("events ended before the channel opened");
    assert_eq!(remote_datagrams.label(), "datagrams");
    // A channel the peer opened reports its real options (from DATA_CHANNEL_OPEN).
    assert_eq!(remote_datagrams.options(), &ChannelOptions::unreliable());
    assert_eq!(datagrams.options(), &ChannelOptions::unreliable());
    for i in 0..100u32 {
        datagrams
            .send(Payload::Binary(Bytes::from(i.to_be_bytes().to_vec())))
            .await
            .unwrap();
    }
    // Loopback loses nothing in practice; require most of them.
    let mut got = 0;
    while got < 100 {
        match tokio::time::timeout(std::time::Duration::from_secs(2), remote_datagrams.recv()).await
        {
            Ok(Some(Payload::Binary(b))) => {
                assert_eq!(b.len(), 4);
                got += 1;
            }
            _ => break,
        }
    }
    assert!(got >= 90, "only {got} of 100 unreliable messages arrived");

    // The default channel still works alongside.
    default_channel_works(&a.channel, &mut b.channel).await;
    a.connection.close().await;
    b.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_after_exchanging_data() {
    init_tracing();
    let (a, mut b) = connect().await;
    for _ in 0..10 {
        a.channel
            .send(Payload::Binary(Bytes::from(vec![1u8; 1000])))
            .await
            .unwrap();
    }
    for _ in 0..10 {
        within("recv", b.channel.recv()).await.unwrap();
    }
    let stats = within("stats", a.connection.stats()).await.unwrap();
    println!("stats: {stats:?}");
    // Direct: host, or peer-reflexive when the peer's check beat its trickled candidate.
    assert!(
        matches!(stats.path(), CandidateKind::Host | CandidateKind::Prflx),
        "{stats:?}"
    );
    assert!(stats.local.address.ip().is_loopback(), "{stats:?}");
    assert_eq!(stats.protocol_pair(), ("udp", "udp"));
    assert_eq!(stats.bytes_sent, 10_000);
    assert_eq!(stats.messages_sent, 10);
    assert!(stats.rtt.is_some(), "no RTT: {stats:?}");
    let stats_b = within("stats", b.connection.stats()).await.unwrap();
    assert_eq!(stats_b.bytes_received, 10_000);
    assert_eq!(stats_b.messages_received, 10);
    assert_eq!(stats_b.local.address, stats.remote.address);
    a.connection.close().await;
    b.connection.close().await;
}

trait ProtocolPair {
    fn protocol_pair(&self) -> (&str, &str);
}

impl ProtocolPair for proxim_core::peer::ConnectionStats {
    fn protocol_pair(&self) -> (&str, &str) {
        (self.local.protocol.as_str(), self.remote.protocol.as_str())
    }
}

trait NextChannel {
    async fn next_channel(&mut self) -> Option<proxim_core::peer::DataChannel>;
}

impl NextChannel for proxim_core::peer::ConnectionEvents {
    async fn next_channel(&mut self) -> Option<proxim_core::peer::DataChannel> {
        loop {
            match self.next().await? {
                ConnectionEvent::ChannelOpened(c) => return Some(c),
                _ => continue,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_throughput_one_way() {
    init_tracing();
    let (a, mut b) = connect().await;
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let sender = a.channel.sender();
    let started = std::time::Instant::now();
    let send = tokio::spawn(async move {
        for i in 0..TOTAL / CHUNK {
            let chunk = Bytes::from(vec![i as u8; CHUNK]);
            sender.send(Payload::Binary(chunk)).await.unwrap();
        }
    });
    let mut received = 0;
    let mut n = 0usize;
    while received < TOTAL {
        match within("recv", b.channel.recv()).await {
            Some(Payload::Binary(m)) => {
                assert_eq!(m.len(), CHUNK);
                assert_eq!(m[0], n as u8);
                n += 1;
                received += m.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    within("sender", send).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bulk: 64 MiB in 64 KiB messages in {secs:.2} s = {:.1} MB/s",
        TOTAL as f64 / 1e6 / secs
    );
    a.connection.close().await;
    b.connection.close().await;
}
