//! Counters for the crawl stats (`hex_proxy/...`), shared by all threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::worst::WorstSessions;

/// Statuses a failure can carry: the config only accepts 100..=599.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// What a session failure is counted under: `hex_proxy/failure/<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// A status, in 100..=599 (the config only accepts those as failure codes).
    Status(u16),
    /// A transport exception's class name (or `unobserved`).
    Exception(&'a str),
    /// A ban only a ban policy saw.
    Ban,
}

#[derive(Debug)]
pub struct Stats {
    /// Failures by status, lock-free and without formatting the reason on the hot path.
    status_failures: [AtomicU64; STATUSES],
    /// Failures by exception class name.
    exception_failures: Mutex<HashMap<String, u64>>,
    /// Failures a ban policy found that the status and exception rules would not have.
    bans: AtomicU64,
    blacklisted: AtomicU64,
    retry: AtomicU64,
    retry_max_exceeded: AtomicU64,
    /// Retry pacing: retries given a wait above zero, waits set by Retry-After, the waits in
    /// milliseconds (sum and longest), retries still waiting when the spider closed.
    retry_delayed: AtomicU64,
    retry_after: AtomicU64,
    retry_wait_ms_total: AtomicU64,
    retry_wait_ms_max: AtomicU64,
    retries_dropped: AtomicU64,
    rotated: AtomicU64,
    /// The sessions that failed most (bounded), fed by failures only.
    worst: Mutex<WorstSessions>,
    /// Bans another process sharing the pool made, taken here (shared.rs).
    shared_bans_taken: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            status_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            exception_failures: Mutex::default(),
            bans: AtomicU64::new(0),
            blacklisted: AtomicU64::new(0),
            retry: AtomicU64::new(0),
            retry_max_exceeded: AtomicU64::new(0),
            retry_delayed: AtomicU64::new(0),
            retry_after: AtomicU64::new(0),
            retry_wait_ms_total: AtomicU64::new(0),
            retry_wait_ms_max: AtomicU64::new(0),
            retries_dropped: AtomicU64::new(0),
            rotated: AtomicU64::new(0),
            worst: Mutex::default(),
            shared_bans_taken: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// A failure of session `number` (as `Engine::pick` returns it), which `blacklisted` it:
    /// under its reason, and against the session among the worst.
    pub fn failure(&self, number: u64, reason: Reason<'_>, blacklisted: bool) {
        match reason {
            Reason::Status(status) => {
                bump(&self.status_failures[usize::from(status - FIRST_STATUS)]);
            }
            Reason::Exception(name) => {
                let mut failures = self.exception_failures.lock();
                match failures.get_mut(name) {
                    Some(count) => *count += 1,
                    None => {
                        failures.insert(name.to_owned(), 1);
                    }
                }
            }
            Reason::Ban => bump(&self.bans),
        }
        self.worst.lock().failure(number, reason, blacklisted);
    }

    pub fn blacklisted(&self) {
        bump(&self.blacklisted);
    }

    pub fn retry(&self) {
        bump(&self.retry);
    }

    pub fn retry_max_exceeded(&self) {
        bump(&self.retry_max_exceeded);
    }

