#![allow(clippy::unwrap_used)]
//! The peer driver's fingerprint binding: with an authenticated fingerprint set, a remote SDP
//! naming any other fingerprint is refused as an interception, and an SDP that names the right
//! fingerprint over a different DTLS certificate fails in DTLS (rtc checks the certificate).

mod peer_common;

use std::time::Duration;

use peer_common::{TappedLink, config, connect_with, tapped_link, within};
use proxim_core::SignalLink;
use proxim_core::link::LinkEvent;
use proxim_core::peer::{PeerConnection, PeerError, PeerRole, generate_certificate};
use proxim_protocol::{Sdp, Signal};
use proxim_testkit::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticated_fingerprints_connect() {
    init_tracing();
    let (cert_a, fp_a) = generate_certificate().unwrap();
    let (cert_b, fp_b) = generate_certificate().unwrap();
    assert_ne!(fp_a, fp_b);
    let mut a = config(PeerRole::Offerer, vec![]);
    a.certificate = Some(cert_a);
    a.expected_remote_fingerprint = Some(fp_b);
    let mut b = config(PeerRole::Answerer, vec![]);
    b.certificate = Some(cert_b);
    b.expected_remote_fingerprint = Some(fp_a);
    let (x, y, _) = connect_with(a, b).await.expect("connects");
    x.connection.close().await;
    y.connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_fingerprint_in_the_answer_is_an_interception() {
    init_tracing();
    let (_, someone_else) = generate_certificate().unwrap();
    let mut a = config(PeerRole::Offerer, vec![]);
    a.expected_remote_fingerprint = Some(someone_else);
    let b = config(PeerRole::Answerer, vec![]);
    let (a_link, b_link) = SignalLink::pair();
    let (x, _y) = within("both sides end", async {
        tokio::join!(
            PeerConnection::establish(a, a_link),
            PeerConnection::establish(b, b_link)
        )
    })
    .await;
    match x {
        Err(PeerError::Intercepted(reason)) => {
            assert!(reason.contains("not the one it authenticated"), "{reason}");
        }
        other => panic!("expected an interception, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_fingerprint_in_the_offer_is_an_interception() {
    init_tracing();
    let (_, someone_else) = generate_certificate().unwrap();
    let a = config(PeerRole::Offerer, vec![]);
    let mut b = config(PeerRole::Answerer, vec![]);
    b.expected_remote_fingerprint = Some(someone_else);
    let (a_link, b_link) = SignalLink::pair();
    let (_x, y) = within("both sides end", async {
        tokio::join!(
            PeerConnection::establish(a, a_link),
            PeerConnection::establish(b, b_link)
        )
    })
    .await;
    assert!(
        matches!(y, Err(PeerError::Intercepted(_))),
        "{:?}",
        y.map(|_| ())
    );
}

/// A man in the middle rewrites the offer's fingerprint to the one the answerer expects, but
/// the offerer's DTLS certificate is another: the DTLS handshake must fail, never connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_sdp_over_another_certificate_fails_in_dtls() {
    init_tracing();
    let (_, claimed) = generate_certificate().unwrap();
    let (real, real_fp) = generate_certificate().unwrap();
    let mut a = config(PeerRole::Offerer, vec![]);
    a.certificate = Some(real);
    a.connect_timeout = Duration::from_secs(4);
    let mut b = config(PeerRole::Answerer, vec![]);
    b.expected_remote_fingerprint = Some(claimed);
    b.connect_timeout = Duration::from_secs(4);

    // a -> (rewrite) -> b, b -> a untouched.
    let TappedLink {
        link: a_link,
        sent: mut a_out_rx,
        deliver: a_in_tx,
    } = tapped_link();
    let TappedLink {
        link: b_link,
        sent: mut b_out_rx,
        deliver: b_in_tx,
    } = tapped_link();
    let (real_value, claimed_value) = (real_fp.to_sdp_value(), claimed.to_sdp_value());
    tokio::spawn(async move {
        while let Some(signal) = a_out_rx.recv().await {
            let signal = match signal {
                Signal::Offer { sdp } => {
                    let rewritten = sdp.as_str().replace(&real_value, &claimed_value);
                    assert_ne!(rewritten, sdp.as_str(), "the offer names the certificate");
                    Signal::Offer {
                        sdp: Sdp::new(rewritten).unwrap(),
                    }
                }
                other => other,
            };
            if b_in_tx.send(LinkEvent::Signal(signal)).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(signal) = b_out_rx.recv().await {
            if a_in_tx.send(LinkEvent::Signal(signal)).await.is_err() {
                return;
            }
        }
    });
    let (x, y) = within("both sides end", async {
        tokio::join!(
            PeerConnection::establish(a, a_link),
            PeerConnection::establish(b, b_link)
        )
    })
    .await;
    assert!(
        y.is_err(),
        "the answerer connected to the wrong certificate"
    );
    assert!(
        x.is_err(),
        "the offerer connected through a rewritten offer"
    );
}
