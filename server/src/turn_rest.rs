//! TURN REST credentials (draft-uberti-behave-turn-rest, coturn `use-auth-secret`): a
//! time-limited username and its HMAC-SHA1 password, minted from the relay's shared secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// How long minted TURN REST credentials stay valid unless told otherwise: one day.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(86_400);

/// Mint TURN REST credentials (draft-uberti-behave-turn-rest, coturn `use-auth-secret`):
/// username `<expiry>:<user>` with expiry = `now + ttl` in unix seconds, password
/// `base64(HMAC-SHA1(secret, username))` with standard padded base64.
pub fn mint_turn_credentials(
    secret: &str,
    ttl: Duration,
    user: &str,
    now: SystemTime,
) -> (String, String) {
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expiry = now_s.saturating_add(ttl.as_secs());
    let username = format!("{expiry}:{user}");
    let password = turn_rest_password(secret, &username);
    (username, password)
}

/// `base64(HMAC-SHA1(secret, username))`.
pub(crate) fn turn_rest_password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_rest_password_matches_an_independent_hmac() {
        // Computed with Python's hmac module:
        // base64.b64encode(hmac.new(b'proxim-test-secret',
        //     b'1700086400:0123456789abcdef0123456789abcdef', hashlib.sha1).digest())
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, password) = mint_turn_credentials(
            "proxim-test-secret",
            Duration::from_secs(86_400),
            "0123456789abcdef0123456789abcdef",
            now,
        );
        assert_eq!(username, "1700086400:0123456789abcdef0123456789abcdef");
        assert_eq!(password, "1+/ku5Y4B+PnW0Adiczb1LTBLis=");
        // RFC 2202 test case 2 for HMAC-SHA1: key "Jefe", data "what do ya want for nothing?",
        // digest effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            turn_rest_password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }
}
