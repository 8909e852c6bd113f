//! The attempt ledger: what a download attempt is, every way it can end, the rule that each
//! attempt is settled exactly once, and the one decision an outcome leads to (how it counts,
//! whether it blacklists, whether the request is retried and why).
//!
//! An attempt's token travels with its request (in `request.meta`, see `Record`), so whichever
//! middleware sees the outcome first settles it, in any order of the middlewares: the first
//! takes the token off; a later one finds none. Both hook classes and the exception path call
//! `Ledger::settle`; the binding only reads the outcome off Scrapy's objects and acts on the
//! decision (logging, building the retry request, waiting), which is what must be Python.

use crate::engine::{Engine, Event, BLACKLISTED, FAILED};
use crate::error::Error;
use crate::retry::{Cause, Decision};

/// An attempt as its token records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The session number it went out on (the slot's id at the time).
    pub number: u64,
    /// The request's `retry_times` when it was sent.
    pub retry_times: u32,
    /// Ban scope "domain": the target host it was sent to (it settles against that host
    /// whatever becomes of the request); `None` in session scope.
    pub host: Option<String>,
}

/// What became of an attempt, as read off Scrapy's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A response with this status; `cached`: from Scrapy's HTTP cache, so it never went
    /// through the session (nobody's outcome, but its status is retried as any other).
    Response { status: u16, cached: bool },
    /// A transport failure (connection, timeout, tunnel; class name `name`). `refused`: the
    /// status with which the proxy refused a CONNECT tunnel, when that is what it was.
    Transport { name: &'a str, refused: Option<u16> },
    /// The proxy's own address could not be reached (connection refused, DNS failure, a
    /// connect timeout; class name `name`): the attempt never got to the proxy. Through a
    /// gateway that is the gateway's outage, nobody's failure, and the request is sent again
    /// without spending a retry (promise 17); a listed proxy is the session itself, so there
    /// it is that session's transport failure.
    Unreachable { name: &'a str },
    /// Any other exception: a programming error, nobody's failure (unless a ban policy says
    /// it is a ban).
    Error,
    /// The outcome never reached us: a middleware above ours returned a new request. Its
    /// copy came back with a higher `retry_times` (a retry: it failed) or not (a redirect: it
    /// worked).
    Unobserved { retried: bool },
}

/// Who settles: `Proxy` (HexProxyMiddleware) counts and leaves a ban verdict for the retry
/// middleware; `Retry` (SmartRetryMiddleware) counts and decides the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Proxy,
    Retry,
}

/// The request's own say in its retry, read only when a retry is in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryMeta {
    /// `meta["dont_retry"]`.
    pub dont_retry: bool,
    /// `meta["hex_proxy"]` switches the middlewares off for it.
    pub switched_off: bool,
    /// `meta["retry_times"]` (0 when unset).
    pub retry_times: u32,
    /// `meta["max_retry_times"]`, which overrides `HEX_PROXY_MAX_RETRIES`.
    pub max_retry_times: Option<u32>,
}

/// Where an attempt's token and notes live between the middlewares: `request.meta` in the
/// binding, a plain struct in the tests.
pub trait Record {
    type Error;
    /// Takes the attempt's token off: `None` when it was settled already (or never went
    /// through a session).
    fn take_attempt(&mut self) -> Result<Option<Attempt>, Self::Error>;
    /// Takes off a ban verdict the proxy role left; whether there was one.
    fn take_ban_note(&mut self) -> Result<bool, Self::Error>;
    /// Leaves a ban verdict for the retry role (the proxy role saw the outcome first).
    fn leave_ban_note(&mut self) -> Result<(), Self::Error>;
    /// Notes that `slot` failed this request: its next attempt avoids it.
    fn note_failed(&mut self, slot: u32) -> Result<(), Self::Error>;
    fn retry_meta(&mut self) -> Result<RetryMeta, Self::Error>;
}

/// Why an attempt is retried (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why<'a> {
    Status(u16),
    /// A ban policy's ban; the response's status, if there was a response.
    Ban(Option<u16>),
    /// A transport failure, by class name.
    Transport(&'a str),
}

/// The attempt a call settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub number: u64,
    pub host: Option<String>,
    /// The engine's flags (`FAILED`, `BLACKLISTED`, `ROTATED`, `AUTH_FAILED`,
    /// `PROXY_REJECTED`): what the caller acts on (a WARNING, the stop).
    pub flags: u32,
    /// With `BLACKLISTED`: the reasons of the run that benched the session
    /// (`"429 ×3, DownloadTimeoutError ×2"`), if they were kept.
    pub reasons: Option<String>,
}

