//! Proxim's ICE agent (RFC 8445, full ICE, UDP, one component), sans-IO.
//!
//! Candidates come in from gathering and signaling; STUN Binding checks go out paced; the
//! peer's checks are answered and trigger checks of their own; the controlling side nominates
//! aggressively (USE-CANDIDATE on every check) so both sides select the best pair that works
//! within one round trip of it working. Once a pair is selected, consent checks (RFC 7675)
//! run on it every couple of seconds: silence turns the state to disconnected, and no consent
//! for [`IceConfig::consent_timeout`] to failed.
//!
//! Every pair and its state is visible ([`IceAgent::pairs`]), so "why did nothing work" has
//! an answer.
//!
//! An ICE restart ([`IceAgent::restart`], RFC 8445 §9) starts a new generation: new local
//! credentials, the candidates gathered again, the peer's new credentials and candidates from
//! its offer or answer. Until a pair of the new generation is selected, the data keeps going
//! on the pair selected before (the *previous* pair), whose consent checks run on with the
//! previous generation's credentials: a path that comes back while the restart is under way
//! is confirmed as soon as it answers, and a restart that finds nothing never cuts a path that
//! still works.

pub(crate) mod candidate;
pub(crate) mod stun;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use candidate::{CandidateError, pair_priority, parse_candidate, priority};
pub(crate) use candidate::{LocalCandidate, RemoteCandidate};
use stun::{Class, StunMessage, StunWriter, TransactionId, new_transaction};

use crate::peer::CandidateKind;

/// Most remote candidates kept (a peer cannot grow this side's memory by signaling).
const MAX_REMOTE_CANDIDATES: usize = 64;
/// Most candidate pairs.
const MAX_PAIRS: usize = 256;

/// Timing of the agent.
#[derive(Debug, Clone)]
pub(crate) struct IceConfig {
    /// Whether this side nominates (the offerer).
    pub(crate) controlling: bool,
    /// Time between two rounds of new checks (RFC 8445's Ta).
    pub(crate) pacing: Duration,
    /// New checks per round: a data channel has one component and a handful of pairs, and a
    /// check is ~100 bytes, so the first round covers most pairs at once.
    pub(crate) checks_per_round: usize,
    /// First retransmission of a check; doubles up to [`Self::check_rto_max`].
    pub(crate) check_rto: Duration,
    pub(crate) check_rto_max: Duration,
    /// A check unanswered for this long fails its pair.
    pub(crate) check_timeout: Duration,
    /// Consent checks on the selected pair, this often (±20 %).
    pub(crate) consent_interval: Duration,
    /// … and this often while the path may be down (disconnected, or the data above is
    /// waiting out a retransmission timer: [`IceAgent::set_urgent`]), so that its return is
    /// seen within about this long.
    pub(crate) consent_interval_urgent: Duration,
    /// … and this often while the connection is idle ([`IceAgent::set_idle`]: no application
    /// data for a while): RFC 7675's 5 s, the least that keeps consent (and NAT bindings)
    /// fresh, so that a connection left open costs a few datagrams a minute.
    pub(crate) consent_interval_idle: Duration,
    /// Nothing heard from the peer for this long: disconnected.
    pub(crate) disconnected_after: Duration,
    /// … and this long while idle (three idle consent checks unanswered).
    pub(crate) disconnected_after_idle: Duration,
    /// No consent for this long: failed.
    pub(crate) consent_timeout: Duration,
}

impl IceConfig {
    pub(crate) fn new(controlling: bool) -> IceConfig {
        IceConfig {
            controlling,
            pacing: Duration::from_millis(5),
            checks_per_round: 4,
            check_rto: Duration::from_millis(50),
            check_rto_max: Duration::from_millis(400),
            check_timeout: Duration::from_millis(2500),
            consent_interval: Duration::from_secs(2),
            consent_interval_urgent: Duration::from_millis(500),
            consent_interval_idle: Duration::from_secs(5),
            disconnected_after: Duration::from_secs(5),
            disconnected_after_idle: Duration::from_secs(15),
            consent_timeout: Duration::from_secs(30),
        }
    }
}

/// Username fragment and password of one side.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) ufrag: String,
    pub(crate) pwd: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Random credentials: 8-character ufrag, 24-character password (ICE asks for ≥ 4 / 22).
    pub(crate) fn random() -> Credentials {
        use rand::Rng;
        use rand::distr::Alphanumeric;
        let mut rng = rand::rng();
        let mut take = |n| -> String {
            (&mut rng)
                .sample_iter(Alphanumeric)
                .take(n)
                .map(char::from)
                .collect()
        };
        Credentials {
            ufrag: take(8),
            pwd: take(24),
        }
    }
}

