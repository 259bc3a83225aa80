//! Two associations joined by an emulated link, in virtual time: for tests and benchmarks.
//!
//! Each direction has a one-way delay, random loss, an optional rate limit with a bounded
//! queue (tail drop) and a seed, so every run is reproducible. [`Sim::run`] moves time from
//! event to event (a packet arriving, a timer), so a minute of link time takes milliseconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Association, Config, Event};

/// One direction of the emulated link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// One-way delay.
    pub delay: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Bytes per second; `None`: unlimited.
    pub rate: Option<f64>,
    /// Bytes that may wait for the rate limit before packets are dropped.
    pub queue_bytes: usize,
    /// Extra delay, uniform in `0..jitter`, per packet (packets stay in order).
    pub jitter: Duration,
}

impl LinkConfig {
    /// A link with this one-way delay and loss, no rate limit.
    pub fn new(delay: Duration, loss: f64) -> LinkConfig {
        LinkConfig {
            delay,
            loss,
            rate: None,
            queue_bytes: usize::MAX,
            jitter: Duration::ZERO,
        }
    }
}

/// The simulators' random numbers: xorshift64*, deterministic from its seed and
/// dependency-free (also used by `proxim_core::peer::sim`).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed` (any value; it is made odd).
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed | 1)
    }

    /// The next number, uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Moves the virtual clock `now` to the earliest of `deadlines` (never backwards) and returns
/// the new now; `None`, and the clock stays, when no deadline is set: nothing is left to happen.
/// The event loop of both simulators (also used by `proxim_core::peer::sim`).
pub fn advance_clock(
    now: &mut Instant,
    deadlines: impl IntoIterator<Item = Option<Instant>>,
) -> Option<Instant> {
    let next = deadlines.into_iter().flatten().min()?;
    *now = (*now).max(next);
    Some(*now)
}

#[derive(Debug)]
struct Link {
    config: LinkConfig,
    /// `(arrival, packet)`, in arrival order.
    in_flight: VecDeque<(Instant, Bytes)>,
    /// When the serializer is free again (rate limit).
    busy_until: Instant,
    rng: SimRng,
    sent: u64,
    dropped: u64,
}

impl Link {
    fn new(config: LinkConfig, now: Instant, seed: u64) -> Link {
        Link {
            config,
            in_flight: VecDeque::new(),
            busy_until: now,
            rng: SimRng::new(seed),
            sent: 0,
            dropped: 0,
        }
    }

    fn random(&mut self) -> f64 {
        self.rng.next_f64()
    }

    fn push(&mut self, now: Instant, packet: Bytes) {
        self.sent += 1;
        if self.config.loss > 0.0 && self.random() < self.config.loss {
            self.dropped += 1;
            return;
        }
        let departure = match self.config.rate {
            Some(rate) => {
                let start = self.busy_until.max(now);
                let backlog = start.saturating_duration_since(now).as_secs_f64() * rate;
                if backlog > self.config.queue_bytes as f64 {
                    self.dropped += 1;
                    return;
                }
                let done = start + Duration::from_secs_f64(packet.len() as f64 / rate);
                self.busy_until = done;
                done
            }
            None => now,
        };
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.config.jitter.mul_f64(self.random())
        };
        let arrival = departure + self.config.delay + jitter;
        // Keep arrival order (a rate-limited FIFO never reorders; equal delays keep order).
        let at = self
            .in_flight
            .back()
            .map_or(arrival, |(last, _)| arrival.max(*last));
        self.in_flight.push_back((at, packet));
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at)
    }
}

/// What one side saw.
#[derive(Debug, Default)]
pub struct Side {
    /// Events other than messages, in order.
    pub events: Vec<Event>,
    /// Messages received: `(time, stream, ppid, data)`.
    pub messages: Vec<(Instant, u16, u32, Bytes)>,
    /// Whether the application reads (and consumes) what arrives.
    pub reading: bool,
    /// Bytes and messages received but not consumed (while not reading).
    pub unread: (usize, usize),
}

/// Two associations over an emulated link.
#[derive(Debug)]
pub struct Sim {
    /// Virtual now.
    pub now: Instant,
    /// The first association.
    pub a: Association,
    /// The second association.
    pub b: Association,
    /// What A saw.
    pub side_a: Side,
    /// What B saw.
    pub side_b: Side,
    ab: Link,
    ba: Link,
}

impl Sim {
    /// Two associations with these configs over links with these directions.
    pub fn new(
        config_a: Config,
        config_b: Config,
        a_to_b: LinkConfig,
        b_to_a: LinkConfig,
        seed: u64,
    ) -> Sim {
        let now = Instant::now();
        Sim {
            now,
            a: Association::new(config_a, now),
            b: Association::new(config_b, now),
            side_a: Side {
                reading: true,
                ..Side::default()
            },
            side_b: Side {
                reading: true,
                ..Side::default()
            },
            ab: Link::new(a_to_b, now, seed.wrapping_mul(2).wrapping_add(1)),
            ba: Link::new(b_to_a, now, seed.wrapping_mul(3).wrapping_add(7)),
        }
    }

    /// Both sides connect (as WebRTC peers do).
    pub fn connect_both(&mut self) {
        self.a.connect(self.now);
        self.b.connect(self.now);
    }

