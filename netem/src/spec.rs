//! What one direction of a link does to packets, and its text form.
//!
//! A spec is a comma-separated list of `key=value` items; a value with several parts (`ge`,
//! `reorder`) takes the items without `=` that follow it:
//!
//! ```text
//! delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=50ms
//! ge=1%,30%,0%,100%,delay=10ms          (Gilbert-Elliott p, r, h, k)
//! reorder=5%,20ms                        (5 % of the packets held 20 ms more)
//! none                                   (no impairment; so is an empty spec)
//! ```
//!
//! | key | value | meaning |
//! | --- | --- | --- |
//! | `delay` | duration (`us`, `ms`, `s`) | one-way delay added to every packet |
//! | `jitter` | duration | each packet's delay varies uniformly in ±jitter (never below zero); packets stay in order unless `reorder` is set |
//! | `loss` | probability (`1%` or `0.01`) | independent random loss |
//! | `ge` | `p,r[,h[,k]]` probabilities | Gilbert-Elliott bursty loss: `p` good→bad and `r` bad→good per packet, `h` delivery probability in the bad state (default 0), `k` in the good state (default 1) |
//! | `rate` | `bit`, `kbit`, `mbit`, `gbit` per second | bottleneck rate; `unlimited` or `0` for none |
//! | `queue` | duration or bytes (`b`, `kb`, `kib`, `mb`, `mib`) | the bottleneck's queue (tail drop), as the time to drain it at `rate` or in bytes; default [`DEFAULT_QUEUE`] |
//! | `reorder` | `fraction[,extra]` | that fraction of packets is held `extra` (default [`DEFAULT_REORDER_EXTRA`]) longer, so later ones overtake it |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The queue a rate limit gets when the spec names none: 50 ms at the configured rate.
pub const DEFAULT_QUEUE: QueueLimit = QueueLimit::Time(Duration::from_millis(50));
/// How much longer a reordered packet is held when `reorder` names no time.
pub const DEFAULT_REORDER_EXTRA: Duration = Duration::from_millis(10);

/// Everything one direction of a link does to packets. The default does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±`jitter` (clamped at zero extra delay).
    pub jitter: Duration,
    /// Probability that a packet is lost, independently of the others.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// The bottleneck's rate; `None`: no rate limit (and no queue).
    pub rate: Option<Rate>,
    /// The bottleneck's queue (used only with a `rate`).
    pub queue: QueueLimit,
    /// Reordering: a fraction of packets held longer.
    pub reorder: Option<Reorder>,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            gilbert_elliott: None,
            rate: None,
            queue: DEFAULT_QUEUE,
            reorder: None,
        }
    }
}

/// The two-state Gilbert-Elliott loss model, advanced once per packet.
///
/// In the good state a packet is delivered with probability `k`, in the bad state with
/// probability `h`; after each packet the state moves good→bad with probability `p` and
/// bad→good with probability `r`. With `h = 0` and `k = 1` (the defaults) losses come in
/// bursts of mean length `1 / r`, and the long-run loss rate is `p / (p + r)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per packet.
    pub p: f64,
    /// Probability of moving from the bad to the good state, per packet.
    pub r: f64,
    /// Probability that a packet is delivered in the bad state.
    pub h: f64,
    /// Probability that a packet is delivered in the good state.
    pub k: f64,
}

impl GilbertElliott {
    /// The long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return 1.0 - self.k;
        }
        let bad = self.p / (self.p + self.r);
        bad * (1.0 - self.h) + (1.0 - bad) * (1.0 - self.k)
    }
}

/// A rate in bits per second (never zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    bits_per_second: u64,
}

impl Rate {
    /// A rate of `bits_per_second`, or `None` for zero.
    pub fn from_bits_per_second(bits_per_second: u64) -> Option<Rate> {
        (bits_per_second > 0).then_some(Rate { bits_per_second })
    }

    /// Bits per second.
    pub fn bits_per_second(self) -> u64 {
        self.bits_per_second
    }

