//! The sessions that failed most, for the stats at close ("which sessions were benched, and
//! why"): `hex_proxy/session/<id>/failures`, `.../blacklisted`, `.../failure/<reason>`.
//!
//! The pool may hold 10,000,000 sessions at 9 bytes each, so nothing is kept per session:
//! a Space-Saving table (Metwally, Agrawal, El Abbadi, "Efficient computation of frequent and
//! top-k elements in data streams", 2005) of `TRACKED` sessions, fed only by failures. A
//! failure of a tracked session adds to its entry; of another, while the table is full,
//! takes the place of the entry with the fewest failures, inheriting that count as its
//! possible overstatement. So a session with more than 1/`TRACKED` of all failures is always
//! in the table, and while at most `TRACKED` sessions have failed every figure is exact.
//! Figures are shown as counted since the session last entered the table (the inherited count
//! left out): they never overstate, and its reasons add up to its failures.

use crate::session::SessionId;
use crate::stats::Reason;

/// Sessions the table follows.
pub const TRACKED: usize = 64;
/// Sessions the stats show, the worst first.
pub const SHOWN: usize = 10;
/// Reasons kept per session; failures of any further reason count under `other`.
const REASONS: usize = 4;

#[derive(Debug, Default)]
pub struct WorstSessions {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    number: u64,
    /// Space-Saving's count: the failures counted here plus `inherited`.
    count: u64,
    /// The count of the entry this one replaced: how much `count` may overstate.
    inherited: u64,
    blacklisted: u64,
    reasons: Vec<(Kept, u64)>,
    other: u64,
}

/// A failure's reason, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kept {
    Status(u16),
    Exception(Box<str>),
    Ban,
}

impl Kept {
    fn is(&self, reason: Reason<'_>) -> bool {
        match (self, reason) {
            (Kept::Status(kept), Reason::Status(status)) => *kept == status,
            (Kept::Exception(kept), Reason::Exception(name)) => **kept == *name,
            (Kept::Ban, Reason::Ban) => true,
            _ => false,
        }
    }

    fn of(reason: Reason<'_>) -> Self {
        match reason {
            Reason::Status(status) => Kept::Status(status),
            Reason::Exception(name) => Kept::Exception(name.into()),
            Reason::Ban => Kept::Ban,
        }
    }

    fn key(&self) -> String {
        match self {
            Kept::Status(status) => status.to_string(),
            Kept::Exception(name) => name.to_string(),
            Kept::Ban => "ban".to_owned(),
        }
    }
}

impl Entry {
    fn new(number: u64, inherited: u64) -> Self {
        Self {
            number,
            count: inherited,
            inherited,
            blacklisted: 0,
            reasons: Vec::with_capacity(REASONS),
            other: 0,
        }
    }

    fn add(&mut self, reason: Reason<'_>, blacklisted: bool) {
        self.count += 1;
        self.blacklisted += u64::from(blacklisted);
        if let Some((_, count)) = self.reasons.iter_mut().find(|(kept, _)| kept.is(reason)) {
            *count += 1;
        } else if self.reasons.len() < REASONS {
            self.reasons.push((Kept::of(reason), 1));
        } else {
            self.other += 1;
        }
    }

    /// The failures counted while in the table.
    fn failures(&self) -> u64 {
        self.count - self.inherited
    }
}

