//! Abusive clients: scripts of bad frames, each frame paired with the answer the server must
//! give, run over many connections from several loopback source addresses.
//!
//! The server answers a connection's frames in order, one reply per frame (an `error`, or the
//! reply a valid message earns), so replies are matched to frames first in, first out. A frame
//! over the connection's message budget is answered `rate_limited` instead; once the server
//! says it is closing the connection (the flooder's last `rate_limited`), the frames still in
//! flight are dropped unread, and counted as excused. Everything else without an answer, and
//! every answer that differs from the expected one, is a failure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{
    ClientMessage, DeviceId, DeviceName, ErrorCode, PROTOCOL_VERSION, PairOutcome, RoutingCode,
    Sdp, ServerMessage, SessionId, ShortText, Signal,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The protocol's frame limit, and the transport's (the server accepts frames up to twice the
/// protocol limit so that it can answer `frame_too_large`; longer ones end the connection).
const MAX_FRAME: usize = proxim_protocol::MAX_FRAME_BYTES;
const TRANSPORT_MAX_FRAME: usize = 2 * MAX_FRAME;

/// How long a connection waits for the answers to its frames once it has sent them all.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The longest one abusive connection may live.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Connecting (TCP + WebSocket upgrade) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What kind of abuse a frame is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Category {
    /// A valid frame a script needs (hello, register_desktop), or a ping.
    Valid,
    /// Not JSON, no `type`, wrong fields.
    Malformed,
    /// A `type` no message has.
    UnknownType,
    /// A server message sent by a client.
    WrongDirection,
    /// A binary frame.
    Binary,
    /// Messages out of order: before `hello`, a second `hello`, unknown sessions, a pair
    /// request from a desktop.
    OutOfOrder,
    /// A `hello` with an unsupported protocol version.
    BadVersion,
    /// Pair requests for random codes.
    RandomCode,
    /// Pair requests beyond a code's attempt window.
    CodeAttempts,
    /// A text or binary frame over 64 KiB, under the transport limit.
    Oversized,
    /// A frame over the transport limit (128 KiB).
    Huge,
    /// Frames of a flood far over the message budget.
    Flood,
}

impl Category {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Category::Valid => "valid (setup, ping)",
            Category::Malformed => "malformed JSON/fields",
            Category::UnknownType => "unknown type",
            Category::WrongDirection => "wrong direction",
            Category::Binary => "binary frame",
            Category::OutOfOrder => "out of order",
            Category::BadVersion => "unsupported version",
            Category::RandomCode => "random code",
            Category::CodeAttempts => "code attempts > 5/60s",
            Category::Oversized => "oversized 64-128 KiB",
            Category::Huge => "huge > 128 KiB",
            Category::Flood => "flood",
        }
    }
}

/// The answer a frame must get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Error(ErrorCode),
    Welcome,
    Pong(u64),
    Registered,
    /// `pair_result {outcome: unknown_code}` (or, if a random code hits a live one,
    /// `pair_pending`).
    UnknownCode,
    PairPending,
    /// The transport closes the connection (a frame over the transport limit); an error
    /// `frame_too_large` is accepted too.
    TransportClose,
}

/// One frame of a script.
#[derive(Debug, Clone)]
struct Step {
    frame: Message,
    expect: Expect,
    category: Category,
    /// Send only once every earlier frame was answered.
    wait_for_answers: bool,
}

impl Step {
    fn text(text: impl Into<String>, expect: Expect, category: Category) -> Step {
        Step {
            frame: Message::text(text.into()),
            expect,
            category,
            wait_for_answers: false,
        }
    }

    fn message(message: &ClientMessage, expect: Expect, category: Category) -> Step {
        Step::text(message.encode(), expect, category)
    }
}

/// Whether the server closes the connection after a frame: documented for `frame_too_large`,
/// `unsupported_version` and the flooder's last `rate_limited`.
fn closes_after(expect: &Expect) -> bool {
    matches!(
        expect,
        Expect::Error(ErrorCode::FrameTooLarge | ErrorCode::UnsupportedVersion)
            | Expect::TransportClose
    )
}

/// Counters of one category.
#[derive(Debug, Clone, Default)]
pub(crate) struct CategoryTally {
    pub(crate) sent: u64,
    /// Answered as expected.
    pub(crate) expected: u64,
    /// Answered `rate_limited` (over budget) instead.
    pub(crate) rate_limited: u64,
    /// Not answered, dropped after the server said it closes the connection.
    pub(crate) excused: u64,
    /// Not answered (failure).
    pub(crate) unanswered: u64,
    /// Answered with something else (failure).
    pub(crate) wrong: u64,
}