    /// How long `bytes` take to pass at this rate.
    pub fn transmit_time(self, bytes: usize) -> Duration {
        let nanos = (bytes as u128 * 8 * 1_000_000_000) / u128::from(self.bits_per_second);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many bytes pass in `time` at this rate.
    pub fn bytes_in(self, time: Duration) -> u64 {
        let bytes = time.as_nanos() * u128::from(self.bits_per_second) / 8 / 1_000_000_000;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// How much the bottleneck's queue holds before it drops arriving packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// As long as draining it takes at the rate.
    Time(Duration),
    /// In bytes.
    Bytes(u64),
}

/// A fraction of packets held `extra` longer than the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reorder {
    /// Probability that a packet is held back.
    pub fraction: f64,
    /// How much longer it is held.
    pub extra: Duration,
}

/// Why a spec does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A key this emulator does not know.
    #[error("unknown key `{0}` (known: delay, jitter, loss, ge, rate, queue, reorder; or `none`)")]
    UnknownKey(String),
    /// An item that is neither `key=value` nor a further value of `ge`/`reorder`.
    #[error("`{0}` is not key=value")]
    NotKeyValue(String),
    /// A key given twice.
    #[error("`{0}` is given twice")]
    Duplicate(&'static str),
    /// A key with the wrong number of values.
    #[error("`{key}` takes {expected}, got {got} value(s)")]
    ValueCount {
        /// The key.
        key: &'static str,
        /// What it takes, in words.
        expected: &'static str,
        /// How many it got.
        got: usize,
    },
    /// A value that does not parse as what its key needs.
    #[error("`{key}`: `{value}` is not {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A value that parses but makes no sense.
    #[error("`{key}`: {reason}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// Why, in words.
        reason: &'static str,
    },
    /// A queue without a rate to drain it.
    #[error("`queue` needs a `rate` (without a rate nothing queues)")]
    QueueWithoutRate,
}

impl FromStr for Impairment {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let spec = spec.trim();
        if spec.is_empty() || spec.eq_ignore_ascii_case("none") {
            return Ok(Impairment::default());
        }
        let mut items: Vec<(Key, Vec<&str>)> = Vec::new();
        for item in spec.split(',').map(str::trim) {
            match item.split_once('=') {
                Some((key, value)) => {
                    let key = Key::parse(key.trim())?;
                    if items.iter().any(|(seen, _)| *seen == key) {
                        return Err(SpecError::Duplicate(key.name()));
                    }
                    items.push((key, vec![value.trim()]));
                }
                None => match items.last_mut() {
                    Some((Key::Ge | Key::Reorder, values)) => values.push(item),
                    _ => return Err(SpecError::NotKeyValue(item.to_owned())),
                },
            }
        }

        let mut impairment = Impairment::default();
        let mut queue_given = false;
        for (key, values) in items {
            let name = key.name();
            let one = || match values.as_slice() {
                [value] => Ok(*value),
                _ => Err(SpecError::ValueCount {
                    key: name,
                    expected: "one",
                    got: values.len(),
                }),
            };
            match key {
                Key::Delay => impairment.delay = parse_duration(name, one()?)?,
                Key::Jitter => impairment.jitter = parse_duration(name, one()?)?,
                Key::Loss => impairment.loss = parse_probability(name, one()?)?,
                Key::Rate => impairment.rate = parse_rate(one()?)?,
                Key::Queue => {
                    impairment.queue = parse_queue(one()?)?;
                    queue_given = true;
                }
                Key::Ge => {
                    if !(2..=4).contains(&values.len()) {
                        return Err(SpecError::ValueCount {
                            key: name,
                            expected: "2 to 4 (p,r[,h[,k]])",
                            got: values.len(),
                        });
                    }
                    let mut probabilities = [0.0, 0.0, 0.0, 1.0];
                    for (slot, value) in probabilities.iter_mut().zip(&values) {
                        *slot = parse_probability(name, value)?;
                    }
                    let [p, r, h, k] = probabilities;
                    if r == 0.0 && p > 0.0 {
                        return Err(SpecError::OutOfRange {
                            key: name,
                            reason: "r = 0 never leaves the bad state",
                        });
                    }
                    impairment.gilbert_elliott = Some(GilbertElliott { p, r, h, k });
                }
                Key::Reorder => {
                    let (fraction, extra) = match values.as_slice() {
                        [fraction] => (*fraction, None),
                        [fraction, extra] => (*fraction, Some(*extra)),
                        _ => {
                            return Err(SpecError::ValueCount {
                                key: name,
                                expected: "1 or 2 (fraction[,extra])",
                                got: values.len(),
                            });
                        }
                    };
                    let extra = match extra {
                        Some(extra) => parse_duration(name, extra)?,
                        None => DEFAULT_REORDER_EXTRA,
                    };
                    if extra.is_zero() {
                        return Err(SpecError::OutOfRange {
                            key: name,
                            reason: "a reordered packet must be held more than 0",
                        });
                    }
                    impairment.reorder = Some(Reorder {
                        fraction: parse_probability(name, fraction)?,
                        extra,
                    });
                }
            }
        }
        if queue_given && impairment.rate.is_none() {
            return Err(SpecError::QueueWithoutRate);
        }
        Ok(impairment)
    }
}

