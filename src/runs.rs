//! Why a session is failing: the reasons of each open failure run (a status, an exception's
//! class name, a ban), so that the WARNING that benches a session can say what benched it
//! ("429 ×3, DownloadTimeoutError ×2"). Only sessions with an open run have an entry, made on
//! their first failure and dropped on the success that ends the run; a healthy crawl keeps
//! nothing. The entries are bounded: past `MAX_OPEN` open runs, new ones go unexplained.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

/// Open runs kept at most (about 64 bytes each, with their reasons).
pub const MAX_OPEN: usize = 100_000;
/// Distinct exception names kept at most; others read as "other".
const MAX_NAMES: usize = 256;

pub use crate::stats::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Status(u16),
    Name(u16),
    Ban,
}

/// The reasons of one run, in the order they first came, with their counts.
type Run = Vec<(Kept, u16)>;

#[derive(Debug, Default)]
pub struct Runs {
    /// Per slot: `(host key, run)`; the host key is 0 in session scope.
    open: HashMap<u32, Vec<(u64, Run)>>,
    count: usize,
    names: Vec<Box<str>>,
}

/// The key of a target host (ban scope "domain"); `None`, session scope: 0.
pub fn host_key(host: Option<&str>) -> u64 {
    host.map_or(0, |host| {
        let mut hasher = DefaultHasher::new();
        host.hash(&mut hasher);
        hasher.finish() | 1
    })
}

impl Runs {
    /// A failure that counted towards the run of `slot` (for `host`).
    pub fn failed(&mut self, slot: u32, host: u64, reason: Reason<'_>) {
        let kept = match reason {
            Reason::Status(status) => Kept::Status(status),
            Reason::Ban => Kept::Ban,
            Reason::Exception(name) => Kept::Name(self.name(name)),
        };
        let full = self.count >= MAX_OPEN;
        let runs = match self.open.get_mut(&slot) {
            Some(runs) => runs,
            None if full => return,
            None => self.open.entry(slot).or_default(),
        };
        let run = match runs.iter().position(|(key, _)| *key == host) {
            Some(at) => &mut runs[at].1,
            None if full => return,
            None => {
                self.count += 1;
                runs.push((host, Vec::new()));
                &mut runs.last_mut().expect("pushed").1
            }
        };
        match run.iter_mut().find(|(k, _)| *k == kept) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => run.push((kept, 1)),
        }
    }

    /// The run of `slot` (for `host`) ended, by a success; `host` `None`: every host's (the
    /// slot took a new id).
    pub fn ended(&mut self, slot: u32, host: Option<u64>) {
        let Some(runs) = self.open.get_mut(&slot) else {
            return;
        };
        let before = runs.len();
        match host {
            Some(host) => runs.retain(|(key, _)| *key != host),
            None => runs.clear(),
        }
        self.count -= before - runs.len();
        if runs.is_empty() {
            self.open.remove(&slot);
        }
    }

    /// The reasons of the run that just benched `slot` (for `host`), which ends it:
    /// `"429 ×3, DownloadTimeoutError ×2"`; `None` when it went unexplained (past the bound).
    pub fn take(&mut self, slot: u32, host: u64) -> Option<String> {
        let runs = self.open.get_mut(&slot)?;
        let at = runs.iter().position(|(key, _)| *key == host)?;
        let (_, run) = runs.swap_remove(at);
        self.count -= 1;
        if runs.is_empty() {
            self.open.remove(&slot);
        }
        let mut text = String::new();
        for (kept, n) in run {
            if !text.is_empty() {
                text.push_str(", ");
            }
            match kept {
                Kept::Status(status) => write!(text, "{status}"),
                Kept::Name(i) => write!(
                    text,
                    "{}",
                    self.names
                        .get(usize::from(i))
                        .map_or("other", |name| &**name)
                ),
                Kept::Ban => write!(text, "ban"),
            }
            .expect("a String takes any text");
            write!(text, " \u{d7}{n}").expect("a String takes any text");
        }
        Some(text)
    }

    /// How many runs are open (kept).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn name(&mut self, name: &str) -> u16 {
        if let Some(i) = self.names.iter().position(|known| &**known == name) {
            return i as u16;
        }
        if self.names.len() >= MAX_NAMES {
            return u16::MAX;
        }
        self.names.push(name.into());
        (self.names.len() - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_says_its_reasons_in_order_with_counts() {
        let mut runs = Runs::default();
        for reason in [
            Reason::Status(429),
            Reason::Exception("DownloadTimeoutError"),
            Reason::Status(429),
            Reason::Status(429),
            Reason::Exception("DownloadTimeoutError"),
        ] {
            runs.failed(3, 0, reason);
        }
        assert_eq!(
            runs.take(3, 0).as_deref(),
            Some("429 \u{d7}3, DownloadTimeoutError \u{d7}2")
        );
        assert!(runs.is_empty());
        assert_eq!(runs.take(3, 0), None);
    }

    #[test]
    fn a_success_ends_the_run_and_keeps_nothing() {
        let mut runs = Runs::default();
        runs.failed(1, 0, Reason::Ban);
        runs.ended(1, Some(0));
        assert!(runs.is_empty());
        runs.failed(1, 0, Reason::Status(503));
        assert_eq!(runs.take(1, 0).as_deref(), Some("503 \u{d7}1"));
    }

    #[test]
    fn hosts_keep_their_own_runs_and_a_new_id_ends_them_all() {
        let mut runs = Runs::default();
        let (a, b) = (host_key(Some("a.test")), host_key(Some("b.test")));
        assert_ne!(a, b);
        assert_ne!(a, 0);
        runs.failed(2, a, Reason::Status(403));
        runs.failed(2, b, Reason::Status(429));
        assert_eq!(runs.len(), 2);
        runs.ended(2, Some(a));
        assert_eq!(runs.take(2, b).as_deref(), Some("429 \u{d7}1"));
        runs.failed(2, a, Reason::Status(403));
        runs.failed(2, b, Reason::Status(403));
        runs.ended(2, None);
        assert!(runs.is_empty());
    }

    #[test]
    fn past_the_bound_new_runs_go_unexplained() {
        let mut runs = Runs::default();
        for slot in 0..MAX_OPEN as u32 + 10 {
            runs.failed(slot, 0, Reason::Status(503));
        }
        assert_eq!(runs.len(), MAX_OPEN);
        assert_eq!(runs.take(MAX_OPEN as u32 + 5, 0), None);
        assert!(runs.take(7, 0).is_some());
    }
}