impl WorstSessions {
    /// A failure of session `number` (as `Engine::pick` returns it), which `blacklisted` it.
    pub fn failure(&mut self, number: u64, reason: Reason<'_>, blacklisted: bool) {
        let index = match self.entries.iter().position(|e| e.number == number) {
            Some(index) => index,
            None if self.entries.len() < TRACKED => {
                self.entries.push(Entry::new(number, 0));
                self.entries.len() - 1
            }
            None => {
                let (index, fewest) = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.count)
                    .expect("the table is full");
                let inherited = fewest.count;
                self.entries[index] = Entry::new(number, inherited);
                index
            }
        };
        self.entries[index].add(reason, blacklisted);
    }

    /// The `SHOWN` sessions with the most failures (then blacklists, then the lower number):
    /// each one's `hex_proxy/session/<id>/...` figures.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut worst: Vec<&Entry> = self.entries.iter().collect();
        worst.sort_unstable_by(|a, b| {
            (b.failures(), b.blacklisted, a.number).cmp(&(a.failures(), a.blacklisted, b.number))
        });
        let mut out = Vec::new();
        for entry in worst.into_iter().take(SHOWN) {
            let id = SessionId::new(entry.number);
            let key = |name: &str| format!("hex_proxy/session/{}/{name}", id.as_str());
            out.push((key("failures"), entry.failures()));
            if entry.blacklisted > 0 {
                out.push((key("blacklisted"), entry.blacklisted));
            }
            for (reason, count) in &entry.reasons {
                out.push((key(&format!("failure/{}", reason.key())), *count));
            }
            if entry.other > 0 {
                out.push((key("failure/other"), entry.other));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn figures(worst: &WorstSessions) -> HashMap<String, u64> {
        worst.snapshot().into_iter().collect()
    }

    #[test]
    fn with_few_failing_sessions_the_figures_are_exact() {
        let mut worst = WorstSessions::default();
        for _ in 0..7 {
            worst.failure(7, Reason::Status(503), false);
        }
        worst.failure(7, Reason::Exception("TimeoutError"), true);
        worst.failure(12, Reason::Ban, false);
        worst.failure(1_000_123, Reason::Status(429), true);
        let figures = figures(&worst);
        assert_eq!(figures["hex_proxy/session/s007/failures"], 8);
        assert_eq!(figures["hex_proxy/session/s007/blacklisted"], 1);
        assert_eq!(figures["hex_proxy/session/s007/failure/503"], 7);
        assert_eq!(figures["hex_proxy/session/s007/failure/TimeoutError"], 1);
        assert_eq!(figures["hex_proxy/session/s012/failure/ban"], 1);
        assert!(!figures.contains_key("hex_proxy/session/s012/blacklisted"));
        assert_eq!(figures["hex_proxy/session/s1000123/failures"], 1);
        assert_eq!(figures.len(), 4 + 2 + 3);
    }

    #[test]
    fn the_worst_come_first_and_only_shown_many() {
        let mut worst = WorstSessions::default();
        for number in 0..30u64 {
            for _ in 0..number {
                worst.failure(number, Reason::Status(503), false);
            }
        }
        let snapshot = worst.snapshot();
        let shown: Vec<&str> = snapshot
            .iter()
            .map(|(key, _)| key.as_str())
            .filter(|key| key.ends_with("/failures"))
            .collect();
        assert_eq!(shown.len(), SHOWN);
        assert_eq!(shown[0], "hex_proxy/session/s029/failures");
        assert_eq!(shown[SHOWN - 1], "hex_proxy/session/s020/failures");
    }

    #[test]
    fn a_heavy_session_stays_among_millions_of_one_off_failures() {
        let mut worst = WorstSessions::default();
        // 1,000,000 sessions failing once each (a pool of 10,000,000 with a bad hour), and
        // s4242 failing every 50th time: 2% of all failures, above 1/TRACKED.
        for number in 0..1_000_000u64 {
            worst.failure(10_000 + number, Reason::Exception("TimeoutError"), false);
            if number % 50 == 0 {
                worst.failure(4242, Reason::Status(403), number % 5000 == 0);
            }
            assert!(worst.entries.len() <= TRACKED);
        }
        let snapshot = worst.snapshot();
        assert_eq!(
            snapshot[0],
            ("hex_proxy/session/s4242/failures".into(), 20_000)
        );
        let figures: HashMap<_, _> = snapshot.into_iter().collect();
        assert_eq!(figures["hex_proxy/session/s4242/blacklisted"], 200);
        assert_eq!(figures["hex_proxy/session/s4242/failure/403"], 20_000);
        // Every figure shown is a failure that happened: none is inherited.
        for (key, count) in &figures {
            if key.ends_with("/failures") && !key.contains("s4242") {
                assert!(*count <= 1, "{key} {count}");
            }
        }
    }

    #[test]
    fn reasons_beyond_the_kept_count_as_other() {
        let mut worst = WorstSessions::default();
        for status in [500, 502, 503, 504, 520, 521] {
            worst.failure(3, Reason::Status(status), false);
        }
        let figures = figures(&worst);
        assert_eq!(figures["hex_proxy/session/s003/failures"], 6);
        assert_eq!(figures["hex_proxy/session/s003/failure/other"], 2);
        assert_eq!(figures["hex_proxy/session/s003/failure/504"], 1);
        assert!(!figures.contains_key("hex_proxy/session/s003/failure/520"));
    }
}
