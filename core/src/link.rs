//! [`SignalLink`]: the peer's view of the signaling channel for one pairing session.
//!
//! The signaling client demultiplexes the WebSocket by session and hands each peer one link:
//! signals the peer produces go out on it, signals from the other device come in on it. Tests of
//! the peer layer wire two links back to back with [`SignalLink::pair`], with no server at all.

use proxim_protocol::{SessionEndReason, Signal};
use tokio::sync::mpsc;

/// How many signals may wait in either direction before the sender waits.
pub const SIGNAL_QUEUE: usize = 256;

/// What arrives on a [`SignalLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A signal from the other device.
    Signal(Signal),
    /// The server says the other device left the session.
    Ended(SessionEndReason),
    /// The signaling connection is gone (it may come back; the session does not).
    Lost,
    /// The signaling connection dropped; the client reconnects and resumes the session (an
    /// accepted one: the server keeps it for a grace period). Signals sent meanwhile are
    /// dropped. [`LinkEvent::Resumed`] follows, or [`LinkEvent::Ended`]/[`LinkEvent::Lost`].
    Interrupted,
    /// The session is back on a new signaling connection: signals flow again.
    Resumed,
    /// Fresh ICE servers from the signaling server (the new connection's `welcome`, before
    /// [`LinkEvent::Resumed`]): TURN credentials for relays allocated from now on, when those
    /// handed out at the start may have expired (`TURN_TTL`).
    IceServers(Vec<proxim_protocol::IceServer>),
    /// The server says the other device started afresh (a new process) while its old
    /// connection is away: a hint that the path to it is dead if it is silent.
    PeerRestarted,
}

/// One session's signaling channel, as seen by a peer.
#[derive(Debug)]
pub struct SignalLink {
    /// Signals for the other device.
    pub outgoing: mpsc::Sender<Signal>,
    /// Signals and session events from the other device.
    pub incoming: mpsc::Receiver<LinkEvent>,
}

impl SignalLink {
    /// Two links wired back to back in memory: what one sends, the other receives.
    pub fn pair() -> (SignalLink, SignalLink) {
        let (a_out, a_out_rx) = mpsc::channel::<Signal>(SIGNAL_QUEUE);
        let (b_out, b_out_rx) = mpsc::channel::<Signal>(SIGNAL_QUEUE);
        let (a_in_tx, a_in) = mpsc::channel::<LinkEvent>(SIGNAL_QUEUE);
        let (b_in_tx, b_in) = mpsc::channel::<LinkEvent>(SIGNAL_QUEUE);
        tokio::spawn(forward(a_out_rx, b_in_tx));
        tokio::spawn(forward(b_out_rx, a_in_tx));
        (
            SignalLink {
                outgoing: a_out,
                incoming: a_in,
            },
            SignalLink {
                outgoing: b_out,
                incoming: b_in,
            },
        )
    }
}

/// Forward one side's outgoing signals to the other side; when the sender goes, say it left.
async fn forward(mut from: mpsc::Receiver<Signal>, to: mpsc::Sender<LinkEvent>) {
    while let Some(signal) = from.recv().await {
        if to.send(LinkEvent::Signal(signal)).await.is_err() {
            return;
        }
    }
    let _ = to.send(LinkEvent::Ended(SessionEndReason::PeerLeft)).await;
}
