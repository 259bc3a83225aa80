//! Two probes with their own shape: one desktop and one phone trying its code more often than
//! allowed ([`code_attempts`]), and the per-IP connection cap ([`probe_ip_cap`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{ErrorCode, ServerMessage};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::judge::{Expect, Outcome, judge, wire_name};
use super::scripts::{Step, hello, hello_step, pair_request, register_desktop};
use super::tally::{AbuseTally, Category};
use super::{CONNECTION_DEADLINE, ConnectError, connect, next_message, run_steps};

/// The server's default pair attempts per code per window.
const PAIR_ATTEMPTS: usize = 5;

/// A desktop registers; a phone sends `PAIR_ATTEMPTS + 1..=+3` pair requests for its code:
/// the first `PAIR_ATTEMPTS` are pending, the rest `too_many_attempts`, and the desktop is told
/// once. Returns whether both connections opened.
pub(crate) async fn code_attempts(
    server: SocketAddr,
    source: IpAddr,
    rng: &mut StdRng,
    tally: &mut AbuseTally,
) -> bool {
    let desktop = match connect(server, source).await {
        Ok(ws) => ws,
        Err(e) => {
            tally.count_connect_error(&e);
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
        let c = tally.category(Category::Valid);
        c.sent += 1;
        if desk_sink.send(step.frame.clone()).await.is_err() {
            c.unanswered += 1;
            return true;
        }
        match next_message(&mut desk_stream, deadline).await {
            Some(reply) => match judge(&step, &reply) {
                Outcome::Expected => {
                    tally.category(Category::Valid).expected += 1;
                    if let ServerMessage::Registered { code: c, .. } = reply {
                        tally.registrations += 1;
                        code = Some(c);
                    }
                }
                Outcome::RateLimited => {
                    tally.category(Category::Valid).rate_limited += 1;
                }
                Outcome::Wrong(why) => {
                    tally.category(Category::Valid).wrong += 1;
                    tally.note(format!("code attempts desktop: {why}"));
                }
            },
            None => {
                tally.category(Category::Valid).unanswered += 1;
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
            tally.count_connect_error(&e);
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