/// ICE's view of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IceState {
    New,
    Checking,
    Connected,
    Disconnected,
    Failed,
}

impl std::fmt::Display for IceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IceState::New => "new",
            IceState::Checking => "checking",
            IceState::Connected => "connected",
            IceState::Disconnected => "disconnected",
            IceState::Failed => "failed",
        })
    }
}

/// The state of one candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) local: usize,
    pub(crate) remote: usize,
    pub(crate) priority: u64,
    pub(crate) state: PairState,
    /// Controlled: the peer sent USE-CANDIDATE on it. Controlling: a check with USE-CANDIDATE
    /// succeeded on it.
    pub(crate) nominated: bool,
    transaction: Option<TransactionId>,
    first_sent: Option<Instant>,
    next_retransmit: Option<Instant>,
    rto: Duration,
    transmissions: u32,
    pub(crate) rtt: Option<Duration>,
    pub(crate) last_response: Option<Instant>,
}

/// A datagram the agent wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IceTransmit {
    /// The local base to send from (a socket's or a relayed address).
    pub(crate) local: SocketAddr,
    pub(crate) to: SocketAddr,
    pub(crate) data: Vec<u8>,
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IceEvent {
    StateChanged {
        old: IceState,
        new: IceState,
    },
    /// A (new) pair carries the data from now on.
    Selected {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A check on the selected pair was answered: the path works both ways right now.
    PathConfirmed,
}

/// What a consent/check transaction is for.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    pair: usize,
    sent: Instant,
    use_candidate: bool,
    retransmitted: bool,
}

#[derive(Debug)]
pub(crate) struct IceAgent {
    config: IceConfig,
    controlling: bool,
    tie_breaker: u64,
    local_credentials: Credentials,
    remote_credentials: Option<Credentials>,
    local: Vec<LocalCandidate>,
    remote: Vec<RemoteCandidate>,
    pairs: Vec<Pair>,
    triggered: VecDeque<usize>,
    transactions: HashMap<TransactionId, Transaction>,
    selected: Option<usize>,
    state: IceState,
    next_check: Option<Instant>,
    next_consent: Option<Instant>,
    /// The last time anything (a check, a response, data) came from the peer on the selected
    /// pair, or any pair before one was selected.
    last_heard: Option<Instant>,
    local_gathering_done: bool,
    remote_gathering_done: bool,
    transmits: VecDeque<IceTransmit>,
    events: VecDeque<IceEvent>,
    consent_jitter: u32,
    /// The layer above waits for the path to come back (see [`IceAgent::set_urgent`]).
    urgent: bool,
    /// No application data for a while (see [`IceAgent::set_idle`]).
    idle: bool,
    /// During a restart: the pair selected before it and its generation's credentials.
    previous: Option<Previous>,
}

/// How a check is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Success,
    /// Success, for a consent check of the generation before a restart.
    PreviousGeneration,
    /// 487: the peer must take the other role.
    RoleConflict,
}

/// The pair selected before a restart, kept until the new generation selects one.
#[derive(Debug, Clone)]
struct Previous {
    /// Its index in `pairs` (always selected while this exists).
    pair: usize,
    local: Credentials,
    remote: Credentials,
    /// Whether the peer signaled the previous pair's remote address again in the new
    /// generation (until then it is paired with nothing new).
    remote_signaled: bool,
}

impl IceAgent {
    pub(crate) fn new(config: IceConfig, local_credentials: Credentials) -> IceAgent {
        IceAgent {
            controlling: config.controlling,
            config,
            tie_breaker: rand::random(),
            local_credentials,
            remote_credentials: None,
            local: Vec::new(),
            remote: Vec::new(),
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            transactions: HashMap::new(),
            selected: None,
            state: IceState::New,
            next_check: None,
            next_consent: None,
            last_heard: None,
            local_gathering_done: false,
            remote_gathering_done: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            consent_jitter: rand::random(),
            urgent: false,
            idle: false,
            previous: None,
        }
    }

