//! The signaling client: one WebSocket to the signaling server, kept alive.
//!
//! [`SignalingClient::connect`] opens the connection, says `hello` and resolves once the
//! server's `welcome` arrives. A driver task then owns the socket:
//! - it sends `ping` every `heartbeat_interval` and answers the server's `ping`s;
//! - when nothing at all arrives for `heartbeat_timeout`, or the socket fails, the connection
//!   is lost: every open session link gets [`LinkEvent::Lost`], the application gets
//!   [`SignalingEvent::Disconnected`], then [`SignalingEvent::Reconnecting`] before each attempt
//!   (delays from [`Backoff`]) and [`SignalingEvent::Reconnected`] once a new `welcome` arrives;
//! - server messages for a session opened with [`SignalingClient::open_session`] go to that
//!   session's [`SignalLink`]; everything else comes out of [`SignalingEvents::next`];
//! - malformed frames are logged, counted ([`SignalingClient::malformed_frames`]) and skipped.
//!
//! The protocol logic (handshake, heartbeats, backoff) is the sans-IO `SignalingSession`; the
//! driver is one task that `select!`s over commands, the socket, the connect attempt and the
//! machine's timer, and after every input drains all of the machine's outputs.
//!
//! `ws://` and `wss://` URLs are supported (`wss://` through rustls with the webpki roots).

mod driver;
mod session;

// The pieces of the client `proxim doctor` reuses for its one-shot hello/welcome check.
pub(crate) use driver::{Socket, open_websocket};
pub(crate) use session::{Output as SessionOutput, SignalingSession};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proxim_protocol::{
    ClientMessage, ConnectionId, DecodeError, ErrorCode, IceServer, ServerMessage, SessionId,
    Signal,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::link::SIGNAL_QUEUE;
use crate::{LinkEvent, SignalLink};

/// How many outgoing messages may wait for the socket before [`SignalingClient::send`] waits.
pub const OUTGOING_QUEUE: usize = 256;

/// How many events may wait for the application before the driver waits.
pub const EVENT_QUEUE: usize = 1024;

/// How to reach the signaling server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignalingConfig {
    /// The server's WebSocket URL, e.g. `ws://127.0.0.1:8787/ws`.
    pub url: String,
    /// Client software and version, sent in `hello` for the server's logs.
    pub client_name: String,
    /// How long opening the socket plus the hello/welcome exchange may take (each attempt).
    pub connect_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
}

impl SignalingConfig {
    /// Defaults: 10 s connect timeout, backoff 1 s × 1.5 up to 30 s, retrying forever.
    pub fn new(url: impl Into<String>) -> Self {
        SignalingConfig {
            url: url.into(),
            client_name: concat!("proxim-core/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

/// Exponential backoff between reconnect attempts, with jitter.
///
/// Attempt `n` waits a random time in `[(1 - jitter) × d, d]` where
/// `d = min(initial × factor^(n-1), max)` ([`Backoff::delay`]): clients that lost the same server
/// at the same instant (a restart, a crashed instance behind a load balancer) come back spread
/// over a window instead of all at once. `jitter: 0.0` is the old lockstep schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// Each further attempt waits this much longer than the previous one.
    pub factor: f64,
    /// The longest delay.
    pub max: Duration,
    /// Give up after this many failed attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
    /// The fraction of each delay that is random, `0.0..=1.0` (outside: clamped; NaN: 0).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            factor: 1.5,
            max: Duration::from_secs(30),
            max_attempts: None,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The longest delay before reconnect attempt `attempt` (1 is the first):
    /// `initial × factor^(attempt-1)`, capped at `max`. [`Backoff::jittered`] draws the one used.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = self.initial.as_secs_f64() * factor.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before attempt `attempt` for a uniform draw `u` in `[0, 1)`:
    /// `delay(attempt) × (1 - jitter × u)`.
    pub fn jittered(&self, attempt: u32, u: f64) -> Duration {
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        self.delay(attempt).mul_f64(1.0 - jitter * u)
    }
}

/// What the server said in its latest `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Server-assigned id of this connection.
    pub connection_id: ConnectionId,
    /// The ICE servers to use.
    pub ice_servers: Vec<IceServer>,
    /// How often the client sends `ping`.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is considered dead.
    pub heartbeat_timeout: Duration,
    /// The protocol version of the connection.
    pub version: u16,
}

/// Why the signaling connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalingError {
    /// The URL is not a valid WebSocket URL.
    #[error("invalid signaling URL: {0}")]
    InvalidUrl(String),
    /// The server could not be reached (refused, no route, timed out).
    #[error("signaling server unreachable: {0}")]
    Unreachable(String),
    /// The WebSocket or hello/welcome handshake failed.
    #[error("signaling handshake failed: {0}")]
    Handshake(String),
    /// The server sent something this client cannot understand.
    #[error("signaling protocol error: {0}")]
    Protocol(DecodeError),
    /// The server refused a request.
    #[error("signaling server error {code:?}: {message}")]
    Server {
        /// The machine-readable reason.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server speaks another protocol version.
    #[error("signaling server speaks unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// Nothing arrived from the server for the heartbeat timeout.
    #[error("signaling server went silent (heartbeat timeout)")]
    HeartbeatTimeout,
    /// The server said `bye`.
    #[error("signaling server closed the connection: {0}")]
    ServerBye(String),
    /// The socket failed or closed.
    #[error("signaling connection lost: {0}")]
    ConnectionLost(String),
    /// The client is between connections; try again after [`SignalingEvent::Reconnected`].
    #[error("not connected to the signaling server")]
    NotConnected,
    /// The client was closed.
    #[error("signaling client closed")]
    Closed,
}

/// What the signaling connection reports to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalingEvent {
    /// A server message not routed to a session link.
    Message(ServerMessage),
    /// The connection was lost; session links got [`LinkEvent::Lost`].
    Disconnected {
        /// Why.
        error: SignalingError,
    },
    /// Reconnect attempt `attempt` starts after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a loss.
        attempt: u32,
        /// How long until the attempt.
        delay: Duration,
    },
    /// The connection is back (a new connection id, sessions are gone).
    Reconnected(Welcome),
    /// The client is closed (by [`SignalingClient::close`], or reconnecting gave up after a
    /// [`SignalingEvent::Disconnected`]); no more events follow.
    Closed,
}

