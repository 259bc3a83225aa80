//! Messages waiting to be sent, per stream, and their fragmentation into DATA chunks.
//!
//! Streams take turns message by message (round robin). Without I-DATA the fragments of one
//! message need consecutive TSNs, so a message, once started, is finished before another
//! stream's turn. A message's SSN is assigned when its first fragment leaves.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

/// One fragment, ready to become a DATA chunk.
#[derive(Debug, Clone)]
pub(crate) struct Fragment {
    pub(crate) stream: u16,
    pub(crate) ssn: u16,
    pub(crate) ppid: u32,
    pub(crate) unordered: bool,
    pub(crate) begin: bool,
    pub(crate) end: bool,
    pub(crate) payload: Bytes,
    pub(crate) message: u64,
    pub(crate) max_retransmits: Option<u16>,
    pub(crate) expires: Option<Instant>,
}

/// A message dropped from the queue because its lifetime ended before it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) stream: u16,
    pub(crate) bytes: usize,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    ppid: u32,
    data: Bytes,
    unordered: bool,
    max_retransmits: Option<u16>,
    expires: Option<Instant>,
    /// Bytes already cut into fragments.
    offset: usize,
    ssn: u16,
}

#[derive(Debug, Default)]
struct OutStream {
    queue: VecDeque<Pending>,
    next_ssn: u16,
    /// Bytes of the queued messages not yet fragmented.
    queued: usize,
}

#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    streams: HashMap<u16, OutStream>,
    /// Streams with queued messages, in turn order.
    turns: VecDeque<u16>,
    /// The stream whose head message is partly sent.
    in_progress: Option<u16>,
    next_id: u64,
    total: usize,
}

