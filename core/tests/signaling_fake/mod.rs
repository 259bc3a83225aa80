//! An in-process fake signaling server for the client's tests: a WebSocket listener on
//! 127.0.0.1:0 whose connections the test scripts message by message.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{
    ClientMessage, ConnectionId, DeviceId, DeviceName, PeerDevice, RoutingCode, ServerMessage,
    SessionId,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, accept_async};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

pub const S1: &str = "11111111111111111111111111111111";
pub const S2: &str = "22222222222222222222222222222222";
pub const S3: &str = "33333333333333333333333333333333";

pub fn session(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

pub fn code(c: &str) -> RoutingCode {
    RoutingCode::new(c).unwrap()
}

pub fn device(name: &str) -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new(name).unwrap(),
        device_name: DeviceName::new(name).unwrap(),
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "proxim_core=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The listener. Connections arrive on [`FakeServer::accept`].
pub struct FakeServer {
    pub addr: SocketAddr,
    pub url: String,
    conns: mpsc::Receiver<FakeConn>,
    /// How many of the next TCP connections to drop before the WebSocket handshake.
    refuse: mpsc::UnboundedSender<u32>,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::channel(16);
        let (refuse, mut refuse_rx) = mpsc::unbounded_channel::<u32>();
        tokio::spawn(async move {
            let mut to_refuse = 0u32;
            let mut next_id = 1u32;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while let Ok(n) = refuse_rx.try_recv() {
                    to_refuse += n;
                }
                if to_refuse > 0 {
                    to_refuse -= 1;
                    drop(stream);
                    continue;
                }
                let Ok(ws) = accept_async(stream).await else {
                    continue;
                };
                let conn = FakeConn { ws, id: next_id };
                next_id += 1;
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
        });
        FakeServer {
            addr,
            url: format!("ws://{addr}/ws"),
            conns,
            refuse,
        }
    }

    /// The next WebSocket connection.
    pub async fn accept(&mut self) -> FakeConn {
        timeout(WAIT, self.conns.recv())
            .await
            .expect("no connection in time")
            .expect("listener gone")
    }

    /// Drop the next `n` TCP connections before the WebSocket handshake.
    pub fn refuse_next(&self, n: u32) {
        self.refuse.send(n).unwrap();
    }
}

/// One accepted connection, scripted by the test.
pub struct FakeConn {
    pub ws: WebSocketStream<TcpStream>,
    pub id: u32,
}

impl FakeConn {
    /// Expect `hello`, answer `welcome` with these heartbeat values.
    pub async fn handshake(&mut self, interval_ms: u64, timeout_ms: u64) {
        match self.recv().await {
            ClientMessage::Hello { version, .. } => assert_eq!(version, 1),
            other => panic!("expected hello, got {other:?}"),
        }
        self.send(&self.welcome(interval_ms, timeout_ms)).await;
    }

    pub fn welcome(&self, interval_ms: u64, timeout_ms: u64) -> ServerMessage {
        ServerMessage::Welcome {
            version: proxim_protocol::PROTOCOL_VERSION,
            connection_id: ConnectionId::new(format!("{:032x}", self.id)).unwrap(),
            ice_servers: vec![],
            heartbeat_interval_ms: interval_ms,
            heartbeat_timeout_ms: timeout_ms,
        }
    }

    /// The next client message, including pings.
    pub async fn recv(&mut self) -> ClientMessage {
        self.try_recv()
            .await
            .expect("connection closed while waiting for a message")
    }

    /// The next client message, or `None` when the connection closed.
    pub async fn try_recv(&mut self) -> Option<ClientMessage> {
        loop {
            let frame = timeout(WAIT, self.ws.next())
                .await
                .expect("no message in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Some(
                        ClientMessage::decode(text.as_str()).expect("client sent garbage"),
                    );
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next client message that is not a heartbeat; pings are answered.
    pub async fn recv_skip_pings(&mut self) -> ClientMessage {
        loop {
            match self.recv().await {
                ClientMessage::Ping { seq } => self.send(&ServerMessage::Pong { seq }).await,
                ClientMessage::Pong { .. } => {}
                other => return other,
            }
        }
    }

    pub async fn send(&mut self, message: &ServerMessage) {
        self.ws
            .send(Message::text(message.encode()))
            .await
            .expect("send to client");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send to client");
    }

    /// Answer pings until the client closes; returns what else it sent.
    pub async fn serve_until_closed(mut self) -> Vec<ClientMessage> {
        let mut seen = Vec::new();
        while let Some(message) = self.try_recv().await {
            match message {
                ClientMessage::Ping { seq } => {
                    let _ = self
                        .ws
                        .send(Message::text(ServerMessage::Pong { seq }.encode()))
                        .await;
                }
                other => seen.push(other),
            }
        }
        seen
    }
}
