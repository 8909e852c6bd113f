//! The engine: one pool, its clock, the retry policy, the provider (gateway or proxy list) and
//! the stats, shared by every thread that downloads.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::auth::{self, AuthTracker};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::pool::Pool;
use crate::provider::Provider;
use crate::retry::{Cause, Decision, RetryPolicy};
use crate::session::SessionId;
use crate::stats::Stats;

/// Flag of `record_*`: this failure blacklisted the session.
pub const BLACKLISTED: u32 = 1;
/// Flag of `record_status` / `record_refusal`: this 407 reached `auth_failures_to_close` in a
/// row (set once); with a proxy list, every proxy of it did.
pub const AUTH_FAILED: u32 = auth::ALL_REJECTED;
/// Flag of `record_*`: the attempt counted as a failure of its session.
pub const FAILED: u32 = 4;
/// Flag of `record_status` / `record_refusal`, proxy list only: this 407 brought the session's
/// proxy to `auth_failures_to_close` in a row (again after a success).
pub const PROXY_REJECTED: u32 = auth::PROXY_REJECTED;

#[derive(Debug)]
pub struct Engine {
    config: Config,
    clock: Clock,
    /// The rng sits with the pool so that a pick takes one lock. The clock is read while
    /// holding it, so blacklist times reach the pool in order (its cooling queue relies on it).
    state: Mutex<State>,
    retry: RetryPolicy,
    stats: Stats,
    auth: AuthTracker,
}

#[derive(Debug)]
struct State {
    pool: Pool,
    rng: SmallRng,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
};

