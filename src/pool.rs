//! The session pool: which sessions are live, which are cooling down, and how many consecutive
//! failures each has. Every operation is O(1) expected (amortised for expiries) at any pool size
//! and however many sessions are cooling; none allocates on the pick path.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;

use crate::clock::saturating_ns;

/// Set in the `pos` of a session that is cooling down. Live positions stay below it (the pool
/// holds at most 10M sessions), so the other 31 bits are free for the cooldown's end.
const COOLING: u32 = 1 << 31;
/// Cooldown ends are kept in 47 bits (31 in `pos`, 16 in `fails`) of whole microseconds,
/// rounded up: 4.4 years, as good as never.
const MAX_UNTIL_US: u64 = (1 << 47) - 1;
/// The most consecutive failures a session can count (`fails` is a u16).
pub const MAX_FAILURES: u16 = u16::MAX;
/// Rejection-sampling tries before the bounded walk. Picks reach this loop only when at least
/// 3 in 4 live sessions are allowed, so all tries fail with probability below 1e-9.
const TRIES: usize = 16;
/// Up to this many live sessions per excluded one, the allowed ones are counted exactly instead.
const EXACT_RATIO: usize = 4;

/// 14 bytes per session whatever the state: three `u32` arrays (`cooling` has room for all)
/// and a `u16` one.
#[derive(Debug)]
pub struct Pool {
    /// Indices of the live sessions, in no particular order.
    live: Vec<u32>,
    /// Position of each live session in `live`; for a cooling one, `COOLING` and the high bits
    /// of the time its cooldown ends.
    pos: Vec<u32>,
    /// Consecutive failures of each live session; the low 16 bits of a cooling one's end.
    fails: Vec<u16>,
    /// The cooling sessions in the order they were blacklisted. The cooldown is the same for
    /// all and time only moves forward, so that is also the order their cooldowns end in, and
    /// expiries pop from the front.
    cooling: VecDeque<u32>,
    max_failures: u32,
    cooldown_ns: u64,
}

impl Pool {
    /// `size` must be below `u32::MAX`, which marks cooling sessions (the config caps it at 10M).
    pub fn new(size: u32, max_failures: u32, cooldown: Duration) -> Self {
        let live: Vec<u32> = (0..size).collect();
        Self {
            pos: live.clone(),
            live,
            fails: vec![0; size as usize],
            // Room for every session, so blacklisting never reallocates. Untouched pages of it
            // take no resident memory until sessions cool.
            cooling: VecDeque::with_capacity(size as usize),
            max_failures,
            cooldown_ns: saturating_ns(cooldown),
        }
    }

    /// A live session chosen uniformly at random, avoiding `exclude` where any other session is
    /// live (uniformly among all live ones if none is); `None` iff every session is cooling.
    pub fn pick(&mut self, now: u64, exclude: &[u32], rng: &mut impl Rng) -> Option<u32> {
        self.expire(now);
        let live = self.live.len();
        if live == 0 {
            return None;
        }
        if live <= EXACT_RATIO * exclude.len() {
            return Some(self.pick_exact(exclude, rng));
        }
        for _ in 0..TRIES {
            let index = self.live[rng.random_range(0..live)];
            if !exclude.contains(&index) {
                return Some(index);
            }
        }
        Some(self.walk_from(rng.random_range(0..live), exclude))
    }

    /// O(live * exclude), which is O(exclude²) here since live <= EXACT_RATIO * exclude.
    fn pick_exact(&self, exclude: &[u32], rng: &mut impl Rng) -> u32 {
        let allowed = |index: &&u32| !exclude.contains(index);
        let count = self.live.iter().filter(allowed).count();
        if count == 0 {
            return self.live[rng.random_range(0..self.live.len())];
        }
        let nth = rng.random_range(0..count);
        *self
            .live
            .iter()
            .filter(allowed)
            .nth(nth)
            .expect("nth < count")
    }

    /// The first allowed session from `start` on. Needs `live.len() > exclude.len()`: then at
    /// most `exclude.len()` sessions in a row are excluded, which bounds the walk.
    fn walk_from(&self, start: usize, exclude: &[u32]) -> u32 {
        let live = self.live.len();
        (0..=exclude.len())
            .map(|step| self.live[(start + step) % live])
            .find(|index| !exclude.contains(index))
            .expect("more live sessions than excluded ones")
    }

