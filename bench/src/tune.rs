//! `proxim-tune`: the data stack's timers measured, not guessed.
//!
//! ```text
//! cargo run --release -p proxim-bench --bin proxim-tune -- [--quick]
//! ```
//!
//! Everything runs in virtual time over emulated links (seeded, so every run prints the same
//! table): SCTP alone through `proxim_sctp::sim`, and the whole stack — ICE, DTLS, SCTP, the
//! default channel — through `proxim_core::peer::sim`. Each row changes one setting from the
//! defaults; the defaults' row is marked `*`.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use proxim_core::peer::sim::{LinkProfile, SessionSim, Tuning};
use proxim_sctp::sim::{LinkConfig, Sim};
use proxim_sctp::{AssociationState, Config, SendOptions};

#[derive(Debug, Parser)]
#[command(name = "proxim-tune")]
struct Cli {
    /// Fewer seeds and smaller transfers (a smoke run).
    #[arg(long)]
    quick: bool,
}

const MS: Duration = Duration::from_millis(1);

fn main() {
    let cli = Cli::parse();
    let seeds: u64 = if cli.quick { 10 } else { 100 };
    let bulk = if cli.quick { 8 << 20 } else { 32 << 20 };
    sctp_table(bulk);
    println!();
    session_table(seeds);
}

// ---------------------------------------------------------------------------------------------
// SCTP alone
// ---------------------------------------------------------------------------------------------

struct Variant {
    name: String,
    config: Config,
    default: bool,
}

fn variants() -> Vec<Variant> {
    let base = Config::default();
    let mut out = vec![Variant {
        name: format!(
            "defaults (rto_min {} ms, max_backoff {} s, delayed_ack {} ms)",
            base.rto_min.as_millis(),
            base.max_backoff.as_secs_f64(),
            base.delayed_ack.as_millis()
        ),
        config: base.clone(),
        default: true,
    }];
    for ms in [60u64, 200, 400, 1000] {
        let mut c = base.clone();
        c.rto_min = Duration::from_millis(ms);
        out.push(Variant {
            name: format!("rto_min {ms} ms"),
            config: c,
            default: false,
        });
    }
    for s in [0.5f64, 1.0, 5.0, 60.0] {
        let mut c = base.clone();
        c.max_backoff = Duration::from_secs_f64(s);
        out.push(Variant {
            name: format!("max_backoff {s} s"),
            config: c,
            default: false,
        });
    }
    for ms in [5u64, 50, 200] {
        let mut c = base.clone();
        c.delayed_ack = Duration::from_millis(ms);
        out.push(Variant {
            name: format!("delayed_ack {ms} ms"),
            config: c,
            default: false,
        });
    }
    out
}

fn sim(config: &Config, link: LinkConfig, seed: u64) -> Sim {
    let mut s = Sim::new(config.clone(), config.clone(), link.clone(), link, seed);
    s.connect_both();
    s.run(Duration::from_secs(10), |s| {
        s.a.state() == AssociationState::Established && s.b.state() == AssociationState::Established
    });
    s
}

/// Bulk transfer A→B: (MB/s of virtual time, longest gap between deliveries, timeouts, probes,
/// share of DATA chunks sent again, duplicates B received).
fn bulk(
    config: &Config,
    link: LinkConfig,
    bytes: usize,
    seed: u64,
) -> (f64, Duration, u64, u64, f64, u64) {
    let mut s = sim(config, link, seed);
    let n = bytes / 65_536;
    let start = s.now;
    let mut queued = 0;
    while s.side_b.messages.len() < n && s.now - start < Duration::from_secs(600) {
        while queued < n && s.a.buffered_amount(0) < 4 << 20 {
            let _ = s.a.send(
                s.now,
                0,
                53,
                Bytes::from(vec![0; 65_536]),
                SendOptions::default(),
            );
            queued += 1;
        }
        if !s.step() {
            break;
        }
    }
    let secs = (s.now - start).as_secs_f64();
    let mut last = start;
    let mut worst = Duration::ZERO;
    for (at, ..) in &s.side_b.messages {
        worst = worst.max(*at - last);
        last = *at;
    }
    let a = s.a.stats();
    let b = s.b.stats();
    let resent = a.data_chunks_retransmitted as f64 / a.data_chunks_sent.max(1) as f64;
    (
        bytes as f64 / secs / 1e6,
        worst,
        a.timeouts,
        a.probes,
        resent,
        b.duplicates_received,
    )
}

/// An outage of `down` in the middle of a transfer: how long after the path is back the data
/// flows again.
fn outage(config: &Config, down: Duration, seed: u64) -> Duration {
    let mut s = sim(config, LinkConfig::new(25 * MS, 0.0), seed);
    s.outage(Duration::from_secs(2), down, None).resumed_after
}

/// One 1 KB message every 200 ms for 30 s at 5 % loss and 50 ms RTT: delivery latency
/// (p50, p99, max) — the tail-loss case, where only a probe or a timeout recovers.
fn sparse(config: &Config, seed: u64) -> (Duration, Duration, Duration) {
    let mut s = sim(config, LinkConfig::new(25 * MS, 0.05), seed);
    let mut sent_at = Vec::new();
    let start = s.now;
    let mut next = start;
    while s.now - start < Duration::from_secs(30) {
        if s.now >= next {
            let i = sent_at.len() as u32;
            let mut m = vec![0u8; 1000];
            m[..4].copy_from_slice(&i.to_be_bytes());
            let _ =
                s.a.send(s.now, 1, 51, Bytes::from(m), SendOptions::default());
            sent_at.push(s.now);
            next += 200 * MS;
        }
        s.step_until(Some(next));
    }
    s.run(Duration::from_secs(30), |s| {
        s.side_b.messages.len() >= sent_at.len()
    });
    let mut latencies: Vec<Duration> = s
        .side_b
        .messages
        .iter()
        .map(|(at, _, _, data)| {
            let i = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
            *at - sent_at[i]
        })
        .collect();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (
        pick(0.5),
        pick(0.99),
        *latencies.last().unwrap_or(&Duration::ZERO),
    )
}

