//! What the abusive clients saw: frames by [`Category`] and fate, connection ends, closes,
//! failures explained.

use std::collections::BTreeMap;

use proxim_tests::loopback_ws::ConnectError;

/// `$into.field += $from.field` for each named counter.
macro_rules! add_counters {
    ($into:expr, $from:expr, $($field:ident),+ $(,)?) => {
        $( $into.$field += $from.$field; )+
    };
}

/// What kind of abuse a frame is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Category {
    /// A valid frame a script needs (hello, register_desktop), or a ping.
    Valid,
    /// Not JSON, no `type`, wrong fields.
    Malformed,
    /// A `type` no message has.
    UnknownType,
    /// A server message sent by a client.
    WrongDirection,
    /// A binary frame.
    Binary,
    /// Messages out of order: before `hello`, a second `hello`, unknown sessions, a pair
    /// request from a desktop.
    OutOfOrder,
    /// A `hello` with an unsupported protocol version.
    BadVersion,
    /// Pair requests for random codes.
    RandomCode,
    /// Pair requests beyond a code's attempt window.
    CodeAttempts,
    /// A text or binary frame over 64 KiB, under the transport limit.
    Oversized,
    /// A frame over the transport limit (128 KiB).
    Huge,
    /// Frames of a flood far over the message budget.
    Flood,
}

impl Category {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Category::Valid => "valid (setup, ping)",
            Category::Malformed => "malformed JSON/fields",
            Category::UnknownType => "unknown type",
            Category::WrongDirection => "wrong direction",
            Category::Binary => "binary frame",
            Category::OutOfOrder => "out of order",
            Category::BadVersion => "unsupported version",
            Category::RandomCode => "random code",
            Category::CodeAttempts => "code attempts > 5/60s",
            Category::Oversized => "oversized 64-128 KiB",
            Category::Huge => "huge > 128 KiB",
            Category::Flood => "flood",
        }
    }
}

/// Counters of one category.
#[derive(Debug, Clone, Default)]
pub(crate) struct CategoryTally {
    pub(crate) sent: u64,
    /// Answered as expected.
    pub(crate) expected: u64,
    /// Answered `rate_limited` (over budget) instead.
    pub(crate) rate_limited: u64,
    /// Not answered, dropped after the server said it closes the connection.
    pub(crate) excused: u64,
    /// Not answered (failure).
    pub(crate) unanswered: u64,
    /// Answered with something else (failure).
    pub(crate) wrong: u64,
}

impl CategoryTally {
    /// Add `other`'s counters to these.
    pub(crate) fn add(&mut self, other: &CategoryTally) {
        add_counters!(
            self,
            other,
            sent,
            expected,
            rate_limited,
            excused,
            unanswered,
            wrong
        );
    }
}

/// Everything the abusive clients saw.
#[derive(Debug, Default)]
pub(crate) struct AbuseTally {
    pub(crate) categories: BTreeMap<Category, CategoryTally>,
    /// `error` replies by code.
    pub(crate) error_codes: BTreeMap<String, u64>,
    pub(crate) connections: u64,
    pub(crate) connect_refused_429: u64,
    pub(crate) connect_failed: u64,
    /// Connections the server had to close (after `frame_too_large`, `unsupported_version`,
    /// a flood, a frame over the transport limit) and did.
    pub(crate) closes_expected: u64,
    pub(crate) closes_seen: u64,
    pub(crate) flood_disconnects: u64,
    /// Messages that answer no frame (prompts to an abusive desktop, its lockout notice).
    pub(crate) unsolicited: u64,
    /// Desktops the abusive clients registered (each leaves a code reservation behind).
    pub(crate) registrations: u64,
    /// Code-attempt scripts: the desktop was told about the lockout.
    pub(crate) owners_notified: u64,
    pub(crate) owners_expected: u64,
    /// Unanswered frames (counted in `unanswered` too) of connections that the server was
    /// refusing over budget and that ended in a TCP reset: the server closed while input was
    /// unread, and the kernel discarded the replies still queued, the disconnect notice
    /// among them.
    pub(crate) lost_in_reset: u64,
    /// How connections that ended before the script did ended (`close frame`, `eof`, the
    /// transport error).
    pub(crate) ends: BTreeMap<String, u64>,
    /// The first failures of each category, explained.
    pub(crate) examples: Vec<String>,
}

impl AbuseTally {
    pub(crate) fn failures(&self) -> u64 {
        let frames: u64 = self
            .categories
            .values()
            .map(|c| c.unanswered + c.wrong)
            .sum();
        frames + (self.closes_expected - self.closes_seen.min(self.closes_expected))
    }

    /// The counters of `category`.
    pub(crate) fn category(&mut self, category: Category) -> &mut CategoryTally {
        self.categories.entry(category).or_default()
    }

    pub(crate) fn frames_sent(&self) -> u64 {
        self.categories.values().map(|c| c.sent).sum()
    }

    /// Count a connection the server refused or that failed to open.
    pub(crate) fn count_connect_error(&mut self, error: &ConnectError) {
        match error {
            ConnectError::Status(429) => self.connect_refused_429 += 1,
            ConnectError::Status(status) => {
                self.connect_failed += 1;
                self.note(format!("connect refused with HTTP {status}"));
            }
            ConnectError::Other(e) => {
                self.connect_failed += 1;
                self.note(format!("connect failed: {e}"));
            }
        }
    }

    pub(crate) fn note(&mut self, example: String) {
        // A few per kind of failure (the text before the first ':').
        let kind = example.split(':').next().unwrap_or_default().to_owned();
        let same = self
            .examples
            .iter()
            .filter(|e| e.split(':').next() == Some(kind.as_str()))
            .count();
        if same < 3 && self.examples.len() < 30 {
            self.examples.push(example);
        }
    }

    /// Add what one connection (or a pair of them) saw.
    pub(crate) fn merge(&mut self, local: AbuseTally) {
        for (category, c) in local.categories {
            self.category(category).add(&c);
        }
        for (code, n) in local.error_codes {
            *self.error_codes.entry(code).or_default() += n;
        }
        add_counters!(
            self,
            local,
            connections,
            connect_refused_429,
            connect_failed,
            closes_expected,
            closes_seen,
            flood_disconnects,
            unsolicited,
            lost_in_reset,
            registrations,
            owners_notified,
            owners_expected,
        );
        for (end, n) in local.ends {
            *self.ends.entry(end).or_default() += n;
        }
        for example in local.examples {
            self.note(example);
        }
    }
}