    /// A success resets the consecutive failures (a cooling session has none to reset, and
    /// its `fails` slot holds its cooldown's end). Nothing to reset is the usual case; it reads
    /// `fails` alone, so a large pool takes one cache miss here, not two.
    /// Whether it ended a run of failures.
    pub fn success(&mut self, index: u32) -> bool {
        let i = index as usize;
        if self.fails[i] != 0 && self.pos[i] & COOLING == 0 {
            self.fails[i] = 0;
            return true;
        }
        false
    }

    /// Counts a failure; returns true when it blacklists the session. A failure on a cooling
    /// session (an attempt that was in flight when it was blacklisted) is ignored.
    pub fn failure(&mut self, index: u32, now: u64) -> bool {
        self.expire(now);
        if !self.count_failure(index) {
            return false;
        }
        self.bench(index, now.saturating_add(self.cooldown_ns));
        true
    }

    /// Takes a live session out until `until` (nanoseconds), behind every session cooling now:
    /// `until` must not be before their ends.
    fn bench(&mut self, index: u32, until: u64) {
        let i = index as usize;
        let at = self.pos[i] as usize;
        self.live.swap_remove(at);
        if let Some(&moved) = self.live.get(at) {
            self.pos[moved as usize] = at as u32;
        }
        let until_us = until.div_ceil(1000).min(MAX_UNTIL_US);
        debug_assert!(self
            .cooling
            .back()
            .is_none_or(|&last| self.until(last) <= until_us * 1000));
        self.pos[i] = COOLING | (until_us >> 16) as u32;
        self.fails[i] = until_us as u16;
        self.cooling.push_back(index);
    }

    /// The live sessions in a run of failures: `(index, failures)`, for a snapshot. O(pool
    /// size), a sequential scan.
    pub fn failing(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        (0..self.fails.len() as u32).filter_map(|index| {
            let i = index as usize;
            (self.fails[i] != 0 && self.pos[i] & COOLING == 0).then(|| (index, self.fails[i]))
        })
    }

