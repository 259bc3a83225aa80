//! One direction of an emulated link: a sans-IO model of what happens to each packet.
//!
//! Every packet that is [`pushed`](Direction::push) goes through, in this order:
//! 1. **the bottleneck** (with a `rate`): a FIFO serializer. A packet waits until the ones
//!    before it have left, then takes `size / rate` to leave. When the backlog ahead of it is
//!    over the queue limit it is dropped (tail drop).
//! 2. **loss on the wire**: independent random loss, then the Gilbert-Elliott model. A packet
//!    lost here has already used its share of the bottleneck, like a packet lost on a radio
//!    link after the router.
//! 3. **delay**: the fixed delay plus a uniform jitter in ±`jitter` (never below zero). Packets
//!    keep their order: a packet never leaves before the one pushed before it, so jitter
//!    stretches gaps instead of swapping packets.
//! 4. **reordering**: a packet picked with probability `reorder.fraction` is held
//!    `reorder.extra` longer, outside that ordering, so the packets after it overtake it.
//!
//! Its fate is decided when it is pushed; [`pop_ready`](Direction::pop_ready) hands packets
//! out once their time has come, and [`poll_timeout`](Direction::poll_timeout) says when the
//! next one is due. Each random choice has its own seeded stream, so adding jitter does not
//! change which packets are lost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::spec::{GilbertElliott, Impairment, QueueLimit};

/// Most bytes held in one direction at once (the delay line of a fast link with a long delay);
/// beyond it packets are dropped as [`DropCause::Overflow`].
pub const MAX_HELD_BYTES: usize = 256 * 1024 * 1024;

/// One direction of a link.
#[derive(Debug)]
pub struct Direction {
    impairment: Impairment,
    rngs: Streams,
    bad_state: bool,
    /// When the bottleneck has sent everything accepted so far.
    bottleneck_free_at: Option<Instant>,
    /// The delivery time of the latest in-order packet: no in-order packet leaves before it.
    in_order_floor: Option<Instant>,
    held: BinaryHeap<Reverse<Held>>,
    held_bytes: usize,
    next_seq: u64,
    counters: Counters,
}

/// What [`Direction::push`] decided for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It will be handed out by [`Direction::pop_ready`] at this time.
    Deliver {
        /// When.
        at: Instant,
        /// Whether it was picked for reordering.
        reordered: bool,
    },
    /// It is gone.
    Dropped(DropCause),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Independent random loss (`loss`).
    Loss,
    /// Gilbert-Elliott loss (`ge`).
    Burst,
    /// The bottleneck's queue was full (`rate`/`queue`).
    Queue,
    /// More than [`MAX_HELD_BYTES`] were held.
    Overflow,
}

/// Packet and byte counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets pushed.
    pub packets_in: u64,
    /// Bytes pushed.
    pub bytes_in: u64,
    /// Packets handed out.
    pub packets_out: u64,
    /// Bytes handed out.
    pub bytes_out: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped by Gilbert-Elliott loss.
    pub dropped_burst: u64,
    /// Dropped by the full queue.
    pub dropped_queue: u64,
    /// Dropped because too much was held.
    pub dropped_overflow: u64,
    /// Packets picked for reordering.
    pub reordered: u64,
}

impl Counters {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_burst + self.dropped_queue + self.dropped_overflow
    }
}

impl Direction {
    /// A direction applying `impairment`, its random choices seeded from `seed`.
    pub fn new(impairment: Impairment, seed: u64) -> Self {
        Direction {
            impairment,
            rngs: Streams::new(seed),
            bad_state: false,
            bottleneck_free_at: None,
            in_order_floor: None,
            held: BinaryHeap::new(),
            held_bytes: 0,
            next_seq: 0,
            counters: Counters::default(),
        }
    }

    /// What this direction does.
    pub fn impairment(&self) -> &Impairment {
        &self.impairment
    }