    /// Start a new generation (an ICE restart): `credentials` for this side, every candidate
    /// to be gathered and signaled again, the peer's to come from its description. The pair
    /// selected now stays selected, checked with this generation's credentials, until the
    /// new generation selects one; unless `keep_selected` is false (its local base is gone).
    pub(crate) fn restart(&mut self, now: Instant, credentials: Credentials, keep_selected: bool) {
        let kept = self.selected.filter(|_| keep_selected).and_then(|i| {
            let pair = &self.pairs[i];
            // Across two restarts in a row the previous pair keeps its own generation.
            let (local, remote) = match &self.previous {
                Some(p) if p.pair == i => (p.local.clone(), p.remote.clone()),
                _ => (
                    self.local_credentials.clone(),
                    self.remote_credentials.clone()?,
                ),
            };
            Some((
                self.local[pair.local].clone(),
                self.remote[pair.remote].clone(),
                pair.clone(),
                local,
                remote,
            ))
        });
        tracing::debug!(
            keeps_previous_pair = kept.is_some(),
            ufrag = %credentials.ufrag,
            "ICE restart"
        );
        self.local_credentials = credentials;
        self.remote_credentials = None;
        self.local.clear();
        self.remote.clear();
        self.pairs.clear();
        self.triggered.clear();
        // A consent check of the kept pair in flight still counts when it is answered.
        let kept_pair = kept.as_ref().and(self.selected);
        self.transactions.retain(|_, t| Some(t.pair) == kept_pair);
        for t in self.transactions.values_mut() {
            t.pair = 0;
        }
        self.selected = None;
        self.previous = None;
        self.next_check = None;
        self.local_gathering_done = false;
        self.remote_gathering_done = false;
        if self.state == IceState::Failed {
            self.set_state(IceState::Checking);
        }
        if let Some((local, remote, mut pair, local_credentials, remote_credentials)) = kept {
            self.local.push(local);
            self.remote.push(remote);
            pair.local = 0;
            pair.remote = 0;
            pair.transaction = None;
            pair.next_retransmit = None;
            self.pairs.push(pair);
            self.selected = Some(0);
            self.previous = Some(Previous {
                pair: 0,
                local: local_credentials,
                remote: remote_credentials,
                remote_signaled: false,
            });
            self.next_consent = Some(now.min(self.next_consent.unwrap_or(now)));
        } else {
            self.next_consent = None;
            self.last_heard = None;
            self.set_state(IceState::Checking);
        }
    }

    /// The layer above is waiting for the path to come back (SCTP has data outstanding past a
    /// retransmission timeout): check consent every `consent_interval_urgent` meanwhile, so a
    /// path that returns is confirmed ([`IceEvent::PathConfirmed`]) within about that long
    /// instead of after the next regular check.
    pub(crate) fn set_urgent(&mut self, now: Instant, urgent: bool) {
        if self.urgent == urgent {
            return;
        }
        self.urgent = urgent;
        if urgent {
            tracing::debug!("ICE: the path may be down; checking consent more often");
            self.hurry_consent(now);
        }
    }

    /// The connection carries no application data (`idle`) or carries some again: consent is
    /// checked every `consent_interval_idle` and the peer counts as disconnected after
    /// `disconnected_after_idle` while idle, at the regular pace otherwise.
    pub(crate) fn set_idle(&mut self, now: Instant, idle: bool) {
        if self.idle == idle {
            return;
        }
        self.idle = idle;
        tracing::debug!(
            idle,
            "ICE: consent checks at the {} pace",
            if idle { "idle" } else { "regular" }
        );
        if !idle {
            let soon = now + self.config.consent_interval;
            if self.next_consent.is_some_and(|next| next > soon) {
                self.next_consent = Some(soon);
            }
        }
    }

    /// How long the peer may be silent before it counts as disconnected, now.
    pub(crate) fn disconnected_after(&self) -> Duration {
        if self.idle {
            self.config.disconnected_after_idle
        } else {
            self.config.disconnected_after
        }
    }

    /// Bring the next consent check forward to within the urgent interval.
    fn hurry_consent(&mut self, now: Instant) {
        let soon = now + self.config.consent_interval_urgent;
        if let Some(next) = self.next_consent
            && next > soon
        {
            self.next_consent = Some(soon);
        }
    }

    pub(crate) fn local_credentials(&self) -> &Credentials {
        &self.local_credentials
    }

    pub(crate) fn remote_credentials(&self) -> Option<&Credentials> {
        self.remote_credentials.as_ref()
    }

    pub(crate) fn state(&self) -> IceState {
        self.state
    }

