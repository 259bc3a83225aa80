//! The code book: every routing code's whole life — issued to a desktop, kept for it while it
//! is away, given back when it returns, expired, renewed, retired — and nothing else.
//!
//! A plain value with time as an input: no sockets, no clock, no timers of its own. A method
//! that needs to hear about a later moment returns a [`Deadline`]; the hub keeps it in its
//! timer heap and hands the [`CodeTimer`] back to [`CodeBook::on_timer`] when it is due (a
//! deadline that no longer applies by then is ignored).
//!
//! Each code the book knows has one [`Entry`]: the device it belongs to, and whether a
//! connection of that device holds it ([`Place::Live`]) or it is kept for the absent device
//! ([`Place::Kept`]). Codes that expired or were renewed move to [`RetiredCodes`], so that a
//! phone asking for one is told what happened to it and nobody is issued it meanwhile.
//!
//! Invariants (tested below): a code belongs to at most one device, and is held by at most one
//! connection; a retired code is not issued again until its retention lapses; a kept code is
//! given back only to its own device.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proxim_protocol::{DeviceId, RoutingCode};
use rand::Rng;
use rand::rngs::StdRng;

use super::{ConnKey, HubConfig, millis as ms};
use crate::retired::{RetireReason, RetiredCodes};
use crate::state::{RestoreSummary, Snapshot, StateOp, UnixMs, unix_ms};

/// How many random codes to try before giving up on issuing one.
pub(super) const CODE_ATTEMPTS: usize = 64;

/// When a code expires and no fresh code is free, how long it stays before the next try.
const CODE_RETRY: Duration = Duration::from_secs(1);

/// How long the stored record of a live code that never expires lasts unless renewed
/// ([`CodeBook::renew_leases`]): a crashed server's codes lapse by themselves.
pub(super) const LIVE_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// A moment the code book must hear about: at `.0`, pass `.1` to [`CodeBook::on_timer`].
pub(super) type Deadline = (Instant, CodeTimer);

/// Why the code book wants to be called back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum CodeTimer {
    /// The code kept for this absent device may be forgotten.
    Reservation(DeviceId),
    /// This live or kept code's lifetime ends.
    Expiry(RoutingCode),
}

/// A code handed to a desktop connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) code: RoutingCode,
    /// When the code expires; `None`: never.
    pub(super) expires: Option<Instant>,
    /// Whether it is the code kept for the device while it was away.
    pub(super) reused: bool,
    /// The code's expiry, when a new timer is needed for it.
    pub(super) deadline: Option<Deadline>,
}

/// What a phone's code turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// This desktop connection holds it.
    Held(ConnKey),
    /// It was retired lately, for this reason.
    Retired(RetireReason),
    /// No desktop holds it (it may be kept for an absent one).
    Unknown,
}

/// What a due [`CodeTimer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TimerOutcome {
    /// Nothing the hub must act on.
    Nothing,
    /// A live code expired: the connection holding it has a fresh one.
    Replaced { conn: ConnKey, grant: Grant },
    /// A live code expired but no fresh code is free: the connection keeps it until `retry`.
    NoFreeCode { conn: ConnKey, retry: Deadline },
}

/// Every code that is live, kept or retired.
#[derive(Debug)]
pub(super) struct CodeBook {
    /// The characters codes are drawn from, and how many of them a code has.
    alphabet: &'static str,
    length: usize,
    /// How long a code lives; zero is forever.
    ttl: Duration,
    /// How long a code is kept for a device that went away.
    reservation: Duration,
    /// How many codes are kept for absent devices at most.
    max_kept: usize,
    /// Devices whose code was kept, oldest first, with the end of the reservation; entries
    /// whose device came back (or whose reservation ended) are skipped when met.
    kept_order: VecDeque<(Instant, DeviceId)>,
    /// Every live or kept code.
    entries: HashMap<RoutingCode, Entry>,
    /// The code each desktop connection holds (the live entries, by connection).
    held: HashMap<ConnKey, RoutingCode>,
    /// The code each device registered last: the one kept for it when it goes away.
    latest: HashMap<DeviceId, RoutingCode>,
    /// Codes that expired or were renewed, remembered for a while.
    retired: RetiredCodes,
    /// How many codes were retired since start.
    retired_total: u64,
    /// Changes for the state store, in order; `None` without a store.
    journal: Option<Vec<StateOp>>,
    /// One instant of the hub's clock and the Unix time it corresponds to: stored times are
    /// Unix milliseconds (a restarted process has a new monotonic clock).
    anchor: (Instant, UnixMs),
}

