//! Ban scope "domain": failures and blacklists kept per (session, target host), so that a
//! session banned by one site keeps serving the others. There is no global blacklist: a slot
//! is live for host h unless it cools for h.
//!
//! A host is tracked while it holds a record against some slot (a failure run or a cooldown);
//! a host whose last record goes is dropped at once. The records of all hosts are capped
//! (`max_records`, at least the pool size, so that one host can always bench every slot): past
//! the cap the least recently touched host is forgotten whole (`hosts/evicted`), which only
//! ends its bans early; a request is never dropped for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};
use std::time::Duration;

use rand::Rng;

use crate::clock::saturating_ns;
use crate::slot_tree::{Entry, Forest, NIL, NODE_BYTES};

/// The fewest records kept before hosts are evicted, whatever the pool size.
pub const MIN_RECORDS: u32 = 1 << 18;
/// What a record costs at worst, all included (its node, and its host's slab slot and index
/// entry and its slot's entry in `Slots::held` if it were alone there, with hash-table slack).
/// `memory_stays_within_the_documented_bound` checks it.
pub const MAX_BYTES_PER_RECORD: usize = 128;
/// As `Pool`: rejection-sampling tries before the exact count.
const TRIES: usize = 16;
/// As `Pool`: up to this many live slots per excluded one, the allowed ones are counted.
const EXACT_RATIO: usize = 4;

/// `HEX_PROXY_BAN_SCOPE`: what failures and blacklists are kept against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanScope {
    /// A session, whatever the target (the pool alone).
    Session,
    /// A (session, target host) pair (`HostBans`).
    Domain,
}

impl BanScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Domain => "domain",
        }
    }
}

/// The target host of a URL as Scrapy's download slots (and urllib's `hostname`) see it: the
/// authority without userinfo and port, ASCII-lowercased, an IPv6 literal without brackets;
/// exactly that name (`www.a.test` and `a.test` are two hosts). "" for a URL without one.
pub fn host_of(url: &str) -> Cow<'_, str> {
    let Some((_, rest)) = url
        .split_once("://")
        .filter(|(scheme, _)| !scheme.contains(['/', '?', '#']))
    else {
        return Cow::Borrowed("");
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(literal) => literal.split(']').next().unwrap_or(literal),
        None => host_port.split(':').next().unwrap_or(host_port),
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A record as saved: a run of failures, or a cooldown with the time it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Failing(u32),
    Cooling(Duration),
}

/// A host's key (its name hashed) and its records, as saved.
pub type HostRecords = (u64, Vec<(u32, Record)>);

/// A tracked host: its tree of records and its place in the recency list. 24 bytes.
#[derive(Debug)]
struct Host {
    /// The host's name hashed (the name itself is not kept).
    key: u64,
    root: u32,
    /// Neighbours in the recency list (`NIL` at the ends); `newer` links the free slab slots.
    newer: u32,
    older: u32,
}

#[derive(Debug)]
pub struct HostBans {
    size: u32,
    max_failures: u32,
    cooldown_ns: u64,
    max_records: usize,
    /// Hosts are told apart by a 64-bit keyed hash (SipHash, random key), so a host costs the
    /// same whatever its name's length: two names tracked at once share bans only if their
    /// hashes collide, about 2 in 10^9 with 2^18 hosts tracked. The key is drawn at random and
    /// saved with the records (`export`), so that a resumed crawl finds its hosts again.
    hash_key: u64,
    /// Host key -> its slot in `hosts`.
    index: HashMap<u64, u32>,
    /// A slab of hosts; freed entries are reused through `free_host`.
    hosts: Vec<Host>,
    free_host: u32,
    newest: u32,
    oldest: u32,
    forest: Forest,
    slots: Slots,
    evicted: u64,
}

/// What all hosts hold against each slot, kept as records come and go.
#[derive(Debug, Default)]
struct Slots {
    /// The slots some host holds a record against; any other slot is clean everywhere.
    held: HashMap<u32, Held>,
    /// Slots cooling for at least one host.
    benched: u32,
    /// (slot, host) pairs cooling.
    cooling_pairs: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    records: u32,
    cooling: u32,
}

impl Slots {
    fn added(&mut self, slot: u32) {
        self.held.entry(slot).or_default().records += 1;
    }