    /// Take a packet arriving at `now`; returns its fate.
    pub fn push(&mut self, now: Instant, packet: Vec<u8>) -> Fate {
        let len = packet.len();
        self.counters.packets_in += 1;
        self.counters.bytes_in += len as u64;
        if self.held_bytes + len > MAX_HELD_BYTES {
            return self.drop_packet(DropCause::Overflow);
        }

        // 1. The bottleneck.
        let departs = match self.impairment.rate {
            None => now,
            Some(rate) => {
                let start = self.bottleneck_free_at.map_or(now, |free| free.max(now));
                let backlog = start - now;
                let full = match self.impairment.queue {
                    QueueLimit::Time(limit) => backlog + rate.transmit_time(len) > limit,
                    QueueLimit::Bytes(limit) => rate.bytes_in(backlog) + len as u64 > limit,
                };
                // An empty queue always takes a packet, whatever its size.
                if full && !backlog.is_zero() {
                    return self.drop_packet(DropCause::Queue);
                }
                let departs = start + rate.transmit_time(len);
                self.bottleneck_free_at = Some(departs);
                departs
            }
        };

        // 2. Loss on the wire.
        if self.impairment.loss > 0.0 && chance(&mut self.rngs.loss, self.impairment.loss) {
            return self.drop_packet(DropCause::Loss);
        }
        if let Some(ge) = self.impairment.gilbert_elliott
            && self.gilbert_elliott_loses(ge)
        {
            return self.drop_packet(DropCause::Burst);
        }

        // 3. Delay and jitter, in order.
        let mut at = departs + self.impairment.delay;
        let jitter = self.impairment.jitter;
        if !jitter.is_zero() {
            let offset = self.rngs.jitter.random_range(-1.0..=1.0) * jitter.as_secs_f64();
            at = if offset >= 0.0 {
                at + Duration::from_secs_f64(offset)
            } else {
                at.checked_sub(Duration::from_secs_f64(-offset))
                    .unwrap_or(departs)
                    .max(departs)
            };
        }

        // 4. Reordering: held back outside the order, or kept in order.
        let reordered = match self.impairment.reorder {
            Some(reorder) if reorder.fraction > 0.0 => {
                chance(&mut self.rngs.reorder, reorder.fraction)
            }
            _ => false,
        };
        if reordered {
            at += self.impairment.reorder.map_or(Duration::ZERO, |r| r.extra);
            self.counters.reordered += 1;
        } else {
            if let Some(floor) = self.in_order_floor {
                at = at.max(floor);
            }
            self.in_order_floor = Some(at);
        }

        self.held_bytes += len;
        self.held.push(Reverse(Held {
            at,
            seq: self.next_seq,
            packet,
        }));
        self.next_seq += 1;
        Fate::Deliver { at, reordered }
    }

    /// When the next packet is due, if any is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.peek().map(|Reverse(held)| held.at)
    }

    /// A packet whose time has come by `now`, earliest first.
    pub fn pop_ready(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.poll_timeout()? > now {
            return None;
        }
        let Reverse(held) = self.held.pop()?;
        self.held_bytes -= held.packet.len();
        self.counters.packets_out += 1;
        self.counters.bytes_out += held.packet.len() as u64;
        Some(held.packet)
    }

    /// The counts so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Packets held now (queued or in flight).
    pub fn held_packets(&self) -> usize {
        self.held.len()
    }

    fn drop_packet(&mut self, cause: DropCause) -> Fate {
        let counter = match cause {
            DropCause::Loss => &mut self.counters.dropped_loss,
            DropCause::Burst => &mut self.counters.dropped_burst,
            DropCause::Queue => &mut self.counters.dropped_queue,
            DropCause::Overflow => &mut self.counters.dropped_overflow,
        };
        *counter += 1;
        Fate::Dropped(cause)
    }

    /// Decide this packet in the current state, then move the state on.
    fn gilbert_elliott_loses(&mut self, ge: GilbertElliott) -> bool {
        let deliver = if self.bad_state { ge.h } else { ge.k };
        let lost = !chance(&mut self.rngs.burst, deliver);
        let switch = if self.bad_state { ge.r } else { ge.p };
        if chance(&mut self.rngs.burst, switch) {
            self.bad_state = !self.bad_state;
        }
        lost
    }
}

/// True with probability `p` (never for `p <= 0` or NaN, always for `p >= 1`).
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p >= 1.0 || rng.random::<f64>() < p
}

