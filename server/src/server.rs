//! The async driver: HTTP routes, one task per WebSocket connection, one timer task.
//!
//! The [`Hub`] sits in one `std::sync::Mutex`, never held across an `.await`. Every input goes
//! through [`Shared::with_hub`], which locks, feeds the hub with `now`, then drains every hub
//! output before unlocking: messages go into the target connection's bounded queue with
//! `try_send` (a full queue marks a slow reader, which is dropped — the hub never waits for a
//! client), closes drop the connection's queue. If the hub's next deadline moved earlier, the
//! timer task is woken so it re-arms.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use proxim_protocol::ice::IceUrl;
use proxim_protocol::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{ConfigError, ServerConfig};
use crate::events::{Event, EventBus, EventSinkError};
use crate::hub::{CloseHow, ConnKey, Gone, Hub, HubConfig, Output, SessionInfo, Stats, short};
use crate::ice::stun_url_for_host;
use crate::listener::{self, SocketSlot};
use crate::monitor::{AdminListener, Monitor};
use crate::proxy::client_ip;
use crate::state::redis::RedisStore;
use crate::state::{
    ResyncRequests, Snapshot, StateError, StateOp, StateSpec, StateStore, StateWriter,
};
use crate::stun;

/// Reading the state store at start may take this long.
const STATE_LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The signaling server.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Validate `config`, bind its address (and the STUN responder's, when on) and start
    /// serving. Port 0 picks a free port; see [`RunningServer::local_addr`] and
    /// [`RunningServer::stun_addr`].
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        config.validate()?;
        let listener = listener::listen(config.bind, config.listen_backlog).map_err(|source| {
            ServerError::Bind {
                addr: config.bind,
                source,
            }
        })?;
        let local_addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
        let stun_socket = match config.stun {
            Some(addr) => {
                let socket = tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|source| ServerError::StunBind { addr, source })?;
                let bound = socket.local_addr().map_err(ServerError::LocalAddr)?;
                Some((socket, bound))
            }
            None => None,
        };
        let stun_addr = stun_socket.as_ref().map(|(_, bound)| *bound);
        config.ice.log_capabilities();
        let events = EventBus::start(
            &config.events,
            &config.events_queue,
            config.events_buffer,
            instance_name(),
        )
        .await?;

        let mut hub_config = HubConfig::from(&config);
        hub_config.wall_anchor = (tokio::time::Instant::now().into_std(), SystemTime::now());
        let mut hub = Hub::new(hub_config);
        let state = match &config.state {
            Some(spec) => Some(open_state(spec, &mut hub, local_addr).await?),
            None => None,
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                hub,
                pipes: HashMap::new(),
                armed: None,
                state_ops: Vec::new(),
            }),
            wake: Notify::new(),
            started: Instant::now(),
            stun_addr,
            stun_requests: AtomicU64::new(0),
            stun_malformed: AtomicU64::new(0),
            sockets: listener::Sockets::new(config.max_connections),
            events,
            state,
            config,
        });
        if let Some(state) = &shared.state {
            tokio::spawn(
                run_state_resync(Arc::downgrade(&shared), state.resync_requests())
                    .instrument(tracing::info_span!("state_resync")),
            );
        }
        let (stop_stun, stun_task) = match stun_socket {
            Some((socket, bound)) => {
                let (tx, rx) = oneshot::channel::<()>();
                let task = tokio::spawn(
                    run_stun(socket, shared.clone(), rx)
                        .instrument(tracing::info_span!("stun", %bound)),
                );
                tracing::info!(%bound, "STUN responder listening");
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let (alive_tx, alive_rx) = mpsc::channel::<()>(1);
        let monitor = Monitor::new(shared.clone());
        let app = Router::new()
            .route("/ws", get(ws_upgrade))
            .with_state(AppState {
                shared: shared.clone(),
                alive: alive_tx,
            })
            .merge(monitor.public_routes());
        let admin = match shared.config.admin_bind {
            Some(addr) => Some(
                AdminListener::start(addr, &monitor)
                    .await
                    .map_err(|source| ServerError::AdminBind { addr, source })?,
            ),
            None => None,
        };

        let (stop_http_tx, stop_http_rx) = oneshot::channel::<()>();
        let sockets = shared.sockets.clone();
        tracing::info!(max = sockets.max(), "socket cap");
        let http = tokio::spawn(
            listener::serve(
                listener,
                app,
                sockets,
                shared.config.header_timeout,
                stop_http_rx,
            )
            .instrument(tracing::info_span!("http", %local_addr)),
        );
        let (stop_timer_tx, stop_timer_rx) = oneshot::channel::<()>();
        let timer = tokio::spawn(
            run_timer(shared.clone(), stop_timer_rx).instrument(tracing::info_span!("hub_timer")),
        );
        tracing::info!(%local_addr, version = PROTOCOL_VERSION, "signaling server listening");
        shared.events.emit(Event::ServiceStarted {
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
            listen: local_addr.to_string(),
            stun: stun_addr.is_some(),
            turn: shared.config.ice.turn_credentials_kind().unwrap_or("none"),
        });
        Ok(RunningServer {
            local_addr,
            shared,
            stop_http: Some(stop_http_tx),
            stop_timer: Some(stop_timer_tx),
            stop_stun,
            http: Some(http),
            timer: Some(timer),
            stun: stun_task,
            alive: Some(alive_rx),
            admin,
        })
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    /// The embedded STUN responder's UDP address could not be bound.
    #[error("cannot bind the STUN responder to {addr}: {source} — pass --no-stun or --stun-bind")]
    StunBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An event sink could not be opened (a file sink's path).
    #[error(transparent)]
    EventSink(#[from] EventSinkError),
    /// The state store (`--state`) could not be read at start.
    #[error("{0} — the server does not start without the state it was told to keep")]
    State(#[from] StateError),
    /// The admin listener's address could not be bound.
    #[error("cannot bind the admin listener to {addr}: {source} — pass --admin-bind (none: off)")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A server that is running. Dropping it stops the server without waiting; prefer
/// [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop_http: Option<oneshot::Sender<()>>,
    stop_timer: Option<oneshot::Sender<()>>,
    stop_stun: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    stun: Option<JoinHandle<()>>,
    alive: Option<mpsc::Receiver<()>>,
    /// The admin listener, when on; dropping it stops it.
    admin: Option<AdminListener>,
}

impl RunningServer {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket URL clients connect to, e.g. `ws://127.0.0.1:8787/ws`. An unspecified
    /// bind address (`0.0.0.0`, `::`) is replaced by loopback.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.connectable_addr())
    }

    /// The base HTTP URL of the public listener, e.g. `http://127.0.0.1:8787`: `/healthz`,
    /// `/api/stats`, `/api/turn/config`, and the protected routes with the admin token.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.connectable_addr())
    }

    /// The address of the admin listener (every monitoring route, no token); `None` when it
    /// is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminListener::addr)
    }

    /// The base HTTP URL of the admin listener, e.g. `http://127.0.0.1:8788`; `None` when it
    /// is off.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr()
            .map(|addr| format!("http://{}", connectable(addr)))
    }

    /// The address the embedded STUN responder listens on (with the real port when bound to
    /// port 0); `None` when it is off.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.shared.stun_addr
    }

    /// Current counters and gauges (the body of `GET /api/stats`).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every current session in id order (what the pages of `GET /api/sessions` list).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let names = self.shared.config.expose_device_names;
        self.shared
            .with_hub(|hub, now| hub.sessions_page(None, usize::MAX, names, now))
            .sessions
    }

    /// Stop: every connection gets `bye {reason: "server shutting down"}` and is closed, the
    /// listener stops, and this waits (at most the configured grace period) for connections
    /// to finish.
    pub async fn shutdown(mut self) {
        tracing::info!(local_addr = %self.local_addr, "signaling server shutting down");
        self.begin_shutdown();
        let grace = self.shared.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(http) = self.http.take() {
            let abort = http.abort_handle();
            if tokio::time::timeout_at(deadline, http).await.is_err() {
                abort.abort();
            }
        }
        if let Some(mut alive) = self.alive.take() {
            // Every connection task holds a sender; `None` means all of them have finished.
            if tokio::time::timeout_at(deadline, alive.recv())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the shutdown grace period");
            }
        }
        if let Some(timer) = self.timer.take() {
            let _ = timer.await;
        }
        if let Some(stun) = self.stun.take() {
            let _ = stun.await;
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        // The connections' last events are in; give the sinks what is left of the grace
        // period (at least a second) to deliver them.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(std::time::Duration::from_secs(1));
        if let Some(state) = &self.shared.state {
            state.close(left).await;
        }
        self.shared.events.close(left).await;
        tracing::info!("signaling server stopped");
    }

    fn begin_shutdown(&mut self) {
        self.shared.with_hub(|hub, now| hub.shutdown(now));
        if let Some(tx) = self.stop_http.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.stop_timer.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.stop_stun.take() {
            let _ = tx.send(());
        }
    }

    fn connectable_addr(&self) -> SocketAddr {
        connectable(self.local_addr)
    }
}