/// One code the book knows.
#[derive(Debug, Clone)]
struct Entry {
    /// The desktop device it belongs to.
    device: DeviceId,
    place: Place,
    /// When the code expires (kept across a reconnect); `None`: never.
    expires: Option<Instant>,
}

/// Where a code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// This connection holds it.
    Live(ConnKey),
    /// Its device went away; it is kept for it until this instant.
    Kept(Instant),
}

impl CodeBook {
    /// An empty book with the hub's code settings.
    pub(super) fn new(config: &HubConfig) -> Self {
        CodeBook {
            alphabet: config.code_alphabet,
            length: config.code_length,
            ttl: config.code_ttl,
            reservation: config.code_reservation,
            max_kept: config.max_kept_codes,
            kept_order: VecDeque::new(),
            entries: HashMap::new(),
            held: HashMap::new(),
            latest: HashMap::new(),
            retired: RetiredCodes::new(config.retired_retention, config.max_retired_codes),
            retired_total: 0,
            journal: config.state.then(Vec::new),
            anchor: (config.wall_anchor.0, unix_ms(config.wall_anchor.1)),
        }
    }

    /// The changes journaled since the last call, in order (none without a state store).
    pub(super) fn take_journal(&mut self, into: &mut Vec<StateOp>) {
        if let Some(journal) = self.journal.as_mut() {
            into.append(journal);
        }
    }

    /// How many codes desktop connections hold now.
    pub(super) fn live(&self) -> usize {
        self.held.len()
    }

    /// How many codes were retired since start.
    pub(super) fn retired_total(&self) -> u64 {
        self.retired_total
    }

    /// The next time a retired code lapses: call [`CodeBook::prune`] then.
    pub(super) fn next_lapse(&self) -> Option<Instant> {
        self.retired.next_lapse()
    }

    /// Forget the retired codes whose retention lapsed by `now`.
    pub(super) fn prune(&mut self, now: Instant) {
        self.retired.prune(now);
    }

    /// A phone asks for `code` at `now`.
    pub(super) fn lookup(&self, code: &RoutingCode, now: Instant) -> Lookup {
        match self.entries.get(code).map(|e| e.place) {
            Some(Place::Live(conn)) => Lookup::Held(conn),
            _ => match self.retired.get(code, now) {
                Some(reason) => Lookup::Retired(reason),
                None => Lookup::Unknown,
            },
        }
    }

    /// The desktop connection `conn` registers as `device`: give it the code kept for the
    /// device, with the time that code had left, or a fresh one. `None` when no fresh code is
    /// free.
    pub(super) fn register(
        &mut self,
        rng: &mut StdRng,
        conn: ConnKey,
        device: &DeviceId,
        now: Instant,
    ) -> Option<Grant> {
        // A kept code that expired while its desktop was away is retired, not handed back
        // (its timer may not have fired yet).
        self.retire_kept_if_expired(device, now);
        let kept = self.latest.get(device).and_then(|code| {
            let entry = self.entries.get(code)?;
            matches!(entry.place, Place::Kept(until) if until > now)
                .then(|| (code.clone(), entry.expires))
        });
        let grant = match kept {
            // A kept code's expiry timer is still in the heap from when it was issued.
            Some((code, expires)) => Grant {
                code,
                expires,
                reused: true,
                deadline: None,
            },
            None => self.fresh_grant(rng, now)?,
        };
        let previous = self.latest.insert(device.clone(), grant.code.clone());
        if let Some(old) = previous
            && old != grant.code
            && self
                .entries
                .get(&old)
                .is_some_and(|e| matches!(e.place, Place::Kept(_)))
        {
            self.entries.remove(&old);
            self.journal_drop(old, None);
        }
        self.entries.insert(
            grant.code.clone(),
            Entry {
                device: device.clone(),
                place: Place::Live(conn),
                expires: grant.expires,
            },
        );
        self.held.insert(conn, grant.code.clone());
        self.journal_put(&grant.code, now);
        Some(grant)
    }

