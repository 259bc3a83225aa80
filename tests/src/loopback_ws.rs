//! WebSocket clients of a loopback server from a chosen source address (127.0.0.2, …), so
//! that many connections spread over several addresses: per-IP limits apply per address, and
//! each address has its own range of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connecting (TCP + WebSocket upgrade) may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The server refused the upgrade with this HTTP status (429: per-IP cap).
    Status(u16),
    /// Anything else: bind, connect, handshake, timeout.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Status(status) => write!(f, "upgrade refused with HTTP {status}"),
            ConnectError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ConnectError {}

/// The `index`-th of `count` loopback source addresses from 127.0.0.2 on (wrapping).
pub fn source_ip(index: usize, count: u8) -> IpAddr {
    let offset = (index % usize::from(count.max(1))) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + offset))
}

/// Open a WebSocket to `server`'s `/ws` from `source` (a loopback address of this machine),
/// with tungstenite's default settings or `config`, within [`CONNECT_TIMEOUT`].
pub async fn connect_from(
    server: SocketAddr,
    source: IpAddr,
    config: Option<WebSocketConfig>,
) -> Result<Ws, ConnectError> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_from_unbounded(server, source, config),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Other("connect timed out".to_owned())),
    }
}

/// [`connect_from`] without its timeout, for a caller that bounds a larger step anyway (a
/// timer armed per connection costs a load generator opening thousands a second).
pub async fn connect_from_unbounded(
    server: SocketAddr,
    source: IpAddr,
    config: Option<WebSocketConfig>,
) -> Result<Ws, ConnectError> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| ConnectError::Other(e.to_string()))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| ConnectError::Other(format!("bind {source}: {e}")))?;
    let tcp = socket
        .connect(server)
        .await
        .map_err(|e| ConnectError::Other(format!("connect from {source}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{server}/ws");
    match tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), config).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            Err(ConnectError::Status(response.status().as_u16()))
        }
        Err(e) => Err(ConnectError::Other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_start_at_127_0_0_2_and_wrap() {
        assert_eq!(source_ip(0, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(3, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
        assert_eq!(source_ip(4, 4), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }
}
