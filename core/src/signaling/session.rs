//! [`SignalingSession`]: the sans-IO half of the signaling client.
//!
//! It knows the connection's life — open a socket, say `hello`, wait for `welcome`, send
//! heartbeats, notice silence, back off and try again — but owns no socket and no clock. The
//! driver feeds it what happened (socket opened, frame received, socket closed, time passed)
//! and carries out what it asks for ([`Output`] and [`SignalingSession::poll_transmit`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use proxim_protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage, ShortText};
use tracing::{debug, info, warn};

use super::{Backoff, SignalingError, Welcome};

/// The shortest heartbeat interval accepted from a server, so a bad welcome cannot make the
/// client spin.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// What the driver must do or report, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Open a new socket now, then call `handle_connected` or `handle_connect_failed`.
    Connect,
    /// The handshake completed; `reconnected` is false for the first connection.
    Opened { welcome: Welcome, reconnected: bool },
    /// A message for the application (or a session link).
    Message(ServerMessage),
    /// The open connection is lost; drop the socket.
    Lost(SignalingError),
    /// The next attempt starts after `delay`.
    Reconnecting { attempt: u32, delay: Duration },
    /// The machine gave up (first connection failed, version mismatch, attempts exhausted);
    /// drop the socket and stop.
    Failed(SignalingError),
}