/// Everything the abusive clients saw.
#[derive(Debug, Default)]
pub(crate) struct AbuseTally {
    pub(crate) categories: BTreeMap<Category, CategoryTally>,
    /// `error` replies by code.
    pub(crate) error_codes: BTreeMap<String, u64>,
    pub(crate) connections: u64,
    pub(crate) connect_refused_429: u64,
    pub(crate) connect_failed: u64,
    /// Connections the server had to close (after `frame_too_large`, `unsupported_version`,
    /// a flood, a frame over the transport limit) and did.
    pub(crate) closes_expected: u64,
    pub(crate) closes_seen: u64,
    pub(crate) flood_disconnects: u64,
    /// Messages that answer no frame (prompts to an abusive desktop, its lockout notice).
    pub(crate) unsolicited: u64,
    /// Desktops the abusive clients registered (each leaves a code reservation behind).
    pub(crate) registrations: u64,
    /// Code-attempt scripts: the desktop was told about the lockout.
    pub(crate) owners_notified: u64,
    pub(crate) owners_expected: u64,
    /// Unanswered frames (counted in `unanswered` too) of connections that the server was
    /// refusing over budget and that ended in a TCP reset: the server closed while input was
    /// unread, and the kernel discarded the replies still queued, the disconnect notice
    /// among them.
    pub(crate) lost_in_reset: u64,
    /// How connections that ended before the script did ended (`close frame`, `eof`, the
    /// transport error).
    pub(crate) ends: BTreeMap<String, u64>,
    /// The first failures of each category, explained.
    pub(crate) examples: Vec<String>,
}

impl AbuseTally {
    pub(crate) fn failures(&self) -> u64 {
        let frames: u64 = self
            .categories
            .values()
            .map(|c| c.unanswered + c.wrong)
            .sum();
        frames + (self.closes_expected - self.closes_seen.min(self.closes_expected))
    }

    pub(crate) fn frames_sent(&self) -> u64 {
        self.categories.values().map(|c| c.sent).sum()
    }

    fn note(&mut self, example: String) {
        // A few per kind of failure (the text before the first ':').
        let kind = example.split(':').next().unwrap_or_default().to_owned();
        let same = self
            .examples
            .iter()
            .filter(|e| e.split(':').next() == Some(kind.as_str()))
            .count();
        if same < 3 && self.examples.len() < 30 {
            self.examples.push(example);
        }
    }
}

/// How the abusive load is shaped.
#[derive(Debug, Clone)]
pub(crate) struct AbuseConfig {
    pub(crate) server: SocketAddr,
    /// Source addresses 127.0.0.2 … 127.0.0.(1 + ips).
    pub(crate) ips: u8,
    /// Concurrent connections per source address (the server's cap is 32).
    pub(crate) per_ip: usize,
    /// Connections in total, at most.
    pub(crate) max_connections: u64,
    /// Each client waits at least this long between the starts of its connections.
    pub(crate) cycle: Duration,
    pub(crate) seed: u64,
}

/// Run abusive clients until `max_connections` are used, `stop` is set, or `deadline`.
pub(crate) async fn run(
    config: AbuseConfig,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> AbuseTally {
    let tally = Arc::new(Mutex::new(AbuseTally::default()));
    let started = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for ip in 0..config.ips {
        for slot in 0..config.per_ip {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + ip));
            let seed = config.seed ^ (u64::from(ip) << 32) ^ slot as u64;
            workers.push(tokio::spawn(worker(
                config.clone(),
                source,
                seed,
                stop.clone(),
                deadline,
                started.clone(),
                tally.clone(),
            )));
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *tally)
}

async fn worker(
    config: AbuseConfig,
    source: IpAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    started: Arc<AtomicU64>,
    tally: Arc<Mutex<AbuseTally>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failed_connects = 0u32;
    // Spread the clients' cycles.
    let jitter = config.cycle.mul_f64(rng.random::<f64>());
    tokio::time::sleep(jitter).await;
    loop {
        let cycle_started = Instant::now();
        let n = started.fetch_add(1, Ordering::Relaxed);
        if n >= config.max_connections || stop.load(Ordering::Relaxed) || cycle_started >= deadline
        {
            return;
        }
        let script = pick_script(&mut rng);
        let mut local = AbuseTally::default();
        let ok = match script {
            Script::Steps(steps) => match connect(config.server, source).await {
                Ok(ws) => {
                    local.connections += 1;
                    run_steps(ws, steps, &mut local).await;
                    true
                }
                Err(e) => {
                    e.count(&mut local);
                    false
                }
            },
            Script::CodeAttempts => {
                code_attempts(config.server, source, &mut rng, &mut local).await
            }
        };
        merge(&tally, local);
        let next = (cycle_started + config.cycle).min(deadline);
        tokio::time::sleep_until(next).await;
        if ok {
            failed_connects = 0;
        } else {
            // Refused (429 while the server releases a slot) or failed: back off a little.
            failed_connects += 1;
            let backoff = Duration::from_millis(20 * u64::from(failed_connects.min(25)));
            tokio::time::sleep(backoff).await;
        }
    }
}

