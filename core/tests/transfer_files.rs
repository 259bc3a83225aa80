//! File transfer between two real peers over loopback, wired with `SignalLink::pair()`.

mod peer_common;

use std::path::Path;
use std::time::Duration;

use proxim_core::peer::PeerConnection;
use proxim_core::transfer::{
    ReceivedFile, TransferError, TransferProgress, receive_file, send_file,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// The files in `dir`, part files included; not the receiver's state directory.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != proxim_core::transfer::STATE_DIR)
        .collect();
    names.sort();
    names
}

/// Send `path` from the offerer, receive into `dir` on the answerer; both progress logs.
async fn transfer(
    path: &Path,
    dir: &Path,
) -> (
    proxim_core::transfer::FileReport,
    ReceivedFile,
    Vec<TransferProgress>,
    Vec<TransferProgress>,
) {
    let (offerer, mut answerer) = peer_common::connect().await;
    let dir = dir.to_owned();
    let receiving = tokio::spawn(async move {
        let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
        let mut progress = Vec::new();
        let received = receive_file(channel, &dir, |p| progress.push(p))
            .await
            .expect("receive_file");
        answerer.connection.close().await;
        (received, progress)
    });
    let mut sent_progress = Vec::new();
    let report = send_file(&offerer.connection, path, |p| sent_progress.push(p))
        .await
        .expect("send_file");
    let (received, received_progress) = receiving.await.expect("receiver task");
    offerer.connection.close().await;
    (report, received, sent_progress, received_progress)
}

fn assert_progress(progress: &[TransferProgress], total: u64) {
    let last = progress.last().expect("at least the final progress event");
    assert_eq!(last.bytes_done, total);
    assert_eq!(last.total, total);
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress not monotonic"
    );
    assert!(progress.iter().all(|p| p.total == total));
    // Throttled: at most one event per 1 % plus time-based ones, never one per chunk.
    assert!(progress.len() <= 300, "{} progress events", progress.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_file_arrives_identical() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = src.path().join("random.bin");
        let mut data = vec![0_u8; 64 * 1024 * 1024 + 12_345];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(&path, &data).expect("test setup");
        drop(data);
        let total = std::fs::metadata(&path).expect("test setup").len();

        let (report, received, sent, got) = transfer(&path, dst.path()).await;

        let expected = sha256_file(&path);
        assert_eq!(report.sha256, expected);
        assert_eq!(report.bytes, total);
        assert_eq!(received.sha256, expected);
        assert!(received.verified);
        assert_eq!(received.path, dst.path().join("random.bin"));
        assert_eq!(sha256_file(&received.path), expected);
        assert_eq!(files_in(dst.path()), ["random.bin"], "no part file left");
        assert_progress(&sent, total);
        assert_progress(&got, total);
        assert!(sent.len() > 5 && got.len() > 5, "progress along the way");
        // Over loopback the channel never stands still for long; a stall is a gap between
        // chunks, so it is inside the transfer's time and, with 1000+ chunks, not zero.
        assert!(report.max_stall > Duration::ZERO);
        assert!(report.max_stall < report.elapsed);
        assert!(
            report.max_stall < Duration::from_secs(2),
            "stalled {:?}",
            report.max_stall
        );
        let mib_s = total as f64 / (1024.0 * 1024.0) / report.elapsed.as_secs_f64();
        eprintln!("64 MiB in {:?} ({mib_s:.1} MiB/s)", report.elapsed);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = src.path().join("empty.txt");
        std::fs::write(&path, b"").expect("test setup");

        let (report, received, sent, got) = transfer(&path, dst.path()).await;

        let empty_hash = hex::encode(Sha256::digest(b""));
        assert_eq!(report.bytes, 0);
        assert_eq!(report.max_stall, Duration::ZERO, "no chunk, no stall");
        assert_eq!(report.sha256, empty_hash);
        assert_eq!(received.sha256, empty_hash);
        assert_eq!(
            std::fs::metadata(&received.path).expect("test setup").len(),
            0
        );
        assert_eq!(files_in(dst.path()), ["empty.txt"]);
        assert_progress(&sent, 0);
        assert_progress(&got, 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_land_inside_the_directory_without_overwriting() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let root = tempfile::tempdir().expect("test setup");
        let dst = root.path().join("inbox");
        std::fs::create_dir(&dst).expect("test setup");
        // A file the hostile name points at, and one with the same sanitized name.
        std::fs::create_dir_all(root.path().join("etc")).expect("test setup");
        std::fs::write(root.path().join("etc/passwd"), b"root:x:0:0").expect("test setup");
        std::fs::write(dst.join("passwd"), b"already here").expect("test setup");

        // A dotted name through `send_file`…
        let src = tempfile::tempdir().expect("test setup");
        let dotted = src.path().join("..hidden");
        std::fs::write(&dotted, b"dots").expect("test setup");
        let (_, hidden, _, _) = transfer(&dotted, &dst).await;

        // …and a "../../etc/passwd" header from a sender that speaks the protocol by hand.
        let (offerer, mut answerer) = peer_common::connect().await;
        let receiving = {
            let dst = dst.clone();
            tokio::spawn(async move {
                let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
                let received = receive_file(channel, &dst, |_| {}).await.expect("receive");
                answerer.connection.close().await;
                received.path
            })
        };
        let ack = raw_send(&offerer.connection, "../../etc/passwd", b"evil").await;
        assert!(ack.contains(r#""ok":true"#), "{ack}");
        let passwd = receiving.await.expect("test setup");
        offerer.connection.close().await;

        let dst = dst.canonicalize().expect("test setup");
        for path in [&hidden.path, &passwd] {
            assert_eq!(
                path.parent()
                    .expect("test setup")
                    .canonicalize()
                    .expect("test setup"),
                dst
            );
        }
        assert_eq!(hidden.path.file_name().expect("test setup"), "hidden");
        assert_eq!(passwd.file_name().expect("test setup"), "passwd (1)");
        assert_eq!(std::fs::read(&passwd).expect("test setup"), b"evil");
        assert_eq!(
            std::fs::read(dst.join("passwd")).expect("test setup"),
            b"already here"
        );
        assert_eq!(
            std::fs::read(root.path().join("etc/passwd")).expect("test setup"),
            b"root:x:0:0"
        );
        assert_eq!(files_in(&dst), ["hidden", "passwd", "passwd (1)"]);
    })
    .await
    .expect("test timed out");
}

/// Several files over one connection, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_a_row_on_one_connection() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let (offerer, mut answerer) = peer_common::connect().await;
        let dir = dst.path().to_owned();
        let receiving = tokio::spawn(async move {
            let mut stored = Vec::new();
            for _ in 0..5 {
                let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
                stored.push(
                    receive_file(channel, &dir, |_| {})
                        .await
                        .expect("receive")
                        .path,
                );
            }
            answerer.connection.close().await;
            stored
        });
        for i in 0..5 {
            let path = src.path().join(format!("f{i}.txt"));
            std::fs::write(&path, format!("file {i}")).expect("test setup");
            send_file(&offerer.connection, &path, |_| {})
                .await
                .expect("send_file");
        }
        let stored = receiving.await.expect("test setup");
        assert_eq!(stored.len(), 5);
        assert_eq!(files_in(dst.path()).len(), 5);
        offerer.connection.close().await;
    })
    .await
    .expect("test timed out");
}

