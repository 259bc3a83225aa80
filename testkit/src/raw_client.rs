//! A signaling client driven by hand, frame by frame, against a real server: for tests that
//! check the server's answers step by step or send what a real device never would (replayed,
//! forged, malformed or out-of-order messages). The wire-message builders and what the answers
//! carry are in [`messages`].
//!
//! Every wait of a client is bounded by the `step` it was opened with: the server's own tests
//! use a few seconds, the end-to-end tests [`STEP`](crate::STEP).

pub mod messages;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{
    AuthPayload, ClientMessage, ErrorCode, PROTOCOL_VERSION, PairOutcome, RoutingCode,
    ServerMessage, SessionEndReason, SessionId, Signal,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use messages::{
    DESKTOP_AUTH, PHONE_AUTH, Prompt, Welcome, hello, pair_request, pair_response, phone_device,
    register_desktop,
};

/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(250);

/// A client WebSocket as `tokio_tungstenite::connect_async` returns it.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One hand-driven signaling connection.
#[derive(Debug)]
pub struct RawClient {
    /// The socket, for frames that are not protocol messages.
    pub ws: Ws,
    /// Bound for each wait: connecting, sending, the next message, the server's close.
    step: Duration,
    /// The `session_token` of the last session accepted (see [`RawClient::expect_result`]).
    pub token: Option<proxim_protocol::ResumeToken>,
}

impl RawClient {
    /// Open the WebSocket to `url` (no hello); every wait is bounded by `step`.
    pub async fn open_raw(url: &str, step: Duration) -> RawClient {
        match Self::try_open_with(url, step, &[]).await {
            Ok(client) => client,
            Err(status) => panic!("the server refused the upgrade with HTTP {status}"),
        }
    }

