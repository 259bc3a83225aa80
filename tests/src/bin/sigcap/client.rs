//! One signaling client of the server under test: a WebSocket from a chosen loopback source
//! address that has said `hello` and read `welcome`, then sends [`ClientMessage`]s and reads
//! [`ServerMessage`]s (answering the server's heartbeat `ping` on the way).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{
    ClientMessage, DeviceId, DeviceName, PROTOCOL_VERSION, RoutingCode, ServerMessage, ShortText,
};
use proxim_tests::loopback_ws::{Ws, connect_from_unbounded};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Opening a client (connect, upgrade, hello, welcome) may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A greeted signaling connection.
#[derive(Debug)]
pub(crate) struct Client {
    ws: Ws,
}

impl Client {
    /// Connect from `source`, say `hello`, read `welcome`, within [`OPEN_TIMEOUT`].
    pub(crate) async fn open(server: SocketAddr, source: IpAddr) -> Result<Client> {
        tokio::time::timeout(OPEN_TIMEOUT, Client::open_unbounded(server, source))
            .await
            .unwrap_or_else(|_| bail!("opening timed out after {OPEN_TIMEOUT:?}"))
    }

    /// [`Client::open`] without a timeout of its own, for a caller that bounds it (the fresh
    /// STORM: the pairing's timeout covers the connect; a timer per step would cost the
    /// generator CPU that the server it shares the machine with could use).
    pub(crate) async fn open_unbounded(server: SocketAddr, source: IpAddr) -> Result<Client> {
        // Small buffers: twenty thousand idle clients share this process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let ws = connect_from_unbounded(server, source, Some(config)).await?;
        let mut client = Client { ws };
        client
            .send(ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                client: ShortText::truncated("proxim-sigcap"),
            })
            .await?;
        match client.recv().await? {
            ServerMessage::Welcome { .. } => Ok(client),
            other => bail!("expected welcome, got {}", other.kind()),
        }
    }

    /// Open a client and register it as the desktop `device`; its pairing code.
    pub(crate) async fn register_desktop(
        server: SocketAddr,
        source: IpAddr,
        device: &Device,
    ) -> Result<(Client, RoutingCode)> {
        let mut client = Client::open(server, source).await?;
        client
            .send(ClientMessage::RegisterDesktop {
                device_id: device.id.clone(),
                device_name: device.name.clone(),
            })
            .await?;
        let reply = tokio::time::timeout(OPEN_TIMEOUT, client.recv())
            .await
            .context("registered timed out")??;
        match reply {
            ServerMessage::Registered { code, .. } => Ok((client, code)),
            other => bail!("expected registered, got {}", other.kind()),
        }
    }

    /// Send one message.
    pub(crate) async fn send(&mut self, message: ClientMessage) -> Result<()> {
        self.ws
            .send(Message::text(message.encode()))
            .await
            .context("sending")
    }

    /// The next message from the server (no timeout: callers bound it). A `ping` is answered
    /// and skipped.
    pub(crate) async fn recv(&mut self) -> Result<ServerMessage> {
        loop {
            let frame = match self.ws.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => bail!("the connection failed: {e}"),
                None => bail!("the server closed the connection"),
            };
            match frame {
                Message::Text(text) => match ServerMessage::decode(&text)? {
                    ServerMessage::Ping { seq } => self.send(ClientMessage::Pong { seq }).await?,
                    message => return Ok(message),
                },
                Message::Close(close) => bail!("the server closed the connection: {close:?}"),
                Message::Binary(_) => bail!("the server sent a binary frame"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Send a close frame and drop the connection without waiting for the server's.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Run `task(k)` for every `k` in `0..count`, at most `at_once` at a time; the results in the
/// order of `k`.
pub(crate) async fn run_many<T, F, Fut>(count: usize, at_once: usize, task: F) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(at_once.max(1)));
    let mut running = JoinSet::new();
    for k in 0..count {
        let gate = gate.clone();
        let work = task(k);
        running.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (k, work.await)
        });
    }
    let mut results: Vec<(usize, Result<T>)> = Vec::with_capacity(count);
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => results.push((usize::MAX, Err(anyhow::anyhow!("a task failed: {e}")))),
        }
    }
    results.sort_by_key(|(k, _)| *k);
    results.into_iter().map(|(_, result)| result).collect()
}

/// A device the generator plays: its id and name, both `sigcap-<role>-<k>`.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: DeviceId,
    pub(crate) name: DeviceName,
}

impl Device {
    pub(crate) fn new(role: &str, k: usize) -> Result<Device> {
        let text = format!("sigcap-{role}-{k}");
        Ok(Device {
            id: DeviceId::new(text.clone())?,
            name: DeviceName::new(text)?,
        })
    }
}
