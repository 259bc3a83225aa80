//! The WebSocket transport's manners: a client's Close is answered with a Close, a text frame
//! that is not UTF-8 is closed with 1007, a frame too large for the transport to read still
//! gets `frame_too_large` (then 1009), and the listen backlog is the configured one.

mod common;

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
