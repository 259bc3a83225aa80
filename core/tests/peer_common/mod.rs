//! Shared helpers for the peer tests: two real peers in one process over loopback UDP.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use proxim_core::SignalLink;
use proxim_core::link::LinkEvent;
use proxim_core::peer::{Established, PeerConfig, PeerConnection, PeerError, PeerRole};
use proxim_protocol::{IceServer, Signal};

/// Bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Loopback-only configs (no LAN addresses), as the tests must stay on 127.0.0.1.
pub fn config(role: PeerRole, ice_servers: Vec<IceServer>) -> PeerConfig {
    let mut config = PeerConfig::new(role, ice_servers);
    config.include_loopback = true;
    config.local_ips = Some(vec![std::net::Ipv4Addr::LOCALHOST.into()]);
    config
}

/// A signaling link whose far ends the test holds: what the peer sends arrives on `sent`, what
/// the test pushes into `deliver` reaches the peer. For relays that drop or rewrite signals.
pub struct TappedLink {
    pub link: SignalLink,
    pub sent: tokio::sync::mpsc::Receiver<Signal>,
    pub deliver: tokio::sync::mpsc::Sender<LinkEvent>,
}

pub fn tapped_link() -> TappedLink {
    let (outgoing, sent) = tokio::sync::mpsc::channel(64);
    let (deliver, incoming) = tokio::sync::mpsc::channel(64);
    TappedLink {
        link: SignalLink { outgoing, incoming },
        sent,
        deliver,
    }
}

/// Establish both sides concurrently; returns (offerer, answerer, time to establish).
pub async fn connect_with(
    offerer: PeerConfig,
    answerer: PeerConfig,
) -> Result<(Established, Established, Duration), PeerError> {
    let (a, b) = SignalLink::pair();
    let started = Instant::now();
    let (x, y) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            PeerConnection::establish(offerer, a),
            PeerConnection::establish(answerer, b)
        )
    })
    .await
    .expect("establish did not finish in time");
    let elapsed = started.elapsed();
    Ok((x?, y?, elapsed))
}

pub async fn connect() -> (Established, Established) {
    let (x, y, _) = connect_with(
        config(PeerRole::Offerer, vec![]),
        config(PeerRole::Answerer, vec![]),
    )
    .await
    .expect("connect");
    (x, y)
}

/// Await `f` for at most [`WAIT`]; a timeout fails the test, naming `what`.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    proxim_testkit::within_for(WAIT, what, f).await
}

/// A text from `from`'s default channel reaches `to`'s: the connection still works.
pub async fn default_channel_works(
    from: &proxim_core::peer::DataChannel,
    to: &mut proxim_core::peer::DataChannel,
) {
    let text = proxim_core::peer::Payload::Text("still here".into());
    from.send(text.clone()).await.expect("default channel");
    assert_eq!(within("default recv", to.recv()).await, Some(text));
}

/// Wait for the remote to open a file-transfer channel.
pub async fn next_transfer_channel(
    events: &mut proxim_core::peer::ConnectionEvents,
) -> proxim_core::peer::DataChannel {
    loop {
        match events.next().await.expect("events ended") {
            proxim_core::peer::ConnectionEvent::ChannelOpened(channel)
                if proxim_core::transfer::is_transfer_channel(channel.label()) =>
            {
                return channel;
            }
            _ => {}
        }
    }
}
