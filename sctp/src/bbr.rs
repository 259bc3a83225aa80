//! BBR congestion control (draft-cardwell-iccrg-bbr-congestion-control, version 1, with the
//! ACK-aggregation allowance of Linux's implementation).
//!
//! BBR models the path by its bottleneck bandwidth (the windowed maximum of delivery-rate
//! samples over 10 round trips) and its propagation delay (the minimum RTT over 10 s), paces
//! at a gain times the bandwidth and caps what is in flight at a gain times their product.
//! Random loss does not shrink the model, which is what a lossy Wi-Fi or cellular path needs:
//! loss-based control (Reno, CUBIC) is held to the Mathis bound there (at 20 ms RTT and 1 %
//! loss about 0.7 MB/s with 1200-byte packets).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Startup gain: 2/ln 2, the smallest that doubles the sending rate every round.
const HIGH_GAIN: f64 = 2.885;
/// The ProbeBW gain cycle: probe up, drain, cruise six rounds.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Rounds over which the bottleneck bandwidth is the maximum of samples.
const BW_WINDOW_ROUNDS: u64 = 10;
/// How long a minimum RTT stays valid before ProbeRTT measures it again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long ProbeRTT holds the window down.
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// Minimum congestion window, in packets.
const MIN_CWND_PACKETS: usize = 4;
/// The pipe is full when bandwidth grew less than this factor over three rounds.
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// A round is congested when it loses more than this fraction…
const CONGESTION_LOSS_RATE: f64 = 0.02;
/// …and at least this many packets…
const CONGESTION_MIN_LOST_PACKETS: usize = 8;
/// …while its largest RTT exceeds the minimum by this factor (a queue filled).
const CONGESTION_RTT_GROWTH: f64 = 1.2;
/// Rounds the bandwidth stays capped after a congested round.
const CONGESTION_CAP_ROUNDS: u64 = 4;
/// An ACK-aggregation epoch restarts after this many bytes.
const ACK_EPOCH_RESET_BYTES: u64 = 1 << 20;
/// Pace a little below the estimate so the bottleneck queue drains.
const PACING_MARGIN: f64 = 0.99;

/// One delivery-rate sample (draft-cheng-iccrg-delivery-rate-estimation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSample {
    /// Bytes per second.
    pub(crate) delivery_rate: f64,
    /// `delivered` when the acknowledged chunk was sent.
    pub(crate) prior_delivered: u64,
    /// The sender had nothing to send when the acknowledged chunk went out.
    pub(crate) is_app_limited: bool,
    /// RTT of the acknowledged chunk, when it was sent once (Karn: a retransmission's
    /// acknowledgement may be for the first transmission).
    pub(crate) rtt: Option<Duration>,
}

/// What one SACK told the controller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckEvent {
    pub(crate) now: Instant,
    /// Bytes newly acknowledged (cumulatively or by gap blocks).
    pub(crate) acked: usize,
    /// Bytes newly found lost.
    pub(crate) lost: usize,
    /// Total bytes delivered so far.
    pub(crate) delivered: u64,
    /// Bytes in flight before this SACK.
    pub(crate) prior_inflight: usize,
    /// Bytes in flight after it.
    pub(crate) inflight: usize,
    pub(crate) sample: Option<RateSample>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw {
        cycle_index: usize,
        cycle_start: Instant,
    },
    ProbeRtt {
        done_at: Option<Instant>,
        round_done: bool,
    },
}

/// A windowed maximum over round counts.
#[derive(Debug, Default)]
struct MaxFilter {
    /// `(round, value)`, values decreasing.
    samples: VecDeque<(u64, f64)>,
}

impl MaxFilter {
    fn update(&mut self, round: u64, value: f64, window: u64) {
        while self.samples.back().is_some_and(|(_, v)| *v <= value) {
            self.samples.pop_back();
        }
        self.samples.push_back((round, value));
        while self
            .samples
            .front()
            .is_some_and(|(r, _)| r + window <= round)
        {
            self.samples.pop_front();
        }
    }

    fn get(&self) -> f64 {
        self.samples.front().map_or(0.0, |(_, v)| *v)
    }

    /// No sample above `cap` any more.
    fn cap(&mut self, cap: f64) {
        for (_, v) in &mut self.samples {
            *v = v.min(cap);
        }
        // Keep the values decreasing: equal neighbours collapse to the newest.
        let mut kept: VecDeque<(u64, f64)> = VecDeque::new();
        for (r, v) in self.samples.drain(..) {
            while kept.back().is_some_and(|(_, k)| *k <= v) {
                kept.pop_back();
            }
            kept.push_back((r, v));
        }
        self.samples = kept;
    }
}

