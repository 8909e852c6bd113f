//! The engine: one pool, its clock, the retry policy, the provider (gateway or proxy list) and
//! the stats, shared by every thread that downloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::auth::{self, AuthTracker};
use crate::clock::Clock;
use crate::config::{Blacklisting, Config};
use crate::error::Error;
use crate::identity::{Identities, Numbering, OnBlacklist};
use crate::pool::Pool;
use crate::provider::Provider;
use crate::retry::{Cause, Decision, RetryPolicy};
use crate::runs::{host_key, Runs};
use crate::scope::{BanScope, HostBans};
use crate::session::SessionId;
use crate::shared::{self, Fact, Note, Noted, Outbox};
use crate::snapshot::{first_difference, fnv1a, PoolState, RestoreError, Restored};
use crate::stats::{Reason, Stats};

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
/// Flag of `record_*`, with `BLACKLISTED`: the slot took a new id instead of cooling down
/// (`HEX_PROXY_ON_BLACKLIST = "rotate"`); its new number is the old one plus the pool size.
pub const ROTATED: u32 = 16;

/// What became of an attempt, as the engine counts it (the ledger, `ledger.rs`, maps every
/// outcome to one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A response: a status in the failure codes is a failure, anything else a success.
    Status(u16),
    /// A response a ban policy judged: `ban` is a failure, anything else a success.
    Judged { status: u16, ban: bool },
    /// The attempt worked, its status unseen (a redirect handled above us).
    Success,
    /// A transport exception, by class name: a failure.
    Exception(&'a str),
    /// A ban policy's ban on an exception that is no transport failure, counted under `ban`.
    Ban,
    /// A CONNECT the proxy refused with this status: a failure counted under the status; a
    /// 407 also counts against the credentials.
    Refusal(u16),
}

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
    /// Whether ids rotate (the state keeps `Identities`): only then do numbers go beyond the
    /// pool size.
    rotates: bool,
    /// How numbers beyond the pool size map to (slot, generation): from this epoch on (see
    /// identity.rs). Set once more by `restore`, before the first pick.
    epoch: AtomicU64,
    /// Domain scope: a slot cooling for some host took a new id, which no host holds anything
    /// against, so requests waiting for that host may go now (see `take_released`).
    released: AtomicBool,
    /// The gateway's own address cannot be reached (promise 17): no attempt is sent until a
    /// probe of the runtime's finds it again. Never set with a proxy list.
    gateway_down: AtomicBool,
    /// The pool is shared with other processes (`HEX_PROXY_REDIS_URL`, shared.rs): what they
    /// must learn is noted in `outbox`.
    sharing: AtomicBool,
    outbox: Mutex<Outbox>,
}

#[derive(Debug)]
struct State {
    pool: Pool,
    rng: SmallRng,
    /// Each slot's current id, when ids can rotate; `None`: every number is a slot index.
    identities: Option<Identities>,
    /// Ban scope "domain": the records per (slot, target host), which then decide alone (the
    /// pool stays all live). `None` in session scope, which costs nothing more.
    hosts: Option<HostBans>,
    /// The reasons of each open failure run, for the WARNING that benches a session.
    runs: Runs,
    /// The reasons of the run that benched a session last: `(slot, host key, reasons)`,
    /// until `blacklist_reasons` takes them.
    benched: Option<(u32, u64, String)>,
}

impl State {
    /// Whether an attempt sent as `generation` of `slot` still speaks for the slot; one sent
    /// on an id the slot has since left neither fails nor clears the new id's run.
    fn is_current(&self, slot: u32, generation: u32) -> bool {
        match &self.identities {
            None => true,
            Some(identities) => identities.generation(slot) == generation,
        }
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
};

impl Engine {
    /// `seed` makes the picks reproducible; without it the rng is seeded by the OS.
    pub fn new(config: Config, clock: Clock, seed: Option<u64>) -> Self {
        let pool = Pool::new(config.pool_size, config.max_failures, config.cooldown);
        let mut rng = seed.map_or_else(SmallRng::from_os_rng, SmallRng::seed_from_u64);
        let auth = match &config.provider {
            Provider::Gateway(_) => AuthTracker::gateway(config.auth_failures_to_close),
            Provider::List(list) => {
                AuthTracker::per_proxy(config.auth_failures_to_close, list.len())
            }
        };
        // Unseeded, each crawl numbers its rotated ids from its own epoch (see identity.rs).
        let epoch = if seed.is_none() {
            rng.random_range(1..1 << 31)
        } else {
            0
        };
        let identities = Identities::new(
            config.pool_size,
            config.blacklisting.on_blacklist(),
            config.max_uses,
            config.max_age,
        )
        .map(|identities| identities.with_epoch(epoch));
        let hosts = (config.blacklisting == Blacklisting::Domain)
            .then(|| HostBans::new(config.pool_size, config.max_failures, config.cooldown));
        Self {
            retry: RetryPolicy::new(config.retry_codes, config.max_retries),
            rotates: identities.is_some(),
            epoch: AtomicU64::new(epoch),
            released: AtomicBool::new(false),
            gateway_down: AtomicBool::new(false),
            sharing: AtomicBool::new(false),
            outbox: Mutex::default(),
            config,
            clock,
            state: Mutex::new(State {
                pool,
                rng,
                identities,
                hosts,
                runs: Runs::default(),
                benched: None,
            }),
            stats: Stats::default(),
            auth,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether attempts go through one gateway (not a proxy list): then an address that
    /// cannot be reached is the gateway's outage, not a session's failure.
    pub fn has_gateway(&self) -> bool {
        matches!(self.config.provider, Provider::Gateway(_))
    }

    /// Whether the gateway is down: requests are held, none is sent.
    pub fn gateway_down(&self) -> bool {
        self.gateway_down.load(Ordering::Relaxed)
    }

    /// The runtime found the gateway unreachable (`true`) or back (`false`).
    pub fn set_gateway_down(&self, down: bool) {
        self.gateway_down
            .store(down && self.has_gateway(), Ordering::Relaxed);
    }

    pub fn ban_scope(&self) -> BanScope {
        self.config.blacklisting.scope()
    }

    /// A session for the next attempt, avoiding the slots in `exclude` (those that already
    /// failed this request) where possible: the number of the id it goes out on (the slot
    /// index unless ids rotate). `None` while every session is cooling, and for good once the
    /// gateway has rejected the credentials (nothing more is to be sent with them). `host`:
    /// the request's target host, which ban scope "domain" keeps records for (`None` is the
    /// empty host); session scope ignores it, as every method taking a host does.
    pub fn pick(&self, host: Option<&str>, exclude: &[u32]) -> Option<u64> {
        if self.auth_failed() {
            return None;
        }
        let mut state = self.state.lock();
        let State {
            pool,
            rng,
            identities,
            hosts,
            runs,
            ..
        } = &mut *state;
        // Reading the clock is a fair share of a pick; in session scope without rotation it
        // only ends cooldowns, and while none is cooling any time will do.
        let now = if hosts.is_some() || identities.is_some() || pool.needs_clock() {
            self.clock.now_ns()
        } else {
            0
        };
        let slot = match hosts {
            None => pool.pick(now, exclude, rng)?,
            Some(hosts) => hosts.pick(host.unwrap_or_default(), now, exclude, rng)?,
        };
        let Some(identities) = identities else {
            return Some(slot.into());
        };
        let (number, rotated) = identities.hand_out(slot, now);
        if rotated {
            // A new identity starts with a clean run (on every host, in domain scope).
            runs.ended(slot, None);
            match hosts {
                None => {
                    pool.success(slot);
                }
                Some(hosts) => {
                    if hosts.forget(slot) {
                        self.released.store(true, Ordering::Release);
                    }
                }
            }
            self.stats.rotated();
        }
        Some(number)
    }

    /// Counts what became of an attempt on session `number` (as `pick` returned it), sent to
    /// `host` (ban scope "domain" keeps records per target host; session scope ignores it).
    /// Returns the flags: `FAILED`, `BLACKLISTED`, `ROTATED`, `AUTH_FAILED`, `PROXY_REJECTED`.
    /// A failure on a session already cooling, or on an id its slot has left, counts in the
    /// stats but blacklists nothing.
    pub fn record(&self, number: u64, host: Option<&str>, event: Event<'_>) -> Result<u32, Error> {
        let session = self.locate(number)?;
        Ok(match event {
            Event::Status(status) => {
                let failed = self.config.failure_codes.contains(status);
                self.count_response(number, session, host, status, failed)
            }
            Event::Judged { status, ban } => {
                self.count_response(number, session, host, status, ban)
            }
            Event::Success => {
                self.success(session, host);
                self.auth.accepted(session.0);
                0
            }
            Event::Exception(name) => self.fail(number, session, host, Reason::Exception(name)),
            Event::Ban => self.fail(number, session, host, Reason::Ban),
            Event::Refusal(status) => {
                let reason = if (100..=599).contains(&status) {
                    Reason::Status(status)
                } else {
                    Reason::Exception("TunnelError")
                };
                let flags = self.fail(number, session, host, reason);
                if status == 407 {
                    flags | self.auth.rejected(session.0)
                } else {
                    flags
                }
            }
        })
    }

    /// A failure of session `number`: against the session (which it may blacklist), and in
    /// the stats under `reason`. Returns the flags, `FAILED` among them.
    fn fail(
        &self,
        number: u64,
        session: (u32, u32),
        host: Option<&str>,
        reason: Reason<'_>,
    ) -> u32 {
        let flags = self.failure(session, host, reason);
        self.stats.failure(number, reason, flags & BLACKLISTED != 0);
        flags | FAILED
    }

    /// A response: `failed` (a failure code, or a ban policy's ban) is a failure of the
    /// session, anything else a success. A ban on a status in the failure codes is counted
    /// under the status, any other ban under `ban`. A 407 counts against the credentials
    /// whatever the verdict: the policy judges the session, not the password.
    fn count_response(
        &self,
        number: u64,
        session: (u32, u32),
        host: Option<&str>,
        status: u16,
        failed: bool,
    ) -> u32 {
        let mut flags = if failed {
            let reason = if self.config.failure_codes.contains(status) {
                Reason::Status(status)
            } else {
                Reason::Ban
            };
            self.fail(number, session, host, reason)
        } else {
            self.success(session, host);
            0
        };
        if status == 407 {
            flags |= self.auth.rejected(session.0);
        } else if !failed {
            self.auth.accepted(session.0);
        }
        flags
    }

    fn success(&self, (slot, generation): (u32, u32), host: Option<&str>) {
        let mut state = self.state.lock();
        if !state.is_current(slot, generation) {
            return;
        }
        let ended = match &mut state.hosts {
            None => state.pool.success(slot),
            Some(hosts) => hosts.success(slot, host.unwrap_or_default(), self.clock.now_ns()),
        };
        if ended {
            state
                .runs
                .ended(slot, Some(host_key(self.domain_host(host))));
            drop(state);
            self.note(slot, generation, host, Noted::Cleared);
        }
    }

    /// Notes what other processes sharing the pool must learn (nothing when alone).
    fn note(&self, slot: u32, generation: u32, host: Option<&str>, noted: Noted) {
        if self.sharing.load(Ordering::Relaxed) {
            let number = self.numbering().number(slot, generation);
            self.outbox
                .lock()
                .push(number, self.domain_host(host), noted);
        }
    }

    /// The host that runs are kept for: the target host in domain scope, none in session scope.
    fn domain_host<'h>(&self, host: Option<&'h str>) -> Option<&'h str> {
        match self.config.blacklisting {
            Blacklisting::Domain => Some(host.unwrap_or_default()),
            Blacklisting::Session(_) => None,
        }
    }

