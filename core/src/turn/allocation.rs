//! One TURN allocation, sans-IO: bytes from the server go in with [`Allocation::handle_input`],
//! bytes for the server come out of [`Allocation::poll_transmit`], time is an input.
//!
//! Lifecycle: `Allocating` (the anonymous Allocate, the server's 401 with realm and nonce, the
//! authenticated Allocate; bounded by a deadline) → `Ready { relayed }` (refreshes at half the
//! lifetime, permissions refreshed every 2 minutes, all inside rtc's client) → `Released` after
//! [`Allocation::release`] (a Refresh with lifetime 0), or `Failed` with a [`TurnError`].
//!
//! Sending to a peer needs a permission for its address. The first packet for a new peer asks
//! for one and waits, with the packets after it (bounded), until the server grants it; a
//! refused permission drops them. Once a channel is bound (rtc's client binds one on first use)
//! packets travel as 4-byte-header ChannelData instead of 36-byte Send indications.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::sansio::Protocol;
use rtc::shared::error::Error as RtcError;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::stun::error_code::ErrorCodeAttribute;
use rtc::stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, Message, TransactionId,
    is_stun_message,
};
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::client::{Client, ClientConfig, Event};

use super::{TurnError, TurnServer, TurnTransport};

/// Packets kept per peer while its permission is being created.
const PENDING_PER_PEER: usize = 64;
/// How long the Allocate handshake may take.
pub(crate) const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an allocation reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllocationEvent {
    /// The relay is ready at `relayed`.
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed (before or after it was ready).
    Failed(TurnError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating { deadline: Instant },
    Ready { relayed: SocketAddr },
    Failed,
    Released,
}

pub(crate) struct Allocation {
    client: Client,
    server: SocketAddr,
    local: SocketAddr,
    transport: TurnTransport,
    /// The anonymous Allocate's transaction and the authenticated one's (rtc's client derives
    /// the second from the first).
    allocate_tids: [TransactionId; 2],
    state: State,
    /// The error code of the last Allocate error response, read before rtc's client sees it.
    allocate_error: Option<(u16, String)>,
    mapped: Option<SocketAddr>,
    /// Permission requests in flight.
    permission_tids: HashMap<TransactionId, SocketAddr>,
    /// Packets waiting for a peer's permission.
    waiting: HashMap<SocketAddr, VecDeque<BytesMut>>,
    received: VecDeque<(SocketAddr, BytesMut)>,
    events: VecDeque<AllocationEvent>,
    /// Largest refresh interval (keeps NAT bindings and the allocation fresh).
    _refresh_cap: Duration,
}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("server", &self.server)
            .field("local", &self.local)
            .field("transport", &self.transport)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Allocation {
    /// Start allocating on `server_addr` from `local` (a UDP socket, or the local end of the
    /// stream to the server).
    pub(crate) fn new(
        server: &TurnServer,
        server_addr: SocketAddr,
        local: SocketAddr,
        now: Instant,
        refresh_cap: Duration,
    ) -> Result<Self, TurnError> {
        let crypto = rtc::crypto::default_provider()
            .map_err(|e| TurnError::Protocol(format!("no crypto provider: {e}")))?;
        let transport_protocol = match server.transport {
            TurnTransport::Udp => TransportProtocol::UDP,
            TurnTransport::Tcp | TurnTransport::Tls => TransportProtocol::TCP,
        };
        let mut client = Client::new(
            ClientConfig {
                stun_serv_addr: String::new(),
                turn_serv_addr: server_addr.to_string(),
                local_addr: local,
                transport_protocol,
                username: server.username.clone(),
                password: server.credential.clone(),
                realm: String::new(),
                software: String::new(),
                rto_in_ms: 0,
                allocation_refresh_interval_cap: Some(refresh_cap),
            },
            crypto,
        )
        .map_err(|e| TurnError::Protocol(e.to_string()))?;
        let authenticated = client
            .allocate(now)
            .map_err(|e| TurnError::Protocol(e.to_string()))?;
        let mut anonymous = authenticated;
        let last = anonymous.0.len() - 1;
        anonymous.0[last] = anonymous.0[last].wrapping_sub(1);
        Ok(Allocation {
            client,
            server: server_addr,
            local,
            transport: server.transport,
            allocate_tids: [anonymous, authenticated],
            state: State::Allocating {
                deadline: now + ALLOCATE_TIMEOUT,
            },
            allocate_error: None,
            mapped: None,
            permission_tids: HashMap::new(),
            waiting: HashMap::new(),
            received: VecDeque::new(),
            events: VecDeque::new(),
            _refresh_cap: refresh_cap,
        })
    }

    /// The relayed address, once allocated.
    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Ready { relayed } => Some(relayed),
            _ => None,
        }
    }

    /// Whether the allocation is still being made.
    pub(crate) fn is_allocating(&self) -> bool {
        matches!(self.state, State::Allocating { .. })
    }

    /// The server's address.
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    /// The local address the allocation is reached from.
    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    /// How the server is reached.
    pub(crate) fn transport(&self) -> TurnTransport {
        self.transport
    }

    /// One message from the server (a datagram, or one frame of a stream).
    pub(crate) fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, State::Failed | State::Released) {
            return;
        }
        if is_stun_message(data) {
            self.inspect_allocate_response(data);
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: self.server,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = self.client.handle_read(msg) {
            tracing::debug!(server = %self.server, error = %e, "TURN message refused");
        }
        self.drain_client(now);
    }

    /// Send `data` to `peer` through the relay (queued until the peer's permission exists).
    pub(crate) fn send_to(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        let State::Ready { relayed } = self.state else {
            return;
        };
        if let Some(queue) = self.waiting.get_mut(&peer) {
            if queue.len() < PENDING_PER_PEER {
                queue.push_back(BytesMut::from(data));
            }
            return;
        }
        let Ok(mut relay) = self.client.relay(relayed) else {
            return;
        };
        match relay.send_to(now, data, peer) {
            Ok(()) => {}
            Err(RtcError::ErrNoPermission) => match relay.create_permission(now, peer) {
                Ok(Some(tid)) => {
                    tracing::debug!(%relayed, %peer, "TURN permission requested");
                    self.permission_tids.insert(tid, peer);
                    self.waiting
                        .entry(peer)
                        .or_default()
                        .push_back(BytesMut::from(data));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "TURN permission not requested"),
            },
            Err(e) => tracing::debug!(%peer, error = %e, "relayed send failed"),
        }
    }

    /// The next message for the server.
    pub(crate) fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.client.poll_write().map(|t| t.message)
    }

    /// The next packet a peer sent through the relay: `(peer, data)`.
    pub(crate) fn poll_received(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.received.pop_front()
    }

    /// The next state change.
    pub(crate) fn poll_event(&mut self) -> Option<AllocationEvent> {
        self.events.pop_front()
    }

    /// Advance time: retransmissions, refreshes, the allocation deadline.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Failed | State::Released) {
            return;
        }
        if let State::Allocating { deadline } = self.state
            && now >= deadline
        {
            self.fail(TurnError::TimedOut(ALLOCATE_TIMEOUT));
            return;
        }
        if let Err(e) = self.client.handle_timeout(now) {
            tracing::debug!(server = %self.server, error = %e, "TURN timer failed");
        }
        self.drain_client(now);
    }

    /// When [`Self::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        match self.state {
            State::Failed | State::Released => None,
            State::Allocating { deadline } => Some(
                self.client
                    .poll_timeout()
                    .map_or(deadline, |t| t.min(deadline)),
            ),
            State::Ready { .. } => self.client.poll_timeout(),
        }
    }

    /// Give the allocation back (Refresh with lifetime 0); its transmit follows.
    pub(crate) fn release(&mut self, now: Instant) {
        if let State::Ready { relayed } = self.state {
            if let Ok(mut relay) = self.client.relay(relayed)
                && let Err(e) = relay.close(now)
            {
                tracing::debug!(%relayed, error = %e, "TURN release not sent");
            }
            tracing::debug!(%relayed, server = %self.server, "TURN allocation released");
        }
        self.waiting.clear();
        self.state = State::Released;
    }

    fn fail(&mut self, error: TurnError) {
        tracing::debug!(server = %self.server, transport = %self.transport, %error, "TURN allocation failed");
        self.state = State::Failed;
        self.waiting.clear();
        self.events.push_back(AllocationEvent::Failed(error));
    }

    /// Note an Allocate error's code and an Allocate success's mapped address; rtc's client
    /// keeps neither.
    fn inspect_allocate_response(&mut self, data: &[u8]) {
        let mut msg = Message {
            raw: data.to_vec(),
            ..Message::default()
        };
        if msg.decode().is_err()
            || msg.typ.method != METHOD_ALLOCATE
            || !self.allocate_tids.contains(&msg.transaction_id)
        {
            return;
        }
        if msg.typ.class == CLASS_ERROR_RESPONSE {
            let mut code = ErrorCodeAttribute::default();
            if code.get_from(&msg).is_ok() {
                let reason = String::from_utf8_lossy(&code.reason).into_owned();
                self.allocate_error = Some((code.code.0, reason));
            }
        } else if msg.typ.class == CLASS_SUCCESS_RESPONSE {
            let mut mapped = XorMappedAddress::default();
            if mapped.get_from(&msg).is_ok() {
                self.mapped = Some(SocketAddr::new(mapped.ip, mapped.port));
            }
        }
    }

    fn drain_client(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::AllocateResponse(tid, relayed)
                    if self.allocate_tids.contains(&tid) && self.is_allocating() =>
                {
                    tracing::debug!(server = %self.server, transport = %self.transport, %relayed, "TURN allocation ready");
                    self.state = State::Ready { relayed };
                    self.events.push_back(AllocationEvent::Allocated {
                        relayed,
                        mapped: self.mapped,
                    });
                }
                Event::AllocateError(tid, e) if self.allocate_tids.contains(&tid) => {
                    let error = match self.allocate_error.take() {
                        Some((code, reason)) => TurnError::Refused { code, reason },
                        None => TurnError::Protocol(e.to_string()),
                    };
                    self.fail(error);
                }
                Event::TransactionTimeout(tid) if self.allocate_tids.contains(&tid) => {
                    self.fail(TurnError::TimedOut(ALLOCATE_TIMEOUT));
                }
                Event::CreatePermissionResponse(tid, peer) => {
                    self.permission_tids.remove(&tid);
                    tracing::debug!(%peer, "TURN permission granted");
                    let queued = self.waiting.remove(&peer).unwrap_or_default();
                    for packet in queued {
                        self.send_to(now, peer, &packet);
                    }
                }
                Event::CreatePermissionError(tid, e) => {
                    if let Some(peer) = self.permission_tids.remove(&tid) {
                        tracing::debug!(%peer, error = %e, "TURN permission refused");
                        self.waiting.remove(&peer);
                    }
                }
                Event::TransactionTimeout(tid) => {
                    if let Some(peer) = self.permission_tids.remove(&tid) {
                        tracing::debug!(%peer, "TURN permission request timed out");
                        self.waiting.remove(&peer);
                    }
                }
                Event::DataIndicationOrChannelData(_, peer, data) => {
                    self.received.push_back((peer, data));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::attributes::{ATTR_NONCE, ATTR_REALM};
    use rtc::stun::error_code::{CODE_UNAUTHORIZED, ErrorCode};
    use rtc::stun::message::{BINDING_REQUEST, MessageType, Setter};
    use rtc::stun::textattrs::{Nonce, Realm};

    fn server() -> TurnServer {
        TurnServer::new("turn:127.0.0.1:3478", "user", "pass").unwrap()
    }

    fn new_alloc(now: Instant) -> Allocation {
        Allocation::new(
            &server(),
            "127.0.0.1:3478".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
            now,
            Duration::from_secs(300),
        )
        .unwrap()
    }

    fn decode(data: &[u8]) -> Message {
        let mut msg = Message {
            raw: data.to_vec(),
            ..Message::default()
        };
        msg.decode().unwrap();
        msg
    }

    fn error_response(
        tid: TransactionId,
        code: ErrorCode,
        reason: &str,
        challenge: bool,
    ) -> Vec<u8> {
        let mut msg = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(tid),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code,
                reason: reason.as_bytes().to_vec(),
            }),
        ];
        if challenge {
            setters.push(Box::new(Realm::new(ATTR_REALM, "proxim".into())));
            setters.push(Box::new(Nonce::new(ATTR_NONCE, "n0nce".into())));
        }
        msg.build(&setters).unwrap();
        msg.raw
    }

    #[test]
    fn first_transmit_is_an_allocate_request() {
        let now = Instant::now();
        let mut a = new_alloc(now);
        let first = a.poll_transmit().expect("an Allocate request");
        let msg = decode(&first);
        assert_eq!(msg.typ.method, METHOD_ALLOCATE);
        assert!(a.is_allocating());
        assert!(
            a.poll_timeout()
                .is_some_and(|t| t <= now + ALLOCATE_TIMEOUT)
        );
    }

    #[test]
    fn refused_credentials_fail_with_401() {
        let now = Instant::now();
        let mut a = new_alloc(now);
        let first = decode(&a.poll_transmit().unwrap());
        // The challenge: rtc's client answers with an authenticated Allocate.
        a.handle_input(
            now,
            &error_response(
                first.transaction_id,
                CODE_UNAUTHORIZED,
                "Unauthorized",
                true,
            ),
        );
        let second = decode(&a.poll_transmit().expect("authenticated Allocate"));
        assert_eq!(second.typ.method, METHOD_ALLOCATE);
        assert_ne!(second.transaction_id, first.transaction_id);
        // Refused again: the credentials are wrong.
        a.handle_input(
            now,
            &error_response(
                second.transaction_id,
                CODE_UNAUTHORIZED,
                "Unauthorized",
                true,
            ),
        );
        assert_eq!(
            a.poll_event(),
            Some(AllocationEvent::Failed(TurnError::Refused {
                code: 401,
                reason: "Unauthorized".into()
            }))
        );
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn silence_times_out_at_the_deadline() {
        let now = Instant::now();
        let mut a = new_alloc(now);
        let mut t = now;
        let mut sent = 0;
        for _ in 0..100 {
            while a.poll_transmit().is_some() {
                sent += 1;
            }
            match a.poll_timeout() {
                Some(next) => {
                    t = next;
                    a.handle_timeout(t);
                }
                None => break,
            }
        }
        assert!(sent >= 2, "retransmitted: {sent}");
        assert_eq!(
            a.poll_event(),
            Some(AllocationEvent::Failed(TurnError::TimedOut(
                ALLOCATE_TIMEOUT
            )))
        );
        assert!(t <= now + ALLOCATE_TIMEOUT);
    }

    #[test]
    fn unrelated_and_malformed_input_is_ignored() {
        let now = Instant::now();
        let mut a = new_alloc(now);
        a.poll_transmit();
        let mut other = Message::new();
        other
            .build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
            .unwrap();
        a.handle_input(now, &other.raw);
        a.handle_input(now, &[0x00, 0x01, 0x00]);
        a.handle_input(now, &[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
        a.handle_input(now, &[]);
        assert!(a.is_allocating());
        assert_eq!(a.poll_event(), None);
    }
}