/// The controller's state for one association.
#[derive(Debug)]
pub(crate) struct Bbr {
    mss: usize,
    mode: Mode,
    btl_bw: MaxFilter,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    round_count: u64,
    next_round_delivered: u64,
    round_start: bool,
    full_bw: f64,
    full_bw_count: u32,
    filled_pipe: bool,
    pacing_gain: f64,
    cwnd_gain: f64,
    cwnd: usize,
    prior_cwnd: usize,
    initial_cwnd: usize,
    pacing_rate: f64,
    /// ACK aggregation: bytes acknowledged beyond what the bandwidth explains.
    extra_acked: MaxFilter,
    ack_epoch_start: Instant,
    ack_epoch_acked: u64,
    /// Bytes lost and delivered, and the largest RTT, in the current round (startup exit).
    round_lost: usize,
    round_acked: usize,
    round_max_rtt: Duration,
    round_started_at: Instant,
    /// After a congested round: no bandwidth sample counts above this until that round.
    bw_cap: Option<(f64, u64)>,
    /// The model's bandwidth when this round started (samples may exceed it only by a gain).
    bw_at_round_start: f64,
    /// A cycle phase index chooser (no RNG needed: the start phase only has to differ between
    /// flows; a counter from the association's random tag does).
    phase_seed: usize,
}

impl Bbr {
    pub(crate) fn new(now: Instant, mss: usize, initial_cwnd_packets: u32, seed: u32) -> Bbr {
        let initial_cwnd = mss * initial_cwnd_packets as usize;
        Bbr {
            mss,
            mode: Mode::Startup,
            btl_bw: MaxFilter::default(),
            min_rtt: None,
            min_rtt_stamp: now,
            round_count: 0,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0.0,
            full_bw_count: 0,
            filled_pipe: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            cwnd: initial_cwnd,
            prior_cwnd: initial_cwnd,
            initial_cwnd,
            // Until an RTT is known: the initial window per millisecond.
            pacing_rate: HIGH_GAIN * initial_cwnd as f64 / 0.001,
            extra_acked: MaxFilter::default(),
            ack_epoch_start: now,
            ack_epoch_acked: 0,
            round_lost: 0,
            round_acked: 0,
            round_max_rtt: Duration::ZERO,
            round_started_at: now,
            bw_cap: None,
            bw_at_round_start: 0.0,
            phase_seed: seed as usize,
        }
    }

