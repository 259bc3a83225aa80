//! The async driver of [`SignalingSession`]: one task owning the WebSocket.
//!
//! One `select!` over the application's commands, the socket, the pending connect attempt and
//! the machine's timer. After every input the driver drains the machine — messages to write,
//! outputs to carry out — before waiting again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::clock::{now, sleep_until};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{ClientMessage, IceServer, MAX_FRAME_BYTES, PairOutcome, ServerMessage};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tracing::{debug, warn};

use super::session::{Output, SignalingSession};
use super::{Route, Shared, SignalingConfig, SignalingError, SignalingEvent, Welcome, lock, short};
use crate::LinkEvent;
use crate::link::SIGNAL_QUEUE;

/// What a [`super::SignalingClient`] asks of the driver.
#[derive(Debug)]
pub(super) enum Command {
    /// Write a message (dropped if the connection is down by the time it is written).
    Send(ClientMessage),
    /// Say bye, close, and acknowledge.
    Close(oneshot::Sender<()>),
    /// Check the connection now (see [`super::SignalingClient::probe`]).
    Probe(Duration),
}

/// A WebSocket to the signaling server.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Socket, SignalingError>> + Send>>;

/// How long a graceful WebSocket close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Run the connection until it is closed. `ready` gets the first welcome or the first error.
pub(super) async fn run(
    config: SignalingConfig,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<SignalingEvent>,
    shared: Arc<Shared>,
    ready: oneshot::Sender<Result<Welcome, SignalingError>>,
) {
    let mut machine =
        SignalingSession::new(&config.client_name, config.connect_timeout, config.backoff);
    let mut driver = Driver {
        config,
        events,
        shared,
        ready: Some(ready),
        outbox: Vec::new(),
        fresh_ice_servers: None,
    };
    let mut socket: Option<Socket> = None;
    let mut connecting: Option<Connecting> = None;
    let mut close_waiters = Vec::new();

    loop {
        driver
            .drain(&mut machine, &mut socket, &mut connecting)
            .await;
        if machine.is_closed() {
            break;
        }
        if !machine.wants_socket() && socket.is_some() {
            debug!("dropping the socket");
            socket = None;
        }
        let deadline = machine.poll_timeout();
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send(message)) => {
                    if machine.is_open() {
                        write(&mut machine, &mut socket, message).await;
                    } else {
                        debug!(kind = message.kind(), "not connected; message dropped");
                    }
                }
                Some(Command::Close(done)) => {
                    close_waiters.push(done);
                    machine.close("closed by the application");
                }
                Some(Command::Probe(within)) => {
                    if socket_address_gone(socket.as_ref()) {
                        // Its network went: no need to wait for an answer that cannot come.
                        machine.handle_socket_closed(
                            now(),
                            SignalingError::ConnectionLost(
                                "the socket's local address is gone (the network changed)".into(),
                            ),
                        );
                        // The network changed, the server is fine: no backoff.
                        machine.probe(now(), within);
                    } else {
                        machine.probe(now(), within);
                    }
                }
                None => machine.close("every handle dropped"),
            },
            frame = next_frame(&mut socket) => handle_frame(&mut machine, &mut socket, frame),
            result = finish_connecting(&mut connecting) => match result {
                Ok(ws) => {
                    socket = Some(ws);
                    machine.handle_connected(now());
                }
                Err(error) => machine.handle_connect_failed(now(), error),
            },
            () = sleep_until(deadline) => machine.handle_timeout(now()),
        }
    }

    // Closed: the bye (if any) went out in the last drain; close the socket politely.
    if let Some(mut ws) = socket.take() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
    }
    driver.shared.connected.store(false, Ordering::Release);
    driver.lose_routes();
    driver.emit(SignalingEvent::Closed).await;
    for done in close_waiters {
        let _ = done.send(());
    }
    debug!("signaling driver stopped");
}

/// What the driver owns besides the socket.
struct Driver {
    config: SignalingConfig,
    events: mpsc::Sender<SignalingEvent>,
    shared: Arc<Shared>,
    ready: Option<oneshot::Sender<Result<Welcome, SignalingError>>>,
    /// Messages to send once the current outputs are handled (`resume`s after a reconnect).
    outbox: Vec<ClientMessage>,
    /// The latest ICE servers, when they just came (welcome, `ice_servers`): the next refresh
    /// is scheduled from their TURN credentials' expiry.
    fresh_ice_servers: Option<Vec<IceServer>>,
}