    /// Retire the code `conn` holds for `reason` and give it a fresh one. `None` when no fresh
    /// code is free (or `conn` holds none): it keeps the code it has.
    pub(super) fn replace(
        &mut self,
        rng: &mut StdRng,
        conn: ConnKey,
        reason: RetireReason,
        now: Instant,
    ) -> Option<Grant> {
        let grant = self.fresh_grant(rng, now)?;
        let old = self.held.get(&conn)?.clone();
        let entry = self.entries.remove(&old)?;
        if self.latest.get(&entry.device) == Some(&old) {
            self.latest.insert(entry.device.clone(), grant.code.clone());
        }
        self.entries.insert(
            grant.code.clone(),
            Entry {
                device: entry.device,
                place: Place::Live(conn),
                expires: grant.expires,
            },
        );
        self.held.insert(conn, grant.code.clone());
        self.journal_drop(old.clone(), None);
        self.journal_put(&grant.code, now);
        self.retire(old, reason, now);
        Some(grant)
    }

    /// The desktop connection `conn` went away at `now`. The code it holds is kept for its
    /// device when it is the device's latest, and forgotten otherwise.
    pub(super) fn release(&mut self, conn: ConnKey, now: Instant) -> Option<Deadline> {
        let code = self.held.remove(&conn)?;
        let entry = self.entries.get_mut(&code)?;
        if self.latest.get(&entry.device) != Some(&code) {
            self.entries.remove(&code);
            self.journal_drop(code, None);
            return None;
        }
        let device = entry.device.clone();
        self.make_room_to_keep(now);
        let until = now + self.reservation;
        if let Some(entry) = self.entries.get_mut(&code) {
            entry.place = Place::Kept(until);
        }
        self.journal_put(&code, now);
        self.kept_order.push_back((until, device.clone()));
        Some((until, CodeTimer::Reservation(device)))
    }

    /// Codes kept for absent devices now.
    pub(super) fn kept(&self) -> usize {
        self.entries.len() - self.held.len()
    }

    /// Before keeping one more code: drop the order's stale front, and forget the oldest kept
    /// codes while the book is at its cap.
    fn make_room_to_keep(&mut self, now: Instant) {
        while let Some((until, device)) = self.kept_order.front() {
            let still_kept = self
                .kept_for(device)
                .is_some_and(|(_, kept_until, _)| kept_until == *until);
            // `kept()` already counts the code being released (no connection holds it).
            if still_kept && *until > now && self.kept() <= self.max_kept {
                break;
            }
            let Some((_, device)) = self.kept_order.pop_front() else {
                break;
            };
            if still_kept && let Some(code) = self.latest.remove(&device) {
                self.entries.remove(&code);
                tracing::debug!(code = %code.redacted(), "forgetting a kept code: at the cap");
                self.journal_drop(code, Some(device));
            }
        }
    }

    /// A deadline returned earlier is due (`now`).
    pub(super) fn on_timer(
        &mut self,
        rng: &mut StdRng,
        timer: CodeTimer,
        now: Instant,
    ) -> TimerOutcome {
        match timer {
            CodeTimer::Reservation(device) => {
                let lapsed = self
                    .kept_for(&device)
                    .is_some_and(|(_, until, _)| until <= now);
                if lapsed && let Some(code) = self.latest.remove(&device) {
                    self.entries.remove(&code);
                    self.journal_drop(code, Some(device));
                }
                TimerOutcome::Nothing
            }
            CodeTimer::Expiry(code) => self.expire(rng, code, now),
        }
    }

