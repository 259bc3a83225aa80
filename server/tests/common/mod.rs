//! Test helpers: a real WebSocket client with bounded waits, and a server on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{
    AuthPayload, ClientMessage, DeviceId, DeviceName, ErrorCode, PROTOCOL_VERSION, PairOutcome,
    PeerDevice, RoutingCode, ServerMessage, SessionId, ShortText,
};
use proxim_server::{RunningServer, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub(crate) const WAIT: Duration = Duration::from_secs(3);

/// How long a test waits to be sure something does not happen.
pub(crate) const QUIET: Duration = Duration::from_millis(250);

/// Start a server on loopback with short timeouts (heartbeat 0.5 s / 2 s, prompt 2 s), then
/// let `configure` adjust the config.
pub(crate) async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    init_tracing();
    let mut config = ServerConfig::loopback();
    config.heartbeat_interval = Duration::from_millis(500);
    config.heartbeat_timeout = Duration::from_secs(2);
    config.prompt_timeout = Duration::from_secs(2);
    config.shutdown_grace = Duration::from_secs(2);
    configure(&mut config);
    Server::start(config).await.expect("server starts")
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A signaling client speaking raw protocol frames.
pub(crate) struct TestClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl TestClient {
    /// Open the WebSocket (no hello).
    pub(crate) async fn connect(server: &RunningServer) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url()))
            .await
            .expect("connect in time")
            .expect("connect");
        TestClient { ws }
    }

    /// Open the WebSocket with extra request headers; `Err(status)` when the server refuses the
    /// upgrade with an HTTP status.
    pub(crate) async fn try_connect_with(
        server: &RunningServer,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.ws_url().into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse().unwrap());
        }
        let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time");
        match connected {
            Ok((ws, _)) => Ok(TestClient { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Like [`TestClient::greeted`], with extra request headers.
    pub(crate) async fn greeted_with(
        server: &RunningServer,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, u16> {
        let mut client = Self::try_connect_with(server, headers).await?;
        client.send(&hello(PROTOCOL_VERSION)).await;
        match client.recv().await {
            ServerMessage::Welcome { .. } => Ok(client),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Connect, say hello, and check the welcome.
    pub(crate) async fn greeted(server: &RunningServer) -> Self {
        let mut client = Self::connect(server).await;
        client.send(&hello(PROTOCOL_VERSION)).await;
        match client.recv().await {
            ServerMessage::Welcome {
                version,
                connection_id,
                ..
            } => {
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(connection_id.as_str().len(), 32);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        self.send_text(&message.encode()).await;
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// Send a text frame; `false` when the socket is closed or failed (no panic).
    pub(crate) async fn try_send_text(&mut self, text: &str) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.ws.send(Message::text(text))).await,
            Ok(Ok(()))
        )
    }

    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes)))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// The next protocol message, within [`WAIT`].
    pub(crate) async fn recv(&mut self) -> ServerMessage {
        self.recv_within(WAIT)
            .await
            .expect("a message in time, got silence")
    }

    /// The next protocol message within `wait`, or `None` on silence. Panics when the socket
    /// closes or a frame does not decode.
    pub(crate) async fn recv_within(&mut self, wait: Duration) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Some(
                        ServerMessage::decode(text.as_str()).expect("server frame decodes"),
                    );
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Assert nothing arrives for [`QUIET`].
    pub(crate) async fn expect_silence(&mut self) {
        if let Some(message) = self.recv_within(QUIET).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Assert the next message is an error with `code`.
    pub(crate) async fn expect_error(&mut self, code: ErrorCode) {
        match self.recv().await {
            ServerMessage::Error { code: got, message } => {
                assert_eq!(got, code, "error message: {message}");
                assert!(!message.as_str().is_empty());
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Assert the server closes the socket within [`WAIT`] (after any remaining frames, which
    /// are returned).
    pub(crate) async fn expect_closed(&mut self) -> Vec<ServerMessage> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the server closes the connection in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    before.push(ServerMessage::decode(text.as_str()).expect("decodes"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return before,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Send a ping and expect its pong (pongs for earlier pings are skipped).
    pub(crate) async fn ping_pong(&mut self, seq: u64) {
        self.send(&ClientMessage::Ping { seq }).await;
        loop {
            match self.recv().await {
                ServerMessage::Pong { seq: got } if got < seq => continue,
                ServerMessage::Pong { seq: got } => break assert_eq!(got, seq),
                other => panic!("expected pong, got {other:?}"),
            }
        }
    }

    /// Register as a desktop; returns the code.
    pub(crate) async fn register(&mut self, device_id: &str, name: &str) -> RoutingCode {
        self.send(&ClientMessage::RegisterDesktop {
            device_id: DeviceId::new(device_id).unwrap(),
            device_name: DeviceName::new(name).unwrap(),
        })
        .await;
        match self.recv().await {
            ServerMessage::Registered { code, .. } => code,
            other => panic!("expected registered, got {other:?}"),
        }
    }

    /// Close the socket cleanly.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}

pub(crate) fn hello(version: u16) -> ClientMessage {
    ClientMessage::Hello {
        version,
        client: ShortText::new("proxim-server-tests/0").unwrap(),
    }
}

pub(crate) fn pair_request(code: &RoutingCode, auth: Option<&str>) -> ClientMessage {
    ClientMessage::PairRequest {
        code: code.clone(),
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Test phone").unwrap(),
        auth: auth.map(|a| AuthPayload::new(a).unwrap()),
    }
}

pub(crate) fn phone_device() -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Test phone").unwrap(),
    }
}

pub(crate) fn desktop_device() -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new("desk-1").unwrap(),
        device_name: DeviceName::new("Test desktop").unwrap(),
    }
}

/// A desktop and a phone with a pending session: the desktop got the prompt, the phone
/// `pair_pending`.
pub(crate) async fn pending_pair(server: &RunningServer) -> (TestClient, TestClient, SessionId) {
    let mut desktop = TestClient::greeted(server).await;
    let code = desktop.register("desk-1", "Test desktop").await;
    let mut phone = TestClient::greeted(server).await;
    phone
        .send(&pair_request(&code, Some("cGhvbmUtYXV0aA")))
        .await;
    let session = match desktop.recv().await {
        ServerMessage::PairPrompt {
            session,
            peer,
            expires_in_ms,
            auth,
        } => {
            assert_eq!(peer, phone_device());
            assert!(expires_in_ms > 0);
            assert_eq!(
                auth.as_ref().map(AuthPayload::as_str),
                Some("cGhvbmUtYXV0aA")
            );
            session
        }
        other => panic!("expected pair_prompt, got {other:?}"),
    };
    match phone.recv().await {
        ServerMessage::PairPending {
            session: pending, ..
        } => assert_eq!(pending, session),
        other => panic!("expected pair_pending, got {other:?}"),
    }
    (desktop, phone, session)
}

/// A desktop and a phone in an accepted session.
pub(crate) async fn accepted_pair(server: &RunningServer) -> (TestClient, TestClient, SessionId) {
    let (mut desktop, mut phone, session) = pending_pair(server).await;
    desktop
        .send(&ClientMessage::PairResponse {
            session: session.clone(),
            accept: true,
            auth: Some(AuthPayload::new("ZGVza3RvcC1hdXRo").unwrap()),
        })
        .await;
    expect_result(&mut phone, &session, PairOutcome::Accepted).await;
    expect_result(&mut desktop, &session, PairOutcome::Accepted).await;
    (desktop, phone, session)
}

/// Assert the next message is a `pair_result` for `session` with `outcome`; returns it.
pub(crate) async fn expect_result(
    client: &mut TestClient,
    session: &SessionId,
    outcome: PairOutcome,
) -> ServerMessage {
    let message = client.recv().await;
    match &message {
        ServerMessage::PairResult {
            session: Some(got),
            outcome: got_outcome,
            ..
        } => {
            assert_eq!(got, session);
            assert_eq!(*got_outcome, outcome);
        }
        other => panic!("expected pair_result {outcome:?}, got {other:?}"),
    }
    message
}

/// GET `path` from the server over plain HTTP/1.1; returns (status, body).
pub(crate) async fn http_get(server: &RunningServer, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.local_addr()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP answer in time");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// GET a JSON route.
pub(crate) async fn get_json(server: &RunningServer, path: &str) -> serde_json::Value {
    let (status, body) = http_get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}
