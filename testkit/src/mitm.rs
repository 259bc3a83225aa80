//! A malicious signaling server for tests: a WebSocket proxy that sits between clients and the
//! real server and may read, rewrite, drop, inject and redirect every frame.
//!
//! [`MitmProxy::start`] listens on `127.0.0.1:0`. Each client that connects gets its own
//! upstream WebSocket to the real server's URL, and every frame either side sends goes
//! through one user-supplied [`Rule`] before anything is delivered. The rule sees the frame
//! decoded ([`Frame::Client`] towards the server, [`Frame::Server`] towards the client, raw
//! [`Frame::Text`] when it does not decode) and answers with a list of [`Action`]s: pass it
//! on unchanged, forward a rewritten frame, inject frames to either side of any proxied
//! connection, or close a connection. An empty list drops the frame.
//!
//! Every frame the proxy receives, and every frame it emits other than an unchanged pass, is
//! recorded in a shared [`FrameLog`], so a test can inspect the exchange afterwards (or
//! replay, say, a recorded `auth` payload into another session).
//!
//! ```no_run
//! # async fn demo(server_url: &str) -> std::io::Result<()> {
//! use proxim_testkit::mitm::{Action, Frame, MitmProxy, random_fingerprint, rewrite_sdp_fingerprints};
//!
//! // Swap the DTLS fingerprint in every offer and answer; pass everything else unchanged.
//! let fake = random_fingerprint();
//! let proxy = MitmProxy::start(server_url, move |_ctx, _direction, _conn, frame| {
//!     if frame.sdp().is_some() {
//!         vec![Action::Forward(frame.map_sdp(|sdp| rewrite_sdp_fingerprints(sdp, &fake)))]
//!     } else {
//!         vec![Action::Pass]
//!     }
//! })
//! .await?;
//! // Point both devices at `proxy.ws_url()` instead of the server; afterwards, read
//! // `proxy.log().signals()`.
//! # Ok(()) }
//! ```
//!
//! The proxy is a test tool: frames are queued without bounds and the rule runs under one
//! lock, so every decision sees a consistent [`ProxyCtx`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{ClientMessage, ServerMessage, Signal};
use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client (phone or desktop) towards the real server.
    ToServer,
    /// From the real server towards a client.
    ToClient,
}

/// One proxied client connection, numbered from 0 in the order clients connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnIndex(pub usize);

impl fmt::Display for ConnIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// One WebSocket data frame, decoded where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame travelling [`Direction::ToServer`] that decodes as a client message.
    Client(ClientMessage),
    /// A text frame travelling [`Direction::ToClient`] that decodes as a server message.
    Server(ServerMessage),
    /// A text frame that does not decode for its direction, or raw text a rule wants sent
    /// byte for byte.
    Text(String),
    /// A binary frame (not part of the protocol; passed through like any other frame).
    Binary(Vec<u8>),
}

impl Frame {
    /// Decode a text frame travelling `direction`; [`Frame::Text`] when it does not decode.
    pub fn decode(direction: Direction, text: &str) -> Frame {
        let decoded = match direction {
            Direction::ToServer => ClientMessage::decode(text).ok().map(Frame::Client),
            Direction::ToClient => ServerMessage::decode(text).ok().map(Frame::Server),
        };
        decoded.unwrap_or_else(|| Frame::Text(text.to_owned()))
    }

    /// The frame as it goes on the wire: messages are encoded, text is sent as is.
    pub fn to_message(&self) -> Message {
        match self {
            Frame::Client(m) => Message::text(m.encode()),
            Frame::Server(m) => Message::text(m.encode()),
            Frame::Text(t) => Message::text(t.clone()),
            Frame::Binary(b) => Message::binary(b.clone()),
        }
    }

    /// The client message, if this is one.
    pub fn as_client(&self) -> Option<&ClientMessage> {
        match self {
            Frame::Client(m) => Some(m),
            _ => None,
        }
    }

