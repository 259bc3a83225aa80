//! The WebSocket transport's manners: a client's Close is answered with a Close, a text frame
//! that is not UTF-8 is closed with 1007, a frame too large for the transport to read still
//! gets `frame_too_large` (then 1009), the listen backlog is the configured one, a client
//! that does not finish its HTTP request or never says `hello` is closed in bounded time, and
//! over the socket cap a newcomer gets 503 while everyone else carries on.

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, get_json, start_server};
use futures_util::{SinkExt, StreamExt};
use proxim_protocol::{ErrorCode, MAX_FRAME_BYTES, ServerMessage};
use proxim_testkit::raw_client::RawClient;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// The next frame that is not a ping or pong, within [`WAIT`]; `None` when the socket ended
/// without one (no Close frame: what a client sees as 1006).
async fn next_non_control(client: &mut RawClient) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("the server answers in time");
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

/// The close code of the first Close frame, skipping (and returning) the messages before it.
async fn close_code(client: &mut RawClient) -> (Vec<ServerMessage>, Option<CloseCode>) {
    let mut before = Vec::new();
    loop {
        match next_non_control(client).await {
            Some(Message::Text(text)) => {
                before.push(ServerMessage::decode(text.as_str()).expect("decodes"));
            }
            Some(Message::Close(frame)) => return (before, frame.map(|f| f.code)),
            Some(other) => panic!("unexpected frame {other:?}"),
            None => return (before, None),
        }
    }
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_with_a_close() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    client
        .ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "leaving".into(),
        })))
        .await
        .unwrap();
    let (_, code) = close_code(&mut client).await;
    assert_eq!(
        code,
        Some(CloseCode::Away),
        "the server echoes the client's close code"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    let not_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.ws.send(Message::Frame(not_utf8)).await.unwrap();
    let (_, code) = close_code(&mut client).await;
    assert_eq!(code, Some(CloseCode::Invalid));
    // Others are not affected.
    let mut other = RawClient::greeted(&server.ws_url(), WAIT).await;
    other.ping_pong(1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_too_large_for_the_transport_still_gets_frame_too_large() {
    let server = start_server(|_| {}).await;
    let mut client = RawClient::greeted(&server.ws_url(), WAIT).await;
    // Over twice the protocol limit: the transport refuses to read it at all. Only the header
    // is sent, announcing the size: the server must answer without waiting for the payload.
    let size = 4 * MAX_FRAME_BYTES;
    let mut header = Vec::new();
    FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    }
    .format(size as u64, &mut header)
    .unwrap();
    let raw = client.ws.get_mut();
    match raw {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(&header).await.unwrap();
            tcp.write_all(&[b'x'; 1024]).await.unwrap();
        }
        _ => unreachable!("the test server speaks plain ws"),
    }
    let (before, code) = close_code(&mut client).await;
    let refused = before.iter().any(|m| {
        matches!(m, ServerMessage::Error { code, message }
            if *code == ErrorCode::FrameTooLarge && message.as_str().contains(&size.to_string()))
    });
    assert!(refused, "frame_too_large naming the size; got {before:?}");
    assert_eq!(code, Some(CloseCode::Size));
    let stats = get_json(&server, "/api/stats").await;
    assert_eq!(stats["frames_malformed"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn the_listen_backlog_is_configurable_and_shown() {
    let server = start_server(|c| c.listen_backlog = 2048).await;
    let config = get_json(&server, "/api/config").await;
    assert_eq!(config["limits"]["listen_backlog"], 2048);
    server.shutdown().await;
    let refused = proxim_server::Server::start(proxim_server::ServerConfig {
        listen_backlog: 0,
        ..proxim_server::ServerConfig::loopback()
    })
    .await;
    assert!(refused.is_err(), "a backlog of 0 is refused");
}

/// Read from `tcp` until the server closes it; what it sent, or `None` when it did not close
/// within `limit`.
async fn until_closed(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_request_is_closed_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let header_timeout = Duration::from_millis(400);
    let server = start_server(|c| c.header_timeout = header_timeout).await;
    // Silent after connecting.
    let mut silent = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    // Trickling its request a byte at a time, faster than the timeout between bytes.
    let mut trickler = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(200) {
            if trickler.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    };
    let (silent_closed, trickler_cut) =
        tokio::join!(until_closed(&mut silent, 4 * header_timeout), trickle);
    assert!(silent_closed.is_some(), "a silent client is closed");
    assert!(
        trickler_cut < 3 * header_timeout,
        "a trickling client is cut near the timeout, not after {trickler_cut:?}"
    );
    // A prompt client is not affected.
    RawClient::greeted(&server.ws_url(), WAIT)
        .await
        .ping_pong(1)
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_that_never_says_hello_is_closed_at_the_hello_timeout() {
    let server = start_server(|c| c.hello_timeout = Duration::from_millis(300)).await;
    let mut client = RawClient::open_raw(&server.ws_url(), WAIT).await;
    let (before, code) = close_code(&mut client).await;
    assert!(
        before
            .iter()
            .any(|m| matches!(m, ServerMessage::Bye { reason: Some(r) } if r.as_str() == "no hello in time")),
        "told why: {before:?}"
    );
    assert_eq!(code, Some(CloseCode::Normal));
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_socket_cap_a_connection_gets_503_and_others_keep_working() {
    let server = start_server(|c| c.max_connections = 3).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(RawClient::greeted(&server.ws_url(), WAIT).await);
    }
    // A third socket, not yet a WebSocket, counts too.
    let _pending = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut refused = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let answer = until_closed(&mut refused, WAIT)
        .await
        .expect("closed at once");
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "503 over the cap: {answer:?}"
    );
    for client in &mut clients {
        client.ping_pong(7).await;
    }
    // A slot frees when a WebSocket closes.
    clients.pop().unwrap().close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    RawClient::greeted(&server.ws_url(), WAIT)
        .await
        .ping_pong(1)
        .await;
    server.shutdown().await;
}