impl fmt::Display for Impairment {
    /// The spec in the text form [`FromStr`] reads (`none` for no impairment).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if !self.delay.is_zero() {
            items.push(format!("delay={}", show_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            items.push(format!("jitter={}", show_duration(self.jitter)));
        }
        if self.loss > 0.0 {
            items.push(format!("loss={}", show_percent(self.loss)));
        }
        if let Some(ge) = self.gilbert_elliott {
            items.push(format!(
                "ge={},{},{},{}",
                show_percent(ge.p),
                show_percent(ge.r),
                show_percent(ge.h),
                show_percent(ge.k)
            ));
        }
        if let Some(rate) = self.rate {
            items.push(format!("rate={}", show_rate(rate)));
            items.push(match self.queue {
                QueueLimit::Time(time) => format!("queue={}", show_duration(time)),
                QueueLimit::Bytes(bytes) => format!("queue={bytes}b"),
            });
        }
        if let Some(reorder) = self.reorder {
            items.push(format!(
                "reorder={},{}",
                show_percent(reorder.fraction),
                show_duration(reorder.extra)
            ));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Delay,
    Jitter,
    Loss,
    Ge,
    Rate,
    Queue,
    Reorder,
}

impl Key {
    fn parse(text: &str) -> Result<Key, SpecError> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "delay" => Key::Delay,
            "jitter" => Key::Jitter,
            "loss" => Key::Loss,
            "ge" => Key::Ge,
            "rate" => Key::Rate,
            "queue" => Key::Queue,
            "reorder" => Key::Reorder,
            _ => return Err(SpecError::UnknownKey(text.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::Delay => "delay",
            Key::Jitter => "jitter",
            Key::Loss => "loss",
            Key::Ge => "ge",
            Key::Rate => "rate",
            Key::Queue => "queue",
            Key::Reorder => "reorder",
        }
    }
}

/// `12.5` and its unit suffix (`ms`), lowercased.
fn split_number(text: &str) -> Option<(f64, String)> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..end].parse().ok()?;
    number
        .is_finite()
        .then(|| (number, text[end..].trim().to_ascii_lowercase()))
}