fn sctp_table(bytes: usize) {
    println!("SCTP (proxim_sctp::sim, virtual time; every row one setting off the defaults)");
    println!(
        "{:<58} {:>22} {:>22} {:>12} {:>22}",
        "SETTING",
        "50ms 2% loss: MB/s",
        "+0-40ms jitter 1%",
        "outage 5-6 s",
        "sparse 5%: p50/p99/max"
    );
    println!(
        "{:<58} {:>22} {:>22} {:>12} {:>22}",
        "", "stall, RTOs, resent", "RTOs, dup at peer", "mean resume", "ms"
    );
    for v in variants() {
        let (mbps, stall, rtos, _probes, resent, _) =
            bulk(&v.config, LinkConfig::new(25 * MS, 0.02), bytes, 1);
        let mut jittery = LinkConfig::new(25 * MS, 0.01);
        jittery.jitter = 40 * MS;
        let (_, _, jrtos, _, _, jdups) = bulk(&v.config, jittery, bytes / 2, 2);
        // The resume time depends on where the outage ends in the backoff schedule: average
        // over outages of 5.0, 5.1, … 5.9 s.
        let resume = (0..10)
            .map(|i| outage(&v.config, Duration::from_millis(5000 + 100 * i), 3 + i))
            .sum::<Duration>()
            / 10;
        let (p50, p99, max) = sparse(&v.config, 4);
        println!(
            "{}{:<57} {:>7.1} {:>5} {:>3} {:>4.1}% {:>13} {:>8} {:>10} ms {:>8}/{}/{}",
            if v.default { "*" } else { " " },
            v.name,
            mbps,
            stall.as_millis(),
            rtos,
            resent * 100.0,
            jrtos,
            jdups,
            resume.as_millis(),
            p50.as_millis(),
            p99.as_millis(),
            max.as_millis(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The whole stack: time to open
// ---------------------------------------------------------------------------------------------

fn session_table(seeds: u64) {
    println!(
        "TIME TO OPEN (proxim_core::peer::sim: ICE + DTLS + SCTP + default channel, from the \
         answer to both sides open; {seeds} seeds each; p50/p99 ms, failures)"
    );
    // Each side also has two host candidates nobody can reach, ranked above the one that
    // works (a LAN address across a NAT, say), as on a real network.
    let profiles = [(50u64, 0.0f64), (50, 0.02), (50, 0.05), (200, 0.05)];
    print!("{:<50}", "SETTING");
    for (rtt, loss) in profiles {
        print!(" {:>20}", format!("{rtt} ms, {}%", loss * 100.0));
    }
    println!();
    let mut rows: Vec<(String, Tuning, bool)> = vec![(
        "defaults (see docs/data-stack.md)".into(),
        Tuning::default(),
        true,
    )];
    for (ms, n) in [(10u64, 1usize), (20, 1), (50, 1), (5, 1), (10, 4), (5, 8)] {
        rows.push((
            format!("ICE pacing {ms} ms, {n} check(s) per round"),
            Tuning {
                ice_pacing: Some(Duration::from_millis(ms)),
                ice_checks_per_round: Some(n),
                ..Tuning::default()
            },
            false,
        ));
    }
    for ms in [25u64, 100, 200] {
        rows.push((
            format!("ICE check RTO {ms} ms"),
            Tuning {
                ice_check_rto: Some(Duration::from_millis(ms)),
                ..Tuning::default()
            },
            false,
        ));
    }
    for ms in [50u64, 100, 150, 300, 1000] {
        rows.push((
            format!("DTLS first retransmission fixed {ms} ms"),
            Tuning {
                dtls_interval: Some(Duration::from_millis(ms)),
                ..Tuning::default()
            },
            false,
        ));
    }
    for ms in [300u64, 1000, 3000] {
        rows.push((
            format!("SCTP handshake RTO fixed {ms} ms (no ICE RTT)"),
            Tuning {
                sctp_rto_initial: Some(Duration::from_millis(ms)),
                sctp_no_rtt_hint: true,
                ..Tuning::default()
            },
            false,
        ));
    }
    for (name, tuning, default) in rows {
        print!("{}{:<49}", if default { "*" } else { " " }, name);
        for (rtt, loss) in profiles {
            let mut opens = Vec::new();
            let mut fails = 0;
            for seed in 0..seeds {
                let mut profile = LinkProfile::new(Duration::from_millis(rtt), loss);
                profile.unreachable_candidates = 2;
                let mut sim = SessionSim::with_tuning(profile, seed, &tuning);
                match sim.run_until_open(Duration::from_secs(30)) {
                    Ok(d) => opens.push(d.as_millis()),
                    Err(_) => fails += 1,
                }
            }
            opens.sort_unstable();
            let pick = |q: f64| {
                opens
                    .get(((opens.len().max(1) - 1) as f64 * q) as usize)
                    .copied()
                    .unwrap_or(0)
            };
            print!(
                " {:>20}",
                format!(
                    "{}/{} {}",
                    pick(0.5),
                    pick(0.99),
                    if fails > 0 {
                        format!("({fails} fail)")
                    } else {
                        String::new()
                    }
                )
            );
        }
        println!();
    }
}