/// `addr` as a client connects to it: an unspecified IP (`0.0.0.0`, `::`) becomes loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.stop_http.is_some() {
            self.begin_shutdown();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Shared {
    core: Mutex<Core>,
    /// Wakes the timer task when the hub's next deadline moved earlier.
    wake: Notify,
    pub(crate) started: Instant,
    /// The STUN responder's bound address, when it runs.
    pub(crate) stun_addr: Option<SocketAddr>,
    stun_requests: AtomicU64,
    stun_malformed: AtomicU64,
    /// Open client sockets, capped.
    pub(crate) sockets: Arc<listener::Sockets>,
    /// Where events go.
    pub(crate) events: EventBus,
    /// Where durable state goes (`--state`).
    pub(crate) state: Option<StateWriter>,
    pub(crate) config: ServerConfig,
}

#[derive(Debug)]
struct Core {
    hub: Hub,
    /// The outbound queue of every open connection.
    pipes: HashMap<ConnKey, Pipe>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    /// Reused buffer for the hub's state ops.
    state_ops: Vec<StateOp>,
}

#[derive(Debug)]
struct Pipe {
    tx: mpsc::Sender<String>,
    /// Tells the connection task to close at once (slow reader).
    kill: Arc<Notify>,
}

impl Shared {
    /// Feed the hub one input, then deliver everything it produced.
    pub(crate) fn with_hub<R>(&self, input: impl FnOnce(&mut Hub, Instant) -> R) -> R {
        let now = tokio::time::Instant::now().into_std();
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        let result = input(&mut core.hub, now);
        core.pump(now, &self.events, self.state.as_ref());
        self.rearm(&mut core);
        result
    }