impl Driver {
    /// Carry out everything the machine asks for, until it asks for nothing.
    async fn drain(
        &mut self,
        machine: &mut SignalingSession,
        socket: &mut Option<Socket>,
        connecting: &mut Option<Connecting>,
    ) {
        loop {
            let mut progressed = false;
            while let Some(message) = machine.poll_transmit() {
                progressed = true;
                write(machine, socket, message).await;
            }
            while let Some(output) = machine.poll_output() {
                progressed = true;
                self.handle_output(output, connecting).await;
            }
            for message in std::mem::take(&mut self.outbox) {
                progressed = true;
                write(machine, socket, message).await;
            }
            if let Some(servers) = self.fresh_ice_servers.take()
                && let Some(after) = refresh_delay(&servers, SystemTime::now())
            {
                debug!(?after, "fresh ICE servers asked for in");
                machine.schedule_ice_refresh(now() + after);
            }
            if !progressed {
                break;
            }
        }
        self.shared
            .malformed
            .store(machine.malformed_frames(), Ordering::Relaxed);
    }

    async fn handle_output(&mut self, output: Output, connecting: &mut Option<Connecting>) {
        match output {
            Output::Connect => {
                let url = self.config.url.clone();
                let timeout = self.config.connect_timeout;
                *connecting = Some(Box::pin(open_socket(url, timeout)));
            }
            Output::Opened {
                welcome,
                reconnected,
            } => {
                *lock(&self.shared.welcome) = Some(welcome.clone());
                self.fresh_ice_servers = Some(welcome.ice_servers.clone());
                self.shared.connected.store(true, Ordering::Release);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(welcome));
                } else if reconnected {
                    self.outbox.extend(self.resumes());
                    self.emit(SignalingEvent::Reconnected(welcome)).await;
                }
            }
            Output::Message(ServerMessage::IceServers { ice_servers }) => {
                self.ice_servers_arrived(ice_servers);
            }
            Output::Message(message) => self.route(message).await,
            Output::Lost(error) => {
                warn!(%error, "signaling connection lost");
                self.shared.connected.store(false, Ordering::Release);
                self.suspend_routes();
                self.emit(SignalingEvent::Disconnected { error }).await;
            }
            Output::Reconnecting { attempt, delay } => {
                debug!(attempt, ?delay, "reconnecting");
                self.emit(SignalingEvent::Reconnecting { attempt, delay })
                    .await;
            }
            Output::Failed(error) => {
                let was_connected = self.shared.connected.swap(false, Ordering::AcqRel);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(error));
                } else {
                    warn!(%error, "signaling gave up");
                    self.lose_routes();
                    if was_connected {
                        self.emit(SignalingEvent::Disconnected { error }).await;
                    }
                }
            }
        }
    }

    /// Hand a server message to its session link, or to the application.
    async fn route(&mut self, message: ServerMessage) {
        // A resumed session hears the new connection's ICE servers (fresh TURN credentials).
        let fresh_ice_servers = match &message {
            ServerMessage::Resumed { .. } => lock(&self.shared.welcome)
                .as_ref()
                .map(|welcome| welcome.ice_servers.clone()),
            _ => None,
        };
        let unrouted = {
            let mut routes = lock(&self.shared.routes);
            match message {
                ServerMessage::Signal { session, signal } => match routes.get(&session) {
                    Some(route) => {
                        tracing::trace!(session = %short(&session), "signal routed");
                        if deliver(route, LinkEvent::Signal(signal)) {
                            None
                        } else {
                            routes.remove(&session);
                            None
                        }
                    }
                    None => Some(ServerMessage::Signal { session, signal }),
                },
                ServerMessage::SessionEnded { session, reason } => match routes.get_mut(&session) {
                    // Nobody opened the session's link yet: keep what it buffered (the peer's
                    // last signals, e.g. why it gave up) for `open_session`.
                    Some(route) if route.unclaimed.is_some() => {
                        deliver(route, LinkEvent::Ended(reason));
                        route.ended = true;
                        None
                    }
                    Some(_) => {
                        if let Some(route) = routes.remove(&session) {
                            deliver(&route, LinkEvent::Ended(reason));
                        }
                        None
                    }
                    None => Some(ServerMessage::SessionEnded { session, reason }),
                },
                ServerMessage::PairResult {
                    session: Some(session),
                    outcome: PairOutcome::Accepted,
                    peer,
                    auth,
                } => {
                    // Signals may follow the result before anyone calls `open_session`:
                    // buffer them in the session's link from now on.
                    routes.entry(session.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
                        Route {
                            tx,
                            unclaimed: Some(rx),
                            ended: false,
                            token: None,
                            suspended: false,
                        }
                    });
                    Some(ServerMessage::PairResult {
                        session: Some(session),
                        outcome: PairOutcome::Accepted,
                        peer,
                        auth,
                    })
                }
                ServerMessage::SessionToken { session, token } => match routes.get_mut(&session) {
                    Some(route) => {
                        route.token = Some(token);
                        None
                    }
                    None => Some(ServerMessage::SessionToken { session, token }),
                },
                ServerMessage::PeerRestarted { session } => match routes.get(&session) {
                    Some(route) => {
                        debug!(session = %short(&session), "the other device restarted");
                        deliver(route, LinkEvent::PeerRestarted);
                        None
                    }
                    None => Some(ServerMessage::PeerRestarted { session }),
                },
                ServerMessage::Resumed { session } => match routes.get_mut(&session) {
                    Some(route) => {
                        debug!(session = %short(&session), "session resumed");
                        route.suspended = false;
                        if let Some(servers) = fresh_ice_servers {
                            deliver(route, LinkEvent::IceServers(servers));
                        }
                        if !deliver(route, LinkEvent::Resumed) {
                            routes.remove(&session);
                        }
                        None
                    }
                    None => Some(ServerMessage::Resumed { session }),
                },
                other => Some(other),
            }
        };
        if let Some(message) = unrouted {
            self.emit(SignalingEvent::Message(message)).await;
        }
    }

    /// Fresh ICE servers (the answer to `refresh_ice_servers`): they replace the welcome's,
    /// and every session link hears them (its relays allocate with them from now on).
    fn ice_servers_arrived(&mut self, ice_servers: Vec<IceServer>) {
        tracing::info!("fresh ICE servers");
        if let Some(welcome) = lock(&self.shared.welcome).as_mut() {
            welcome.ice_servers = ice_servers.clone();
        }
        let mut routes = lock(&self.shared.routes);
        routes.retain(|_, route| deliver(route, LinkEvent::IceServers(ice_servers.clone())));
        drop(routes);
        self.fresh_ice_servers = Some(ice_servers);
    }

    /// Tell every session link the connection is gone and stop routing.
    fn lose_routes(&self) {
        let routes = std::mem::take(&mut *lock(&self.shared.routes));
        for (session, route) in routes {
            debug!(session = %short(&session), "session link lost");
            let _ = route.tx.try_send(LinkEvent::Lost);
        }
    }

    /// The connection dropped and the client reconnects: sessions with a resume token wait
    /// for it (their links hear `Interrupted`); the others are lost.
    fn suspend_routes(&self) {
        let mut routes = lock(&self.shared.routes);
        routes.retain(|session, route| {
            if route.token.is_some() && !route.ended && route.unclaimed.is_none() {
                route.suspended = true;
                debug!(session = %short(session), "session link interrupted; will resume");
                return deliver(route, LinkEvent::Interrupted);
            }
            debug!(session = %short(session), "session link lost");
            let _ = route.tx.try_send(LinkEvent::Lost);
            false
        });
    }

    /// After a reconnect: `resume` every suspended session.
    fn resumes(&self) -> Vec<ClientMessage> {
        lock(&self.shared.routes)
            .iter()
            .filter(|(_, route)| route.suspended)
            .filter_map(|(session, route)| {
                let token = route.token.clone()?;
                Some(ClientMessage::Resume {
                    session: session.clone(),
                    token,
                })
            })
            .collect()
    }

    async fn emit(&self, event: SignalingEvent) {
        if self.events.send(event).await.is_err() {
            debug!("application dropped its signaling events");
        }
    }
}

