//! Resumable transfers between two real peers over loopback: a transfer cut short (the send
//! dropped, the connection gone) resumes from the receiver's part file when the same file is
//! sent again, on the same connection or the next one, and only the missing bytes travel.

mod peer_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxim_core::peer::{ConnectionEvent, Established, PeerConnection};
use proxim_core::transfer::{
    FileReport, ReceivedFile, STATE_DIR, TransferError, is_transfer_channel, receive_file,
    send_file,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const FILE_BYTES: usize = 32 << 20;
/// Where the first attempt is cut (bytes the sender has handed to the channel).
const CUT_AT: u64 = 8 << 20;

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// The names in `dir` (part files included), not the state directory.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != STATE_DIR)
        .collect();
    names.sort();
    names
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|name| name.ends_with(".part"))
        .map(|name| dir.join(name))
        .collect()
}

fn random_file(dir: &Path, name: &str) -> PathBuf {
    let mut data = vec![0u8; FILE_BYTES];
    rand::rng().fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).expect("test setup");
    path
}

/// Receive every file the remote sends on `peer` into `dir`; each result in order.
fn receive_all(
    peer: Established,
    dir: &Path,
) -> mpsc::UnboundedReceiver<Result<ReceivedFile, TransferError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let dir = dir.to_owned();
    tokio::spawn(async move {
        // Held here: the connection lives as long as this task.
        let _connection = peer.connection;
        let _default = peer.channel;
        let mut events = peer.events;
        // Until the connection ends.
        while let Some(event) = events.next().await {
            let ConnectionEvent::ChannelOpened(channel) = event else {
                continue;
            };
            if !is_transfer_channel(channel.label()) {
                continue;
            }
            let tx = tx.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                let _ = tx.send(receive_file(channel, &dir, |_| {}).await);
            });
        }
    });
    rx
}

/// Send `path` and drop the send once CUT_AT bytes went into the channel; returns how many
/// (as progress last said: a few chunks more may have gone in the same poll).
async fn send_and_cancel(conn: &PeerConnection, path: &Path) -> u64 {
    let (cut_tx, mut cut_rx) = mpsc::unbounded_channel();
    let send = send_file(conn, path, move |p| {
        if p.bytes_done >= CUT_AT {
            let _ = cut_tx.send(p.bytes_done);
        }
    });
    tokio::select! {
        result = send => panic!("the transfer should have been cut: {result:?}"),
        sent = cut_rx.recv() => sent.expect("progress"),
    }
}

async fn next_result(
    results: &mut mpsc::UnboundedReceiver<Result<ReceivedFile, TransferError>>,
) -> Result<ReceivedFile, TransferError> {
    peer_common::within("the receiver's result", results.recv())
        .await
        .expect("receiver task")
}

