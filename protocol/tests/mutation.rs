//! Deterministic mutation fuzzing of every decoder, on stable Rust, with a fixed budget.
//!
//! Each test starts from the seed corpus in `fuzz/corpus/<target>/` (the golden frames), makes
//! `PROXIM_MUTATION_CASES` mutants (default 5000 per decoder) and checks every invariant of
//! `support/invariants.rs` on each: no panic, successful decodes round-trip, errors map to an
//! [`ErrorCode`](proxim_protocol::ErrorCode), oversized frames are `TooLarge`.
//!
//! Mutations: bit flips, interesting bytes, inserted tokens, deleted, duplicated and truncated
//! spans, splices of two inputs; for JSON frames also values swapped for other types, huge and
//! boundary numbers, strings near every length limit, unicode edge cases, other `type`/`kind`
//! tags, removed, unknown and duplicated keys, deep nesting and frames around the size limit.
//! Mutants that decode join a small pool that later mutants start from.
//!
//! The run is a pure function of the seed (`PROXIM_MUTATION_SEED`, default fixed): a failure
//! prints the seed, the case and the command that replays it, and writes the input to a file.
//! `cargo fuzz` (`fuzz/`) does the same with coverage guidance, on nightly.

#[path = "support/invariants.rs"]
pub mod invariants;

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use invariants::{Outcome, clip};
use proxim_protocol::{MAX_FRAME_BYTES, MAX_SDP_BYTES, MAX_TEXT_CHARS};
use serde_json::Value;

/// Mutants per decoder when `PROXIM_MUTATION_CASES` is unset.
const DEFAULT_CASES: u64 = 5000;

/// The seed when `PROXIM_MUTATION_SEED` is unset ("PROXIM" in ASCII).
const DEFAULT_SEED: u64 = 0x5052_4f58_494d;

#[test]
fn client_message() {
    run(Target {
        name: "client_message",
        json: true,
        tokens: JSON_TOKENS,
        check: |input| invariants::check_client_frame(input).map(|o| vec![o]),
    });
}

#[test]
fn server_message() {
    run(Target {
        name: "server_message",
        json: true,
        tokens: JSON_TOKENS,
        check: |input| invariants::check_server_frame(input).map(|o| vec![o]),
    });
}

#[test]
fn ice_url() {
    run(Target {
        name: "ice_url",
        json: false,
        tokens: ICE_TOKENS,
        check: |input| invariants::check_ice_url(input).map(|o| vec![o]),
    });
}

#[test]
fn routing_code() {
    run(Target {
        name: "routing_code",
        json: false,
        tokens: VALUE_TOKENS,
        check: invariants::check_value_strings,
    });
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// One decoder under test: its seed corpus is `fuzz/corpus/<name>/`.
struct Target {
    name: &'static str,
    /// Whether inputs are JSON frames (enables the structural mutations and the pool).
    json: bool,
    /// Tokens worth inserting.
    tokens: &'static [&'static str],
    check: fn(&str) -> Result<Vec<Outcome>, String>,
}

fn run(target: Target) {
    let cases = env_u64("PROXIM_MUTATION_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("PROXIM_MUTATION_SEED").unwrap_or(DEFAULT_SEED);
    let seeds = seed_corpus(target.name);
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{}", target.name);
    // Each decoder gets its own stream, so adding a test does not change the others' inputs.
    let stream = seed ^ fnv1a(target.name.as_bytes());
    let mut mutator = Mutator::new(stream, seeds.clone(), target.tokens, target.json);

    let started = Instant::now();
    let mut tally: BTreeMap<Outcome, u64> = BTreeMap::new();
    // The seeds first, unmutated: they must pass too.
    let inputs = seeds.into_iter().map(Some).chain(std::iter::repeat(None));
    for (case, seed_input) in (0..cases).zip(inputs) {
        let input = seed_input.unwrap_or_else(|| mutator.mutant());
        let result = catch_unwind(AssertUnwindSafe(|| (target.check)(&input)));
        let outcomes = match result {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(violation)) => fail(&target, seed, case, &input, &violation),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                fail(&target, seed, case, &input, &format!("panic: {message}"))
            }
        };
        if is_interesting(&outcomes) && input.len() <= POOL_MAX_INPUT {
            mutator.keep(input);
        }
        for outcome in outcomes {
            *tally.entry(outcome).or_default() += 1;
        }
    }

    let decoded: BTreeMap<_, _> = tally
        .iter()
        .filter_map(|(o, n)| match o {
            Outcome::Decoded(kind) => Some((*kind, *n)),
            Outcome::Refused(_) => None,
        })
        .collect();
    let refused: BTreeMap<_, _> = tally
        .iter()
        .filter_map(|(o, n)| match o {
            Outcome::Refused(why) => Some((*why, *n)),
            Outcome::Decoded(_) => None,
        })
        .collect();
    // Straight to stderr, past the test harness's capture: CI logs show what ran.
    let _ = writeln!(
        std::io::stderr(),
        "mutation {}: {cases} cases in {:.1} s (seed {seed:#x}); decoded {decoded:?}; refused {refused:?}",
        target.name,
        started.elapsed().as_secs_f64(),
    );
    // A mutator that only makes garbage (or only valid input) tests little.
    if cases >= 1000 {
        assert!(
            !decoded.is_empty() && !refused.is_empty(),
            "{}: the mutants should both decode and fail",
            target.name
        );
    }
}