impl Engine {
    /// `seed` makes the picks reproducible; without it the rng is seeded by the OS.
    pub fn new(config: Config, clock: Clock, seed: Option<u64>) -> Self {
        let pool = Pool::new(config.pool_size, config.max_failures, config.cooldown);
        let rng = seed.map_or_else(SmallRng::from_os_rng, SmallRng::seed_from_u64);
        let auth = match &config.provider {
            Provider::Gateway(_) => AuthTracker::gateway(config.auth_failures_to_close),
            Provider::List(list) => {
                AuthTracker::per_proxy(config.auth_failures_to_close, list.len())
            }
        };
        Self {
            retry: RetryPolicy::new(config.retry_codes, config.max_retries),
            config,
            clock,
            state: Mutex::new(State { pool, rng }),
            stats: Stats::default(),
            auth,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A session for the next attempt, avoiding `exclude` (the sessions that already failed
    /// this request) where possible; `None` while every session is cooling, and for good once
    /// the gateway has rejected the credentials (nothing more is to be sent with them).
    pub fn pick(&self, exclude: &[u32]) -> Option<u32> {
        if self.auth_failed() {
            return None;
        }
        let mut state = self.state.lock();
        let State { pool, rng } = &mut *state;
        pool.pick(self.clock.now_ns(), exclude, rng)
    }

    /// Counts a response: a status in the failure codes is a failure, anything else a success.
    pub fn record_status(&self, index: u32, status: u16) -> Result<u32, Error> {
        self.check(index)?;
        let failed = self.config.failure_codes.contains(status);
        let mut flags = if failed {
            self.stats.status_failure(status);
            self.failure(index) | FAILED
        } else {
            self.state.lock().pool.success(index);
            0
        };
        if status == 407 {
            flags |= self.auth.rejected(index);
        } else if !failed {
            self.auth.accepted(index);
        }
        Ok(flags)
    }

    /// Counts an attempt that worked but whose status was not seen (a redirect handled above).
    pub fn record_success(&self, index: u32) -> Result<(), Error> {
        self.check(index)?;
        self.state.lock().pool.success(index);
        self.auth.accepted(index);
        Ok(())
    }

    /// Counts a transport exception (`reason` is its class name) as a failure.
    pub fn record_exception(&self, index: u32, reason: &str) -> Result<u32, Error> {
        self.check(index)?;
        self.stats.exception_failure(reason);
        Ok(self.failure(index) | FAILED)
    }

    /// Counts a CONNECT the gateway refused with `status`: always a failure of the session,
    /// counted under that status; a 407 also counts against the credentials.
    pub fn record_refusal(&self, index: u32, status: u16) -> Result<u32, Error> {
        self.check(index)?;
        if (100..=599).contains(&status) {
            self.stats.status_failure(status);
        } else {
            self.stats.exception_failure("TunnelError");
        }
        let mut flags = self.failure(index) | FAILED;
        if status == 407 {
            flags |= self.auth.rejected(index);
        }
        Ok(flags)
    }

    fn failure(&self, index: u32) -> u32 {
        let mut state = self.state.lock();
        let blacklisted = state.pool.failure(index, self.clock.now_ns());
        drop(state);
        if blacklisted {
            self.stats.blacklisted();
            BLACKLISTED
        } else {
            0
        }
    }

    pub fn decide_retry(
        &self,
        cause: Cause,
        retry_times_done: u32,
        max_retry_times: Option<u32>,
    ) -> Decision {
        let decision =
            self.retry
                .decide(cause, retry_times_done, max_retry_times, self.auth_failed());
        match decision {
            Decision::Pass => {}
            Decision::Retry => self.stats.retry(),
            Decision::GiveUp => self.stats.retry_max_exceeded(),
        }
        decision
    }

    /// Whether retries are paced (`HEX_PROXY_RETRY_BACKOFF_BASE` above zero).
    pub fn paced(&self) -> bool {
        self.config.backoff.is_some()
    }

    /// How long the `n`-th retry of a request (`n` = the copy's `retry_times`, 1 for the first)
    /// waits before it is downloaded: a draw from the backoff, or `retry_after` (the seconds a
    /// `Retry-After` header asked for) capped by the max. Zero when pacing is off. The draw uses
    /// the engine's rng, so a seeded engine repeats its waits.
    pub fn retry_wait(&self, n: u32, retry_after: Option<f64>) -> Duration {
        let Some(backoff) = &self.config.backoff else {
            return Duration::ZERO;
        };
        let wait = backoff.wait(n, retry_after, &mut self.state.lock().rng);
        self.stats.retry_wait(wait, retry_after.is_some());
        wait
    }

    /// Counts retries that were still waiting when the spider closed.
    pub fn retries_dropped(&self, count: u64) {
        self.stats.retries_dropped(count);
    }

    /// Whether a response with this status may be retried at all: the retry middleware's
    /// fast path hands every other response on without asking `decide_retry`.
    pub fn may_retry(&self, status: u16) -> bool {
        self.retry.may_retry(status)
    }

    /// How long until a session is live: zero if one is live now.
    pub fn next_live_in(&self) -> Duration {
        let mut state = self.state.lock();
        state.pool.next_live_in(self.clock.now_ns())
    }

    /// The cooling session that comes back first, and how long until it does.
    pub fn next_back(&self) -> Option<(u32, Duration)> {
        let mut state = self.state.lock();
        state.pool.next_back(self.clock.now_ns())
    }

    /// `(live, cooling)`, taken together so that they add up to the pool size.
    pub fn counts(&self) -> (u32, u32) {
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        (state.pool.live_count(now), state.pool.cooling_count(now))
    }

    pub fn stats_snapshot(&self) -> Vec<(String, u64)> {
        let (live, cooling) = self.counts();
        self.stats.snapshot(live, cooling)
    }

    /// A 407 is about the credentials, whether or not it counts as a session failure; only a
    /// success proves them right (see `AuthTracker`).
    pub fn auth_failed(&self) -> bool {
        self.auth.failed()
    }

    pub fn session_id(&self, index: u32) -> Result<String, Error> {
        Ok(self.session(index)?.as_str().to_owned())
    }

    /// The session's id, without allocating.
    pub fn session(&self, index: u32) -> Result<SessionId, Error> {
        self.check(index)?;
        Ok(SessionId::new(index))
    }

    /// The session's `Proxy-Authorization` value; `None` for a listed proxy without
    /// credentials.
    pub fn proxy_authorization(&self, index: u32) -> Result<Option<String>, Error> {
        let id = self.session(index)?;
        Ok(self.config.provider.proxy_authorization(index, &id))
    }

    /// Moves a manual clock forward; an error on the system clock.
    pub fn advance(&self, by: Duration) -> Result<(), Error> {
        self.clock.advance(by)
    }

    /// Time since the engine's clock started.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.now_ns())
    }

    fn check(&self, index: u32) -> Result<(), Error> {
        if index < self.config.pool_size {
            Ok(())
        } else {
            Err(Error::IndexOutOfRange {
                index: index.into(),
                pool_size: self.config.pool_size,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    use super::*;
    use crate::config::{example_settings, Settings};

    fn engine_with(change: impl FnOnce(&mut Settings)) -> Engine {
        let mut settings = example_settings();
        change(&mut settings);
        Engine::new(settings.validate().unwrap(), Clock::manual(), Some(1))
    }

    fn engine() -> Engine {
        engine_with(|_| {})
    }

    fn stat(engine: &Engine, key: &str) -> u64 {
        let snapshot = engine.stats_snapshot();
        snapshot
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |&(_, v)| v)
    }

    #[test]
    fn failure_statuses_blacklist_after_max_failures_and_are_counted() {
        let engine = engine();
        for _ in 0..4 {
            assert_eq!(engine.record_status(3, 429), Ok(FAILED));
        }
        assert_eq!(engine.record_status(3, 503), Ok(FAILED | BLACKLISTED));
        assert_eq!(stat(&engine, "hex_proxy/failure/429"), 4);
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 1);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 1);
        assert_eq!(engine.counts(), (19, 1));
        assert_eq!(stat(&engine, "hex_proxy/sessions/cooling"), 1);
    }

    #[test]
    fn other_statuses_are_successes_that_reset_the_count() {
        let engine = engine();
        for status in [403, 403, 403, 403, 404, 403, 403, 403, 403, 200] {
            let expected = if status == 403 { FAILED } else { 0 };
            assert_eq!(engine.record_status(0, status), Ok(expected));
        }
        assert_eq!(stat(&engine, "hex_proxy/failure/404"), 0);
    }

    #[test]
    fn a_success_without_status_resets_the_count() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(engine.record_status(5, 503), Ok(FAILED));
        assert_eq!(engine.record_success(5), Ok(()));
        assert_eq!(engine.record_status(5, 503), Ok(FAILED));
        assert_eq!(engine.record_status(5, 503), Ok(FAILED | BLACKLISTED));
    }

    #[test]
    fn a_407_outside_the_failure_codes_still_counts_against_the_credentials() {
        let engine = engine_with(|s| {
            s.failure_codes = vec![503];
            s.auth_failures_to_close = 2;
        });
        assert_eq!(engine.record_status(0, 407), Ok(0));
        assert_eq!(engine.record_status(0, 407), Ok(AUTH_FAILED));
        assert_eq!(engine.counts(), (20, 0));
        assert_eq!(stat(&engine, "hex_proxy/failure/407"), 0);
    }

    #[test]
    fn exceptions_are_failures_named_by_class() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(engine.record_exception(1, "TunnelError"), Ok(FAILED));
        assert_eq!(
            engine.record_exception(1, "TimeoutError"),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/TunnelError"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/TimeoutError"), 1);
    }