/// The one decision an outcome leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement<'a, E> {
    /// The attempt this call settled; `None` when another middleware did already, or the
    /// outcome is nobody's (cached, or a token of an earlier crawl).
    pub settled: Option<Settled>,
    /// The retry role's decision (`Pass` for the proxy role).
    pub retry: Decision,
    /// Why it is retried, when it is (or would be, out of retries).
    pub why: Option<Why<'a>>,
    /// The status the retry decision went by (for a `Retry-After`); `None` for a transport
    /// failure, or a ban on a status outside the retry codes.
    pub status: Option<u16>,
    /// The ban policy's own error (it raised, or answered junk): the attempt was counted by
    /// the default rules, and the error goes to the errback.
    pub policy_error: Option<E>,
    /// This call settled an attempt that never reached the gateway (`Outcome::Unreachable`):
    /// nobody is blamed, no retry is spent, and the caller sends the request again once the
    /// gateway answers.
    pub resend: bool,
}

impl<E> Settlement<'_, E> {
    fn pass(settled: Option<Settled>, policy_error: Option<E>) -> Self {
        Self {
            settled,
            retry: Decision::Pass,
            why: None,
            status: None,
            policy_error,
            resend: false,
        }
    }
}

/// The ban policy's verdict: `None` (the default rules decide), a ban, or not a ban; `Err`:
/// its own error.
pub type Verdict<E> = Result<Option<bool>, E>;

/// The ledger of one crawl: the engine it counts in.
pub struct Ledger<'e> {
    engine: &'e Engine,
}

impl<'e> Ledger<'e> {
    pub fn new(engine: &'e Engine) -> Self {
        Self { engine }
    }