    /// A code's expiry timer fired: retire it if it is still live or kept and due.
    fn expire(&mut self, rng: &mut StdRng, code: RoutingCode, now: Instant) -> TimerOutcome {
        let Some(entry) = self.entries.get(&code) else {
            return TimerOutcome::Nothing;
        };
        let conn = match entry.place {
            Place::Kept(_) => {
                let device = entry.device.clone();
                self.retire_kept_if_expired(&device, now);
                return TimerOutcome::Nothing;
            }
            Place::Live(conn) => conn,
        };
        if entry.expires.is_none_or(|e| e > now) {
            return TimerOutcome::Nothing;
        }
        if let Some(grant) = self.replace(rng, conn, RetireReason::Expired, now) {
            return TimerOutcome::Replaced { conn, grant };
        }
        // No fresh code is free: keep this one a little longer and try again.
        let retry = now + CODE_RETRY;
        if let Some(entry) = self.entries.get_mut(&code) {
            entry.expires = Some(retry);
        }
        self.journal_put(&code, now);
        TimerOutcome::NoFreeCode {
            conn,
            retry: (retry, CodeTimer::Expiry(code)),
        }
    }

    /// The code kept for the absent `device`: the code, until when, and when it expires.
    fn kept_for(&self, device: &DeviceId) -> Option<(&RoutingCode, Instant, Option<Instant>)> {
        let code = self.latest.get(device)?;
        match self.entries.get(code)? {
            Entry {
                place: Place::Kept(until),
                expires,
                ..
            } => Some((code, *until, *expires)),
            _ => None,
        }
    }

    /// Retire the code kept for the absent `device` if it expired by `now`.
    fn retire_kept_if_expired(&mut self, device: &DeviceId, now: Instant) {
        let due = self
            .kept_for(device)
            .is_some_and(|(_, _, expires)| expires.is_some_and(|e| e <= now));
        if due && let Some(code) = self.latest.remove(device) {
            self.entries.remove(&code);
            self.journal_drop(code.clone(), Some(device.clone()));
            self.retire(code, RetireReason::Expired, now);
        }
    }