    /// [`open_raw`](Self::open_raw) with extra request headers; `Err(status)` when the server
    /// refuses the upgrade with an HTTP status.
    pub async fn try_open_with(
        url: &str,
        step: Duration,
        headers: &[(&'static str, &str)],
    ) -> Result<RawClient, u16> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse().unwrap());
        }
        let connected = tokio::time::timeout(step, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time");
        match connected {
            Ok((ws, _)) => Ok(RawClient {
                ws,
                step,
                token: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Open, say hello, and check the welcome (current version, a 32-character connection id).
    pub async fn greeted(url: &str, step: Duration) -> RawClient {
        let mut client = Self::open_raw(url, step).await;
        let welcome = client.say_hello().await;
        assert_eq!(welcome.version, PROTOCOL_VERSION);
        assert_eq!(welcome.connection_id.as_str().len(), 32);
        client
    }

    /// Like [`greeted`](Self::greeted), with extra request headers and without checking the
    /// welcome; `Err(status)` when the server refuses the upgrade.
    pub async fn greeted_with(
        url: &str,
        step: Duration,
        headers: &[(&'static str, &str)],
    ) -> Result<RawClient, u16> {
        let mut client = Self::try_open_with(url, step, headers).await?;
        client.say_hello().await;
        Ok(client)
    }

    /// Send `hello` with the current protocol version and expect the `welcome`.
    pub async fn say_hello(&mut self) -> Welcome {
        self.send(&hello(PROTOCOL_VERSION)).await;
        self.expect_welcome().await
    }

    /// Send one message.
    pub async fn send(&mut self, message: &ClientMessage) {
        self.send_frame(Message::text(message.encode())).await;
    }

    /// Send a text frame, whatever it holds.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(Message::text(text)).await;
    }

    /// Send a text frame; `false` when the socket is closed or failed, or the send does not
    /// finish within the step (no panic).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        matches!(
            tokio::time::timeout(self.step, self.ws.send(Message::text(text))).await,
            Ok(Ok(()))
        )
    }

    /// Send a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_frame(Message::binary(bytes)).await;
    }

    /// The next frame, raw (pings and pongs included); `None` when the socket ended.
    pub async fn next_frame(&mut self) -> Option<Message> {
        tokio::time::timeout(self.step, self.ws.next())
            .await
            .expect("a frame in time")
            .map(|frame| frame.unwrap())
    }

    /// The next protocol message within the step; silence fails the test.
    pub async fn recv(&mut self) -> ServerMessage {
        self.recv_within(self.step)
            .await
            .expect("a message in time, got silence")
    }

    /// The next protocol message within `wait`, or `None` on silence; pings and pongs are
    /// skipped. Panics when the socket closes or a frame does not decode.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<ServerMessage> {
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

    /// The first message `want` accepts, skipping the others; each one is awaited within the
    /// step.
    pub async fn until(&mut self, mut want: impl FnMut(&ServerMessage) -> bool) -> ServerMessage {
        loop {
            let message = self.recv().await;
            if want(&message) {
                return message;
            }
        }
    }

    /// Assert nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(message) = self.recv_within(QUIET).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Assert the next message is an error with `code` and a message.
    pub async fn expect_error(&mut self, code: ErrorCode) {
        match self.recv().await {
            ServerMessage::Error { code: got, message } => {
                assert_eq!(got, code, "error message: {message}");
                assert!(!message.as_str().is_empty());
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Send `message` and assert it is answered with an error with `code`.
    pub async fn expect_refused(&mut self, message: &ClientMessage, code: ErrorCode) {
        self.send(message).await;
        self.expect_error(code).await;
    }

    /// The next message, which must be a `welcome`.
    pub async fn expect_welcome(&mut self) -> Welcome {
        match self.recv().await {
            ServerMessage::Welcome {
                version,
                connection_id,
                ice_servers,
                heartbeat_interval_ms,
                heartbeat_timeout_ms,
            } => Welcome {
                version,
                connection_id,
                ice_servers,
                heartbeat_interval_ms,
                heartbeat_timeout_ms,
            },
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// The next message, which must be a `registered`: the code and its remaining lifetime.
    pub async fn expect_registered(&mut self) -> (RoutingCode, Option<u64>) {
        match self.recv().await {
            ServerMessage::Registered {
                code,
                expires_in_ms,
            } => (code, expires_in_ms),
            other => panic!("expected registered, got {other:?}"),
        }
    }

    /// The next message, which must be a `pair_prompt`.
    pub async fn expect_prompt(&mut self) -> Prompt {
        match self.recv().await {
            ServerMessage::PairPrompt {
                session,
                peer,
                expires_in_ms,
                auth,
            } => Prompt {
                session,
                peer,
                expires_in_ms,
                auth,
            },
            other => panic!("expected pair_prompt, got {other:?}"),
        }
    }

    /// The next message, which must be a `pair_pending`; returns its session.
    pub async fn expect_pending(&mut self) -> SessionId {
        match self.recv().await {
            ServerMessage::PairPending { session, .. } => session,
            other => panic!("expected pair_pending, got {other:?}"),
        }
    }

    /// The next message, which must be a `pair_result` for `session` with `outcome`; returns
    /// it.
    pub async fn expect_result(
        &mut self,
        session: &SessionId,
        outcome: PairOutcome,
    ) -> ServerMessage {
        let message = self.recv().await;
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
        // An accepted session's token follows its result.
        if outcome == PairOutcome::Accepted {
            match self.recv().await {
                ServerMessage::SessionToken {
                    session: got,
                    token,
                } if &got == session => {
                    self.token = Some(token);
                }
                other => panic!("expected the session_token, got {other:?}"),
            }
        }
        message
    }

    /// Ask to pair with `code` and return the outcome of the `pair_result` without a session
    /// that must answer it (`unknown_code`, `code_used`…).
    pub async fn refused_outcome(&mut self, code: &RoutingCode) -> PairOutcome {
        self.send(&messages::pair_request(code, None)).await;
        match self.recv().await {
            ServerMessage::PairResult {
                session: None,
                outcome,
                ..
            } => outcome,
            other => panic!("expected a pair_result without a session for {code:?}, got {other:?}"),
        }
    }

    /// The next message, which must be a `signal` in `session`; returns the signal.
    pub async fn expect_signal_in(&mut self, session: &SessionId) -> Signal {
        match self.recv().await {
            ServerMessage::Signal {
                session: got,
                signal,
            } => {
                assert_eq!(&got, session);
                signal
            }
            other => panic!("expected signal, got {other:?}"),
        }
    }

    /// Assert the next message is `session_ended` for `session` with `reason`.
    pub async fn expect_ended(&mut self, session: &SessionId, reason: SessionEndReason) {
        match self.recv().await {
            ServerMessage::SessionEnded {
                session: got,
                reason: got_reason,
            } => {
                assert_eq!(&got, session);
                assert_eq!(got_reason, reason);
            }
            other => panic!("expected session_ended {reason:?}, got {other:?}"),
        }
    }

    /// Assert the socket closes within the step (after any remaining messages, which are
    /// returned).
    pub async fn expect_closed(&mut self) -> Vec<ServerMessage> {
        let deadline = tokio::time::Instant::now() + self.step;
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
    pub async fn ping_pong(&mut self, seq: u64) {
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
    pub async fn register(&mut self, device_id: &str, name: &str) -> RoutingCode {
        self.send(&register_desktop(device_id, name)).await;
        self.expect_registered().await.0
    }

    /// Answer the pairing prompt of `session`.
    pub async fn respond(&mut self, session: &SessionId, accept: bool, auth: Option<&str>) {
        self.send(&pair_response(session, accept, auth)).await;
    }

    /// Close the socket cleanly (within the step, errors ignored).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.step, self.ws.close(None)).await;
    }

    async fn send_frame(&mut self, frame: Message) {
        tokio::time::timeout(self.step, self.ws.send(frame))
            .await
            .expect("send in time")
            .expect("send");
    }
}

/// A desktop (`desk-1`) and a phone with a pending session through the server at `url`: the
/// desktop got the prompt, the phone `pair_pending`. The phone sends [`PHONE_AUTH`].
pub async fn pending_pair(url: &str, step: Duration) -> (RawClient, RawClient, SessionId) {
    pending_pair_with(url, step, "desk-1", Some(PHONE_AUTH)).await
}

/// Like [`pending_pair`], with desktop device id `desktop_id` and the phone's auth payload
/// `auth`.
pub async fn pending_pair_with(
    url: &str,
    step: Duration,
    desktop_id: &str,
    auth: Option<&str>,
) -> (RawClient, RawClient, SessionId) {
    let mut desktop = RawClient::greeted(url, step).await;
    let code = desktop.register(desktop_id, "Test desktop").await;
    let mut phone = RawClient::greeted(url, step).await;
    phone.send(&pair_request(&code, auth)).await;
    let prompt = desktop.expect_prompt().await;
    assert_eq!(prompt.peer, phone_device());
    assert!(prompt.expires_in_ms > 0);
    assert_eq!(prompt.auth.as_ref().map(AuthPayload::as_str), auth);
    assert_eq!(phone.expect_pending().await, prompt.session);
    (desktop, phone, prompt.session)
}

/// A desktop and a phone in an accepted session; the desktop answers with [`DESKTOP_AUTH`].
pub async fn accepted_pair(url: &str, step: Duration) -> (RawClient, RawClient, SessionId) {
    accepted_pair_with(url, step, "desk-1", Some(PHONE_AUTH)).await
}

/// Like [`accepted_pair`], with desktop device id `desktop_id` and, when the phone sends
/// `auth`, the desktop answering with [`DESKTOP_AUTH`].
pub async fn accepted_pair_with(
    url: &str,
    step: Duration,
    desktop_id: &str,
    auth: Option<&str>,
) -> (RawClient, RawClient, SessionId) {
    let (mut desktop, mut phone, session) = pending_pair_with(url, step, desktop_id, auth).await;
    desktop
        .respond(&session, true, auth.map(|_| DESKTOP_AUTH))
        .await;
    phone.expect_result(&session, PairOutcome::Accepted).await;
    desktop.expect_result(&session, PairOutcome::Accepted).await;
    (desktop, phone, session)
}
