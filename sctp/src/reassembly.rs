//! Reassembly of fragmented messages and in-order delivery per stream.
//!
//! Fragments of one message carry consecutive TSNs from a B chunk to an E chunk. A complete
//! unordered message is delivered at once; an ordered one waits for its stream's next SSN.
//! FORWARD TSN (RFC 3758) drops fragments of abandoned messages and moves a stream's next SSN
//! past the skipped ones; an incoming stream reset (RFC 6525) restarts a stream at SSN 0.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::tsn::ssn_lt;
use crate::wire::DataChunk;

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The stream it came on.
    pub stream: u16,
    /// Its payload protocol identifier.
    pub ppid: u32,
    /// The message.
    pub data: Bytes,
    /// Whether it was sent unordered.
    pub unordered: bool,
}

#[derive(Debug)]
struct Fragment {
    stream: u16,
    ssn: u16,
    ppid: u32,
    unordered: bool,
    begin: bool,
    end: bool,
    payload: Bytes,
}

#[derive(Debug, Default)]
struct InStream {
    next_ssn: u16,
    /// Complete ordered messages waiting for an earlier SSN.
    ready: HashMap<u16, Message>,
}

/// Why reassembly refused a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReassemblyError {
    /// A message larger than the configured maximum.
    TooLarge { size: usize, max: usize },
}

#[derive(Debug)]
pub(crate) struct Reassembly {
    fragments: BTreeMap<u64, Fragment>,
    streams: HashMap<u16, InStream>,
    /// Bytes held: fragments plus complete ordered messages not deliverable yet.
    held: usize,
    max_message: usize,
}

impl Reassembly {
    pub(crate) fn new(max_message: usize) -> Reassembly {
        Reassembly {
            fragments: BTreeMap::new(),
            streams: HashMap::new(),
            held: 0,
            max_message,
        }
    }

    /// Bytes held.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Add a new (non-duplicate) chunk; complete, deliverable messages go to `out`.
    pub(crate) fn insert(
        &mut self,
        tsn: u64,
        chunk: DataChunk,
        out: &mut VecDeque<Message>,
    ) -> Result<(), ReassemblyError> {
        if chunk.begin && chunk.end {
            if chunk.payload.len() > self.max_message {
                return Err(ReassemblyError::TooLarge {
                    size: chunk.payload.len(),
                    max: self.max_message,
                });
            }
            let message = Message {
                stream: chunk.stream,
                ppid: chunk.ppid,
                data: chunk.payload,
                unordered: chunk.unordered,
            };
            self.complete(message, chunk.ssn, out);
            return Ok(());
        }
        self.held += chunk.payload.len();
        let fragment = Fragment {
            stream: chunk.stream,
            ssn: chunk.ssn,
            ppid: chunk.ppid,
            unordered: chunk.unordered,
            begin: chunk.begin,
            end: chunk.end,
            payload: chunk.payload,
        };
        self.fragments.insert(tsn, fragment);
        let Some((first, last)) = self.complete_run(tsn) else {
            return Ok(());
        };
        let size: usize = self
            .fragments
            .range(first..=last)
            .map(|(_, f)| f.payload.len())
            .sum();
        if size > self.max_message {
            return Err(ReassemblyError::TooLarge {
                size,
                max: self.max_message,
            });
        }
        let mut data = BytesMut::with_capacity(size);
        let mut head = None;
        for t in first..=last {
            if let Some(f) = self.fragments.remove(&t) {
                data.extend_from_slice(&f.payload);
                head.get_or_insert((f.stream, f.ssn, f.ppid, f.unordered));
            }
        }
        self.held -= size;
        let Some((stream, ssn, ppid, unordered)) = head else {
            return Ok(());
        };
        let message = Message {
            stream,
            ppid,
            data: data.freeze(),
            unordered,
        };
        self.complete(message, ssn, out);
        Ok(())
    }

    /// The TSN range of a complete message around `tsn`, if all its fragments are here.
    fn complete_run(&self, tsn: u64) -> Option<(u64, u64)> {
        let this = self.fragments.get(&tsn)?;
        let same = |f: &Fragment| {
            f.stream == this.stream
                && f.unordered == this.unordered
                && (f.unordered || f.ssn == this.ssn)
        };
        let mut first = tsn;
        while !self.fragments.get(&first)?.begin {
            let prev = self.fragments.get(&(first - 1))?;
            if !same(prev) || prev.end {
                return None;
            }
            first -= 1;
        }
        let mut last = tsn;
        while !self.fragments.get(&last)?.end {
            let next = self.fragments.get(&(last + 1))?;
            if !same(next) || next.begin {
                return None;
            }
            last += 1;
        }
        Some((first, last))
    }

