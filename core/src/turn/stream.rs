//! Reaching a TURN server: name resolution, UDP, and TURN over a byte stream (TCP or TLS).
//!
//! Over a stream, STUN messages and ChannelData follow each other with no other framing
//! (RFC 8656 §6.2, §12.5): a STUN message is its 20-byte header plus the length in it, a
//! ChannelData message is its 4-byte header plus the length in it, padded to a multiple of 4.
//! The two kinds differ in their first two bits (`00` STUN, `01` ChannelData).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::{TurnError, TurnOptions, TurnServer, TurnTransport};

/// How long a TCP connect plus TLS handshake may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest frame a TURN stream carries (ChannelData with a 64 KiB payload, padded).
const MAX_FRAME: usize = 4 + 65_535 + 3;
/// Frames queued towards one stream's writer before new ones are dropped (like a full socket
/// buffer drops datagrams; SCTP recovers).
pub(crate) const WRITE_QUEUE_FRAMES: usize = 4096;

/// Resolve the server's name to an address of the family `local_ip` has (any family when
/// `None`; IPv4 first).
pub(crate) async fn resolve(
    server: &TurnServer,
    local_ip: Option<IpAddr>,
) -> Result<SocketAddr, TurnError> {
    let wanted_v4 = local_ip.map(|ip| ip.is_ipv4());
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, server.port));
    }
    let lookup = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(server.host_port()))
        .await
        .map_err(|_| TurnError::Resolve(format!("{}: timed out", server.host)))?
        .map_err(|e| TurnError::Resolve(format!("{}: {e}", server.host)))?;
    let mut addrs: Vec<SocketAddr> = lookup
        .filter(|a| wanted_v4.is_none_or(|v4| a.is_ipv4() == v4))
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .first()
        .copied()
        .ok_or_else(|| TurnError::Resolve(format!("{}: no usable address", server.host)))
}

/// Splits a byte stream into TURN messages.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Append bytes read from the stream.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if the buffer holds one. An error means the stream is not
    /// TURN (or is corrupt) and must be closed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<BytesMut>, TurnError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
        let total = match self.buf[0] >> 6 {
            0b00 => {
                if len % 4 != 0 {
                    return Err(TurnError::Protocol(format!(
                        "STUN message length {len} is not a multiple of 4"
                    )));
                }
                20 + len
            }
            0b01 => (4 + len + 3) & !3,
            _ => {
                return Err(TurnError::Protocol(format!(
                    "byte 0x{:02x} starts neither a STUN message nor ChannelData",
                    self.buf[0]
                )));
            }
        };
        debug_assert!(total <= MAX_FRAME + 20);
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total)))
    }

    /// Bytes buffered and not yet returned.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected stream to a TURN server: its halves and its local address.
pub(crate) struct TurnStream {
    read: BoxRead,
    write: BoxWrite,
    local: SocketAddr,
}

impl std::fmt::Debug for TurnStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnStream")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TurnStream {
    /// Connect over TCP (and TLS for `turns:`), bounded by [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(
        server: &TurnServer,
        addr: SocketAddr,
        options: &TurnOptions,
    ) -> Result<TurnStream, TurnError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(server, addr, options))
            .await
            .map_err(|_| TurnError::TimedOut(CONNECT_TIMEOUT))?
    }

    async fn connect_inner(
        server: &TurnServer,
        addr: SocketAddr,
        options: &TurnOptions,
    ) -> Result<TurnStream, TurnError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| TurnError::Unreachable(e.to_string()))?;
        if let Some(ip) = options.local_ip {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| TurnError::Unreachable(format!("bind {ip}: {e}")))?;
        }
        let tcp: TcpStream = socket
            .connect(addr)
            .await
            .map_err(|e| TurnError::Unreachable(format!("{addr}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| TurnError::Unreachable(e.to_string()))?;
        let local = tcp
            .local_addr()
            .map_err(|e| TurnError::Unreachable(e.to_string()))?;
        if server.transport != TurnTransport::Tls {
            let (read, write) = tcp.into_split();
            return Ok(TurnStream {
                read: Box::new(read),
                write: Box::new(write),
                local,
            });
        }
        let config = tls_config(options.extra_roots_pem.as_deref())?;
        let name = rustls_pki_types::ServerName::try_from(server.host.clone())
            .map_err(|e| TurnError::Tls(format!("`{}` is no TLS server name: {e}", server.host)))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| TurnError::Tls(e.to_string()))?;
        let (read, write) = tokio::io::split(tls);
        Ok(TurnStream {
            read: Box::new(read),
            write: Box::new(write),
            local,
        })
    }

    /// The local end of the connection.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Hand the stream to two tasks: frames read are sent to `inbound` tagged with `id`, and
    /// the returned sender takes frames to write. When the stream ends either way, `inbound`
    /// gets [`RelayInput::Closed`]. Dropping the sender lets the writer flush what is queued
    /// and close the stream; dropping the guard stops the reader.
    pub(crate) fn spawn(
        self,
        id: usize,
        inbound: mpsc::Sender<RelayInput>,
    ) -> (mpsc::Sender<BytesMut>, ReaderGuard) {
        let (tx, mut rx) = mpsc::channel::<BytesMut>(WRITE_QUEUE_FRAMES);
        let TurnStream {
            mut read,
            mut write,
            ..
        } = self;
        let closed = inbound.clone();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if let Err(e) = write.write_all(&frame).await {
                    let _ = closed
                        .send(RelayInput::Closed {
                            id,
                            reason: format!("write failed: {e}"),
                        })
                        .await;
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let reader = tokio::spawn(async move {
            let reason = read_frames(&mut read, id, &inbound).await;
            let _ = inbound.send(RelayInput::Closed { id, reason }).await;
        });
        (tx, ReaderGuard(reader))
    }
}

/// Stops a stream's reader task when dropped (with the relay that owns it).
#[derive(Debug)]
pub(crate) struct ReaderGuard(tokio::task::JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the relay tasks tell the peer driver about relay `id`.
#[derive(Debug)]
pub(crate) enum RelayInput {
    /// The server's name resolved (and for TCP/TLS, the stream is connected).
    Connected {
        id: usize,
        server_addr: SocketAddr,
        stream: Option<TurnStream>,
    },
    /// The server cannot be reached.
    SetupFailed { id: usize, error: TurnError },
    /// One TURN message from the stream.
    Frame { id: usize, data: BytesMut },
    /// The stream ended.
    Closed { id: usize, reason: String },
}

async fn read_frames(read: &mut BoxRead, id: usize, inbound: &mpsc::Sender<RelayInput>) -> String {
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => return "closed by the server".to_owned(),
            Ok(n) => n,
            Err(e) => return format!("read failed: {e}"),
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(data)) => {
                    // Waits while the driver is behind: back-pressure onto TCP.
                    if inbound.send(RelayInput::Frame { id, data }).await.is_err() {
                        return "driver gone".to_owned();
                    }
                }
                Ok(None) => break,
                Err(e) => return e.to_string(),
            }
        }
    }
}