fn merge(tally: &Mutex<AbuseTally>, local: AbuseTally) {
    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    for (category, c) in local.categories {
        let e = t.categories.entry(category).or_default();
        e.sent += c.sent;
        e.expected += c.expected;
        e.rate_limited += c.rate_limited;
        e.excused += c.excused;
        e.unanswered += c.unanswered;
        e.wrong += c.wrong;
    }
    for (code, n) in local.error_codes {
        *t.error_codes.entry(code).or_default() += n;
    }
    t.connections += local.connections;
    t.connect_refused_429 += local.connect_refused_429;
    t.connect_failed += local.connect_failed;
    t.closes_expected += local.closes_expected;
    t.closes_seen += local.closes_seen;
    t.flood_disconnects += local.flood_disconnects;
    t.unsolicited += local.unsolicited;
    t.lost_in_reset += local.lost_in_reset;
    t.registrations += local.registrations;
    t.owners_notified += local.owners_notified;
    t.owners_expected += local.owners_expected;
    for (end, n) in local.ends {
        *t.ends.entry(end).or_default() += n;
    }
    for example in local.examples {
        t.note(example);
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The server refused the upgrade with this HTTP status (429: per-IP cap).
    Status(u16),
    Other(String),
}

impl ConnectError {
    fn count(&self, tally: &mut AbuseTally) {
        match self {
            ConnectError::Status(429) => tally.connect_refused_429 += 1,
            ConnectError::Status(status) => {
                tally.connect_failed += 1;
                tally.note(format!("connect refused with HTTP {status}"));
            }
            ConnectError::Other(e) => {
                tally.connect_failed += 1;
                tally.note(format!("connect failed: {e}"));
            }
        }
    }
}

/// Open a WebSocket to the server from `source` (a loopback address of this machine).
pub(crate) async fn connect(server: SocketAddr, source: IpAddr) -> Result<Ws, ConnectError> {
    let attempt = async {
        let socket =
            tokio::net::TcpSocket::new_v4().map_err(|e| ConnectError::Other(e.to_string()))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| ConnectError::Other(format!("bind {source}: {e}")))?;
        let tcp = socket
            .connect(server)
            .await
            .map_err(|e| ConnectError::Other(format!("connect from {source}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{server}/ws");
        match tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                Err(ConnectError::Status(response.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Other("connect timed out".to_owned())),
    }
}

// ---------------------------------------------------------------------------------------------
// Running a script
// ---------------------------------------------------------------------------------------------

/// What one connection saw, beyond the tally.
#[derive(Debug, Default)]
struct Run {
    /// Replies that answered frames, in order.
    replies: Vec<ServerMessage>,
    /// Messages that answered no frame.
    unsolicited: Vec<ServerMessage>,
}

/// Send `steps` on `ws` while reading the answers; tally every frame's fate; close.
async fn run_steps(ws: Ws, steps: Vec<Step>, tally: &mut AbuseTally) -> Run {
    let (mut sink, mut stream) = ws.split();
    let sent = AtomicUsize::new(0);
    let answered = AtomicUsize::new(0);
    let writer_done = AtomicBool::new(false);
    let notice = AtomicBool::new(false);
    let deadline = Instant::now() + CONNECTION_DEADLINE;

    let writer = async {
        let mut failure = None;
        for (i, step) in steps.iter().enumerate() {
            while step.wait_for_answers && answered.load(Ordering::Acquire) < i {
                if Instant::now() >= deadline || notice.load(Ordering::Acquire) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // The server said it is closing: what we would send now is dropped anyway.
            if notice.load(Ordering::Acquire) || Instant::now() >= deadline {
                break;
            }
            let frame = step.frame.clone();
            match tokio::time::timeout_at(deadline, sink.send(frame)).await {
                Ok(Ok(())) => {
                    sent.store(i + 1, Ordering::Release);
                }
                Ok(Err(e)) => {
                    failure = Some(format!("write {}", end_kind(&e)));
                    break;
                }
                Err(_) => break,
            }
        }
        writer_done.store(true, Ordering::Release);
        failure
    };

    let reader = async {
        let mut run = Run::default();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; steps.len()];
        let mut next = 0usize;
        let mut closed = false;
        let mut reset = false;
        let mut close_notice_at: Option<usize> = None;
        let mut idle_since = Instant::now();
        loop {
            let all_sent_answered =
                writer_done.load(Ordering::Acquire) && next >= sent.load(Ordering::Acquire);
            let must_close = next > 0 && close_notice_at.is_some();
            if closed || (all_sent_answered && !must_close) {
                break;
            }
            if Instant::now() >= deadline
                || (writer_done.load(Ordering::Acquire) && idle_since.elapsed() > ANSWER_WAIT)
            {
                break;
            }
            let frame = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
            let message = match frame {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(Some(Ok(Message::Binary(_)))) => {
                    tally.note("the server sent a binary frame".to_owned());
                    continue;
                }
                Ok(Some(Ok(Message::Close(_)))) => {
                    closed = true;
                    *tally.ends.entry("close frame".to_owned()).or_default() += 1;
                    continue;
                }
                Ok(None) => {
                    closed = true;
                    *tally.ends.entry("eof".to_owned()).or_default() += 1;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    closed = true;
                    reset = true;
                    *tally.ends.entry(end_kind(&e)).or_default() += 1;
                    continue;
                }
            };
            idle_since = Instant::now();
            let message = match ServerMessage::decode(message.as_str()) {
                Ok(m) => m,
                Err(e) => {
                    tally.note(format!("undecodable server frame: {e}"));
                    continue;
                }
            };
            if let ServerMessage::Registered { .. } = &message {
                tally.registrations += 1;
            }
            if let ServerMessage::Error { code, .. } = &message {
                *tally.error_codes.entry(wire_name(*code)).or_default() += 1;
            }
            if next >= steps.len() || is_unsolicited(&message) {
                run.unsolicited.push(message);
                continue;
            }
            let step = &steps[next];
            let outcome = judge(step, &message);
            if let Outcome::Wrong(why) = &outcome {
                tally.note(format!(
                    "{}: frame {} of {}: {why}",
                    step.category.name(),
                    next + 1,
                    steps.len()
                ));
            }
            let closing = match &message {
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message,
                } => message.as_str().contains("closing"),
                ServerMessage::Error { code, .. } => {
                    matches!(
                        code,
                        ErrorCode::FrameTooLarge | ErrorCode::UnsupportedVersion
                    )
                }
                _ => false,
            };
            outcomes[next] = Some(outcome);
            next += 1;
            answered.store(next, Ordering::Release);
            run.replies.push(message);
            if closing && close_notice_at.is_none() {
                close_notice_at = Some(next);
                notice.store(true, Ordering::Release);
            }
        }
        (run, outcomes, closed, reset, close_notice_at)
    };

    let (write_failure, (run, outcomes, closed, reset, close_notice_at)) =
        tokio::join!(writer, reader);
    let refused = outcomes
        .iter()
        .any(|o| matches!(o, Some(Outcome::RateLimited)));
    if let Some(failure) = write_failure {
        *tally.ends.entry(failure).or_default() += 1;
    }
    let sent = sent.load(Ordering::Acquire);

    // A frame over the transport limit is answered by the connection closing.
    let mut outcomes = outcomes;
    if closed
        && let Some(i) = outcomes.iter().position(Option::is_none)
        && i < sent
        && steps[i].expect == Expect::TransportClose
    {
        outcomes[i] = Some(Outcome::Expected);
    }

    let expect_close = close_notice_at.is_some()
        || outcomes
            .iter()
            .zip(&steps)
            .any(|(o, s)| o.is_some() && closes_after(&s.expect));
    if expect_close {
        tally.closes_expected += 1;
        // Give the server a moment to finish closing if it has not yet.
        let closed = closed || wait_closed(&mut stream, deadline).await;
        if closed {
            tally.closes_seen += 1;
        } else {
            tally.note("the server did not close the connection it said it closes".to_owned());
        }
    }
    if run
        .replies
        .last()
        .is_some_and(|m| matches!(m, ServerMessage::Error { code: ErrorCode::RateLimited, message } if message.as_str().contains("closing")))
    {
        tally.flood_disconnects += 1;
    }
    tally.unsolicited += run.unsolicited.len() as u64;

    for (i, (step, outcome)) in steps.iter().zip(outcomes).enumerate() {
        if i >= sent {
            break;
        }
        let c = tally.categories.entry(step.category).or_default();
        c.sent += 1;
        match outcome {
            Some(Outcome::Expected) => c.expected += 1,
            Some(Outcome::RateLimited) => c.rate_limited += 1,
            Some(Outcome::Wrong(_)) => c.wrong += 1,
            None if close_notice_at.is_some_and(|at| i >= at) => c.excused += 1,
            None => {
                c.unanswered += 1;
                if reset && refused {
                    tally.lost_in_reset += 1;
                }
                let why = if closed {
                    "connection closed"
                } else {
                    "silence"
                };
                let example = format!(
                    "{}: frame {} of {} unanswered ({why}), expected {:?}",
                    step.category.name(),
                    i + 1,
                    steps.len(),
                    step.expect
                );
                tally.note(example);
            }
        }
    }

    if !closed {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    }
    run
}

/// A transport error, named for the report.
fn end_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("io {:?}", io.kind()),
        tungstenite::Error::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}

async fn wait_closed<S>(stream: &mut S, deadline: Instant) -> bool
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let until = deadline.min(Instant::now() + Duration::from_secs(3));
    loop {
        match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Expected,
    RateLimited,
    Wrong(String),
}

fn judge(step: &Step, message: &ServerMessage) -> Outcome {
    let ok = match (&step.expect, message) {
        (Expect::Error(want), ServerMessage::Error { code, .. }) => code == want,
        (Expect::Welcome, ServerMessage::Welcome { .. }) => true,
        (Expect::Pong(want), ServerMessage::Pong { seq }) => seq == want,
        (Expect::Registered, ServerMessage::Registered { .. }) => true,
        (
            Expect::UnknownCode,
            ServerMessage::PairResult {
                session: None,
                outcome: PairOutcome::UnknownCode,
                ..
            },
        ) => true,
        (Expect::UnknownCode | Expect::PairPending, ServerMessage::PairPending { .. }) => true,
        (
            Expect::TransportClose,
            ServerMessage::Error {
                code: ErrorCode::FrameTooLarge,
                ..
            },
        ) => true,
        _ => false,
    };
    if ok {
        return Outcome::Expected;
    }
    if let ServerMessage::Error {
        code: ErrorCode::RateLimited,
        ..
    } = message
    {
        return Outcome::RateLimited;
    }
    Outcome::Wrong(format!(
        "expected {:?}, got {}",
        step.expect,
        describe(message)
    ))
}

/// Messages the server sends on its own, not as the answer to a frame.
fn is_unsolicited(message: &ServerMessage) -> bool {
    matches!(
        message,
        ServerMessage::PairPrompt { .. }
            | ServerMessage::SessionEnded { .. }
            | ServerMessage::Ping { .. }
            | ServerMessage::Bye { .. }
            | ServerMessage::PairResult {
                session: Some(_),
                ..
            }
    )
}

fn describe(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Error { code, message } => format!("error {} ({message})", wire_name(*code)),
        other => other.kind().to_owned(),
    }
}