fn parse_duration(key: &'static str, text: &str) -> Result<Duration, SpecError> {
    let bad = || SpecError::BadValue {
        key,
        value: text.to_owned(),
        expected: "a duration like 25ms, 500us or 1.5s",
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let seconds = match unit.as_str() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "" if number == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    if seconds > 3600.0 {
        return Err(SpecError::OutOfRange {
            key,
            reason: "more than an hour",
        });
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_probability(key: &'static str, text: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::BadValue {
        key,
        value: text.to_owned(),
        expected: "a probability like 1%, 0.5% or 0.01",
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let probability = match unit.as_str() {
        "%" => number / 100.0,
        "" => number,
        _ => return Err(bad()),
    };
    if !(0.0..=1.0).contains(&probability) {
        return Err(SpecError::OutOfRange {
            key,
            reason: "a probability must be within 0..=100%",
        });
    }
    Ok(probability)
}

fn parse_rate(text: &str) -> Result<Option<Rate>, SpecError> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let bad = || SpecError::BadValue {
        key: "rate",
        value: text.to_owned(),
        expected: "a rate like 100mbit, 512kbit or 1gbit (bits per second), or unlimited",
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let scale = match unit.as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "" if number == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    let bits = (number * scale).round();
    if bits > 1e12 {
        return Err(SpecError::OutOfRange {
            key: "rate",
            reason: "more than 1000 gbit",
        });
    }
    if bits < 1.0 && number != 0.0 {
        return Err(SpecError::OutOfRange {
            key: "rate",
            reason: "less than 1 bit per second",
        });
    }
    Ok(Rate::from_bits_per_second(bits as u64))
}

fn parse_queue(text: &str) -> Result<QueueLimit, SpecError> {
    let bad = || SpecError::BadValue {
        key: "queue",
        value: text.to_owned(),
        expected: "a time like 50ms or a size like 64kb, 256kib, 1mb (b, kb, kib, mb, mib)",
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let bytes = match unit.as_str() {
        "b" => number,
        "kb" => number * 1e3,
        "kib" => number * 1024.0,
        "mb" => number * 1e6,
        "mib" => number * 1024.0 * 1024.0,
        _ => return parse_duration("queue", text).map(QueueLimit::Time),
    };
    if bytes > 1e10 {
        return Err(SpecError::OutOfRange {
            key: "queue",
            reason: "more than 10 GB",
        });
    }
    Ok(QueueLimit::Bytes(bytes.round() as u64))
}

fn show_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros.is_multiple_of(1000) {
        format!("{}ms", micros / 1000)
    } else {
        format!("{micros}us")
    }
}

fn show_percent(p: f64) -> String {
    format!("{}%", (p * 100.0 * 1e6).round() / 1e6)
}

fn show_rate(rate: Rate) -> String {
    let bits = rate.bits_per_second();
    match bits {
        b if b.is_multiple_of(1_000_000_000) => format!("{}gbit", b / 1_000_000_000),
        b if b.is_multiple_of(1_000_000) => format!("{}mbit", b / 1_000_000),
        b if b.is_multiple_of(1000) => format!("{}kbit", b / 1000),
        b => format!("{b}bit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_spec_parses() {
        let spec: Impairment =
            "delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=50ms,ge=1%,30%,reorder=5%,20ms"
                .parse()
                .unwrap();
        assert_eq!(spec.delay, ms(25));
        assert_eq!(spec.jitter, ms(2));
        assert!((spec.loss - 0.01).abs() < 1e-12);
        assert_eq!(
            spec.rate.map(Rate::bits_per_second),
            Some(100_000_000),
            "{spec:?}"
        );
        assert_eq!(spec.queue, QueueLimit::Time(ms(50)));
        let ge = spec.gilbert_elliott.unwrap();
        assert_eq!((ge.p, ge.r, ge.h, ge.k), (0.01, 0.3, 0.0, 1.0));
        let reorder = spec.reorder.unwrap();
        assert_eq!((reorder.fraction, reorder.extra), (0.05, ms(20)));
    }

    #[test]
    fn empty_and_none_are_no_impairment() {
        for text in ["", " ", "none", "NONE"] {
            assert_eq!(text.parse::<Impairment>().unwrap(), Impairment::default());
        }
        assert_eq!(Impairment::default().to_string(), "none");
    }

    #[test]
    fn units() {
        let spec: Impairment = "delay=1.5s,jitter=500us,loss=0.02,rate=512kbit,queue=64kib"
            .parse()
            .unwrap();
        assert_eq!(spec.delay, ms(1500));
        assert_eq!(spec.jitter, Duration::from_micros(500));
        assert_eq!(spec.loss, 0.02);
        assert_eq!(spec.rate.unwrap().bits_per_second(), 512_000);
        assert_eq!(spec.queue, QueueLimit::Bytes(65536));
        let spec: Impairment = "rate=1gbit,queue=1mb,delay=0".parse().unwrap();
        assert_eq!(spec.queue, QueueLimit::Bytes(1_000_000));
        assert_eq!(spec.delay, Duration::ZERO);
        assert_eq!("rate=unlimited".parse::<Impairment>().unwrap().rate, None);
        assert_eq!("rate=0".parse::<Impairment>().unwrap().rate, None);
        let ge = "ge=2%,25%,10%,99%".parse::<Impairment>().unwrap();
        let ge = ge.gilbert_elliott.unwrap();
        assert_eq!((ge.h, ge.k), (0.1, 0.99));
        assert_eq!(
            "reorder=1%".parse::<Impairment>().unwrap().reorder,
            Some(Reorder {
                fraction: 0.01,
                extra: DEFAULT_REORDER_EXTRA
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=50ms",
            "delay=10ms,ge=1%,30%,0%,100%",
            "rate=20mbit,queue=30000b,reorder=5%,20ms",
            "delay=250us,loss=0.5%",
        ] {
            let spec: Impairment = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<Impairment>().unwrap(), spec);
        }
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        type Check = fn(&SpecError) -> bool;
        let cases: [(&str, Check); 16] = [
            ("delay=25", |e| {
                matches!(e, SpecError::BadValue { key: "delay", .. })
            }),
            ("delay=fast", |e| matches!(e, SpecError::BadValue { .. })),
            ("delay=-5ms", |e| matches!(e, SpecError::BadValue { .. })),
            ("delay=2h", |e| matches!(e, SpecError::BadValue { .. })),
            ("delay=9999s", |e| matches!(e, SpecError::OutOfRange { .. })),
            ("loss=150%", |e| {
                matches!(e, SpecError::OutOfRange { key: "loss", .. })
            }),
            ("loss=2", |e| matches!(e, SpecError::OutOfRange { .. })),
            ("loss=1x", |e| matches!(e, SpecError::BadValue { .. })),
            ("rate=100mbps", |e| {
                matches!(e, SpecError::BadValue { key: "rate", .. })
            }),
            ("bandwidth=1mbit", |e| matches!(e, SpecError::UnknownKey(_))),
            ("delay=1ms,delay=2ms", |e| {
                matches!(e, SpecError::Duplicate("delay"))
            }),
            ("delay=1ms,5ms", |e| matches!(e, SpecError::NotKeyValue(_))),
            ("ge=1%", |e| {
                matches!(e, SpecError::ValueCount { key: "ge", .. })
            }),
            ("ge=1%,0%", |e| {
                matches!(e, SpecError::OutOfRange { key: "ge", .. })
            }),
            ("queue=50ms", |e| matches!(e, SpecError::QueueWithoutRate)),
            ("reorder=5%,0ms", |e| {
                matches!(e, SpecError::OutOfRange { .. })
            }),
        ];
        for (text, check) in cases {
            match text.parse::<Impairment>() {
                Err(error) => {
                    assert!(check(&error), "{text}: {error:?}");
                    assert!(!error.to_string().is_empty());
                }
                Ok(spec) => panic!("{text} parsed as {spec:?}"),
            }
        }
    }

    #[test]
    fn rate_arithmetic() {
        let rate = Rate::from_bits_per_second(100_000_000).unwrap();
        assert_eq!(rate.transmit_time(1250), Duration::from_micros(100));
        assert_eq!(rate.bytes_in(ms(50)), 625_000);
        assert_eq!(Rate::from_bits_per_second(0), None);
    }

    #[test]
    fn gilbert_elliott_mean_loss() {
        let ge = GilbertElliott {
            p: 0.01,
            r: 0.3,
            h: 0.0,
            k: 1.0,
        };
        assert!((ge.mean_loss() - 0.01 / 0.31).abs() < 1e-12);
    }
}
