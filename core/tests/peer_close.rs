//! Channel lifecycles: many channels in a row on one connection, and closing (a channel or the
//! whole connection) right after sending delivers everything that was sent.

mod peer_common;

use bytes::Bytes;
use peer_common::{connect, default_channel_works, within};
use proxim_core::peer::{ChannelOptions, ConnectionEvent, ConnectionEvents, DataChannel, Payload};
use proxim_testkit::init_tracing;

async fn next_channel(events: &mut ConnectionEvents) -> Option<DataChannel> {
    loop {
        match events.next().await? {
            ConnectionEvent::ChannelOpened(c) => return Some(c),
            _ => continue,
        }
    }
}

/// Each channel is opened right after the previous one was closed: rtc hands the new channel
/// the stream id whose reset is still in flight. Every one must open, carry its message both
/// ways and end cleanly on the remote side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_channels_in_a_row_on_one_connection() {
    init_tracing();
    const CHANNELS: usize = 50;
    let (a, mut b) = connect().await;
    let echo = tokio::spawn(async move {
        let mut labels = Vec::new();
        for _ in 0..CHANNELS {
            let mut channel = within("remote channel", next_channel(&mut b.events))
                .await
                .expect("events ended before every channel arrived");
            labels.push(channel.label().to_owned());
            // Echo until the opener closes the channel.
            while let Some(message) = within("echo recv", channel.recv()).await {
                channel.send(message).await.expect("echo send");
            }
        }
        (labels, b)
    });
    for i in 0..CHANNELS {
        let label = format!("seq/{i}");
        let mut channel = within(
            "open",
            a.connection.open_channel(&label, ChannelOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("open channel {i}: {e}"));
        let text = format!("message {i}");
        channel
            .send(Payload::Text(text.clone()))
            .await
            .unwrap_or_else(|e| panic!("send on channel {i}: {e}"));
        assert_eq!(
            within("echo", channel.recv()).await,
            Some(Payload::Text(text)),
            "channel {i}"
        );
        channel.close().await;
        // Wait until the close took effect here: the stream reset is then on its way, and the
        // next channel is created while it is (most likely) not yet answered.
        assert_eq!(
            within("local end", channel.recv()).await,
            None,
            "channel {i}"
        );
    }
    let (labels, b) = within("echo task", echo).await.expect("echo task");
    let expected: Vec<String> = (0..CHANNELS).map(|i| format!("seq/{i}")).collect();
    assert_eq!(labels, expected);
    // The default channel is untouched by all of it.
    let mut default = b.channel;
    default_channel_works(&a.channel, &mut default).await;
    a.connection.close().await;
    b.connection.close().await;
}

/// Message `i` of the close tests: mostly small, one of 64 KiB (the maximum message size).
fn message(i: usize) -> Bytes {
    let len = if i == 7 { 64 * 1024 } else { 100 + i * 37 };
    Bytes::from((0..len).map(|k| (i + k) as u8).collect::<Vec<u8>>())
}

/// `close()` straight after `send()`: the channel drains what was sent, then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_close_right_after_send_delivers_everything() {
    init_tracing();
    const N: usize = 40;
    let (a, mut b) = connect().await;
    let channel = within(
        "open",
        a.connection
            .open_channel("drain", ChannelOptions::default()),
    )
    .await
    .expect("open");
    let mut remote = within("remote channel", next_channel(&mut b.events))
        .await
        .expect("events ended");
    for i in 0..N {
        channel
            .send(Payload::Binary(message(i)))
            .await
            .expect("send");
    }
    channel.close().await;
    for i in 0..N {
        match within("recv", remote.recv()).await {
            Some(Payload::Binary(got)) => assert_eq!(got, message(i), "message {i}"),
            other => panic!("message {i}: got {other:?}"),
        }
    }
    assert_eq!(within("channel end", remote.recv()).await, None);
    assert!(channel.is_closed());
    // The connection is still fine.
    a.channel
        .send(Payload::Text("after".into()))
        .await
        .expect("default channel");
    let mut default = b.channel;
    assert_eq!(
        within("default recv", default.recv()).await,
        Some(Payload::Text("after".into()))
    );
    a.connection.close().await;
    b.connection.close().await;
}

/// `Connection::close()` straight after sending on two channels: both arrive in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_right_after_send_delivers_everything() {
    init_tracing();
    const N: usize = 20;
    let (a, mut b) = connect().await;
    let other = within(
        "open",
        a.connection
            .open_channel("other", ChannelOptions::default()),
    )
    .await
    .expect("open");
    let mut remote_other = within("remote channel", next_channel(&mut b.events))
        .await
        .expect("events ended");
    for i in 0..N {
        other.send(Payload::Binary(message(i))).await.expect("send");
    }
    a.channel
        .send(Payload::Text("last words".into()))
        .await
        .expect("send_text");
    within("close", a.connection.close()).await;

    let mut default = b.channel;
    assert_eq!(
        within("default recv", default.recv()).await,
        Some(Payload::Text("last words".into()))
    );
    assert_eq!(within("default end", default.recv()).await, None);
    for i in 0..N {
        match within("recv", remote_other.recv()).await {
            Some(Payload::Binary(got)) => assert_eq!(got, message(i), "message {i}"),
            other => panic!("message {i}: got {other:?}"),
        }
    }
    assert_eq!(within("other end", remote_other.recv()).await, None);
    b.connection.close().await;
}