/// An error code as it appears on the wire (`malformed_message`).
pub(crate) fn wire_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

// ---------------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------------

enum Script {
    Steps(Vec<Step>),
    /// Two connections: a desktop, and a phone that tries its code too often.
    CodeAttempts,
}

fn pick_script(rng: &mut StdRng) -> Script {
    let roll = rng.random_range(0..100u32);
    match roll {
        0..40 => Script::Steps(mixed(rng)),
        40..52 => Script::Steps(out_of_order(rng)),
        52..64 => Script::Steps(random_codes(rng)),
        64..76 => Script::Steps(flood(rng)),
        76..88 => Script::Steps(oversized(rng)),
        88..93 => Script::Steps(huge(rng)),
        _ => Script::CodeAttempts,
    }
}

fn hello() -> ClientMessage {
    ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        client: ShortText::truncated("proxim-loadtest/0"),
    }
}

fn hello_step() -> Step {
    Step::message(&hello(), Expect::Welcome, Category::Valid)
}

/// `hello`, then 10–30 single bad frames of every kind, sometimes an oversized one last.
fn mixed(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = vec![hello_step()];
    let n = rng.random_range(10..=30);
    for _ in 0..n {
        steps.push(single_bad_frame(rng, true));
    }
    if rng.random_bool(0.2) {
        steps.push(oversized_step(rng));
    }
    steps
}