    /// Remember a code as retired, so phones asking for it are told and nobody gets it soon.
    fn retire(&mut self, code: RoutingCode, reason: RetireReason, now: Instant) {
        tracing::debug!(code = %code.redacted(), reason = reason.name(), "code retired");
        self.retired_total += 1;
        let until = self.retired.insert(code.clone(), reason, now);
        if let (Some(journal), Some(until)) = (self.journal.as_mut(), until) {
            let until = wall(self.anchor, until);
            journal.push(StateOp::Retire {
                code,
                reason,
                until,
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // The state store
    // -----------------------------------------------------------------------------------------

    /// The record of `code` as it is now (`None`: the book does not know it).
    fn record(&self, code: &RoutingCode, now: Instant) -> Option<StateOp> {
        let entry = self.entries.get(code)?;
        let latest = self.latest.get(&entry.device) == Some(code);
        let expires = entry.expires.map(|e| wall(self.anchor, e));
        let (kept_until, lapses) = match entry.place {
            Place::Kept(until) => {
                let until = wall(self.anchor, until);
                (Some(until), until)
            }
            // Long enough for the server to come back and keep it for its device.
            Place::Live(_) => {
                let lapses = match entry.expires {
                    Some(e) => e + self.reservation,
                    None => now + LIVE_LEASE,
                };
                (None, wall(self.anchor, lapses))
            }
        };
        Some(StateOp::PutCode {
            code: code.clone(),
            device: entry.device.clone(),
            expires,
            kept_until,
            latest,
            lapses,
        })
    }

    /// Journal `code`'s record as it is now.
    fn journal_put(&mut self, code: &RoutingCode, now: Instant) {
        if self.journal.is_none() {
            return;
        }
        if let Some(op) = self.record(code, now)
            && let Some(journal) = self.journal.as_mut()
        {
            journal.push(op);
        }
    }

    /// Journal that `code` is forgotten (and `device`'s latest code with it).
    fn journal_drop(&mut self, code: RoutingCode, device: Option<DeviceId>) {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(StateOp::DropCode { code, device });
        }
    }

    /// Journal the records of live codes that never expire again, so they do not lapse while
    /// their desktops are connected.
    pub(super) fn renew_leases(&mut self, now: Instant) {
        if self.journal.is_none() {
            return;
        }
        let codes: Vec<RoutingCode> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_none() && matches!(e.place, Place::Live(_)))
            .map(|(code, _)| code.clone())
            .collect();
        for code in codes {
            self.journal_put(&code, now);
        }
    }

    /// Every record the book holds: what the store must hold. The journal is emptied: what
    /// it held is older than the export, which includes it.
    pub(super) fn export(&mut self, now: Instant) -> Vec<StateOp> {
        if let Some(journal) = self.journal.as_mut() {
            journal.clear();
        }
        let mut ops: Vec<StateOp> = self
            .entries
            .keys()
            .filter_map(|code| self.record(code, now))
            .collect();
        ops.extend(
            self.retired
                .iter()
                .filter(|(_, _, until)| *until > now)
                .map(|(code, reason, until)| StateOp::Retire {
                    code: code.clone(),
                    reason,
                    until: wall(self.anchor, until),
                }),
        );
        ops
    }

    /// Take what a store held at start (the book is empty; no connection is open). Codes that
    /// connections held are kept for their devices for a full reservation from `now` (their
    /// connections ended with the previous process); kept codes stay kept until their
    /// reservation ends; codes that expired meanwhile are retired as expired; retired codes
    /// are remembered until their time. Returns what was taken and the deadlines to arm.
    pub(super) fn restore(
        &mut self,
        snapshot: Snapshot,
        now: Instant,
    ) -> (RestoreSummary, Vec<Deadline>) {
        let now_ms = wall(self.anchor, now);
        let mut summary = RestoreSummary {
            dropped: snapshot.skipped,
            ..RestoreSummary::default()
        };
        let latest: HashMap<DeviceId, RoutingCode> = snapshot.latest.into_iter().collect();
        let mut retired = snapshot.retired;
        let mut kept = Vec::new();
        for stored in snapshot.codes {
            // Only a device's latest code is kept for it; the others ended with their
            // connections.
            if latest.get(&stored.device) != Some(&stored.code) {
                summary.dropped += 1;
                continue;
            }
            if let Some(expires) = stored.expires
                && expires <= now_ms
            {
                retired.push(crate::state::StoredRetired {
                    code: stored.code,
                    reason: RetireReason::Expired,
                    until: expires.saturating_add(ms(self.retired.retention())),
                });
                summary.expired += 1;
                continue;
            }
            let until = match stored.kept_until {
                Some(until) => until.min(now_ms.saturating_add(ms(self.reservation))),
                None => now_ms.saturating_add(ms(self.reservation)),
            };
            if until <= now_ms {
                summary.dropped += 1;
                continue;
            }
            kept.push((until, stored));
        }
        // Oldest first, as the book keeps them.
        kept.sort_by_key(|(until, _)| *until);
        retired.sort_by_key(|r| r.until);
        let mut deadlines = Vec::new();
        for r in retired {
            if r.until <= now_ms || self.entries.contains_key(&r.code) {
                summary.dropped += 1;
                continue;
            }
            let until = instant(self.anchor, now, r.until);
            if self
                .retired
                .insert_until(r.code, r.reason, until, now)
                .is_some()
            {
                self.retired_total += 1;
                summary.retired += 1;
            }
        }
        for (until_ms, stored) in kept {
            if self.retired.contains(&stored.code) {
                summary.dropped += 1;
                continue;
            }
            let until = instant(self.anchor, now, until_ms);
            let expires = stored.expires.map(|e| instant(self.anchor, now, e));
            self.entries.insert(
                stored.code.clone(),
                Entry {
                    device: stored.device.clone(),
                    place: Place::Kept(until),
                    expires,
                },
            );
            self.latest
                .insert(stored.device.clone(), stored.code.clone());
            self.make_room_to_keep(now);
            self.kept_order.push_back((until, stored.device.clone()));
            deadlines.push((until, CodeTimer::Reservation(stored.device)));
            if let Some(expires) = expires {
                deadlines.push((expires, CodeTimer::Expiry(stored.code)));
            }
            summary.kept += 1;
        }
        // What the store must hold now is the book itself: the driver rewrites it from
        // `export`, which drops what was journaled here.
        (summary, deadlines)
    }

    /// A fresh code issued at `now`, with its expiry and the timer for it.
    fn fresh_grant(&mut self, rng: &mut StdRng, now: Instant) -> Option<Grant> {
        let code = self.fresh_code(rng)?;
        let expires = (!self.ttl.is_zero())
            .then(|| now.checked_add(self.ttl))
            .flatten();
        Some(Grant {
            deadline: expires.map(|e| (e, CodeTimer::Expiry(code.clone()))),
            code,
            expires,
            reused: false,
        })
    }

    /// A random code that is neither live, nor kept, nor retired recently.
    fn fresh_code(&self, rng: &mut StdRng) -> Option<RoutingCode> {
        (0..CODE_ATTEMPTS).find_map(|_| {
            let code = random_code(rng, self.alphabet, self.length)?;
            (!self.entries.contains_key(&code) && !self.retired.contains(&code)).then_some(code)
        })
    }

    /// Whether the book holds no live or kept code (retired ones aside).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.held.is_empty() && self.latest.is_empty()
    }
}

/// `t` of the hub's clock as Unix milliseconds, by the `anchor`.
fn wall(anchor: (Instant, UnixMs), t: Instant) -> UnixMs {
    match t.checked_duration_since(anchor.0) {
        Some(after) => anchor.1.saturating_add(ms(after)),
        None => anchor.1.saturating_sub(ms(anchor.0.duration_since(t))),
    }
}

/// Unix milliseconds `at` on the hub's clock, by the `anchor`; times before `now` are `now`.
fn instant(anchor: (Instant, UnixMs), now: Instant, at: UnixMs) -> Instant {
    let t = if at >= anchor.1 {
        anchor.0.checked_add(Duration::from_millis(at - anchor.1))
    } else {
        anchor.0.checked_sub(Duration::from_millis(anchor.1 - at))
    };
    t.map_or(now, |t| t.max(now))
}

/// A random routing code of `len` characters from `alphabet` (a subset of
/// [`proxim_protocol::ROUTING_ALPHABET`]).
pub(super) fn random_code(rng: &mut StdRng, alphabet: &str, len: usize) -> Option<RoutingCode> {
    let alphabet = alphabet.as_bytes();
    if alphabet.is_empty() {
        return None;
    }
    let code: String = (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect();
    RoutingCode::new(code).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proxim_protocol::ROUTING_ALPHABET;
    use rand::SeedableRng;

    use super::*;
    use crate::config::ServerConfig;

    const MIN: Duration = Duration::from_secs(60);

    fn book(tweak: impl FnOnce(&mut HubConfig)) -> (CodeBook, StdRng) {
        let mut config = HubConfig::from(&ServerConfig::loopback());
        config.code_ttl = 10 * MIN;
        config.code_reservation = 5 * MIN;
        tweak(&mut config);
        (CodeBook::new(&config), StdRng::seed_from_u64(5))
    }

    /// A book drawing codes of 4 characters from `alphabet`.
    fn tiny_book(alphabet: &'static str, tweak: impl FnOnce(&mut HubConfig)) -> (CodeBook, StdRng) {
        book(|c| {
            c.code_alphabet = alphabet;
            c.code_length = 4;
            tweak(c);
        })
    }

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name.to_owned()).unwrap()
    }