    fn failure(&self, (slot, generation): (u32, u32), host: Option<&str>, reason: Reason) -> u32 {
        let mut state = self.state.lock();
        if !state.is_current(slot, generation) {
            return 0;
        }
        let State {
            pool,
            identities,
            hosts,
            runs,
            ..
        } = &mut *state;
        // A failure on a session already cooling counts in the stats, not in a run.
        let cooling = match hosts {
            Some(hosts) => hosts.is_cooling(slot, host.unwrap_or_default(), self.clock.now_ns()),
            None => pool.is_cooling(slot, self.clock.now_ns()),
        };
        if !cooling {
            runs.failed(slot, host_key(self.domain_host(host)), reason);
            self.note(slot, generation, host, Noted::Failed);
        }
        let flags = match (self.config.blacklisting, identities, hosts) {
            (Blacklisting::Domain, _, Some(hosts)) => {
                if !hosts.failure(slot, host.unwrap_or_default(), self.clock.now_ns()) {
                    return 0;
                }
                BLACKLISTED
            }
            (Blacklisting::Session(OnBlacklist::Rotate), Some(identities), _) => {
                if !pool.failure_without_cooldown(slot) {
                    return 0;
                }
                // The old id is blacklisted for good: the slot goes on under a new one.
                if identities.rotate(slot) {
                    self.stats.rotated();
                    BLACKLISTED | ROTATED
                } else {
                    BLACKLISTED
                }
            }
            _ => {
                if !pool.failure(slot, self.clock.now_ns()) {
                    return 0;
                }
                BLACKLISTED
            }
        };
        // The run ends here: its reasons wait for the caller (the ledger, at once) in the one
        // place kept for them, so a caller that never asks keeps nothing.
        let key = host_key(self.domain_host(host));
        state.benched = state
            .runs
            .take(slot, key)
            .map(|reasons| (slot, key, reasons));
        drop(state);
        self.note(slot, generation, host, Noted::Banned(self.config.cooldown));
        self.stats.blacklisted();
        flags
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

    /// How long until a session is live for `host` (domain scope; for any host in session
    /// scope): zero if one is live now.
    pub fn next_live_in(&self, host: Option<&str>) -> Duration {
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        match &mut state.hosts {
            None => state.pool.next_live_in(now),
            Some(hosts) => hosts.next_live_in(host.unwrap_or_default(), now),
        }
    }

    /// The number of the cooling session that comes back first, and how long until it does
    /// (domain scope: of the (session, host) pairs, an O(hosts) walk for the log).
    pub fn next_back(&self) -> Option<(u64, Duration)> {
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        let (slot, until) = match &mut state.hosts {
            None => state.pool.next_back(now)?,
            Some(hosts) => hosts.next_back(now)?,
        };
        let number = match &state.identities {
            None => slot.into(),
            Some(identities) => identities.number(slot),
        };
        Some((number, until))
    }

    /// `(live, cooling)`, taken together. Session scope: sessions live and cooling, adding up
    /// to the pool size. Domain scope: sessions cooling for no host, and (session, host) pairs
    /// cooling.
    pub fn counts(&self) -> (u32, u32) {
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        match &mut state.hosts {
            None => (state.pool.live_count(now), state.pool.cooling_count(now)),
            Some(hosts) => hosts.counts(now),
        }
    }

    /// Whether a cooldown ended early since the last call (domain scope: a slot that cooled
    /// for some host took a new id): the caller wakes the requests waiting for a session.
    pub fn take_released(&self) -> bool {
        self.released.load(Ordering::Relaxed) && self.released.swap(false, Ordering::AcqRel)
    }

    pub fn stats_snapshot(&self) -> Vec<(String, u64)> {
        let (live, cooling) = self.counts();
        let mut snapshot = self.stats.snapshot(live, cooling);
        if let Some(hosts) = &self.state.lock().hosts {
            snapshot.push(("hex_proxy/hosts/tracked".into(), hosts.tracked().into()));
            if hosts.evicted() > 0 {
                snapshot.push(("hex_proxy/hosts/evicted".into(), hosts.evicted()));
            }
            snapshot.sort_unstable();
        }
        snapshot
    }

    /// The reasons of the failure run that just blacklisted session `number` (for `host` in
    /// domain scope): `"429 ×3, DownloadTimeoutError ×2"`; taken once. `None` when the run went
    /// unexplained (more runs open than `runs::MAX_OPEN`).
    pub fn blacklist_reasons(&self, number: u64, host: Option<&str>) -> Option<String> {
        let (slot, _) = self.locate(number).ok()?;
        let key = host_key(self.domain_host(host));
        let mut state = self.state.lock();
        match state.benched.take() {
            Some((at, at_key, reasons)) if (at, at_key) == (slot, key) => Some(reasons),
            other => {
                state.benched = other;
                None
            }
        }
    }

    /// A 407 is about the credentials, whether or not it counts as a session failure; only a
    /// success proves them right (see `AuthTracker`).
    pub fn auth_failed(&self) -> bool {
        self.auth.failed()
    }

    pub fn session_id(&self, number: u64) -> Result<String, Error> {
        Ok(self.session(number)?.as_str().to_owned())
    }

    /// The id of session `number` (as `pick` returns it), without allocating.
    pub fn session(&self, number: u64) -> Result<SessionId, Error> {
        self.locate(number)?;
        Ok(SessionId::new(number))
    }

    /// The session's `Proxy-Authorization` value; `None` for a listed proxy without
    /// credentials.
    pub fn proxy_authorization(&self, number: u64) -> Result<Option<String>, Error> {
        let (slot, _) = self.locate(number)?;
        let id = SessionId::new(number);
        Ok(self.config.provider.proxy_authorization(slot, &id))
    }

    /// The slot of session `number`.
    pub fn slot(&self, number: u64) -> Result<u32, Error> {
        Ok(self.locate(number)?.0)
    }

    /// Moves a manual clock forward; an error on the system clock.
    pub fn advance(&self, by: Duration) -> Result<(), Error> {
        self.clock.advance(by)
    }

    /// Time since the engine's clock started.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.clock.now_ns())
    }