    /// Change the loss of both directions from now on (1.0: an outage).
    pub fn set_loss(&mut self, loss: f64) {
        self.ab.config.loss = loss;
        self.ba.config.loss = loss;
    }

    /// Packets sent and dropped on A→B and B→A.
    pub fn link_counters(&self) -> ((u64, u64), (u64, u64)) {
        (
            (self.ab.sent, self.ab.dropped),
            (self.ba.sent, self.ba.dropped),
        )
    }

    /// Drain both associations' outputs into the links and their events into the sides.
    pub fn drain(&mut self) {
        let now = self.now;
        loop {
            let mut progressed = false;
            while let Some(p) = self.a.poll_transmit(now) {
                self.ab.push(now, Bytes::from(p));
                progressed = true;
            }
            while let Some(p) = self.b.poll_transmit(now) {
                self.ba.push(now, Bytes::from(p));
                progressed = true;
            }
            progressed |= Self::take_events(now, &mut self.a, &mut self.side_a);
            progressed |= Self::take_events(now, &mut self.b, &mut self.side_b);
            if !progressed {
                break;
            }
        }
    }

    fn take_events(now: Instant, assoc: &mut Association, side: &mut Side) -> bool {
        let mut any = false;
        while let Some(event) = assoc.poll_event() {
            any = true;
            match event {
                Event::Message(m) => {
                    if side.reading {
                        assoc.consumed(m.data.len(), 1);
                    } else {
                        side.unread.0 += m.data.len();
                        side.unread.1 += 1;
                    }
                    side.messages.push((now, m.stream, m.ppid, m.data));
                }
                other => side.events.push(other),
            }
        }
        any
    }

    /// The application of `side` reads again (consumes what it left unread).
    pub fn resume_reading_b(&mut self) {
        self.side_b.reading = true;
        let (bytes, messages) = std::mem::take(&mut self.side_b.unread);
        self.b.consumed(bytes, messages);
        self.drain();
    }

    /// Advance to the next event. Returns `false` when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.step_until(None)
    }

    /// Advance to the next event, or to `limit` if that comes first (an application's own
    /// deadline). Returns `false` when nothing is left to happen and there is no limit.
    pub fn step_until(&mut self, limit: Option<Instant>) -> bool {
        self.drain();
        let deadlines = [
            self.a.poll_timeout(),
            self.b.poll_timeout(),
            self.ab.next_arrival(),
            self.ba.next_arrival(),
            limit,
        ];
        let Some(now) = advance_clock(&mut self.now, deadlines) else {
            return false;
        };
        while self.ab.next_arrival().is_some_and(|t| t <= now) {
            if let Some((_, p)) = self.ab.in_flight.pop_front() {
                let _ = self.b.handle_input(now, p);
            }
        }
        while self.ba.next_arrival().is_some_and(|t| t <= now) {
            if let Some((_, p)) = self.ba.in_flight.pop_front() {
                let _ = self.a.handle_input(now, p);
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
        self.drain();
        true
    }

    /// Step until `done` holds or `limit` of virtual time passed. Returns whether `done` held.
    pub fn run(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end || !self.step() {
                return done(self);
            }
        }
    }

    /// Keep A's send queue on stream 0 topped up to 4 MiB with 64 KiB messages: a bulk sender.
    pub fn keep_a_busy(&mut self) {
        while self.a.buffered_amount(0) < 4 << 20 {
            if self
                .a
                .send(
                    self.now,
                    0,
                    53,
                    Bytes::from(vec![0; 65_536]),
                    crate::SendOptions::default(),
                )
                .is_err()
            {
                return;
            }
        }
    }

    /// A bulk transfer A→B for `warm`, then an outage of `down` (everything lost both ways),
    /// then the link back; `confirm_after`: tell A that long after the link is back that the
    /// path works ([`Association::path_confirmed`], as ICE does). Gives up 60 s after the
    /// link is back.
    pub fn outage(
        &mut self,
        warm: Duration,
        down: Duration,
        confirm_after: Option<Duration>,
    ) -> Outage {
        let t0 = self.now;
        while self.now - t0 < warm {
            self.keep_a_busy();
            self.step();
        }
        self.set_loss(1.0);
        let cut = self.now;
        while self.now - cut < down {
            self.keep_a_busy();
            self.step();
        }
        let backed_off = self.a.in_backoff();
        self.set_loss(0.0);
        let back = self.now;
        let before = self.side_b.messages.len();
        let mut confirm_at = confirm_after.map(|after| back + after);
        while self.side_b.messages.len() == before && self.now - back < Duration::from_secs(60) {
            if let Some(at) = confirm_at
                && self.now >= at
            {
                self.a.path_confirmed(self.now);
                self.drain();
                confirm_at = None;
            }
            self.keep_a_busy();
            self.step_until(confirm_at);
        }
        Outage {
            resumed_after: self.now - back,
            backed_off,
        }
    }
}

/// What [`Sim::outage`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// From the link being back to B's next whole message.
    pub resumed_after: Duration,
    /// A was waiting out a backed-off retransmission timer when the link came back.
    pub backed_off: bool,
}