/// A handle to the signaling connection. Cheap to clone; the connection closes when
/// [`SignalingClient::close`] is called or the last handle (and every session link) is gone.
#[derive(Debug, Clone)]
pub struct SignalingClient {
    commands: mpsc::Sender<driver::Command>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// The first welcome; the driver keeps the latest in `shared`.
    first_welcome: Arc<Welcome>,
}

/// The application's stream of [`SignalingEvent`]s. Read it: when its queue is full the
/// connection stops reading from the server.
#[derive(Debug)]
pub struct SignalingEvents {
    rx: mpsc::Receiver<SignalingEvent>,
}

impl SignalingEvents {
    /// The next event; `None` once the client is closed. Cancel-safe.
    pub async fn next(&mut self) -> Option<SignalingEvent> {
        self.rx.recv().await
    }
}

impl SignalingClient {
    /// Connect and complete the hello/welcome handshake.
    ///
    /// The first connection does not retry: when the server cannot be reached this fails with
    /// [`SignalingError::Unreachable`] within `connect_timeout`.
    pub async fn connect(
        config: SignalingConfig,
    ) -> Result<(SignalingClient, SignalingEvents), SignalingError> {
        let (commands_tx, commands_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        let span = info_span!("signaling", url = %config.url);
        tokio::spawn(
            driver::run(config, commands_rx, events_tx, shared.clone(), ready_tx).instrument(span),
        );
        let welcome = ready_rx.await.map_err(|_| SignalingError::Closed)??;
        let client = SignalingClient {
            commands: commands_tx,
            shared,
            runtime: tokio::runtime::Handle::current(),
            first_welcome: Arc::new(welcome),
        };
        Ok((client, SignalingEvents { rx: events_rx }))
    }

    /// The latest welcome (it changes after a reconnect).
    pub fn welcome(&self) -> Welcome {
        lock(&self.shared.welcome)
            .clone()
            .unwrap_or_else(|| (*self.first_welcome).clone())
    }

    /// Queue a message for the server. Fails at once when the connection is down or closed;
    /// waits when the outgoing queue is full.
    pub async fn send(&self, msg: ClientMessage) -> Result<(), SignalingError> {
        if !self.shared.connected.load(Ordering::Acquire) {
            return Err(if self.commands.is_closed() {
                SignalingError::Closed
            } else {
                SignalingError::NotConnected
            });
        }
        self.commands
            .send(driver::Command::Send(msg))
            .await
            .map_err(|_| SignalingError::Closed)
    }

    /// Route one session's signals to a new [`SignalLink`]: server `signal`s for it arrive as
    /// [`LinkEvent::Signal`], `session_ended` as [`LinkEvent::Ended`], a lost connection as
    /// [`LinkEvent::Lost`]. Signals sent on the link go out as `signal {session}`.
    ///
    /// Signals that arrived after an accepted `pair_result` for this session but before this
    /// call are delivered first, in order.
    pub fn open_session(&self, session: SessionId) -> SignalLink {
        let incoming = {
            let mut routes = lock(&self.shared.routes);
            let claimed = routes
                .get_mut(&session)
                .and_then(|route| route.unclaimed.take().map(|rx| (rx, route.ended)));
            match claimed {
                Some((rx, ended)) => {
                    if ended {
                        routes.remove(&session);
                    }
                    rx
                }
                None => {
                    let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
                    routes.insert(
                        session.clone(),
                        Route {
                            tx,
                            unclaimed: None,
                            ended: false,
                            token: None,
                            suspended: false,
                        },
                    );
                    rx
                }
            }
        };
        let (outgoing, outgoing_rx) = mpsc::channel(SIGNAL_QUEUE);
        let commands = self.commands.clone();
        let span = info_span!("session-link", session = %short(&session));
        self.runtime.spawn(
            forward_outgoing(session, outgoing_rx, commands, self.shared.clone()).instrument(span),
        );
        SignalLink { outgoing, incoming }
    }

    /// Stop routing a session and tell the server this client `leave`s it.
    pub fn close_session(&self, session: &SessionId) {
        lock(&self.shared.routes).remove(session);
        if !self.shared.connected.load(Ordering::Acquire) {
            return;
        }
        let leave = ClientMessage::Leave {
            session: session.clone(),
        };
        if let Err(error) = self.commands.try_send(driver::Command::Send(leave)) {
            warn!(session = %short(session), %error, "could not queue leave");
        }
    }

    /// Say `bye` and close the connection. Idempotent; resolves once the socket is closed.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .commands
            .send(driver::Command::Close(done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    /// The network may have changed under the connection (an app's network callback): check
    /// it now. Open: anything must come back from the server `within` (a `ping` goes out), or
    /// the connection counts as lost and reconnecting starts (sessions resume on the new one).
    /// Waiting to reconnect: the attempt starts now. Without this, a socket whose network
    /// vanished is noticed only at the heartbeat timeout.
    pub fn probe(&self, within: Duration) {
        if self
            .commands
            .try_send(driver::Command::Probe(within))
            .is_err()
        {
            debug!("probe not queued: the client is closed or busy");
        }
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How many malformed or unexpected frames from the server were skipped so far.
    pub fn malformed_frames(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }
}

/// State the handles and the driver share. Locks are never held across an await.
#[derive(Debug, Default)]
struct Shared {
    welcome: Mutex<Option<Welcome>>,
    routes: Mutex<HashMap<SessionId, Route>>,
    connected: AtomicBool,
    malformed: AtomicU64,
}

/// Where one session's incoming events go.
#[derive(Debug)]
struct Route {
    tx: mpsc::Sender<LinkEvent>,
    /// This member's `session_token`: the session can be resumed after a reconnect.
    token: Option<proxim_protocol::ResumeToken>,
    /// The connection dropped and the session waits to be resumed: its signals are dropped.
    suspended: bool,
    /// The receiving end, until `open_session` claims it (signals are buffered meanwhile).
    unclaimed: Option<mpsc::Receiver<LinkEvent>>,
    /// The session ended while unclaimed: `open_session` hands out the buffer (ending with
    /// `Ended`) and drops the route.
    ended: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Session ids are secrets of a sort: logs show a prefix.
fn short(session: &SessionId) -> &str {
    session.as_str().get(..8).unwrap_or("?")
}

/// Wrap a link's outgoing signals as `signal {session}` messages.
async fn forward_outgoing(
    session: SessionId,
    mut outgoing: mpsc::Receiver<Signal>,
    commands: mpsc::Sender<driver::Command>,
    shared: Arc<Shared>,
) {
    while let Some(signal) = outgoing.recv().await {
        let suspended = lock(&shared.routes)
            .get(&session)
            .is_some_and(|r| r.suspended);
        if suspended || !shared.connected.load(Ordering::Acquire) {
            debug!("signal dropped: not connected");
            continue;
        }
        let message = ClientMessage::Signal {
            session: session.clone(),
            signal,
        };
        if commands.send(driver::Command::Send(message)).await.is_err() {
            return;
        }
    }
    debug!("link's sender dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_and_caps() {
        let backoff = Backoff::default();
        let secs: Vec<f64> = (1..=12).map(|a| backoff.delay(a).as_secs_f64()).collect();
        let expected = [
            1.0,
            1.5,
            2.25,
            3.375,
            5.0625,
            7.59375,
            11.390625,
            17.0859375,
            25.62890625,
            30.0,
            30.0,
            30.0,
        ];
        for (got, want) in secs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{secs:?}");
        }
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(backoff.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn a_nonsense_factor_means_constant_delay() {
        let backoff = Backoff {
            factor: f64::NAN,
            ..Backoff::default()
        };
        assert_eq!(backoff.delay(5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_draws_within_the_window_below_the_ceiling() {
        let backoff = Backoff::default();
        for attempt in [1, 2, 5, 12] {
            let ceiling = backoff.delay(attempt);
            assert_eq!(backoff.jittered(attempt, 0.0), ceiling);
            assert_eq!(backoff.jittered(attempt, 1.0), ceiling / 2);
            let mid = backoff.jittered(attempt, 0.5);
            assert!(mid > ceiling / 2 && mid < ceiling, "{mid:?} of {ceiling:?}");
        }
        let lockstep = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(lockstep.jittered(3, 0.9), lockstep.delay(3));
        // Nonsense is clamped, never a panic or a negative delay.
        for (jitter, u) in [
            (f64::NAN, 0.5),
            (7.0, 0.5),
            (-1.0, 0.5),
            (0.5, f64::NAN),
            (0.5, 9.0),
        ] {
            let b = Backoff {
                jitter,
                ..Backoff::default()
            };
            let d = b.jittered(1, u);
            assert!(d <= Duration::from_secs(1), "{jitter} {u}: {d:?}");
        }
        assert_eq!(
            Backoff {
                jitter: 7.0,
                ..Backoff::default()
            }
            .jittered(1, 1.0),
            Duration::ZERO
        );
    }
}