/// Whether an input is worth mutating further: something stricter than free text took it.
fn is_interesting(outcomes: &[Outcome]) -> bool {
    outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Decoded(kind) if *kind != "short_text"))
}

fn fail(target: &Target, seed: u64, case: u64, input: &str, violation: &str) -> ! {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("mutation-{}-case{case}.txt", target.name));
    let saved = match std::fs::write(&file, input) {
        Ok(()) => format!("input saved to {}", file.display()),
        Err(e) => format!("input not saved: {e}"),
    };
    panic!(
        "mutation {name}: invariant violated at case {case} (seed {seed:#x})\n  {violation}\n  \
         input: {input:?}\n  {saved}\n  replay: PROXIM_MUTATION_SEED={seed:#x} \
         PROXIM_MUTATION_CASES={cases} cargo test -p proxim-protocol --test mutation {name}",
        name = target.name,
        input = clip(input),
        cases = case + 1,
    );
}

/// The files of `fuzz/corpus/<target>/`, sorted by name.
fn seed_corpus(target: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("seed file")).into_owned())
        .collect()
}

/// A decimal or `0x` hexadecimal number from the environment.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim().replace('_', "");
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// The mutator
// ---------------------------------------------------------------------------------------------

/// Most pool entries kept; a full pool replaces a random entry.
const POOL_SIZE: usize = 256;

/// Longest input the pool keeps: long inputs are slow to check in debug builds, and the
/// mutations make fresh ones near every limit anyway.
const POOL_MAX_INPUT: usize = 16 * 1024;

/// Tokens for JSON frames: literals, boundary numbers, escapes, structure, tags.
const JSON_TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e309",
    "65535",
    "65536",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "{}",
    "[]",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\\u0000",
    "\\ud83e\\udd80",
    "\\\"",
    "\\\\",
    ",",
    ":",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\"type\"",
    "\"kind\"",
    "\"type\":\"hello\",",
    "\"type\":\"signal\",",
    "\"auth\":\"c2VjcmV0\",",
    "\"sneaky\":1,",
    " ",
    "\t",
    "\r\n",
    "é",
    "\u{2028}",
    "\u{feff}",
    "\u{10ffff}",
    "🦀",
    "e\u{301}",
];

/// Tokens for ICE URLs.
const ICE_TOKENS: &[&str] = &[
    "stun:",
    "stuns:",
    "turn:",
    "TURNS:",
    "//",
    ":",
    "[",
    "]",
    "[::1]",
    "::",
    "?",
    "?transport=tcp",
    "?transport=udp",
    "?TRANSPORT=TCP",
    "&",
    "=",
    "0",
    "+1",
    "65535",
    "65536",
    "99999999999999999999",
    "%20",
    "@",
    "user:pass@",
    ".",
    "-",
    "_",
    " ",
    "é",
    "\u{0}",
    "\u{2028}",
];

/// Tokens for codes, ids, names, payloads, SDPs, candidates and texts.
const VALUE_TOKENS: &[&str] = &[
    "-",
    " ",
    "\t",
    "\n",
    "\u{3000}",
    "\u{a0}",
    "\u{85}",
    "k",
    "K",
    "0",
    "O",
    "1",
    "I",
    "L",
    "U",
    "ı",
    "ß",
    "ﬀ",
    "_",
    "=",
    "+",
    "/",
    "v=0",
    "candidate:",
    "\r\n",
    "\u{0}",
    "\u{7}",
    "\u{7f}",
    "\u{200b}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\u{10ffff}",
    "🦀",
    "e\u{301}",
    "0123456789abcdef",
    "0123456789ABCDEF",
];

