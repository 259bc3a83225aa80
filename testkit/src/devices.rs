//! Desktops and phones on `proxim-core` driven through a signaling server (real, or a
//! [`MitmProxy`](crate::mitm::MitmProxy) in front of one): register a desktop, pair a phone
//! with it, read the messages that arrive. Every wait is bounded by [`STEP`](crate::STEP); a failure fails
//! the test.

use proxim_core::peer::Payload;
use proxim_core::{Connection, Desktop, DesktopEvent, Event, ProximConfig, pair};

use crate::within;

/// A loopback-only device config on `url`, with its data in `dir` when given.
pub fn loopback_config(url: &str, name: &str, dir: Option<&std::path::Path>) -> ProximConfig {
    let config = ProximConfig::new(url, name).loopback_only();
    match dir {
        Some(dir) => config.with_data_dir(dir),
        None => config,
    }
}

/// Register a desktop.
pub async fn register(config: ProximConfig) -> Desktop {
    within("register", Desktop::register(config))
        .await
        .expect("register")
}

/// The desktop's next event; the desktop must still be registered.
pub async fn next_desktop_event(desktop: &mut Desktop) -> DesktopEvent {
    within("desktop event", desktop.next_event())
        .await
        .expect("desktop still registered")
}

/// Drive the desktop, accepting every prompt, until `until` says stop; returns that event.
pub async fn drive(
    desktop: &mut Desktop,
    mut until: impl FnMut(&DesktopEvent) -> bool,
) -> DesktopEvent {
    loop {
        let event = next_desktop_event(desktop).await;
        if let DesktopEvent::Prompt { session, .. } = &event {
            desktop.accept(session).await.unwrap();
            continue;
        }
        if until(&event) {
            return event;
        }
    }
}

/// Drive the desktop: accept (or reject) prompts until a connection is open (`Some`) or a
/// prompt closes (`None`). A failed connection fails the test.
pub async fn desktop_until_connected(desktop: &mut Desktop, accept: bool) -> Option<Connection> {
    loop {
        match next_desktop_event(desktop).await {
            DesktopEvent::Prompt { session, .. } if accept => {
                desktop.accept(&session).await.unwrap()
            }
            DesktopEvent::Prompt { session, .. } => desktop.reject(&session).await.unwrap(),
            DesktopEvent::Connected(connection) => return Some(connection),
            DesktopEvent::PromptClosed { .. } => return None,
            DesktopEvent::ConnectionFailed { error, .. } => {
                panic!("desktop connection failed: {error}")
            }
            _ => {}
        }
    }
}

/// Whether `event` ends a pairing attempt on the desktop: connected, or failed.
pub fn is_connection_result(event: &DesktopEvent) -> bool {
    matches!(
        event,
        DesktopEvent::Connected(_) | DesktopEvent::ConnectionFailed { .. }
    )
}

/// Drive the desktop, accepting every prompt, until a connection opens; a failed connection
/// fails the test.
pub async fn connected(desktop: &mut Desktop) -> Connection {
    match drive(desktop, is_connection_result).await {
        DesktopEvent::Connected(connection) => connection,
        DesktopEvent::ConnectionFailed { error, .. } => panic!("desktop failed: {error}"),
        other => unreachable!("{other:?}"),
    }
}

/// Pair a phone configured by `phone` with `desktop` using `code` (a code or a QR link), the
/// desktop accepting; returns (phone, desktop) connections.
pub async fn pair_with(
    desktop: &mut Desktop,
    phone: ProximConfig,
    code: &str,
) -> (Connection, Connection) {
    let code = code.to_owned();
    let phone = tokio::spawn(async move { pair(&phone, &code).await });
    let desk = connected(desktop).await;
    let phone = within("phone pairing", phone)
        .await
        .unwrap()
        .expect("phone paired");
    (phone, desk)
}

/// Register a desktop named `desktop_name` and pair a phone named `phone_name` with it, both
/// on `url`; the desktop then leaves the server. Returns (phone, desktop) connections.
pub async fn pair_through(
    url: &str,
    desktop_name: &str,
    phone_name: &str,
) -> (Connection, Connection) {
    let mut desktop = register(loopback_config(url, desktop_name, None)).await;
    let code = desktop.code().to_owned();
    let connections = pair_with(&mut desktop, loopback_config(url, phone_name, None), &code).await;
    desktop.close().await;
    connections
}

/// The next message on `connection`; its close fails the test.
pub async fn next_message(connection: &mut Connection) -> Payload {
    loop {
        match within("connection event", connection.next_event())
            .await
            .expect("connection open")
        {
            Event::Message(payload) => return payload,
            Event::Closed { reason } => panic!("closed: {reason}"),
            _ => {}
        }
    }
}

/// Send `text` from `from`; it must arrive on `to` as the next message.
pub async fn echo_once(from: &mut Connection, to: &mut Connection, text: &str) {
    from.send_text(text).await.unwrap();
    assert_eq!(next_message(to).await, Payload::Text(text.into()));
}

/// Wait until `connection` reports its close (or its events end).
pub async fn until_closed(connection: &mut Connection) {
    within("close", async {
        while let Some(event) = connection.next_event().await {
            if let Event::Closed { .. } = event {
                return;
            }
        }
    })
    .await
}