/// When to ask for fresh ICE servers: at four fifths of the time the earliest time-limited TURN
/// credentials have left (`None` for static credentials, or when they have expired already —
/// fresh ones that are expired on arrival mean the clocks disagree, and asking again would not
/// help).
fn refresh_delay(servers: &[IceServer], wall: SystemTime) -> Option<Duration> {
    let expiry = crate::turn::TurnServer::from_ice_servers(servers)
        .iter()
        .filter_map(crate::turn::TurnServer::credentials_expiry)
        .min()?;
    match expiry.duration_since(wall) {
        Ok(left) if !left.is_zero() => Some((left * 4 / 5).max(MIN_REFRESH_DELAY)),
        _ => {
            warn!("the TURN credentials from the server have expired already (clocks apart?)");
            None
        }
    }
}

/// The soonest a refresh is asked for after the last.
const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// Put an event on a session link without ever blocking the shared connection. Returns false
/// when the link is gone.
fn deliver(route: &Route, event: LinkEvent) -> bool {
    match route.tx.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!("session link is full; signal dropped");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Whether the open socket's local address is no longer one of this machine's.
fn socket_address_gone(socket: Option<&Socket>) -> bool {
    let Some(ws) = socket else {
        return false;
    };
    let local = match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr(),
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr(),
        _ => return false,
    };
    let Ok(local) = local else {
        return true;
    };
    !local.ip().is_loopback() && !crate::peer::gather_local_ips(true).contains(&local.ip())
}

