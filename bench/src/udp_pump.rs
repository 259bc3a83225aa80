//! The ceiling: a raw UDP pump on loopback, no crypto, no SCTP.
//!
//! One thread sends datagrams from one socket to another; a receiver thread counts the bytes.
//! To make it fair (no loss, so nothing is counted that a reliable channel would have to
//! resend), the pump is receiver-paced: the receiver returns a cumulative byte count every
//! [`CREDIT_STEP`] bytes and the sender keeps at most [`WINDOW`] bytes unacknowledged. Both
//! sockets get 4 MiB buffers. MB/s counts bytes received.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::Params;
use crate::measure::{BulkMeter, Moved, Outcome};

/// The datagram a data channel puts on the wire at most (DTLS over a ~1200 B path MTU).
const MTU_DATAGRAM: usize = 1200;
/// Largest datagram size we test (the 64 KiB data-channel message, minus UDP/IP headers).
const BIG_DATAGRAM: usize = 65_507;
/// Unacknowledged payload the sender may have in flight.
const WINDOW: u64 = 1024 * 1024;
/// The receiver acknowledges this often.
const CREDIT_STEP: u64 = 128 * 1024;
/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Row: 1200-byte datagrams.
pub(crate) fn run_1200(params: &Params) -> anyhow::Result<Outcome> {
    pump(params, MTU_DATAGRAM)
}

/// Row: 64 KiB datagrams.
pub(crate) fn run_64k(params: &Params) -> anyhow::Result<Outcome> {
    pump(params, BIG_DATAGRAM)
}

fn pump(params: &Params, datagram: usize) -> anyhow::Result<Outcome> {
    let receiver = bound_socket()?;
    let sender = bound_socket()?;
    let receiver_addr = receiver.local_addr()?;
    let sender_addr = sender.local_addr()?;
    receiver.connect(sender_addr)?;
    sender.connect(receiver_addr)?;
    let total = params.bulk_bytes;
    let deadline = Instant::now() + params.row_limit;
    let moved = Moved::default();

    let meter = BulkMeter::start(total);
    let receiver_moved = moved.clone();
    let receiving =
        std::thread::spawn(move || receive(&receiver, total, &receiver_moved, deadline));
    let sent = send(&sender, total, datagram, deadline);
    let received = receiving
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    let timed_out = sent.is_err() || received.is_err() || moved.get() < total;
    Ok(meter.finish(moved.get(), timed_out, None))
}

fn bound_socket() -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

/// Send `total` bytes in `datagram`-sized datagrams, never more than [`WINDOW`] ahead of the
/// receiver's acknowledgements.
fn send(socket: &UdpSocket, total: u64, datagram: usize, deadline: Instant) -> anyhow::Result<()> {
    let payload = vec![0x5a_u8; datagram];
    let mut sent: u64 = 0;
    let mut acked: u64 = 0;
    let mut credit = [0_u8; 8];
    while sent < total {
        while sent - acked >= WINDOW {
            anyhow::ensure!(Instant::now() < deadline, "time limit");
            match socket.recv(&mut credit) {
                Ok(8) => acked = acked.max(u64::from_be_bytes(credit)),
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(error) => return Err(error).context("receiving credit"),
            }
        }
        let len = usize::try_from(total - sent).map_or(datagram, |left| left.min(datagram));
        let n = socket.send(&payload[..len]).context("sending a datagram")?;
        sent += n as u64;
    }
    Ok(())
}

/// Count bytes until `total` arrived; acknowledge every [`CREDIT_STEP`].
fn receive(socket: &UdpSocket, total: u64, moved: &Moved, deadline: Instant) -> anyhow::Result<()> {
    let mut buf = vec![0_u8; 65_536];
    let mut received: u64 = 0;
    let mut last_credit: u64 = 0;
    while received < total {
        anyhow::ensure!(Instant::now() < deadline, "time limit");
        match socket.recv(&mut buf) {
            Ok(n) => {
                received = moved.add(n as u64);
                if received - last_credit >= CREDIT_STEP || received >= total {
                    socket
                        .send(&received.to_be_bytes())
                        .context("sending credit")?;
                    last_credit = received;
                }
            }
            Err(error) if is_timeout(&error) => {}
            Err(error) => return Err(error).context("receiving"),
        }
    }
    Ok(())
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