    /// The hub's counters plus the STUN responder's.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.with_hub(|hub, _| hub.stats());
        stats.stun_requests = self.stun_requests.load(Ordering::Relaxed);
        stats.stun_malformed = self.stun_malformed.load(Ordering::Relaxed);
        stats.sockets_open = self.sockets.open() as u64;
        stats.sockets_max = self.sockets.max() as u64;
        stats.connections_refused_full = self.sockets.refused();
        stats
    }

    /// The `stun:` URL of the embedded responder as a client that reached the WebSocket
    /// through `http_host` (its `Host` header) can reach it: `--public-host` when given, else
    /// the responder's bind address when specific, else the `Host` header's host.
    pub(crate) fn embedded_stun_url(&self, http_host: Option<&str>) -> Option<IceUrl> {
        let bound = self.stun_addr?;
        if let Some(host) = &self.config.public_host {
            return stun_url_for_host(host, bound.port());
        }
        if !bound.ip().is_unspecified() {
            return stun_url_for_host(&bound.ip().to_string(), bound.port());
        }
        let url = http_host
            .and_then(host_without_port)
            .and_then(|host| stun_url_for_host(host, bound.port()));
        if url.is_none() {
            tracing::warn!(
                stun = %bound,
                "not advertising the embedded STUN responder: no usable Host header and no \
                 --public-host"
            );
        }
        url
    }

    fn connect(
        &self,
        remote: SocketAddr,
        embedded_stun: Option<IceUrl>,
        tx: mpsc::Sender<String>,
        kill: Arc<Notify>,
    ) -> Option<(ConnKey, proxim_protocol::ConnectionId)> {
        let now = tokio::time::Instant::now().into_std();
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, id) = core.hub.connect(remote, embedded_stun, now)?;
        core.pipes.insert(key, Pipe { tx, kill });
        while let Some(event) = core.hub.poll_event() {
            self.events.emit(event);
        }
        self.rearm(&mut core);
        Some((key, id))
    }

    /// Count a connection from client `ip`; `None` when that IP has too many open.
    fn reserve_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        self.with_hub(|hub, _| hub.reserve_ip(ip)).then(|| IpSlot {
            shared: self.clone(),
            ip,
            socket: None,
        })
    }

    /// Wake the timer task when the hub's next deadline is earlier than the one it sleeps on.
    fn rearm(&self, core: &mut Core) {
        if let Some(next) = core.hub.poll_timeout()
            && core.armed.is_none_or(|armed| next < armed)
        {
            core.armed = Some(next);
            self.wake.notify_one();
        }
    }
}

