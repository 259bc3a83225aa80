//! Stream reset bookkeeping (RFC 6525): our outgoing requests and the peer's.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::wire::ReconfigResult;

/// Our request in flight.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingRequest {
    pub(crate) seq: u32,
    pub(crate) streams: Vec<u16>,
    pub(crate) last_tsn: u32,
    pub(crate) sent_at: Instant,
}

/// A peer request that waits for data up to its last TSN.
#[derive(Debug, Clone)]
pub(crate) struct DeferredReset {
    pub(crate) seq: u32,
    pub(crate) last_tsn: u64,
    pub(crate) streams: Vec<u16>,
}

#[derive(Debug)]
pub(crate) struct Reconfig {
    /// Our next request sequence number (starts at our initial TSN).
    pub(crate) next_seq: u32,
    /// Streams the application closed, waiting to be reset.
    pub(crate) pending: BTreeSet<u16>,
    /// Streams being reset: no sends accepted.
    pub(crate) resetting: BTreeSet<u16>,
    pub(crate) outstanding: Option<OutgoingRequest>,
    /// The peer's next expected request sequence number.
    pub(crate) peer_next_seq: u32,
    /// The answer given to the peer's last request (repeated when it retransmits).
    pub(crate) last_answer: Option<(u32, ReconfigResult)>,
    pub(crate) deferred: Option<DeferredReset>,
}

impl Reconfig {
    pub(crate) fn new(my_initial_tsn: u32) -> Reconfig {
        Reconfig {
            next_seq: my_initial_tsn,
            pending: BTreeSet::new(),
            resetting: BTreeSet::new(),
            outstanding: None,
            peer_next_seq: 0,
            last_answer: None,
            deferred: None,
        }
    }

    /// Classify a peer request sequence number.
    pub(crate) fn classify(&self, seq: u32) -> RequestAge {
        if seq == self.peer_next_seq {
            RequestAge::New
        } else if seq == self.peer_next_seq.wrapping_sub(1) {
            RequestAge::Repeat
        } else {
            RequestAge::Bad
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestAge {
    New,
    Repeat,
    Bad,
}