/// Frames before `hello`, `hello`, then frames that do not fit the state.
fn out_of_order(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..rng.random_range(2..=6) {
        let before = match rng.random_range(0..6) {
            0 => signal(random_session(rng), rng),
            1 => pair_response(random_session(rng)),
            2 => leave(random_session(rng)),
            3 => register_desktop(rng),
            4 => pair_request(random_code(rng), rng),
            _ => ClientMessage::Ping { seq: 1 },
        };
        steps.push(Step::message(
            &before,
            Expect::Error(ErrorCode::HelloRequired),
            Category::OutOfOrder,
        ));
    }
    // Decoding comes first: a bad frame before hello is still a bad frame.
    steps.push(Step::text(
        "{\"type\":",
        Expect::Error(ErrorCode::MalformedMessage),
        Category::Malformed,
    ));
    steps.push(hello_step());
    steps.push(Step::message(
        &hello(),
        Expect::Error(ErrorCode::InvalidState),
        Category::OutOfOrder,
    ));
    for _ in 0..rng.random_range(2..=5) {
        steps.push(unknown_session_step(rng));
    }
    steps.push(Step::message(
        &register_desktop(rng),
        Expect::Registered,
        Category::Valid,
    ));
    steps.push(Step::message(
        &pair_request(random_code(rng), rng),
        Expect::Error(ErrorCode::AlreadyRegistered),
        Category::OutOfOrder,
    ));
    steps.push(Step::message(
        &register_desktop(rng),
        Expect::Error(ErrorCode::AlreadyRegistered),
        Category::OutOfOrder,
    ));
    for _ in 0..rng.random_range(0..=3) {
        steps.push(unknown_session_step(rng));
    }
    if rng.random_bool(0.3) {
        // The version is checked on the first hello only: a second one is out of order.
        let version = rng.random_range(2..=u16::MAX);
        steps.push(Step::text(
            format!(r#"{{"type":"hello","version":{version},"client":"x"}}"#),
            Expect::Error(ErrorCode::InvalidState),
            Category::OutOfOrder,
        ));
    }
    steps
}

/// `hello` (sometimes a bad-version `hello` first, which ends the connection), then pair
/// requests for random codes.
fn random_codes(rng: &mut StdRng) -> Vec<Step> {
    if rng.random_bool(0.1) {
        return vec![Step::text(
            format!(
                r#"{{"type":"hello","version":{},"client":"old"}}"#,
                rng.random_range(2..=999u16)
            ),
            Expect::Error(ErrorCode::UnsupportedVersion),
            Category::BadVersion,
        )];
    }
    let mut steps = vec![hello_step()];
    for _ in 0..rng.random_range(10..=40) {
        steps.push(Step::message(
            &pair_request(random_code(rng), rng),
            Expect::UnknownCode,
            Category::RandomCode,
        ));
    }
    steps
}

/// `hello`, then 250–500 frames as fast as the socket takes them.
fn flood(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = vec![hello_step()];
    for seq in 0..rng.random_range(250..=500u64) {
        let mut step = if rng.random_bool(0.6) {
            Step::message(
                &ClientMessage::Ping { seq },
                Expect::Pong(seq),
                Category::Flood,
            )
        } else {
            single_bad_frame(rng, true)
        };
        step.category = Category::Flood;
        steps.push(step);
    }
    steps
}

/// Sometimes `hello`, a few bad frames, then one frame over 64 KiB that ends the connection.
fn oversized(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = Vec::new();
    if rng.random_bool(0.7) {
        steps.push(hello_step());
        for _ in 0..rng.random_range(0..4) {
            steps.push(single_bad_frame(rng, true));
        }
    }
    steps.push(oversized_step(rng));
    steps
}

/// `hello`, then one frame over the transport limit, sent once `welcome` arrived.
fn huge(rng: &mut StdRng) -> Vec<Step> {
    let size = rng.random_range(TRANSPORT_MAX_FRAME + 1024..=3 * TRANSPORT_MAX_FRAME);
    let frame = if rng.random_bool(0.5) {
        Message::text(padded_json(size))
    } else {
        Message::binary(vec![0xA5u8; size])
    };
    vec![
        hello_step(),
        Step {
            frame,
            expect: Expect::TransportClose,
            category: Category::Huge,
            wait_for_answers: true,
        },
    ]
}

fn oversized_step(rng: &mut StdRng) -> Step {
    let size = rng.random_range(MAX_FRAME + 1..TRANSPORT_MAX_FRAME - 1024);
    let frame = match rng.random_range(0..3) {
        0 => Message::text(padded_json(size)),
        1 => Message::text("x".repeat(size)),
        _ => Message::binary(vec![0x5Au8; size]),
    };
    Step {
        frame,
        expect: Expect::Error(ErrorCode::FrameTooLarge),
        category: Category::Oversized,
        wait_for_answers: false,
    }
}

/// A syntactically valid client message padded to `size` bytes.
fn padded_json(size: usize) -> String {
    let head = r#"{"type":"hello","version":1,"client":""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "a".repeat(pad))
}

/// One small bad frame of a random kind (for a greeted connection when `greeted`).
fn single_bad_frame(rng: &mut StdRng, greeted: bool) -> Step {
    match rng.random_range(0..9) {
        0 | 1 => malformed_step(rng),
        2 => unknown_type_step(rng),
        3 => wrong_direction_step(rng),
        4 => Step {
            frame: Message::binary(vec![rng.random::<u8>(); rng.random_range(0..2048)]),
            expect: Expect::Error(ErrorCode::BinaryFrame),
            category: Category::Binary,
            wait_for_answers: false,
        },
        5 if greeted => unknown_session_step(rng),
        6 if greeted => Step::message(
            &hello(),
            Expect::Error(ErrorCode::InvalidState),
            Category::OutOfOrder,
        ),
        7 if greeted => Step::message(
            &pair_request(random_code(rng), rng),
            Expect::UnknownCode,
            Category::RandomCode,
        ),
        _ => {
            let seq = rng.random::<u32>().into();
            Step::message(
                &ClientMessage::Ping { seq },
                Expect::Pong(seq),
                Category::Valid,
            )
        }
    }
}

fn malformed_step(rng: &mut StdRng) -> Step {
    const FRAMES: &[&str] = &[
        "",
        "not json",
        "{",
        "{\"type\":",
        "[1,2,3]",
        "42",
        "null",
        "\"hello\"",
        "{}",
        "{\"no_type\":true}",
        "{\"type\":42}",
        "{\"type\":null}",
        "{\"type\":\"hello\",\"version\":\"one\",\"client\":\"x\"}",
        "{\"type\":\"hello\",\"version\":1}",
        "{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"seq\":-1}",
        "{\"type\":\"ping\",\"seq\":1,\"extra\":1}",
        "{\"type\":\"signal\",\"session\":\"nothex\",\"signal\":{\"kind\":\"offer\",\"sdp\":\"v=0\"}}",
        "{\"type\":\"signal\",\"session\":\"00000000000000000000000000000000\",\"signal\":{\"kind\":\"bogus\"}}",
        "{\"type\":\"pair_request\",\"code\":\"0OIL\",\"device_id\":\"a\",\"device_name\":\"b\"}",
        "{\"type\":\"register_desktop\",\"device_id\":\"bad id!\",\"device_name\":\"x\"}",
        "{\"type\":\"pair_response\",\"session\":\"00000000000000000000000000000000\",\"accept\":\"yes\"}",
        "{\"type\":\"leave\"}",
        "\u{feff}{\"type\":\"ping\",\"seq\":1}",
        "{\"type\":\"ping\",\"seq\":1}}",
    ];
    let frame = if rng.random_bool(0.15) {
        // Random printable garbage.
        let len = rng.random_range(1..200);
        (0..len)
            .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
            .filter(|c| *c != '{' && *c != '[' && *c != '"' && !c.is_ascii_digit() && *c != '-')
            .collect::<String>()
            + "!"
    } else {
        FRAMES.choose(rng).copied().unwrap_or("{").to_owned()
    };
    Step::text(
        frame,
        Expect::Error(ErrorCode::MalformedMessage),
        Category::Malformed,
    )
}

fn unknown_type_step(rng: &mut StdRng) -> Step {
    const TYPES: &[&str] = &[
        "frobnicate",
        "HELLO",
        "Hello",
        "hello ",
        "admin",
        "shutdown",
        "stats",
        "register",
        "pair",
        "",
    ];
    let kind = if rng.random_bool(0.3) {
        format!("t{:x}", rng.random::<u64>())
    } else {
        TYPES.choose(rng).copied().unwrap_or("x").to_owned()
    };
    Step::text(
        serde_json::json!({ "type": kind, "seq": 1 }).to_string(),
        Expect::Error(ErrorCode::UnknownMessageType),
        Category::UnknownType,
    )
}

/// A message only the server sends, sent by a client.
fn wrong_direction_step(rng: &mut StdRng) -> Step {
    let session = random_session(rng);
    let frame = match rng.random_range(0..7) {
        0 => serde_json::json!({
            "type": "welcome", "version": 1, "connection_id": session, "ice_servers": [],
            "heartbeat_interval_ms": 15000, "heartbeat_timeout_ms": 45000,
        }),
        1 => serde_json::json!({ "type": "registered", "code": "K7P2QX" }),
        2 => serde_json::json!({ "type": "pair_pending", "session": session, "expires_in_ms": 1 }),
        3 => serde_json::json!({
            "type": "pair_prompt", "session": session, "expires_in_ms": 60000,
            "peer": { "device_id": "evil", "device_name": "Evil" },
        }),
        4 => serde_json::json!({
            "type": "pair_result", "session": session, "outcome": "accepted",
            "peer": { "device_id": "evil", "device_name": "Evil" },
        }),
        5 => serde_json::json!({
            "type": "session_ended", "session": session, "reason": "peer_left",
        }),
        _ => serde_json::json!({ "type": "error", "code": "internal", "message": "gotcha" }),
    };
    Step::text(
        frame.to_string(),
        Expect::Error(ErrorCode::UnknownMessageType),
        Category::WrongDirection,
    )
}

fn unknown_session_step(rng: &mut StdRng) -> Step {
    let session = random_session(rng);
    let message = match rng.random_range(0..3) {
        0 => signal(session, rng),
        1 => pair_response(session),
        _ => leave(session),
    };
    Step::message(
        &message,
        Expect::Error(ErrorCode::UnknownSession),
        Category::OutOfOrder,
    )
}

fn signal(session: SessionId, rng: &mut StdRng) -> ClientMessage {
    let signal = match rng.random_range(0..3) {
        0 => Signal::EndOfCandidates,
        1 => Signal::Offer {
            sdp: Sdp::new(format!("v=0\r\ns={}\r\n", rng.random::<u32>())).expect("an SDP"),
        },
        _ => Signal::Answer {
            sdp: Sdp::new("v=0\r\ns=-\r\n").expect("an SDP"),
        },
    };
    ClientMessage::Signal { session, signal }
}

fn pair_response(session: SessionId) -> ClientMessage {
    ClientMessage::PairResponse {
        session,
        accept: true,
        auth: None,
    }
}

fn leave(session: SessionId) -> ClientMessage {
    ClientMessage::Leave { session }
}

fn register_desktop(rng: &mut StdRng) -> ClientMessage {
    ClientMessage::RegisterDesktop {
        device_id: device_id(rng, "desk"),
        device_name: device_name("Abusive desktop"),
    }
}

fn pair_request(code: RoutingCode, rng: &mut StdRng) -> ClientMessage {
    ClientMessage::PairRequest {
        code,
        device_id: device_id(rng, "phone"),
        device_name: device_name("Abusive phone"),
        auth: None,
    }
}

fn random_session(rng: &mut StdRng) -> SessionId {
    SessionId::new(format!("{:032x}", rng.random::<u128>())).expect("32 hex digits")
}

/// A random 6-character code, the server's default length (a live code is hit with odds of
/// about one in 30^6 per request; `judge` accepts `pair_pending` then).
fn random_code(rng: &mut StdRng) -> RoutingCode {
    let alphabet = proxim_protocol::ROUTING_ALPHABET.as_bytes();
    let code: String = (0..6)
        .map(|_| char::from(*alphabet.choose(rng).unwrap_or(&b'K')))
        .collect();
    RoutingCode::new(code).expect("6 characters of the alphabet")
}

fn device_id(rng: &mut StdRng, prefix: &str) -> DeviceId {
    DeviceId::new(format!("{prefix}-{:016x}", rng.random::<u64>())).expect("a valid device id")
}

fn device_name(name: &str) -> DeviceName {
    DeviceName::new(name).expect("a valid device name")
}

// ---------------------------------------------------------------------------------------------
// Code attempts: one desktop, one phone trying its code more often than allowed
// ---------------------------------------------------------------------------------------------

/// The server's default pair attempts per code per window.
const PAIR_ATTEMPTS: usize = 5;

/// A desktop registers; a phone sends `PAIR_ATTEMPTS + 1..=+3` pair requests for its code:
/// the first `PAIR_ATTEMPTS` are pending, the rest `too_many_attempts`, and the desktop is told
/// once. Returns whether both connections opened.
async fn code_attempts(
    server: SocketAddr,
    source: IpAddr,
    rng: &mut StdRng,
    tally: &mut AbuseTally,
) -> bool {
    let desktop = match connect(server, source).await {
        Ok(ws) => ws,
        Err(e) => {
            e.count(tally);
            return false;
        }
    };
    tally.connections += 1;
    let (mut desk_sink, mut desk_stream) = desktop.split();
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    // hello and register, answered in order.
    let mut code = None;
    let setup = [
        (hello(), Expect::Welcome),
        (register_desktop(rng), Expect::Registered),
    ];
    for (message, expect) in setup {
        let step = Step::message(&message, expect, Category::Valid);
        let c = tally.categories.entry(Category::Valid).or_default();
        c.sent += 1;
        if desk_sink.send(step.frame.clone()).await.is_err() {
            c.unanswered += 1;
            return true;
        }
        match next_message(&mut desk_stream, deadline).await {
            Some(reply) => match judge(&step, &reply) {
                Outcome::Expected => {
                    tally
                        .categories
                        .entry(Category::Valid)
                        .or_default()
                        .expected += 1;
                    if let ServerMessage::Registered { code: c, .. } = reply {
                        tally.registrations += 1;
                        code = Some(c);
                    }
                }
                Outcome::RateLimited => {
                    tally
                        .categories
                        .entry(Category::Valid)
                        .or_default()
                        .rate_limited += 1;
                }
                Outcome::Wrong(why) => {
                    tally.categories.entry(Category::Valid).or_default().wrong += 1;
                    tally.note(format!("code attempts desktop: {why}"));
                }
            },
            None => {
                tally
                    .categories
                    .entry(Category::Valid)
                    .or_default()
                    .unanswered += 1;
                tally.note("code attempts desktop: setup unanswered".to_owned());
            }
        }
    }
    let Some(code) = code else {
        let _ = desk_sink.close().await;
        return true;
    };

    let tries = PAIR_ATTEMPTS + rng.random_range(1..=3);
    let mut steps = vec![hello_step()];
    for i in 0..tries {
        let expect = if i < PAIR_ATTEMPTS {
            Expect::PairPending
        } else {
            Expect::Error(ErrorCode::TooManyAttempts)
        };
        steps.push(Step::message(
            &pair_request(code.clone(), rng),
            expect,
            Category::CodeAttempts,
        ));
    }
    let phone = match connect(server, source).await {
        Ok(ws) => ws,
        Err(e) => {
            e.count(tally);
            let _ = desk_sink.close().await;
            return false;
        }
    };
    tally.connections += 1;
    run_steps(phone, steps, tally).await;

    // The desktop saw the prompts and, once, the lockout notice; then the phone's requests
    // were cancelled when it left.
    tally.owners_expected += 1;
    let mut notified = false;
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(message) = next_message(&mut desk_stream, until).await {
        match &message {
            ServerMessage::Error { code, .. } => {
                *tally.error_codes.entry(wire_name(*code)).or_default() += 1;
                if *code == ErrorCode::TooManyAttempts {
                    notified = true;
                }
            }
            _ => tally.unsolicited += 1,
        }
        if notified {
            break;
        }
    }
    if notified {
        tally.owners_notified += 1;
    } else {
        tally.note("code attempts: the desktop was not told about the lockout".to_owned());
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), desk_sink.close()).await;
    true
}

