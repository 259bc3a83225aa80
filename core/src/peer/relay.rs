//! The peer driver's TURN relays: one [`Allocation`] per TURN URL the server handed out.
//!
//! Setting a relay up (resolving the server's name; for TCP and TLS, connecting and the TLS
//! handshake) runs off the driver in a task that reports back through [`RelayInput`]; from
//! then on the allocation is sans-IO inside the driver. Over UDP the allocation shares a host
//! candidate's socket (its base): datagrams from the server's address on that socket are the
//! relay's. Over TCP/TLS the stream's reader and writer are tasks; frames come in as
//! [`RelayInput::Frame`] and go out through a bounded queue.
//!
//! rtc sees a relay candidate like any other local candidate: packets it sends from the
//! relayed address are handed to [`Relays::send`], packets peers send to the relayed address
//! come out of [`Relays::poll_received`] and are fed to rtc as if read from that address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::mpsc;

use crate::turn::allocation::{Allocation, AllocationEvent};
use crate::turn::stream::{ReaderGuard, RelayInput, TurnStream, resolve};
use crate::turn::{TurnError, TurnOptions, TurnServer, TurnTransport};

/// Inputs from relay tasks queued before their tasks wait (back-pressure onto TCP).
const INPUT_QUEUE: usize = 1024;
/// Time-limited credentials this close to their expiry are not used for a new allocation.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Refresh allocations at least this often: keeps the NAT binding to the server alive.
const REFRESH_CAP: Duration = Duration::from_secs(120);

/// A packet for the TURN server over UDP, from the base socket.
#[derive(Debug)]
pub(super) struct UdpTransmit {
    pub(super) from: SocketAddr,
    pub(super) to: SocketAddr,
    pub(super) data: BytesMut,
}

/// What the relays tell the driver.
#[derive(Debug)]
pub(super) enum RelayEvent {
    /// A relayed address to offer as a candidate, with the base it is reached from.
    Candidate {
        url: String,
        relayed: SocketAddr,
        base: SocketAddr,
    },
    /// A relay failed (before or after it was ready).
    Failed,
}

#[derive(Debug)]
enum Phase {
    /// Resolving / connecting off the driver.
    Connecting,
    Active {
        alloc: Box<Allocation>,
        /// `None` for UDP (the base socket is `alloc.local()`); the stream's writer otherwise.
        writer: Option<mpsc::Sender<BytesMut>>,
        /// The stream's reader task, stopped with the relay.
        _reader: Option<ReaderGuard>,
    },
    Failed(TurnError),
    /// Replaced by a new allocation after a network change (its base went away).
    Retired,
    /// Its time-limited credentials have expired: an Allocate would be refused (and coturn
    /// then ties the 5-tuple to them, refusing fresh ones from it too). Set up once fresh
    /// credentials come ([`Relays::update_servers`]).
    AwaitingCredentials,
}

#[derive(Debug)]
struct Entry {
    server: TurnServer,
    phase: Phase,
}

/// Every relay of one peer connection.
#[derive(Debug)]
pub(super) struct Relays {
    entries: Vec<Entry>,
    /// UDP sockets a UDP allocation may use as its base.
    udp_bases: Vec<SocketAddr>,
    /// How relays are set up (kept to set them up again after a network change).
    options: TurnOptions,
    tx: mpsc::Sender<RelayInput>,
    rx: mpsc::Receiver<RelayInput>,
    udp_out: Vec<UdpTransmit>,
    received: Vec<(SocketAddr, SocketAddr, BytesMut)>,
    events: Vec<RelayEvent>,
}

impl Relays {
    /// Start setting up a relay for each of `servers`. UDP relays use one of `udp_bases`.
    pub(super) fn start(
        servers: Vec<TurnServer>,
        udp_bases: Vec<SocketAddr>,
        options: &TurnOptions,
    ) -> Relays {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let mut relays = Relays {
            entries: Vec::new(),
            udp_bases,
            options: options.clone(),
            tx,
            rx,
            udp_out: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
        };
        for server in servers {
            relays.set_up(server);
        }
        relays
    }

    /// The local addresses changed to `udp_bases`: every relay whose own local address went
    /// away (or that had failed) is allocated again from what there is now, as a new entry;
    /// the old allocation is released where its socket still exists. Returns the relayed
    /// addresses that are gone.
    pub(super) fn rebase(&mut self, udp_bases: Vec<SocketAddr>, now: Instant) -> Vec<SocketAddr> {
        self.udp_bases = udp_bases;
        let mut gone = Vec::new();
        let mut stale = Vec::new();
        for (id, entry) in self.entries.iter_mut().enumerate() {
            match &mut entry.phase {
                Phase::Active { alloc, writer, .. } => {
                    let local = alloc.local();
                    let kept = match writer {
                        None => self.udp_bases.contains(&local),
                        Some(_) => self.udp_bases.iter().any(|b| b.ip() == local.ip()),
                    };
                    if !kept {
                        gone.extend(alloc.relayed());
                        alloc.release(now);
                        stale.push(id);
                    }
                }
                Phase::Failed(_) => stale.push(id),
                Phase::Connecting | Phase::Retired | Phase::AwaitingCredentials => {}
            }
        }
        // What the released allocations queued goes out first (over TCP/TLS; a UDP base that
        // is gone drops it).
        self.collect(now);
        for id in stale {
            self.set_up_again(id, "allocating again on the new network");
        }
        gone
    }