    /// The server message, if this is one.
    pub fn as_server(&self) -> Option<&ServerMessage> {
        match self {
            Frame::Server(m) => Some(m),
            _ => None,
        }
    }

    /// The signal this frame carries (a `signal` message either way), if any.
    pub fn signal(&self) -> Option<&Signal> {
        match self {
            Frame::Client(ClientMessage::Signal { signal, .. })
            | Frame::Server(ServerMessage::Signal { signal, .. }) => Some(signal),
            _ => None,
        }
    }

    /// The SDP of an offer or answer this frame carries, if any.
    pub fn sdp(&self) -> Option<&str> {
        match self.signal()? {
            Signal::Offer { sdp } | Signal::Answer { sdp } => Some(sdp.as_str()),
            _ => None,
        }
    }

    /// This frame with the SDP of its offer or answer replaced by `rewrite(sdp)`; any other
    /// frame unchanged. A rewritten SDP the protocol would refuse (too long, not starting with
    /// `v=0`) is still sent, as raw [`Frame::Text`], so the receiver's validation is tested.
    pub fn map_sdp(self, rewrite: impl FnOnce(&str) -> String) -> Frame {
        let direction = match &self {
            Frame::Client(_) => Direction::ToServer,
            Frame::Server(_) => Direction::ToClient,
            Frame::Text(_) | Frame::Binary(_) => return self,
        };
        let Some(sdp) = self.sdp() else {
            return self;
        };
        let sdp = rewrite(sdp);
        let encoded = match &self {
            Frame::Client(m) => serde_json::to_value(m),
            Frame::Server(m) => serde_json::to_value(m),
            Frame::Text(_) | Frame::Binary(_) => return self,
        };
        let Ok(mut value) = encoded else {
            return self;
        };
        value["signal"]["sdp"] = serde_json::Value::String(sdp);
        Frame::decode(direction, &value.to_string())
    }

    /// The message's `type` (`signal`, `pair_prompt`…), `text` or `binary` otherwise.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Client(m) => m.kind(),
            Frame::Server(m) => m.kind(),
            Frame::Text(_) => "text",
            Frame::Binary(_) => "binary",
        }
    }
}

/// What the proxy does with an intercepted frame. A rule returns any number of them, carried
/// out in order; none at all drops the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver the intercepted frame unchanged, byte for byte, in its direction.
    Pass,
    /// Deliver this frame instead (possibly rewritten), in the intercepted frame's direction
    /// on the same connection.
    Forward(Frame),
    /// Send a frame on any proxied connection, to either side: `Direction::ToServer` goes to
    /// that connection's upstream, `Direction::ToClient` to its client.
    Send {
        /// The connection.
        conn: ConnIndex,
        /// Which side of it receives the frame.
        direction: Direction,
        /// The frame.
        frame: Frame,
    },
    /// Close a proxied connection on both sides.
    Close(ConnIndex),
}

impl Action {
    /// Inject `frame` into `conn`'s client.
    pub fn to_client(conn: ConnIndex, frame: Frame) -> Action {
        Action::Send {
            conn,
            direction: Direction::ToClient,
            frame,
        }
    }

    /// Inject `frame` into `conn`'s upstream (the real server sees it from that connection).
    pub fn to_server(conn: ConnIndex, frame: Frame) -> Action {
        Action::Send {
            conn,
            direction: Direction::ToServer,
            frame,
        }
    }
}

/// The decision function of a [`MitmProxy`]: called once per frame, under one lock, with the
/// frame's direction, its connection and the decoded frame; answers what becomes of it. Every
/// closure `FnMut(&mut ProxyCtx, Direction, ConnIndex, Frame) -> Vec<Action>` is one (state a
/// rule keeps lives in what the closure captures).
pub trait Rule:
    FnMut(&mut ProxyCtx, Direction, ConnIndex, Frame) -> Vec<Action> + Send + 'static
{
}