    /// The cooling sessions and the time each has left at `now`, in the order they come back.
    pub fn cooling_left(&mut self, now: u64) -> impl Iterator<Item = (u32, Duration)> + '_ {
        self.expire(now);
        let pool = &*self;
        pool.cooling
            .iter()
            .map(move |&index| (index, Duration::from_nanos(pool.until(index) - now)))
    }

    /// Restores a live session's run of failures (from a snapshot).
    pub fn restore_failures(&mut self, index: u32, failures: u16) {
        let i = index as usize;
        if self.pos[i] & COOLING == 0 {
            self.fails[i] = failures;
        }
    }

    /// Benches a live session until `until` (from a snapshot). The sessions must come in the
    /// order they come back, after any cooling already: else false, and nothing changes.
    pub fn restore_cooling(&mut self, index: u32, until: u64) -> bool {
        let in_order = self
            .cooling
            .back()
            .is_none_or(|&last| self.until(last) <= until.div_ceil(1000) * 1000);
        if !in_order || self.pos[index as usize] & COOLING != 0 {
            return false;
        }
        self.bench(index, until);
        true
    }

    /// Raises a live session's run to `failures` (a run counted by every process sharing the
    /// pool, `shared.rs`); true when that reaches `max_failures` (the caller benches it or gives
    /// it a new id). A cooling session, or a run already as long, is left alone.
    pub fn merge_failures(&mut self, index: u32, failures: u32) -> bool {
        let i = index as usize;
        if self.pos[i] & COOLING != 0 || failures <= u32::from(self.fails[i]) {
            return false;
        }
        self.fails[i] = u16::try_from(failures).unwrap_or(u16::MAX);
        failures >= self.max_failures
    }

    /// Benches a live session from `now` for `max_failures`' usual cooldown (a run counted
    /// across processes reached it).
    pub fn bench_now(&mut self, index: u32, now: u64) {
        self.bench_until(index, now.saturating_add(self.cooldown_ns), now);
    }

    /// Benches a live session until `until` (another process's ban), kept within the
    /// cooling queue's order (cooldowns end in the order they are queued): no later than a
    /// ban made now would end (another machine's clock may run ahead), and no earlier than the
    /// last queued one, so a ban that arrives after a later local one rests as long as that
    /// one (longer by the ban's delay in reaching us: milliseconds, unless Redis was away).
    /// False when the session cools already or `until` is past.
    pub fn bench_until(&mut self, index: u32, until: u64, now: u64) -> bool {
        self.expire(now);
        if self.pos[index as usize] & COOLING != 0 || until <= now {
            return false;
        }
        let last = self.cooling.back().map_or(0, |&last| self.until(last));
        self.bench(
            index,
            until.min(now.saturating_add(self.cooldown_ns)).max(last),
        );
        true
    }

    /// Counts a failure without ever cooling the session (`HEX_PROXY_ON_BLACKLIST = "rotate"`):
    /// returns true when it reached `max_failures` in a row, and the run starts over (the
    /// caller gives the slot a new identity).
    pub fn failure_without_cooldown(&mut self, index: u32) -> bool {
        let reached = self.count_failure(index);
        if reached {
            self.fails[index as usize] = 0;
        }
        reached
    }

    /// Counts a failure of a live session; true when its run reached `max_failures`. A failure
    /// on a cooling session is ignored.
    fn count_failure(&mut self, index: u32) -> bool {
        let i = index as usize;
        if self.pos[i] & COOLING != 0 {
            return false;
        }
        self.fails[i] = self.fails[i].saturating_add(1);
        u32::from(self.fails[i]) >= self.max_failures
    }

    /// How long until a session is live: zero if one is live now.
    pub fn next_live_in(&mut self, now: u64) -> Duration {
        self.expire(now);
        match self.cooling.front() {
            Some(&index) if self.live.is_empty() => Duration::from_nanos(self.until(index) - now),
            _ => Duration::ZERO,
        }
    }

    /// The cooling session whose cooldown ends first, and how long until it does.
    pub fn next_back(&mut self, now: u64) -> Option<(u32, Duration)> {
        self.expire(now);
        let &index = self.cooling.front()?;
        Some((index, Duration::from_nanos(self.until(index) - now)))
    }

    /// Whether a pick needs the time: only to end cooldowns, so not while none is cooling.
    pub fn needs_clock(&self) -> bool {
        !self.cooling.is_empty()
    }

    pub fn live_count(&mut self, now: u64) -> u32 {
        self.expire(now);
        self.live.len() as u32
    }

    pub fn cooling_count(&mut self, now: u64) -> u32 {
        self.expire(now);
        self.cooling.len() as u32
    }

    pub fn is_cooling(&mut self, index: u32, now: u64) -> bool {
        self.expire(now);
        self.pos[index as usize] & COOLING != 0
    }

    /// When the cooldown of a cooling session ends, in nanoseconds.
    fn until(&self, index: u32) -> u64 {
        let i = index as usize;
        let until_us = (u64::from(self.pos[i] & !COOLING) << 16) | u64::from(self.fails[i]);
        until_us * 1000
    }

    /// Brings back every session whose cooldown ended at or before `now`.
    fn expire(&mut self, now: u64) {
        while let Some(&index) = self.cooling.front() {
            if self.until(index) > now {
                break;
            }
            self.cooling.pop_front();
            // Back with a clean slate: no failures, a position in `live`.
            self.fails[index as usize] = 0;
            self.pos[index as usize] = self.live.len() as u32;
            // Never reallocates: `live` was built with room for the whole pool.
            self.live.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const SEC: u64 = 1_000_000_000;

    fn pool(size: u32, max_failures: u32, cooldown_secs: u64) -> Pool {
        Pool::new(size, max_failures, Duration::from_secs(cooldown_secs))
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    fn blacklist(pool: &mut Pool, index: u32, now: u64) {
        while !pool.failure(index, now) {}
    }

    fn assert_consistent(pool: &Pool) {
        for (at, &index) in pool.live.iter().enumerate() {
            assert_eq!(pool.pos[index as usize] as usize, at);
        }
        for &index in &pool.cooling {
            assert_ne!(pool.pos[index as usize] & COOLING, 0);
        }
        assert_eq!(pool.live.len() + pool.cooling.len(), pool.pos.len());
        assert!(pool
            .cooling
            .iter()
            .zip(pool.cooling.iter().skip(1))
            .all(|(&a, &b)| pool.until(a) <= pool.until(b)));
    }

    /// How often each session is picked in `picks` picks.
    fn histogram(pool: &mut Pool, exclude: &[u32], picks: usize) -> Vec<usize> {
        let mut rng = rng();
        let mut counts = vec![0; pool.pos.len()];
        for _ in 0..picks {
            counts[pool.pick(0, exclude, &mut rng).unwrap() as usize] += 1;
        }
        counts
    }

    fn assert_about(count: usize, expected: usize) {
        let tolerance = expected / 10;
        assert!(
            count.abs_diff(expected) <= tolerance,
            "{count} is not about {expected}"
        );
    }

    #[test]
    fn next_back_is_the_first_blacklisted_and_counts_down() {
        let mut pool = pool(4, 1, 100);
        assert_eq!(pool.next_back(0), None);
        blacklist(&mut pool, 2, 10 * SEC);
        blacklist(&mut pool, 0, 20 * SEC);
        assert_eq!(pool.next_back(30 * SEC), Some((2, Duration::from_secs(80))));
        assert_eq!(
            pool.next_back(110 * SEC),
            Some((0, Duration::from_secs(10)))
        );
        assert_eq!(pool.next_back(120 * SEC), None);
    }

    #[test]
    fn blacklists_after_max_failures_in_a_row() {
        let mut pool = pool(3, 3, 10);
        assert!(!pool.failure(1, 0));
        assert!(!pool.failure(1, 0));
        assert!(!pool.is_cooling(1, 0));
        assert!(pool.failure(1, 0));
        assert!(pool.is_cooling(1, 0));
        assert_eq!((pool.live_count(0), pool.cooling_count(0)), (2, 1));
        assert_consistent(&pool);
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let mut pool = pool(3, 3, 10);
        pool.failure(0, 0);
        pool.failure(0, 0);
        pool.success(0);
        assert!(!pool.failure(0, 0));
        assert!(!pool.failure(0, 0));
        assert!(pool.failure(0, 0));
    }

    #[test]
    fn cooldown_ends_exactly_at_the_boundary() {
        let mut pool = pool(2, 1, 10);
        assert!(pool.failure(0, 5 * SEC));
        assert!(pool.is_cooling(0, 15 * SEC - 1));
        assert!(!pool.is_cooling(0, 15 * SEC));
        assert_consistent(&pool);
    }

    #[test]
    fn in_flight_failures_on_a_cooling_session_do_not_blacklist_it_again() {
        let mut pool = pool(2, 2, 10);
        blacklist(&mut pool, 0, 0);
        for _ in 0..10 {
            assert!(!pool.failure(0, SEC));
        }
        assert_eq!(pool.cooling_count(SEC), 1);
        // Back from cooldown with a clean slate: it takes max_failures new failures again.
        assert!(!pool.failure(0, 10 * SEC));
        assert!(pool.failure(0, 10 * SEC));
        assert_eq!(pool.next_live_in(10 * SEC), Duration::ZERO);
        assert_consistent(&pool);
    }

    #[test]
    fn pick_is_none_when_all_cool_and_next_live_in_counts_down_to_the_first_return() {
        let mut pool = pool(3, 1, 100);
        let mut rng = rng();
        pool.failure(2, 0);
        pool.failure(0, 10 * SEC);
        pool.failure(1, 20 * SEC);
        assert_eq!(pool.pick(30 * SEC, &[], &mut rng), None);
        assert_eq!(pool.next_live_in(30 * SEC), Duration::from_secs(70));
        assert_eq!(pool.pick(100 * SEC, &[], &mut rng), Some(2));
        assert_eq!(pool.next_live_in(100 * SEC), Duration::ZERO);
        assert_eq!(pool.live_count(110 * SEC), 2);
        assert_eq!(pool.live_count(120 * SEC), 3);
        assert_consistent(&pool);
    }

    #[test]
    fn picks_are_uniform_among_live_sessions() {
        let mut pool = pool(10, 1, 100);
        pool.failure(4, 0);
        let counts = histogram(&mut pool, &[], 90_000);
        assert_eq!(counts[4], 0);
        for (index, &count) in counts.iter().enumerate().filter(|&(i, _)| i != 4) {
            assert_about(count, 10_000);
            assert!(index < 10);
        }
    }

    #[test]
    fn exclusion_is_avoided_and_the_rest_stays_uniform() {
        // Few live sessions per excluded one: the exact count.
        let mut small = pool(10, 1, 100);
        let counts = histogram(&mut small, &[1, 3, 5, 7, 9], 50_000);
        for (index, &count) in counts.iter().enumerate() {
            if index % 2 == 1 {
                assert_eq!(count, 0);
            } else {
                assert_about(count, 10_000);
            }
        }
        // Many: rejection sampling.
        let mut large = pool(100, 1, 100);
        let counts = histogram(&mut large, &[0, 50, 99], 97_000);
        assert_eq!(counts[0] + counts[50] + counts[99], 0);
        assert!(counts
            .iter()
            .filter(|&&c| c > 0)
            .all(|&c| c.abs_diff(1000) <= 150));
    }

    #[test]
    fn exclusion_is_ignored_when_every_live_session_is_excluded() {
        let mut all = pool(3, 1, 100);
        for count in histogram(&mut all, &[0, 1, 2], 30_000) {
            assert_about(count, 10_000);
        }
        let mut one_live = pool(3, 1, 100);
        one_live.failure(0, 0);
        one_live.failure(1, 0);
        assert_eq!(one_live.pick(0, &[2], &mut rng()), Some(2));
        assert_eq!(one_live.pick(0, &[0, 1], &mut rng()), Some(2));
    }

    #[test]
    fn walk_finds_an_allowed_session_within_exclude_len_plus_one_steps() {
        let pool = pool(5, 1, 100);
        assert_eq!(pool.walk_from(0, &[0, 1, 2, 3]), 4);
        assert_eq!(pool.walk_from(3, &[3, 4, 0]), 1);
        assert_eq!(pool.walk_from(2, &[]), 2);
    }

    #[test]
    fn random_operations_keep_the_pool_consistent() {
        let mut pool = pool(50, 2, 5);
        let mut rng = rng();
        let mut now = 0;
        for step in 0..20_000u32 {
            now += rng.random_range(0..SEC / 4);
            let exclude = [step % 50, (step * 7) % 50];
            match pool.pick(now, &exclude, &mut rng) {
                Some(index) if rng.random_bool(0.4) => {
                    pool.failure(index, now);
                }
                Some(index) => {
                    pool.success(index);
                }
                None => assert!(pool.next_live_in(now) > Duration::ZERO),
            }
            pool.failure(rng.random_range(0..50), now);
        }
        assert_consistent(&pool);
    }

    #[test]
    fn a_success_in_flight_on_a_cooling_session_keeps_its_cooldown() {
        let mut pool = pool(2, 1, 10);
        assert!(pool.failure(0, SEC));
        pool.success(0);
        assert!(pool.is_cooling(0, 11 * SEC - 1));
        assert!(!pool.is_cooling(0, 11 * SEC));
        assert_consistent(&pool);
    }

    #[test]
    fn cooldown_ends_past_sixteen_bits_of_microseconds_and_forever_are_kept() {
        // The end is split over two slots: check times beyond 2^16 µs and the cap.
        let mut pool = Pool::new(3, 1, Duration::from_secs(7));
        let late = 3 * (1 << 32) + 12_345;
        assert!(pool.failure(1, late));
        // Rounded up to the microsecond.
        assert_eq!(pool.until(1), (late + 7 * SEC).div_ceil(1000) * 1000);
        assert!(pool.is_cooling(1, late + 7 * SEC));
        assert!(!pool.is_cooling(1, late + 7 * SEC + 1000));
        let mut forever = Pool::new(1, 1, Duration::MAX);
        assert!(forever.failure(0, late));
        assert_eq!(forever.until(0), MAX_UNTIL_US * 1000);
        assert!(forever.is_cooling(0, MAX_UNTIL_US * 1000 - 1));
        assert_eq!(forever.live_count(u64::MAX), 1);
    }

    #[test]
    fn failures_without_cooldown_start_the_run_over_and_keep_the_session_live() {
        let mut pool = pool(3, 2, 10);
        assert!(!pool.failure_without_cooldown(1));
        assert!(pool.failure_without_cooldown(1));
        assert!(!pool.failure_without_cooldown(1));
        pool.success(1);
        assert!(!pool.failure_without_cooldown(1));
        assert!(pool.failure_without_cooldown(1));
        assert_eq!((pool.live_count(0), pool.cooling_count(0)), (3, 0));
        assert_consistent(&pool);
    }

    #[test]
    fn a_million_sessions_fit_in_fourteen_bytes_each_live_or_cooling() {
        const SIZE: u32 = 1_000_000;
        let mut pool = pool(SIZE, 1, 300);
        let bytes = |pool: &Pool| {
            4 * (pool.live.capacity() + pool.pos.capacity() + pool.cooling.capacity())
                + 2 * pool.fails.capacity()
        };
        assert!(bytes(&pool) <= 14 * SIZE as usize, "{} bytes", bytes(&pool));
        let mut rng = rng();
        for index in (0..SIZE).step_by(10) {
            pool.failure(index, 0);
        }
        let index = pool.pick(0, &[1, 2, 3], &mut rng).unwrap();
        assert!(index % 10 != 0 && index > 3);
        // The worst case: every session cooling. Nothing grew.
        for index in 0..SIZE {
            pool.failure(index, SEC);
        }
        assert_eq!(pool.cooling_count(SEC), SIZE);
        assert!(bytes(&pool) <= 14 * SIZE as usize, "{} bytes", bytes(&pool));
        assert_consistent(&pool);
        assert_eq!(pool.live_count(301 * SEC), SIZE);
        assert_consistent(&pool);
    }
}