    fn complete(&mut self, message: Message, ssn: u16, out: &mut VecDeque<Message>) {
        if message.unordered {
            out.push_back(message);
            return;
        }
        let stream = self.streams.entry(message.stream).or_default();
        if ssn == stream.next_ssn {
            stream.next_ssn = stream.next_ssn.wrapping_add(1);
            out.push_back(message);
            while let Some(m) = stream.ready.remove(&stream.next_ssn) {
                self.held -= m.data.len();
                stream.next_ssn = stream.next_ssn.wrapping_add(1);
                out.push_back(m);
            }
        } else if ssn_lt(stream.next_ssn, ssn) {
            self.held += message.data.len();
            if let Some(old) = stream.ready.insert(ssn, message) {
                self.held -= old.data.len();
            }
        } else {
            tracing::debug!(
                stream = message.stream,
                ssn,
                "stale ordered message dropped"
            );
        }
    }

    /// FORWARD TSN: drop fragments up to `new_cumulative`; skip the listed `(stream, ssn)`s,
    /// delivering what became deliverable.
    pub(crate) fn forward(
        &mut self,
        new_cumulative: u64,
        skipped: &[(u16, u16)],
        out: &mut VecDeque<Message>,
    ) {
        let stale: Vec<u64> = self
            .fragments
            .range(..=new_cumulative)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(f) = self.fragments.remove(&t) {
                self.held -= f.payload.len();
            }
        }
        for &(stream_id, ssn) in skipped {
            let stream = self.streams.entry(stream_id).or_default();
            if ssn_lt(ssn, stream.next_ssn) {
                continue;
            }
            // Deliver the complete messages up to the skipped SSN, in order, then move past it.
            let mut waiting: Vec<u16> = stream
                .ready
                .keys()
                .copied()
                .filter(|s| !ssn_lt(ssn, *s))
                .collect();
            let base = stream.next_ssn;
            waiting.sort_by_key(|s| s.wrapping_sub(base));
            for s in waiting {
                if let Some(m) = stream.ready.remove(&s) {
                    self.held -= m.data.len();
                    out.push_back(m);
                }
            }
            stream.next_ssn = ssn.wrapping_add(1);
            while let Some(m) = stream.ready.remove(&stream.next_ssn) {
                self.held -= m.data.len();
                stream.next_ssn = stream.next_ssn.wrapping_add(1);
                out.push_back(m);
            }
        }
    }

    /// The peer reset its outgoing `stream`: the next message there has SSN 0.
    pub(crate) fn reset_stream(&mut self, stream: u16) {
        if let Some(s) = self.streams.remove(&stream) {
            for m in s.ready.values() {
                self.held -= m.data.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: u16, ssn: u16, begin: bool, end: bool, unordered: bool, b: u8) -> DataChunk {
        DataChunk {
            tsn: 0,
            stream,
            ssn,
            ppid: 53,
            unordered,
            begin,
            end,
            immediate: false,
            payload: Bytes::from(vec![b; 3]),
        }
    }

    #[test]
    fn fragments_in_any_order_make_one_message() {
        let mut r = Reassembly::new(1 << 20);
        let mut out = VecDeque::new();
        r.insert(12, chunk(1, 0, false, true, false, 3), &mut out)
            .unwrap();
        r.insert(10, chunk(1, 0, true, false, false, 1), &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(r.held(), 6);
        r.insert(11, chunk(1, 0, false, false, false, 2), &mut out)
            .unwrap();
        let m = out.pop_front().unwrap();
        assert_eq!(&m.data[..], &[1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn ordered_messages_wait_for_their_turn_unordered_do_not() {
        let mut r = Reassembly::new(1 << 20);
        let mut out = VecDeque::new();
        r.insert(2, chunk(1, 1, true, true, false, 2), &mut out)
            .unwrap();
        r.insert(3, chunk(1, 0, true, true, true, 9), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data[0], 9);
        r.insert(1, chunk(1, 0, true, true, false, 1), &mut out)
            .unwrap();
        let order: Vec<u8> = out.iter().map(|m| m.data[0]).collect();
        assert_eq!(order, vec![9, 1, 2]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn forward_tsn_skips_an_abandoned_ordered_message() {
        let mut r = Reassembly::new(1 << 20);
        let mut out = VecDeque::new();
        // SSN 0 lost in part (only its first fragment came), SSN 1 complete and waiting.
        r.insert(1, chunk(2, 0, true, false, false, 1), &mut out)
            .unwrap();
        r.insert(4, chunk(2, 1, true, true, false, 2), &mut out)
            .unwrap();
        assert!(out.is_empty());
        r.forward(3, &[(2, 0)], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data[0], 2);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_message_over_the_limit_is_refused() {
        let mut r = Reassembly::new(5);
        let mut out = VecDeque::new();
        r.insert(1, chunk(1, 0, true, false, false, 1), &mut out)
            .unwrap();
        let err = r.insert(2, chunk(1, 0, false, true, false, 1), &mut out);
        assert_eq!(err, Err(ReassemblyError::TooLarge { size: 6, max: 5 }));
    }

    #[test]
    fn a_reset_stream_starts_again_at_zero() {
        let mut r = Reassembly::new(1 << 20);
        let mut out = VecDeque::new();
        r.insert(1, chunk(1, 0, true, true, false, 1), &mut out)
            .unwrap();
        r.reset_stream(1);
        r.insert(2, chunk(1, 0, true, true, false, 2), &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
    }
}