impl<F> Rule for F where
    F: FnMut(&mut ProxyCtx, Direction, ConnIndex, Frame) -> Vec<Action> + Send + 'static
{
}

/// A rule that passes every frame unchanged.
pub fn transparent() -> impl Rule {
    |_, _, _, _| vec![Action::Pass]
}

/// What a [`Rule`] can see besides the frame.
#[derive(Debug)]
pub struct ProxyCtx {
    log: FrameLog,
    connections: usize,
    open: Vec<ConnIndex>,
}

impl ProxyCtx {
    /// Every frame recorded so far (the frame being decided on included).
    pub fn log(&self) -> &FrameLog {
        &self.log
    }

    /// How many clients have connected so far.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The connections open now, in connection order.
    pub fn open(&self) -> &[ConnIndex] {
        &self.open
    }
}

/// Who put a frame on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client or the server sent it; the proxy received it.
    Peer,
    /// The proxy emitted it (a [`Action::Forward`] rewrite or an [`Action::Send`] injection).
    Proxy,
}

/// One recorded frame.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub index: usize,
    /// Time since the proxy started.
    pub at: Duration,
    /// The connection it travelled on.
    pub conn: ConnIndex,
    /// Which way it travelled.
    pub direction: Direction,
    /// Who sent it.
    pub origin: Origin,
    /// The frame, decoded for its direction.
    pub frame: Frame,
}

/// The shared record of every frame a proxy saw or emitted. Cloning shares the record.
#[derive(Debug, Clone)]
pub struct FrameLog {
    inner: Arc<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    started: Instant,
    entries: Mutex<Vec<LogEntry>>,
    grew: Notify,
}

impl FrameLog {
    fn new() -> Self {
        FrameLog {
            inner: Arc::new(LogInner {
                started: Instant::now(),
                entries: Mutex::new(Vec::new()),
                grew: Notify::new(),
            }),
        }
    }

    /// A copy of every entry so far, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.lock().clone()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The entries for which `keep` holds, oldest first.
    pub fn filter(&self, mut keep: impl FnMut(&LogEntry) -> bool) -> Vec<LogEntry> {
        self.lock().iter().filter(|e| keep(e)).cloned().collect()
    }

    /// The first entry for which `pick` returns something, mapped.
    pub fn find_map<T>(&self, pick: impl FnMut(&LogEntry) -> Option<T>) -> Option<T> {
        self.lock().iter().find_map(pick)
    }

    /// Frames received from peers carrying an offer, answer or other signal, oldest first,
    /// with their connection and direction.
    pub fn signals(&self) -> Vec<LogEntry> {
        self.filter(|e| e.origin == Origin::Peer && e.frame.signal().is_some())
    }