/// The connection's state. Each variant owns what only it needs.
#[derive(Debug)]
enum State {
    /// The driver is opening socket number `attempt` (0 is the first connection).
    Connecting { attempt: u32 },
    /// `hello` is sent; `welcome` must arrive before `deadline`.
    AwaitingWelcome { attempt: u32, deadline: Instant },
    /// The connection is up.
    Open {
        welcome: Welcome,
        /// When anything last arrived from the server.
        last_rx: Instant,
        /// When the next `ping` is due.
        next_ping: Instant,
    },
    /// Waiting before reconnect attempt `attempt`.
    Waiting { attempt: u32, until: Instant },
    /// Closed for good.
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Connecting { .. } => "connecting",
            State::AwaitingWelcome { .. } => "awaiting-welcome",
            State::Open { .. } => "open",
            State::Waiting { .. } => "waiting",
            State::Closed => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Connecting { attempt } | State::Waiting { attempt, .. } => {
                write!(f, "{}(attempt {attempt})", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// The sans-IO signaling connection: hello/welcome, heartbeats, reconnect backoff.
#[derive(Debug)]
pub(crate) struct SignalingSession {
    state: State,
    client_name: ShortText,
    connect_timeout: Duration,
    backoff: Backoff,
    next_seq: u64,
    malformed: u64,
    transmits: VecDeque<ClientMessage>,
    outputs: VecDeque<Output>,
    /// A probe is out (see [`SignalingSession::probe`]): something must arrive by then.
    probe_deadline: Option<Instant>,
    /// When to ask for fresh ICE servers (see [`SignalingSession::schedule_ice_refresh`]).
    ice_refresh_at: Option<Instant>,
}

impl SignalingSession {
    /// A machine about to open its first connection (it asks for [`Output::Connect`]).
    pub(crate) fn new(client_name: &str, connect_timeout: Duration, backoff: Backoff) -> Self {
        let mut outputs = VecDeque::new();
        outputs.push_back(Output::Connect);
        SignalingSession {
            state: State::Connecting { attempt: 0 },
            client_name: ShortText::truncated(client_name),
            connect_timeout,
            backoff,
            next_seq: 1,
            malformed: 0,
            transmits: VecDeque::new(),
            outputs,
            probe_deadline: None,
            ice_refresh_at: None,
        }
    }

    /// Ask for fresh ICE servers (`refresh_ice_servers`) at `at`, while the connection is
    /// open: the driver reads the TURN credentials' expiry off the latest ICE servers. A lost
    /// connection forgets it (the next `welcome` brings fresh ones).
    pub(crate) fn schedule_ice_refresh(&mut self, at: Instant) {
        self.ice_refresh_at = Some(at);
    }

    /// The network may have changed under the connection (the app says so): check it now
    /// instead of at the heartbeat timeout. Open: a `ping` goes out at once and anything from
    /// the server must arrive `within`, or the connection counts as lost and a reconnect
    /// starts. Waiting to reconnect: the attempt starts now.
    pub(crate) fn probe(&mut self, now: Instant, within: Duration) {
        match self.state {
            State::Open { .. } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.transmits.push_back(ClientMessage::Ping { seq });
                self.probe_deadline = Some(now + within);
                debug!(?within, "probing the signaling connection");
            }
            State::Waiting { attempt, .. } => {
                self.outputs.push_back(Output::Connect);
                self.transition(State::Connecting { attempt }, "probe: reconnect now");
            }
            _ => {}
        }
    }

    /// The socket opened: say hello and wait for the welcome.
    pub(crate) fn handle_connected(&mut self, now: Instant) {
        let State::Connecting { attempt } = self.state else {
            debug!(state = %self.state, "socket opened in an unexpected state; ignored");
            return;
        };
        self.transmits.push_back(ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            client: self.client_name.clone(),
        });
        self.transition(
            State::AwaitingWelcome {
                attempt,
                deadline: now + self.connect_timeout,
            },
            "socket open, hello sent",
        );
    }

    /// Opening the socket failed.
    pub(crate) fn handle_connect_failed(&mut self, now: Instant, error: SignalingError) {
        let State::Connecting { attempt } = self.state else {
            debug!(state = %self.state, "connect failure in an unexpected state; ignored");
            return;
        };
        self.attempt_failed(now, attempt, error);
    }

    /// A text frame arrived.
    pub(crate) fn handle_frame(&mut self, now: Instant, frame: &str) {
        self.probe_deadline = None;
        let message = match ServerMessage::decode(frame) {
            Ok(message) => message,
            Err(error) => {
                self.malformed += 1;
                warn!(%error, malformed = self.malformed, "skipping malformed server frame");
                self.handle_activity(now);
                return;
            }
        };
        self.handle_message(now, message);
    }

    /// A frame that carries no message arrived (WebSocket ping/pong): the server is alive.
    pub(crate) fn handle_activity(&mut self, now: Instant) {
        self.probe_deadline = None;
        if let State::Open { last_rx, .. } = &mut self.state {
            *last_rx = now;
        }
    }

    /// A frame that is not part of the protocol (a binary frame) arrived.
    pub(crate) fn handle_unexpected_frame(&mut self, now: Instant, what: &str) {
        self.malformed += 1;
        warn!(
            what,
            malformed = self.malformed,
            "skipping unexpected server frame"
        );
        self.handle_activity(now);
    }

    /// The socket closed or failed.
    pub(crate) fn handle_socket_closed(&mut self, now: Instant, error: SignalingError) {
        match self.state {
            State::AwaitingWelcome { attempt, .. } => self.attempt_failed(now, attempt, error),
            State::Open { .. } => self.lose(now, error),
            _ => debug!(state = %self.state, %error, "socket closed in a state without one"),
        }
    }

    /// Time passed: handshake deadline, heartbeats, silence, backoff.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.probe_deadline.is_some_and(|at| now >= at) {
            self.probe_deadline = None;
            if matches!(self.state, State::Open { .. }) {
                warn!("no answer to a probe: the connection is gone");
                self.lose(now, SignalingError::HeartbeatTimeout);
                // The network changed under it, not the server: reconnect without the backoff.
                if let State::Waiting { attempt, .. } = self.state {
                    self.outputs.push_back(Output::Connect);
                    self.transition(State::Connecting { attempt }, "probe failed: reconnect now");
                }
                return;
            }
        }
        if matches!(self.state, State::Open { .. })
            && self.ice_refresh_at.is_some_and(|at| now >= at)
        {
            self.ice_refresh_at = None;
            info!("asking for fresh ICE servers (the TURN credentials expire soon)");
            self.transmits.push_back(ClientMessage::RefreshIceServers);
        }
        match &mut self.state {
            State::AwaitingWelcome { attempt, deadline } if now >= *deadline => {
                let attempt = *attempt;
                self.attempt_failed(
                    now,
                    attempt,
                    SignalingError::Handshake("no welcome before the connect timeout".into()),
                );
            }
            State::Open {
                welcome,
                last_rx,
                next_ping,
            } => {
                if now >= *last_rx + welcome.heartbeat_timeout {
                    let silent = now - *last_rx;
                    warn!(?silent, "server went silent");
                    self.lose(now, SignalingError::HeartbeatTimeout);
                    return;
                }
                if now >= *next_ping {
                    let interval = welcome.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
                    // Skip missed beats rather than sending a burst.
                    while *next_ping <= now {
                        *next_ping += interval;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.transmits.push_back(ClientMessage::Ping { seq });
                }
            }
            State::Waiting { attempt, until } if now >= *until => {
                let attempt = *attempt;
                self.outputs.push_back(Output::Connect);
                self.transition(State::Connecting { attempt }, "backoff elapsed");
            }
            _ => {}
        }
    }

