//! Chunks sent and not yet cumulatively acknowledged: SACK processing, RACK loss detection,
//! delivery-rate samples, partial reliability (abandoning, FORWARD TSN).
//!
//! Loss detection is time based (RACK, RFC 8985): a chunk is lost once a chunk sent after it
//! was acknowledged and a reordering window passed since. A retransmission is an ordinary
//! transmission with its own send time, so a lost retransmission is found the same way — not
//! only by the retransmission timer. Tail losses are found by probes (the association's PTO).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::bbr::RateSample;
use crate::outbound::Fragment;
use crate::tsn::unwrap_tsn;
use crate::wire::{DataChunk, SackChunk};

/// Where a sent chunk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Sent, not acknowledged, not declared lost.
    InFlight,
    /// Acknowledged by a gap block (the cumulative point has not reached it).
    Acked,
    /// Declared lost, waiting to be retransmitted.
    Lost,
    /// Given up under partial reliability.
    Abandoned,
}

/// The delivery state when a chunk was sent (for the delivery-rate sample of its ACK).
#[derive(Debug, Clone, Copy)]
struct RateSnapshot {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
}

#[derive(Debug)]
pub(crate) struct SentChunk {
    pub(crate) fragment: Fragment,
    pub(crate) state: ChunkState,
    pub(crate) sent_at: Instant,
    tx_seq: u64,
    pub(crate) transmissions: u16,
    rate: RateSnapshot,
    /// Bytes on the wire (DATA header and padding included).
    pub(crate) size: usize,
}

/// What one SACK changed.
#[derive(Debug, Default)]
pub(crate) struct SackOutcome {
    pub(crate) acked_bytes: usize,
    pub(crate) cumulative_advanced: bool,
    pub(crate) rtt_sample: Option<Duration>,
    pub(crate) rate_sample: Option<RateSample>,
    pub(crate) prior_inflight: usize,
}

/// Why a SACK was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SackRejected {
    /// Its cumulative TSN is behind one already seen (reordered SACK).
    Stale,
    /// It acknowledges TSNs never sent.
    Bogus,
}

#[derive(Debug, Default)]
struct Rack {
    /// Send time and transmit sequence of the most recently sent chunk that was acknowledged.
    xmit: Option<(Instant, u64)>,
    rtt: Duration,
    reordering_seen: bool,
    /// Highest TSN acknowledged so far (RACK's "fack").
    highest_acked: u64,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    chunks: VecDeque<SentChunk>,
    /// The peer's cumulative TSN ack (unwrapped).
    cumulative: u64,
    next_tsn: u64,
    flight_bytes: usize,
    lost: BTreeSet<u64>,
    /// `(tx_seq, tsn)` in transmission order; entries go stale when a chunk is acknowledged,
    /// declared lost or sent again.
    sent_order: VecDeque<(u64, u64)>,
    next_tx_seq: u64,
    /// Bytes given to SCTP and not acknowledged or abandoned, per stream.
    per_stream: HashMap<u16, usize>,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited_until: u64,
    rack: Rack,
    /// RFC 3758's Advanced.Peer.Ack.Point.
    advanced_peer_ack: u64,
}

impl Inflight {
    pub(crate) fn new(now: Instant, initial_tsn: u32) -> Inflight {
        let first = (1u64 << 32) + u64::from(initial_tsn);
        Inflight {
            chunks: VecDeque::new(),
            cumulative: first - 1,
            next_tsn: first,
            flight_bytes: 0,
            lost: BTreeSet::new(),
            sent_order: VecDeque::new(),
            next_tx_seq: 0,
            per_stream: HashMap::new(),
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
            rack: Rack::default(),
            advanced_peer_ack: first - 1,
        }
    }

    pub(crate) fn debug_head(&self) -> String {
        let head: Vec<String> = self
            .chunks
            .iter()
            .take(3)
            .map(|c| format!("{:?}x{}", c.state, c.transmissions))
            .collect();
        format!(
            "cum={} next={} lost={} order={} head=[{}]",
            self.cumulative,
            self.next_tsn,
            self.lost.len(),
            self.sent_order.len(),
            head.join(",")
        )
    }

    pub(crate) fn flight_bytes(&self) -> usize {
        self.flight_bytes
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether anything is unacknowledged (in flight or waiting for retransmission).
    pub(crate) fn has_outstanding(&self) -> bool {
        self.flight_bytes > 0 || !self.lost.is_empty()
    }

    pub(crate) fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }

    /// The last TSN assigned.
    pub(crate) fn last_assigned(&self) -> u64 {
        self.next_tsn - 1
    }