    /// Wait until some entry satisfies `pick` and return its mapping, or `None` after
    /// `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&LogEntry) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let grew = self.inner.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if let Some(found) = self.lock().iter().find_map(&mut pick) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                return None;
            }
        }
    }

    fn record(&self, conn: ConnIndex, direction: Direction, origin: Origin, frame: Frame) {
        let mut entries = self.lock();
        let index = entries.len();
        entries.push(LogEntry {
            index,
            at: self.inner.started.elapsed(),
            conn,
            direction,
            origin,
            frame,
        });
        drop(entries);
        self.inner.grew.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogEntry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running man-in-the-middle proxy. Dropping it stops accepting and closes every proxied
/// connection.
#[derive(Debug)]
pub struct MitmProxy {
    local_addr: SocketAddr,
    log: FrameLog,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl MitmProxy {
    /// Listen on `127.0.0.1:0` and proxy every client to `upstream_url` (the real server's
    /// `ws://…/ws`) through the closure `rule`.
    pub async fn start(
        upstream_url: &str,
        rule: impl FnMut(&mut ProxyCtx, Direction, ConnIndex, Frame) -> Vec<Action> + Send + 'static,
    ) -> std::io::Result<MitmProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let log = FrameLog::new();
        let shared = Arc::new(Shared {
            upstream: upstream_url.to_owned(),
            state: Mutex::new(State {
                rule: Box::new(rule),
                ctx: ProxyCtx {
                    log: log.clone(),
                    connections: 0,
                    open: Vec::new(),
                },
                pipes: HashMap::new(),
            }),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MitmProxy {
            local_addr,
            log,
            shared,
            accept,
        })
    }

    /// The URL clients connect to instead of the real server, `ws://127.0.0.1:<port>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.local_addr)
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared frame log.
    pub fn log(&self) -> &FrameLog {
        &self.log
    }

    /// Send `frame` from the test itself to one side of `conn` (recorded as
    /// [`Origin::Proxy`]). `false` when that connection is not open.
    pub fn inject(&self, conn: ConnIndex, direction: Direction, frame: Frame) -> bool {
        let state = self.shared.lock();
        state.deliver(conn, direction, Origin::Proxy, frame)
    }

    /// Close one proxied connection on both sides.
    pub fn close(&self, conn: ConnIndex) {
        self.shared.lock().close(conn);
    }

    /// Cut one proxied connection as a network that went away would: both TCP connections
    /// are dropped without a WebSocket Close, so neither end hears a goodbye.
    pub fn cut(&self, conn: ConnIndex) {
        // (The pipes stay until the writers are stopped: closing their queues first would
        // let them close their sockets politely.)
        if let Some(pipes) = self.shared.lock().pipes.get(&conn) {
            pipes.cut.notify_one();
        }
    }

    /// Stop accepting and close every proxied connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MitmProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut state = self.shared.lock();
        let conns: Vec<ConnIndex> = state.pipes.keys().copied().collect();
        for conn in conns {
            state.close(conn);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replacing DTLS fingerprints
// ---------------------------------------------------------------------------------------------

/// `sdp` with the value of every `a=fingerprint:` line replaced by `new_fp` (the hash name,
/// e.g. `sha-256`, is kept). Line endings are preserved.
pub fn rewrite_sdp_fingerprints(sdp: &str, new_fp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let (body, ending) = split_line_ending(line);
            match body.strip_prefix("a=fingerprint:") {
                Some(rest) => {
                    let hash = rest.split_whitespace().next().unwrap_or("sha-256");
                    format!("a=fingerprint:{hash} {new_fp}{ending}")
                }
                None => line.to_owned(),
            }
        })
        .collect()
}

/// The first `a=fingerprint:sha-256` value in `sdp` (`AB:CD:…`), if any.
pub fn sdp_fingerprint(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=fingerprint:")?;
        let (hash, value) = rest.split_once(' ')?;
        hash.eq_ignore_ascii_case("sha-256")
            .then(|| value.trim().to_owned())
    })
}