    /// The congestion window in bytes.
    pub(crate) fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// Bytes per second to pace at.
    pub(crate) fn pacing_rate(&self) -> f64 {
        self.pacing_rate
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    pub(crate) fn bandwidth(&self) -> f64 {
        self.btl_bw.get()
    }

    pub(crate) fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Startup => "startup",
            Mode::Drain => "drain",
            Mode::ProbeBw { .. } => "probe_bw",
            Mode::ProbeRtt { .. } => "probe_rtt",
        }
    }

    /// The handshake measured an RTT: seed the pacing rate with it.
    pub(crate) fn on_handshake_rtt(&mut self, rtt: Duration) {
        if self.btl_bw.get() == 0.0 {
            let secs = rtt.as_secs_f64().max(0.000_1);
            self.pacing_rate = HIGH_GAIN * self.initial_cwnd as f64 / secs;
        }
    }

    pub(crate) fn on_ack(&mut self, ack: &AckEvent) {
        self.update_round(ack);
        if self.round_start || self.bw_at_round_start == 0.0 {
            self.bw_at_round_start = self.btl_bw.get();
        }
        if self
            .bw_cap
            .is_some_and(|(_, until)| self.round_count > until)
        {
            self.bw_cap = None;
        }
        if let Some(sample) = ack.sample {
            let mut rate = self.bw_cap.map_or(sample.delivery_rate, |(cap, _)| {
                sample.delivery_rate.min(cap)
            });
            // A real bottleneck is found by probing at most 1.25x above the model (2.89x in
            // startup); a sample far above it comes from ACKs that bunched up or from data
            // acknowledged after a spurious timeout, and would overflow the bottleneck for
            // ten rounds. Clip it to what probing could have found.
            let current = self.bw_at_round_start;
            if current > 0.0 {
                let growth = if self.mode == Mode::Startup {
                    HIGH_GAIN
                } else {
                    CYCLE[0]
                };
                rate = rate.min(current * growth);
            }
            if rate >= self.btl_bw.get() || !sample.is_app_limited {
                self.btl_bw.update(self.round_count, rate, BW_WINDOW_ROUNDS);
            }
        }
        self.update_ack_aggregation(ack);
        self.check_cycle_phase(ack);
        self.check_congested_round(ack);
        self.check_full_pipe(ack);
        self.check_drain(ack);
        self.update_min_rtt(ack);
        self.check_probe_rtt(ack);
        self.set_pacing_rate();
        self.set_cwnd(ack);
    }

    /// A retransmission timeout: everything in flight was declared lost.
    pub(crate) fn on_rto(&mut self) {
        self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
        self.cwnd = self.min_cwnd();
    }

    fn min_cwnd(&self) -> usize {
        MIN_CWND_PACKETS * self.mss
    }

    fn update_round(&mut self, ack: &AckEvent) {
        self.round_start = false;
        if let Some(sample) = ack.sample
            && sample.prior_delivered >= self.next_round_delivered
        {
            self.next_round_delivered = ack.delivered;
            self.round_count += 1;
            self.round_start = true;
        }
    }

    fn bdp(&self, gain: f64) -> usize {
        let (Some(min_rtt), bw) = (self.min_rtt, self.btl_bw.get()) else {
            return self.initial_cwnd;
        };
        if bw == 0.0 {
            return self.initial_cwnd;
        }
        (gain * bw * min_rtt.as_secs_f64()) as usize
    }

    fn update_ack_aggregation(&mut self, ack: &AckEvent) {
        let bw = self.btl_bw.get();
        if bw == 0.0 || ack.acked == 0 {
            return;
        }
        let elapsed = ack.now.saturating_duration_since(self.ack_epoch_start);
        let mut expected = (bw * elapsed.as_secs_f64()) as u64;
        if self.ack_epoch_acked <= expected
            || self.ack_epoch_acked + ack.acked as u64 >= ACK_EPOCH_RESET_BYTES
        {
            self.ack_epoch_acked = 0;
            self.ack_epoch_start = ack.now;
            expected = 0;
        }
        self.ack_epoch_acked += ack.acked as u64;
        let extra = (self.ack_epoch_acked - expected).min(self.cwnd as u64);
        self.extra_acked
            .update(self.round_count, extra as f64, BW_WINDOW_ROUNDS);
    }

    fn check_cycle_phase(&mut self, ack: &AckEvent) {
        let Mode::ProbeBw {
            cycle_index,
            cycle_start,
        } = self.mode
        else {
            return;
        };
        let min_rtt = self.min_rtt.unwrap_or(Duration::from_millis(1));
        let full_length = ack.now.saturating_duration_since(cycle_start) > min_rtt;
        let gain = CYCLE[cycle_index];
        let next = if gain == 1.0 {
            full_length
        } else if gain > 1.0 {
            full_length && (ack.lost > 0 || ack.prior_inflight >= self.bdp(gain))
        } else {
            full_length || ack.prior_inflight <= self.bdp(1.0)
        };
        if next {
            let cycle_index = (cycle_index + 1) % CYCLE.len();
            self.pacing_gain = CYCLE[cycle_index];
            self.mode = Mode::ProbeBw {
                cycle_index,
                cycle_start: ack.now,
            };
        }
    }

    /// A round that lost more than 2 % while its RTT grew overflowed the bottleneck queue:
    /// startup ends there, and later the bandwidth model is capped at what that round
    /// delivered (an overestimate, from ACKs that bunched up, would keep overflowing it).
    /// Random loss on a path whose RTT does not grow changes nothing.
    fn check_congested_round(&mut self, ack: &AckEvent) {
        self.round_lost += ack.lost;
        self.round_acked += ack.acked;
        if let Some(rtt) = ack.sample.and_then(|s| s.rtt) {
            self.round_max_rtt = self.round_max_rtt.max(rtt);
        }
        let total = self.round_lost + self.round_acked;
        let queue_grew = self
            .min_rtt
            .is_some_and(|m| self.round_max_rtt > m.mul_f64(CONGESTION_RTT_GROWTH));
        let congested = total > 0
            && self.round_lost >= CONGESTION_MIN_LOST_PACKETS * self.mss
            && self.round_lost as f64 > CONGESTION_LOSS_RATE * total as f64
            && queue_grew;
        // Startup ends the moment the round's losses say the queue overflowed, not at the end
        // of a round in which the window still doubles.
        if congested && self.mode == Mode::Startup && !self.filled_pipe {
            self.filled_pipe = true;
            self.cwnd = self.cwnd.min(self.bdp(self.cwnd_gain).max(self.min_cwnd()));
            tracing::trace!(
                lost = self.round_lost,
                "BBR: startup ends on queue overflow"
            );
        }
        if !self.round_start {
            return;
        }
        if congested {
            if self.mode == Mode::Startup {
                self.filled_pipe = true;
            } else {
                let elapsed = ack.now.saturating_duration_since(self.round_started_at);
                if !elapsed.is_zero() {
                    let delivered = self.round_acked as f64 / elapsed.as_secs_f64();
                    let cap = delivered.max(self.mss as f64 / elapsed.as_secs_f64());
                    self.btl_bw.cap(cap);
                    // Samples from ACKs that bunched up would bring the overestimate back at
                    // once: hold the cap for a few rounds, then probe again.
                    self.bw_cap = Some((cap, self.round_count + CONGESTION_CAP_ROUNDS));
                    tracing::trace!(
                        bw = self.btl_bw.get(),
                        "BBR: bandwidth capped after an overflow"
                    );
                }
            }
        }
        self.round_lost = 0;
        self.round_acked = 0;
        self.round_max_rtt = Duration::ZERO;
        self.round_started_at = ack.now;
    }

    fn check_full_pipe(&mut self, ack: &AckEvent) {
        let app_limited = ack.sample.is_none_or(|s| s.is_app_limited);
        if self.filled_pipe || !self.round_start || app_limited {
            return;
        }
        let bw = self.btl_bw.get();
        if bw >= self.full_bw * FULL_BW_GROWTH {
            self.full_bw = bw;
            self.full_bw_count = 0;
            return;
        }
        self.full_bw_count += 1;
        if self.full_bw_count >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
            tracing::trace!(bw = self.btl_bw.get(), "BBR: pipe filled");
        }
    }

    fn check_drain(&mut self, ack: &AckEvent) {
        if self.mode == Mode::Startup && self.filled_pipe {
            self.mode = Mode::Drain;
            self.pacing_gain = 1.0 / HIGH_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == Mode::Drain && ack.inflight <= self.bdp(1.0) {
            self.enter_probe_bw(ack.now);
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        // Start in a random phase other than the draining one.
        self.phase_seed = self
            .phase_seed
            .wrapping_mul(1_103_515_245)
            .wrapping_add(12_345);
        let mut cycle_index = (self.phase_seed >> 16) % CYCLE.len();
        if cycle_index == 1 {
            cycle_index = 2;
        }
        self.pacing_gain = CYCLE[cycle_index];
        self.cwnd_gain = 2.0;
        self.mode = Mode::ProbeBw {
            cycle_index,
            cycle_start: now,
        };
    }

    fn update_min_rtt(&mut self, ack: &AckEvent) {
        let expired = ack.now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        if let Some(rtt) = ack.sample.and_then(|s| s.rtt)
            && (self.min_rtt.is_none_or(|m| rtt <= m) || expired)
        {
            self.min_rtt = Some(rtt);
            self.min_rtt_stamp = ack.now;
        }
    }

    fn check_probe_rtt(&mut self, ack: &AckEvent) {
        let expired = ack.now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        if !matches!(self.mode, Mode::ProbeRtt { .. }) && expired {
            self.mode = Mode::ProbeRtt {
                done_at: None,
                round_done: false,
            };
            self.pacing_gain = 1.0;
            self.cwnd_gain = 1.0;
            self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
        }
        let Mode::ProbeRtt {
            mut done_at,
            mut round_done,
        } = self.mode
        else {
            return;
        };
        match done_at {
            None if ack.inflight <= self.min_cwnd() => {
                done_at = Some(ack.now + PROBE_RTT_DURATION);
                round_done = false;
                self.next_round_delivered = ack.delivered;
            }
            Some(at) => {
                if self.round_start {
                    round_done = true;
                }
                if round_done && ack.now >= at {
                    self.min_rtt_stamp = ack.now;
                    self.cwnd = self.cwnd.max(self.prior_cwnd);
                    if self.filled_pipe {
                        self.enter_probe_bw(ack.now);
                    } else {
                        self.mode = Mode::Startup;
                        self.pacing_gain = HIGH_GAIN;
                        self.cwnd_gain = HIGH_GAIN;
                    }
                    return;
                }
            }
            None => {}
        }
        self.mode = Mode::ProbeRtt {
            done_at,
            round_done,
        };
    }

    fn set_pacing_rate(&mut self) {
        let bw = self.btl_bw.get();
        if bw == 0.0 {
            return;
        }
        let rate = self.pacing_gain * bw * PACING_MARGIN;
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    fn set_cwnd(&mut self, ack: &AckEvent) {
        let mut target = self.bdp(self.cwnd_gain) + 3 * self.mss;
        if self.filled_pipe {
            target += self.extra_acked.get() as usize;
        }
        if self.filled_pipe {
            self.cwnd = (self.cwnd + ack.acked).min(target);
        } else if self.cwnd < target || ack.delivered < self.initial_cwnd as u64 {
            self.cwnd += ack.acked;
        }
        self.cwnd = self.cwnd.max(self.min_cwnd());
        if matches!(self.mode, Mode::ProbeRtt { .. }) {
            self.cwnd = self.cwnd.min(self.min_cwnd());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a steady path: `bw` bytes/s, `rtt`, acks of `mss` each.
    fn steady(bbr: &mut Bbr, start: Instant, bw: f64, rtt: Duration, rounds: u32) -> Instant {
        let mss = 1200;
        let mut now = start;
        let mut delivered = 0u64;
        for _ in 0..rounds {
            let per_round = ((bw * rtt.as_secs_f64()) as usize / mss).max(1);
            let prior = delivered;
            for _ in 0..per_round {
                now += rtt / per_round as u32;
                delivered += mss as u64;
                bbr.on_ack(&AckEvent {
                    now,
                    acked: mss,
                    lost: 0,
                    delivered,
                    prior_inflight: bbr.cwnd().min(per_round * mss),
                    inflight: bbr.cwnd().min(per_round * mss).saturating_sub(mss),
                    sample: Some(RateSample {
                        delivery_rate: bw,
                        prior_delivered: prior,
                        is_app_limited: false,
                        rtt: Some(rtt),
                    }),
                });
            }
        }
        now
    }

    #[test]
    fn the_model_converges_to_the_path() {
        let t0 = Instant::now();
        let mut bbr = Bbr::new(t0, 1200, 10, 7);
        let bw = 12_500_000.0; // 100 Mbit/s
        let rtt = Duration::from_millis(20);
        steady(&mut bbr, t0, bw, rtt, 40);
        assert!(bbr.filled_pipe);
        assert!(matches!(bbr.mode, Mode::ProbeBw { .. }), "{:?}", bbr.mode);
        let bdp = bw * rtt.as_secs_f64();
        let cwnd = bbr.cwnd() as f64;
        assert!(
            cwnd >= 1.5 * bdp && cwnd <= 3.0 * bdp,
            "cwnd {cwnd} vs bdp {bdp}"
        );
        let rate = bbr.pacing_rate();
        assert!(rate >= 0.7 * bw && rate <= 1.3 * bw, "pacing {rate}");
    }

    #[test]
    fn random_loss_does_not_shrink_the_window() {
        let t0 = Instant::now();
        let mut bbr = Bbr::new(t0, 1200, 10, 1);
        let rtt = Duration::from_millis(50);
        let now = steady(&mut bbr, t0, 5_000_000.0, rtt, 30);
        let before = bbr.cwnd();
        bbr.on_ack(&AckEvent {
            now: now + Duration::from_millis(1),
            acked: 1200,
            lost: 24_000,
            delivered: u64::MAX / 4,
            prior_inflight: before,
            inflight: before / 2,
            sample: None,
        });
        assert!(bbr.cwnd() >= before * 9 / 10, "{} < {before}", bbr.cwnd());
    }

    #[test]
    fn a_timeout_drops_to_the_minimum_window() {
        let t0 = Instant::now();
        let mut bbr = Bbr::new(t0, 1200, 10, 1);
        steady(&mut bbr, t0, 5_000_000.0, Duration::from_millis(20), 20);
        bbr.on_rto();
        assert_eq!(bbr.cwnd(), 4 * 1200);
    }

    #[test]
    fn the_max_filter_forgets_old_rounds() {
        let mut f = MaxFilter::default();
        f.update(1, 10.0, 10);
        f.update(2, 5.0, 10);
        assert_eq!(f.get(), 10.0);
        f.update(11, 4.0, 10);
        assert_eq!(f.get(), 5.0);
        f.update(12, 6.0, 10);
        assert_eq!(f.get(), 6.0);
    }
}