/// Bytes that travelled twice: what the cut attempt handed to the channel beyond what the
/// receiver kept.
fn resent(sent_before_cut: u64, report: &FileReport) -> u64 {
    sent_before_cut.saturating_sub(report.resumed_from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_send_resumes_on_the_same_connection() {
    proxim_testkit::within_for(TEST_TIMEOUT, "test", async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = random_file(src.path(), "video.bin");
        let (offerer, answerer) = peer_common::connect().await;
        let mut results = receive_all(answerer, dst.path());

        let sent = send_and_cancel(&offerer.connection, &path).await;
        let arrived = match next_result(&mut results).await {
            Err(TransferError::Cancelled { bytes_done, total }) => {
                assert_eq!(total, FILE_BYTES as u64);
                assert!(
                    bytes_done > 0 && bytes_done < total,
                    "{bytes_done} of {total}"
                );
                bytes_done
            }
            other => panic!("the receiver should see a cancel: {other:?}"),
        };
        let parts = part_files(dst.path());
        assert_eq!(
            parts.len(),
            1,
            "the part file is kept: {:?}",
            files_in(dst.path())
        );
        let held = std::fs::metadata(&parts[0]).expect("part").len();
        assert_eq!(held, arrived, "everything that arrived is kept");

        let mut progress = Vec::new();
        let report = send_file(&offerer.connection, &path, |p| progress.push(p.bytes_done))
            .await
            .expect("the second send");
        let received = next_result(&mut results).await.expect("received");
        assert_eq!(
            report.resumed_from, held,
            "resumed from all the part file held"
        );
        assert_eq!(received.resumed_from, held);
        assert!(
            progress.first().is_some_and(|first| *first > held),
            "progress goes on from the resume point: {:?}",
            &progress[..progress.len().min(3)]
        );
        assert_eq!(received.sha256, sha256_file(&path));
        assert_eq!(sha256_file(&received.path), sha256_file(&path));
        assert_eq!(
            files_in(dst.path()),
            ["video.bin"],
            "one file, no part left"
        );
        println!(
            "cut after {sent} bytes sent; resumed from {held}; resent {} bytes",
            resent(sent, &report)
        );
        offerer.connection.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_by_the_connection_resumes_over_the_next_one() {
    proxim_testkit::within_for(TEST_TIMEOUT, "test", async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = random_file(src.path(), "photos.zip");

        // The first connection ends under the transfer (the receiving side closes it).
        let (offerer, answerer) = peer_common::connect().await;
        let closer = answerer.connection.clone();
        let mut results = receive_all(answerer, dst.path());
        let (cut_tx, mut cut_rx) = mpsc::unbounded_channel();
        let send = send_file(&offerer.connection, &path, move |p| {
            if p.bytes_done >= CUT_AT {
                let _ = cut_tx.send(p.bytes_done);
            }
        });
        tokio::pin!(send);
        let sent = tokio::select! {
            result = &mut send => panic!("cut too late: {result:?}"),
            sent = cut_rx.recv() => sent.expect("progress"),
        };
        closer.close().await;
        let error = peer_common::within("the send fails", send)
            .await
            .expect_err("the connection ended");
        assert!(error.can_resume(), "{error:?}");
        assert!(
            matches!(error, TransferError::ConnectionLost(_)),
            "{error:?}"
        );
        let failed = next_result(&mut results).await;
        assert!(
            failed.as_ref().is_err_and(TransferError::can_resume),
            "{failed:?}"
        );
        let parts = part_files(dst.path());
        assert_eq!(parts.len(), 1, "{:?}", files_in(dst.path()));
        let held = std::fs::metadata(&parts[0]).expect("part").len();
        assert!(held > 0);

        // A new connection (new peers: a restarted app), the same file sent again.
        let (offerer2, answerer2) = peer_common::connect().await;
        let mut results2 = receive_all(answerer2, dst.path());
        let report = send_file(&offerer2.connection, &path, |_| {})
            .await
            .expect("resumed send");
        let received = next_result(&mut results2).await.expect("received");
        assert_eq!(report.resumed_from, held);
        assert_eq!(received.resumed_from, held);
        assert_eq!(sha256_file(&received.path), sha256_file(&path));
        assert_eq!(files_in(dst.path()), ["photos.zip"]);
        println!(
            "cut after {sent} bytes sent; resumed from {held}; resent {} bytes",
            resent(sent, &report)
        );
        offerer.connection.close().await;
        offerer2.connection.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_file_that_differs_from_the_file_is_not_trusted() {
    proxim_testkit::within_for(TEST_TIMEOUT, "test", async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = random_file(src.path(), "notes.bin");
        let (offerer, answerer) = peer_common::connect().await;
        let mut results = receive_all(answerer, dst.path());

        send_and_cancel(&offerer.connection, &path).await;
        assert!(next_result(&mut results).await.is_err());
        // The part file is garbled (a disk that lost a write): its hash no longer matches.
        let part = part_files(dst.path()).pop().expect("part file");
        let mut held = std::fs::read(&part).expect("part");
        held[1000] ^= 0xff;
        std::fs::write(&part, &held).expect("test setup");

        let report = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect("send");
        let received = next_result(&mut results).await.expect("received");
        assert_eq!(report.resumed_from, 0, "sent whole");
        assert_eq!(received.resumed_from, 0);
        assert_eq!(sha256_file(&received.path), sha256_file(&path));
        assert_eq!(files_in(dst.path()), ["notes.bin"]);
        offerer.connection.close().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_again_after_it_arrived_is_confirmed_not_stored_twice() {
    proxim_testkit::within_for(TEST_TIMEOUT, "test", async {
        let src = tempfile::tempdir().expect("test setup");
        let dst = tempfile::tempdir().expect("test setup");
        let path = src.path().join("report.pdf");
        std::fs::write(&path, b"the quarterly report").expect("test setup");
        let (offerer, answerer) = peer_common::connect().await;
        let mut results = receive_all(answerer, dst.path());

        let first = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect("send");
        let stored = next_result(&mut results).await.expect("received");
        assert_eq!(first.resumed_from, 0);
        // The sender did not hear the ack (say) and sends again.
        let again = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect("send again");
        let confirmed = next_result(&mut results).await.expect("confirmed");
        assert_eq!(again.resumed_from, again.bytes);
        assert_eq!(again.sha256, first.sha256);
        assert_eq!(confirmed.path, stored.path);
        assert_eq!(files_in(dst.path()), ["report.pdf"], "stored once");

        // Another file under the same name is stored beside it, not confused with it.
        std::fs::write(&path, b"the corrected quarterly report").expect("test setup");
        let other = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect("send the new one");
        assert_eq!(other.resumed_from, 0);
        let stored2 = next_result(&mut results).await.expect("received");
        assert_eq!(files_in(dst.path()), ["report (1).pdf", "report.pdf"]);
        assert_eq!(
            std::fs::read(&stored2.path).expect("read"),
            b"the corrected quarterly report"
        );

        // Once the stored file is gone, the same content is received again.
        std::fs::remove_file(&stored2.path).expect("test setup");
        let resent = send_file(&offerer.connection, &path, |_| {})
            .await
            .expect("send after delete");
        assert_eq!(resent.resumed_from, 0);
        next_result(&mut results).await.expect("received");
        offerer.connection.close().await;
    })
    .await
}
