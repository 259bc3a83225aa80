//! A userspace link emulator for the NAT lab: this kernel has no `netem` qdisc, so delay,
//! jitter, loss, bursty loss, a rate limit with a bounded queue and reordering happen here.
//!
//! # Layers
//! - [`spec`]: what one direction does ([`Impairment`]) and its text form
//!   (`delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=50ms`, `ge=p,r,h,k`, `reorder=5%,20ms`).
//! - [`direction`]: the sans-IO model of one direction. `push(now, packet)` decides the
//!   packet's fate (dropped, or due at some time), `poll_timeout()` says when the next packet
//!   is due and `pop_ready(now)` hands it out. Time is an input: no clock, no sockets, so the
//!   unit tests step virtual time and check the statistics (loss rate, burst lengths, delay
//!   distribution, rate, queue drops, reordering). Random choices come from seeded ChaCha
//!   streams, one per kind of choice: the same seed gives the same run.
//! - [`link`]: two independent directions, A to B and B to A.
//! - [`bridge`]: the I/O layer: two TUN devices joined through a [`Link`] by one task.
//!
//! # The run-loop rule
//! After any input (packets read, the timer firing) the driver drains every output of the
//! model — every packet that is due — and then sleeps until the model's next timeout. Packets
//! are read in batches of up to 256 per device per turn, with one clock reading per batch. The
//! timeout is kept by a thread sleeping on the kernel's high-resolution timers (tokio's timer
//! ticks every millisecond), so packets leave within tens of microseconds of their time.
//!
//! # How it sits in a network
//! The emulator replaces the veth pair between a LAN host and its router with two layer-3
//! TUN devices (no ARP, no Ethernet header): it creates both (say `eth0` and `lan`) in the
//! router's namespace and opens them, then the host's end is moved into the host's namespace
//! (`ip link set eth0 netns HOST`); the open file descriptor keeps working after the move.
//! What the host sends on its `eth0` is read from one descriptor, goes through the model and
//! is written into the other, where the router receives it on `lan` as if from the wire (and
//! the other way round). The router's NAT and conntrack see every packet exactly once, on
//! its way in through `lan` or out through it. (Looping packets through a TUN inside the
//! router instead would make conntrack see them twice and break `MASQUERADE`.) When the
//! emulator exits, both devices disappear with its descriptors.
//!
//! `scripts/natlab.sh` does the plumbing (`natlab.sh up --link PROFILE`, `lossy`,
//! `netem-check`).
#![warn(missing_docs)]

pub mod bridge;
pub mod direction;
pub mod link;
mod precise_timer;
pub mod spec;

pub use direction::{Counters, Direction, DropCause, Fate};
pub use link::{Link, Way};
pub use spec::{Impairment, SpecError};