    /// One of the slot's records started cooling.
    fn cooled(&mut self, slot: u32) {
        let held = self.held.get_mut(&slot).expect("the record was added");
        self.benched += u32::from(held.cooling == 0);
        held.cooling += 1;
        self.cooling_pairs += 1;
    }

    fn removed(&mut self, slot: u32, entry: Entry) {
        let held = self.held.get_mut(&slot).expect("the record was added");
        if let Entry::Cooling(_) = entry {
            held.cooling -= 1;
            self.benched -= u32::from(held.cooling == 0);
            self.cooling_pairs -= 1;
        }
        held.records -= 1;
        if held.records == 0 {
            self.held.remove(&slot);
        }
    }
}

/// What `HostBans::update` does to a (slot, host) record.
#[derive(Clone, Copy)]
enum Change {
    Failure,
    AtLeast(u32),
    Until(u64),
}

impl HostBans {
    pub fn new(size: u32, max_failures: u32, cooldown: Duration) -> Self {
        Self::with_max_records(size, max_failures, cooldown, size.max(MIN_RECORDS))
    }

    /// `max_records` must be at least `size`: one host may bench every slot.
    pub fn with_max_records(
        size: u32,
        max_failures: u32,
        cooldown: Duration,
        max_records: u32,
    ) -> Self {
        assert!(max_records >= size);
        Self {
            size,
            max_failures,
            cooldown_ns: saturating_ns(cooldown),
            max_records: max_records as usize,
            hash_key: RandomState::new().hash_one(0_u8),
            index: HashMap::new(),
            hosts: Vec::new(),
            free_host: NIL,
            newest: NIL,
            oldest: NIL,
            forest: Forest::new(max_records as usize),
            slots: Slots::default(),
            evicted: 0,
        }
    }

    /// A slot not cooling for `host`, uniformly at random, avoiding `exclude` where any other
    /// is live for it; `None` iff every slot cools for it. O(log c) expected (c = the host's
    /// records), however many slots cool for it.
    pub fn pick(
        &mut self,
        host: &str,
        now: u64,
        exclude: &[u32],
        rng: &mut impl Rng,
    ) -> Option<u32> {
        let root = self.find(host, now).map_or(NIL, |h| self.root(h));
        let live = self.size - self.forest.cooling(root);
        if live == 0 {
            return None;
        }
        if (live as usize) <= EXACT_RATIO * exclude.len() {
            return Some(self.pick_exact(root, live, exclude, rng));
        }
        for _ in 0..TRIES {
            let slot = self.forest.nth_not_cooling(root, rng.random_range(0..live));
            if !exclude.contains(&slot) {
                return Some(slot);
            }
        }
        Some(self.pick_exact(root, live, exclude, rng))
    }

    /// O(exclude * log c): the excluded slots' ranks among the live ones are skipped over.
    fn pick_exact(&self, root: u32, live: u32, exclude: &[u32], rng: &mut impl Rng) -> u32 {
        let mut ranks: Vec<u32> = exclude
            .iter()
            .filter(|&&slot| slot < self.size && !self.cools(root, slot))
            .map(|&slot| slot - self.forest.cooling_before(root, slot))
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        let allowed = live - ranks.len() as u32;
        if allowed == 0 {
            return self.forest.nth_not_cooling(root, rng.random_range(0..live));
        }
        let mut k = rng.random_range(0..allowed);
        for rank in ranks {
            if rank > k {
                break;
            }
            k += 1;
        }
        self.forest.nth_not_cooling(root, k)
    }

    /// Counts a failure of `slot` at `host`; true when it blacklists the slot for the host.
    /// A failure while it cools there (an attempt in flight when it was blacklisted) is ignored.
    pub fn failure(&mut self, slot: u32, host: &str, now: u64) -> bool {
        self.update(slot, host, now, Change::Failure)
    }

    /// Raises the slot's run at `host` to `failures` (a run counted by every process sharing
    /// the pool, `shared.rs`); true when that blacklists it for the host. Nothing changes
    /// while it cools there or when its run is already as long.
    pub fn merge_failures(&mut self, slot: u32, host: &str, failures: u32, now: u64) -> bool {
        self.update(slot, host, now, Change::AtLeast(failures))
    }