/// rustls client configuration: the webpki roots plus `extra_pem`.
fn tls_config(extra_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, TurnError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| TurnError::Tls(format!("bad PEM root certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TurnError::Tls(format!("unusable root certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(TurnError::Tls(
                "no certificate in the PEM roots given".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TurnError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The transport [`super::probe_turn`] uses: one UDP socket, or one stream.
pub(crate) enum ProbeTransport {
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    Stream {
        stream: TurnStream,
        decoder: FrameDecoder,
        buf: Vec<u8>,
    },
}

impl ProbeTransport {
    pub(crate) async fn connect(
        server: &TurnServer,
        addr: SocketAddr,
        options: &TurnOptions,
    ) -> Result<Self, TurnError> {
        match server.transport {
            TurnTransport::Udp => {
                let ip = options.local_ip.unwrap_or(if addr.is_ipv4() {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                });
                let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
                    .await
                    .map_err(|e| TurnError::Unreachable(format!("bind {ip}: {e}")))?;
                // `connect` picks the source address the route to the server uses.
                socket
                    .connect(addr)
                    .await
                    .map_err(|e| TurnError::Unreachable(format!("{addr}: {e}")))?;
                Ok(ProbeTransport::Udp {
                    socket,
                    server: addr,
                })
            }
            TurnTransport::Tcp | TurnTransport::Tls => Ok(ProbeTransport::Stream {
                stream: TurnStream::connect(server, addr, options).await?,
                decoder: FrameDecoder::default(),
                buf: vec![0; 64 * 1024],
            }),
        }
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        match self {
            ProbeTransport::Udp { socket, server } => socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::new(server.ip(), 0)),
            ProbeTransport::Stream { stream, .. } => stream.local_addr(),
        }
    }

    pub(crate) async fn send(&mut self, data: &[u8]) -> Result<(), TurnError> {
        match self {
            ProbeTransport::Udp { socket, .. } => socket
                .send(data)
                .await
                .map(|_| ())
                .map_err(|e| TurnError::Unreachable(e.to_string())),
            ProbeTransport::Stream { stream, .. } => stream
                .write
                .write_all(data)
                .await
                .map_err(|e| TurnError::Protocol(format!("write failed: {e}"))),
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<BytesMut, TurnError> {
        match self {
            ProbeTransport::Udp { socket, .. } => {
                let mut buf = vec![0u8; 64 * 1024];
                match socket.recv(&mut buf).await {
                    Ok(n) => Ok(BytesMut::from(&buf[..n])),
                    // ICMP port unreachable surfaces as ECONNREFUSED on a connected socket.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(
                        TurnError::Unreachable("nothing listens on the server's UDP port".into()),
                    ),
                    Err(e) => Err(TurnError::Unreachable(e.to_string())),
                }
            }
            ProbeTransport::Stream {
                stream,
                decoder,
                buf,
            } => loop {
                if let Some(frame) = decoder.next_frame()? {
                    return Ok(frame);
                }
                let n = stream
                    .read
                    .read(buf)
                    .await
                    .map_err(|e| TurnError::Protocol(format!("read failed: {e}")))?;
                if n == 0 {
                    return Err(TurnError::Protocol(
                        "the server closed the connection".into(),
                    ));
                }
                decoder.push(&buf[..n]);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut v = vec![0x00, 0x01];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(0xAB, 16 + usize::from(len)));
        v
    }

    fn chandata(len: u16) -> Vec<u8> {
        let mut v = vec![0x40, 0x00];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(0xCD, usize::from(len)));
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn frames_split_at_any_byte_boundary() {
        let mut stream = Vec::new();
        let frames = [stun(8), chandata(5), chandata(1200), stun(0), chandata(0)];
        for f in &frames {
            stream.extend_from_slice(f);
        }
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames.to_vec(), "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = FrameDecoder::default();
        d.push(&[0xFF, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.push(&[0x00, 0x01, 0x00, 0x03]);
        assert!(
            d.next_frame().is_err(),
            "STUN length must be a multiple of 4"
        );
        let mut d = FrameDecoder::default();
        d.push(&[0x40, 0x00]);
        assert!(matches!(d.next_frame(), Ok(None)));
    }

    #[test]
    fn bad_pem_roots_are_refused() {
        assert!(tls_config(Some(b"not a certificate")).is_err());
        assert!(tls_config(None).is_ok());
    }
}