/// A random, well-formed SHA-256 fingerprint: 32 bytes as upper-case hex pairs joined by `:`.
pub fn random_fingerprint() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn split_line_ending(line: &str) -> (&str, &str) {
    if let Some(body) = line.strip_suffix("\r\n") {
        (body, "\r\n")
    } else if let Some(body) = line.strip_suffix('\n') {
        (body, "\n")
    } else {
        (line, "")
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Shared {
    upstream: String,
    state: Mutex<State>,
}

struct State {
    rule: Box<dyn Rule>,
    ctx: ProxyCtx,
    pipes: HashMap<ConnIndex, Pipes>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("ctx", &self.ctx)
            .field("pipes", &self.pipes.len())
            .finish_non_exhaustive()
    }
}

/// The outbound queues of one proxied connection; `None` closes that side.
#[derive(Debug)]
struct Pipes {
    to_client: mpsc::UnboundedSender<Option<Message>>,
    to_server: mpsc::UnboundedSender<Option<Message>>,
    /// Drops both sockets at once, without a WebSocket Close (see [`MitmProxy::cut`]).
    cut: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Run the rule on one received frame and carry out its actions.
    fn intercept(&mut self, conn: ConnIndex, direction: Direction, message: Message) {
        let frame = match &message {
            Message::Text(text) => Frame::decode(direction, text.as_str()),
            Message::Binary(bytes) => Frame::Binary(bytes.to_vec()),
            _ => return,
        };
        self.ctx
            .log
            .record(conn, direction, Origin::Peer, frame.clone());
        let actions = (self.rule)(&mut self.ctx, direction, conn, frame);
        for action in actions {
            match action {
                Action::Pass => {
                    self.send_raw(conn, direction, message.clone());
                }
                Action::Forward(frame) => {
                    self.deliver(conn, direction, Origin::Proxy, frame);
                }
                Action::Send {
                    conn,
                    direction,
                    frame,
                } => {
                    self.deliver(conn, direction, Origin::Proxy, frame);
                }
                Action::Close(conn) => self.close(conn),
            }
        }
    }

    /// Record and send a frame the proxy emits.
    fn deliver(&self, conn: ConnIndex, direction: Direction, origin: Origin, frame: Frame) -> bool {
        let message = frame.to_message();
        // Record what the receiver will decode, not how the rule spelled it.
        let recorded = match &message {
            Message::Text(text) => Frame::decode(direction, text.as_str()),
            _ => frame,
        };
        if !self.pipes.contains_key(&conn) {
            return false;
        }
        self.ctx.log.record(conn, direction, origin, recorded);
        self.send_raw(conn, direction, message)
    }

    fn send_raw(&self, conn: ConnIndex, direction: Direction, message: Message) -> bool {
        let Some(pipes) = self.pipes.get(&conn) else {
            return false;
        };
        let queue = match direction {
            Direction::ToServer => &pipes.to_server,
            Direction::ToClient => &pipes.to_client,
        };
        queue.send(Some(message)).is_ok()
    }

    fn close(&mut self, conn: ConnIndex) {
        if let Some(pipes) = self.pipes.remove(&conn) {
            let _ = pipes.to_client.send(None);
            let _ = pipes.to_server.send(None);
        }
        self.ctx.open.retain(|c| *c != conn);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let conn = {
            let mut state = shared.lock();
            let conn = ConnIndex(state.ctx.connections);
            state.ctx.connections += 1;
            conn
        };
        tokio::spawn(proxy_connection(tcp, conn, shared.clone()));
    }
}

/// How long the proxy waits for a client's or the upstream's WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn proxy_connection(tcp: TcpStream, conn: ConnIndex, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(client)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_async(tcp)).await
    else {
        return;
    };
    let upstream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async(shared.upstream.as_str()),
    )
    .await;
    let Ok(Ok((server, _))) = upstream else {
        let mut client = client;
        let _ = client.close(None).await;
        return;
    };
    let (client_tx, client_rx) = mpsc::unbounded_channel();
    let (server_tx, server_rx) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    {
        let mut state = shared.lock();
        state.pipes.insert(
            conn,
            Pipes {
                to_client: client_tx,
                to_server: server_tx,
                cut: cut.clone(),
            },
        );
        state.ctx.open.push(conn);
    }
    let (client_sink, client_stream) = client.split();
    let (server_sink, server_stream) = server.split();
    let writers = [
        tokio::spawn(write_side(client_sink, client_rx)),
        tokio::spawn(write_side(server_sink, server_rx)),
    ];
    // Either side closing ends the connection: the reader that stops closes both queues.
    tokio::select! {
        () = read_side(client_stream, conn, Direction::ToServer, &shared) => {}
        () = read_side(server_stream, conn, Direction::ToClient, &shared) => {}
        () = cut.notified() => {
            // Dropping the writers and the readers drops both sockets: no Close frame.
            for writer in writers {
                writer.abort();
                let _ = writer.await;
            }
            let mut state = shared.lock();
            state.pipes.remove(&conn);
            state.ctx.open.retain(|c| *c != conn);
            return;
        }
    }
    shared.lock().close(conn);
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