    #[cfg(test)]
    pub(crate) fn is_controlling(&self) -> bool {
        self.controlling
    }

    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&LocalCandidate, &RemoteCandidate, &Pair)> {
        self.pairs
            .iter()
            .map(|p| (&self.local[p.local], &self.remote[p.remote], p))
    }

    pub(crate) fn local_candidates(&self) -> &[LocalCandidate] {
        &self.local
    }

    /// The selected pair.
    pub(crate) fn selected(&self) -> Option<(&LocalCandidate, &RemoteCandidate, &Pair)> {
        let p = &self.pairs[self.selected?];
        Some((&self.local[p.local], &self.remote[p.remote], p))
    }

    /// Where data goes: `(local base, remote address)` of the selected pair.
    pub(crate) fn route(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.selected().map(|(l, r, _)| (l.base, r.address))
    }

    /// During a restart that kept the previous pair: whether the new generation has nothing
    /// left to try (every pair of it failed, both sides done gathering).
    pub(crate) fn new_generation_exhausted(&self) -> bool {
        let Some(previous) = &self.previous else {
            return false;
        };
        self.local_gathering_done
            && self.remote_gathering_done
            && self
                .pairs
                .iter()
                .enumerate()
                .all(|(i, p)| i == previous.pair || p.state == PairState::Failed)
    }

    /// Whether `address` is a candidate of the peer (signaled, or learned from its checks).
    pub(crate) fn is_known_remote(&self, address: SocketAddr) -> bool {
        self.remote.iter().any(|c| c.address == address)
    }

    /// Whether anything came from the peer yet.
    pub(crate) fn heard_from_peer(&self) -> bool {
        self.last_heard.is_some()
    }

    pub(crate) fn set_remote_credentials(&mut self, now: Instant, credentials: Credentials) {
        if self.remote_credentials.as_ref() == Some(&credentials) {
            return;
        }
        let replaced = self.remote_credentials.replace(credentials).is_some();
        if replaced {
            // The peer moved on to newer credentials within this generation (it answered a
            // later offer): every check so far used the old ones and is checked again.
            let previous = self.previous.as_ref().map(|p| p.pair);
            self.transactions.retain(|_, t| Some(t.pair) == previous);
            for (i, pair) in self.pairs.iter_mut().enumerate() {
                if Some(i) != previous && pair.state != PairState::Succeeded {
                    pair.state = PairState::Waiting;
                    pair.transaction = None;
                    pair.next_retransmit = None;
                }
            }
            if self.state == IceState::Failed {
                self.set_state(IceState::Checking);
            }
        }
        self.schedule(now);
    }

    pub(crate) fn set_local_gathering_done(&mut self) {
        self.local_gathering_done = true;
    }

    pub(crate) fn set_remote_gathering_done(&mut self) {
        self.remote_gathering_done = true;
    }

    /// Add a local candidate; pairs it with the remote ones. Server-reflexive candidates are
    /// only advertised: checks go from their base, already paired as a host candidate.
    pub(crate) fn add_local(&mut self, now: Instant, candidate: LocalCandidate) {
        if self
            .local
            .iter()
            .any(|c| c.address == candidate.address && c.base == candidate.base)
        {
            return;
        }
        self.local.push(candidate);
        let l = self.local.len() - 1;
        if self.local[l].kind != CandidateKind::Srflx {
            for r in 0..self.remote.len() {
                if !self.is_unsignaled_remote(r) {
                    self.add_pair(l, r);
                }
            }
        }
        self.schedule(now);
    }

    /// Add a remote candidate from a `candidate:` line.
    pub(crate) fn add_remote_line(
        &mut self,
        now: Instant,
        line: &str,
    ) -> Result<(), CandidateError> {
        let candidate = parse_candidate(line)?;
        self.add_remote(now, candidate);
        Ok(())
    }

    pub(crate) fn add_remote(&mut self, now: Instant, candidate: RemoteCandidate) -> Option<usize> {
        if let Some(i) = self
            .remote
            .iter()
            .position(|c| c.address == candidate.address)
        {
            // A peer-reflexive candidate learned from a check is now known by its real type.
            if self.remote[i].kind == CandidateKind::Prflx && candidate.kind != CandidateKind::Prflx
            {
                self.remote[i].kind = candidate.kind;
            }
            if self.is_unsignaled_remote(i) {
                // The previous pair's peer address, signaled again: now a candidate of this
                // generation too.
                if let Some(p) = self.previous.as_mut() {
                    p.remote_signaled = true;
                }
                self.pair_remote(i);
                self.schedule(now);
            }
            return Some(i);
        }
        if self.remote.len() >= MAX_REMOTE_CANDIDATES {
            tracing::debug!(candidate = %candidate, "too many remote candidates; ignored");
            return None;
        }
        tracing::debug!(candidate = %candidate, "remote candidate");
        self.remote.push(candidate);
        let r = self.remote.len() - 1;
        self.pair_remote(r);
        self.schedule(now);
        Some(r)
    }

    fn pair_remote(&mut self, r: usize) {
        for l in 0..self.local.len() {
            if self.local[l].kind != CandidateKind::Srflx {
                self.add_pair(l, r);
            }
        }
    }

    /// The previous pair's remote candidate, not (yet) signaled in this generation.
    fn is_unsignaled_remote(&self, r: usize) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|p| !p.remote_signaled && self.pairs[p.pair].remote == r)
    }

    fn add_pair(&mut self, l: usize, r: usize) -> Option<usize> {
        let (local, remote) = (&self.local[l], &self.remote[r]);
        // Same family; and a loopback address only reaches a loopback address (a check from
        // 127.0.0.1 to a LAN address cannot be routed: it would only delay the useful ones).
        if local.base.is_ipv4() != remote.address.is_ipv4()
            || local.base.ip().is_loopback() != remote.address.ip().is_loopback()
        {
            return None;
        }
        let previous = self.previous.as_ref().map(|p| p.pair);
        if let Some(i) = self.pairs.iter().enumerate().position(|(i, p)| {
            previous != Some(i)
                && self.local[p.local].base == local.base
                && self.remote[p.remote].address == remote.address
        }) {
            return Some(i);
        }
        if self.pairs.len() >= MAX_PAIRS {
            return None;
        }
        let (g, d) = if self.controlling {
            (local.priority, remote.priority)
        } else {
            (remote.priority, local.priority)
        };
        self.pairs.push(Pair {
            local: l,
            remote: r,
            priority: pair_priority(g, d),
            state: PairState::Waiting,
            nominated: false,
            transaction: None,
            first_sent: None,
            next_retransmit: None,
            rto: self.config.check_rto,
            transmissions: 0,
            rtt: None,
            last_response: None,
        });
        Some(self.pairs.len() - 1)
    }

    /// Checks can run: make sure the check timer runs.
    fn schedule(&mut self, now: Instant) {
        if self.remote_credentials.is_some() && !self.pairs.is_empty() {
            self.next_check = Some(self.next_check.map_or(now, |t| t.min(now)));
        }
        if self.state == IceState::New && self.remote_credentials.is_some() {
            self.set_state(IceState::Checking);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Input
    // -----------------------------------------------------------------------------------------

    /// A STUN message arrived on `local` (a base) from `from`. Returns `false` when it is not
    /// for ICE (a STUN server's answer, for example).
    pub(crate) fn handle_stun(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(msg) = StunMessage::parse(data) else {
            return false;
        };
        if !msg.is_binding() {
            return false;
        }
        match msg.class {
            Class::Request => {
                self.handle_request(now, local, from, &msg);
                true
            }
            Class::Success | Class::Error => self.handle_response(now, local, from, &msg),
            Class::Indication => true,
        }
    }

    /// Something that is not STUN came from `from` on `local`: the path is alive.
    pub(crate) fn note_data(&mut self, now: Instant, local: SocketAddr, from: SocketAddr) {
        if self.route() == Some((local, from)) {
            self.last_heard = Some(now);
            if self.state == IceState::Disconnected {
                self.set_state(IceState::Connected);
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) {
        let to = msg
            .username()
            .and_then(|u| u.split_once(':'))
            .map(|(to, _)| to);
        if let Some(previous) = &self.previous
            && to == Some(previous.local.ufrag.as_str())
        {
            self.answer_previous_generation(now, local, from, msg);
            return;
        }
        let ours = &self.local_credentials;
        if to != Some(ours.ufrag.as_str()) || msg.verify(ours.pwd.as_bytes()).is_err() {
            tracing::debug!(%from, "ICE check with a wrong username or integrity ignored");
            return;
        }
        // Role conflict (RFC 8445 §7.3.1.1).
        if self.controlling
            && let Some(theirs) = msg.controlling()
        {
            if self.tie_breaker >= theirs {
                self.answer_check(local, from, msg, Answer::RoleConflict);
                return;
            }
            self.switch_role(false);
        } else if !self.controlling
            && let Some(theirs) = msg.controlled()
        {
            if self.tie_breaker >= theirs {
                self.switch_role(true);
            } else {
                self.answer_check(local, from, msg, Answer::RoleConflict);
                return;
            }
        }
        self.answer_check(local, from, msg, Answer::Success);
        self.last_heard = Some(now);
        // The pair the check came on; the remote side may be new (peer reflexive).
        let Some(l) = self
            .local
            .iter()
            .position(|c| c.base == local && c.kind != CandidateKind::Srflx)
        else {
            return;
        };
        let r = match self.remote.iter().position(|c| c.address == from) {
            Some(r) if self.is_unsignaled_remote(r) => {
                // The peer checks from the previous pair's address in this generation.
                if let Some(p) = self.previous.as_mut() {
                    p.remote_signaled = true;
                }
                self.pair_remote(r);
                r
            }
            Some(r) => r,
            None => {
                let candidate = RemoteCandidate {
                    kind: CandidateKind::Prflx,
                    address: from,
                    priority: msg
                        .priority()
                        .unwrap_or_else(|| priority(CandidateKind::Prflx, 0)),
                    foundation: "prflx".into(),
                };
                let Some(r) = self.add_remote(now, candidate) else {
                    return;
                };
                r
            }
        };
        let Some(p) = self.add_pair(l, r) else {
            return;
        };
        if msg.use_candidate() && !self.controlling {
            self.pairs[p].nominated = true;
        }
        match self.pairs[p].state {
            // A triggered check (RFC 8445 §7.3.1.4). An in-progress check is not retransmitted
            // any more (its answer still counts when it comes): the peer's check just opened
            // the path (a NAT's filter, typically), so a fresh check goes now instead of at the
            // next retransmission.
            PairState::Waiting | PairState::Failed | PairState::InProgress => {
                let pair = &mut self.pairs[p];
                pair.state = PairState::Waiting;
                pair.next_retransmit = None;
                if !self.triggered.contains(&p) {
                    self.triggered.push_front(p);
                }
                self.next_check = Some(self.next_check.map_or(now, |t| t.min(now)));
            }
            PairState::Succeeded => self.update_selection(now),
        }
        if self.state == IceState::New {
            self.schedule(now);
        }
    }

    /// A consent check of the generation before a restart: answered with its credentials,
    /// and proof of life when it came on the previous pair; it forms no new pair.
    fn answer_previous_generation(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) {
        let Some(previous) = &self.previous else {
            return;
        };
        if msg.verify(previous.local.pwd.as_bytes()).is_err() {
            tracing::debug!(%from, "ICE check of the previous generation with a bad integrity");
            return;
        }
        let p = &self.pairs[previous.pair];
        let on_pair = self.local[p.local].base == local && self.remote[p.remote].address == from;
        self.answer_check(local, from, msg, Answer::PreviousGeneration);
        if on_pair {
            self.last_heard = Some(now);
        }
    }

    /// Answer the check `msg` that came from `from` on `local`, signed with the password of
    /// this generation (or of the previous one).
    fn answer_check(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        msg: &StunMessage<'_>,
        answer: Answer,
    ) {
        let pwd = match (answer, &self.previous) {
            (Answer::PreviousGeneration, Some(previous)) => &previous.local.pwd,
            _ => &self.local_credentials.pwd,
        };
        let data = match answer {
            Answer::RoleConflict => StunWriter::new(Class::Error, &msg.transaction)
                .error_code(487, "Role Conflict")
                .finish(Some(pwd.as_bytes())),
            Answer::Success | Answer::PreviousGeneration => {
                StunWriter::new(Class::Success, &msg.transaction)
                    .xor_mapped_address(from)
                    .finish(Some(pwd.as_bytes()))
            }
        };
        self.transmits.push_back(IceTransmit {
            local,
            to: from,
            data,
        });
    }

    fn handle_response(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        msg: &StunMessage<'_>,
    ) -> bool {
        let Some(tx) = self.transactions.get(&msg.transaction).copied() else {
            return false;
        };
        let remote = match &self.previous {
            Some(p) if p.pair == tx.pair => &p.remote,
            _ => match self.remote_credentials.as_ref() {
                Some(remote) => remote,
                None => return true,
            },
        };
        if msg.verify(remote.pwd.as_bytes()).is_err() {
            tracing::debug!(%from, "ICE response with a bad integrity ignored");
            return true;
        }
        self.transactions.remove(&msg.transaction);
        let pair = &mut self.pairs[tx.pair];
        if self.local[pair.local].base != local || self.remote[pair.remote].address != from {
            // Not symmetric (RFC 8445 §7.2.5.2.1).
            pair.state = PairState::Failed;
            return true;
        }
        self.last_heard = Some(now);
        if msg.class == Class::Error {
            if msg.error_code() == Some(487) {
                // The check went out in the role the peer refuses: take the other one (once;
                // a switch since then already settled it).
                let sent_controlling = tx.use_candidate;
                self.switch_role(!sent_controlling);
                let pair = &mut self.pairs[tx.pair];
                pair.state = PairState::Waiting;
                pair.transaction = None;
                self.triggered.push_back(tx.pair);
                self.next_check = Some(now);
            } else {
                tracing::debug!(code = ?msg.error_code(), %from, "ICE check refused");
                self.pairs[tx.pair].state = PairState::Failed;
            }
            return true;
        }
        let pair = &mut self.pairs[tx.pair];
        if !tx.retransmitted {
            pair.rtt = Some(now.saturating_duration_since(tx.sent));
        }
        pair.last_response = Some(now);
        if pair.state != PairState::Succeeded {
            tracing::debug!(
                local = %local,
                remote = %from,
                rtt_ms = pair.rtt.map(|r| r.as_secs_f64() * 1000.0),
                "candidate pair works"
            );
        }
        pair.state = PairState::Succeeded;
        pair.transaction = None;
        pair.next_retransmit = None;
        if tx.use_candidate && self.controlling {
            pair.nominated = true;
        }
        if self.selected == Some(tx.pair) {
            if self.state == IceState::Disconnected {
                self.set_state(IceState::Connected);
            }
            self.events.push_back(IceEvent::PathConfirmed);
        }
        self.update_selection(now);
        true
    }

    fn switch_role(&mut self, controlling: bool) {
        if self.controlling == controlling {
            return;
        }
        tracing::info!(controlling, "ICE role conflict: switching role");
        self.controlling = controlling;
        for p in &mut self.pairs {
            let (l, r) = (self.local[p.local].priority, self.remote[p.remote].priority);
            p.priority = if controlling {
                pair_priority(l, r)
            } else {
                pair_priority(r, l)
            };
            p.nominated = false;
        }
    }

    /// Select the best pair that works and is nominated.
    fn update_selection(&mut self, now: Instant) {
        let previous = self.previous.as_ref().map(|p| p.pair);
        let best = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(i, p)| p.state == PairState::Succeeded && p.nominated && previous != Some(*i))
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i);
        let Some(best) = best else {
            return;
        };
        if self.selected == Some(best) {
            return;
        }
        if let Some(current) = self.selected
            && previous != Some(current)
            && self.pairs[current].priority >= self.pairs[best].priority
            && self.pairs[current].state == PairState::Succeeded
        {
            return;
        }
        if let Some(p) = self.previous.take() {
            // The restart found its pair: the previous generation is over.
            tracing::debug!("ICE restart complete: the previous pair is dropped");
            let old = &mut self.pairs[p.pair];
            old.state = PairState::Failed;
            old.nominated = false;
            self.transactions.retain(|_, t| t.pair != p.pair);
        }
        self.selected = Some(best);
        let (local, remote) = (
            self.local[self.pairs[best].local].base,
            self.remote[self.pairs[best].remote].address,
        );
        tracing::debug!(%local, %remote, "ICE selected a pair");
        self.events.push_back(IceEvent::Selected { local, remote });
        self.last_heard = Some(now);
        self.next_consent = Some(now + self.consent_interval());
        if self.state != IceState::Connected {
            self.set_state(IceState::Connected);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Time
    // -----------------------------------------------------------------------------------------

    pub(crate) fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut next: Option<(Instant, &'static str)> = None;
        let mut consider = |at: Option<Instant>, why: &'static str| {
            if let Some(at) = at
                && next.is_none_or(|(n, _)| at < n)
            {
                next = Some((at, why));
            }
        };
        if self.state != IceState::Failed {
            consider(self.next_check, "ICE: next connectivity check");
            for p in self
                .pairs
                .iter()
                .filter(|p| p.state == PairState::InProgress)
            {
                consider(p.next_retransmit, "ICE: retransmit a check");
            }
            consider(self.next_consent, "ICE: consent check");
            if let Some(heard) = self.last_heard
                && self.selected.is_some()
            {
                let at = if self.state == IceState::Connected {
                    heard + self.disconnected_after()
                } else {
                    heard + self.config.consent_timeout
                };
                consider(Some(at), "ICE: consent freshness");
            }
        }
        next
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state == IceState::Failed {
            return;
        }
        // Retransmissions, and pairs whose checks went unanswered.
        for i in 0..self.pairs.len() {
            let p = &self.pairs[i];
            if p.state != PairState::InProgress || p.next_retransmit.is_none_or(|t| t > now) {
                continue;
            }
            if p.first_sent
                .is_some_and(|f| now.saturating_duration_since(f) >= self.config.check_timeout)
            {
                let p = &mut self.pairs[i];
                p.state = PairState::Failed;
                p.next_retransmit = None;
                if let Some(t) = p.transaction.take() {
                    self.transactions.remove(&t);
                }
                continue;
            }
            self.send_check(now, i, true);
        }
        if self.next_check.is_some_and(|t| t <= now) {
            self.next_check = None;
            // Without the peer's credentials no check can be sent; triggered checks wait.
            if self.remote_credentials.is_some() {
                let mut sent = 0;
                while sent < self.config.checks_per_round
                    && let Some(i) = self.next_pair_to_check()
                {
                    self.send_check(now, i, false);
                    sent += 1;
                }
                if sent > 0 {
                    self.next_check = Some(now + self.config.pacing);
                }
            }
        }
        if self.next_consent.is_some_and(|t| t <= now) {
            if let Some(i) = self.selected {
                self.send_consent(now, i);
            }
            self.next_consent = Some(now + self.consent_interval());
        }
        self.evaluate_state(now);
    }

    fn consent_interval(&mut self) -> Duration {
        // ±20 % so the two sides do not ping in lockstep.
        self.consent_jitter = self
            .consent_jitter
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let spread = f64::from(self.consent_jitter >> 8) / f64::from(1u32 << 24);
        let base = if self.urgent || self.state == IceState::Disconnected {
            self.config.consent_interval_urgent
        } else if self.idle {
            self.config.consent_interval_idle
        } else {
            self.config.consent_interval
        };
        base.mul_f64(0.8 + 0.4 * spread)
    }

    fn next_pair_to_check(&mut self) -> Option<usize> {
        while let Some(i) = self.triggered.pop_front() {
            if self.pairs[i].state == PairState::Waiting {
                return Some(i);
            }
        }
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Waiting)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i)
    }

    fn check_request(&self, pair: usize, transaction: &TransactionId) -> Option<(Vec<u8>, bool)> {
        let (remote, ours) = match &self.previous {
            Some(p) if p.pair == pair => (&p.remote, &p.local),
            _ => (self.remote_credentials.as_ref()?, &self.local_credentials),
        };
        let p = &self.pairs[pair];
        let local = &self.local[p.local];
        let username = format!("{}:{}", remote.ufrag, ours.ufrag);
        let prflx_priority = priority(
            CandidateKind::Prflx,
            ((local.priority >> 8) & 0xffff) as u16,
        );
        let mut w = StunWriter::new(Class::Request, transaction)
            .username(&username)
            .priority(prflx_priority);
        let use_candidate = self.controlling;
        w = if self.controlling {
            w.controlling(self.tie_breaker).use_candidate()
        } else {
            w.controlled(self.tie_breaker)
        };
        Some((w.finish(Some(remote.pwd.as_bytes())), use_candidate))
    }

    fn send_check(&mut self, now: Instant, i: usize, retransmit: bool) {
        let transaction = match (retransmit, self.pairs[i].transaction) {
            (true, Some(t)) => t,
            _ => new_transaction(),
        };
        let Some((data, use_candidate)) = self.check_request(i, &transaction) else {
            return;
        };
        let p = &mut self.pairs[i];
        if !retransmit {
            p.state = PairState::InProgress;
            p.first_sent = Some(now);
            p.rto = self.config.check_rto;
            p.transmissions = 0;
            // An earlier transaction of this pair stays known: its answer still counts.
            p.transaction = Some(transaction);
        } else {
            p.rto = (p.rto * 2).min(self.config.check_rto_max);
        }
        p.transmissions += 1;
        p.next_retransmit = Some(now + p.rto);
        self.transactions.insert(
            transaction,
            Transaction {
                pair: i,
                sent: now,
                use_candidate,
                retransmitted: retransmit,
            },
        );
        let (local, to) = (self.local[p.local].base, self.remote[p.remote].address);
        self.transmits.push_back(IceTransmit { local, to, data });
    }

    fn send_consent(&mut self, now: Instant, i: usize) {
        let transaction = new_transaction();
        let Some((data, use_candidate)) = self.check_request(i, &transaction) else {
            return;
        };
        // Forget consent transactions that were never answered.
        self.transactions
            .retain(|_, t| now.saturating_duration_since(t.sent) < Duration::from_secs(60));
        self.transactions.insert(
            transaction,
            Transaction {
                pair: i,
                sent: now,
                use_candidate,
                retransmitted: false,
            },
        );
        let p = &self.pairs[i];
        let (local, to) = (self.local[p.local].base, self.remote[p.remote].address);
        self.transmits.push_back(IceTransmit { local, to, data });
    }

    /// State from facts, in one place.
    fn evaluate_state(&mut self, now: Instant) {
        let new = match (self.selected, self.last_heard) {
            (Some(_), Some(heard)) => {
                let silent = now.saturating_duration_since(heard);
                let consent = self
                    .selected
                    .and_then(|i| self.pairs[i].last_response.or(Some(heard)))
                    .map_or(silent, |t| now.saturating_duration_since(t));
                if consent >= self.config.consent_timeout {
                    IceState::Failed
                } else if silent >= self.disconnected_after() {
                    IceState::Disconnected
                } else {
                    IceState::Connected
                }
            }
            _ => {
                let all_failed = !self.pairs.is_empty()
                    && self.pairs.iter().all(|p| p.state == PairState::Failed);
                if all_failed && self.local_gathering_done && self.remote_gathering_done {
                    IceState::Failed
                } else {
                    self.state
                }
            }
        };
        self.set_state(new);
        if self.state == IceState::Disconnected {
            self.hurry_consent(now);
        }
    }

    fn set_state(&mut self, new: IceState) {
        let old = self.state;
        if old == new {
            return;
        }
        tracing::debug!("ICE {old} -> {new}");
        self.state = new;
        if new == IceState::Failed {
            self.next_check = None;
            self.next_consent = None;
        }
        self.events.push_back(IceEvent::StateChanged { old, new });
    }

    // -----------------------------------------------------------------------------------------
    // Output
    // -----------------------------------------------------------------------------------------

    pub(crate) fn poll_transmit(&mut self) -> Option<IceTransmit> {
        self.transmits.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