    /// Blacklists the slot for `host` until `until` (another process's ban); false when it
    /// cools there already.
    pub fn cool_until(&mut self, slot: u32, host: &str, until: u64, now: u64) -> bool {
        self.update(slot, host, now, Change::Until(until))
    }

    fn update(&mut self, slot: u32, host: &str, now: u64, change: Change) -> bool {
        let key = self.key_of(host);
        let found = self.find_key(key, now);
        let entry = found.and_then(|h| self.forest.get(self.root(h), slot));
        let fails = match entry {
            Some(Entry::Cooling(_)) => return false,
            Some(Entry::Failing(fails)) => fails,
            None => 0,
        };
        let (next, blacklisted) = match change {
            Change::Failure => self.after(fails.saturating_add(1), now),
            Change::AtLeast(failures) if failures > fails => self.after(failures, now),
            Change::AtLeast(_) => return false,
            Change::Until(until) if until > now => (Entry::Cooling(until), true),
            Change::Until(_) => return false,
        };
        if entry.is_none() {
            self.make_room(found.unwrap_or(NIL));
        }
        let h = found.unwrap_or_else(|| self.add_host(key));
        if self
            .forest
            .set(&mut self.hosts[h as usize].root, slot, next)
        {
            self.slots.added(slot);
        }
        if blacklisted {
            self.slots.cooled(slot);
        }
        blacklisted
    }

    /// A run of `fails` failures: still failing, or blacklisted from `now` on.
    fn after(&self, fails: u32, now: u64) -> (Entry, bool) {
        if fails >= self.max_failures {
            (Entry::Cooling(now.saturating_add(self.cooldown_ns)), true)
        } else {
            (Entry::Failing(fails), false)
        }
    }

    /// A success at `host` ends the slot's run of failures there (a cooling slot keeps its
    /// cooldown).
    /// Whether it ended a run of failures.
    pub fn success(&mut self, slot: u32, host: &str, now: u64) -> bool {
        let Some(h) = self.find(host, now) else {
            return false;
        };
        if let Some(entry @ Entry::Failing(_)) = self.forest.get(self.root(h), slot) {
            self.forest.remove(&mut self.hosts[h as usize].root, slot);
            self.slots.removed(slot, entry);
            self.drop_if_empty(h);
            return true;
        }
        false
    }

