//! Invariants of the core's decoders: authentication payloads and pairing codes / QR links.

use proxim_core::auth::{AuthMessage, PairingCode, PhoneHello};
use proxim_protocol::{AuthPayload, RoutingCode};

/// `AuthMessage::decode_str` never panics; what decodes re-encodes to a payload that decodes
/// to the same message; the desktop's prompt decoder takes the same input.
pub fn check_auth_payload(text: &str) -> Result<(), String> {
    match AuthMessage::decode_str(text) {
        Ok(message) => {
            let again = message.encode();
            match AuthMessage::decode(&again) {
                Ok(back) if back == message => {}
                other => return Err(format!("re-encoding {text:?} gave {other:?}")),
            }
        }
        Err(error) if error.to_string().is_empty() => {
            return Err(format!("empty error for {text:?}"));
        }
        Err(_) => {}
    }
    if let Ok(payload) = AuthPayload::new(text) {
        let _ = PhoneHello::decode(Some(&payload));
    }
    Ok(())
}

/// `PairingCode::parse` never panics; what parses has a valid routing code, a QR link's server
/// is ws:// or wss://, and the redacted form never carries the secret.
pub fn check_pairing_code(text: &str) -> Result<(), String> {
    match PairingCode::parse(text) {
        Ok(code) => {
            if RoutingCode::new(code.routing.as_str()).is_err() {
                return Err(format!("{text:?} parsed to an invalid routing code"));
            }
            if let Some(server) = &code.server
                && !(server.starts_with("ws://") || server.starts_with("wss://"))
            {
                return Err(format!("{text:?} parsed to server {server:?}"));
            }
            if code.redacted().contains("secret") && !code.redacted().ends_with("+<secret>") {
                return Err(format!("odd redaction {:?}", code.redacted()));
            }
            Ok(())
        }
        Err(error) if error.to_string().is_empty() => Err(format!("empty error for {text:?}")),
        Err(_) => Ok(()),
    }
}