    /// Fresh credentials for the relays' servers (matched by URL): used by every allocation
    /// made from now on (existing ones keep theirs: a TURN server refuses a new username on an
    /// allocation, and coturn keeps an allocation alive past its credentials' expiry). A relay
    /// that had failed is set up again with them. Whether any was.
    pub(super) fn update_servers(&mut self, servers: Vec<TurnServer>, now: Instant) -> bool {
        let mut failed = Vec::new();
        for (id, entry) in self.entries.iter_mut().enumerate() {
            if matches!(entry.phase, Phase::Retired) {
                continue;
            }
            if let Some(fresh) = servers.iter().find(|s| s.url == entry.server.url) {
                entry.server = fresh.clone();
            }
            if matches!(entry.phase, Phase::Failed(_) | Phase::AwaitingCredentials) {
                failed.push(id);
            }
        }
        for &id in &failed {
            self.set_up_again(id, "trying again with fresh credentials");
        }
        self.collect(now);
        !failed.is_empty()
    }

    /// Retire entry `id` and set its server up again as a new entry (inputs still coming for
    /// the old id find it retired).
    fn set_up_again(&mut self, id: usize, why: &str) {
        let server = self.entries[id].server.clone();
        self.entries[id].phase = Phase::Retired;
        tracing::info!(url = %server.url, "TURN relay: {why}");
        self.set_up(server);
    }

    /// Start setting up a relay to `server` (a new entry; its task reports back by id).
    fn set_up(&mut self, server: TurnServer) {
        let id = self.entries.len();
        if server
            .credentials_expiry()
            .is_some_and(|expiry| expiry <= std::time::SystemTime::now() + EXPIRY_MARGIN)
        {
            tracing::info!(url = %server.url, "TURN relay: its credentials have expired; waiting for fresh ones");
            self.entries.push(Entry {
                server,
                phase: Phase::AwaitingCredentials,
            });
            return;
        }
        let task_server = server.clone();
        let mut task_options = self.options.clone();
        let bases = self.udp_bases.clone();
        let task_tx = self.tx.clone();
        tokio::spawn(async move {
            let input = match setup(&task_server, &bases, &mut task_options).await {
                Ok((server_addr, stream)) => RelayInput::Connected {
                    id,
                    server_addr,
                    stream,
                },
                Err(error) => RelayInput::SetupFailed { id, error },
            };
            let _ = task_tx.send(input).await;
        });
        tracing::debug!(url = %server.url, "TURN relay: setting up");
        self.entries.push(Entry {
            server,
            phase: Phase::Connecting,
        });
    }

    /// Whether any relay is configured.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every relay has either allocated or failed.
    pub(super) fn gathering_done(&self) -> bool {
        self.entries.iter().all(|e| match &e.phase {
            Phase::Connecting => false,
            Phase::Active { alloc, .. } => !alloc.is_allocating(),
            Phase::Failed(_) | Phase::Retired | Phase::AwaitingCredentials => true,
        })
    }