async fn read_side<S>(mut stream: S, conn: ConnIndex, direction: Direction, shared: &Shared)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                shared.lock().intercept(conn, direction, message);
            }
            Message::Close(_) => return,
            // Pings are answered by each WebSocket endpoint itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

async fn write_side<S>(mut sink: S, mut queue: mpsc::UnboundedReceiver<Option<Message>>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(Some(message)) = queue.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n\
        a=fingerprint:sha-256 AA:BB:CC\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=fingerprint:sha-256 DD:EE:FF\r\na=setup:actpass\r\n";

    #[test]
    fn fingerprints_are_found_and_rewritten_everywhere() {
        assert_eq!(sdp_fingerprint(SDP).as_deref(), Some("AA:BB:CC"));
        let fake = random_fingerprint();
        let rewritten = rewrite_sdp_fingerprints(SDP, &fake);
        assert_eq!(sdp_fingerprint(&rewritten), Some(fake.clone()));
        assert_eq!(rewritten.matches(&fake).count(), 2, "{rewritten}");
        assert!(!rewritten.contains("AA:BB:CC") && !rewritten.contains("DD:EE:FF"));
        // Everything else is untouched, line endings included.
        assert_eq!(
            rewritten.len(),
            SDP.len() + 2 * (fake.len() - "AA:BB:CC".len())
        );
        assert!(rewritten.ends_with("a=setup:actpass\r\n"));
        assert_eq!(rewrite_sdp_fingerprints("v=0\ns=-", "X"), "v=0\ns=-");
        assert_eq!(sdp_fingerprint("v=0\r\na=fingerprint:sha-1 AB\r\n"), None);
    }

    #[test]
    fn random_fingerprints_look_like_sha256() {
        let fp = random_fingerprint();
        let parts: Vec<&str> = fp.split(':').collect();
        assert_eq!(parts.len(), 32);
        assert!(parts.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        }));
        assert_ne!(fp, random_fingerprint());
    }

    #[test]
    fn frames_decode_for_their_direction() {
        let ping = r#"{"type":"ping","seq":3}"#;
        assert_eq!(
            Frame::decode(Direction::ToServer, ping),
            Frame::Client(ClientMessage::Ping { seq: 3 })
        );
        assert_eq!(
            Frame::decode(Direction::ToClient, ping),
            Frame::Server(ServerMessage::Ping { seq: 3 })
        );
        let welcome_to_server = r#"{"type":"registered","code":"ABCD"}"#;
        assert_eq!(
            Frame::decode(Direction::ToServer, welcome_to_server),
            Frame::Text(welcome_to_server.to_owned())
        );
        assert_eq!(Frame::Text("x".into()).kind(), "text");
    }

    #[test]
    fn map_sdp_rewrites_offers_and_keeps_other_frames() {
        let offer = format!(
            r#"{{"type":"signal","session":"{}","signal":{{"kind":"offer","sdp":{}}}}}"#,
            "0".repeat(32),
            serde_json::Value::String(SDP.to_owned())
        );
        let frame = Frame::decode(Direction::ToClient, &offer);
        assert!(matches!(frame, Frame::Server(_)), "{frame:?}");
        let fake = random_fingerprint();
        let rewritten = frame.map_sdp(|sdp| rewrite_sdp_fingerprints(sdp, &fake));
        assert!(matches!(rewritten, Frame::Server(_)));
        assert_eq!(rewritten.sdp().and_then(sdp_fingerprint), Some(fake));
        // An SDP the protocol refuses still goes out, as raw text.
        let broken = rewritten.map_sdp(|_| "not an sdp".to_owned());
        assert!(
            matches!(&broken, Frame::Text(t) if t.contains("not an sdp")),
            "{broken:?}"
        );
        let ping = Frame::Client(ClientMessage::Ping { seq: 1 });
        assert_eq!(ping.clone().map_sdp(|_| String::new()), ping);
    }
}
