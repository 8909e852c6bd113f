//! One pool for every process of a crawl (`HEX_PROXY_REDIS_URL`, promise 18): what a process
//! tells the others about its sessions, and how it takes what they tell it.
//!
//! The engine decides everything, as alone; sharing only widens what it knows. While sharing
//! is on, the engine notes the facts the others must learn — a failure that counted in a run,
//! a run that a success ended, a ban — in an outbox that the runtime's background thread
//! empties into Redis (`_shared.py`); a healthy attempt on a session with no failure run notes
//! nothing, so the per-request path never waits for the network. What the others noted comes
//! back as [`Fact`]s, which `Engine::take_fact` merges under the same rules: a run is as long
//! as the longest count known (the shared count, once Redis answers), and a run that reaches
//! `HEX_PROXY_MAX_FAILURES` blacklists as a local one would.

use std::time::Duration;

/// What happened to a session, as this process tells it to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// A failure that counted in the session's run.
    Failed,
    /// A success ended the session's run.
    Cleared,
    /// The session was blacklisted for this long from now (in rotate mode its id is done for).
    Banned(Duration),
}

/// One entry of the outbox: a session by number (as `pick` hands it out; every process that
/// shares a pool has its configuration, so numbers name the same ids everywhere), the target
/// host in ban scope "domain", and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub number: u64,
    pub host: Option<Box<str>>,
    pub noted: Noted,
}

/// What another process (or Redis, answering for all of them) says about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// The session's run counts this many failures over every process.
    Run(u32),
    /// Its run ended with a success.
    Cleared,
    /// It is blacklisted for this much longer.
    Banned(Duration),
}

/// The outbox is bounded: past this many notes unsent (Redis away for long), failures and
/// ended runs are no longer noted (bans are: the runtime keeps its own until Redis is back).
pub const MAX_NOTES: usize = 100_000;

/// Called when the outbox gets a note while empty: it wakes whoever empties it (the runtime's
/// thread sleeps until then, so a healthy crawl costs it nothing). It must not block.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The outbox; off (and empty) unless the runtime shares the pool.
#[derive(Default)]
pub struct Outbox {
    notes: Vec<Note>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("notes", &self.notes)
            .field("waker", &self.waker.is_some())
            .finish()
    }
}

impl Outbox {
    pub fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }

    pub fn push(&mut self, number: u64, host: Option<&str>, noted: Noted) {
        if self.notes.len() >= MAX_NOTES && !matches!(noted, Noted::Banned(_)) {
            return;
        }
        self.notes.push(Note {
            number,
            host: host.map(Into::into),
            noted,
        });
        if self.notes.len() == 1 {
            if let Some(wake) = &self.waker {
                wake();
            }
        }
    }

    pub fn take(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }
}

/// The name of a pool's shared state in Redis, from the configuration `Engine::describe`
/// gives (the gateway's host:port and user, or the list's proxies without passwords; pool
/// size, ban scope, rotation): processes of one configuration share, any other difference
/// keeps them apart, and no password is in it. In braces, a Redis Cluster hash tag: every key
/// of one pool lives in one hash slot, so that one script may touch several.
pub fn key_of(description: &str) -> String {
    format!(
        "hexproxy:{{{:016x}}}",
        crate::snapshot::fnv1a(description.as_bytes())
    )
}

/// Rotated ids (identity.rs) are numbered from an epoch; each process sharing a pool takes
/// its own from a counter in Redis (`INCR`), and its ids are then unique among every process
/// and run of the pool: `EPOCH_SPAN` generations per slot apart, within the bound the epochs
/// of a lone crawl keep (below 2^31, so that numbers fit in a u64 at any pool size).
pub const EPOCH_SPAN: u64 = 1 << 16;

/// The epoch of the `nth` process to take one (1, 2, ...; Redis's counter); after 32,767
/// processes the epochs come round again.
pub fn epoch_of(nth: u64) -> u64 {
    1 + (nth.saturating_sub(1) % ((1 << 31) / EPOCH_SPAN - 1)) * EPOCH_SPAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_configurations_and_holds_no_password() {
        let a = key_of("gateway=127.0.0.1:8000\nuser=\"USER\"\npool_size=20");
        let b = key_of("gateway=127.0.0.1:8000\nuser=\"OTHER\"\npool_size=20");
        assert_ne!(a, b);
        assert_eq!(
            a,
            key_of("gateway=127.0.0.1:8000\nuser=\"USER\"\npool_size=20")
        );
        assert!(a.starts_with("hexproxy:{") && a.ends_with('}'));
    }

    #[test]
    fn epochs_are_apart_by_a_span_and_stay_below_the_lone_crawls_bound() {
        assert_eq!(epoch_of(1), 1);
        assert_eq!(epoch_of(2), 1 + EPOCH_SPAN);
        for nth in [1, 2, 1000, 32_767, 32_768, u64::MAX] {
            assert!(epoch_of(nth) >= 1 && epoch_of(nth) < 1 << 31);
        }
        assert_eq!(epoch_of(32_768), 1);
    }

    #[test]
    fn the_waker_is_called_when_an_empty_outbox_gets_a_note() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;

        let woken = Arc::new(AtomicU32::new(0));
        let mut outbox = Outbox::default();
        let counter = Arc::clone(&woken);
        outbox.set_waker(Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        outbox.push(1, None, Noted::Failed);
        outbox.push(2, None, Noted::Failed);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        outbox.take();
        outbox.push(3, None, Noted::Cleared);
        assert_eq!(woken.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_full_outbox_keeps_bans_only() {
        let mut outbox = Outbox::default();
        for number in 0..MAX_NOTES as u64 {
            outbox.push(number, None, Noted::Failed);
        }
        outbox.push(1, Some("a.test"), Noted::Cleared);
        outbox.push(2, None, Noted::Banned(Duration::from_secs(300)));
        let notes = outbox.take();
        assert_eq!(notes.len(), MAX_NOTES + 1);
        assert_eq!(
            notes.last().unwrap().noted,
            Noted::Banned(Duration::from_secs(300))
        );
        assert!(outbox.take().is_empty());
    }
}