    /// How long until a slot is live for `host`: zero if one is live now.
    pub fn next_live_in(&mut self, host: &str, now: u64) -> Duration {
        let Some(h) = self.find(host, now) else {
            return Duration::ZERO;
        };
        let root = self.root(h);
        match self.forest.first_until(root) {
            Some(until) if self.forest.cooling(root) == self.size => {
                Duration::from_nanos(until - now)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn is_cooling(&mut self, slot: u32, host: &str, now: u64) -> bool {
        self.find(host, now)
            .is_some_and(|h| self.cools(self.root(h), slot))
    }

    /// Drops every record of `slot`, on every host (the slot got a new identity): O(1) when
    /// no host holds one (the common case), else O(hosts tracked). True if that ended a
    /// cooldown (requests waiting for that host may go now).
    pub fn forget(&mut self, slot: u32) -> bool {
        let cooled = self
            .slots
            .held
            .get(&slot)
            .is_some_and(|held| held.cooling > 0);
        let mut h = self.newest;
        while h != NIL && self.slots.held.contains_key(&slot) {
            let older = self.hosts[h as usize].older;
            if let Some(entry) = self.forest.remove(&mut self.hosts[h as usize].root, slot) {
                self.slots.removed(slot, entry);
                self.drop_if_empty(h);
            }
            h = older;
        }
        cooled
    }

    /// The (slot, host) pair that comes back first: its slot, and how long until then.
    /// O(hosts tracked), for the log.
    pub fn next_back(&mut self, now: u64) -> Option<(u32, Duration)> {
        self.counts(now);
        let mut first: Option<(u32, u64)> = None;
        let mut h = self.newest;
        while h != NIL {
            if let Some((slot, until)) = self.forest.first_back(self.root(h)) {
                if first.is_none_or(|(_, earliest)| until < earliest) {
                    first = Some((slot, until));
                }
            }
            h = self.hosts[h as usize].older;
        }
        first.map(|(slot, until)| (slot, Duration::from_nanos(until - now)))
    }

    /// `(live, cooling)`: slots cooling for no host, and (slot, host) pairs cooling. Ends the
    /// cooldowns that are over on every host: O(hosts), for the stats, not per request.
    pub fn counts(&mut self, now: u64) -> (u32, u32) {
        let mut h = self.newest;
        while h != NIL {
            let older = self.hosts[h as usize].older;
            self.expire(h, now);
            h = older;
        }
        (self.size - self.slots.benched, self.slots.cooling_pairs)
    }

    /// Hosts tracked now (with at least one record).
    pub fn tracked(&self) -> u32 {
        self.index.len() as u32
    }

    /// Hosts forgotten early to keep within `max_records`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records held now, over all hosts.
    pub fn records(&self) -> usize {
        self.forest.used()
    }

    /// Bytes held on the heap (the hash tables counted by their buckets, the vectors by their
    /// capacity).
    pub fn heap_bytes(&self) -> usize {
        self.forest.heap_bytes()
            + self.hosts.capacity() * std::mem::size_of::<Host>()
            + table_bytes(self.index.capacity(), std::mem::size_of::<(u64, u32)>())
            + table_bytes(
                self.slots.held.capacity(),
                std::mem::size_of::<(u32, Held)>(),
            )
    }

    /// A host's key: SipHash (std's, keyed by `hash_key`) of its name.
    fn key_of(&self, host: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash_key.hash(&mut hasher);
        host.hash(&mut hasher);
        hasher.finish()
    }

    /// The records for a snapshot: the hash key, and each host's key with its records (a
    /// cooldown as the time it has left at `now`), from the least recently touched host on.
    /// O(records).
    pub fn export(&mut self, now: u64) -> (u64, Vec<HostRecords>) {
        self.counts(now);
        let mut hosts = Vec::with_capacity(self.index.len());
        let mut h = self.oldest;
        while h != NIL {
            let host = &self.hosts[h as usize];
            let mut records = Vec::new();
            self.forest.visit(host.root, |slot, entry| {
                records.push((
                    slot,
                    match entry {
                        Entry::Failing(fails) => Record::Failing(fails),
                        Entry::Cooling(until) => {
                            Record::Cooling(Duration::from_nanos(until.saturating_sub(now)))
                        }
                    },
                ));
            });
            records.sort_unstable_by_key(|&(slot, _)| slot);
            hosts.push((host.key, records));
            h = host.newer;
        }
        (self.hash_key, hosts)
    }

    /// Restores the records `export` gave into a fresh `HostBans`, after a pause of `pause`
    /// ns: hosts come least recently touched first; past `max_records` the oldest are evicted
    /// as usual; a cooldown that ended during the pause is dropped. Returns the records kept.
    pub fn restore(&mut self, hash_key: u64, hosts: &[HostRecords], now: u64, pause: u64) -> u32 {
        self.hash_key = hash_key;
        let mut restored = 0;
        for (key, records) in hosts {
            for &(slot, record) in records {
                let entry = match record {
                    Record::Failing(fails) => Entry::Failing(fails),
                    Record::Cooling(left) => match saturating_ns(left).checked_sub(pause) {
                        Some(left) if left > 0 => Entry::Cooling(now.saturating_add(left)),
                        _ => continue,
                    },
                };
                let found = self.index.get(key).copied();
                if slot >= self.size
                    || found.is_some_and(|h| self.forest.get(self.root(h), slot).is_some())
                {
                    continue;
                }
                self.make_room(found.unwrap_or(NIL));
                let h = match self.index.get(key) {
                    Some(&h) => h,
                    None => self.add_host(*key),
                };
                self.forest
                    .set(&mut self.hosts[h as usize].root, slot, entry);
                self.slots.added(slot);
                if let Entry::Cooling(_) = entry {
                    self.slots.cooled(slot);
                }
                restored += 1;
            }
        }
        restored
    }

    fn root(&self, h: u32) -> u32 {
        self.hosts[h as usize].root
    }

    fn cools(&self, root: u32, slot: u32) -> bool {
        matches!(self.forest.get(root, slot), Some(Entry::Cooling(_)))
    }

    /// The host's slab slot, with its ended cooldowns gone, marked as the most recently
    /// touched; `None` if it holds nothing (then it is not tracked).
    fn find(&mut self, host: &str, now: u64) -> Option<u32> {
        let key = self.key_of(host);
        self.find_key(key, now)
    }

    fn find_key(&mut self, key: u64, now: u64) -> Option<u32> {
        let h = *self.index.get(&key)?;
        if !self.expire(h, now) {
            return None;
        }
        self.unlink(h);
        self.link_newest(h);
        Some(h)
    }

    /// Ends the host's cooldowns that are over; false if that left it empty (then dropped).
    fn expire(&mut self, h: u32, now: u64) -> bool {
        while let Some(slot) = self
            .forest
            .pop_expired(&mut self.hosts[h as usize].root, now)
        {
            self.slots.removed(slot, Entry::Cooling(now));
        }
        !self.drop_if_empty(h)
    }

    /// Evicts the least recently touched hosts (never `keep`) until a record fits.
    fn make_room(&mut self, keep: u32) {
        while self.forest.used() >= self.max_records {
            let mut victim = self.oldest;
            if victim == keep {
                victim = self.hosts[victim as usize].newer;
            }
            // `keep` holds fewer than `size` <= `max_records` records, so another host exists.
            debug_assert_ne!(victim, NIL);
            let Self {
                forest,
                hosts,
                slots,
                ..
            } = self;
            forest.clear(&mut hosts[victim as usize].root, |slot, entry| {
                slots.removed(slot, entry);
            });
            self.drop_if_empty(victim);
            self.evicted += 1;
        }
    }

    fn add_host(&mut self, key: u64) -> u32 {
        let host = Host {
            key,
            root: NIL,
            newer: NIL,
            older: NIL,
        };
        let h = if self.free_host == NIL {
            if self.hosts.len() == self.hosts.capacity() {
                // As `Forest::alloc`: never room for more hosts than records (plus the one
                // being added before its first record).
                let limit = self.max_records + 1;
                let more = self.hosts.len().max(16).min(limit - self.hosts.len());
                self.hosts.reserve_exact(more);
            }
            self.hosts.push(host);
            self.hosts.len() as u32 - 1
        } else {
            let h = self.free_host;
            self.free_host = self.hosts[h as usize].newer;
            self.hosts[h as usize] = host;
            h
        };
        self.index.insert(key, h);
        self.link_newest(h);
        h
    }

    /// Drops the host if it holds no record; true if it did.
    fn drop_if_empty(&mut self, h: u32) -> bool {
        if self.hosts[h as usize].root != NIL {
            return false;
        }
        self.unlink(h);
        self.index.remove(&self.hosts[h as usize].key);
        self.hosts[h as usize].newer = self.free_host;
        self.free_host = h;
        true
    }

    fn unlink(&mut self, h: u32) {
        let Host { newer, older, .. } = self.hosts[h as usize];
        match newer {
            NIL => self.newest = older,
            newer => self.hosts[newer as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            older => self.hosts[older as usize].newer = newer,
        }
    }

    fn link_newest(&mut self, h: u32) {
        let host = &mut self.hosts[h as usize];
        host.newer = NIL;
        host.older = self.newest;
        match self.newest {
            NIL => self.oldest = h,
            newest => self.hosts[newest as usize].newer = h,
        }
        self.newest = h;
    }
}

/// Heap bytes of a std hash table holding `capacity` entries of `entry` bytes: a power of two
/// of buckets at most 7/8 full, each an entry and a control byte, and one group of control
/// bytes more.
fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (entry + 1) + 16
}

const _: () = assert!(NODE_BYTES + std::mem::size_of::<Host>() <= 56);

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn bans(size: u32, max_failures: u32, cooldown_secs: u64) -> HostBans {
        HostBans::new(size, max_failures, Duration::from_secs(cooldown_secs))
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    fn blacklist(bans: &mut HostBans, slot: u32, host: &str, now: u64) {
        while !bans.failure(slot, host, now) {}
    }

    /// The bookkeeping agrees with the trees: per-slot counts, index and list.
    fn assert_consistent(bans: &HostBans) {
        let mut held: HashMap<u32, Held> = HashMap::new();
        let mut records = 0;
        let mut h = bans.newest;
        let mut listed = 0;
        while h != NIL {
            let host = &bans.hosts[h as usize];
            assert_eq!(bans.index[&host.key], h);
            assert_ne!(host.root, NIL, "an empty host is dropped");
            for (slot, entry) in bans.forest.check(host.root) {
                records += 1;
                let held = held.entry(slot).or_default();
                held.records += 1;
                held.cooling += u32::from(matches!(entry, Entry::Cooling(_)));
            }
            listed += 1;
            h = host.older;
        }
        assert_eq!(listed, bans.index.len());
        assert_eq!(records, bans.forest.used());
        assert_eq!(held, bans.slots.held);
        let benched = held.values().filter(|held| held.cooling > 0).count();
        assert_eq!(benched as u32, bans.slots.benched);
        let pairs: u32 = held.values().map(|held| held.cooling).sum();
        assert_eq!(pairs, bans.slots.cooling_pairs);
    }

    #[test]
    fn the_target_host_is_the_exact_lowercased_hostname() {
        for (url, host) in [
            ("http://a.test/page/1", "a.test"),
            ("https://WWW.A.Test:8443/x?y=http://b.test/", "www.a.test"),
            ("http://user:pw@a.test:80", "a.test"),
            ("http://a.test?q=1", "a.test"),
            ("http://a.test#top", "a.test"),
            ("http://[::1]:8080/", "::1"),
            ("http://[2001:DB8::1]/", "2001:db8::1"),
            ("http://127.0.0.1:7777/", "127.0.0.1"),
            ("data:text/plain,a://b", ""),
            ("about:blank", ""),
        ] {
            assert_eq!(host_of(url), host, "{url}");
        }
        assert!(matches!(host_of("http://a.test/"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_blacklist_holds_for_its_host_only_and_ends_with_the_cooldown() {
        let mut bans = bans(3, 2, 10);
        assert!(!bans.failure(1, "a.test", 5 * SEC));
        assert!(bans.failure(1, "a.test", 5 * SEC));
        assert!(bans.is_cooling(1, "a.test", 15 * SEC - 1));
        assert!(!bans.is_cooling(1, "b.test", 5 * SEC));
        assert_eq!(bans.counts(5 * SEC), (2, 1));
        assert_eq!(bans.tracked(), 1);
        assert!(!bans.is_cooling(1, "a.test", 15 * SEC));
        // Back with a clean slate, and the host, now empty, is no longer tracked.
        assert_eq!(bans.tracked(), 0);
        assert_eq!(bans.counts(15 * SEC), (3, 0));
        assert!(!bans.failure(1, "a.test", 15 * SEC));
        assert_consistent(&bans);
    }

    #[test]
    fn failure_runs_are_per_host_and_a_success_ends_only_its_hosts_run() {
        let mut bans = bans(3, 3, 10);
        bans.failure(0, "a.test", 0);
        bans.failure(0, "a.test", 0);
        bans.failure(0, "b.test", 0);
        bans.failure(0, "b.test", 0);
        bans.success(0, "a.test", 0);
        assert_eq!(bans.tracked(), 1, "a.test holds nothing more");
        assert!(!bans.failure(0, "a.test", 0));
        assert!(bans.failure(0, "b.test", 0));
        assert!(!bans.is_cooling(0, "a.test", 0));
        // A success in flight keeps a cooldown; failures in flight do not blacklist again.
        bans.success(0, "b.test", 0);
        assert!(bans.is_cooling(0, "b.test", 0));
        for _ in 0..5 {
            assert!(!bans.failure(0, "b.test", SEC));
        }
        assert_eq!(bans.counts(SEC), (2, 1));
        assert_consistent(&bans);
    }

    #[test]
    fn a_session_banned_by_one_host_is_still_picked_for_another() {
        let mut bans = bans(3, 1, 100);
        let mut rng = rng();
        bans.failure(1, "a.test", 0);
        let mut for_b = [0_u32; 3];
        for _ in 0..3000 {
            assert_ne!(bans.pick("a.test", 0, &[], &mut rng), Some(1));
            for_b[bans.pick("b.test", 0, &[], &mut rng).unwrap() as usize] += 1;
        }
        assert!(
            for_b.iter().all(|&count| count.abs_diff(1000) < 150),
            "{for_b:?}"
        );
    }

    #[test]
    fn picks_are_uniform_over_the_live_slots_with_99_percent_cooling_for_the_host() {
        const SIZE: u32 = 10_000;
        let mut bans = bans(SIZE, 1, 100);
        let mut rng = rng();
        // 99% cooling for a.test, scattered: every slot but one in a hundred.
        let live: Vec<u32> = (0..SIZE).filter(|slot| slot % 100 == 37).collect();
        for slot in (0..SIZE).filter(|slot| slot % 100 != 37) {
            assert!(bans.failure(slot, "a.test", 0));
        }
        let excluded = [live[0], live[50], 5];
        let mut counts = vec![0_u32; SIZE as usize];
        for _ in 0..200_000 {
            counts[bans.pick("a.test", SEC, &[], &mut rng).unwrap() as usize] += 1;
        }
        let mut avoiding = vec![0_u32; SIZE as usize];
        for _ in 0..196_000 {
            avoiding[bans.pick("a.test", SEC, &excluded, &mut rng).unwrap() as usize] += 1;
        }
        for slot in 0..SIZE {
            let (count, avoided) = (counts[slot as usize], avoiding[slot as usize]);
            if !live.contains(&slot) {
                assert_eq!((count, avoided), (0, 0), "slot {slot} cools for a.test");
            } else if excluded.contains(&slot) {
                assert_eq!(avoided, 0);
            } else {
                // 2000 expected each: a tolerance of 10% is 4.5 standard deviations.
                assert!(count.abs_diff(2000) <= 200, "slot {slot}: {count}");
                assert!(avoided.abs_diff(2000) <= 200, "slot {slot}: {avoided}");
            }
        }
        assert_consistent(&bans);
    }

    #[test]
    fn exclusion_is_ignored_when_every_slot_live_for_the_host_is_excluded() {
        let mut bans = bans(3, 1, 100);
        bans.failure(0, "a.test", 0);
        bans.failure(1, "a.test", 0);
        assert_eq!(bans.pick("a.test", 0, &[2], &mut rng()), Some(2));
        assert_eq!(bans.pick("a.test", 0, &[0, 1], &mut rng()), Some(2));
        // Few live per excluded one: the exact count, still avoiding where it can.
        for _ in 0..100 {
            assert_eq!(bans.pick("b.test", 0, &[0, 2, 9], &mut rng()), Some(1));
        }
    }

    #[test]
    fn exhaustion_is_per_host_and_next_live_in_counts_down_for_that_host() {
        let mut bans = bans(2, 1, 10);
        let mut rng = rng();
        bans.failure(0, "a.test", 0);
        bans.failure(1, "a.test", 4 * SEC);
        assert_eq!(bans.pick("a.test", 4 * SEC, &[], &mut rng), None);
        assert!(bans.pick("b.test", 4 * SEC, &[], &mut rng).is_some());
        assert_eq!(bans.next_live_in("a.test", 4 * SEC), Duration::from_secs(6));
        assert_eq!(bans.next_live_in("b.test", 4 * SEC), Duration::ZERO);
        assert_eq!(
            bans.next_live_in("a.test", 10 * SEC - 1),
            Duration::from_nanos(1)
        );
        assert_eq!(bans.next_live_in("a.test", 10 * SEC), Duration::ZERO);
        assert_eq!(bans.pick("a.test", 10 * SEC, &[], &mut rng), Some(0));
        assert_consistent(&bans);
    }

    #[test]
    fn forget_drops_a_slots_records_on_every_host() {
        let mut bans = bans(4, 2, 100);
        for host in ["a.test", "b.test", "c.test"] {
            blacklist(&mut bans, 2, host, 0);
            bans.failure(3, host, 0);
        }
        bans.failure(2, "d.test", 0);
        assert_eq!(bans.counts(0), (3, 3));
        bans.forget(2);
        assert_eq!(bans.counts(0), (4, 0));
        assert_eq!(bans.tracked(), 3, "d.test held only slot 2");
        for host in ["a.test", "b.test", "c.test", "d.test"] {
            assert!(!bans.is_cooling(2, host, 0));
            // A fresh run for the new identity: one failure does not blacklist it.
            assert!(!bans.failure(2, host, 0));
            // Slot 3's runs are kept.
            assert_eq!(bans.failure(3, host, 0), host != "d.test");
        }
        assert_consistent(&bans);
    }

    #[test]
    fn past_the_cap_the_least_recently_touched_hosts_are_forgotten() {
        let mut bans = HostBans::with_max_records(8, 1, Duration::from_secs(100), 100);
        let mut rng = rng();
        for slot in 0..8 {
            bans.failure(slot, "kept.test", 0);
        }
        for n in 0..1000 {
            bans.failure(n % 8, &format!("h{n}.test"), 0);
            // kept.test is touched all along (a pick counts), so it is never the oldest.
            assert_eq!(bans.pick("kept.test", 0, &[], &mut rng), None);
            assert!(bans.records() <= 100);
        }
        assert_eq!(bans.tracked(), 93);
        assert_eq!(bans.evicted(), 1000 - 92);
        assert!(bans.is_cooling(7, "h999.test", 0));
        assert!(
            !bans.is_cooling(0, "h0.test", 0),
            "evicted: its ban ended early"
        );
        assert!(bans.heap_bytes() <= 100 * MAX_BYTES_PER_RECORD);
        assert_consistent(&bans);
        // One host may still bench the whole pool, evicting every other.
        let mut full = HostBans::with_max_records(8, 1, Duration::from_secs(100), 8);
        full.failure(0, "other.test", 0);
        for slot in 0..8 {
            assert!(full.failure(slot, "one.test", 0));
        }
        assert_eq!(full.pick("one.test", 0, &[], &mut rng), None);
        assert_eq!((full.tracked(), full.evicted()), (1, 1));
        assert_consistent(&full);
    }

    #[test]
    fn memory_stays_within_the_documented_bound() {
        // The worst case per record: every record on its own host and its own slot, the
        // tables grown to the cap, then pushed well past it.
        let mut bans = bans(MIN_RECORDS, 1, 100);
        let cap = MIN_RECORDS as usize;
        for n in 0..cap + cap / 4 {
            let slot = (n % cap) as u32;
            assert!(bans.failure(slot, &format!("host-{n}.test"), 0));
        }
        assert_eq!(bans.records(), cap);
        assert_eq!(bans.tracked() as usize, cap);
        let bytes = bans.heap_bytes();
        eprintln!("{bytes} bytes for {cap} records on as many hosts and slots");
        assert!(bytes <= cap * MAX_BYTES_PER_RECORD, "{bytes} bytes");
        // 32 MiB with the default cap, whatever the number of hosts crawled.
        assert_eq!(cap * MAX_BYTES_PER_RECORD, 32 << 20);
        assert_consistent(&bans);
    }

    #[test]
    fn random_operations_keep_the_records_consistent() {
        let mut bans = HostBans::with_max_records(20, 2, Duration::from_secs(5), 40);
        let mut rng = rng();
        let mut now = 0;
        for step in 0..20_000u32 {
            now += rng.random_range(0..SEC / 4);
            let host = ["a", "b", "c", "d", "e", "f"][rng.random_range(0..6)];
            let exclude = [step % 20, (step * 7) % 20];
            match bans.pick(host, now, &exclude, &mut rng) {
                Some(slot) if rng.random_bool(0.5) => {
                    bans.failure(slot, host, now);
                }
                Some(slot) => {
                    bans.success(slot, host, now);
                }
                None => assert!(bans.next_live_in(host, now) > Duration::ZERO),
            }
            if step % 1000 == 0 {
                bans.forget(rng.random_range(0..20));
                assert_consistent(&bans);
            }
        }
        assert!(bans.evicted() > 0);
        assert_consistent(&bans);
    }

    #[test]
    fn restored_records_keep_within_the_bound_the_newest_hosts_first() {
        let mut before = HostBans::with_max_records(2, 2, Duration::from_secs(10), 2);
        for host in ["old.test", "mid.test", "new.test"] {
            before.failure(0, host, 0);
        }
        // The cap (2 records) evicted old.test already.
        let (key, hosts) = before.export(0);
        assert_eq!(hosts.len(), 2);
        let mut after = HostBans::with_max_records(2, 2, Duration::from_secs(10), 2);
        assert_eq!(after.restore(key, &hosts, 0, 0), 2);
        // Each run goes on: one more failure benches the slot there; old.test starts afresh.
        assert!(after.failure(0, "new.test", 0));
        assert!(after.failure(0, "mid.test", 0));
        assert!(!after.failure(0, "old.test", 0));
        assert_eq!(after.records(), 2);
    }
}
