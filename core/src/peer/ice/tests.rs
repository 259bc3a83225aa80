//! Two agents on a virtual network, time stepped by hand.

use super::*;

fn host(addr: &str) -> LocalCandidate {
    let address: SocketAddr = addr.parse().unwrap();
    LocalCandidate {
        kind: CandidateKind::Host,
        address,
        base: address,
        priority: priority(CandidateKind::Host, 65535),
        foundation: "1".into(),
        related: None,
        relay_protocol: None,
    }
}

struct Net {
    now: Instant,
    a: IceAgent,
    b: IceAgent,
    /// Datagrams in flight: (arrival, to-b?, local(receiver), from, data).
    wire: Vec<(Instant, bool, SocketAddr, SocketAddr, Vec<u8>)>,
    delay: Duration,
    /// Drop everything while set.
    cut: bool,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    /// After a restart an answer may come for a check the agent forgot (the previous pair's
    /// consent, once a new pair took over): it is not ICE's any more.
    restarted: bool,
}

impl Net {
    fn new(remote_candidates_for_b: bool) -> Net {
        let now = Instant::now();
        let mut a = IceAgent::new(IceConfig::new(true), Credentials::random());
        let mut b = IceAgent::new(IceConfig::new(false), Credentials::random());
        let a_addr: SocketAddr = "198.18.1.1:5000".parse().unwrap();
        let b_addr: SocketAddr = "198.18.1.2:6000".parse().unwrap();
        a.add_local(now, host("198.18.1.1:5000"));
        b.add_local(now, host("198.18.1.2:6000"));
        a.set_remote_credentials(now, b.local_credentials().clone());
        b.set_remote_credentials(now, a.local_credentials().clone());
        a.add_remote_line(now, &b.local_candidates()[0].to_line())
            .unwrap();
        if remote_candidates_for_b {
            b.add_remote_line(now, &a.local_candidates()[0].to_line())
                .unwrap();
        }
        a.set_local_gathering_done();
        b.set_local_gathering_done();
        a.set_remote_gathering_done();
        b.set_remote_gathering_done();
        Net {
            now,
            a,
            b,
            wire: Vec::new(),
            delay: Duration::from_millis(10),
            cut: false,
            a_addr,
            b_addr,
            restarted: false,
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(t) = self.a.poll_transmit() {
            // (From an address A no longer has after it moved: lost.)
            if !self.cut && t.to == self.b_addr && t.local == self.a_addr {
                self.wire
                    .push((now + self.delay, true, t.to, t.local, t.data));
            }
        }
        while let Some(t) = self.b.poll_transmit() {
            if !self.cut && t.to == self.a_addr {
                self.wire
                    .push((now + self.delay, false, t.to, t.local, t.data));
            }
        }
        let next = [
            self.a.poll_timeout().map(|t| t.0),
            self.b.poll_timeout().map(|t| t.0),
            self.wire.iter().map(|w| w.0).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return };
        self.now = self.now.max(next);
        let now = self.now;
        let due: Vec<_> = self.wire.iter().filter(|w| w.0 <= now).cloned().collect();
        self.wire.retain(|w| w.0 > now);
        for (_, to_b, local, from, data) in due {
            let agent = if to_b { &mut self.b } else { &mut self.a };
            let taken = agent.handle_stun(now, local, from, &data);
            assert!(taken || self.restarted);
        }
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
    }

    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}

fn both_connected(n: &Net) -> bool {
    n.a.state() == IceState::Connected && n.b.state() == IceState::Connected
}

#[test]
fn two_agents_select_the_same_pair_within_a_round_trip_or_two() {
    let mut n = Net::new(true);
    let t0 = n.now;
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    // Check, response, and the controlled side's own triggered check: ≤ 2 RTT of 20 ms.
    assert!(n.now - t0 <= Duration::from_millis(45), "{:?}", n.now - t0);
    assert_eq!(n.a.route(), Some((n.a_addr, n.b_addr)));
    assert_eq!(n.b.route(), Some((n.b_addr, n.a_addr)));
    let (_, _, pair) = n.a.selected().unwrap();
    let rtt = pair.rtt.unwrap();
    assert!(
        rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(25),
        "{rtt:?}"
    );
}

#[test]
fn a_peer_without_our_candidates_learns_us_as_peer_reflexive() {
    // B got no candidate from A (mDNS-hidden, say): A's checks teach B where A is.
    let mut n = Net::new(false);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    let (_, remote, _) = n.b.selected().unwrap();
    assert_eq!(remote.kind, CandidateKind::Prflx);
    assert_eq!(remote.address, n.a_addr);
}

#[test]
fn no_route_fails_once_every_pair_gave_up() {
    let mut n = Net::new(true);
    n.cut = true;
    let t0 = n.now;
    assert!(
        n.run_until(Duration::from_secs(10), |n| n.a.state() == IceState::Failed
            && n.b.state() == IceState::Failed)
    );
    let took = n.now - t0;
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(n.a.pairs().all(|(_, _, p)| p.state == PairState::Failed));
}

#[test]
fn consent_lost_disconnects_then_fails_and_comes_back_in_between() {
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    n.cut = true;
    let cut_at = n.now;
    assert!(n.run_until(Duration::from_secs(10), |n| n.a.state()
        == IceState::Disconnected));
    let took = n.now - cut_at;
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    n.cut = false;
    assert!(n.run_until(Duration::from_secs(5), both_connected));
    // Let a consent check be answered (consent is counted from the last answer).
    let back = n.now;
    n.run_until(Duration::from_secs(3), |n| {
        n.now >= back + Duration::from_millis(2900)
    });
    n.cut = true;
    let cut_at = n.now;
    assert!(n.run_until(Duration::from_secs(40), |n| n.a.state() == IceState::Failed));
    // 30 s from the last answered consent check, which came at most one consent interval
    // (2 s + 20 %) before the cut.
    let took = n.now - cut_at;
    assert!(
        took >= Duration::from_millis(27_500) && took <= Duration::from_secs(30),
        "{took:?}"
    );
}

#[test]
fn both_controlling_resolve_the_conflict() {
    let now = Instant::now();
    let mut n = Net::new(true);
    // Make B controlling too.
    n.b = IceAgent::new(IceConfig::new(true), n.b.local_credentials().clone());
    n.b.add_local(now, host("198.18.1.2:6000"));
    n.b.set_remote_credentials(now, n.a.local_credentials().clone());
    n.b.add_remote_line(now, &n.a.local_candidates()[0].to_line())
        .unwrap();
    assert!(n.run_until(Duration::from_secs(2), both_connected));
    assert_ne!(n.a.is_controlling(), n.b.is_controlling());
}

#[test]
fn checks_with_a_wrong_password_are_not_answered() {
    let now = Instant::now();
    let mut a = IceAgent::new(IceConfig::new(false), Credentials::random());
    a.add_local(now, host("198.18.1.1:5000"));
    let t = new_transaction();
    let forged = StunWriter::new(Class::Request, &t)
        .username(&format!("{}:x", a.local_credentials().ufrag))
        .priority(1)
        .controlling(1)
        .finish(Some(b"not-the-password-at-all"));
    let from: SocketAddr = "198.18.9.9:9".parse().unwrap();
    assert!(a.handle_stun(now, "198.18.1.1:5000".parse().unwrap(), from, &forged));
    assert!(a.poll_transmit().is_none());
    assert!(!a.heard_from_peer());
}

/// Events A emitted so far, drained.
fn confirmations(agent: &mut IceAgent) -> usize {
    let mut n = 0;
    while let Some(event) = agent.poll_event() {
        if matches!(event, IceEvent::PathConfirmed) {
            n += 1;
        }
    }
    n
}

/// Run for `period`; A's path confirmations meanwhile.
fn confirmations_over(n: &mut Net, period: Duration) -> usize {
    let end = n.now + period;
    n.run_until(period, |n| n.now >= end);
    confirmations(&mut n.a)
}

#[test]
fn while_the_layer_above_waits_consent_is_checked_often_and_each_answer_confirms_the_path() {
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    confirmations(&mut n.a);
    // Regular pace: about one answered check per 2 s (±20 %).
    let regular = confirmations_over(&mut n, Duration::from_secs(10));
    assert!((4..=7).contains(&regular), "{regular} in 10 s");
    // Urgent (SCTP waits out a retransmission timer): one per 500 ms (±20 %), the first
    // within 600 ms.
    n.a.set_urgent(n.now, true);
    let urgent = confirmations_over(&mut n, Duration::from_secs(10));
    assert!((17..=26).contains(&urgent), "{urgent} in 10 s");
    // Back to the regular pace.
    n.a.set_urgent(n.now, false);
    let after = confirmations_over(&mut n, Duration::from_secs(11));
    assert!((4..=8).contains(&after), "{after} in 11 s");
}

#[test]
fn a_disconnected_agent_checks_consent_often_and_sees_the_path_back_within_600_ms() {
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    n.cut = true;
    assert!(n.run_until(Duration::from_secs(10), |n| n.a.state()
        == IceState::Disconnected));
    // Some time into the outage, the link comes back.
    let t = n.now;
    n.run_until(Duration::from_secs(4), |n| {
        n.now >= t + Duration::from_millis(3_100)
    });
    confirmations(&mut n.a);
    n.cut = false;
    let back = n.now;
    while confirmations(&mut n.a) == 0 {
        assert!(n.now - back < Duration::from_secs(3), "no confirmation");
        n.step();
    }
    let took = n.now - back;
    // A's next check is at most 500 ms + 20 % away, then a round trip of 20 ms.
    assert!(took <= Duration::from_millis(625), "{took:?}");
    assert_eq!(n.a.state(), IceState::Connected);
}

/// The remote addresses of the pairs `agent` selected since the last call.
fn selections(agent: &mut IceAgent) -> Vec<SocketAddr> {
    let mut selected = Vec::new();
    while let Some(event) = agent.poll_event() {
        if let IceEvent::Selected { remote, .. } = event {
            selected.push(remote);
        }
    }
    selected
}

/// An ICE restart as an offer and its answer carry it: A restarts (from a new address when
/// `a_moves_to` is set, its old one then gone), B restarts on A's offer, and each side gets the
/// other's new credentials and host candidate.
fn restart_both(n: &mut Net, a_moves_to: Option<&str>) {
    let now = n.now;
    n.restarted = true;
    if let Some(addr) = a_moves_to {
        n.a_addr = addr.parse().unwrap();
    }
    n.a.restart(now, Credentials::random(), a_moves_to.is_none());
    n.a.add_local(now, host(&n.a_addr.to_string()));
    n.b.restart(now, Credentials::random(), true);
    n.b.add_local(now, host(&n.b_addr.to_string()));
    let line_of = |agent: &IceAgent, addr: SocketAddr| {
        let c = agent.local_candidates().iter().find(|c| c.address == addr);
        c.unwrap().to_line()
    };
    let (a_line, b_line) = (line_of(&n.a, n.a_addr), line_of(&n.b, n.b_addr));
    n.b.set_remote_credentials(now, n.a.local_credentials().clone());
    n.b.add_remote_line(now, &a_line).unwrap();
    n.a.set_remote_credentials(now, n.b.local_credentials().clone());
    n.a.add_remote_line(now, &b_line).unwrap();
    for agent in [&mut n.a, &mut n.b] {
        agent.set_local_gathering_done();
        agent.set_remote_gathering_done();
    }
}

#[test]
fn a_restart_keeps_the_previous_pair_until_the_new_generation_selects_one() {
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    selections(&mut n.a);
    let route = n.a.route();
    let old_ufrag = n.a.local_credentials().ufrag.clone();
    restart_both(&mut n, None);
    // Right after the restart the data still has its route, and the state is unchanged.
    assert_eq!(n.a.route(), route);
    assert_eq!(n.a.state(), IceState::Connected);
    assert!(n.a.previous.is_some() && n.b.previous.is_some());
    let t0 = n.now;
    assert!(
        n.run_until(Duration::from_secs(1), |n| n.a.previous.is_none()
            && n.b.previous.is_none())
    );
    assert!(n.now - t0 <= Duration::from_millis(45), "{:?}", n.now - t0);
    assert_eq!(selections(&mut n.a), vec![n.b_addr]);
    assert_eq!(n.a.route(), route);
    assert_ne!(n.a.local_credentials().ufrag, old_ufrag);
    // The new generation holds consent from here on (past the 30 s consent timeout).
    n.run_until(Duration::from_secs(40), |_| false);
    assert!(both_connected(&n));
}

#[test]
fn a_restart_the_peer_never_hears_of_leaves_the_path_as_it_was() {
    // A restarts, but its offer never reaches B (signaling is down, say): A's consent checks
    // go on with the previous credentials, B keeps answering them.
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    confirmations(&mut n.a);
    let route = n.a.route();
    let now = n.now;
    n.restarted = true;
    n.a.restart(now, Credentials::random(), true);
    n.a.add_local(now, host("198.18.1.1:5000"));
    let confirmed = confirmations_over(&mut n, Duration::from_secs(60));
    assert!(confirmed >= 20, "{confirmed} consent answers in 60 s");
    assert!(both_connected(&n));
    assert_eq!(n.a.route(), route);
    assert!(n.a.previous.is_some());
}

#[test]
fn a_side_that_moved_to_a_new_address_gets_a_new_pair_within_a_round_trip_or_two() {
    let mut n = Net::new(true);
    assert!(n.run_until(Duration::from_secs(1), both_connected));
    selections(&mut n.a);
    selections(&mut n.b);
    // A's old address is gone: nothing reaches it any more.
    restart_both(&mut n, Some("198.18.1.3:5001"));
    assert_eq!(n.a.route(), None);
    let t0 = n.now;
    assert!(
        n.run_until(Duration::from_secs(1), |n| n.a.route().is_some()
            && n.b.previous.is_none())
    );
    assert!(n.now - t0 <= Duration::from_millis(45), "{:?}", n.now - t0);
    assert_eq!(n.a.route(), Some((n.a_addr, n.b_addr)));
    assert_eq!(n.b.route(), Some((n.b_addr, n.a_addr)));
    assert_eq!(selections(&mut n.b), vec![n.a_addr]);
    n.run_until(Duration::from_secs(40), |_| false);
    assert!(both_connected(&n));
}