    /// `(slot, generation)` of a session number; an error for a number no slot can have.
    fn locate(&self, number: u64) -> Result<(u32, u32), Error> {
        let size = u64::from(self.config.pool_size);
        let found = if number < size {
            Some((number as u32, 0))
        } else if self.rotates {
            self.numbering().locate(number)
        } else {
            None
        };
        found.ok_or(Error::IndexOutOfRange {
            index: i64::try_from(number).unwrap_or(i64::MAX),
            pool_size: self.config.pool_size,
        })
    }

    fn numbering(&self) -> Numbering {
        Numbering::new(self.config.pool_size, self.epoch.load(Ordering::Relaxed))
    }

    /// What a saved state must match to be restored, as `key=value` lines, no secret in them:
    /// the provider (`origin`, the gateway's host:port, which the caller knows, and the user;
    /// or a fingerprint of the list's proxies without their passwords), the pool size, the ban
    /// scope and the rotation mode.
    pub fn describe(&self, origin: &str) -> String {
        let config = &self.config;
        let provider = match (config.provider.gateway(), config.provider.list()) {
            (Some(gateway), _) => format!("gateway={origin}\nuser={:?}", gateway.user()),
            (None, Some(list)) => {
                let labels: Vec<String> = list.iter().map(|proxy| proxy.label()).collect();
                format!(
                    "proxy_list={} proxies #{:016x}",
                    list.len(),
                    fnv1a(labels.join("\n").as_bytes())
                )
            }
            (None, None) => "provider=none".to_owned(),
        };
        let on_blacklist = match config.blacklisting.on_blacklist() {
            OnBlacklist::Cooldown => "cooldown",
            OnBlacklist::Rotate => "rotate",
        };
        format!(
            "{provider}\npool_size={}\nban_scope={}\non_blacklist={on_blacklist}\nids_rotate={}",
            config.pool_size,
            self.ban_scope().as_str(),
            self.rotates,
        )
    }

    /// The pool's state for a pause (see snapshot.rs): cooling sessions with the time they
    /// have left, failure runs, the rotated ids' numbering. `wall_ns`: the wall-clock time
    /// now (ns since the Unix epoch); `origin`: see `describe`. O(pool size) scan, under the
    /// lock: for a periodic save, not per request.
    pub fn snapshot(&self, wall_ns: u64, origin: &str) -> Vec<u8> {
        let config = self.describe(origin);
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        let State {
            pool,
            identities,
            hosts,
            ..
        } = &mut *state;
        let (hash_key, hosts) = hosts
            .as_mut()
            .map(|hosts| hosts.export(now))
            .unwrap_or_default();
        let saved = PoolState {
            config,
            saved_at_wall_ns: wall_ns,
            epoch: self.epoch.load(Ordering::Relaxed),
            cooling: pool.cooling_left(now).collect(),
            failing: pool.failing().collect(),
            rotated: identities
                .as_ref()
                .map(|identities| identities.rotated().collect())
                .unwrap_or_default(),
            hash_key,
            hosts,
        };
        drop(state);
        saved.encode()
    }

    /// Restores a state `snapshot` wrote, before the first pick: each cooldown resumes with
    /// the time it had left less the pause by the wall clock (`wall_ns` now against the
    /// save's), a cooldown that ended during the pause is over. A state of another
    /// configuration, or an unreadable one, changes nothing.
    pub fn restore(
        &self,
        data: &[u8],
        wall_ns: u64,
        origin: &str,
    ) -> Result<Restored, RestoreError> {
        let saved = PoolState::decode(data, self.config.pool_size)?;
        if let Some((saved, current)) = first_difference(&saved.config, &self.describe(origin)) {
            return Err(RestoreError::OtherConfig { saved, current });
        }
        let pause = wall_ns.saturating_sub(saved.saved_at_wall_ns);
        let mut restored = Restored::default();
        let mut state = self.state.lock();
        let now = self.clock.now_ns();
        let State {
            pool,
            identities,
            hosts,
            ..
        } = &mut *state;
        if let Some(hosts) = hosts {
            restored.records = hosts.restore(saved.hash_key, &saved.hosts, now, pause);
        }
        if let Some(identities) = identities {
            identities.restore(saved.epoch, &saved.rotated);
            self.epoch.store(saved.epoch, Ordering::Relaxed);
            restored.rotated = saved.rotated.len() as u32;
        }
        let mut cooling = saved.cooling;
        cooling.sort_by_key(|&(_, left)| left);
        for (slot, left) in cooling {
            let left = crate::clock::saturating_ns(left);
            if left <= pause {
                restored.expired += 1;
            } else if pool.restore_cooling(slot, now.saturating_add(left - pause)) {
                restored.cooling += 1;
            }
        }
        for (slot, failures) in saved.failing {
            pool.restore_failures(slot, failures);
            restored.failing += 1;
        }
        Ok(restored)
    }

    /// Shares the pool with other processes from now on (before the first pick): what they
    /// must learn is noted for `take_notes`. `nth`: this process's number from the shared
    /// counter, which gives its rotated ids an epoch of their own (`shared::epoch_of`).
    /// `waker`: called when a note arrives in an empty outbox (see `shared::Waker`).
    pub fn share(&self, nth: Option<u64>, waker: Option<shared::Waker>) {
        if let Some(waker) = waker {
            self.outbox.lock().set_waker(waker);
        }
        if let (Some(nth), true) = (nth, self.rotates) {
            let epoch = shared::epoch_of(nth);
            if let Some(identities) = &mut self.state.lock().identities {
                identities.restore(epoch, &[]);
            }
            self.epoch.store(epoch, Ordering::Relaxed);
        }
        self.sharing.store(true, Ordering::Relaxed);
    }

    /// Another process sharing the pool found the credentials rejected: nothing more is sent
    /// with them here either (`pick` hands out no session). True the first time.
    pub fn credentials_rejected_elsewhere(&self) -> bool {
        self.auth.rejected_elsewhere() != 0
    }

    /// What the other processes sharing the pool must learn, noted since the last call.
    pub fn take_notes(&self) -> Vec<Note> {
        self.outbox.lock().take()
    }

    /// The name of this pool's shared state (see `shared::key_of`); `origin` as for
    /// `describe`.
    pub fn shared_key(&self, origin: &str) -> String {
        shared::key_of(&self.describe(origin))
    }

    /// Takes what another process sharing the pool says about session `number` (`host`: the
    /// target host in ban scope "domain"), under the rules a local outcome follows: a run
    /// counted everywhere that reaches `HEX_PROXY_MAX_FAILURES` blacklists the session here
    /// too (noted like a local ban), a ban is honoured for the time it has left (rotate mode:
    /// the slot takes a new id), an ended run ends here. Returns the flags `BLACKLISTED` and
    /// `ROTATED`; nothing for an id this process's slot has left, or a session cooling already.
    pub fn take_fact(&self, number: u64, host: Option<&str>, fact: Fact) -> Result<u32, Error> {
        let (slot, generation) = self.locate(number)?;
        let mut state = self.state.lock();
        if !state.is_current(slot, generation) {
            return Ok(0);
        }
        let now = self.clock.now_ns();
        let target = host.unwrap_or_default();
        let key = host_key(self.domain_host(host));
        let State {
            pool,
            identities,
            hosts,
            runs,
            ..
        } = &mut *state;
        let rotate = self.config.blacklisting == Blacklisting::Session(OnBlacklist::Rotate);
        let banned = match (fact, hosts.as_mut()) {
            (Fact::Cleared, None) => {
                if pool.success(slot) {
                    runs.ended(slot, Some(key));
                }
                return Ok(0);
            }
            (Fact::Cleared, Some(hosts)) => {
                if hosts.success(slot, target, now) {
                    runs.ended(slot, Some(key));
                }
                return Ok(0);
            }
            (Fact::Run(failures), Some(hosts)) => hosts.merge_failures(slot, target, failures, now),
            (Fact::Banned(left), Some(hosts)) => {
                let until = now.saturating_add(crate::clock::saturating_ns(left));
                hosts.cool_until(slot, target, until, now)
            }
            (Fact::Run(failures), None) => pool.merge_failures(slot, failures),
            (Fact::Banned(left), None) => {
                if pool.is_cooling(slot, now) {
                    false
                } else if rotate {
                    true
                } else {
                    let until = now.saturating_add(crate::clock::saturating_ns(left));
                    pool.bench_until(slot, until, now)
                }
            }
        };
        if !banned {
            return Ok(0);
        }
        let mut flags = BLACKLISTED;
        match (identities, &*hosts) {
            (Some(identities), None) if rotate => {
                // Rotate mode: the id is done for; the slot goes on under a new one.
                pool.success(slot);
                if identities.rotate(slot) {
                    self.stats.rotated();
                    flags |= ROTATED;
                }
            }
            (None, None) if matches!(fact, Fact::Run(_)) => pool.bench_now(slot, now),
            _ => {}
        }
        runs.ended(slot, Some(key));
        drop(state);
        if let Fact::Run(_) = fact {
            // This process decided the ban, on the count of them all: as a local one.
            self.note(slot, generation, host, Noted::Banned(self.config.cooldown));
            self.stats.blacklisted();
        } else {
            self.stats.shared_ban_taken();
        }
        Ok(flags)
    }