impl SendQueue {
    /// Queue a message (non-empty). Returns its id.
    pub(crate) fn push(
        &mut self,
        stream: u16,
        ppid: u32,
        data: Bytes,
        unordered: bool,
        max_retransmits: Option<u16>,
        expires: Option<Instant>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let s = self.streams.entry(stream).or_default();
        let was_idle = s.queue.is_empty();
        s.queued += data.len();
        self.total += data.len();
        s.queue.push_back(Pending {
            id,
            ppid,
            data,
            unordered,
            max_retransmits,
            expires,
            offset: 0,
            ssn: 0,
        });
        if was_idle && self.in_progress != Some(stream) {
            self.turns.push_back(stream);
        }
        id
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Bytes waiting on `stream`.
    pub(crate) fn queued_bytes(&self, stream: u16) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.queued)
    }

    /// Whether `stream` has nothing waiting (its messages all got TSNs).
    pub(crate) fn is_drained(&self, stream: u16) -> bool {
        self.queued_bytes(stream) == 0
    }

    /// Cut the next fragment of at most `max_payload` bytes. Messages whose lifetime ended
    /// before they started are dropped and reported in `expired`.
    pub(crate) fn next_fragment(
        &mut self,
        now: Instant,
        max_payload: usize,
        expired: &mut Vec<Expired>,
    ) -> Option<Fragment> {
        loop {
            let stream = match self.in_progress {
                Some(s) => s,
                None => self.turns.pop_front()?,
            };
            let Some(s) = self.streams.get_mut(&stream) else {
                self.in_progress = None;
                continue;
            };
            let Some(head) = s.queue.front_mut() else {
                self.in_progress = None;
                continue;
            };
            if head.offset == 0 && head.expires.is_some_and(|at| at <= now) {
                let bytes = head.data.len();
                s.queue.pop_front();
                s.queued -= bytes;
                self.total -= bytes;
                expired.push(Expired { stream, bytes });
                if !s.queue.is_empty() {
                    self.turns.push_front(stream);
                }
                self.in_progress = None;
                continue;
            }
            let begin = head.offset == 0;
            if begin && !head.unordered {
                head.ssn = s.next_ssn;
                s.next_ssn = s.next_ssn.wrapping_add(1);
            }
            let len = (head.data.len() - head.offset).min(max_payload);
            let payload = head.data.slice(head.offset..head.offset + len);
            head.offset += len;
            let end = head.offset == head.data.len();
            let fragment = Fragment {
                stream,
                ssn: head.ssn,
                ppid: head.ppid,
                unordered: head.unordered,
                begin,
                end,
                payload,
                message: head.id,
                max_retransmits: head.max_retransmits,
                expires: head.expires,
            };
            s.queued -= len;
            self.total -= len;
            if end {
                s.queue.pop_front();
                self.in_progress = None;
                if !s.queue.is_empty() {
                    self.turns.push_back(stream);
                }
            } else {
                self.in_progress = Some(stream);
            }
            return Some(fragment);
        }
    }

    /// Drop what is left of message `id` on `stream` (abandoned under partial reliability).
    /// Returns the bytes dropped.
    pub(crate) fn discard_rest(&mut self, stream: u16, id: u64) -> usize {
        let Some(s) = self.streams.get_mut(&stream) else {
            return 0;
        };
        let Some(head) = s.queue.front() else {
            return 0;
        };
        if head.id != id || head.offset == 0 {
            return 0;
        }
        let rest = head.data.len() - head.offset;
        s.queue.pop_front();
        s.queued -= rest;
        self.total -= rest;
        if self.in_progress == Some(stream) {
            self.in_progress = None;
            if !s.queue.is_empty() {
                self.turns.push_back(stream);
            }
        }
        rest
    }

    /// The stream was reset: its next message starts again at SSN 0.
    pub(crate) fn reset_ssn(&mut self, stream: u16) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.next_ssn = 0;
            if s.queue.is_empty() {
                self.streams.remove(&stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drain(q: &mut SendQueue, now: Instant, max: usize) -> Vec<Fragment> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        while let Some(f) = q.next_fragment(now, max, &mut expired) {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_message_is_cut_in_order_and_finished_before_another_stream_goes() {
        let now = Instant::now();
        let mut q = SendQueue::default();
        q.push(1, 53, Bytes::from(vec![1; 2500]), false, None, None);
        q.push(2, 53, Bytes::from(vec![2; 10]), false, None, None);
        q.push(1, 53, Bytes::from(vec![3; 10]), false, None, None);
        let f = drain(&mut q, now, 1000);
        let shape: Vec<_> = f
            .iter()
            .map(|f| (f.stream, f.ssn, f.begin, f.end, f.payload.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, true, false, 1000),
                (1, 0, false, false, 1000),
                (1, 0, false, true, 500),
                (2, 0, true, true, 10),
                (1, 1, true, true, 10),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn expired_messages_are_dropped_before_they_start() {
        let now = Instant::now();
        let mut q = SendQueue::default();
        q.push(1, 53, Bytes::from(vec![1; 10]), true, None, Some(now));
        q.push(1, 53, Bytes::from(vec![2; 10]), true, None, None);
        let mut expired = Vec::new();
        let f = q.next_fragment(now, 1000, &mut expired).unwrap();
        assert_eq!(f.payload[0], 2);
        assert_eq!(
            expired,
            vec![Expired {
                stream: 1,
                bytes: 10
            }]
        );
        assert!(q.is_empty());
        let _ = Duration::ZERO;
    }

    #[test]
    fn the_rest_of_an_abandoned_message_is_discarded() {
        let now = Instant::now();
        let mut q = SendQueue::default();
        let id = q.push(4, 53, Bytes::from(vec![1; 3000]), false, Some(0), None);
        q.push(4, 53, Bytes::from(vec![2; 5]), false, None, None);
        let mut expired = Vec::new();
        let first = q.next_fragment(now, 1000, &mut expired).unwrap();
        assert!(first.begin && !first.end);
        assert_eq!(q.discard_rest(4, id), 2000);
        let next = q.next_fragment(now, 1000, &mut expired).unwrap();
        assert_eq!((next.ssn, next.payload.len()), (1, 5));
        assert!(q.is_empty());
    }
}