    /// Whether any relay has a relayed address.
    pub(super) fn any_ready(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(&e.phase, Phase::Active { alloc, .. } if alloc.relayed().is_some()))
    }

    /// The next input from a relay task.
    pub(super) async fn recv(&mut self) -> Option<RelayInput> {
        self.rx.recv().await
    }

    /// Handle an input from a relay task.
    pub(super) fn handle_input(&mut self, input: RelayInput, now: Instant) {
        match input {
            RelayInput::Connected {
                id,
                server_addr,
                stream,
            } => {
                let Some(entry) = self.entries.get_mut(id) else {
                    return;
                };
                let local = match &stream {
                    Some(s) => s.local_addr(),
                    None => match pick_base(&self.udp_bases, server_addr) {
                        Some(base) => base,
                        None => {
                            entry.phase = Phase::Failed(TurnError::Unreachable(
                                "no local UDP socket of the server's address family".into(),
                            ));
                            self.events.push(RelayEvent::Failed);
                            return;
                        }
                    },
                };
                match Allocation::new(&entry.server, server_addr, local, now, REFRESH_CAP) {
                    Ok(alloc) => {
                        let (writer, reader) = match stream {
                            Some(s) => {
                                let (writer, reader) = s.spawn(id, self.tx.clone());
                                (Some(writer), Some(reader))
                            }
                            None => (None, None),
                        };
                        entry.phase = Phase::Active {
                            alloc: Box::new(alloc),
                            writer,
                            _reader: reader,
                        };
                    }
                    Err(error) => {
                        entry.phase = Phase::Failed(error);
                        self.events.push(RelayEvent::Failed);
                    }
                }
            }
            RelayInput::SetupFailed { id, error } => {
                if let Some(entry) = self.entries.get_mut(id) {
                    tracing::warn!(url = %entry.server.url, %error, "TURN relay unusable");
                    entry.phase = Phase::Failed(error);
                    self.events.push(RelayEvent::Failed);
                }
            }
            RelayInput::Frame { id, data } => {
                if let Some(Entry {
                    phase: Phase::Active { alloc, .. },
                    ..
                }) = self.entries.get_mut(id)
                {
                    alloc.handle_input(now, data);
                }
            }
            RelayInput::Closed { id, reason } => {
                if let Some(entry) = self.entries.get_mut(id)
                    && matches!(entry.phase, Phase::Active { .. })
                {
                    tracing::warn!(url = %entry.server.url, %reason, "TURN connection closed");
                    entry.phase = Phase::Failed(TurnError::Protocol(format!(
                        "connection to the relay closed: {reason}"
                    )));
                    self.events.push(RelayEvent::Failed);
                }
            }
        }
        self.collect(now);
    }

    /// A datagram read from UDP socket `local`: the relay's if it comes from its server.
    /// Returns the packet when it is not a relay's.
    pub(super) fn handle_udp(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        packet: BytesMut,
        now: Instant,
    ) -> Result<(), BytesMut> {
        let owner = self
            .entries
            .iter_mut()
            .find_map(|entry| match &mut entry.phase {
                Phase::Active {
                    alloc,
                    writer: None,
                    ..
                } if alloc.local() == local && alloc.server() == from => Some(alloc),
                _ => None,
            });
        let Some(alloc) = owner else {
            return Err(packet);
        };
        alloc.handle_input(now, packet);
        self.collect(now);
        Ok(())
    }

    /// Whether `local` is one of the relayed addresses.
    pub(super) fn owns(&self, local: SocketAddr) -> bool {
        self.transport_of(local).is_some()
    }

    /// How the relay at relayed address `relayed` reaches its server.
    pub(super) fn transport_of(&self, relayed: SocketAddr) -> Option<TurnTransport> {
        self.entries.iter().find_map(|e| match &e.phase {
            Phase::Active { alloc, .. } if alloc.relayed() == Some(relayed) => {
                Some(alloc.transport())
            }
            _ => None,
        })
    }

    /// Send `data` from relayed address `relayed` to `peer`.
    pub(super) fn send(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        for entry in &mut self.entries {
            if let Phase::Active { alloc, .. } = &mut entry.phase
                && alloc.relayed() == Some(relayed)
            {
                alloc.send_to(now, peer, data);
                break;
            }
        }
        self.collect(now);
    }

    /// Datagrams for servers over UDP, to be sent by the driver.
    pub(super) fn take_udp_transmits(&mut self) -> Vec<UdpTransmit> {
        std::mem::take(&mut self.udp_out)
    }

    /// Packets peers sent through a relay: `(relayed address, peer, data)`.
    pub(super) fn take_received(&mut self) -> Vec<(SocketAddr, SocketAddr, BytesMut)> {
        std::mem::take(&mut self.received)
    }

    /// Candidates found and failures since the last call.
    pub(super) fn take_events(&mut self) -> Vec<RelayEvent> {
        std::mem::take(&mut self.events)
    }

    /// When a relay next needs [`Self::handle_timeout`].
    pub(super) fn poll_timeout(&mut self) -> Option<Instant> {
        self.entries
            .iter_mut()
            .filter_map(|e| match &mut e.phase {
                Phase::Active { alloc, .. } => alloc.poll_timeout(),
                _ => None,
            })
            .min()
    }

    /// Advance time for every relay.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        for entry in &mut self.entries {
            if let Phase::Active { alloc, .. } = &mut entry.phase
                && alloc.poll_timeout().is_some_and(|t| t <= now)
            {
                alloc.handle_timeout(now);
            }
        }
        self.collect(now);
    }

    /// Release every allocation (Refresh with lifetime 0); the driver sends what this queues.
    pub(super) fn release_all(&mut self, now: Instant) {
        for entry in &mut self.entries {
            if let Phase::Active { alloc, .. } = &mut entry.phase {
                alloc.release(now);
            }
        }
        self.collect(now);
    }

    /// One line per relay that failed, for error messages: `url: reason`.
    pub(super) fn failures(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| match &e.phase {
                Phase::Failed(error) => Some(format!("TURN {}: {error}", e.server.url)),
                Phase::AwaitingCredentials => Some(format!(
                    "TURN {}: its credentials have expired (TURN_TTL); waiting for fresh ones",
                    e.server.url
                )),
                _ => None,
            })
            .collect()
    }

    /// Move what the allocations produced into the driver-facing queues.
    fn collect(&mut self, _now: Instant) {
        for entry in &mut self.entries {
            let Phase::Active { alloc, writer, .. } = &mut entry.phase else {
                continue;
            };
            while let Some(data) = alloc.poll_transmit() {
                match writer {
                    None => self.udp_out.push(UdpTransmit {
                        from: alloc.local(),
                        to: alloc.server(),
                        data,
                    }),
                    Some(writer) => {
                        if writer.try_send(data).is_err() {
                            tracing::debug!(url = %entry.server.url, "TURN stream queue full; frame dropped");
                        }
                    }
                }
            }
            if let Some(relayed) = alloc.relayed() {
                while let Some((peer, data)) = alloc.poll_received() {
                    self.received.push((relayed, peer, data));
                }
            }
            let mut failed = None;
            while let Some(event) = alloc.poll_event() {
                match event {
                    AllocationEvent::Allocated { relayed, mapped } => {
                        tracing::info!(url = %entry.server.url, %relayed, ?mapped, "TURN relay allocated");
                        self.events.push(RelayEvent::Candidate {
                            url: entry.server.url.clone(),
                            relayed,
                            base: mapped.unwrap_or_else(|| alloc.local()),
                        });
                    }
                    AllocationEvent::Failed(error) => failed = Some(error),
                }
            }
            if let Some(error) = failed {
                tracing::warn!(url = %entry.server.url, %error, "TURN relay failed");
                entry.phase = Phase::Failed(error);
                self.events.push(RelayEvent::Failed);
            }
        }
    }
}

