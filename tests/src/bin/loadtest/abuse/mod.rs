//! Abusive clients: scripts of bad frames, each frame paired with the answer the server must
//! give, run over many connections from several loopback source addresses.
//!
//! The server answers a connection's frames in order, one reply per frame (an `error`, or the
//! reply a valid message earns), so replies are matched to frames first in, first out. A frame
//! over the connection's message budget is answered `rate_limited` instead; once the server
//! says it is closing the connection (the flooder's last `rate_limited`), the frames still in
//! flight are dropped unread, and counted as excused. Everything else without an answer, and
//! every answer that differs from the expected one, is a failure.

mod judge;
mod probes;
mod scripts;
mod tally;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{ErrorCode, ServerMessage};
use proxim_tests::loopback_ws::{self, ConnectError, Ws};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use self::judge::{Expect, Outcome, closes_after, is_unsolicited, judge, wire_name};
use self::probes::code_attempts;
pub(crate) use self::probes::probe_ip_cap;
use self::scripts::{Script, Step, pick_script};
pub(crate) use self::tally::{AbuseTally, CategoryTally};

/// How long a connection waits for the answers to its frames once it has sent them all.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The longest one abusive connection may live.
pub(crate) const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

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
                    local.count_connect_error(&e);
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
    tally
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .merge(local);
}

/// Open a WebSocket to the server from `source` (a loopback address of this machine).
pub(crate) async fn connect(server: SocketAddr, source: IpAddr) -> Result<Ws, ConnectError> {
    loopback_ws::connect_from(server, source, None).await
}

// ---------------------------------------------------------------------------------------------
// Running a script
// ---------------------------------------------------------------------------------------------

/// What one connection saw, beyond the tally.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// Replies that answered frames, in order.
    replies: Vec<ServerMessage>,
    /// Messages that answered no frame.
    unsolicited: Vec<ServerMessage>,
}

/// Send `steps` on `ws` while reading the answers; tally every frame's fate; close.
pub(crate) async fn run_steps(ws: Ws, steps: Vec<Step>, tally: &mut AbuseTally) -> Run {
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
        let c = tally.category(step.category);
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

pub(crate) async fn next_message<S>(stream: &mut S, deadline: Instant) -> Option<ServerMessage>
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
