//! What runs on each data channel of a scenario, in both directions at once, and what it found.
//!
//! The wire conventions are shared with the page (`tests/interop/page.js`):
//! - **bulk** (reliable channels): random binary messages, then one text message
//!   `{"end":{"bytes":N,"sha256":"hex"}}` with what the sender sent. The receiver hashes every
//!   binary message in order and compares at the end.
//! - **datagrams** (unreliable or partially reliable channels): `count` binary messages of
//!   `size` bytes; byte 0..4 is the sequence number (big-endian u32), byte `i` after that is
//!   `(seq + i) mod 256`. The receiver counts intact, corrupt, duplicate and out-of-order ones
//!   and stops when all arrived or after [`DATAGRAM_IDLE`] without one.
//! - **probe** (reliable): one binary message per size in a list, filled like a datagram with
//!   the size as the number, then text `{"probe_end":true}`. The sender records which sends its
//!   stack accepted; the receiver, which sizes arrived intact.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proxim_core::peer::{DataChannel, Payload};
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::progress;

/// A datagram receiver stops after this long without a message.
pub(crate) const DATAGRAM_IDLE: Duration = Duration::from_secs(3);
/// A probe receiver stops after this long without a message.
const PROBE_IDLE: Duration = Duration::from_secs(5);

/// Send `bytes` random bytes in `message_size` messages while receiving the peer's stream;
/// both ends are checked by SHA-256.
pub(crate) async fn bulk(mut channel: DataChannel, bytes: usize, message_size: usize) -> Value {
    let started = Instant::now();
    let sender = channel.sender();
    let label = &channel.label().to_owned();
    let send = async {
        let mut hasher = Sha256::new();
        let mut sent = 0usize;
        // ThreadRng is not Send: the send loop awaits.
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        while sent < bytes {
            let n = message_size.min(bytes - sent);
            let mut buf = vec![0u8; n];
            rng.fill_bytes(&mut buf);
            hasher.update(&buf);
            progress::channel(label, |c| c.send_waiting = true);
            if let Err(e) = sender.send(Payload::Binary(Bytes::from(buf))).await {
                return json!({"bytes": sent, "error": e.to_string()});
            }
            sent += n;
            progress::channel(label, |c| {
                c.send_waiting = false;
                c.sent_bytes += n as u64;
                c.sent_messages += 1;
            });
        }
        let sha = hex::encode(hasher.finalize());
        let end = json!({"end": {"bytes": sent, "sha256": sha}}).to_string();
        let error = sender
            .send(Payload::Text(end))
            .await
            .err()
            .map(|e| e.to_string());
        progress::channel(label, |c| c.send_done = true);
        json!({"bytes": sent, "sha256": sha, "error": error,
               "seconds": started.elapsed().as_secs_f64()})
    };
    let recv = async {
        let mut hasher = Sha256::new();
        let mut received = 0usize;
        let mut messages = 0usize;
        let mut largest = 0usize;
        // The longest wait for a message (from the start, then between messages).
        let mut last = Instant::now();
        let mut max_gap = Duration::ZERO;
        loop {
            let next = channel.recv().await;
            max_gap = max_gap.max(last.elapsed());
            last = Instant::now();
            match next {
                Some(Payload::Binary(data)) => {
                    hasher.update(&data);
                    progress::channel(label, |c| {
                        c.received_bytes += data.len() as u64;
                        c.received_messages += 1;
                    });
                    received += data.len();
                    messages += 1;
                    largest = largest.max(data.len());
                }
                Some(Payload::Text(text)) => {
                    let sha = hex::encode(hasher.finalize());
                    let end: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let claimed = &end["end"];
                    let ok = claimed["bytes"].as_u64() == Some(received as u64)
                        && claimed["sha256"].as_str() == Some(sha.as_str());
                    progress::channel(label, |c| c.receive_done = true);
                    return json!({"bytes": received, "messages": messages,
                        "largest_message": largest, "sha256": sha, "peer_claims": claimed,
                        "ok": ok, "seconds": started.elapsed().as_secs_f64(),
                        "max_gap_ms": max_gap.as_secs_f64() * 1000.0});
                }
                Some(_) => {}
                None => {
                    return json!({"bytes": received, "messages": messages, "ok": false,
                        "error": "channel closed before the end message"});
                }
            }
        }
    };
    let (sent, received) = tokio::join!(send, recv);
    let ok = sent["error"].is_null() && received["ok"] == true;
    json!({"label": channel.label(), "options": options_json(&channel), "sent": sent,
           "received": received, "ok": ok})
}