    /// Close for good: say bye if connected.
    pub(crate) fn close(&mut self, reason: &str) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if matches!(
            self.state,
            State::Open { .. } | State::AwaitingWelcome { .. }
        ) {
            self.transmits.push_back(ClientMessage::Bye {
                reason: Some(ShortText::truncated(reason)),
            });
        }
        self.transition(State::Closed, reason);
    }

    /// The next message to write on the socket.
    pub(crate) fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do or report.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`SignalingSession::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingWelcome { deadline, .. } => Some(*deadline),
            State::Open {
                welcome,
                last_rx,
                next_ping,
            } => {
                let heartbeat = (*next_ping).min(*last_rx + welcome.heartbeat_timeout);
                [self.probe_deadline, self.ice_refresh_at]
                    .into_iter()
                    .flatten()
                    .chain([heartbeat])
                    .min()
            }
            State::Waiting { until, .. } => Some(*until),
            State::Connecting { .. } | State::Closed => None,
        }
    }

    /// Whether the connection is up (welcome received).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Whether the machine needs a socket (handshaking or open).
    pub(crate) fn wants_socket(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingWelcome { .. } | State::Open { .. }
        )
    }

    /// Whether the machine is closed for good.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// How many malformed or unexpected frames were skipped.
    pub(crate) fn malformed_frames(&self) -> u64 {
        self.malformed
    }

    fn handle_message(&mut self, now: Instant, message: ServerMessage) {
        match (&mut self.state, message) {
            (_, ServerMessage::Ping { seq }) => {
                self.handle_activity(now);
                self.transmits.push_back(ClientMessage::Pong { seq });
            }
            (State::Open { last_rx, .. }, ServerMessage::Pong { .. }) => *last_rx = now,
            (
                State::AwaitingWelcome { attempt, .. },
                ServerMessage::Welcome {
                    version,
                    connection_id,
                    ice_servers,
                    heartbeat_interval_ms,
                    heartbeat_timeout_ms,
                },
            ) => {
                let attempt = *attempt;
                if version != PROTOCOL_VERSION {
                    warn!(
                        server = version,
                        ours = PROTOCOL_VERSION,
                        "unsupported version"
                    );
                    self.transmits.push_back(ClientMessage::Bye {
                        reason: Some(ShortText::truncated("unsupported protocol version")),
                    });
                    self.fail(SignalingError::UnsupportedVersion(version));
                    return;
                }
                let heartbeat_interval =
                    Duration::from_millis(heartbeat_interval_ms).max(MIN_HEARTBEAT_INTERVAL);
                let heartbeat_timeout =
                    Duration::from_millis(heartbeat_timeout_ms).max(heartbeat_interval);
                let welcome = Welcome {
                    connection_id,
                    ice_servers,
                    heartbeat_interval,
                    heartbeat_timeout,
                    version,
                };
                info!(connection = %welcome.connection_id, ?heartbeat_interval, "welcome");
                self.outputs.push_back(Output::Opened {
                    welcome: welcome.clone(),
                    reconnected: attempt > 0,
                });
                self.transition(
                    State::Open {
                        welcome,
                        last_rx: now,
                        next_ping: now + heartbeat_interval,
                    },
                    "welcome received",
                );
            }
            (State::AwaitingWelcome { attempt, .. }, ServerMessage::Error { code, message }) => {
                let attempt = *attempt;
                self.attempt_failed(
                    now,
                    attempt,
                    SignalingError::Server {
                        code,
                        message: message.into_string(),
                    },
                );
            }
            (State::Open { last_rx, .. }, ServerMessage::Bye { reason }) => {
                *last_rx = now;
                let reason = reason.map(ShortText::into_string).unwrap_or_default();
                self.lose(now, SignalingError::ServerBye(reason));
            }
            (State::Open { last_rx, .. }, message) => {
                *last_rx = now;
                self.outputs.push_back(Output::Message(message));
            }
            (state, message) => {
                debug!(state = %state, kind = message.kind(), "message ignored in this state");
            }
        }
    }

    /// The open connection is gone: report it and schedule the first reconnect attempt.
    fn lose(&mut self, now: Instant, error: SignalingError) {
        self.ice_refresh_at = None;
        self.outputs.push_back(Output::Lost(error.clone()));
        self.schedule(now, 1, error);
    }

    /// Connection attempt `attempt` failed before the welcome.
    fn attempt_failed(&mut self, now: Instant, attempt: u32, error: SignalingError) {
        if attempt == 0 {
            // The first connection never retries: the caller hears about it at once.
            self.fail(error);
        } else {
            debug!(attempt, %error, "reconnect attempt failed");
            self.schedule(now, attempt.saturating_add(1), error);
        }
    }

    /// Wait before attempt `attempt`, unless the attempts are exhausted.
    fn schedule(&mut self, now: Instant, attempt: u32, error: SignalingError) {
        if matches!(error, SignalingError::UnsupportedVersion(_)) {
            self.fail(error);
            return;
        }
        if self.backoff.max_attempts.is_some_and(|max| attempt > max) {
            warn!(attempts = attempt - 1, "giving up reconnecting");
            self.fail(error);
            return;
        }
        let delay = self.backoff.jittered(attempt, rand::random::<f64>());
        self.outputs
            .push_back(Output::Reconnecting { attempt, delay });
        self.transition(
            State::Waiting {
                attempt,
                until: now + delay,
            },
            &error.to_string(),
        );
    }

    fn fail(&mut self, error: SignalingError) {
        let reason = error.to_string();
        self.outputs.push_back(Output::Failed(error));
        self.transition(State::Closed, &reason);
    }

    /// The one place the state changes.
    fn transition(&mut self, new: State, reason: &str) {
        self.probe_deadline = None;
        let old = std::mem::replace(&mut self.state, new);
        info!("signaling {old} -> {} ({reason})", self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxim_protocol::{ConnectionId, ErrorCode};

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(5),
            max_attempts: Some(3),
            jitter: 0.0,
        }
    }

    fn welcome_frame(version: u16) -> String {
        ServerMessage::Welcome {
            version,
            connection_id: ConnectionId::new("0123456789abcdef0123456789abcdef").unwrap(),
            ice_servers: vec![],
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 3000,
        }
        .encode()
    }

    fn outputs(s: &mut SignalingSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn transmits(s: &mut SignalingSession) -> Vec<ClientMessage> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    /// A machine that completed its first handshake at `t0`.
    fn open(t0: Instant) -> SignalingSession {
        let mut s = SignalingSession::new("test/1", Duration::from_secs(10), backoff());
        assert!(matches!(outputs(&mut s)[..], [Output::Connect]));
        s.handle_connected(t0);
        assert!(matches!(
            transmits(&mut s)[..],
            [ClientMessage::Hello { version: 1, .. }]
        ));
        s.handle_frame(t0, &welcome_frame(PROTOCOL_VERSION));
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Opened {
                reconnected: false,
                ..
            }]
        ));
        assert!(s.is_open());
        s
    }

    #[test]
    fn an_unanswered_probe_loses_the_connection_within_its_bound_an_answered_one_nothing() {
        let t0 = Instant::now();
        // Answered: a ping at once, the pong clears it, the heartbeat schedule is as before.
        let mut s = open(t0);
        s.probe(t0, Duration::from_millis(500));
        assert!(matches!(
            transmits(&mut s)[..],
            [ClientMessage::Ping { .. }]
        ));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        s.handle_frame(t0 + Duration::from_millis(20), r#"{"type":"pong","seq":1}"#);
        s.handle_timeout(t0 + Duration::from_millis(500));
        assert!(s.is_open());
        assert!(outputs(&mut s).is_empty());
        // Unanswered: lost at the bound (not at the 3 s heartbeat timeout), reconnecting.
        let mut s = open(t0);
        s.probe(t0, Duration::from_millis(500));
        s.handle_timeout(t0 + Duration::from_millis(499));
        assert!(s.is_open());
        s.handle_timeout(t0 + Duration::from_millis(500));
        assert!(!s.is_open());
        let out = outputs(&mut s);
        assert!(matches!(out[0], Output::Lost(_)), "{out:?}");
        assert!(
            matches!(out[1], Output::Reconnecting { attempt: 1, .. }),
            "{out:?}"
        );
        // … at once: the network changed, not the server.
        assert!(matches!(out[2], Output::Connect), "{out:?}");
        // A probe while waiting to reconnect (after a loss the heartbeat found): now too.
        let mut s = open(t0);
        s.handle_timeout(t0 + Duration::from_secs(3));
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Lost(_), Output::Reconnecting { .. }]
        ));
        s.probe(t0 + Duration::from_secs(3), Duration::from_millis(500));
        assert!(matches!(outputs(&mut s)[..], [Output::Connect]));
    }

    #[test]
    fn hello_welcome_then_pings_on_the_interval() {
        let t0 = Instant::now();
        let mut s = open(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        s.handle_timeout(t0 + Duration::from_millis(999));
        assert!(transmits(&mut s).is_empty());
        s.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(transmits(&mut s), vec![ClientMessage::Ping { seq: 1 }]);
        // The pong keeps the connection alive past the heartbeat timeout.
        s.handle_frame(t0 + Duration::from_secs(2), r#"{"type":"pong","seq":1}"#);
        s.handle_timeout(t0 + Duration::from_millis(3500));
        assert!(s.is_open());
        let sent = transmits(&mut s);
        assert_eq!(
            sent,
            vec![ClientMessage::Ping { seq: 2 }],
            "one ping, no burst"
        );
    }

    #[test]
    fn fresh_ice_servers_are_asked_for_when_scheduled_and_only_while_open() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = open(t0);
        transmits(&mut s);
        s.schedule_ice_refresh(t0 + ms(2000));
        assert!(s.poll_timeout().is_some_and(|t| t <= t0 + ms(2000)));
        let refreshes = |s: &mut SignalingSession| {
            transmits(s)
                .iter()
                .filter(|m| **m == ClientMessage::RefreshIceServers)
                .count()
        };
        s.handle_timeout(t0 + ms(1500));
        assert_eq!(refreshes(&mut s), 0, "not yet");
        s.handle_timeout(t0 + ms(2000));
        assert_eq!(refreshes(&mut s), 1);
        s.handle_timeout(t0 + ms(2500));
        assert_eq!(refreshes(&mut s), 0, "once");

        // A lost connection forgets it: the next welcome brings fresh servers anyway.
        s.schedule_ice_refresh(t0 + ms(20_000));
        s.handle_socket_closed(t0 + ms(2600), SignalingError::ConnectionLost("gone".into()));
        assert_eq!(s.ice_refresh_at, None);
    }

    #[test]
    fn server_ping_is_answered() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.handle_frame(t0, r#"{"type":"ping","seq":42}"#);
        assert_eq!(transmits(&mut s), vec![ClientMessage::Pong { seq: 42 }]);
        assert!(outputs(&mut s).is_empty(), "pings are not for the app");
    }

    #[test]
    fn silence_is_a_loss_then_backoff_grows_then_gives_up() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.handle_timeout(t0 + Duration::from_secs(3));
        let out = outputs(&mut s);
        assert!(matches!(
            out[0],
            Output::Lost(SignalingError::HeartbeatTimeout)
        ));
        assert!(
            matches!(out[1], Output::Reconnecting { attempt: 1, delay } if delay == Duration::from_secs(1))
        );
        let t1 = t0 + Duration::from_secs(4);
        s.handle_timeout(t1);
        assert!(matches!(outputs(&mut s)[..], [Output::Connect]));
        s.handle_connect_failed(t1, SignalingError::Unreachable("refused".into()));
        assert!(
            matches!(outputs(&mut s)[..], [Output::Reconnecting { attempt: 2, delay }] if delay == Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(2);
        s.handle_timeout(t2);
        assert!(matches!(outputs(&mut s)[..], [Output::Connect]));
        s.handle_connected(t2);
        // No welcome within the connect timeout: attempt 3.
        s.handle_timeout(t2 + Duration::from_secs(10));
        assert!(
            matches!(outputs(&mut s)[..], [Output::Reconnecting { attempt: 3, delay }] if delay == Duration::from_secs(4))
        );
        let t3 = t2 + Duration::from_secs(14);
        s.handle_timeout(t3);
        outputs(&mut s);
        s.handle_connect_failed(t3, SignalingError::Unreachable("refused".into()));
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Failed(SignalingError::Unreachable(_))]
        ));
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn reconnect_reports_reconnected() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.handle_socket_closed(t0, SignalingError::ConnectionLost("reset".into()));
        outputs(&mut s);
        s.handle_timeout(t0 + Duration::from_secs(1));
        s.handle_connected(t0 + Duration::from_secs(1));
        s.handle_frame(
            t0 + Duration::from_secs(1),
            &welcome_frame(PROTOCOL_VERSION),
        );
        let out = outputs(&mut s);
        assert!(matches!(
            out[..],
            [
                Output::Connect,
                Output::Opened {
                    reconnected: true,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn first_connection_failure_does_not_retry() {
        let t0 = Instant::now();
        let mut s = SignalingSession::new("test/1", Duration::from_secs(10), backoff());
        outputs(&mut s);
        s.handle_connect_failed(t0, SignalingError::Unreachable("refused".into()));
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Failed(SignalingError::Unreachable(_))]
        ));
        assert!(s.is_closed());
    }

    #[test]
    fn wrong_version_and_server_errors_fail_the_handshake() {
        let t0 = Instant::now();
        let mut s = SignalingSession::new("test/1", Duration::from_secs(10), backoff());
        s.handle_connected(t0);
        s.handle_frame(t0, &welcome_frame(PROTOCOL_VERSION + 1));
        let out = outputs(&mut s);
        assert!(matches!(
            out.last(),
            Some(Output::Failed(SignalingError::UnsupportedVersion(2)))
        ));

        let mut s = SignalingSession::new("test/1", Duration::from_secs(10), backoff());
        s.handle_connected(t0);
        s.handle_frame(
            t0,
            &ServerMessage::error(ErrorCode::Overloaded, "busy").encode(),
        );
        let out = outputs(&mut s);
        assert!(matches!(
            out.last(),
            Some(Output::Failed(SignalingError::Server {
                code: ErrorCode::Overloaded,
                ..
            }))
        ));
    }

    #[test]
    fn malformed_frames_are_counted_and_skipped() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.handle_frame(t0, "not json");
        s.handle_frame(t0, r#"{"type":"launch_missiles"}"#);
        s.handle_unexpected_frame(t0, "binary");
        assert_eq!(s.malformed_frames(), 3);
        assert!(s.is_open());
        s.handle_frame(t0, r#"{"type":"registered","code":"ABCD"}"#);
        assert!(matches!(
            outputs(&mut s)[..],
            [Output::Message(ServerMessage::Registered { .. })]
        ));
    }

    #[test]
    fn close_says_bye_once() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.close("done");
        s.close("again");
        assert!(matches!(transmits(&mut s)[..], [ClientMessage::Bye { .. }]));
        assert!(s.is_closed());
    }

    #[test]
    fn clients_lost_together_come_back_spread_over_the_jitter_window() {
        // 200 clients lose the server at the same instant; each draws its own first delay.
        let t0 = Instant::now();
        let jittered = Backoff {
            jitter: 0.5,
            ..backoff()
        };
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut s = SignalingSession::new("test/1", Duration::from_secs(10), jittered);
                outputs(&mut s);
                s.handle_connected(t0);
                s.handle_frame(t0, &welcome_frame(PROTOCOL_VERSION));
                outputs(&mut s);
                s.handle_socket_closed(t0, SignalingError::ServerBye("server restart".into()));
                match outputs(&mut s)[..] {
                    [_, Output::Reconnecting { attempt: 1, delay }] => delay,
                    ref other => panic!("{other:?}"),
                }
            })
            .collect();
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(min >= Duration::from_millis(500) && max <= Duration::from_secs(1));
        // Spread over the window, not in lockstep (a uniform draw puts 200 of them within
        // 50 ms of each end with probability ~1 - 2 × 0.9^200).
        assert!(min < Duration::from_millis(550), "{min:?}");
        assert!(max > Duration::from_millis(950), "{max:?}");
        let distinct: std::collections::BTreeSet<Duration> = delays.iter().copied().collect();
        assert!(distinct.len() > 190, "{} distinct delays", distinct.len());
    }
}