    #[test]
    fn failures_on_a_cooling_session_are_counted_but_do_not_blacklist_it_again() {
        let engine = engine_with(|s| s.max_failures = 1);
        assert_eq!(engine.record_status(2, 429), Ok(FAILED | BLACKLISTED));
        assert_eq!(engine.record_status(2, 429), Ok(FAILED));
        assert_eq!(engine.record_exception(2, "TunnelError"), Ok(FAILED));
        assert_eq!(stat(&engine, "hex_proxy/failure/429"), 2);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 1);
    }

    #[test]
    fn exhausted_pool_waits_for_the_first_session_back() {
        let engine = engine_with(|s| {
            s.pool_size = 2;
            s.max_failures = 1;
            s.cooldown = 10.0;
        });
        engine.record_status(0, 503).unwrap();
        engine.advance(Duration::from_secs(4)).unwrap();
        engine.record_status(1, 503).unwrap();
        assert_eq!(engine.pick(&[]), None);
        assert_eq!(engine.next_live_in(), Duration::from_secs(6));
        assert_eq!(engine.next_back(), Some((0, Duration::from_secs(6))));
        engine.advance(Duration::from_secs(6)).unwrap();
        assert_eq!(engine.now(), Duration::from_secs(10));
        assert_eq!(engine.next_live_in(), Duration::ZERO);
        assert_eq!(engine.pick(&[0]), Some(0));
    }

    #[test]
    fn consecutive_407s_fail_auth_once() {
        let engine = engine_with(|s| s.max_failures = 100);
        assert_eq!(engine.record_status(0, 407), Ok(FAILED));
        assert_eq!(engine.record_status(1, 200), Ok(0));
        assert_eq!(engine.record_status(0, 407), Ok(FAILED));
        assert_eq!(engine.record_success(3), Ok(()));
        assert_eq!(engine.record_status(0, 407), Ok(FAILED));
        // Other failures neither reset nor count.
        assert_eq!(engine.record_status(2, 503), Ok(FAILED));
        assert_eq!(engine.record_exception(2, "TunnelError"), Ok(FAILED));
        assert_eq!(engine.record_status(0, 407), Ok(FAILED));
        assert!(!engine.auth_failed());
        assert_eq!(engine.record_status(1, 407), Ok(FAILED | AUTH_FAILED));
        assert!(engine.auth_failed());
        assert_eq!(engine.record_status(1, 407), Ok(FAILED));
    }

    #[test]
    fn both_flags_can_come_together() {
        let engine = engine_with(|s| {
            s.max_failures = 1;
            s.auth_failures_to_close = 1;
        });
        assert_eq!(
            engine.record_status(0, 407),
            Ok(FAILED | BLACKLISTED | AUTH_FAILED)
        );
    }

    #[test]
    fn a_refused_tunnel_is_always_a_failure_and_a_407_refusal_counts_against_the_credentials() {
        let engine = engine_with(|s| {
            s.failure_codes = vec![503];
            s.max_failures = 2;
            s.auth_failures_to_close = 2;
        });
        assert_eq!(engine.record_refusal(4, 403), Ok(FAILED));
        assert_eq!(engine.record_refusal(4, 999), Ok(FAILED | BLACKLISTED));
        assert_eq!(stat(&engine, "hex_proxy/failure/403"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/TunnelError"), 1);
        assert_eq!(engine.record_refusal(5, 407), Ok(FAILED));
        assert_eq!(engine.record_refusal(6, 407), Ok(FAILED | AUTH_FAILED));
    }

    #[test]
    fn no_session_is_handed_out_once_the_credentials_are_rejected() {
        let engine = engine_with(|s| s.auth_failures_to_close = 1);
        assert!(engine.pick(&[]).is_some());
        engine.record_status(0, 407).unwrap();
        assert_eq!(engine.pick(&[]), None);
    }

    #[test]
    fn retry_decisions_are_counted_and_407_stops_after_auth_failed() {
        let engine = engine_with(|s| s.auth_failures_to_close = 1);
        assert_eq!(
            engine.decide_retry(Cause::Status(200), 0, None),
            Decision::Pass
        );
        assert_eq!(
            engine.decide_retry(Cause::Exception, 0, None),
            Decision::Retry
        );
        assert_eq!(
            engine.decide_retry(Cause::Status(503), 4, None),
            Decision::GiveUp
        );
        assert_eq!(
            engine.decide_retry(Cause::Status(407), 0, None),
            Decision::Retry
        );
        engine.record_status(0, 407).unwrap();
        assert_eq!(
            engine.decide_retry(Cause::Status(407), 0, None),
            Decision::Pass
        );
        assert_eq!(stat(&engine, "hex_proxy/retry"), 2);
        assert_eq!(stat(&engine, "hex_proxy/retry/max_exceeded"), 1);
    }

    #[test]
    fn retry_waits_stay_within_the_backoff_and_are_counted() {
        let engine = engine_with(|s| {
            s.backoff_base = 1.0;
            s.backoff_max = 5.0;
        });
        assert!(engine.paced());
        let mut longest = Duration::ZERO;
        for n in 1..=10 {
            let cap = Duration::from_secs(5).min(Duration::from_secs(1 << n));
            for _ in 0..100 {
                let wait = engine.retry_wait(n, None);
                assert!(wait <= cap, "n={n}: {wait:?}");
                longest = longest.max(wait);
            }
        }
        assert_eq!(engine.retry_wait(1, Some(9.5)), Duration::from_secs(5));
        assert_eq!(engine.retry_wait(1, Some(0.0)), Duration::ZERO);
        engine.retries_dropped(3);
        // Every draw but the zero one waited; the max is the capped Retry-After.
        assert_eq!(stat(&engine, "hex_proxy/retry/delayed"), 1001);
        assert_eq!(stat(&engine, "hex_proxy/retry/retry_after"), 2);
        assert_eq!(stat(&engine, "hex_proxy/retry/wait_ms_max"), 5000);
        assert!(stat(&engine, "hex_proxy/retry/wait_ms_total") > 1000 * 5000 / 4);
        assert_eq!(stat(&engine, "hex_proxy/retry/dropped_at_close"), 3);
        assert!(longest > Duration::from_secs(4));
    }

    #[test]
    fn seeded_engines_draw_the_same_waits() {
        let waits = || {
            let engine = engine_with(|s| s.backoff_base = 0.5);
            (1..=8)
                .map(|n| engine.retry_wait(n, None))
                .collect::<Vec<_>>()
        };
        let first = waits();
        assert_eq!(first, waits());
        assert!(first.windows(2).any(|pair| pair[0] != pair[1]));
    }

    #[test]
    fn base_zero_means_no_wait_and_no_stats_even_with_retry_after() {
        let engine = engine();
        assert!(!engine.paced());
        for n in 1..=10 {
            assert_eq!(engine.retry_wait(n, None), Duration::ZERO);
        }
        assert_eq!(engine.retry_wait(1, Some(30.0)), Duration::ZERO);
        assert_eq!(stat(&engine, "hex_proxy/retry/delayed"), 0);
        assert_eq!(stat(&engine, "hex_proxy/retry/retry_after"), 0);
    }

    #[test]
    fn sessions_have_ids_and_headers_and_bad_indices_are_errors() {
        let engine = engine();
        assert_eq!(engine.session_id(7).unwrap(), "s007");
        let header = engine.proxy_authorization(7).unwrap().unwrap();
        assert!(header.starts_with("Basic "));
        let out_of_range = Err(Error::IndexOutOfRange {
            index: 20,
            pool_size: 20,
        });
        assert_eq!(engine.session_id(20), out_of_range);
        assert_eq!(
            engine.proxy_authorization(20),
            out_of_range.clone().map(Some)
        );
        assert_eq!(
            engine.record_status(20, 200),
            out_of_range.clone().map(|_| 0)
        );
        assert_eq!(
            engine.record_exception(20, "X"),
            out_of_range.clone().map(|_| 0)
        );
        assert_eq!(engine.record_success(20), out_of_range.map(|_| ()));
    }

    fn list_engine(entries: &[&str], auth_failures_to_close: i64) -> Engine {
        engine_with(|s| {
            s.proxies = Some(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("HEX_PROXY_LIST entry {}", i + 1), (*e).to_owned()))
                    .collect(),
            );
            s.auth_failures_to_close = auth_failures_to_close;
            s.max_failures = 100;
        })
    }

    #[test]
    fn each_listed_proxy_is_a_session_with_its_own_header() {
        let engine = list_engine(&["http://a:pw@h:1", "http://b:pw@h:1", "http://h:2"], 3);
        assert_eq!(engine.counts(), (3, 0));
        assert_eq!(engine.session_id(2).unwrap(), "s002");
        let user_of = |index| engine.proxy_authorization(index).unwrap();
        assert_ne!(user_of(0), user_of(1));
        assert_eq!(user_of(2), None);
    }

    #[test]
    fn a_407_rejects_one_listed_proxy_and_the_crawl_stops_only_when_all_are() {
        let engine = list_engine(&["http://a:pw@h:1", "http://b:pw@h:1"], 2);
        assert_eq!(engine.record_status(0, 407), Ok(FAILED));
        // The other proxy's success does not clear proxy 0's record.
        assert_eq!(engine.record_status(1, 200), Ok(0));
        assert_eq!(engine.record_status(0, 407), Ok(FAILED | PROXY_REJECTED));
        assert!(!engine.auth_failed());
        assert!(engine.pick(&[]).is_some());
        assert_eq!(engine.record_refusal(1, 407), Ok(FAILED));
        assert_eq!(
            engine.record_refusal(1, 407),
            Ok(FAILED | PROXY_REJECTED | AUTH_FAILED)
        );
        assert!(engine.auth_failed());
        assert_eq!(engine.pick(&[]), None);
    }

    #[test]
    fn the_system_clock_cannot_be_advanced() {
        let engine = Engine::new(
            example_settings().validate().unwrap(),
            Clock::system(),
            None,
        );
        assert_eq!(
            engine.advance(Duration::from_secs(1)),
            Err(Error::ClockNotManual)
        );
    }

    #[test]
    fn threads_share_one_engine_and_the_counts_add_up() {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 5_000;
        let engine = engine_with(|s| {
            s.max_failures = 2;
            s.cooldown = 1.0;
        });
        let blacklisted = AtomicU64::new(0);
        let failures = AtomicU64::new(0);
        thread::scope(|scope| {
            for thread in 0..THREADS {
                let (engine, blacklisted, failures) = (&engine, &blacklisted, &failures);
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let Some(index) = engine.pick(&[]) else {
                            engine.advance(Duration::from_millis(100)).unwrap();
                            continue;
                        };
                        let status = if (round + thread) % 3 == 0 { 503 } else { 200 };
                        let flags = engine.record_status(index, status).unwrap();
                        failures.fetch_add(u64::from(status == 503), Ordering::Relaxed);
                        blacklisted.fetch_add(u64::from(flags & BLACKLISTED), Ordering::Relaxed);
                    }
                });
            }
        });
        let failures = failures.into_inner();
        let blacklisted = blacklisted.into_inner();
        assert!(failures > 0 && blacklisted > 0);
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), failures);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), blacklisted);
        let (live, cooling) = engine.counts();
        assert_eq!(live + cooling, 20);
    }
}
