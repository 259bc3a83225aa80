//! The desktop's pairing code and the policy that spends it, sans-IO: which code is live, when
//! a pairing attempt burns it (its secret may have been guessed at), and that code requests
//! are refused until the server's new code arrives. Time is an input; asking the server for a
//! new code is an output ([`DesktopCode::poll_renew`]).

use std::fmt;
use std::time::Instant;

use proxim_protocol::RoutingCode;
use tracing::warn;

use crate::auth::CodeSecrets;

/// The desktop's current pairing code: the server's routing part and this desktop's secrets.
#[derive(Debug)]
pub(crate) struct DesktopCode {
    routing: RoutingCode,
    /// `None` between a burn and the server's new code: code requests are refused.
    secrets: Option<CodeSecrets>,
    /// What the user types (`ROUTING-SECRET`).
    short: String,
    /// A burn the driver has not turned into a renewal request yet.
    renew: Option<Burn>,
}

/// Why a code was burned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Burn {
    /// A code request arrived after the code's expiry (the server should have replaced it).
    PastExpiry,
    /// A prompt this desktop answered closed without pairing: the answer may have reached the
    /// phone.
    AnsweredPromptClosed,
    /// A code pairing ended without a verified phone.
    PhoneNotVerified,
}

/// What to do with a phone's code request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeRequest {
    /// The code is live: ask the user.
    Prompt,
    /// The code it used was already used or burned: refuse it.
    Refuse,
}

impl DesktopCode {
    /// A fresh code: the server's routing part and newly generated secrets.
    pub(crate) fn new(routing: RoutingCode, secrets: CodeSecrets) -> DesktopCode {
        DesktopCode {
            short: secrets.short_code(&routing),
            routing,
            secrets: Some(secrets),
            renew: None,
        }
    }

    /// The short code to show.
    pub(crate) fn short_code(&self) -> &str {
        &self.short
    }

    /// The server's routing part.
    pub(crate) fn routing(&self) -> &RoutingCode {
        &self.routing
    }

    /// The secrets, while the code is live.
    pub(crate) fn secrets(&self) -> Option<&CodeSecrets> {
        self.secrets.as_ref()
    }

    /// The QR code's URI; empty once the code is burned.
    pub(crate) fn qr_uri(&self, server: &str) -> String {
        self.secrets
            .as_ref()
            .map(|secrets| secrets.qr_uri(&self.routing, server))
            .unwrap_or_default()
    }

    /// A phone asks with the code: burn it first when it is past `expires_at`.
    pub(crate) fn on_code_request(
        &mut self,
        now: Instant,
        expires_at: Option<Instant>,
    ) -> CodeRequest {
        if expires_at.is_some_and(|at| now >= at) {
            self.burn(Burn::PastExpiry);
        }
        match self.secrets {
            Some(_) => CodeRequest::Prompt,
            None => CodeRequest::Refuse,
        }
    }

    /// A prompt closed without pairing; `answered_with_code`: this desktop had answered it
    /// with a code handshake.
    pub(crate) fn on_prompt_closed(&mut self, answered_with_code: bool) {
        if answered_with_code {
            self.burn(Burn::AnsweredPromptClosed);
        }
    }

    /// A paired session's connection attempt ended (connected or not).
    pub(crate) fn on_attempt_ended(&mut self, code_pairing: bool, phone_verified: bool) {
        if code_pairing && !phone_verified {
            self.burn(Burn::PhoneNotVerified);
        }
    }

    /// A burn to turn into a request for a new code, once per burn.
    pub(crate) fn poll_renew(&mut self) -> Option<Burn> {
        self.renew.take()
    }

    /// Spend the code; a second burn before the new code changes nothing.
    fn burn(&mut self, why: Burn) {
        if self.secrets.take().is_some() {
            warn!(code = %self.routing.redacted(), %why, "burning the pairing code");
            self.renew = Some(why);
        }
    }
}

impl fmt::Display for Burn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Burn::PastExpiry => "the code is past its expiry",
            Burn::AnsweredPromptClosed => "an answered prompt closed without pairing",
            Burn::PhoneNotVerified => "the phone did not verify",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn code() -> DesktopCode {
        let routing = RoutingCode::new("K7P2QX".to_owned()).expect("valid routing code");
        DesktopCode::new(routing, CodeSecrets::generate())
    }

    #[test]
    fn a_live_code_prompts_and_shows_its_secret() {
        let mut code = code();
        assert!(code.short_code().starts_with("K7P2QX-"));
        assert!(!code.qr_uri("ws://server/ws").is_empty());
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(60));
        assert_eq!(code.on_code_request(now, later), CodeRequest::Prompt);
        assert_eq!(code.on_code_request(now, None), CodeRequest::Prompt);
        assert_eq!(code.poll_renew(), None);
    }

    #[test]
    fn a_request_past_expiry_burns_the_code_and_is_refused() {
        let mut code = code();
        let now = Instant::now();
        assert_eq!(code.on_code_request(now, Some(now)), CodeRequest::Refuse);
        assert_eq!(code.poll_renew(), Some(Burn::PastExpiry));
        assert!(code.secrets().is_none());
        assert!(code.qr_uri("ws://server/ws").is_empty());
    }

    #[test]
    fn each_failed_attempt_kind_burns_or_not() {
        type Step = fn(&mut DesktopCode);
        let cases: [(&str, Step, Option<Burn>); 6] = [
            (
                "unanswered prompt closed",
                |c| c.on_prompt_closed(false),
                None,
            ),
            (
                "answered prompt closed",
                |c| c.on_prompt_closed(true),
                Some(Burn::AnsweredPromptClosed),
            ),
            (
                "code phone unverified",
                |c| c.on_attempt_ended(true, false),
                Some(Burn::PhoneNotVerified),
            ),
            (
                "code phone verified",
                |c| c.on_attempt_ended(true, true),
                None,
            ),
            (
                "trusted phone unverified",
                |c| c.on_attempt_ended(false, false),
                None,
            ),
            (
                "trusted phone verified",
                |c| c.on_attempt_ended(false, true),
                None,
            ),
        ];
        for (name, step, burn) in cases {
            let mut code = code();
            step(&mut code);
            assert_eq!(code.poll_renew(), burn, "{name}");
            assert_eq!(code.secrets().is_some(), burn.is_none(), "{name}");
        }
    }

    #[test]
    fn a_burned_code_asks_for_one_renewal_and_refuses_until_replaced() {
        let mut code = code();
        code.on_prompt_closed(true);
        code.on_attempt_ended(true, false);
        assert_eq!(code.poll_renew(), Some(Burn::AnsweredPromptClosed));
        assert_eq!(code.poll_renew(), None);
        assert_eq!(
            code.on_code_request(Instant::now(), None),
            CodeRequest::Refuse
        );
        let routing = RoutingCode::new("M4N5PQ".to_owned()).expect("valid routing code");
        code = DesktopCode::new(routing, CodeSecrets::generate());
        assert_eq!(
            code.on_code_request(Instant::now(), None),
            CodeRequest::Prompt
        );
    }
}