/// One connection counted against its client IP's cap; dropping it (connection over, or the
/// upgrade failed) releases the count.
#[derive(Debug)]
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// The socket's slot under the server's socket cap, once upgraded.
    socket: Option<Arc<SocketSlot>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let ip = self.ip;
        self.shared.with_hub(|hub, _| hub.release_ip(ip));
    }
}

impl Core {
    /// Deliver every hub output. Never blocks: a full queue drops its connection.
    fn pump(&mut self, now: Instant, events: &EventBus, state: Option<&StateWriter>) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Send { to, message } => {
                    let Some(pipe) = self.pipes.get(&to) else {
                        continue;
                    };
                    match pipe.tx.try_send(message.encode()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.hub.handle_gone(to, Gone::SlowReader, now);
                        }
                        // The connection task is ending; it reports the loss itself.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                Output::Close { conn, how } => {
                    if let Some(pipe) = self.pipes.remove(&conn)
                        && how == CloseHow::Abort
                    {
                        pipe.kill.notify_one();
                    }
                }
            }
        }
        while let Some(event) = self.hub.poll_event() {
            events.emit(event);
        }
        if let Some(state) = state {
            self.hub.take_state_ops(&mut self.state_ops);
            if !self.state_ops.is_empty() {
                state.push(self.state_ops.drain(..));
            }
        }
    }
}

/// Read the state store, restore the hub from it, and start the writer with the hub's whole
/// state as its first write (which also clears what went stale while the server was down).
async fn open_state(
    spec: &StateSpec,
    hub: &mut Hub,
    listen: SocketAddr,
) -> Result<StateWriter, StateError> {
    match spec {
        StateSpec::Memory(store) => restore_from(store.clone(), hub).await,
        StateSpec::Redis(url) => {
            let store = RedisStore::new(url, &instance_name(), listen)?;
            restore_from(store, hub).await
        }
    }
}

async fn restore_from<S: StateStore>(store: S, hub: &mut Hub) -> Result<StateWriter, StateError> {
    let name = store.name();
    let started = Instant::now();
    let snapshot: Snapshot = tokio::time::timeout(STATE_LOAD_TIMEOUT, store.load())
        .await
        .map_err(|_| StateError::Unreachable {
            store: name.clone(),
            reason: format!("no answer within {STATE_LOAD_TIMEOUT:?}"),
        })??;
    let now = tokio::time::Instant::now().into_std();
    let summary = hub.restore(snapshot, now);
    tracing::info!(
        store = %name,
        kept = summary.kept,
        retired = summary.retired,
        expired = summary.expired,
        dropped = summary.dropped,
        took_ms = started.elapsed().as_millis() as u64,
        "state restored"
    );
    let writer = StateWriter::spawn(store);
    writer.set_restored(summary);
    writer.resync(hub.export_state(now));
    Ok(writer)
}