/// A packet in the delay line, ordered by due time, then by arrival.
#[derive(Debug)]
struct Held {
    at: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One random stream per kind of choice, all derived from one seed.
#[derive(Debug)]
struct Streams {
    loss: ChaCha8Rng,
    burst: ChaCha8Rng,
    jitter: ChaCha8Rng,
    reorder: ChaCha8Rng,
}

impl Streams {
    fn new(seed: u64) -> Self {
        let stream = |n: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(n);
            rng
        };
        Streams {
            loss: stream(1),
            burst: stream(2),
            jitter: stream(3),
            reorder: stream(4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Rate;

    const PACKET: usize = 1200;

    /// Push `count` packets of `size` bytes every `gap`, popping as virtual time passes;
    /// returns (sequence number, sent at, received at) of what came out, in output order.
    fn run(
        direction: &mut Direction,
        count: u32,
        size: usize,
        gap: Duration,
    ) -> Vec<(u32, Instant, Instant)> {
        let t0 = Instant::now();
        let mut sent_at = Vec::new();
        let mut out = Vec::new();
        let drain = |direction: &mut Direction, now: Instant, out: &mut Vec<_>| {
            while let Some(packet) = direction.pop_ready(now) {
                let seq = u32::from_be_bytes(packet[..4].try_into().unwrap());
                out.push((seq, now, packet));
            }
        };
        for seq in 0..count {
            let now = t0 + gap * seq;
            // Deliveries due before this packet arrives happen first, at their own time.
            while let Some(due) = direction.poll_timeout().filter(|&due| due <= now) {
                drain(direction, due, &mut out);
            }
            let mut packet = vec![0u8; size];
            packet[..4].copy_from_slice(&seq.to_be_bytes());
            sent_at.push(now);
            direction.push(now, packet);
        }
        while let Some(due) = direction.poll_timeout() {
            drain(direction, due, &mut out);
        }
        out.into_iter()
            .map(|(seq, at, _)| (seq, sent_at[seq as usize], at))
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(text: &str) -> Impairment {
        text.parse().unwrap()
    }

    fn delays_ms(out: &[(u32, Instant, Instant)]) -> Vec<f64> {
        out.iter()
            .map(|(_, sent, got)| (*got - *sent).as_secs_f64() * 1e3)
            .collect()
    }

    fn is_in_order(out: &[(u32, Instant, Instant)]) -> bool {
        out.windows(2).all(|w| w[0].0 < w[1].0)
    }

    #[test]
    fn no_impairment_passes_everything_at_once() {
        let mut d = Direction::new(Impairment::default(), 1);
        let out = run(&mut d, 1000, PACKET, ms(1));
        assert_eq!(out.len(), 1000);
        assert!(is_in_order(&out));
        assert!(delays_ms(&out).iter().all(|&d| d == 0.0));
        let c = d.counters();
        assert_eq!((c.packets_in, c.packets_out, c.dropped()), (1000, 1000, 0));
        assert_eq!(c.bytes_out, 1000 * PACKET as u64);
    }

    #[test]
    fn fixed_delay_is_exact() {
        let mut d = Direction::new(spec("delay=25ms"), 1);
        let out = run(&mut d, 500, PACKET, Duration::from_micros(300));
        assert_eq!(out.len(), 500);
        assert!(is_in_order(&out));
        assert!(delays_ms(&out).iter().all(|&d| (d - 25.0).abs() < 1e-6));
    }

    #[test]
    fn random_loss_rate_is_close_to_the_spec() {
        for (loss, seed) in [(0.005, 1), (0.02, 2), (0.05, 3)] {
            let mut d = Direction::new(
                Impairment {
                    loss,
                    ..Impairment::default()
                },
                seed,
            );
            let n = 200_000;
            let out = run(&mut d, n, 100, Duration::from_micros(10));
            let measured = 1.0 - out.len() as f64 / f64::from(n);
            // Binomial standard deviation sqrt(p(1-p)/n); allow 5 of them.
            let sigma = (loss * (1.0 - loss) / f64::from(n)).sqrt();
            assert!(
                (measured - loss).abs() < 5.0 * sigma,
                "loss {loss}: measured {measured}"
            );
            assert_eq!(d.counters().dropped_loss, u64::from(n) - out.len() as u64);
            assert!(is_in_order(&out));
        }
    }

    #[test]
    fn gilbert_elliott_gives_bursts_of_the_right_length() {
        // p = 1 %, r = 25 %: mean burst 4 packets, mean loss 0.01 / 0.26 = 3.85 %.
        let mut d = Direction::new(spec("ge=1%,25%"), 7);
        let n = 400_000u32;
        let out = run(&mut d, n, 100, Duration::from_micros(10));
        let mut received = vec![false; n as usize];
        for (seq, _, _) in &out {
            received[*seq as usize] = true;
        }
        let mut bursts = Vec::new();
        let mut current = 0u32;
        for got in received {
            if got {
                if current > 0 {
                    bursts.push(current);
                }
                current = 0;
            } else {
                current += 1;
            }
        }
        let mean_burst = bursts.iter().map(|&b| f64::from(b)).sum::<f64>() / bursts.len() as f64;
        let loss = 1.0 - out.len() as f64 / f64::from(n);
        assert!((mean_burst - 4.0).abs() < 0.3, "mean burst {mean_burst}");
        assert!((loss - 0.01 / 0.26).abs() < 0.004, "loss {loss}");
        // Bursty: far more long bursts than independent loss of the same rate would give
        // (P(burst >= 8) = 0.75^7 = 13 % here, vs 0.0385^7 ~ 0).
        let long = bursts.iter().filter(|&&b| b >= 8).count() as f64 / bursts.len() as f64;
        assert!((long - 0.75f64.powi(7)).abs() < 0.02, "long bursts {long}");
        assert_eq!(d.counters().dropped_burst, u64::from(n) - out.len() as u64);
    }

    #[test]
    fn gilbert_elliott_with_partial_loss_matches_its_mean() {
        let ge = "ge=5%,20%,30%,99%";
        let mut d = Direction::new(spec(ge), 11);
        let n = 200_000u32;
        let out = run(&mut d, n, 100, Duration::from_micros(10));
        let expected = spec(ge).gilbert_elliott.unwrap().mean_loss();
        let loss = 1.0 - out.len() as f64 / f64::from(n);
        assert!((loss - expected).abs() < 0.01, "{loss} vs {expected}");
    }

    #[test]
    fn jitter_spreads_the_delay_uniformly_without_reordering() {
        // Packets 5 ms apart, delay 50 ± 2 ms: gaps are wider than the jitter's spread,
        // so the order floor rarely binds and the distribution stays visible.
        let mut d = Direction::new(spec("delay=50ms,jitter=2ms"), 3);
        let out = run(&mut d, 20_000, PACKET, ms(5));
        assert_eq!(out.len(), 20_000);
        assert!(is_in_order(&out));
        let delays = delays_ms(&out);
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let min = delays.iter().copied().fold(f64::MAX, f64::min);
        let max = delays.iter().copied().fold(f64::MIN, f64::max);
        assert!((mean - 50.0).abs() < 0.05, "mean {mean}");
        assert!((48.0..48.05).contains(&min), "min {min}");
        assert!(max <= 52.0 && max > 51.95, "max {max}"); // (51.95, 52.0]
        // Uniform: a quarter of the samples in each 1 ms band.
        for band in 0..4 {
            let lo = 48.0 + f64::from(band);
            let share = delays.iter().filter(|&&d| d >= lo && d < lo + 1.0).count() as f64
                / delays.len() as f64;
            assert!((share - 0.25).abs() < 0.02, "band {lo}: {share}");
        }
    }

    #[test]
    fn jitter_larger_than_the_gap_never_reorders() {
        let mut d = Direction::new(spec("delay=20ms,jitter=10ms"), 5);
        let out = run(&mut d, 20_000, PACKET, Duration::from_micros(100));
        assert_eq!(out.len(), 20_000);
        assert!(is_in_order(&out), "jitter alone reordered packets");
        assert_eq!(d.counters().reordered, 0);
    }

    #[test]
    fn reorder_fraction_is_close_to_the_spec() {
        let mut d = Direction::new(spec("delay=10ms,jitter=1ms,reorder=5%,20ms"), 9);
        let n = 50_000u32;
        let out = run(&mut d, n, PACKET, ms(1));
        assert_eq!(out.len(), n as usize, "reordering loses nothing");
        // A packet is late when a packet sent after it came out before it.
        let mut late = 0u32;
        let mut highest = None;
        for (seq, _, _) in &out {
            match highest {
                Some(h) if *seq < h => late += 1,
                _ => highest = Some(*seq),
            }
        }
        let fraction = f64::from(late) / f64::from(n);
        assert!((fraction - 0.05).abs() < 0.005, "late fraction {fraction}");
        assert_eq!(u64::from(late), d.counters().reordered);
        // The held-back packets came 20 ms late (± jitter), the others on time.
        let delays = delays_ms(&out);
        assert!(delays.iter().all(|&d| (9.0..=31.0).contains(&d)));
        let slow = delays.iter().filter(|&&d| d > 25.0).count();
        assert_eq!(slow, late as usize);
    }

    #[test]
    fn rate_limit_paces_packets() {
        // 10 Mbit/s, 1200 B every 0.5 ms = 19.2 Mbit/s offered: the output runs at the rate.
        let mut d = Direction::new(spec("rate=10mbit,queue=1000ms"), 1);
        let out = run(&mut d, 2000, PACKET, Duration::from_micros(500));
        let first = out.first().unwrap().2;
        let last = out.last().unwrap().2;
        let bits = (out.len() - 1) as f64 * PACKET as f64 * 8.0;
        let rate = bits / (last - first).as_secs_f64();
        assert!((rate - 10e6).abs() / 10e6 < 0.001, "rate {rate}");
        assert!(is_in_order(&out));
        // Packet gaps at the output are exactly one transmit time (0.96 ms).
        for w in out.windows(2) {
            let gap = (w[1].2 - w[0].2).as_secs_f64() * 1e3;
            assert!((gap - 0.96).abs() < 1e-6, "gap {gap}");
        }
    }

    #[test]
    fn a_full_time_queue_drops_the_excess() {
        // Offered 2x the rate for 1 s: the queue fills to 50 ms, then half the packets drop.
        let mut d = Direction::new(spec("rate=10mbit,queue=50ms"), 1);
        let n = 2083; // 1200 B every 0.48 ms = 20 Mbit/s for 1 s
        let out = run(&mut d, n, PACKET, Duration::from_micros(480));
        let c = d.counters();
        // About 10 Mbit/s got through in 1 s plus the 50 ms of queue drained at the end.
        let expected_out = (10e6 * 1.05 / 8.0 / PACKET as f64) as i64;
        assert!(
            (out.len() as i64 - expected_out).abs() <= 5,
            "{} out, expected {expected_out}",
            out.len()
        );
        assert_eq!(c.dropped_queue as usize, n as usize - out.len());
        // No packet waited more than the queue's 50 ms plus its own transmit time.
        let worst = delays_ms(&out).into_iter().fold(0.0, f64::max);
        assert!(worst <= 50.0 + 0.96 + 1e-6, "worst {worst}");
        assert!(worst > 49.0, "worst {worst}");
    }

    #[test]
    fn a_byte_queue_holds_that_many_bytes() {
        // A queue of 12000 B (the packet being sent included) takes 10 of a burst of 100.
        let mut d = Direction::new(spec("rate=10mbit,queue=12000b"), 1);
        let out = run(&mut d, 100, PACKET, Duration::ZERO);
        assert_eq!(out.len(), 10);
        assert_eq!(d.counters().dropped_queue, 90);
    }

    #[test]
    fn rate_queue_loss_and_delay_add_up() {
        let mut d = Direction::new(spec("delay=20ms,loss=2%,rate=100mbit,queue=20ms"), 4);
        let rate = Rate::from_bits_per_second(100_000_000).unwrap();
        // Offered below the rate: nothing queues, every packet takes delay + transmit time.
        let out = run(&mut d, 10_000, PACKET, Duration::from_micros(200));
        let c = d.counters();
        assert_eq!(c.dropped_queue, 0);
        let expected = 20.0 + rate.transmit_time(PACKET).as_secs_f64() * 1e3;
        assert!(delays_ms(&out).iter().all(|&d| (d - expected).abs() < 1e-6));
        let loss = c.dropped_loss as f64 / 10_000.0;
        assert!((loss - 0.02).abs() < 0.007, "loss {loss}");
    }

    #[test]
    fn same_seed_same_fate_and_streams_are_independent() {
        let fates = |text: &str, seed| {
            let mut d = Direction::new(spec(text), seed);
            let t0 = Instant::now();
            (0..2000u32)
                .map(|i| {
                    matches!(
                        d.push(t0 + ms(u64::from(i)), vec![0; 100]),
                        Fate::Dropped(_)
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fates("loss=5%", 42), fates("loss=5%", 42));
        assert_ne!(fates("loss=5%", 42), fates("loss=5%", 43));
        // Jitter draws from its own stream: the same packets are lost with or without it.
        assert_eq!(fates("loss=5%", 42), fates("loss=5%,jitter=3ms", 42));
    }

    #[test]
    fn overflow_is_bounded() {
        let mut d = Direction::new(spec("delay=1s"), 1);
        let t0 = Instant::now();
        let big = 60_000;
        let fits = MAX_HELD_BYTES / big;
        for i in 0..fits {
            assert!(
                matches!(d.push(t0, vec![0; big]), Fate::Deliver { .. }),
                "{i}"
            );
        }
        assert_eq!(d.push(t0, vec![0; big]), Fate::Dropped(DropCause::Overflow));
        assert_eq!(d.held_packets(), fits);
        assert_eq!(d.pop_ready(t0 + ms(999)), None);
        assert!(d.pop_ready(t0 + ms(1000)).is_some());
    }
}