    pub fn retry_wait(&self, wait: Duration, from_retry_after: bool) {
        if from_retry_after {
            bump(&self.retry_after);
        }
        if wait.is_zero() {
            return;
        }
        bump(&self.retry_delayed);
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.retry_wait_ms_total.fetch_add(ms, Ordering::Relaxed);
        self.retry_wait_ms_max.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn retries_dropped(&self, count: u64) {
        self.retries_dropped.fetch_add(count, Ordering::Relaxed);
    }

    /// A slot took a new session id.
    pub fn rotated(&self) {
        bump(&self.rotated);
    }

    /// Another process sharing the pool banned a session, and this one took the ban.
    pub fn shared_ban_taken(&self) {
        bump(&self.shared_bans_taken);
    }

    /// Every nonzero counter, the worst sessions' figures and the two session gauges, sorted
    /// by key.
    pub fn snapshot(&self, live: u32, cooling: u32) -> Vec<(String, u64)> {
        let by_status = (FIRST_STATUS..)
            .zip(&self.status_failures)
            .map(|(status, count)| (status, load(count)))
            .filter(|&(_, count)| count > 0)
            .map(|(status, count)| (status.to_string(), count));
        let mut by_exception = self.exception_failures.lock().clone();
        // Shares the key space of exception names; an exception class called `ban` adds up.
        let bans = load(&self.bans);
        if bans > 0 {
            *by_exception.entry("ban".to_owned()).or_default() += bans;
        }
        let failures = by_status
            .chain(by_exception)
            .map(|(reason, count)| (format!("hex_proxy/failure/{reason}"), count));
        let counters = [
            ("blacklisted", &self.blacklisted),
            ("retry", &self.retry),
            ("retry/max_exceeded", &self.retry_max_exceeded),
            ("retry/delayed", &self.retry_delayed),
            ("retry/retry_after", &self.retry_after),
            ("retry/wait_ms_total", &self.retry_wait_ms_total),
            ("retry/wait_ms_max", &self.retry_wait_ms_max),
            ("retry/dropped_at_close", &self.retries_dropped),
            ("rotated", &self.rotated),
            ("shared/bans_taken", &self.shared_bans_taken),
        ]
        .map(|(name, count)| (format!("hex_proxy/{name}"), load(count)));
        let gauges = [("live", live), ("cooling", cooling)]
            .map(|(name, count)| (format!("hex_proxy/sessions/{name}"), u64::from(count)));
        let worst = self.worst.lock().snapshot();
        let mut out: Vec<(String, u64)> = failures
            .chain(counters)
            .filter(|&(_, count)| count > 0)
            .chain(worst)
            .chain(gauges)
            .collect();
        out.sort_unstable();
        out
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(snapshot: &[(String, u64)]) -> Vec<&str> {
        snapshot.iter().map(|(key, _)| key.as_str()).collect()
    }

    #[test]
    fn fresh_stats_show_only_the_gauges() {
        let snapshot = Stats::default().snapshot(20, 0);
        assert_eq!(
            snapshot,
            [
                ("hex_proxy/sessions/cooling".to_owned(), 0),
                ("hex_proxy/sessions/live".to_owned(), 20),
            ]
        );
    }

    #[test]
    fn counters_appear_under_their_keys() {
        let stats = Stats::default();
        stats.failure(1, Reason::Status(429), false);
        stats.failure(1, Reason::Status(429), false);
        stats.failure(1, Reason::Status(100), false);
        stats.failure(1, Reason::Status(599), false);
        stats.failure(1, Reason::Exception("TunnelError"), false);
        stats.failure(2, Reason::Ban, true);
        stats.blacklisted();
        stats.retry();
        stats.retry();
        stats.retry_max_exceeded();
        stats.retry_wait(Duration::from_millis(1500), false);
        stats.retry_wait(Duration::from_millis(250), true);
        stats.retry_wait(Duration::ZERO, true);
        stats.retries_dropped(2);
        stats.rotated();
        let snapshot = stats.snapshot(18, 2);
        assert_eq!(
            keys(&snapshot),
            [
                "hex_proxy/blacklisted",
                "hex_proxy/failure/100",
                "hex_proxy/failure/429",
                "hex_proxy/failure/599",
                "hex_proxy/failure/TunnelError",
                "hex_proxy/failure/ban",
                "hex_proxy/retry",
                "hex_proxy/retry/delayed",
                "hex_proxy/retry/dropped_at_close",
                "hex_proxy/retry/max_exceeded",
                "hex_proxy/retry/retry_after",
                "hex_proxy/retry/wait_ms_max",
                "hex_proxy/retry/wait_ms_total",
                "hex_proxy/rotated",
                "hex_proxy/session/s001/failure/100",
                "hex_proxy/session/s001/failure/429",
                "hex_proxy/session/s001/failure/599",
                "hex_proxy/session/s001/failure/TunnelError",
                "hex_proxy/session/s001/failures",
                "hex_proxy/session/s002/blacklisted",
                "hex_proxy/session/s002/failure/ban",
                "hex_proxy/session/s002/failures",
                "hex_proxy/sessions/cooling",
                "hex_proxy/sessions/live",
            ]
        );
        let get = |key: &str| snapshot.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(get("hex_proxy/failure/429"), 2);
        assert_eq!(get("hex_proxy/session/s001/failures"), 5);
        assert_eq!(get("hex_proxy/retry"), 2);
        assert_eq!(get("hex_proxy/sessions/cooling"), 2);
        assert_eq!(get("hex_proxy/retry/delayed"), 2);
        assert_eq!(get("hex_proxy/retry/retry_after"), 2);
        assert_eq!(get("hex_proxy/retry/wait_ms_total"), 1750);
        assert_eq!(get("hex_proxy/retry/wait_ms_max"), 1500);
        assert_eq!(get("hex_proxy/retry/dropped_at_close"), 2);
    }
}