/// Write one message; a failed write is a lost socket.
async fn write(
    machine: &mut SignalingSession,
    socket: &mut Option<Socket>,
    message: ClientMessage,
) {
    let Some(ws) = socket.as_mut() else {
        debug!(kind = message.kind(), "no socket; message dropped");
        return;
    };
    if let Err(error) = ws.send(Message::text(message.encode())).await {
        *socket = None;
        machine.handle_socket_closed(now(), SignalingError::ConnectionLost(error.to_string()));
    }
}

fn handle_frame(
    machine: &mut SignalingSession,
    socket: &mut Option<Socket>,
    frame: Option<Result<Message, WsError>>,
) {
    let now = now();
    match frame {
        Some(Ok(Message::Text(text))) => machine.handle_frame(now, text.as_str()),
        Some(Ok(Message::Binary(_))) => machine.handle_unexpected_frame(now, "binary frame"),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            machine.handle_activity(now);
        }
        Some(Ok(Message::Close(frame))) => {
            *socket = None;
            let reason = frame.map_or_else(|| "no reason".to_owned(), |f| f.to_string());
            machine.handle_socket_closed(
                now,
                SignalingError::ConnectionLost(format!("server closed the socket: {reason}")),
            );
        }
        Some(Err(error)) => {
            *socket = None;
            machine.handle_socket_closed(now, SignalingError::ConnectionLost(error.to_string()));
        }
        None => {
            *socket = None;
            machine.handle_socket_closed(
                now,
                SignalingError::ConnectionLost("socket closed".to_owned()),
            );
        }
    }
}

/// Open the WebSocket (TCP, TLS for `wss://`, the upgrade), with the protocol's frame limit.
/// The one way to open a signaling socket: the driver's, and `proxim doctor`'s, which names
/// the raw error's kind itself.
pub(crate) async fn open_websocket(url: &str) -> Result<Socket, WsError> {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let (ws, _response) = connect_async_with_config(url, Some(config), true).await?;
    Ok(ws)
}

/// Open the WebSocket within `timeout`.
async fn open_socket(url: String, timeout: Duration) -> Result<Socket, SignalingError> {
    match tokio::time::timeout(timeout, open_websocket(&url)).await {
        Err(_) => Err(SignalingError::Unreachable(format!(
            "no connection within {timeout:?}"
        ))),
        Ok(Ok(ws)) => Ok(ws),
        Ok(Err(WsError::Io(error))) => Err(SignalingError::Unreachable(error.to_string())),
        Ok(Err(WsError::Url(error))) => Err(SignalingError::InvalidUrl(error.to_string())),
        Ok(Err(WsError::Http(response))) => Err(SignalingError::Handshake(format!(
            "server answered HTTP {}",
            response.status()
        ))),
        Ok(Err(error)) => Err(SignalingError::Handshake(error.to_string())),
    }
}

async fn next_frame(socket: &mut Option<Socket>) -> Option<Result<Message, WsError>> {
    match socket {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn finish_connecting(connecting: &mut Option<Connecting>) -> Result<Socket, SignalingError> {
    match connecting {
        Some(attempt) => {
            let result = attempt.await;
            *connecting = None;
            result
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(username: &str) -> IceServer {
        IceServer {
            urls: vec!["turn:198.18.0.3:3478".into()],
            username: Some(username.into()),
            credential: Some("pw".into()),
        }
    }

    #[test]
    fn refreshes_come_at_four_fifths_of_the_earliest_turn_credentials_life() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let stun = IceServer {
            urls: vec!["stun:198.18.0.2:3478".into()],
            username: None,
            credential: None,
        };
        let servers = [stun.clone(), turn("1001000:conn"), turn("1000500:conn")];
        assert_eq!(
            refresh_delay(&servers, wall),
            Some(Duration::from_secs(400)),
            "the earliest: 500 s left"
        );
        assert_eq!(
            refresh_delay(&[turn("1000001:x")], wall),
            Some(MIN_REFRESH_DELAY),
            "never sooner than the minimum"
        );
        // Static credentials, none at all, or expired already (clocks apart): no refresh.
        assert_eq!(refresh_delay(&[turn("alice")], wall), None);
        assert_eq!(refresh_delay(&[stun], wall), None);
        assert_eq!(refresh_delay(&[turn("999999:x")], wall), None);
        assert_eq!(refresh_delay(&[turn("1000000:x")], wall), None);
    }
}