/// Rewrite the state store from the hub whenever its writer asks (it failed, or fell behind).
async fn run_state_resync(shared: std::sync::Weak<Shared>, requests: ResyncRequests) {
    // No strong reference while waiting: the server may go away meanwhile.
    while requests.wanted().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        // Under the hub's lock: nothing journaled after the export reaches the writer before it.
        let mut core = shared.core.lock().unwrap_or_else(PoisonError::into_inner);
        let ops = core.hub.export_state(now);
        if let Some(writer) = shared.state.as_ref() {
            writer.resync(ops);
        }
        drop(core);
    }
}

/// The `instance` of this server's events: the host name (`/proc/sys/kernel/hostname`, else
/// `$HOSTNAME`), else `proxim`.
fn instance_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "proxim".to_owned())
}

/// Sleep until the hub's next deadline, feed it the time, repeat.
async fn run_timer(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        let next = {
            let mut core = shared.core.lock().unwrap_or_else(PoisonError::into_inner);
            let next = core.hub.poll_timeout();
            core.armed = next;
            next
        };
        let sleep = async {
            match next {
                Some(due) => tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            () = sleep => shared.with_hub(|hub, now| hub.handle_timeout(now)),
            () = shared.wake.notified() => {}
        }
    }
}

/// Answer STUN Binding requests until told to stop. Anything else is dropped unanswered.
async fn run_stun(
    socket: tokio::net::UdpSocket,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    // Larger than any datagram a Binding request needs; longer ones are truncated and then
    // fail the length check.
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, from) = tokio::select! {
            _ = &mut stop => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port unreachable from an earlier reply shows up here on some
                    // systems; it concerns one peer, not the socket.
                    tracing::debug!(error = %e, "STUN receive failed");
                    continue;
                }
            },
        };
        let datagram = buf.get(..len).unwrap_or_default();
        match stun::answer(datagram, from) {
            Ok(stun::Verdict::Answer(reply)) => {
                shared.stun_requests.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = socket.send_to(&reply, from).await {
                    tracing::debug!(%from, error = %e, "STUN reply failed");
                }
            }
            Ok(stun::Verdict::Ignore) => {
                tracing::trace!(%from, "ignoring a STUN message that is not a Binding request");
            }
            Err(why) => {
                shared.stun_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, %why, len, "dropping a malformed STUN datagram");
            }
        }
    }
}

/// The host part of an HTTP `Host` header (`example.net:8787`, `[::1]:8787`, `10.0.0.2`).
fn host_without_port(host: &str) -> Option<&str> {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        &host[..end + 2]
    } else {
        match host.split_once(':') {
            Some((h, _)) => h,
            None => host,
        }
    };
    (!host.is_empty()).then_some(host)
}

// ---------------------------------------------------------------------------------------------
// HTTP routes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AppState {
    shared: Arc<Shared>,
    /// Held by every connection task, so shutdown can wait for them all.
    alive: mpsc::Sender<()>,
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    socket: Option<axum::Extension<Arc<SocketSlot>>>,
    headers: HeaderMap,
    State(app): State<AppState>,
) -> Response {
    let http_host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let embedded_stun = app.shared.embedded_stun_url(http_host);
    let client = client_ip(remote.ip(), &headers, &app.shared.config.trusted_proxies);
    let Some(mut slot) = app.shared.reserve_ip(client) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        )
            .into_response();
    };
    // Accept frames up to twice the protocol limit, so a moderately oversized frame reaches
    // the hub, which answers `frame_too_large` before closing.
    let transport_limit = 2 * MAX_FRAME_BYTES;
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |websocket| {
            // The socket's slot under the server's socket cap lives as long as the WebSocket.
            slot.socket = socket.map(|axum::Extension(held)| held);
            run_connection(websocket, remote, slot, embedded_stun, app)
        })
}