    /// The id a session's slot goes by after its rotation from `number` (for the log).
    pub fn successor(&self, number: u64) -> Result<SessionId, Error> {
        let (slot, generation) = self.locate(number)?;
        let next = if self.rotates {
            self.numbering().number(slot, generation.saturating_add(1))
        } else {
            number
        };
        Ok(SessionId::new(next))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::AtomicU64;
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

    pub(super) fn stat(engine: &Engine, key: &str) -> u64 {
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
            assert_eq!(engine.record(3, None, Event::Status(429)), Ok(FAILED));
        }
        assert_eq!(
            engine.record(3, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
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
            assert_eq!(engine.record(0, None, Event::Status(status)), Ok(expected));
        }
        assert_eq!(stat(&engine, "hex_proxy/failure/404"), 0);
    }

    #[test]
    fn a_success_without_status_resets_the_count() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(engine.record(5, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(engine.record(5, None, Event::Success).map(|_| ()), Ok(()));
        assert_eq!(engine.record(5, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(5, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
    }

    #[test]
    fn a_407_outside_the_failure_codes_still_counts_against_the_credentials() {
        let engine = engine_with(|s| {
            s.failure_codes = vec![503];
            s.auth_failures_to_close = 2;
        });
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(0));
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(AUTH_FAILED));
        assert_eq!(engine.counts(), (20, 0));
        assert_eq!(stat(&engine, "hex_proxy/failure/407"), 0);
    }

    #[test]
    fn exceptions_are_failures_named_by_class() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(
            engine.record(1, None, Event::Exception("TunnelError")),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(1, None, Event::Exception("TimeoutError")),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/TunnelError"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/TimeoutError"), 1);
    }

    #[test]
    fn failures_on_a_cooling_session_are_counted_but_do_not_blacklist_it_again() {
        let engine = engine_with(|s| s.max_failures = 1);
        assert_eq!(
            engine.record(2, None, Event::Status(429)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(engine.record(2, None, Event::Status(429)), Ok(FAILED));
        assert_eq!(
            engine.record(2, None, Event::Exception("TunnelError")),
            Ok(FAILED)
        );
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
        engine.record(0, None, Event::Status(503)).unwrap();
        engine.advance(Duration::from_secs(4)).unwrap();
        engine.record(1, None, Event::Status(503)).unwrap();
        assert_eq!(engine.pick(None, &[]), None);
        assert_eq!(engine.next_live_in(None), Duration::from_secs(6));
        assert_eq!(engine.next_back(), Some((0, Duration::from_secs(6))));
        engine.advance(Duration::from_secs(6)).unwrap();
        assert_eq!(engine.now(), Duration::from_secs(10));
        assert_eq!(engine.next_live_in(None), Duration::ZERO);
        assert_eq!(engine.pick(None, &[0]), Some(0));
    }

    #[test]
    fn consecutive_407s_fail_auth_once() {
        let engine = engine_with(|s| s.max_failures = 100);
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        assert_eq!(engine.record(1, None, Event::Status(200)), Ok(0));
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        assert_eq!(engine.record(3, None, Event::Success).map(|_| ()), Ok(()));
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        // Other failures neither reset nor count.
        assert_eq!(engine.record(2, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(2, None, Event::Exception("TunnelError")),
            Ok(FAILED)
        );
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        assert!(!engine.auth_failed());
        assert_eq!(
            engine.record(1, None, Event::Status(407)),
            Ok(FAILED | AUTH_FAILED)
        );
        assert!(engine.auth_failed());
        assert_eq!(engine.record(1, None, Event::Status(407)), Ok(FAILED));
    }

    #[test]
    fn both_flags_can_come_together() {
        let engine = engine_with(|s| {
            s.max_failures = 1;
            s.auth_failures_to_close = 1;
        });
        assert_eq!(
            engine.record(0, None, Event::Status(407)),
            Ok(FAILED | BLACKLISTED | AUTH_FAILED)
        );
    }

    #[test]
    fn a_ban_verdict_is_a_failure_counted_under_ban_unless_its_status_is_a_failure_code() {
        let engine = engine_with(|s| s.max_failures = 3);
        assert_eq!(
            engine.record(
                1,
                None,
                Event::Judged {
                    status: 200,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(
                1,
                None,
                Event::Judged {
                    status: 404,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(
                1,
                None,
                Event::Judged {
                    status: 503,
                    ban: true
                }
            ),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/ban"), 2);
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/200"), 0);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 1);
    }

    #[test]
    fn a_not_ban_verdict_is_a_success_even_on_a_failure_code() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(
            engine.record(
                2,
                None,
                Event::Judged {
                    status: 503,
                    ban: false
                }
            ),
            Ok(0)
        );
        assert_eq!(engine.record(2, None, Event::Status(503)), Ok(FAILED));
        // The run of failures was reset by the 503 judged not a ban, then starts again.
        assert_eq!(
            engine.record(
                2,
                None,
                Event::Judged {
                    status: 429,
                    ban: false
                }
            ),
            Ok(0)
        );
        assert_eq!(engine.record(2, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(2, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 3);
        assert_eq!(stat(&engine, "hex_proxy/failure/429"), 0);
    }

    #[test]
    fn a_407_counts_against_the_credentials_whatever_the_verdict() {
        let engine = engine_with(|s| {
            s.max_failures = 100;
            s.auth_failures_to_close = 2;
        });
        assert_eq!(
            engine.record(
                0,
                None,
                Event::Judged {
                    status: 407,
                    ban: false
                }
            ),
            Ok(0)
        );
        assert_eq!(
            engine.record(
                0,
                None,
                Event::Judged {
                    status: 407,
                    ban: true
                }
            ),
            Ok(FAILED | AUTH_FAILED)
        );
        // A ban on a 200 is no proof of the credentials either way: it neither counts nor resets.
        let engine = engine_with(|s| s.auth_failures_to_close = 2);
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        assert_eq!(
            engine.record(
                1,
                None,
                Event::Judged {
                    status: 200,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(0, None, Event::Status(407)),
            Ok(FAILED | AUTH_FAILED)
        );
    }

    #[test]
    fn a_ban_without_a_status_is_a_failure_counted_under_ban() {
        let engine = engine_with(|s| s.max_failures = 2);
        assert_eq!(engine.record(4, None, Event::Ban), Ok(FAILED));
        assert_eq!(
            engine.record(4, None, Event::Exception("TunnelError")),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/ban"), 1);
        assert_eq!(
            engine.record(20, None, Event::Ban),
            Err(Error::IndexOutOfRange {
                index: 20,
                pool_size: 20
            })
        );
        assert_eq!(
            engine.record(
                20,
                None,
                Event::Judged {
                    status: 200,
                    ban: true
                }
            ),
            Err(Error::IndexOutOfRange {
                index: 20,
                pool_size: 20
            })
        );
    }

    #[test]
    fn a_refused_tunnel_is_always_a_failure_and_a_407_refusal_counts_against_the_credentials() {
        let engine = engine_with(|s| {
            s.failure_codes = vec![503];
            s.max_failures = 2;
            s.auth_failures_to_close = 2;
        });
        assert_eq!(engine.record(4, None, Event::Refusal(403)), Ok(FAILED));
        assert_eq!(
            engine.record(4, None, Event::Refusal(999)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/403"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/TunnelError"), 1);
        assert_eq!(engine.record(5, None, Event::Refusal(407)), Ok(FAILED));
        assert_eq!(
            engine.record(6, None, Event::Refusal(407)),
            Ok(FAILED | AUTH_FAILED)
        );
    }

    #[test]
    fn no_session_is_handed_out_once_the_credentials_are_rejected() {
        let engine = engine_with(|s| s.auth_failures_to_close = 1);
        assert!(engine.pick(None, &[]).is_some());
        engine.record(0, None, Event::Status(407)).unwrap();
        assert_eq!(engine.pick(None, &[]), None);
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
        engine.record(0, None, Event::Status(407)).unwrap();
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
            engine.record(20, None, Event::Status(200)),
            out_of_range.clone().map(|_| 0)
        );
        assert_eq!(
            engine.record(20, None, Event::Exception("X")),
            out_of_range.clone().map(|_| 0)
        );
        assert_eq!(
            engine.record(20, None, Event::Success).map(|_| ()),
            out_of_range.map(|_| ())
        );
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
        assert_eq!(engine.record(0, None, Event::Status(407)), Ok(FAILED));
        // The other proxy's success does not clear proxy 0's record.
        assert_eq!(engine.record(1, None, Event::Status(200)), Ok(0));
        assert_eq!(
            engine.record(0, None, Event::Status(407)),
            Ok(FAILED | PROXY_REJECTED)
        );
        assert!(!engine.auth_failed());
        assert!(engine.pick(None, &[]).is_some());
        assert_eq!(engine.record(1, None, Event::Refusal(407)), Ok(FAILED));
        assert_eq!(
            engine.record(1, None, Event::Refusal(407)),
            Ok(FAILED | PROXY_REJECTED | AUTH_FAILED)
        );
        assert!(engine.auth_failed());
        assert_eq!(engine.pick(None, &[]), None);
    }

    #[test]
    fn unseeded_crawls_number_their_rotated_ids_from_their_own_epoch() {
        let rotated_id = || {
            let mut settings = example_settings();
            settings.pool_size = 4;
            settings.max_failures = 1;
            settings.on_blacklist = "rotate".into();
            let engine = Engine::new(settings.validate().unwrap(), Clock::manual(), None);
            assert_eq!(
                engine.record(2, None, Event::Status(503)).unwrap() & ROTATED,
                ROTATED
            );
            let number = engine.pick(None, &[0, 1, 3]).unwrap();
            assert_eq!(engine.slot(number), Ok(2));
            assert!(number >= 2 * 4, "past the pool and the seeded numbering");
            assert_eq!(
                engine.session_id(number),
                Ok(engine.successor(2).unwrap().as_str().to_owned())
            );
            // Numbers of generations this crawl never numbered are no session of it.
            assert!(engine.session_id(6).is_err());
            engine.session_id(number).unwrap()
        };
        // Two crawls draw the same epoch with probability 2^-31.
        assert_ne!(rotated_id(), rotated_id());
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

    fn rotating(change: impl FnOnce(&mut Settings)) -> Engine {
        engine_with(|s| {
            s.on_blacklist = "rotate".into();
            change(s);
        })
    }

    #[test]
    fn rotate_on_blacklist_gives_the_slot_a_new_id_at_once_and_keeps_capacity() {
        let engine = rotating(|s| {
            s.pool_size = 4;
            s.max_failures = 3;
        });
        assert_eq!(engine.record(2, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(engine.record(2, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(2, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED | ROTATED)
        );
        assert_eq!(engine.counts(), (4, 0));
        assert_eq!(engine.next_live_in(None), Duration::ZERO);
        // Slot 2 goes on as s006 (2 + 1 * 4) with a clean run.
        assert_eq!(engine.pick(None, &[0, 1, 3]), Some(6));
        assert_eq!(engine.session_id(6).unwrap(), "s006");
        assert_eq!(engine.slot(6), Ok(2));
        assert_eq!(engine.record(6, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 1);
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 1);
        assert_eq!(stat(&engine, "hex_proxy/sessions/live"), 4);
    }

    #[test]
    fn every_rotated_id_is_new_and_no_other_slots_id() {
        let engine = rotating(|s| {
            s.pool_size = 5;
            s.max_failures = 1;
        });
        let mut ids: HashSet<String> = (0..5).map(|n| engine.session_id(n).unwrap()).collect();
        for _ in 0..5_000 {
            let number = engine.pick(None, &[]).expect("never short of a session");
            if number >= 5 {
                // Handed out for the first time right after the rotation that made it.
                assert!(ids.contains(&engine.session_id(number).unwrap()));
            }
            let flags = engine.record(number, None, Event::Status(503)).unwrap();
            assert_eq!(flags, FAILED | BLACKLISTED | ROTATED);
            let next = engine.successor(number).unwrap().as_str().to_owned();
            assert!(ids.insert(next.clone()), "{next} was used before");
            assert_eq!(engine.counts(), (5, 0));
        }
        assert_eq!(ids.len(), 5_005);
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 5_000);
    }

    #[test]
    fn attempts_in_flight_on_a_retired_id_do_not_touch_the_new_ids_run() {
        let engine = rotating(|s| {
            s.pool_size = 1;
            s.max_failures = 2;
        });
        let in_flight: Vec<u64> = (0..4).map(|_| engine.pick(None, &[]).unwrap()).collect();
        assert_eq!(in_flight, [0, 0, 0, 0]);
        assert_eq!(engine.record(0, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(0, None, Event::Exception("TimeoutError")),
            Ok(FAILED | BLACKLISTED | ROTATED)
        );
        // s000 is retired: its late failure is counted, but not against s001.
        assert_eq!(engine.record(0, None, Event::Status(429)), Ok(FAILED));
        let new = engine.pick(None, &[]).unwrap();
        assert_eq!(engine.session_id(new).unwrap(), "s001");
        assert_eq!(engine.record(new, None, Event::Status(503)), Ok(FAILED));
        // Nor does its late success clear s001's run.
        assert_eq!(engine.record(0, None, Event::Success).map(|_| ()), Ok(()));
        assert_eq!(engine.record(0, None, Event::Status(200)), Ok(0));
        assert_eq!(
            engine.record(new, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED | ROTATED)
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 3);
        assert_eq!(stat(&engine, "hex_proxy/failure/429"), 1);
        assert_eq!(stat(&engine, "hex_proxy/failure/TimeoutError"), 1);
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 2);
    }

    #[test]
    fn max_uses_hands_each_id_out_that_many_times() {
        let engine = engine_with(|s| {
            s.pool_size = 3;
            s.session_max_uses = 4;
        });
        let mut uses: HashMap<u64, u32> = HashMap::new();
        for _ in 0..100 {
            *uses.entry(engine.pick(None, &[]).unwrap()).or_default() += 1;
        }
        assert!(uses.values().all(|&n| n <= 4), "{uses:?}");
        // Every id but the current one of each slot was used up.
        let used_up = uses.values().filter(|&&n| n == 4).count();
        assert!(used_up >= uses.len() - 3);
        assert_eq!(stat(&engine, "hex_proxy/rotated"), uses.len() as u64 - 3);
        assert_eq!(uses.values().sum::<u32>(), 100);
    }

    #[test]
    fn max_age_rotates_an_id_at_its_next_pick_once_it_is_that_old() {
        let engine = engine_with(|s| {
            s.pool_size = 1;
            s.session_max_age = 10.0;
        });
        engine.advance(Duration::from_secs(5)).unwrap();
        assert_eq!(engine.pick(None, &[]), Some(0)); // first use at 5 s
        engine.advance(Duration::from_millis(9_999)).unwrap();
        assert_eq!(engine.pick(None, &[]), Some(0));
        engine.advance(Duration::from_millis(1)).unwrap();
        assert_eq!(engine.pick(None, &[]), Some(1));
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 1);
        // Not picked for a long while: rotated once, at its next pick.
        engine.advance(Duration::from_secs(1000)).unwrap();
        assert_eq!(engine.pick(None, &[]), Some(2));
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 2);
    }

    #[test]
    fn with_cooldown_and_max_uses_failures_of_a_used_up_id_do_not_blacklist_its_successor() {
        let engine = engine_with(|s| {
            s.pool_size = 1;
            s.max_failures = 2;
            s.session_max_uses = 2;
        });
        let (a, b) = (
            engine.pick(None, &[]).unwrap(),
            engine.pick(None, &[]).unwrap(),
        );
        let c = engine.pick(None, &[]).unwrap();
        assert_eq!((a, b, c), (0, 0, 1));
        assert_eq!(engine.record(a, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(engine.record(b, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(engine.counts(), (1, 0));
        assert_eq!(engine.record(c, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(c, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(engine.counts(), (0, 1));
        // The cooling session is named by the id it cools as.
        assert_eq!(engine.next_back(), Some((1, Duration::from_secs(300))));
    }

    #[test]
    fn numbers_beyond_the_pool_are_errors_unless_ids_rotate() {
        fn error<T>(index: i64) -> Result<T, Error> {
            Err(Error::IndexOutOfRange {
                index,
                pool_size: 4,
            })
        }
        let plain = engine_with(|s| s.pool_size = 4);
        assert_eq!(plain.session_id(4), error(4));
        assert_eq!(plain.record(6, None, Event::Status(200)), error(6));
        let rotating = rotating(|s| s.pool_size = 4);
        assert_eq!(rotating.session_id(6).unwrap(), "s006");
        let last = 3 + u64::from(u32::MAX) * 4;
        assert_eq!(rotating.slot(last), Ok(3));
        assert_eq!(rotating.slot(last + 1), error((last + 1) as i64));
        assert_eq!(rotating.session_id(u64::MAX), error(i64::MAX));
    }

    fn domain_engine(pool_size: i64) -> Engine {
        engine_with(|s| {
            s.ban_scope = "domain".into();
            s.pool_size = pool_size;
            s.max_failures = 2;
            s.cooldown = 10.0;
        })
    }

    #[test]
    fn domain_scope_blacklists_per_host_and_counts_session_host_pairs() {
        let engine = domain_engine(4);
        let a = Some("a.test");
        assert_eq!(engine.record(1, a, Event::Status(403)), Ok(FAILED));
        assert_eq!(
            engine.record(1, a, Event::Exception("TunnelError")),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(engine.record(2, a, Event::Refusal(503)), Ok(FAILED));
        assert_eq!(engine.record(2, a, Event::Success).map(|_| ()), Ok(()));
        assert_eq!(engine.record(2, a, Event::Status(503)), Ok(FAILED));
        assert_eq!(engine.record(1, Some("b.test"), Event::Status(200)), Ok(0));
        assert_eq!(
            engine.record(1, Some("b.test"), Event::Status(429)),
            Ok(FAILED)
        );
        for _ in 0..100 {
            assert_ne!(engine.pick(a, &[]), Some(1));
        }
        assert!((0..100).any(|_| engine.pick(Some("b.test"), &[]) == Some(1)));
        assert_eq!(engine.counts(), (3, 1));
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 1);
        assert_eq!(stat(&engine, "hex_proxy/sessions/live"), 3);
        assert_eq!(stat(&engine, "hex_proxy/sessions/cooling"), 1);
        assert_eq!(stat(&engine, "hex_proxy/hosts/tracked"), 2);
        engine.advance(Duration::from_secs(10)).unwrap();
        assert_eq!(engine.counts(), (4, 0));
        // a.test still holds slot 2's run, b.test slot 1's.
        assert_eq!(stat(&engine, "hex_proxy/hosts/tracked"), 2);
        // The pool itself never benches anyone in domain scope.
        assert_eq!(engine.state.lock().pool.cooling_count(0), 0);
    }

    #[test]
    fn domain_scope_holds_a_ban_verdict_against_the_host_it_came_from() {
        let engine = domain_engine(4);
        let (a, b) = (Some("a.test"), Some("b.test"));
        assert_eq!(
            engine.record(
                1,
                a,
                Event::Judged {
                    status: 200,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        assert_eq!(engine.record(1, a, Event::Ban), Ok(FAILED | BLACKLISTED));
        // Judged not a ban, a 503 clears the run on its host like any success.
        assert_eq!(
            engine.record(
                1,
                b,
                Event::Judged {
                    status: 503,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(
                1,
                b,
                Event::Judged {
                    status: 503,
                    ban: false
                }
            ),
            Ok(0)
        );
        assert_eq!(
            engine.record(
                1,
                b,
                Event::Judged {
                    status: 503,
                    ban: true
                }
            ),
            Ok(FAILED)
        );
        for _ in 0..100 {
            assert_ne!(engine.pick(a, &[]), Some(1));
        }
        assert!((0..100).any(|_| engine.pick(b, &[]) == Some(1)));
        assert_eq!(stat(&engine, "hex_proxy/failure/ban"), 2);
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 2);
    }

    #[test]
    fn session_scope_shows_no_host_stats() {
        let engine = engine();
        engine
            .record(1, Some("a.test"), Event::Status(200))
            .unwrap();
        assert!(engine.state.lock().hosts.is_none());
        assert!(engine
            .stats_snapshot()
            .iter()
            .all(|(key, _)| !key.starts_with("hex_proxy/hosts/")));
    }

    #[test]
    fn domain_scope_exhaustion_is_per_host() {
        let engine = domain_engine(2);
        let a = Some("a.test");
        for index in [0, 1] {
            engine.record(index, a, Event::Status(503)).unwrap();
            engine.record(index, a, Event::Status(503)).unwrap();
            engine.advance(Duration::from_secs(3)).unwrap();
        }
        assert_eq!(engine.pick(a, &[]), None);
        assert!(engine.pick(Some("b.test"), &[]).is_some());
        assert_eq!(engine.next_live_in(a), Duration::from_secs(4));
        assert_eq!(engine.next_live_in(Some("b.test")), Duration::ZERO);
        engine.advance(Duration::from_secs(4)).unwrap();
        assert_eq!(engine.pick(a, &[1]), Some(0));
    }

    #[test]
    fn threads_share_one_domain_scope_engine_and_the_counts_add_up() {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 3_000;
        let engine = domain_engine(20);
        let blacklisted = AtomicU64::new(0);
        thread::scope(|scope| {
            for thread in 0..THREADS {
                let (engine, blacklisted) = (&engine, &blacklisted);
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let host = ["a.test", "b.test", "c.test"][(round % 3) as usize];
                        let Some(index) = engine.pick(Some(host), &[]) else {
                            engine.advance(Duration::from_millis(100)).unwrap();
                            continue;
                        };
                        let status = if (round + thread) % 2 == 0 { 503 } else { 200 };
                        let flags = engine
                            .record(index, Some(host), Event::Status(status))
                            .unwrap();
                        blacklisted.fetch_add(u64::from(flags & BLACKLISTED), Ordering::Relaxed);
                    }
                });
            }
        });
        let blacklisted = blacklisted.into_inner();
        assert!(blacklisted > 0);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), blacklisted);
        let (live, cooling) = engine.counts();
        assert!(live <= 20 && cooling <= 60);
    }

    #[test]
    fn a_rotated_id_starts_clean_on_every_host_and_late_outcomes_of_the_old_one_are_ignored() {
        let engine = engine_with(|s| {
            s.ban_scope = "domain".into();
            s.pool_size = 1;
            s.max_failures = 2;
            s.session_max_uses = 2;
        });
        let a = Some("a.test");
        assert_eq!(engine.pick(a, &[]), Some(0));
        assert_eq!(engine.record(0, a, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            engine.record(0, a, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(
            engine.record(0, Some("b.test"), Event::Status(503)),
            Ok(FAILED)
        );
        assert_eq!(engine.pick(a, &[]), None);
        assert_eq!(engine.pick(Some("b.test"), &[]), Some(0));
        // Its second use is up: the next pick rotates the slot to id 1 ("s001"), which no host
        // has seen: a.test's ban and b.test's run belong to the old id.
        assert!(!engine.take_released());
        assert_eq!(engine.pick(Some("c.test"), &[]), Some(1));
        assert_eq!(stat(&engine, "hex_proxy/rotated"), 1);
        // That ended a.test's ban early: whoever waits for a.test is to be woken, once.
        assert!(engine.take_released());
        assert!(!engine.take_released());
        assert_eq!(engine.counts(), (1, 0));
        assert_eq!(stat(&engine, "hex_proxy/hosts/tracked"), 0);
        assert_eq!(engine.pick(a, &[]), Some(1));
        // A late failure of the old id touches nothing.
        assert_eq!(
            engine.record(0, Some("b.test"), Event::Status(503)),
            Ok(FAILED)
        );
        assert_eq!(
            engine.record(1, Some("b.test"), Event::Status(503)),
            Ok(FAILED)
        );
        assert_eq!(engine.counts(), (1, 0));
    }

    #[test]
    fn next_back_in_domain_scope_is_the_first_session_host_pair_back() {
        let engine = domain_engine(3);
        assert_eq!(engine.next_back(), None);
        for (index, host) in [(2, "a.test"), (1, "b.test")] {
            engine
                .record(index, Some(host), Event::Status(503))
                .unwrap();
            engine
                .record(index, Some(host), Event::Status(503))
                .unwrap();
            engine.advance(Duration::from_secs(3)).unwrap();
        }
        assert_eq!(engine.next_back(), Some((2, Duration::from_secs(4))));
        engine.advance(Duration::from_secs(4)).unwrap();
        assert_eq!(engine.next_back(), Some((1, Duration::from_secs(3))));
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
                        let Some(index) = engine.pick(None, &[]) else {
                            engine.advance(Duration::from_millis(100)).unwrap();
                            continue;
                        };
                        let status = if (round + thread) % 3 == 0 { 503 } else { 200 };
                        let flags = engine.record(index, None, Event::Status(status)).unwrap();
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

    const WALL: u64 = 1_750_000_000 * 1_000_000_000;
    const ORIGIN: &str = "127.0.0.1:8080";

    fn bench(engine: &Engine, number: u64) {
        while engine.record(number, None, Event::Status(503)).unwrap() & BLACKLISTED == 0 {}
    }

    fn successor(engine: &Engine, number: u64) -> u64 {
        engine.successor(number).unwrap().as_str()[1..]
            .parse()
            .unwrap()
    }

    fn unseeded(change: impl FnOnce(&mut Settings)) -> Engine {
        let mut settings = example_settings();
        change(&mut settings);
        Engine::new(settings.validate().unwrap(), Clock::manual(), None)
    }

    #[test]
    fn cooldowns_resume_with_their_time_left_less_the_pause_by_the_wall_clock() {
        let before = engine_with(|s| s.pool_size = 6);
        bench(&before, 4); // 300 s
        before.advance(Duration::from_secs(50)).unwrap();
        bench(&before, 1); // 300 s, from 50 s
        before.advance(Duration::from_secs(200)).unwrap();
        // At 250 s: s004 has 50 s left, s001 100 s.
        let saved = before.snapshot(WALL, ORIGIN);
        // The new process's monotonic clock starts anywhere: here at 7 s.
        let after = engine_with(|s| s.pool_size = 6);
        after.advance(Duration::from_secs(7)).unwrap();
        let pause = Duration::from_secs(60);
        let restored = after
            .restore(&saved, WALL + pause.as_nanos() as u64, ORIGIN)
            .unwrap();
        assert_eq!(
            restored,
            Restored {
                cooling: 1,
                expired: 1,
                ..Restored::default()
            }
        );
        // s004's cooldown ended during the pause; s001 has 100 - 60 s left.
        assert_eq!(after.counts(), (5, 1));
        assert_eq!(after.next_back(), Some((1, Duration::from_secs(40))));
        for _ in 0..200 {
            assert_ne!(after.pick(None, &[]), Some(1));
        }
        after.advance(Duration::from_secs(39)).unwrap();
        assert_eq!(after.counts(), (5, 1));
        after.advance(Duration::from_secs(1)).unwrap();
        assert_eq!(after.counts(), (6, 0));
    }

    #[test]
    fn a_short_pause_keeps_about_the_whole_time_left_and_a_clock_set_back_takes_nothing_off() {
        let before = engine();
        bench(&before, 9);
        before.advance(Duration::from_secs(50)).unwrap();
        let saved = before.snapshot(WALL, ORIGIN);
        let after = engine();
        after.restore(&saved, WALL - 1_000_000_000, ORIGIN).unwrap();
        assert_eq!(after.next_back(), Some((9, Duration::from_secs(250))));
    }

    #[test]
    fn failure_runs_resume_where_they_stopped() {
        let before = engine_with(|s| s.max_failures = 3);
        before.record(2, None, Event::Status(503)).unwrap();
        before.record(2, None, Event::Status(429)).unwrap();
        before.record(5, None, Event::Status(503)).unwrap();
        let saved = before.snapshot(WALL, ORIGIN);
        let after = engine_with(|s| s.max_failures = 3);
        let restored = after.restore(&saved, WALL, ORIGIN).unwrap();
        assert_eq!(restored.failing, 2);
        // s002 had 2 of 3: one more benches it; s005 had 1.
        assert_eq!(
            after.record(2, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(after.record(5, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            after.record(5, None, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
    }

    #[test]
    fn a_resumed_crawl_goes_on_with_the_rotated_ids_and_never_reuses_one() {
        let rotating = |s: &mut Settings| {
            s.pool_size = 3;
            s.max_failures = 1;
            s.on_blacklist = "rotate".into();
        };
        let before = unseeded(rotating);
        let mut seen: HashSet<u64> = (0..3).collect();
        let mut current = 1;
        for _ in 0..5 {
            before.record(current, None, Event::Status(503)).unwrap();
            current = successor(&before, current);
            assert!(seen.insert(current));
        }
        let saved = before.snapshot(WALL, ORIGIN);
        // Another process: another random epoch, which the restore replaces.
        let after = unseeded(rotating);
        assert_eq!(
            after.restore(&saved, WALL, ORIGIN).map(|r| r.rotated),
            Ok(1)
        );
        let picked: HashSet<u64> = (0..100).filter_map(|_| after.pick(None, &[])).collect();
        assert_eq!(picked, HashSet::from([0, current, 2]));
        for _ in 0..5 {
            after.record(current, None, Event::Status(503)).unwrap();
            current = successor(&after, current);
            assert!(seen.insert(current), "{current} again");
        }
        assert_eq!(
            after.session_id(current).unwrap(),
            before.session_id(current).unwrap()
        );
    }

    #[test]
    fn an_unreadable_state_is_refused_and_changes_nothing() {
        let before = engine();
        bench(&before, 3);
        before.record(4, None, Event::Status(503)).unwrap();
        let saved = before.snapshot(WALL, ORIGIN);
        let after = engine();
        for len in [0, 5, saved.len() / 2, saved.len() - 1] {
            assert!(matches!(
                after.restore(&saved[..len], WALL, ORIGIN),
                Err(RestoreError::Unreadable(_))
            ));
        }
        let mut damaged = saved.clone();
        damaged[saved.len() - 20] ^= 1;
        assert!(matches!(
            after.restore(&damaged, WALL, ORIGIN),
            Err(RestoreError::Unreadable(_))
        ));
        assert!(after.restore(b"garbage", WALL, ORIGIN).is_err());
        assert_eq!(after.counts(), (20, 0));
        assert_eq!(after.record(4, None, Event::Status(503)), Ok(FAILED));
        assert_eq!(
            after.restore(&saved, WALL, ORIGIN).map(|r| r.cooling),
            Ok(1)
        );
    }

    #[test]
    fn a_state_of_another_configuration_is_ignored_and_says_what_differs() {
        let before = engine();
        bench(&before, 3);
        let saved = before.snapshot(WALL, ORIGIN);
        let differs = |engine: Engine, origin: &str| match engine.restore(&saved, WALL, origin) {
            Err(RestoreError::OtherConfig { saved, current }) => {
                assert_eq!(engine.counts().1, 0);
                format!("{saved} / {current}")
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            differs(engine(), "127.0.0.1:9090"),
            "gateway=127.0.0.1:8080 / gateway=127.0.0.1:9090"
        );
        assert_eq!(
            differs(engine_with(|s| s.user = "other".into()), ORIGIN),
            "user=\"USER\" / user=\"other\""
        );
        assert_eq!(
            differs(engine_with(|s| s.pool_size = 21), ORIGIN),
            "pool_size=20 / pool_size=21"
        );
        assert_eq!(
            differs(engine_with(|s| s.ban_scope = "domain".into()), ORIGIN),
            "ban_scope=session / ban_scope=domain"
        );
        assert_eq!(
            differs(engine_with(|s| s.session_max_uses = 5), ORIGIN),
            "ids_rotate=false / ids_rotate=true"
        );
        let list = |urls: &[&str]| {
            engine_with(|s| {
                s.proxies = Some(
                    urls.iter()
                        .enumerate()
                        .map(|(i, url)| (format!("entry {i}"), (*url).to_owned()))
                        .collect(),
                );
                s.pool_size = urls.len() as i64;
            })
        };
        let listed = list(&["http://u:one@10.0.0.1:1", "http://10.0.0.2:2"]);
        bench(&listed, 1);
        let saved = listed.snapshot(WALL, "");
        // Another password of a listed proxy is the same list; another address is not.
        let same = list(&["http://u:two@10.0.0.1:1", "http://10.0.0.2:2"]);
        assert_eq!(same.restore(&saved, WALL, "").map(|r| r.cooling), Ok(1));
        let other = list(&["http://u:one@10.0.0.1:1", "http://10.0.0.3:2"]);
        assert!(matches!(
            other.restore(&saved, WALL, ""),
            Err(RestoreError::OtherConfig { .. })
        ));
        assert!(!String::from_utf8_lossy(&saved).contains("one"));
    }

    #[test]
    fn the_password_is_not_in_the_state_and_another_password_keeps_it() {
        let before = engine();
        bench(&before, 3);
        let saved = before.snapshot(WALL, ORIGIN);
        let text = String::from_utf8_lossy(&saved);
        assert!(!text.contains("s3cret"));
        let after = engine_with(|s| s.password = "new-password".into());
        assert_eq!(
            after.restore(&saved, WALL, ORIGIN).map(|r| r.cooling),
            Ok(1)
        );
    }

    #[test]
    fn a_million_session_pool_with_three_benched_writes_a_few_bytes() {
        let before = engine_with(|s| s.pool_size = 1_000_000);
        for number in [10, 500_000, 999_999] {
            bench(&before, number);
        }
        let saved = before.snapshot(WALL, ORIGIN);
        assert!(saved.len() < 220, "{} bytes", saved.len());
        let after = engine_with(|s| s.pool_size = 1_000_000);
        assert_eq!(
            after.restore(&saved, WALL, ORIGIN).map(|r| r.cooling),
            Ok(3)
        );
        assert_eq!(after.counts(), (999_997, 3));
    }

    #[test]
    fn domain_records_resume_per_host_under_the_saved_hash_key() {
        let before = domain_engine(4);
        let (a, b) = (Some("a.test"), Some("b.test"));
        before.record(1, a, Event::Status(503)).unwrap();
        before.record(1, a, Event::Status(503)).unwrap(); // benched for a.test, 10 s
        before.record(2, a, Event::Status(503)).unwrap();
        before.record(1, b, Event::Status(503)).unwrap();
        before.advance(Duration::from_secs(3)).unwrap();
        let saved = before.snapshot(WALL, ORIGIN);
        // Another process: another random hash key, which the restore replaces.
        let after = domain_engine(4);
        let restored = after.restore(&saved, WALL + 2_000_000_000, ORIGIN).unwrap();
        assert_eq!(restored.records, 3);
        assert_eq!(after.next_back(), Some((1, Duration::from_secs(5))));
        for _ in 0..100 {
            assert_ne!(after.pick(a, &[]), Some(1));
        }
        assert_eq!(
            after.record(2, a, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(
            after.record(1, b, Event::Status(503)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(
            after.record(1, Some("c.test"), Event::Status(503)),
            Ok(FAILED)
        );
        after.advance(Duration::from_secs(5)).unwrap();
        assert!((0..100).any(|_| after.pick(a, &[]) == Some(1)));
        // A pause longer than the cooldown: the ban is over, the runs stand.
        let late = domain_engine(4);
        let restored = late.restore(&saved, WALL + 60_000_000_000, ORIGIN).unwrap();
        assert_eq!(restored.records, 2);
        assert_eq!(late.counts(), (4, 0));
    }
}

/// Sharing the pool with other processes (shared.rs): what is noted, how facts are taken.
#[cfg(test)]
mod sharing_tests {
    use super::tests::stat;
    use super::*;
    use crate::config::{example_settings, Settings};

    fn sharing(change: impl FnOnce(&mut Settings)) -> Engine {
        let mut settings = example_settings();
        change(&mut settings);
        let engine = Engine::new(settings.validate().unwrap(), Clock::manual(), Some(1));
        engine.share(None, None);
        engine
    }

    fn noted(engine: &Engine) -> Vec<(u64, Option<String>, Noted)> {
        engine
            .take_notes()
            .into_iter()
            .map(|note| (note.number, note.host.map(Into::into), note.noted))
            .collect()
    }

    const COOLDOWN: Duration = Duration::from_secs(300);

    #[test]
    fn alone_nothing_is_noted_and_a_healthy_attempt_notes_nothing_when_shared() {
        let alone = Engine::new(
            example_settings().validate().unwrap(),
            Clock::manual(),
            None,
        );
        alone.record(3, None, Event::Status(429)).unwrap();
        assert!(alone.take_notes().is_empty());

        let engine = sharing(|_| {});
        for _ in 0..100 {
            engine.record(3, None, Event::Status(200)).unwrap();
        }
        assert!(noted(&engine).is_empty());
    }

    #[test]
    fn a_counted_failure_an_ended_run_and_a_ban_are_noted() {
        let engine = sharing(|_| {});
        engine.record(3, None, Event::Status(429)).unwrap();
        engine.record(3, None, Event::Status(200)).unwrap();
        assert_eq!(
            noted(&engine),
            [(3, None, Noted::Failed), (3, None, Noted::Cleared)]
        );
        for _ in 0..5 {
            engine.record(4, None, Event::Status(503)).unwrap();
        }
        let notes = noted(&engine);
        assert_eq!(notes.len(), 6);
        assert_eq!(notes[5], (4, None, Noted::Banned(COOLDOWN)));
        // An attempt in flight when the session was benched counts in no run: not noted.
        engine.record(4, None, Event::Status(503)).unwrap();
        assert!(noted(&engine).is_empty());
    }

    #[test]
    fn a_run_counted_everywhere_blacklists_when_it_reaches_max_failures() {
        let engine = sharing(|_| {});
        assert_eq!(engine.take_fact(7, None, Fact::Run(3)), Ok(0));
        assert_eq!(engine.counts(), (20, 0));
        // Two more here make five in all.
        engine.record(7, None, Event::Status(429)).unwrap();
        assert_eq!(
            engine.record(7, None, Event::Status(429)),
            Ok(FAILED | BLACKLISTED)
        );
        assert_eq!(engine.counts(), (19, 1));

        assert_eq!(engine.take_fact(8, None, Fact::Run(5)), Ok(BLACKLISTED));
        assert_eq!(engine.counts(), (18, 2));
        let notes = noted(&engine);
        assert_eq!(notes.last(), Some(&(8, None, Noted::Banned(COOLDOWN))));
        // A shorter count than known changes nothing; neither does one for a cooling session.
        assert_eq!(engine.take_fact(9, None, Fact::Run(2)), Ok(0));
        assert_eq!(engine.take_fact(9, None, Fact::Run(1)), Ok(0));
        assert_eq!(engine.take_fact(8, None, Fact::Run(9)), Ok(0));
        // Cleared elsewhere: the run starts over.
        assert_eq!(engine.take_fact(9, None, Fact::Cleared), Ok(0));
        for _ in 0..4 {
            assert_eq!(engine.record(9, None, Event::Status(429)), Ok(FAILED));
        }
    }

    #[test]
    fn a_ban_from_elsewhere_is_honoured_for_the_time_it_has_left_and_not_noted_again() {
        let engine = sharing(|_| {});
        assert_eq!(
            engine.take_fact(2, None, Fact::Banned(Duration::from_secs(100))),
            Ok(BLACKLISTED)
        );
        assert!(noted(&engine).is_empty());
        assert_eq!(engine.counts(), (19, 1));
        assert_eq!(stat(&engine, "hex_proxy/shared/bans_taken"), 1);
        assert_eq!(stat(&engine, "hex_proxy/blacklisted"), 0);
        engine.advance(Duration::from_secs(99)).unwrap();
        assert_eq!(engine.counts(), (19, 1));
        engine.advance(Duration::from_secs(2)).unwrap();
        assert_eq!(engine.counts(), (20, 0));
        // Twice, or for no time left: nothing.
        engine
            .take_fact(2, None, Fact::Banned(Duration::from_secs(100)))
            .unwrap();
        assert_eq!(
            engine.take_fact(2, None, Fact::Banned(Duration::from_secs(100))),
            Ok(0)
        );
        assert_eq!(
            engine.take_fact(3, None, Fact::Banned(Duration::ZERO)),
            Ok(0)
        );
    }

    #[test]
    fn a_ban_from_elsewhere_keeps_the_cooling_order_and_never_outlasts_a_local_one() {
        let engine = sharing(|_| {});
        for _ in 0..5 {
            engine.record(1, None, Event::Status(503)).unwrap();
        }
        // Shorter than the local ban queued before it: rests as long as that one.
        engine
            .take_fact(2, None, Fact::Banned(Duration::from_secs(10)))
            .unwrap();
        // Longer than a ban made now would be (another machine's clock ahead): capped.
        engine
            .take_fact(3, None, Fact::Banned(Duration::from_secs(900)))
            .unwrap();
        assert_eq!(engine.counts(), (17, 3));
        engine.advance(COOLDOWN).unwrap();
        assert_eq!(engine.counts(), (20, 0));
    }

    #[test]
    fn rotate_mode_gives_a_slot_banned_elsewhere_a_new_id() {
        let engine = sharing(|s| s.on_blacklist = "rotate".into());
        assert_eq!(
            engine.take_fact(5, None, Fact::Banned(COOLDOWN)),
            Ok(BLACKLISTED | ROTATED)
        );
        assert_eq!(engine.counts(), (20, 0));
        // The old id is gone from this slot: facts about it change nothing.
        assert_eq!(engine.take_fact(5, None, Fact::Run(5)), Ok(0));
        let new = engine.successor(5).unwrap();
        assert_ne!(new.as_str(), "s005");
    }

    #[test]
    fn domain_scope_takes_facts_per_host() {
        let engine = sharing(|s| s.ban_scope = "domain".into());
        assert_eq!(
            engine.take_fact(4, Some("a.test"), Fact::Banned(COOLDOWN)),
            Ok(BLACKLISTED)
        );
        assert_eq!(engine.take_fact(4, Some("a.test"), Fact::Run(5)), Ok(0));
        assert_eq!(
            engine.take_fact(4, Some("b.test"), Fact::Run(5)),
            Ok(BLACKLISTED)
        );
        assert_eq!(
            noted(&engine),
            [(4, Some("b.test".into()), Noted::Banned(COOLDOWN))]
        );
        engine
            .record(6, Some("a.test"), Event::Status(429))
            .unwrap();
        assert_eq!(noted(&engine), [(6, Some("a.test".into()), Noted::Failed)]);
        assert_eq!(engine.next_live_in(Some("a.test")), Duration::ZERO);
        // One slot cooling for some host, two (slot, host) pairs.
        assert_eq!(engine.counts(), (19, 2));
    }

    #[test]
    fn each_sharing_process_numbers_its_rotated_ids_apart() {
        let ids = |nth: u64| {
            let mut settings = example_settings();
            settings.on_blacklist = "rotate".into();
            settings.max_failures = 1;
            let engine = Engine::new(settings.validate().unwrap(), Clock::manual(), Some(1));
            engine.share(Some(nth), None);
            let mut ids = Vec::new();
            for _ in 0..50 {
                let number = engine.pick(None, &[]).unwrap();
                engine.record(number, None, Event::Status(503)).unwrap();
                ids.push(engine.successor(number).unwrap().as_str().to_owned());
            }
            ids
        };
        let (first, second) = (ids(1), ids(2));
        assert!(first.iter().all(|id| !second.contains(id)));
    }
}