/// Tags that are none of the protocol's: empty, wrong case, padded, with a NUL, unknown.
const BOGUS_TAGS: &[&str] = &[
    "",
    "HELLO",
    "hello ",
    "ping\u{0}",
    "Signal",
    "launch_missiles",
];

/// Message and signal tags, known and not.
fn tags() -> Vec<&'static str> {
    [
        invariants::CLIENT_KINDS,
        invariants::SERVER_KINDS,
        invariants::SIGNAL_KINDS,
        BOGUS_TAGS,
    ]
    .concat()
}

/// Field names of the protocol, for unknown-key and duplicate-key mutations.
const KEYS: &[&str] = &[
    "type",
    "kind",
    "version",
    "client",
    "seq",
    "session",
    "code",
    "auth",
    "device_id",
    "device_name",
    "desktop",
    "accept",
    "signal",
    "sdp",
    "candidate",
    "sdp_mid",
    "sdp_mline_index",
    "payload",
    "reason",
    "message",
    "outcome",
    "peer",
    "expires_in_ms",
    "ice_servers",
    "urls",
    "username",
    "credential",
    "connection_id",
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "Type",
    "",
];

/// Raw numbers that `serde_json::Value` cannot hold or that sit on a type's boundary.
const RAW_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.0",
    "1.0",
    "1e2",
    "1e309",
    "-1e309",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "00",
    "01",
];

/// Lengths around the protocol's limits (in characters; fills may be multibyte). The SDP limit
/// is in [`SDP_LENGTHS`]: such strings are slow to check in debug builds, so they come rarer.
const LENGTHS: &[usize] = &[
    0,
    1,
    3,
    4,
    5,
    15,
    16,
    17,
    31,
    32,
    33,
    63,
    64,
    65,
    MAX_TEXT_CHARS - 1,
    MAX_TEXT_CHARS,
    MAX_TEXT_CHARS + 1,
    1023,
    1024,
    1025,
    8191,
    8192,
    8193,
];

/// Lengths around [`MAX_SDP_BYTES`].
const SDP_LENGTHS: &[usize] = &[MAX_SDP_BYTES - 1, MAX_SDP_BYTES, MAX_SDP_BYTES + 1];

/// What long strings are made of.
const FILLS: &[&str] = &["a", "A", "7", "-", "é", "🦀", "\u{7}", "\u{0}", "\n", " "];

/// Strings that trip up text handling.
const UNICODE_EDGES: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{1f}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{ad}",
    "\u{200b}",
    "\u{200d}",
    "\u{2028}",
    "\u{2029}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\u{ffff}",
    "\u{10ffff}",
    "e\u{301}",
    "\u{301}",
    "🦀",
    "👩‍👩‍👧",
    "Ａｎａ",
    "ǅ",
    "İ",
    "ı",
    "ß",
    "K7P2QX\u{0}",
    "k7p2qx",
    "v=0",
    "candidate:",
    "c2VjcmV0",
    "0123456789abcdef0123456789abcdef",
    "0123456789ABCDEF0123456789ABCDEF",
];

/// Marks a string that is replaced by raw JSON text after serialization.
const RAW_MARK: char = '\u{1}';

struct Mutator {
    rng: Rng,
    seeds: Vec<String>,
    pool: Vec<String>,
    tokens: &'static [&'static str],
    /// Message and signal tags, known and not ([`tags`]).
    tags: Vec<&'static str>,
    json: bool,
}

