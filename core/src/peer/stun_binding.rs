//! [`StunBinding`]: one STUN Binding transaction from one local socket to one STUN server,
//! sans-IO. It sends the request, retransmits it until the deadline, and ends with a typed
//! [`BindingResult`]: the [`StunMapping`] the server saw, or why there is none.
//!
//! The peer's candidate gathering runs one per (local socket, STUN server) for its
//! server-reflexive candidates; `proxim doctor` runs one per STUN server address from one socket
//! to classify the NAT. Both own the sockets and feed packets and time in.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ice::stun::{Class, StunMessage, StunWriter, TransactionId, new_transaction};

/// Retransmit schedule of a Binding request, relative to the start: fast at first, since on a
/// LAN the answer comes in milliseconds, then doubling (up to [`STUN_MAX_RTO`]) until the
/// deadline.
const STUN_FIRST_RTO: Duration = Duration::from_millis(100);

/// The longest gap between two retransmits.
const STUN_MAX_RTO: Duration = Duration::from_secs(1);

/// What a STUN server said about one local socket: the address it saw the request come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StunMapping {
    /// The local socket the request went out from (the candidate's base).
    pub(crate) local: SocketAddr,
    /// The STUN server's address.
    pub(crate) server: SocketAddr,
    /// The server-reflexive (mapped) address: `local` as the server saw it.
    pub(crate) mapped: SocketAddr,
    /// From the first request to the answer, retransmits included.
    pub(crate) rtt: Duration,
}

/// How a Binding transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingResult {
    /// The server answered with the mapped address.
    Mapped(StunMapping),
    /// The server answered, with an error response (its code, if any).
    Refused {
        /// The STUN error code.
        code: Option<u16>,
    },
    /// The server answered success, but without an XOR-MAPPED-ADDRESS.
    NoMappedAddress,
    /// No answer before the deadline.
    TimedOut,
}

/// A Binding request to send.
#[derive(Debug)]
pub(crate) struct BindingTransmit {
    /// The local socket to send from.
    pub(crate) from: SocketAddr,
    /// The STUN server.
    pub(crate) to: SocketAddr,
    /// The datagram.
    pub(crate) data: Vec<u8>,
}

/// What a [`StunBinding`] asks of its driver, in order.
#[derive(Debug)]
pub(crate) enum BindingOutput {
    /// Send this request.
    Transmit(BindingTransmit),
    /// The transaction ended (the last output).
    Done(BindingResult),
}

/// Sans-IO STUN Binding transaction: send, retransmit within the deadline, parse the answer.
#[derive(Debug)]
pub(crate) struct StunBinding {
    /// The server's URL, for the logs.
    url: String,
    local: SocketAddr,
    server: SocketAddr,
    transaction: TransactionId,
    request: Vec<u8>,
    started: Instant,
    deadline: Instant,
    next_send: Instant,
    rto: Duration,
    pending: VecDeque<BindingOutput>,
    done: bool,
}