/// Send `count` numbered datagrams of `size` bytes while counting the peer's.
pub(crate) async fn datagrams(mut channel: DataChannel, count: u32, size: usize) -> Value {
    let sender = channel.sender();
    let label = &channel.label().to_owned();
    let send = async {
        let mut accepted = 0u32;
        let mut error = None;
        for seq in 0..count {
            match sender.send(Payload::Binary(numbered(seq, size))).await {
                Ok(()) => {
                    accepted += 1;
                    progress::channel(label, |c| {
                        c.sent_messages += 1;
                        c.sent_bytes += size as u64;
                    });
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        progress::channel(label, |c| c.send_done = true);
        json!({"messages": accepted, "error": error})
    };
    let recv = async {
        let mut seen = HashSet::new();
        let (mut intact, mut corrupt, mut duplicates, mut reordered) = (0u32, 0u32, 0u32, 0u32);
        let mut last: Option<u32> = None;
        while intact < count {
            let message = match tokio::time::timeout(DATAGRAM_IDLE, channel.recv()).await {
                Ok(Some(Payload::Binary(data))) => data,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            progress::channel(label, |c| {
                c.received_messages += 1;
                c.received_bytes += message.len() as u64;
            });
            let Some(seq) = check_numbered(&message, Some(size)) else {
                corrupt += 1;
                continue;
            };
            if !seen.insert(seq) {
                duplicates += 1;
                continue;
            }
            if last.is_some_and(|l| seq < l) {
                reordered += 1;
            }
            last = Some(last.map_or(seq, |l| l.max(seq)));
            intact += 1;
        }
        progress::channel(label, |c| c.receive_done = true);
        json!({"messages": intact, "corrupt": corrupt, "duplicates": duplicates,
               "reordered": reordered, "ranges": ranges(&seen)})
    };
    let (sent, received) = tokio::join!(send, recv);
    let ok = sent["error"].is_null()
        && received["corrupt"] == 0
        && received["duplicates"] == 0
        && received["messages"].as_u64().is_some_and(|n| n > 0);
    json!({"label": channel.label(), "options": options_json(&channel), "sent": sent,
           "received": received, "ok": ok})
}

/// Send one message of each size (recording which the stack accepted) and record which sizes
/// arrive from the peer.
pub(crate) async fn probe(mut channel: DataChannel, sizes: &[usize]) -> Value {
    let sender = channel.sender();
    let send = async {
        let mut results = Vec::new();
        for &size in sizes {
            let outcome = match sender
                .send(Payload::Binary(numbered(size as u32, size)))
                .await
            {
                Ok(()) => "accepted".to_owned(),
                Err(e) => format!("refused: {e}"),
            };
            results.push(json!({"size": size, "result": outcome}));
        }
        let end = sender
            .send(Payload::Text(json!({"probe_end": true}).to_string()))
            .await;
        json!({"results": results, "end_error": end.err().map(|e| e.to_string())})
    };
    let recv = async {
        let mut sizes_seen = Vec::new();
        let mut corrupt = 0u32;
        let mut ended = false;
        loop {
            match tokio::time::timeout(PROBE_IDLE, channel.recv()).await {
                Ok(Some(Payload::Binary(data))) => match check_numbered(&data, None) {
                    Some(n) if n as usize == data.len() => sizes_seen.push(data.len()),
                    _ => corrupt += 1,
                },
                Ok(Some(Payload::Text(_))) => {
                    ended = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        json!({"sizes": sizes_seen, "corrupt": corrupt, "ended": ended})
    };
    let (sent, received) = tokio::join!(send, recv);
    json!({"label": channel.label(), "options": options_json(&channel), "sent": sent,
           "received": received})
}

/// The received sequence numbers as ranges (`"0-21 40-299"`), to tell losses from a stall.
fn ranges(seen: &HashSet<u32>) -> String {
    let mut seqs: Vec<u32> = seen.iter().copied().collect();
    seqs.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        while i + 1 < seqs.len() && seqs[i + 1] == seqs[i] + 1 {
            i += 1;
        }
        out.push(if seqs[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", seqs[i])
        });
        i += 1;
    }
    out.join(" ")
}

fn options_json(channel: &DataChannel) -> Value {
    let o = channel.options();
    json!({"ordered": o.ordered, "max_retransmits": o.max_retransmits,
           "max_packet_life_time": o.max_packet_life_time})
}

/// A message of `size` bytes (at least 4) numbered `seq`: see the module docs.
fn numbered(seq: u32, size: usize) -> Bytes {
    let mut buf = vec![0u8; size.max(4)];
    buf[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(4) {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    Bytes::from(buf)
}

/// The number of an intact numbered message (of `size` bytes when given).
fn check_numbered(data: &[u8], size: Option<usize>) -> Option<u32> {
    if data.len() < 4 || size.is_some_and(|s| data.len() != s.max(4)) {
        return None;
    }
    let seq = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let intact = data
        .iter()
        .enumerate()
        .skip(4)
        .all(|(i, &b)| b == (seq as usize).wrapping_add(i) as u8);
    intact.then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_messages_round_trip_and_detect_damage() {
        let m = numbered(258, 100);
        assert_eq!(m.len(), 100);
        assert_eq!(check_numbered(&m, Some(100)), Some(258));
        assert_eq!(check_numbered(&m, Some(99)), None);
        let mut damaged = m.to_vec();
        damaged[50] ^= 1;
        assert_eq!(check_numbered(&damaged, None), None);
    }
}
