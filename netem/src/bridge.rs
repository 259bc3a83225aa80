//! The I/O layer: two TUN devices joined through a [`Link`].
//!
//! One task on a current-thread runtime owns both devices and the link. After any input (a
//! packet read, a timer) it hands the link everything that can be read without blocking,
//! then writes out every packet that is due, and sleeps until the link's next deadline.
//! The deadline is kept by a `PreciseTimer` thread rather than tokio's timer (1 ms ticks),
//! so packets leave within tens of microseconds of their due time on an idle machine.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_tun::Tun;

use crate::direction::{Counters, Fate};
use crate::link::{Link, Way};
use crate::precise_timer::PreciseTimer;

/// Largest packet read from a device (a TUN device hands out at most its MTU, plus slack).
const BUFFER_BYTES: usize = 65_536;
/// Packets read from one device before the other gets its turn.
const READ_BATCH: usize = 256;

/// Why the bridge could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A TUN device could not be created or opened.
    #[error(
        "cannot create TUN device {name}: {source} (needs root or CAP_NET_ADMIN and /dev/net/tun)"
    )]
    CreateDevice {
        /// The device name asked for.
        name: String,
        /// What failed.
        source: tokio_tun::Error,
    },
    /// The timer's thread could not start.
    #[error("cannot start the timer thread: {0}")]
    Timer(std::io::Error),
    /// Reading a device failed.
    #[error("reading {name}: {source}")]
    Read {
        /// The device.
        name: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Counts of one direction: the link's, plus writes the device refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WayReport {
    /// The link's counters.
    pub link: Counters,
    /// Packets the link delivered but the output device did not take.
    pub write_errors: u64,
}

/// Both directions' counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// From device A to device B.
    pub a_to_b: WayReport,
    /// From device B to device A.
    pub b_to_a: WayReport,
}

impl Report {
    /// One direction's counts.
    pub fn way(&self, way: Way) -> &WayReport {
        match way {
            Way::AToB => &self.a_to_b,
            Way::BToA => &self.b_to_a,
        }
    }

    /// The counts as a JSON object (`a_to_b`, `b_to_a`).
    pub fn to_json(&self) -> serde_json::Value {
        let way = |w: &WayReport| {
            serde_json::json!({
                "packets_in": w.link.packets_in,
                "bytes_in": w.link.bytes_in,
                "packets_out": w.link.packets_out,
                "bytes_out": w.link.bytes_out,
                "dropped_loss": w.link.dropped_loss,
                "dropped_burst": w.link.dropped_burst,
                "dropped_queue": w.link.dropped_queue,
                "dropped_overflow": w.link.dropped_overflow,
                "write_errors": w.write_errors,
                "reordered": w.link.reordered,
            })
        };
        serde_json::json!({ "a_to_b": way(&self.a_to_b), "b_to_a": way(&self.b_to_a) })
    }

    /// One line per direction, for logs.
    pub fn describe(&self, way: Way) -> String {
        let w = self.way(way);
        let c = &w.link;
        format!(
            "{}: in {} pkts / {} B, out {} pkts / {} B, dropped {} (loss {}, burst {}, queue {}, overflow {}, write {}), reordered {}",
            way.name(),
            c.packets_in,
            c.bytes_in,
            c.packets_out,
            c.bytes_out,
            c.dropped() + w.write_errors,
            c.dropped_loss,
            c.dropped_burst,
            c.dropped_queue,
            c.dropped_overflow,
            w.write_errors,
            c.reordered
        )
    }
}

/// Create (or attach to) the TUN device `name`: layer 3, no packet-info header, up.
pub fn open_tun(name: &str, mtu: u16) -> Result<Tun, BridgeError> {
    Tun::builder()
        .name(name)
        .mtu(i32::from(mtu))
        .up()
        .build()
        .and_then(|mut tuns| {
            tuns.pop()
                .ok_or_else(|| tokio_tun::Error::from(std::io::Error::other("no queue was opened")))
        })
        .map_err(|source| BridgeError::CreateDevice {
            name: name.to_owned(),
            source,
        })
}

/// Move packets between `a` and `b` through `link` until `shutdown` completes; log the counts
/// every `stats_interval` (if any). Returns the final counts.
pub async fn run(
    mut link: Link,
    a: &Tun,
    b: &Tun,
    stats_interval: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, BridgeError> {
    let mut buf_a = vec![0u8; BUFFER_BYTES];
    let mut buf_b = vec![0u8; BUFFER_BYTES];
    let mut write_errors = [0u64; 2];
    let timer = PreciseTimer::start().map_err(BridgeError::Timer)?;
    tokio::pin!(shutdown);
    // Without an interval the stats branch is disabled; the interval itself is then unused.
    let every = stats_interval.unwrap_or(Duration::from_secs(3600));
    let mut stats = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let device = |way: Way| match way {
        Way::AToB => b,
        Way::BToA => a,
    };

    loop {
        // Write out everything that is due, then sleep until the next deadline.
        let now = Instant::now();
        while let Some((way, packet)) = link.pop_ready(now) {
            if device(way).try_send(&packet).is_err() {
                write_errors[way.index()] += 1;
            }
        }
        let deadline = link.poll_timeout();
        if let Some(deadline) = deadline {
            timer.fire_at(deadline);
        }

        tokio::select! {
            biased;
            () = &mut shutdown => break,
            read = a.recv(&mut buf_a) => {
                let n = read.map_err(|source| read_error(a, source))?;
                take(&mut link, Way::AToB, a, &mut buf_a, n)?;
            }
            read = b.recv(&mut buf_b) => {
                let n = read.map_err(|source| read_error(b, source))?;
                take(&mut link, Way::BToA, b, &mut buf_b, n)?;
            }
            () = timer.fired(), if deadline.is_some() => {}
            _ = stats.tick(), if stats_interval.is_some() => {
                let report = report_of(&link, write_errors);
                for way in Way::BOTH {
                    tracing::info!("{}", report.describe(way));
                }
            }
        }
    }
    Ok(report_of(&link, write_errors))
}

/// Push the packet just read (`n` bytes in `buf`) and whatever else `device` has ready, up to
/// a batch.
fn take(
    link: &mut Link,
    way: Way,
    device: &Tun,
    buf: &mut [u8],
    first: usize,
) -> Result<(), BridgeError> {
    let now = Instant::now();
    let mut n = first;
    for _ in 0..READ_BATCH {
        if let Fate::Dropped(cause) = link.push(now, way, buf[..n].to_vec()) {
            tracing::trace!(way = way.name(), ?cause, bytes = n, "dropped");
        }
        n = match device.try_recv(buf) {
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(source) => return Err(read_error(device, source)),
        };
    }
    Ok(())
}

fn read_error(device: &Tun, source: std::io::Error) -> BridgeError {
    BridgeError::Read {
        name: device.name().to_owned(),
        source,
    }
}

fn report_of(link: &Link, write_errors: [u64; 2]) -> Report {
    let way = |w: Way| WayReport {
        link: link.counters(w),
        write_errors: write_errors[w.index()],
    };
    Report {
        a_to_b: way(Way::AToB),
        b_to_a: way(Way::BToA),
    }
}