impl Mutator {
    fn new(seed: u64, seeds: Vec<String>, tokens: &'static [&'static str], json: bool) -> Self {
        Self {
            rng: Rng(seed),
            seeds,
            pool: Vec::new(),
            tokens,
            tags: tags(),
            json,
        }
    }

    /// Remember an input that decoded, to mutate it further later.
    fn keep(&mut self, input: String) {
        if self.pool.len() < POOL_SIZE {
            self.pool.push(input);
        } else {
            let slot = self.rng.below(POOL_SIZE);
            self.pool[slot] = input;
        }
    }

    /// A new input: a seed or a pool entry, mutated one to four times.
    fn mutant(&mut self) -> String {
        let mut input = self.base().to_owned();
        // One mutation half the time, two a quarter, and so on up to four.
        let rounds = 1 + (self.rng.next_u64() | 1 << 3).trailing_zeros();
        for _ in 0..rounds {
            input = self.mutate(input);
        }
        input
    }

    fn base(&mut self) -> &str {
        if !self.pool.is_empty() && self.rng.chance(1, 3) {
            let i = self.rng.below(self.pool.len());
            &self.pool[i]
        } else {
            let i = self.rng.below(self.seeds.len());
            &self.seeds[i]
        }
    }

    fn mutate(&mut self, input: String) -> String {
        if self.json
            && self.rng.chance(2, 3)
            && let Ok(value) = serde_json::from_str::<Value>(&input)
        {
            return self.mutate_json(value);
        }
        match self.rng.below(9) {
            0 => self.flip_bit(input),
            1 => self.interesting_byte(input),
            2 | 3 => self.insert_token(input),
            4 => self.delete_span(input),
            5 => self.duplicate_span(input),
            6 => self.truncate(input),
            7 => self.splice(input),
            _ => self.long_run(input),
        }
    }

    // Byte- and text-level mutations. Byte edits may break UTF-8: the result is read lossily,
    // as the fuzz targets read theirs.

    fn flip_bit(&mut self, input: String) -> String {
        let mut bytes = input.into_bytes();
        if bytes.is_empty() {
            return String::new();
        }
        let i = self.rng.below(bytes.len());
        bytes[i] ^= 1 << self.rng.below(8);
        lossy(bytes)
    }

    fn interesting_byte(&mut self, input: String) -> String {
        const BYTES: &[u8] = b"\"\\{}[]:,09-e.+ \0\x7f\x80\xffnt";
        let mut bytes = input.into_bytes();
        let byte = *self.rng.pick(BYTES);
        if bytes.is_empty() {
            bytes.push(byte);
        } else {
            let i = self.rng.below(bytes.len());
            bytes[i] = byte;
        }
        lossy(bytes)
    }

    fn insert_token(&mut self, mut input: String) -> String {
        let at = self.char_boundary(&input);
        let token = *self.rng.pick(self.tokens);
        input.insert_str(at, token);
        input
    }

    fn delete_span(&mut self, mut input: String) -> String {
        let (a, b) = self.span(&input);
        input.replace_range(a..b, "");
        input
    }

    fn duplicate_span(&mut self, mut input: String) -> String {
        let (a, b) = self.span(&input);
        let copy = input[a..b].to_owned();
        let at = self.char_boundary(&input);
        input.insert_str(at, &copy);
        input
    }

    fn truncate(&mut self, mut input: String) -> String {
        let at = self.char_boundary(&input);
        input.truncate(at);
        input
    }

    /// The start of this input and the end of another.
    fn splice(&mut self, input: String) -> String {
        let other = self.base().to_owned();
        let cut_here = self.char_boundary(&input);
        let cut_there = self.char_boundary(&other);
        format!("{}{}", &input[..cut_here], &other[cut_there..])
    }

    /// A run of one token, long enough to cross a length limit.
    fn long_run(&mut self, mut input: String) -> String {
        let at = self.char_boundary(&input);
        let fill = *self.rng.pick(FILLS);
        let len = self.length();
        input.insert_str(at, &fill.repeat(len));
        input
    }

    // Structural mutations of a frame that is valid JSON.

    fn mutate_json(&mut self, mut value: Value) -> String {
        let mut raw = Vec::new();
        match self.rng.below(12) {
            0 => {
                let other = self.other_type(&mut raw);
                *self.node(&mut value) = other;
            }
            1 => {
                let number = (*self.rng.pick(RAW_NUMBERS)).to_owned();
                *self.node(&mut value) = mark_raw(&mut raw, number);
            }
            2 => {
                let long = self.long_string(&value);
                *self.string_node(&mut value) = Value::String(long);
            }
            3 => {
                let edge = (*self.rng.pick(UNICODE_EDGES)).to_owned();
                let node = self.string_node(&mut value);
                *node = match (node.as_str(), self.rng.below(3)) {
                    (Some(s), 0) => Value::String(format!("{s}{edge}")),
                    (Some(s), 1) => Value::String(format!("{edge}{s}")),
                    _ => Value::String(edge),
                };
            }
            4 => {
                let tag = (*self.rng.pick(&self.tags)).to_owned();
                let key = if self.rng.chance(1, 3) {
                    "kind"
                } else {
                    "type"
                };
                if let Some(object) = self.object_with(&mut value, key) {
                    object.insert(key.to_owned(), Value::String(tag));
                }
            }
            5 => {
                if let Some(object) = self.object(&mut value)
                    && !object.is_empty()
                {
                    let i = self.rng.below(object.len());
                    let key = object.keys().nth(i).cloned().unwrap_or_default();
                    object.remove(&key);
                }
            }
            6 => {
                let key = (*self.rng.pick(KEYS)).to_owned();
                let other = self.other_type(&mut raw);
                if let Some(object) = self.object(&mut value) {
                    object.insert(key, other);
                }
            }
            7 => {
                let depth = *self.rng.pick(&[16, 127, 128, 129, 200, 1000]);
                let node = self.node(&mut value);
                *node = self.nested(node.take(), depth);
            }
            8 => {
                let a = self.node(&mut value).clone();
                let b = std::mem::replace(self.node(&mut value), a);
                *self.node(&mut value) = b;
            }
            9 => return self.duplicate_key(&value),
            10 => return self.around_frame_limit(&value),
            _ => {
                let other = self.other_type(&mut raw);
                let key = (*self.rng.pick(KEYS)).to_owned();
                match self.node(&mut value) {
                    Value::Array(items) => items.push(other),
                    Value::Object(object) => drop(object.insert(key, other)),
                    leaf => *leaf = Value::Array(vec![leaf.take(), other]),
                }
            }
        }
        unmark_raw(&value.to_string(), &raw)
    }

    /// A random node of the tree (the root included).
    fn node<'v>(&mut self, value: &'v mut Value) -> &'v mut Value {
        let mut node = value;
        loop {
            let children = match node {
                Value::Object(o) => o.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if children == 0 || self.rng.chance(1, 3) {
                return node;
            }
            let i = self.rng.below(children);
            node = match node {
                Value::Object(o) => o.values_mut().nth(i).expect("child"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("a leaf has no children"),
            };
        }
    }

    /// A random string node, or a random node when there is none on the way.
    fn string_node<'v>(&mut self, value: &'v mut Value) -> &'v mut Value {
        let mut node = value;
        loop {
            let strings: Vec<usize> = match &*node {
                Value::Object(o) => o.values().enumerate().filter(|(_, v)| has_string(v)),
                Value::Array(_) | Value::Null | Value::Bool(_) | Value::Number(_) => {
                    return node;
                }
                Value::String(_) => return node,
            }
            .map(|(i, _)| i)
            .collect();
            if strings.is_empty() {
                return node;
            }
            let i = *self.rng.pick(&strings);
            node = match node {
                Value::Object(o) => o.values_mut().nth(i).expect("child"),
                _ => unreachable!("only objects are walked"),
            };
        }
    }

    /// A random object of the tree that has `key`, or the root object.
    fn object_with<'v>(
        &mut self,
        value: &'v mut Value,
        key: &str,
    ) -> Option<&'v mut serde_json::Map<String, Value>> {
        let nested_has_key = value
            .as_object()
            .and_then(|o| o.values().find(|v| v.get(key).is_some()))
            .is_some();
        if nested_has_key && (value.get(key).is_none() || self.rng.chance(1, 2)) {
            return value
                .as_object_mut()?
                .values_mut()
                .find(|v| v.get(key).is_some())?
                .as_object_mut();
        }
        value.as_object_mut()
    }

    /// A random object of the tree.
    fn object<'v>(
        &mut self,
        value: &'v mut Value,
    ) -> Option<&'v mut serde_json::Map<String, Value>> {
        if self.rng.chance(1, 2) {
            return value.as_object_mut();
        }
        let node = self.node(value);
        match node {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// A value of some type, often a surprising one.
    fn other_type(&mut self, raw: &mut Vec<String>) -> Value {
        match self.rng.below(9) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.chance(1, 2)),
            2 => Value::from(self.rng.next_u64() >> self.rng.below(64)),
            3 => Value::from(-(self.rng.below(1000) as i64)),
            4 => mark_raw(raw, (*self.rng.pick(RAW_NUMBERS)).to_owned()),
            5 => Value::String((*self.rng.pick(UNICODE_EDGES)).to_owned()),
            6 => Value::Array(vec![Value::Null]),
            7 => Value::Object(serde_json::Map::new()),
            _ => Value::String((*self.rng.pick(&self.tags)).to_owned()),
        }
    }

    /// A string near a length limit, keeping a prefix that some values need.
    fn long_string(&mut self, frame: &Value) -> String {
        let prefix = *self.rng.pick(&["", "", "v=0", "candidate:"]);
        let fill = *self.rng.pick(FILLS);
        let len = if self.rng.chance(1, 6) {
            // Sized so that the whole frame lands on the frame limit.
            let frame_len = frame.to_string().len();
            let delta = self.rng.below(5) as isize - 2;
            let room = MAX_FRAME_BYTES.saturating_sub(frame_len) as isize + delta;
            room.max(0) as usize / fill.len().max(1)
        } else {
            self.length().saturating_sub(prefix.len())
        };
        format!("{prefix}{}", fill.repeat(len))
    }

    /// A length near one of the protocol's limits.
    fn length(&mut self) -> usize {
        if self.rng.chance(1, 16) {
            *self.rng.pick(SDP_LENGTHS)
        } else {
            *self.rng.pick(LENGTHS)
        }
    }

    /// `depth` arrays or objects around `inner`.
    fn nested(&mut self, inner: Value, depth: usize) -> Value {
        let arrays = self.rng.chance(1, 2);
        (0..depth).fold(inner, |v, _| {
            if arrays {
                Value::Array(vec![v])
            } else {
                let mut o = serde_json::Map::new();
                o.insert("signal".to_owned(), v);
                Value::Object(o)
            }
        })
    }

    /// The frame with a key repeated after one of its `{`.
    fn duplicate_key(&mut self, value: &Value) -> String {
        let text = value.to_string();
        let opens: Vec<usize> = text.match_indices('{').map(|(i, _)| i).collect();
        let Some(&at) = (!opens.is_empty()).then(|| self.rng.pick(&opens)) else {
            return text;
        };
        let key = *self.rng.pick(KEYS);
        let repeated = match self.rng.below(3) {
            0 => format!("\"{key}\":null,"),
            1 => format!("\"{key}\":\"{}\",", self.rng.pick(&self.tags)),
            _ => format!("\"{key}\":{},", self.rng.pick(RAW_NUMBERS)),
        };
        format!("{}{repeated}{}", &text[..=at], &text[at + 1..])
    }

    /// The frame padded with whitespace to a few bytes either side of the frame limit.
    fn around_frame_limit(&mut self, value: &Value) -> String {
        let text = value.to_string();
        let target = MAX_FRAME_BYTES - 2 + self.rng.below(5);
        let pad = " ".repeat(target.saturating_sub(text.len()));
        if self.rng.chance(1, 2) {
            format!("{pad}{text}")
        } else {
            format!("{text}{pad}")
        }
    }

    fn char_boundary(&mut self, s: &str) -> usize {
        let mut at = self.rng.below(s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        at
    }

    /// A short span, mostly: long spans would erase too much.
    fn span(&mut self, s: &str) -> (usize, usize) {
        let a = self.char_boundary(s);
        let max = if self.rng.chance(1, 4) { s.len() } else { 16 };
        let mut b = (a + 1 + self.rng.below(max.max(1))).min(s.len());
        while !s.is_char_boundary(b) {
            b += 1;
        }
        (a, b)
    }
}

fn has_string(value: &Value) -> bool {
    match value {
        Value::String(_) => true,
        Value::Object(o) => o.values().any(has_string),
        _ => false,
    }
}

/// A placeholder string for raw JSON text that a `Value` cannot hold.
fn mark_raw(raw: &mut Vec<String>, text: String) -> Value {
    raw.push(text);
    Value::String(format!("{RAW_MARK}{}{RAW_MARK}", raw.len() - 1))
}

fn unmark_raw(json: &str, raw: &[String]) -> String {
    raw.iter()
        .enumerate()
        .fold(json.to_owned(), |json, (i, text)| {
            json.replace(&format!("\"\\u0001{i}\\u0001\""), text)
        })
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// SplitMix64: tiny, fast, and the same stream on every platform and version, forever.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, numerator: usize, denominator: usize) -> bool {
        self.below(denominator) < numerator
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