// ---------------------------------------------------------------------------------------------
// One WebSocket connection
// ---------------------------------------------------------------------------------------------

/// How much a connection reads from its socket at a time. tungstenite's default (128 KiB) is
/// allocated and zero-filled on the first read and then kept: 128 KiB per idle connection for
/// a protocol whose frames are a few hundred bytes. A larger frame still arrives whole: the
/// buffer grows to hold it.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long the server waits for its Close to go out (and the client's to come back).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How a connection task ended.
#[derive(Debug)]
enum End {
    /// The hub closed it (queue drained first); the WebSocket Close carries `code`.
    ByServer(u16),
    /// The hub dropped it as a slow reader.
    Killed,
    /// The client sent a Close: it is answered with a Close.
    ClientClosed,
    /// The client sent a text frame that is not UTF-8: closed with 1007.
    InvalidUtf8,
    /// The socket ended or failed.
    Lost(Option<String>),
}

/// What a failed read means for the connection.
#[derive(Debug)]
enum ReadFailure {
    /// The frame announced more bytes than the transport reads at all.
    TooLarge(usize),
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// The socket failed, or the client broke the WebSocket protocol.
    Other(String),
}

impl From<axum::Error> for ReadFailure {
    fn from(error: axum::Error) -> Self {
        let inner = error.into_inner();
        match inner.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(
                tungstenite::error::CapacityError::MessageTooLong { size, .. },
            )) => ReadFailure::TooLarge(*size),
            Some(tungstenite::Error::Utf8(_)) => ReadFailure::InvalidUtf8,
            _ => ReadFailure::Other(inner.to_string()),
        }
    }
}