async fn next_message<S>(stream: &mut S, deadline: Instant) -> Option<ServerMessage>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(message) = ServerMessage::decode(text.as_str()) {
                    return Some(message);
                }
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
            _ => return None,
        }
    }
}

/// Open `count` connections from `source` and say hello on each; then one more, which the
/// per-IP cap must refuse with HTTP 429. Returns (opened, status of the extra one).
pub(crate) async fn probe_ip_cap(
    server: SocketAddr,
    source: IpAddr,
    count: usize,
) -> (usize, Option<u16>) {
    let mut open = Vec::new();
    for _ in 0..count {
        match connect(server, source).await {
            Ok(mut ws) => {
                if ws.send(Message::text(hello().encode())).await.is_ok() {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    if let Some(ServerMessage::Welcome { .. }) =
                        next_message(&mut ws, deadline).await
                    {
                        open.push(ws);
                    }
                }
            }
            Err(_) => break,
        }
    }
    let extra = match connect(server, source).await {
        Ok(mut ws) => {
            let _ = ws.close(None).await;
            None
        }
        Err(ConnectError::Status(status)) => Some(status),
        Err(ConnectError::Other(_)) => None,
    };
    let opened = open.len();
    for mut ws in open {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    (opened, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_frame_is_judged_by_the_protocol_the_way_the_script_expects() {
        // Frames expected to fail decoding must fail with the expected code.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let Script::Steps(steps) = pick_script(&mut rng) else {
                continue;
            };
            for step in steps {
                let Message::Text(text) = &step.frame else {
                    continue;
                };
                let decoded = ClientMessage::decode(text.as_str());
                match step.expect {
                    Expect::Error(
                        code @ (ErrorCode::MalformedMessage
                        | ErrorCode::UnknownMessageType
                        | ErrorCode::FrameTooLarge),
                    ) if text.len() <= MAX_FRAME => {
                        assert_eq!(decoded.unwrap_err().code(), code, "{text}");
                    }
                    Expect::Error(ErrorCode::FrameTooLarge) | Expect::TransportClose => {
                        assert!(text.len() > MAX_FRAME);
                    }
                    _ => assert!(decoded.is_ok(), "{text}: {decoded:?}"),
                }
            }
        }
    }
}