    /// Settles the attempt `record` holds, if nobody did yet, and decides. `judge` is the ban
    /// policy (`None` without one): asked once, only for an attempt this call settles that
    /// went through a session (not a cached response, not an unobserved one).
    ///
    /// `read` reads the outcome off Scrapy's objects, only when needed: the proxy role finding
    /// the attempt settled already has nothing to read.
    pub fn settle<'a, R: Record>(
        &self,
        record: &mut R,
        read: impl FnOnce() -> Result<Outcome<'a>, R::Error>,
        role: Role,
        judge: Option<&mut dyn FnMut() -> Verdict<R::Error>>,
    ) -> Result<Settlement<'a, R::Error>, R::Error> {
        let policy = judge.is_some();
        let mut settled = None;
        let mut policy_error = None;
        let attempt = record.take_attempt()?;
        if attempt.is_none() && role == Role::Proxy {
            return Ok(Settlement::pass(None, None));
        }
        let outcome = match read()? {
            // A listed proxy is the session: its address is judged as any transport failure.
            Outcome::Unreachable { name } if !self.engine.has_gateway() => Outcome::Transport {
                name,
                refused: None,
            },
            outcome => outcome,
        };
        if let (Outcome::Unreachable { .. }, Some(_)) = (outcome, &attempt) {
            // The gateway's outage: nobody's outcome, not a ban policy's to judge, and
            // whichever role settles it resends the request.
            let mut settlement = Settlement::pass(None, None);
            settlement.resend = true;
            return Ok(settlement);
        }
        let banned = match attempt {
            // Settled already, by a middleware that may have left a ban verdict for us.
            None => policy && record.take_ban_note()?,
            Some(attempt) => {
                let verdict = match (outcome, judge) {
                    (Outcome::Response { cached: true, .. } | Outcome::Unobserved { .. }, _)
                    | (_, None) => None,
                    (_, Some(judge)) => match judge() {
                        Ok(verdict) => verdict,
                        Err(error) => {
                            policy_error = Some(error);
                            None
                        }
                    },
                };
                settled = self.count(record, attempt, outcome, verdict)?;
                let banned = verdict == Some(true);
                if banned && role == Role::Proxy {
                    record.leave_ban_note()?;
                }
                banned
            }
        };
        // The policy's error goes to the errback: nothing is retried.
        if role == Role::Proxy || policy_error.is_some() {
            return Ok(Settlement::pass(settled, policy_error));
        }
        let (retry, why, status) = self.decide(record, outcome, banned)?;
        Ok(Settlement {
            settled,
            retry,
            why,
            status,
            policy_error,
            resend: false,
        })
    }

    /// Settles an attempt whose outcome never reached us: a middleware above ours returned a
    /// new request (its copy now starts another attempt), or it came back from an earlier run.
    /// A copy with a higher `retry_times` means it failed; anything else (a redirect), that it
    /// worked.
    pub fn settle_unobserved<R: Record>(
        &self,
        record: &mut R,
    ) -> Result<Option<Settled>, R::Error> {
        let Some(attempt) = record.take_attempt()? else {
            return Ok(None);
        };
        let retried = record.retry_meta()?.retry_times > attempt.retry_times;
        self.count(record, attempt, Outcome::Unobserved { retried }, None)
    }

    /// Counts the attempt in the engine and notes a failed slot in the record.
    fn count<R: Record>(
        &self,
        record: &mut R,
        attempt: Attempt,
        outcome: Outcome<'_>,
        verdict: Option<bool>,
    ) -> Result<Option<Settled>, R::Error> {
        let event = match (outcome, verdict) {
            (Outcome::Response { cached: true, .. }, _) => return Ok(None),
            (Outcome::Unobserved { retried: true }, _) => Event::Exception("unobserved"),
            (Outcome::Unobserved { retried: false }, _) => Event::Success,
            (Outcome::Response { status, .. }, None) => Event::Status(status),
            (Outcome::Response { status, .. }, Some(ban)) => Event::Judged { status, ban },
            // Not held against the session. A refused tunnel is the proxy's answer, a
            // response judged not a ban (a 407 still counts against the credentials).
            (Outcome::Transport { refused: None, .. }, Some(false)) => return Ok(None),
            (
                Outcome::Transport {
                    refused: Some(status),
                    ..
                },
                Some(false),
            ) => Event::Judged { status, ban: false },
            (
                Outcome::Transport {
                    refused: None,
                    name,
                },
                _,
            ) => Event::Exception(name),
            (
                Outcome::Transport {
                    refused: Some(status),
                    ..
                },
                _,
            ) => Event::Refusal(status),
            (Outcome::Error, Some(true)) => Event::Ban,
            (Outcome::Error | Outcome::Unreachable { .. }, _) => return Ok(None),
        };
        let flags = match self
            .engine
            .record(attempt.number, attempt.host.as_deref(), event)
        {
            Ok(flags) => flags,
            // No session of this crawl: the token of an earlier one (a request resumed from
            // JOBDIR, with another pool size or rotated ids of another epoch). Nobody's.
            Err(Error::IndexOutOfRange { .. }) => return Ok(None),
            Err(_) => unreachable!("record fails only for a number of no session"),
        };
        if flags & FAILED != 0 {
            // The slot, whatever id it goes by: the next pick avoids it.
            let slot = self.engine.slot(attempt.number).expect("located above");
            record.note_failed(slot)?;
        }
        let reasons = if flags & BLACKLISTED != 0 {
            self.engine
                .blacklist_reasons(attempt.number, attempt.host.as_deref())
        } else {
            None
        };
        Ok(Some(Settled {
            number: attempt.number,
            host: attempt.host,
            flags,
            reasons,
        }))
    }

    /// The retry role's decision on an outcome (settled by this call or another), why, and
    /// the status it went by.
    fn decide<'a, R: Record>(
        &self,
        record: &mut R,
        outcome: Outcome<'a>,
        banned: bool,
    ) -> Result<(Decision, Option<Why<'a>>, Option<u16>), R::Error> {
        // A ban is retried whatever its status; a status in the retry codes keeps its own
        // rules (a 407 once the credentials failed). A refused CONNECT is a 407 like any other
        // when it was one; any other transport failure is always retryable.
        let (cause, why) = match outcome {
            Outcome::Response { status, .. } if banned => (
                if self.engine.may_retry(status) {
                    Cause::Status(status)
                } else {
                    Cause::Exception
                },
                Why::Ban(Some(status)),
            ),
            Outcome::Response { status, .. } if self.engine.may_retry(status) => {
                (Cause::Status(status), Why::Status(status))
            }
            Outcome::Transport { name, refused } => (
                match refused {
                    Some(407) => Cause::Status(407),
                    _ => Cause::Exception,
                },
                if banned {
                    Why::Ban(None)
                } else {
                    Why::Transport(name)
                },
            ),
            Outcome::Error if banned => (Cause::Exception, Why::Ban(None)),
            _ => return Ok((Decision::Pass, None, None)),
        };
        let meta = record.retry_meta()?;
        if meta.dont_retry || meta.switched_off {
            return Ok((Decision::Pass, None, None));
        }
        let decision = self
            .engine
            .decide_retry(cause, meta.retry_times, meta.max_retry_times);
        if decision == Decision::Pass {
            return Ok((decision, None, None));
        }
        let status = match cause {
            Cause::Status(status) => Some(status),
            Cause::Exception => None,
        };
        Ok((decision, Some(why), status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::example_settings;
    use crate::engine::AUTH_FAILED;

    /// `request.meta` as the ledger sees it.
    #[derive(Debug, Default, Clone)]
    struct Meta {
        attempt: Option<Attempt>,
        ban_note: bool,
        failed: Vec<u32>,
        retry: RetryMeta,
    }

    impl Record for Meta {
        type Error = &'static str;
        fn take_attempt(&mut self) -> Result<Option<Attempt>, Self::Error> {
            Ok(self.attempt.take())
        }
        fn take_ban_note(&mut self) -> Result<bool, Self::Error> {
            Ok(std::mem::take(&mut self.ban_note))
        }
        fn leave_ban_note(&mut self) -> Result<(), Self::Error> {
            self.ban_note = true;
            Ok(())
        }
        fn note_failed(&mut self, slot: u32) -> Result<(), Self::Error> {
            if !self.failed.contains(&slot) {
                self.failed.push(slot);
            }
            Ok(())
        }
        fn retry_meta(&mut self) -> Result<RetryMeta, Self::Error> {
            Ok(self.retry)
        }
    }

    fn engine() -> Engine {
        let mut settings = example_settings();
        settings.max_failures = 2;
        Engine::new(settings.validate().unwrap(), Clock::manual(), Some(1))
    }

    fn sent_on(number: u64) -> Meta {
        Meta {
            attempt: Some(Attempt {
                number,
                retry_times: 0,
                host: None,
            }),
            ..Meta::default()
        }
    }

    fn stat(engine: &Engine, key: &str) -> u64 {
        engine
            .stats_snapshot()
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, v)| v)
    }

    /// Every outcome, and the failure stat it counts under when it is one.
    fn outcomes() -> Vec<(Outcome<'static>, Option<&'static str>)> {
        vec![
            (
                Outcome::Response {
                    status: 200,
                    cached: false,
                },
                None,
            ),
            (
                Outcome::Response {
                    status: 404,
                    cached: false,
                },
                None,
            ),
            (
                Outcome::Response {
                    status: 503,
                    cached: false,
                },
                Some("hex_proxy/failure/503"),
            ),
            (
                Outcome::Response {
                    status: 429,
                    cached: false,
                },
                Some("hex_proxy/failure/429"),
            ),
            (
                Outcome::Response {
                    status: 503,
                    cached: true,
                },
                None,
            ),
            (
                Outcome::Transport {
                    name: "TimeoutError",
                    refused: None,
                },
                Some("hex_proxy/failure/TimeoutError"),
            ),
            (
                Outcome::Transport {
                    name: "TunnelError",
                    refused: Some(403),
                },
                Some("hex_proxy/failure/403"),
            ),
            (Outcome::Error, None),
            (
                Outcome::Unobserved { retried: true },
                Some("hex_proxy/failure/unobserved"),
            ),
            (Outcome::Unobserved { retried: false }, None),
        ]
    }

    #[test]
    fn an_unreachable_gateway_is_nobodys_failure_and_is_resent_by_whoever_settles_it() {
        let unreachable = Outcome::Unreachable {
            name: "ConnectionRefusedError",
        };
        for order in [[Role::Proxy, Role::Retry], [Role::Retry, Role::Proxy]] {
            let engine = engine();
            let ledger = Ledger::new(&engine);
            let mut meta = sent_on(3);
            meta.retry.retry_times = 2;
            let first = ledger
                .settle(&mut meta, || Ok(unreachable), order[0], None)
                .unwrap();
            assert!(first.resend, "{order:?}");
            assert_eq!(first.settled, None);
            assert_eq!((first.retry, first.why), (Decision::Pass, None));
            assert_eq!(meta.attempt, None, "settled: the token is gone");
            let second = ledger
                .settle(&mut meta, || Ok(unreachable), order[1], None)
                .unwrap();
            assert!(!second.resend, "resent once, by the first");
            assert_eq!((second.retry, second.why), (Decision::Pass, None));
            assert!(meta.failed.is_empty(), "no session to avoid: none failed");
            assert!(engine.stats_snapshot().iter().all(|(key, _)| {
                !key.starts_with("hex_proxy/failure/") && !key.starts_with("hex_proxy/retry")
            }));
        }
        // The ban policy is not asked: an outage is nobody's verdict to give.
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let mut asked = false;
        let mut judge = || -> Verdict<&'static str> {
            asked = true;
            Ok(Some(true))
        };
        let settlement = ledger
            .settle(
                &mut sent_on(1),
                || Ok(unreachable),
                Role::Retry,
                Some(&mut judge),
            )
            .unwrap();
        assert!(settlement.resend && !asked);
    }

    #[test]
    fn an_unreachable_listed_proxy_is_that_sessions_transport_failure() {
        let mut settings = example_settings();
        settings.proxies = Some(vec![
            ("HEX_PROXY_LIST item 1".into(), "http://127.0.0.1:1".into()),
            ("HEX_PROXY_LIST item 2".into(), "http://127.0.0.1:2".into()),
        ]);
        settings.pool_size = 2;
        let engine = Engine::new(settings.validate().unwrap(), Clock::manual(), Some(1));
        assert!(!engine.has_gateway());
        engine.set_gateway_down(true);
        assert!(!engine.gateway_down(), "a list has no crawl-wide outage");
        let ledger = Ledger::new(&engine);
        let mut meta = sent_on(1);
        let unreachable = Outcome::Unreachable {
            name: "ConnectionRefusedError",
        };
        let settlement = ledger
            .settle(&mut meta, || Ok(unreachable), Role::Retry, None)
            .unwrap();
        assert!(!settlement.resend);
        assert_eq!(settlement.retry, Decision::Retry);
        assert_eq!(
            settlement.why,
            Some(Why::Transport("ConnectionRefusedError"))
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/ConnectionRefusedError"), 1);
        assert_eq!(meta.failed, [1]);
    }

    #[test]
    fn every_outcome_is_settled_once_in_either_order() {
        for (outcome, failure) in outcomes() {
            for order in [[Role::Proxy, Role::Retry], [Role::Retry, Role::Proxy]] {
                let engine = engine();
                let ledger = Ledger::new(&engine);
                let mut meta = sent_on(3);
                let first = ledger
                    .settle(&mut meta, || Ok(outcome), order[0], None)
                    .unwrap();
                let second = ledger
                    .settle(&mut meta, || Ok(outcome), order[1], None)
                    .unwrap();
                // A cached response and a programming error are nobody's outcome.
                let nobodys = matches!(
                    outcome,
                    Outcome::Response { cached: true, .. } | Outcome::Error
                );
                assert_eq!(first.settled.is_some(), !nobodys, "{outcome:?}");
                assert_eq!(meta.attempt, None, "the token is gone after the first");
                assert_eq!(second.settled, None, "{outcome:?} {order:?}");
                let failures: u64 = engine
                    .stats_snapshot()
                    .iter()
                    .filter(|(k, _)| k.starts_with("hex_proxy/failure/"))
                    .map(|(_, v)| v)
                    .sum();
                assert_eq!(
                    failures,
                    u64::from(failure.is_some()),
                    "{outcome:?} {order:?}"
                );
                if let Some(key) = failure {
                    assert_eq!(stat(&engine, key), 1, "{outcome:?}");
                    assert_eq!(meta.failed, [3], "the failed slot is noted once");
                } else {
                    assert!(meta.failed.is_empty());
                }
            }
        }
    }

    #[test]
    fn the_retry_decision_is_the_same_whichever_role_settled() {
        for (outcome, _) in outcomes() {
            let mut decisions = Vec::new();
            for order in [[Role::Proxy, Role::Retry], [Role::Retry, Role::Proxy]] {
                let engine = engine();
                let ledger = Ledger::new(&engine);
                let mut meta = sent_on(1);
                let a = ledger
                    .settle(&mut meta, || Ok(outcome), order[0], None)
                    .unwrap();
                let b = ledger
                    .settle(&mut meta, || Ok(outcome), order[1], None)
                    .unwrap();
                let retry = if order[0] == Role::Retry { a } else { b };
                decisions.push((retry.retry, retry.why));
            }
            assert_eq!(decisions[0], decisions[1], "{outcome:?}");
        }
    }

    #[test]
    fn a_settled_attempt_is_never_counted_again_whatever_comes_later() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let mut meta = sent_on(0);
        let outcome = Outcome::Response {
            status: 503,
            cached: false,
        };
        ledger
            .settle(&mut meta, || Ok(outcome), Role::Retry, None)
            .unwrap();
        for later in outcomes() {
            for role in [Role::Proxy, Role::Retry] {
                let again = ledger
                    .settle(&mut meta, || Ok(later.0), role, None)
                    .unwrap();
                assert_eq!(again.settled, None);
            }
        }
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 1);
    }

    #[test]
    fn retries_follow_the_codes_dont_retry_the_switch_and_max_retry_times() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let decide = |outcome, retry: RetryMeta| {
            let mut meta = Meta {
                retry,
                ..sent_on(5)
            };
            let settlement = ledger
                .settle(&mut meta, || Ok(outcome), Role::Retry, None)
                .unwrap();
            (settlement.retry, settlement.why)
        };
        let status = |status| Outcome::Response {
            status,
            cached: false,
        };
        let none = RetryMeta::default();
        assert_eq!(decide(status(200), none), (Decision::Pass, None));
        assert_eq!(decide(status(501), none), (Decision::Pass, None));
        assert_eq!(
            decide(status(503), none),
            (Decision::Retry, Some(Why::Status(503)))
        );
        let timeout = Outcome::Transport {
            name: "TimeoutError",
            refused: None,
        };
        assert_eq!(
            decide(timeout, none),
            (Decision::Retry, Some(Why::Transport("TimeoutError")))
        );
        assert_eq!(decide(Outcome::Error, none), (Decision::Pass, None));
        let cached = Outcome::Response {
            status: 503,
            cached: true,
        };
        assert_eq!(
            decide(cached, none),
            (Decision::Retry, Some(Why::Status(503))),
            "a cached status is retried as any other, though nobody's failure"
        );
        let dont = RetryMeta {
            dont_retry: true,
            ..none
        };
        assert_eq!(decide(status(503), dont), (Decision::Pass, None));
        let off = RetryMeta {
            switched_off: true,
            ..none
        };
        assert_eq!(decide(timeout, off), (Decision::Pass, None));
        let last = RetryMeta {
            retry_times: 4,
            ..none
        };
        assert_eq!(
            decide(status(503), last),
            (Decision::GiveUp, Some(Why::Status(503)))
        );
        let more = RetryMeta {
            max_retry_times: Some(9),
            ..last
        };
        assert_eq!(decide(status(503), more).0, Decision::Retry);
    }

    #[test]
    fn a_ban_verdict_counts_and_is_retried_whatever_the_order() {
        for order in [[Role::Proxy, Role::Retry], [Role::Retry, Role::Proxy]] {
            let engine = engine();
            let ledger = Ledger::new(&engine);
            let mut meta = sent_on(2);
            let mut asked = 0;
            let mut policy = || {
                asked += 1;
                Ok(Some(true))
            };
            let outcome = Outcome::Response {
                status: 200,
                cached: false,
            };
            let a = ledger
                .settle(&mut meta, || Ok(outcome), order[0], Some(&mut policy))
                .unwrap();
            let b = ledger
                .settle(&mut meta, || Ok(outcome), order[1], Some(&mut policy))
                .unwrap();
            assert_eq!(asked, 1, "the policy judges an attempt once");
            let retry = if order[0] == Role::Retry { a } else { b };
            assert_eq!(retry.retry, Decision::Retry);
            assert_eq!(retry.why, Some(Why::Ban(Some(200))));
            assert!(!meta.ban_note, "the retry role took the note");
            assert_eq!(stat(&engine, "hex_proxy/failure/ban"), 1);
        }
    }

    #[test]
    fn not_a_ban_spares_the_session_but_keeps_the_retry_codes() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let mut meta = sent_on(2);
        let mut policy = || Ok(Some(false));
        let outcome = Outcome::Response {
            status: 503,
            cached: false,
        };
        let settlement = ledger
            .settle(&mut meta, || Ok(outcome), Role::Retry, Some(&mut policy))
            .unwrap();
        assert_eq!(settlement.settled.unwrap().flags, 0);
        assert_eq!(settlement.retry, Decision::Retry);
        let mut meta = sent_on(2);
        let refused = Outcome::Transport {
            name: "TunnelError",
            refused: None,
        };
        let settlement = ledger
            .settle(&mut meta, || Ok(refused), Role::Retry, Some(&mut policy))
            .unwrap();
        assert_eq!(
            settlement.settled, None,
            "a transport failure not held against it"
        );
        assert_eq!(settlement.retry, Decision::Retry, "still retried");
        let mut meta = sent_on(2);
        let settlement = ledger
            .settle(
                &mut meta,
                || Ok(Outcome::Error),
                Role::Retry,
                Some(&mut || Ok(Some(true))),
            )
            .unwrap();
        assert_eq!(
            settlement.retry,
            Decision::Retry,
            "an error called a ban is retried"
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 0);
    }

    #[test]
    fn a_policy_error_counts_by_the_default_rules_and_is_handed_back() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let mut meta = sent_on(1);
        let mut policy = || Err("boom");
        let outcome = Outcome::Response {
            status: 429,
            cached: false,
        };
        let settlement = ledger
            .settle(&mut meta, || Ok(outcome), Role::Proxy, Some(&mut policy))
            .unwrap();
        assert_eq!(settlement.policy_error, Some("boom"));
        assert_eq!(settlement.settled.unwrap().flags & FAILED, FAILED);
        assert_eq!(stat(&engine, "hex_proxy/failure/429"), 1);
        let mut meta = sent_on(1);
        let settlement = ledger
            .settle(&mut meta, || Ok(outcome), Role::Retry, Some(&mut policy))
            .unwrap();
        assert_eq!(
            settlement.retry,
            Decision::Pass,
            "the error goes to the errback"
        );
        assert_eq!(stat(&engine, "hex_proxy/retry"), 0);
    }

    #[test]
    fn the_policy_is_not_asked_for_cached_or_unobserved_outcomes() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let cached = Outcome::Response {
            status: 503,
            cached: true,
        };
        for outcome in [cached, Outcome::Unobserved { retried: true }] {
            let mut meta = sent_on(1);
            let mut policy = || -> Verdict<&'static str> { panic!("asked") };
            ledger
                .settle(&mut meta, || Ok(outcome), Role::Proxy, Some(&mut policy))
                .unwrap();
        }
    }

    #[test]
    fn blacklisting_and_bad_credentials_come_back_as_flags() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let outcome = Outcome::Response {
            status: 503,
            cached: false,
        };
        ledger
            .settle(&mut sent_on(4), || Ok(outcome), Role::Retry, None)
            .unwrap();
        let second = ledger
            .settle(&mut sent_on(4), || Ok(outcome), Role::Retry, None)
            .unwrap();
        let benched = second.settled.unwrap();
        assert_eq!(benched.flags, FAILED | BLACKLISTED);
        assert_eq!(benched.reasons.as_deref(), Some("503 \u{d7}2"));
        let refused = Outcome::Transport {
            name: "TunnelError",
            refused: Some(407),
        };
        let mut flags = 0;
        for number in [5, 6, 7] {
            let settlement = ledger
                .settle(&mut sent_on(number), || Ok(refused), Role::Retry, None)
                .unwrap();
            flags |= settlement.settled.unwrap().flags;
        }
        assert_eq!(flags & AUTH_FAILED, AUTH_FAILED);
        // Once the credentials failed, a 407 is not retried.
        let last = ledger
            .settle(&mut sent_on(8), || Ok(refused), Role::Retry, None)
            .unwrap();
        assert_eq!(last.retry, Decision::Pass);
    }

    #[test]
    fn a_token_of_no_session_of_this_crawl_is_nobodys() {
        let engine = engine();
        let ledger = Ledger::new(&engine);
        let mut meta = sent_on(1_000_000);
        let outcome = Outcome::Response {
            status: 503,
            cached: false,
        };
        let settlement = ledger
            .settle(&mut meta, || Ok(outcome), Role::Retry, None)
            .unwrap();
        assert_eq!(settlement.settled, None);
        assert_eq!(
            settlement.retry,
            Decision::Retry,
            "still retried on a session of ours"
        );
        assert_eq!(stat(&engine, "hex_proxy/failure/503"), 0);
    }
}
