//! The receiver against a misbehaving sender, over two real peers on loopback: every bad
//! input ends in a typed error, an answer to the sender where one is due, and no file left.

mod peer_common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use proxim_core::peer::{ChannelOptions, Payload};
use proxim_core::transfer::{TransferError, receive_file};
use sha2::{Digest, Sha256};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read_dir").next().is_none()
}

fn text(json: serde_json::Value) -> Payload {
    Payload::Text(json.to_string())
}

/// One scripted sender against `receive_file`; returns the receiver's result, what the sender
/// got back (if anything) before the channel closed, and whether the directory stayed empty.
async fn scripted(
    script: Vec<Payload>,
) -> (
    Result<proxim_core::transfer::ReceivedFile, TransferError>,
    Option<String>,
    bool,
) {
    let (offerer, mut answerer) = peer_common::connect().await;
    let dir = tempfile::tempdir().expect("test setup");
    let dir_path = dir.path().to_owned();
    let receiver = tokio::spawn(async move {
        let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
        let result = receive_file(channel, &dir_path, |_| {}).await;
        (result, answerer)
    });
    let mut channel = offerer
        .connection
        .open_channel("proxim-file/script", ChannelOptions::default())
        .await
        .expect("test setup");
    for payload in script {
        channel.send(payload).await.expect("test setup");
    }
    // The receiver answers (refusals) or closes the channel (everything else): never hangs.
    let reply = match tokio::time::timeout(Duration::from_secs(5), channel.recv()).await {
        Ok(Some(Payload::Text(text))) => Some(text),
        Ok(_) => None,
        Err(_) => panic!("the receiver neither answered nor closed the channel"),
    };
    // Like `send_file`, close once the answer is read; the receiver then finishes at once.
    channel.close().await;
    let (result, answerer) = tokio::time::timeout(Duration::from_secs(3), receiver)
        .await
        .expect("receiver finishes once the sender closed")
        .expect("test setup");
    let empty = is_empty_dir(dir.path());
    offerer.connection.close().await;
    answerer.connection.close().await;
    (result, reply, empty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_is_a_protocol_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (result, _, empty) = scripted(vec![Payload::Text("{not json".to_owned())]).await;
        assert!(
            matches!(result, Err(TransferError::Protocol(_))),
            "{result:?}"
        );
        assert!(empty);

        let (result, _, empty) = scripted(vec![Payload::Binary(Bytes::from_static(
            b"data before header",
        ))])
        .await;
        assert!(
            matches!(result, Err(TransferError::Protocol(_))),
            "{result:?}"
        );
        assert!(empty);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_and_oversize_are_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (result, reply, empty) = scripted(vec![text(
            serde_json::json!({"type":"header","version":99,"name":"a","size":1}),
        )])
        .await;
        assert!(
            matches!(result, Err(TransferError::Protocol(_))),
            "{result:?}"
        );
        assert!(reply.is_some_and(|r| r.contains(r#""ok":false"#)));
        assert!(empty);

        let (result, reply, empty) = scripted(vec![text(
            serde_json::json!({"type":"header","version":1,"name":"a","size":u64::MAX}),
        )])
        .await;
        assert!(
            matches!(result, Err(TransferError::TooLarge { .. })),
            "{result:?}"
        );
        assert!(reply.is_some_and(|r| r.contains(r#""ok":false"#)));
        assert!(empty);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hash_is_a_mismatch_and_deletes_the_part_file() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let wrong = hex::encode(Sha256::digest(b"something else"));
        let (result, reply, empty) = scripted(vec![
            text(serde_json::json!({"type":"header","version":1,"name":"f.bin","size":5})),
            Payload::Binary(Bytes::from_static(b"hello")),
            text(serde_json::json!({"type":"trailer","sha256": wrong})),
        ])
        .await;
        match result {
            Err(TransferError::HashMismatch { expected, actual }) => {
                assert_eq!(expected, wrong);
                assert_eq!(actual, hex::encode(Sha256::digest(b"hello")));
            }
            other => panic!("expected a hash mismatch, got {other:?}"),
        }
        let reply = reply.expect("a nack");
        assert!(reply.contains(r#""ok":false"#), "{reply}");
        assert!(empty, "part file deleted");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_mismatch_and_overflow_are_protocol_errors() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let sha = hex::encode(Sha256::digest(b"hel"));
        let (result, _, empty) = scripted(vec![
            text(serde_json::json!({"type":"header","version":1,"name":"f","size":5})),
            Payload::Binary(Bytes::from_static(b"hel")),
            text(serde_json::json!({"type":"trailer","sha256": sha})),
        ])
        .await;
        assert!(
            matches!(result, Err(TransferError::Protocol(_))),
            "{result:?}"
        );
        assert!(empty);

        let (result, _, empty) = scripted(vec![
            text(serde_json::json!({"type":"header","version":1,"name":"f","size":2})),
            Payload::Binary(Bytes::from_static(b"hello")),
        ])
        .await;
        assert!(
            matches!(result, Err(TransferError::Protocol(_))),
            "{result:?}"
        );
        assert!(empty);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_closing_midway_is_cancelled_and_leaves_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (offerer, mut answerer) = peer_common::connect().await;
        let dir = tempfile::tempdir().expect("test setup");
        let dir_path = dir.path().to_owned();
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let receiver = tokio::spawn(async move {
            let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
            let result = receive_file(channel, &dir_path, |p| {
                let _ = progress_tx.send(p.bytes_done);
            })
            .await;
            (result, answerer)
        });
        let channel = offerer
            .connection
            .open_channel("proxim-file/quitter", ChannelOptions::default())
            .await
            .expect("test setup");
        channel
            .send(text(
                serde_json::json!({"type":"header","version":1,"name":"f","size":100}),
            ))
            .await
            .expect("test setup");
        channel
            .send(Payload::Binary(Bytes::from_static(b"partial")))
            .await
            .expect("test setup");
        // Close once the receiver has the 7 bytes (7 % of the file: a progress event).
        assert_eq!(progress_rx.recv().await, Some(7));
        channel.close().await;

        let (result, answerer) = receiver.await.expect("test setup");
        match result {
            Err(TransferError::Cancelled { bytes_done, total }) => {
                assert_eq!((bytes_done, total), (7, 100));
            }
            other => panic!("expected cancelled, got {other:?}"),
        }
        assert!(is_empty_dir(dir.path()), "part file deleted");
        offerer.connection.close().await;
        answerer.connection.close().await;
    })
    .await
    .expect("test timed out");
}
