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

/// Run `script` against the receiver: it must fail as `fails` says, leave no file, and answer
/// with a refusal exactly when `nack` is set.
async fn assert_refused(
    what: &str,
    script: Vec<Payload>,
    fails: fn(&TransferError) -> bool,
    nack: bool,
) {
    let (result, reply, empty) = scripted(script).await;
    assert!(result.as_ref().is_err_and(fails), "{what}: {result:?}");
    if nack {
        assert!(
            reply.as_ref().is_some_and(|r| r.contains(r#""ok":false"#)),
            "{what}: {reply:?}"
        );
    }
    assert!(empty, "{what}: no file left");
}

fn is_protocol(error: &TransferError) -> bool {
    matches!(error, TransferError::Protocol(_))
}

/// Bound a whole test by [`TEST_TIMEOUT`].
async fn within_test(test: impl Future<Output = ()>) {
    proxim_testkit::within_for(TEST_TIMEOUT, "test", test).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_is_a_protocol_error() {
    within_test(async {
        let not_json = vec![Payload::Text("{not json".to_owned())];
        assert_refused("not json", not_json, is_protocol, false).await;
        let data_first = vec![Payload::Binary(Bytes::from_static(b"data before header"))];
        assert_refused("data before header", data_first, is_protocol, false).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_and_oversize_are_refused() {
    within_test(async {
        let version = vec![text(
            serde_json::json!({"type":"header","version":99,"name":"a","size":1}),
        )];
        assert_refused("version 99", version, is_protocol, true).await;
        let oversize = vec![text(
            serde_json::json!({"type":"header","version":1,"name":"a","size":u64::MAX}),
        )];
        let too_large = |e: &TransferError| matches!(e, TransferError::TooLarge { .. });
        assert_refused("oversize", oversize, too_large, true).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hash_is_a_mismatch_and_deletes_the_part_file() {
    within_test(async {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_mismatch_and_overflow_are_protocol_errors() {
    within_test(async {
        let sha = hex::encode(Sha256::digest(b"hel"));
        let short = vec![
            text(serde_json::json!({"type":"header","version":1,"name":"f","size":5})),
            Payload::Binary(Bytes::from_static(b"hel")),
            text(serde_json::json!({"type":"trailer","sha256": sha})),
        ];
        assert_refused("size mismatch", short, is_protocol, false).await;
        let overflow = vec![
            text(serde_json::json!({"type":"header","version":1,"name":"f","size":2})),
            Payload::Binary(Bytes::from_static(b"hello")),
        ];
        assert_refused("overflow", overflow, is_protocol, false).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_closing_midway_is_cancelled_and_leaves_nothing() {
    within_test(async {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_sender_that_breaks_the_handshake_leaves_no_part_file() {
    within_test(async {
        let id = "0123456789abcdef0123456789abcdef";
        let header = text(serde_json::json!(
            {"type":"header","version":2,"name":"a.bin","size":100,"content_id":id}
        ));
        // Version 2 needs a content id: refused.
        let no_id = vec![text(
            serde_json::json!({"type":"header","version":2,"name":"a.bin","size":100}),
        )];
        assert_refused("no content id", no_id, is_protocol, true).await;
        // The receiver offers 0 bytes: a start anywhere else is a lie.
        let wrong_start = vec![
            header.clone(),
            text(serde_json::json!({"type":"start","offset":40})),
        ];
        assert_refused("start at 40", wrong_start, is_protocol, false).await;
        // Data before the start.
        let data_first = vec![
            header.clone(),
            Payload::Binary(Bytes::from_static(b"too early")),
        ];
        assert_refused("data before start", data_first, is_protocol, false).await;
        // A hash that does not match what arrived deletes the part file too.
        let wrong_hash = vec![
            header,
            text(serde_json::json!({"type":"start","offset":0})),
            Payload::Binary(Bytes::from(vec![7u8; 100])),
            text(serde_json::json!({"type":"trailer","sha256":hex::encode(Sha256::digest(b"x"))})),
        ];
        let mismatch = |e: &TransferError| matches!(e, TransferError::HashMismatch { .. });
        let (result, _, empty) = scripted(wrong_hash).await;
        assert!(result.as_ref().is_err_and(mismatch), "{result:?}");
        assert!(empty, "the part file of a wrong file is deleted");
    })
    .await
}