impl StunBinding {
    /// A transaction from `local` to `server`, started at `now`, that gives up after `timeout`.
    /// The first request goes out on the first [`StunBinding::handle_timeout`].
    pub(crate) fn new(
        url: String,
        local: SocketAddr,
        server: SocketAddr,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let transaction = new_transaction();
        let request = StunWriter::new(Class::Request, &transaction).finish(None);
        StunBinding {
            url,
            local,
            server,
            transaction,
            request,
            started: now,
            deadline: now + timeout,
            next_send: now,
            rto: STUN_FIRST_RTO,
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// Offer a datagram that arrived on `local` from `from`; returns whether it was this
    /// transaction's answer (and so consumed).
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if self.done || local != self.local || from != self.server {
            return false;
        }
        let Ok(msg) = StunMessage::parse(data) else {
            return false;
        };
        if msg.transaction != self.transaction {
            return false;
        }
        let result = if msg.class != Class::Success {
            let code = msg.error_code();
            tracing::debug!(url = %self.url, ?code, "STUN server refused the Binding request");
            BindingResult::Refused { code }
        } else if let Some(mapped) = msg.mapped_address() {
            tracing::debug!(url = %self.url, base = %self.local, %mapped, "server-reflexive address");
            BindingResult::Mapped(StunMapping {
                local: self.local,
                server: self.server,
                mapped,
                rtt: now.saturating_duration_since(self.started),
            })
        } else {
            tracing::debug!(url = %self.url, "STUN answer without XOR-MAPPED-ADDRESS");
            BindingResult::NoMappedAddress
        };
        self.finish(result);
        true
    }

    /// Time passed: send or retransmit the request, or give up at the deadline.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            tracing::debug!(url = %self.url, base = %self.local, "STUN server did not answer in time; giving up on it");
            self.finish(BindingResult::TimedOut);
            return;
        }
        if now >= self.next_send {
            self.pending
                .push_back(BindingOutput::Transmit(BindingTransmit {
                    from: self.local,
                    to: self.server,
                    data: self.request.clone(),
                }));
            self.next_send = now + self.rto;
            self.rto = (self.rto * 2).min(STUN_MAX_RTO);
        }
    }

    /// The next thing to send or report.
    pub(crate) fn poll_output(&mut self) -> Option<BindingOutput> {
        self.pending.pop_front()
    }

    /// When [`StunBinding::handle_timeout`] must be called next; `None` once done.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            None
        } else {
            Some(self.next_send.min(self.deadline))
        }
    }

    /// Whether the transaction has ended (its [`BindingOutput::Done`] may still be pending).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The STUN server asked.
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    fn finish(&mut self, result: BindingResult) {
        self.done = true;
        self.pending.push_back(BindingOutput::Done(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rtc::stun::message::{BINDING_SUCCESS, Message, TransactionId as RtcTransaction};
    use rtc::stun::xoraddr::XorMappedAddress;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Run `binding` on timers alone until it is done; returns how many requests it sent, when
    /// it ended, and its result.
    fn run_unanswered(binding: &mut StunBinding, now: Instant) -> (usize, Instant, BindingResult) {
        let mut sent = 0;
        let mut t = now;
        loop {
            binding.handle_timeout(t);
            while let Some(out) = binding.poll_output() {
                match out {
                    BindingOutput::Transmit(_) => sent += 1,
                    BindingOutput::Done(result) => return (sent, t, result),
                }
            }
            t = binding.poll_timeout().unwrap();
        }
    }

    #[test]
    fn stun_binding_retransmits_then_gives_up() {
        let now = Instant::now();
        let mut b = StunBinding::new(
            "stun:127.0.0.1:9".into(),
            addr("127.0.0.1:5000"),
            addr("127.0.0.1:9"),
            now,
            Duration::from_millis(500),
        );
        let (sent, ended, result) = run_unanswered(&mut b, now);
        assert!(b.is_done());
        assert_eq!(result, BindingResult::TimedOut);
        assert!((2..=5).contains(&sent), "sent {sent}");
        assert!(ended <= now + Duration::from_millis(500));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn stun_binding_parses_the_answer() {
        let now = Instant::now();
        let local = addr("127.0.0.1:5000");
        let server = addr("127.0.0.1:3478");
        let mut b = StunBinding::new(
            "stun:127.0.0.1:3478".into(),
            local,
            server,
            now,
            Duration::from_secs(2),
        );
        b.handle_timeout(now);
        assert!(matches!(b.poll_output(), Some(BindingOutput::Transmit(_))));
        // The answer as a STUN server (built by rtc's codec, another implementation) sends it.
        let mut answer = Message::new();
        answer
            .build(&[
                Box::new(RtcTransaction(b.transaction)),
                Box::new(BINDING_SUCCESS),
                Box::new(XorMappedAddress {
                    ip: "198.18.0.7".parse().unwrap(),
                    port: 40000,
                }),
            ])
            .unwrap();
        let later = now + Duration::from_millis(30);
        // Wrong sender: not consumed.
        assert!(!b.handle_packet(later, local, addr("127.0.0.1:1"), &answer.raw));
        assert!(b.handle_packet(later, local, server, &answer.raw));
        match b.poll_output() {
            Some(BindingOutput::Done(BindingResult::Mapped(mapping))) => assert_eq!(
                mapping,
                StunMapping {
                    local,
                    server,
                    mapped: addr("198.18.0.7:40000"),
                    rtt: Duration::from_millis(30),
                }
            ),
            other => panic!("expected a mapped address, got {other:?}"),
        }
        assert!(b.is_done());
        // Done: a repeated answer is not consumed.
        assert!(!b.handle_packet(later, local, server, &answer.raw));
    }
}