/// Resolve the server and, for TCP/TLS, connect to it.
async fn setup(
    server: &TurnServer,
    udp_bases: &[SocketAddr],
    options: &mut TurnOptions,
) -> Result<(SocketAddr, Option<TurnStream>), TurnError> {
    let family_hint = udp_bases
        .iter()
        .find(|a| !a.ip().is_loopback())
        .map(|a| a.ip());
    let addr = resolve(server, options.local_ip.or(family_hint)).await?;
    match server.transport {
        TurnTransport::Udp => Ok((addr, None)),
        TurnTransport::Tcp | TurnTransport::Tls => {
            if options.local_ip.is_none() {
                options.local_ip = pick_base(udp_bases, addr).map(|a| a.ip());
            }
            let stream = TurnStream::connect(server, addr, options).await?;
            Ok((addr, Some(stream)))
        }
    }
}

/// The base socket for a relay to `server`: same address family, loopback only for a loopback
/// server.
fn pick_base(bases: &[SocketAddr], server: SocketAddr) -> Option<SocketAddr> {
    bases.iter().copied().find(|b| {
        b.is_ipv4() == server.is_ipv4() && b.ip().is_loopback() == server.ip().is_loopback()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_match_family_and_scope() {
        let bases: Vec<SocketAddr> = vec![
            "127.0.0.1:1000".parse().unwrap(),
            "198.18.0.5:1001".parse().unwrap(),
            "[::1]:1002".parse().unwrap(),
        ];
        assert_eq!(
            pick_base(&bases, "198.18.0.3:3478".parse().unwrap()),
            Some(bases[1])
        );
        assert_eq!(
            pick_base(&bases, "127.0.0.1:3478".parse().unwrap()),
            Some(bases[0])
        );
        assert_eq!(
            pick_base(&bases, "[::1]:3478".parse().unwrap()),
            Some(bases[2])
        );
        assert_eq!(
            pick_base(&bases[..1], "198.18.0.3:3478".parse().unwrap()),
            None
        );
    }

    #[tokio::test]
    async fn an_unresolvable_relay_fails_and_gathering_completes() {
        let server = TurnServer::new("turn:no-such-host.invalid:3478", "u", "p").unwrap();
        let mut relays = Relays::start(
            vec![server],
            vec!["127.0.0.1:1000".parse().unwrap()],
            &TurnOptions::default(),
        );
        assert!(!relays.gathering_done());
        let input = tokio::time::timeout(Duration::from_secs(10), relays.recv())
            .await
            .expect("setup reports within its bound")
            .expect("an input");
        relays.handle_input(input, Instant::now());
        assert!(relays.gathering_done());
        assert!(!relays.any_ready());
        let failures = relays.failures();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("cannot resolve"), "{failures:?}");
    }
}
