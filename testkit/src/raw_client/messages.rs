//! The wire messages a test client sends, built from plain strings, and what the server's
//! answers carry, as structs a test can assert on field by field.

use proxim_protocol::{
    AuthPayload, ClientMessage, ConnectionId, DeviceId, DeviceName, IceServer, PeerDevice,
    RoutingCode, SessionId, ShortText,
};

/// The auth payload the test phone sends with its pair request.
pub const PHONE_AUTH: &str = "cGhvbmUtYXV0aA";

/// The auth payload the test desktop answers an accepted pair request with.
pub const DESKTOP_AUTH: &str = "ZGVza3RvcC1hdXRo";

/// What a `welcome` told the client.
#[derive(Debug)]
pub struct Welcome {
    /// The server's protocol version.
    pub version: u16,
    /// The id the server gave this connection.
    pub connection_id: ConnectionId,
    /// The ICE servers offered to this client.
    pub ice_servers: Vec<IceServer>,
    /// How often the server pings.
    pub heartbeat_interval_ms: u64,
    /// How long the server waits for any frame before closing.
    pub heartbeat_timeout_ms: u64,
}

/// What a `pair_prompt` asked the desktop.
#[derive(Debug)]
pub struct Prompt {
    /// The pending session.
    pub session: SessionId,
    /// The phone asking to pair.
    pub peer: PeerDevice,
    /// How long the desktop has to answer.
    pub expires_in_ms: u64,
    /// The phone's auth payload, relayed.
    pub auth: Option<AuthPayload>,
}

/// `hello` with protocol `version`, from a client named `proxim-testkit/0`.
pub fn hello(version: u16) -> ClientMessage {
    ClientMessage::Hello {
        version,
        client: ShortText::new("proxim-testkit/0").unwrap(),
    }
}

/// `register_desktop` for `device_id` showing `name`.
pub fn register_desktop(device_id: &str, name: &str) -> ClientMessage {
    ClientMessage::RegisterDesktop {
        device_id: DeviceId::new(device_id).unwrap(),
        device_name: DeviceName::new(name).unwrap(),
    }
}

/// The test phone ([`phone_device`]) asking to pair with `code`.
pub fn pair_request(code: &RoutingCode, auth: Option<&str>) -> ClientMessage {
    ClientMessage::PairRequest {
        code: code.clone(),
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Test phone").unwrap(),
        auth: auth.map(|a| AuthPayload::new(a).unwrap()),
    }
}

/// The desktop's answer to the prompt of `session`.
pub fn pair_response(session: &SessionId, accept: bool, auth: Option<&str>) -> ClientMessage {
    ClientMessage::PairResponse {
        session: session.clone(),
        accept,
        auth: auth.map(|a| AuthPayload::new(a).unwrap()),
    }
}

/// The test phone, as the desktop sees it.
pub fn phone_device() -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new("phone-1").unwrap(),
        device_name: DeviceName::new("Test phone").unwrap(),
    }
}

/// The test desktop (`desk-1`), as the phone sees it.
pub fn desktop_device() -> PeerDevice {
    PeerDevice {
        device_id: DeviceId::new("desk-1").unwrap(),
        device_name: DeviceName::new("Test desktop").unwrap(),
    }
}