    /// Unacknowledged bytes of `stream`.
    pub(crate) fn stream_bytes(&self, stream: u16) -> usize {
        self.per_stream.get(&stream).copied().unwrap_or(0)
    }

    /// The sender has nothing to send although the window has room: rate samples taken until
    /// what is in flight now is delivered do not measure the path.
    pub(crate) fn mark_app_limited(&mut self) {
        self.app_limited_until = (self.delivered + self.flight_bytes as u64).max(1);
    }

    fn index(&self, tsn: u64) -> Option<usize> {
        let i = tsn.checked_sub(self.cumulative + 1)?;
        (i < self.chunks.len() as u64).then_some(i as usize)
    }

    pub(crate) fn get(&self, tsn: u64) -> Option<&SentChunk> {
        self.index(tsn).and_then(|i| self.chunks.get(i))
    }

    fn snapshot(&mut self, now: Instant) -> RateSnapshot {
        if self.flight_bytes == 0 {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        RateSnapshot {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until > 0,
        }
    }

    /// Record a new fragment as sent now; returns the DATA chunk to put on the wire.
    pub(crate) fn send_new(&mut self, now: Instant, fragment: Fragment, size: usize) -> DataChunk {
        let tsn = self.next_tsn;
        self.next_tsn += 1;
        let tx_seq = self.next_tx_seq;
        self.next_tx_seq += 1;
        let rate = self.snapshot(now);
        *self.per_stream.entry(fragment.stream).or_default() += fragment.payload.len();
        self.flight_bytes += size;
        self.sent_order.push_back((tx_seq, tsn));
        let chunk = data_chunk(tsn, &fragment);
        self.chunks.push_back(SentChunk {
            fragment,
            state: ChunkState::InFlight,
            sent_at: now,
            tx_seq,
            transmissions: 1,
            rate,
            size,
        });
        chunk
    }

    /// The lowest TSN waiting for retransmission, without taking it.
    pub(crate) fn peek_lost(&self) -> Option<(u64, usize)> {
        let tsn = *self.lost.first()?;
        Some((tsn, self.get(tsn).map_or(0, |c| c.size)))
    }

    /// Retransmit `tsn` (from [`Self::peek_lost`]) now; returns the chunk for the wire.
    pub(crate) fn retransmit(&mut self, now: Instant, tsn: u64) -> Option<DataChunk> {
        self.lost.remove(&tsn);
        let tx_seq = self.next_tx_seq;
        self.next_tx_seq += 1;
        let rate = self.snapshot(now);
        let i = self.index(tsn)?;
        let chunk = &mut self.chunks[i];
        if chunk.state != ChunkState::Lost {
            return None;
        }
        chunk.state = ChunkState::InFlight;
        chunk.sent_at = now;
        chunk.tx_seq = tx_seq;
        chunk.transmissions = chunk.transmissions.saturating_add(1);
        chunk.rate = rate;
        self.flight_bytes += chunk.size;
        self.sent_order.push_back((tx_seq, tsn));
        Some(data_chunk(tsn, &chunk.fragment))
    }

    /// Whether the chunk at `tsn` has used up its retransmissions or lifetime.
    pub(crate) fn should_abandon(&self, now: Instant, tsn: u64) -> Option<(u16, u64)> {
        let c = self.get(tsn)?;
        let f = &c.fragment;
        let out_of_tries = f.max_retransmits.is_some_and(|max| c.transmissions > max);
        let expired = f.expires.is_some_and(|at| at <= now);
        (out_of_tries || expired).then_some((f.stream, f.message))
    }

    /// Give up message `message` (all its chunks). Returns the bytes it still held.
    pub(crate) fn abandon(&mut self, stream: u16, message: u64) -> usize {
        let mut freed = 0;
        for (i, c) in self.chunks.iter_mut().enumerate() {
            if c.fragment.message != message || c.fragment.stream != stream {
                continue;
            }
            match c.state {
                ChunkState::InFlight => {
                    self.flight_bytes -= c.size;
                    freed += c.fragment.payload.len();
                }
                ChunkState::Lost => {
                    let tsn = self.cumulative + 1 + i as u64;
                    self.lost.remove(&tsn);
                    freed += c.fragment.payload.len();
                }
                ChunkState::Acked | ChunkState::Abandoned => continue,
            }
            c.state = ChunkState::Abandoned;
        }
        if let Some(b) = self.per_stream.get_mut(&stream) {
            *b = b.saturating_sub(freed);
        }
        freed
    }

    /// Declare `tsn` lost now (a probe or a timeout). Returns the bytes.
    fn declare_lost(&mut self, i: usize) -> usize {
        let c = &mut self.chunks[i];
        if c.state != ChunkState::InFlight {
            return 0;
        }
        c.state = ChunkState::Lost;
        self.flight_bytes -= c.size;
        let tsn = self.cumulative + 1 + i as u64;
        self.lost.insert(tsn);
        c.size
    }

    /// Retransmission timeout: everything in flight is lost (RFC 8985 §6.3).
    pub(crate) fn on_timeout(&mut self) -> usize {
        let mut lost = 0;
        for i in 0..self.chunks.len() {
            lost += self.declare_lost(i);
        }
        self.sent_order.clear();
        lost
    }

    /// The most recently sent chunk still in flight (what a tail loss probe resends).
    pub(crate) fn last_in_flight(&self) -> Option<u64> {
        self.sent_order.iter().rev().find_map(|&(tx, tsn)| {
            let c = self.get(tsn)?;
            (c.tx_seq == tx && c.state == ChunkState::InFlight).then_some(tsn)
        })
    }

    /// A tail loss probe resends `tsn`: mark it for retransmission.
    pub(crate) fn probe(&mut self, tsn: u64) {
        if let Some(i) = self.index(tsn) {
            self.declare_lost(i);
        }
    }

    /// Apply a SACK.
    pub(crate) fn on_sack(
        &mut self,
        now: Instant,
        sack: &SackChunk,
        min_rtt: Option<Duration>,
    ) -> Result<SackOutcome, SackRejected> {
        let cumulative = unwrap_tsn(self.cumulative, sack.cumulative_tsn);
        if cumulative < self.cumulative {
            return Err(SackRejected::Stale);
        }
        if cumulative >= self.next_tsn {
            return Err(SackRejected::Bogus);
        }
        let mut out = SackOutcome {
            prior_inflight: self.flight_bytes,
            ..SackOutcome::default()
        };
        let mut newest: Option<(u64, RateSnapshot, Instant, u16)> = None;
        let highest_before = self.rack.highest_acked;
        let mut ack = |this: &mut Self, i: usize, now: Instant, out: &mut SackOutcome| {
            let tsn = this.cumulative + 1 + i as u64;
            let c = &mut this.chunks[i];
            match c.state {
                ChunkState::InFlight => this.flight_bytes -= c.size,
                ChunkState::Lost => {
                    this.lost.remove(&tsn);
                    // Declared lost, then acknowledged: it was late, not lost.
                    this.rack.reordering_seen = true;
                }
                ChunkState::Acked | ChunkState::Abandoned => return,
            }
            c.state = ChunkState::Acked;
            out.acked_bytes += c.size;
            this.delivered += c.size as u64;
            this.delivered_time = now;
            if let Some(b) = this.per_stream.get_mut(&c.fragment.stream) {
                *b = b.saturating_sub(c.fragment.payload.len());
            }
            if c.transmissions == 1 && tsn < highest_before {
                this.rack.reordering_seen = true;
            }
            this.rack.highest_acked = this.rack.highest_acked.max(tsn);
            let rtt = now.saturating_duration_since(c.sent_at);
            // A retransmitted chunk acknowledged faster than the path allows was acknowledged
            // for its first transmission: it says nothing about this one.
            let ambiguous = c.transmissions > 1 && min_rtt.is_some_and(|m| rtt < m);
            if !ambiguous
                && this
                    .rack
                    .xmit
                    .is_none_or(|(t, seq)| (c.sent_at, c.tx_seq) > (t, seq))
            {
                this.rack.xmit = Some((c.sent_at, c.tx_seq));
                this.rack.rtt = rtt;
            }
            if newest.is_none_or(|(seq, ..)| c.tx_seq > seq) {
                newest = Some((c.tx_seq, c.rate, c.sent_at, c.transmissions));
            }
        };
        // Cumulatively acknowledged.
        let advance = (cumulative - self.cumulative) as usize;
        for i in 0..advance.min(self.chunks.len()) {
            ack(self, i, now, &mut out);
        }
        // Gap blocks, relative to the new cumulative point.
        for &(start, end) in &sack.gaps {
            for offset in u64::from(start)..=u64::from(end) {
                let tsn = cumulative + offset;
                if let Some(i) = self.index(tsn) {
                    ack(self, i, now, &mut out);
                }
            }
        }
        if advance > 0 {
            self.chunks.drain(..advance.min(self.chunks.len()));
            self.cumulative = cumulative;
            self.advanced_peer_ack = self.advanced_peer_ack.max(cumulative);
            out.cumulative_advanced = true;
        }
        if let Some((_, rate, sent_at, transmissions)) = newest {
            let send_elapsed = sent_at.saturating_duration_since(rate.first_sent_time);
            let ack_elapsed = self
                .delivered_time
                .saturating_duration_since(rate.delivered_time);
            let interval = send_elapsed.max(ack_elapsed);
            let delivered = self.delivered - rate.delivered;
            let rtt = now.saturating_duration_since(sent_at);
            self.first_sent_time = sent_at;
            if transmissions == 1 {
                out.rtt_sample = Some(rtt);
            }
            if self.app_limited_until > 0 && self.delivered > self.app_limited_until {
                self.app_limited_until = 0;
            }
            if !interval.is_zero() && min_rtt.is_none_or(|m| interval >= m) {
                out.rate_sample = Some(RateSample {
                    delivery_rate: delivered as f64 / interval.as_secs_f64(),
                    prior_delivered: rate.delivered,
                    is_app_limited: rate.app_limited,
                    rtt: (transmissions == 1).then_some(rtt),
                });
            }
        }
        Ok(out)
    }

    /// RACK: declare lost what was sent before the most recently acknowledged chunk and has
    /// waited a round trip plus the reordering window. Returns the bytes declared lost and
    /// when the next chunk would be (for the reordering timer), and pushes messages to abandon.
    pub(crate) fn detect_losses(
        &mut self,
        now: Instant,
        srtt: Duration,
        min_rtt: Option<Duration>,
        abandon: &mut Vec<(u16, u64)>,
    ) -> (usize, Option<Instant>) {
        let Some((_, rack_tx)) = self.rack.xmit else {
            return (0, None);
        };
        let reo_wnd = self.reordering_window(srtt, min_rtt);
        let mut lost = 0;
        let mut timer = None;
        while let Some(&(tx, tsn)) = self.sent_order.front() {
            if tx >= rack_tx {
                break;
            }
            let Some(i) = self.index(tsn) else {
                self.sent_order.pop_front();
                continue;
            };
            let c = &self.chunks[i];
            if c.tx_seq != tx || c.state != ChunkState::InFlight {
                self.sent_order.pop_front();
                continue;
            }
            let deadline = c.sent_at + self.rack.rtt + reo_wnd;
            if deadline > now {
                timer = Some(deadline);
                break;
            }
            self.sent_order.pop_front();
            lost += self.declare_lost(i);
            if let Some(m) = self.should_abandon(now, tsn) {
                abandon.push(m);
            }
        }
        (lost, timer)
    }

    /// RACK's reordering window: a quarter of the minimum RTT, more once reordering was seen,
    /// never more than the smoothed RTT.
    fn reordering_window(&self, srtt: Duration, min_rtt: Option<Duration>) -> Duration {
        let quarter = min_rtt.unwrap_or(srtt) / 4;
        let window = if self.rack.reordering_seen {
            quarter * 2
        } else {
            quarter
        };
        window.min(srtt).max(Duration::from_micros(500))
    }

    /// Move the Advanced.Peer.Ack.Point over abandoned (and acknowledged) chunks; returns the
    /// FORWARD TSN to send when it is ahead of the cumulative point: the new cumulative TSN
    /// and the last skipped SSN of each ordered stream.
    pub(crate) fn forward_tsn(&mut self) -> Option<(u32, Vec<(u16, u16)>)> {
        let mut point = self.cumulative;
        let mut any_abandoned = false;
        // Over abandoned chunks, and acknowledged ones (the peer has them already).
        for (i, c) in self.chunks.iter().enumerate() {
            match c.state {
                ChunkState::Abandoned => any_abandoned = true,
                ChunkState::Acked => {}
                ChunkState::InFlight | ChunkState::Lost => break,
            }
            point = self.cumulative + 1 + i as u64;
        }
        if !any_abandoned || point <= self.cumulative {
            return None;
        }
        self.advanced_peer_ack = self.advanced_peer_ack.max(point);
        let mut streams: HashMap<u16, u16> = HashMap::new();
        let upto = (point - self.cumulative) as usize;
        for c in self.chunks.iter().take(upto) {
            if c.state == ChunkState::Abandoned && !c.fragment.unordered {
                let e = streams.entry(c.fragment.stream).or_insert(c.fragment.ssn);
                if crate::tsn::ssn_lt(*e, c.fragment.ssn) {
                    *e = c.fragment.ssn;
                }
            }
        }
        let mut streams: Vec<(u16, u16)> = streams.into_iter().collect();
        streams.sort_unstable();
        Some((point as u32, streams))
    }
}

fn data_chunk(tsn: u64, f: &Fragment) -> DataChunk {
    DataChunk {
        tsn: tsn as u32,
        stream: f.stream,
        ssn: f.ssn,
        ppid: f.ppid,
        unordered: f.unordered,
        begin: f.begin,
        end: f.end,
        immediate: false,
        payload: f.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fragment(message: u64, max_retransmits: Option<u16>) -> Fragment {
        Fragment {
            stream: 1,
            ssn: message as u16,
            ppid: 53,
            unordered: false,
            begin: true,
            end: true,
            payload: Bytes::from(vec![0; 100]),
            message,
            max_retransmits,
            expires: None,
        }
    }

    fn sack(cum: u32, gaps: Vec<(u16, u16)>) -> SackChunk {
        SackChunk {
            cumulative_tsn: cum,
            a_rwnd: 1 << 20,
            gaps,
            duplicates: vec![],
        }
    }

    #[test]
    fn a_hole_is_lost_once_a_later_chunk_is_acked_and_the_window_passed() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = Inflight::new(t0, 1000);
        for m in 0..4 {
            f.send_new(t0 + ms(m), fragment(m, None), 116);
        }
        assert_eq!(f.flight_bytes(), 4 * 116);
        // 1000 arrives, 1001 does not, 1002 and 1003 do.
        let out = f
            .on_sack(t0 + ms(20), &sack(1000, vec![(2, 3)]), None)
            .unwrap();
        assert_eq!(out.acked_bytes, 3 * 116);
        assert!(out.cumulative_advanced);
        let mut abandon = Vec::new();
        let srtt = ms(20);
        let (lost, timer) = f.detect_losses(t0 + ms(20), srtt, Some(ms(17)), &mut abandon);
        assert_eq!(lost, 0);
        let timer = timer.expect("reordering timer");
        let (lost, _) = f.detect_losses(timer, srtt, Some(ms(17)), &mut abandon);
        assert_eq!(lost, 116);
        assert_eq!(f.peek_lost().map(|(t, _)| t), Some((1u64 << 32) + 1001));
        // The retransmission is lost again: found again by a later ACK, not a timer.
        let tsn = f.peek_lost().unwrap().0;
        f.retransmit(timer, tsn).unwrap();
        f.send_new(timer + ms(1), fragment(9, None), 116);
        f.on_sack(timer + ms(21), &sack(1000, vec![(2, 4)]), Some(ms(17)))
            .unwrap();
        let (lost, _) = f.detect_losses(timer + ms(40), srtt, Some(ms(17)), &mut abandon);
        assert_eq!(lost, 116);
    }

    #[test]
    fn an_unreliable_message_is_abandoned_and_forwarded() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = Inflight::new(t0, 1);
        f.send_new(t0, fragment(0, Some(0)), 116);
        f.send_new(t0 + ms(1), fragment(1, Some(0)), 116);
        f.on_sack(t0 + ms(30), &sack(0, vec![(2, 2)]), None)
            .unwrap();
        let mut abandon = Vec::new();
        f.detect_losses(t0 + ms(60), ms(30), Some(ms(29)), &mut abandon);
        assert_eq!(abandon, vec![(1, 0)]);
        f.abandon(1, 0);
        assert!(!f.has_lost());
        let (cum, streams) = f.forward_tsn().unwrap();
        assert_eq!(cum, 2);
        assert_eq!(streams, vec![(1, 0)]);
        assert_eq!(f.stream_bytes(1), 0);
    }

    #[test]
    fn stale_and_bogus_sacks_are_refused() {
        let t0 = Instant::now();
        let mut f = Inflight::new(t0, 10);
        f.send_new(t0, fragment(0, None), 116);
        f.send_new(t0, fragment(1, None), 116);
        f.on_sack(t0, &sack(10, vec![]), None).unwrap();
        assert_eq!(
            f.on_sack(t0, &sack(9, vec![]), None).unwrap_err(),
            SackRejected::Stale
        );
        assert_eq!(
            f.on_sack(t0, &sack(12, vec![]), None).unwrap_err(),
            SackRejected::Bogus
        );
    }

    #[test]
    fn a_timeout_declares_everything_lost() {
        let t0 = Instant::now();
        let mut f = Inflight::new(t0, 10);
        for m in 0..3 {
            f.send_new(t0, fragment(m, None), 116);
        }
        assert_eq!(f.on_timeout(), 3 * 116);
        assert_eq!(f.flight_bytes(), 0);
        assert!(f.has_outstanding());
    }
}