    #[test]
    fn codes_use_the_alphabet_and_the_length() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let code = random_code(&mut rng, ROUTING_ALPHABET, 6).unwrap();
            assert_eq!(code.as_str().len(), 6);
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| ROUTING_ALPHABET.as_bytes().contains(&b))
            );
            seen.insert(code);
        }
        // 30^6 codes: 2000 draws collide with probability ~0.3%; allow a couple.
        assert!(seen.len() >= 1995, "{}", seen.len());
        let long = random_code(&mut rng, ROUTING_ALPHABET, 16).unwrap();
        assert_eq!(long.as_str().len(), 16);
    }

    #[test]
    fn a_code_belongs_to_one_device_and_one_connection() {
        // A code space of 16, nearly filled.
        let (mut book, mut rng) = tiny_book("23", |_| {});
        let t0 = Instant::now();
        let mut seen = HashSet::new();
        for conn in 0..12 {
            let dev = device(&format!("dev{}", conn % 6));
            let grant = book.register(&mut rng, conn, &dev, t0).unwrap();
            assert!(!grant.reused);
            assert!(
                seen.insert(grant.code.clone()),
                "{:?} issued twice",
                grant.code
            );
            assert_eq!(book.lookup(&grant.code, t0), Lookup::Held(conn));
        }
        assert_eq!(book.live(), seen.len());
        // A connection that goes away while not its device's latest keeps nothing.
        assert_eq!(book.release(0, t0), None);
        assert_eq!(book.live(), seen.len() - 1);
    }

    #[test]
    fn a_kept_code_returns_only_to_its_device() {
        let (mut book, mut rng) = book(|_| {});
        let t0 = Instant::now();
        let (desk, other) = (device("desk"), device("other"));
        let first = book.register(&mut rng, 1, &desk, t0).unwrap();
        let deadline = book.release(1, t0 + MIN);
        assert_eq!(
            deadline,
            Some((t0 + 6 * MIN, CodeTimer::Reservation(desk.clone())))
        );
        // Nobody holds it meanwhile: unknown to phones, not issued to another device.
        assert_eq!(book.lookup(&first.code, t0 + MIN), Lookup::Unknown);
        let stranger = book.register(&mut rng, 2, &other, t0 + MIN).unwrap();
        assert_ne!(stranger.code, first.code);
        // Its device gets it back, with the time it had left.
        let back = book.register(&mut rng, 3, &desk, t0 + 2 * MIN).unwrap();
        assert_eq!(
            (back.code, back.expires, back.reused),
            (first.code, first.expires, true)
        );
        assert_eq!(back.deadline, None);
        // After the reservation lapses the code is forgotten, not retired.
        let deadline = book.release(3, t0 + 3 * MIN).unwrap();
        assert_eq!(
            book.on_timer(&mut rng, deadline.1, deadline.0),
            TimerOutcome::Nothing
        );
        book.release(2, t0 + 3 * MIN);
        book.on_timer(&mut rng, CodeTimer::Reservation(other), t0 + 9 * MIN);
        assert!(book.is_empty());
        assert_eq!(book.retired_total(), 0);
    }

    #[test]
    fn kept_codes_are_capped_and_the_oldest_goes_first() {
        let (mut book, mut rng) = book(|c| c.max_kept_codes = 3);
        let t0 = Instant::now();
        let mut codes = Vec::new();
        for i in 0..5u32 {
            let dev = device(&format!("vanishing{i}"));
            let conn = u64::from(i);
            codes.push((
                dev.clone(),
                book.register(&mut rng, conn, &dev, t0).unwrap().code,
            ));
            book.release(conn, t0 + MIN * i);
            assert!(
                book.kept() <= 3,
                "{} kept after {} left",
                book.kept(),
                i + 1
            );
        }
        assert_eq!(book.kept(), 3);
        // The first two devices lost their codes; the last three get theirs back.
        for (i, (dev, code)) in codes.iter().enumerate() {
            let conn = 100 + i as u64;
            let grant = book.register(&mut rng, conn, dev, t0 + 5 * MIN).unwrap();
            assert_eq!(grant.reused, i >= 2, "device {i}");
            assert_eq!(&grant.code == code, i >= 2, "device {i}");
        }
        assert_eq!(book.kept(), 0);
    }

    #[test]
    fn a_device_that_came_back_does_not_count_against_the_cap() {
        let (mut book, mut rng) = book(|c| c.max_kept_codes = 2);
        let t0 = Instant::now();
        let (a, b, c) = (device("a"), device("b"), device("c"));
        let code_a = book.register(&mut rng, 1, &a, t0).unwrap().code;
        book.release(1, t0);
        // `a` comes back: its entry in the order is stale, not a kept code.
        assert!(book.register(&mut rng, 2, &a, t0 + MIN).unwrap().reused);
        let code_b = book.register(&mut rng, 3, &b, t0).unwrap().code;
        let code_c = book.register(&mut rng, 4, &c, t0).unwrap().code;
        book.release(3, t0 + MIN);
        book.release(4, t0 + MIN);
        assert_eq!(book.kept(), 2);
        assert_eq!(
            book.register(&mut rng, 5, &b, t0 + 2 * MIN).unwrap().code,
            code_b
        );
        assert_eq!(
            book.register(&mut rng, 6, &c, t0 + 2 * MIN).unwrap().code,
            code_c
        );
        assert_eq!(book.lookup(&code_a, t0 + 2 * MIN), Lookup::Held(2));
    }

    #[test]
    fn a_retired_code_is_not_reissued_until_its_retention_lapses() {
        // A code space of 16.
        let (mut book, mut rng) = tiny_book("23", |c| {
            c.code_ttl = Duration::ZERO;
            c.retired_retention = MIN;
        });
        let t0 = Instant::now();
        let first = book.register(&mut rng, 1, &device("desk"), t0).unwrap();
        let mut seen = HashSet::from([first.code.clone()]);
        for i in 1..16 {
            let now = t0 + Duration::from_secs(i);
            let grant = book.replace(&mut rng, 1, RetireReason::Used, now).unwrap();
            assert!(
                seen.insert(grant.code.clone()),
                "renewal {i} reissued a code"
            );
        }
        let now = t0 + Duration::from_secs(20);
        assert_eq!(book.replace(&mut rng, 1, RetireReason::Used, now), None);
        assert_eq!(book.register(&mut rng, 2, &device("other"), now), None);
        assert_eq!(
            book.lookup(&first.code, now),
            Lookup::Retired(RetireReason::Used)
        );
        let later = t0 + Duration::from_secs(61);
        assert!(book.next_lapse().is_some_and(|t| t <= later));
        book.prune(later);
        assert_eq!(book.lookup(&first.code, later), Lookup::Unknown);
        // The one free code: each try draws 64 codes from 16, so a few tries find it.
        let grant = (0..8).find_map(|_| book.replace(&mut rng, 1, RetireReason::Used, later));
        assert_eq!(grant.map(|g| g.code), Some(first.code));
    }

    #[test]
    fn an_expired_code_is_replaced_or_kept_until_a_retry() {
        let (mut book, mut rng) = tiny_book("2", |_| {});
        let t0 = Instant::now();
        let only = book.register(&mut rng, 1, &device("desk"), t0).unwrap();
        let (due, timer) = only.deadline.clone().unwrap();
        assert_eq!(due, t0 + 10 * MIN);
        // Not due yet: nothing happens.
        assert_eq!(
            book.on_timer(&mut rng, timer.clone(), due - MIN),
            TimerOutcome::Nothing
        );
        // The code space has one code, the live one: it stays, and is tried again later.
        assert_eq!(
            book.on_timer(&mut rng, timer.clone(), due),
            TimerOutcome::NoFreeCode {
                conn: 1,
                retry: (due + CODE_RETRY, timer),
            }
        );
        assert_eq!(book.lookup(&only.code, due), Lookup::Held(1));
        assert_eq!(book.retired_total(), 0);
    }
}