async fn run_connection(
    socket: WebSocket,
    remote: SocketAddr,
    slot: IpSlot,
    embedded_stun: Option<IceUrl>,
    app: AppState,
) {
    let AppState { shared, alive } = app;
    let (tx, mut rx) = mpsc::channel::<String>(shared.config.send_queue_capacity);
    let kill = Arc::new(Notify::new());
    let Some((key, id)) = shared.connect(remote, embedded_stun, tx, kill.clone()) else {
        // Shutting down: refuse politely.
        let mut socket = socket;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: close_code::AWAY,
                reason: "server shutting down".into(),
            })))
            .await;
        return;
    };
    // The client's address as a proxy named it, only when it differs from the socket's peer.
    let span = tracing::info_span!(
        "conn",
        id = %short(id.as_str()),
        %remote,
        client = tracing::field::Empty
    );
    if slot.ip != remote.ip() {
        span.record("client", tracing::field::display(slot.ip));
    }
    async move {
        tracing::debug!("WebSocket open");
        let write_timeout = shared.config.heartbeat_timeout;
        let mut socket = socket;
        // One waiter on the kill switch for the whole connection (a `notified()` per loop
        // turn would lock the `Notify` twice a turn to enqueue and dequeue it).
        let killed = kill.notified();
        let mut killed = std::pin::pin!(killed);
        // Off once the socket holds the unread rest of a frame too large to read.
        let mut reading = true;
        let mut close_code = close_code::NORMAL;
        let end = loop {
            tokio::select! {
                biased;
                () = killed.as_mut() => break End::Killed,
                out = rx.recv() => {
                    let Some(text) = out else { break End::ByServer(close_code) };
                    tokio::select! {
                        () = killed.as_mut() => break End::Killed,
                        sent = tokio::time::timeout(
                            write_timeout,
                            send_queued(&mut socket, &mut rx, text),
                        ) => match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break End::Lost(Some(e.to_string())),
                            Err(_) => break End::Lost(Some("write timed out".to_owned())),
                        },
                    }
                }
                frame = socket.next(), if reading => match frame {
                    Some(Ok(Message::Text(text))) => {
                        shared.with_hub(|hub, now| hub.handle_text(key, text.as_str(), now));
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        shared.with_hub(|hub, now| hub.handle_binary(key, bytes.len(), now));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        shared.with_hub(|hub, now| hub.handle_liveness(key, now));
                    }
                    Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    None => break End::Lost(None),
                    Some(Err(e)) => match ReadFailure::from(e) {
                        ReadFailure::TooLarge(size) => {
                            // The hub answers `frame_too_large` and closes; the queue drains
                            // its answer first.
                            shared.with_hub(|hub, now| hub.handle_oversized(key, size, now));
                            reading = false;
                            close_code = close_code::SIZE;
                        }
                        ReadFailure::InvalidUtf8 => break End::InvalidUtf8,
                        ReadFailure::Other(error) => break End::Lost(Some(error)),
                    },
                },
            }
        };
        match &end {
            End::ByServer(code) => {
                let _ = tokio::time::timeout(
                    CLOSE_WAIT,
                    socket.send(Message::Close(Some(CloseFrame {
                        code: *code,
                        reason: "".into(),
                    }))),
                )
                .await;
                // Read (and discard) until the client's Close, for a moment: dropping a socket
                // with unread input makes the kernel send a reset, which can destroy the
                // replies and the Close still on their way to the client.
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(frame)) = socket.next().await {
                        if matches!(frame, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            End::ClientClosed => {
                // tungstenite queued the answering Close (with the client's code) when it
                // read the client's; closing the sink sends it.
                let _ = tokio::time::timeout(CLOSE_WAIT, SinkExt::close(&mut socket)).await;
            }
            End::InvalidUtf8 => {
                tracing::debug!("text frame that is not UTF-8: closing with 1007");
                let _ = tokio::time::timeout(
                    CLOSE_WAIT,
                    socket.send(Message::Close(Some(CloseFrame {
                        code: close_code::INVALID,
                        reason: "text frame is not UTF-8".into(),
                    }))),
                )
                .await;
            }
            End::Killed => {}
            End::Lost(error) => {
                if let Some(error) = error {
                    tracing::debug!(%error, "WebSocket failed");
                }
            }
        }
        let gone = match end {
            End::Killed => Gone::SlowReader,
            End::ClientClosed => Gone::ClientClosed,
            End::ByServer(_) | End::InvalidUtf8 | End::Lost(_) => Gone::Closed,
        };
        // A no-op when the hub already closed this connection.
        shared.with_hub(|hub, now| hub.handle_gone(key, gone, now));
        tracing::debug!(?end, "WebSocket closed");
        drop(slot);
        drop(alive);
    }
    .instrument(span)
    .await;
}

/// Up to this many bytes of queued messages go out in one write (and under one write
/// timeout): signaling messages are a few hundred bytes, so a burst is one system call.
const SEND_BATCH_BYTES: usize = 16 * 1024;

/// Write `first` and the messages queued behind it (up to [`SEND_BATCH_BYTES`]), then flush
/// once: a burst of replies goes out in one write instead of one system call (and one TCP
/// segment) each.
async fn send_queued(
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<String>,
    first: String,
) -> Result<(), axum::Error> {
    let mut batched = first.len();
    socket.feed(Message::Text(first.into())).await?;
    while batched < SEND_BATCH_BYTES {
        let Ok(more) = rx.try_recv() else { break };
        batched += more.len();
        socket.feed(Message::Text(more.into())).await?;
    }
    socket.flush().await
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn host_header_loses_its_port() {
        assert_eq!(host_without_port("example.net:8787"), Some("example.net"));
        assert_eq!(host_without_port("10.0.0.2"), Some("10.0.0.2"));
        assert_eq!(host_without_port("[::1]:8787"), Some("[::1]"));
        assert_eq!(host_without_port("[2001:db8::1]"), Some("[2001:db8::1]"));
        assert_eq!(host_without_port("[::1"), None);
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port(":80"), None);
    }
}