/// Speak the transfer protocol by hand (a sender that lies about the name); returns the ack.
async fn raw_send(conn: &PeerConnection, name: &str, content: &[u8]) -> String {
    use proxim_core::peer::{ChannelOptions, Payload};
    let mut channel = conn
        .open_channel("proxim-file/raw1", ChannelOptions::default())
        .await
        .expect("test setup");
    let header =
        serde_json::json!({"type": "header", "version": 1, "name": name, "size": content.len()});
    channel
        .send(Payload::Text(header.to_string()))
        .await
        .expect("test setup");
    channel
        .send(Payload::Binary(bytes::Bytes::copy_from_slice(content)))
        .await
        .expect("test setup");
    let sha = hex::encode(Sha256::digest(content));
    let trailer = serde_json::json!({"type": "trailer", "sha256": sha});
    channel
        .send(Payload::Text(trailer.to_string()))
        .await
        .expect("test setup");
    let ack = match channel.recv().await {
        Some(Payload::Text(text)) => text,
        other => panic!("expected an ack, got {other:?}"),
    };
    channel.close().await;
    ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_that_is_not_a_file_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (offerer, answerer) = peer_common::connect().await;
        let dir = tempfile::tempdir().expect("test setup");
        let error = send_file(&offerer.connection, dir.path(), |_| {})
            .await
            .expect_err("should fail");
        assert!(
            matches!(error, TransferError::BadName(_) | TransferError::Io(_)),
            "{error:?}"
        );
        let missing = send_file(&offerer.connection, &dir.path().join("nope"), |_| {})
            .await
            .expect_err("should fail");
        assert!(matches!(missing, TransferError::Io(_)), "{missing:?}");
        offerer.connection.close().await;
        answerer.connection.close().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_ends_mid_transfer_says_why() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (offerer, mut answerer) = peer_common::connect().await;
        let src = tempfile::tempdir().expect("test setup");
        let path = src.path().join("big.bin");
        let mut data = vec![0u8; 32 << 20];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(&path, &data).expect("test setup");
        let dir = tempfile::tempdir().expect("test setup");
        let into = dir.path().to_owned();
        // The receiving device goes away (closes its connection) 1 MiB into the file.
        let receiving = tokio::spawn(async move {
            let channel = peer_common::next_transfer_channel(&mut answerer.events).await;
            let connection = answerer.connection.clone();
            let mut closing = false;
            let result = receive_file(channel, &into, |p| {
                if p.bytes_done >= 1 << 20 && !closing {
                    closing = true;
                    let connection = connection.clone();
                    tokio::spawn(async move { connection.close().await });
                }
            })
            .await;
            assert!(result.is_err(), "the file cannot have arrived");
        });
        let error = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect_err("the receiver went away");
        // Not "peer: data channel closed": the connection's own reason.
        match &error {
            TransferError::ConnectionLost(reason) => {
                assert!(reason.contains("closed by the peer"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error.to_string(),
            "the connection was lost: closed by the peer"
        );
        receiving.await.expect("receiver task");
        offerer.connection.close().await;
    })
    .await
    .expect("test timed out");
}
