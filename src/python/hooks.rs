//! The hooks Scrapy calls on every request, response and download exception, in Rust so that
//! the per-request path runs no Python frame of ours. They read the outcome off Scrapy's
//! objects (through the wall, `scrapy.rs`), hand it to the ledger (`ledger.rs`), which settles
//! and decides, and act on the decision. The public middlewares (`middlewares.py`) subclass
//! these; what must be Python is called back on the runtime, which the subclass keeps in
//! `self._runtime`: a WARNING or the stop (`report`), a retry request to build (`_retry`), a
//! wait for a session (`wait_and_assign`, `wait_until_due`), the user's ban policy. Kept
//! there, not here, the garbage collector sees the references (the runtime refers back to the
//! crawler, which refers to the middlewares).

use std::borrow::Cow;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyString, PyTuple};

use crate::engine::{AUTH_FAILED, BLACKLISTED, PROXY_REJECTED, ROTATED};
use crate::ledger::{Ledger, Outcome, Role, Settled, Settlement, Verdict, Why};
use crate::retry::Decision;
use crate::scope::{host_of, BanScope};

use super::attempt::{
    self, switched_off, take_flag, MetaRecord, ATTEMPT, BAN, FAILED, NOT_BEFORE, SESSION,
};
use super::core::Core;
use super::identity::{self, UserAgents};
use super::route::{self, Route};
use super::scrapy::Scrapy;

/// The flags the runtime acts on (a WARNING, an ERROR, the stop); `FAILED` is the ledger's.
const REPORTED: u32 = BLACKLISTED | ROTATED | PROXY_REJECTED | AUTH_FAILED;

/// What both hook classes of a crawl share, made once by the runtime (`runtime.hooks`): the
/// core, the route, the wall, and the switches `assign` reads. Nothing here refers back to
/// Python objects that could form a cycle.
#[pyclass(frozen, module = "scrapy_hexproxy._core")]
pub struct HookState {
    core: Py<Core>,
    route: Route,
    scrapy: Scrapy,
    /// `Proxy-Authorization`, as `Headers` normalises it.
    header_name: Py<PyBytes>,
    /// Retry pacing is on: a request may carry a time before which it must not be sent.
    paced: bool,
    /// `HEX_PROXY_BIND_COOKIEJAR`: each session id is its own cookie jar.
    bind_cookiejar: bool,
    /// `HEX_PROXY_USER_AGENTS`, if set.
    user_agents: Option<UserAgents>,
    /// Ban scope "domain": attempts are picked for, and settled against, their target host.
    domain: bool,
    /// Whether a ban policy judges each settled attempt (`HEX_PROXY_BAN_POLICY`). The policy
    /// itself stays with the runtime, where the garbage collector sees it.
    ban_policy: bool,
    /// scrapy-playwright's handler serves http or https: an attempt with `meta["playwright"]`
    /// goes out in its session's browser context (`_playwright.py`), never with our header.
    playwright: bool,
}

#[pymethods]
impl HookState {
    /// Reads the runtime's `core`, `probes`, `proxy_url`, `bind_cookiejar`, `user_agents`,
    /// `default_user_agent` and `ban_policy`.
    #[new]
    fn new(runtime: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = runtime.py();
        let core = runtime.getattr("core")?.cast_into::<Core>()?;
        let engine = core.get().engine();
        let scrapy = Scrapy::new(&runtime.getattr("probes")?)?;
        let bind_cookiejar: bool = runtime.getattr("bind_cookiejar")?.extract()?;
        Ok(Self {
            paced: engine.paced(),
            domain: engine.ban_scope() == BanScope::Domain,
            route: Route::new(
                py,
                engine,
                &scrapy,
                &runtime.getattr("proxy_url")?,
                bind_cookiejar,
            )?,
            scrapy,
            header_name: PyBytes::new(py, b"Proxy-Authorization").unbind(),
            bind_cookiejar,
            user_agents: UserAgents::new(runtime)?,
            ban_policy: !runtime.getattr("ban_policy")?.is_none(),
            playwright: runtime.getattr("playwright")?.extract()?,
            core: core.unbind(),
        })
    }
}

impl HookState {
    /// The request's target host in ban scope "domain"; `None` in session scope, which reads
    /// nothing.
    fn target_host(&self, request: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        if !self.domain {
            return Ok(None);
        }
        let url = request.getattr(intern!(request.py(), "url"))?;
        Ok(Some(
            host_of(&url.cast::<PyString>()?.to_cow()?).into_owned(),
        ))
    }

    /// Picks a session for this attempt, avoiding those that failed the request, and sends it
    /// through it; false when none is live.
    fn pick_and_assign(
        &self,
        owner: &Bound<'_, PyAny>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
        host: Option<&str>,
    ) -> PyResult<bool> {
        let py = owner.py();
        let engine = self.core.get().engine();
        let picked = match meta.get_item(intern!(py, FAILED))? {
            None => engine.pick(host, &[]),
            Some(failed) => engine.pick(host, &failed.extract::<Vec<u32>>()?),
        };
        let Some(number) = picked else {
            return Ok(false);
        };
        self.assign(owner, request, meta, number, host)?;
        // Domain scope: this pick gave a slot a new id and so ended a ban early; the requests
        // waiting for that host may go.
        if self.domain && engine.take_released() {
            runtime_of(owner)?.call_method0(intern!(py, "wake"))?;
        }
        Ok(true)
    }

    /// Sends this attempt through session `number` (as the engine's pick returns it): the
    /// proxy and session in meta, the session's credentials in the `Proxy-Authorization`
    /// header (none for a listed proxy without credentials); when switched on, its cookie jar
    /// and its User-Agent; the attempt's token. `host`: the target host (domain scope).
    fn assign(
        &self,
        owner: &Bound<'_, PyAny>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
        number: u64,
        host: Option<&str>,
    ) -> PyResult<()> {
        let py = owner.py();
        let engine = self.core.get().engine();
        let retry_times = meta.get_item(intern!(py, "retry_times"))?;
        let sent = self.route.sent(py, engine, number)?;
        let mut header = sent.header;
        let key = self.scrapy.auth_proxy_key(py);
        if self.route.is_list() {
            if !route::note_auth_proxy(meta, key, &sent.url, header.is_some())? {
                // Not this proxy's header: the previous attempt's proxy's, if any.
                self.scrapy
                    .headers(request)?
                    .remove(self.header_name.bind(py))?;
                header = None;
            }
        } else if let Some(key) = key {
            // HttpProxyMiddleware's note of another run's gateway (a request resumed from
            // JOBDIR, pickled by an older version): it would drop this header.
            if meta.contains(key)? {
                meta.del_item(key)?;
            }
        }
        meta.set_item(intern!(py, "proxy"), &sent.url)?;
        if self.bind_cookiejar {
            identity::bind_cookiejar(meta, &sent.id)?;
        }
        meta.set_item(intern!(py, SESSION), &sent.id)?;
        meta.set_item(
            intern!(py, ATTEMPT),
            attempt::token(py, number, retry_times, host)?,
        )?;
        if self.playwright && is_playwright(meta)? {
            // The browser ignores meta["proxy"] and would copy the header onto its request to
            // the site: the session's credentials go into its browser context instead.
            runtime_of(owner)?.call_method1(
                intern!(py, "browser_context"),
                (meta, number, &sent.url, &sent.id, header.take()),
            )?;
            if let Some(headers) = self.scrapy.existing_headers(request)? {
                headers.remove(self.header_name.bind(py))?;
            }
        }
        if header.is_none() && self.user_agents.is_none() {
            return Ok(());
        }
        let headers = self.scrapy.headers(request)?;
        if let Some(header) = header {
            headers.set(self.header_name.bind(py), &header)?;
        }
        if let Some(user_agents) = &self.user_agents {
            user_agents.present(&headers, py, number)?;
        }
        Ok(())
    }

    /// A request switched off (`meta["hex_proxy"] = False`) that an earlier attempt of ours
    /// went out on (a copy): count that attempt if its outcome never reached us, and take off
    /// what `assign` put on it (session, our proxy URL, the credentials header, a cookie jar
    /// and User-Agent of ours, our private keys), so it goes out as if we had never seen it.
    fn leave_alone(
        &self,
        owner: &Bound<'_, PyAny>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let py = owner.py();
        self.settle_unobserved(owner, request, meta)?;
        if self.bind_cookiejar {
            identity::unbind_cookiejar(meta)?;
        }
        for key in [
            intern!(py, SESSION),
            intern!(py, FAILED),
            intern!(py, BAN),
            intern!(py, NOT_BEFORE),
        ] {
            take_flag(meta, key)?;
        }
        let proxy = intern!(py, "proxy");
        if let Some(url) = meta.get_item(proxy)? {
            if self.route.is_ours(&url)? {
                meta.del_item(proxy)?;
            }
        }
        let headers = self.scrapy.headers(request)?;
        headers.remove(self.header_name.bind(py))?;
        if let Some(user_agents) = &self.user_agents {
            user_agents.remove(&headers, py)?;
        }
        Ok(())
    }

    /// Takes our `Proxy-Authorization` off a request whose attempt is over, and the note
    /// Scrapy's HttpProxyMiddleware keeps of it: the credentials exist on a request only
    /// between `process_request` and the download handler, never on one that reaches the
    /// scheduler (JOBDIR, Redis), the spider, or a cache. A request that went through us has
    /// `hex_session`; the header of a request we left alone is the user's.
    fn forget_credentials(
        &self,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        if !meta.contains(intern!(request.py(), SESSION))? {
            return Ok(());
        }
        self.take_header(request, meta)
    }

    /// `forget_credentials` for a request known to have gone through us.
    fn take_header(&self, request: &Bound<'_, PyAny>, meta: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = request.py();
        if self.playwright {
            forget_browser_proxy(meta)?;
        }
        let Some(headers) = self.scrapy.existing_headers(request)? else {
            return Ok(());
        };
        let name = self.header_name.bind(py);
        if !headers.contains(name)? {
            return Ok(());
        }
        headers.delete(name)?;
        if let Some(key) = self.scrapy.auth_proxy_key(py) {
            if meta.contains(key)? {
                meta.del_item(key)?;
            }
        }
        Ok(())
    }

    /// The previous attempt's outcome never reached us (a middleware above ours returned a
    /// new request, or the request came back from an earlier crawl): settle it now.
    fn settle_unobserved(
        &self,
        owner: &Bound<'_, PyAny>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let ledger = Ledger::new(self.core.get().engine());
        let settled = ledger.settle_unobserved(&mut MetaRecord { meta })?;
        report(owner, request, settled.as_ref())
    }

    /// Settles the outcome that `read` reads (only if needed) and decides, asking the ban
    /// policy through `judge` (its runtime method, with `arg` the response or exception).
    fn settle<'a>(
        &self,
        owner: &Bound<'_, PyAny>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
        read: impl FnOnce() -> PyResult<Outcome<'a>>,
        role: Role,
        judge: (&'static str, &Bound<'_, PyAny>),
    ) -> PyResult<Settlement<'a, PyErr>> {
        // The call that settles the attempt takes its credentials off; a later one finds the
        // token, and the header, gone.
        if meta.contains(intern!(owner.py(), ATTEMPT))? {
            self.take_header(request, meta)?;
        }
        let ledger = Ledger::new(self.core.get().engine());
        let mut record = MetaRecord { meta };
        let (method, arg) = judge;
        let mut policy = || verdict(owner, method, request, arg);
        let judge: Option<&mut dyn FnMut() -> Verdict<PyErr>> = if self.ban_policy {
            Some(&mut policy)
        } else {
            None
        };
        let settlement = ledger.settle(&mut record, read, role, judge)?;
        report(owner, request, settlement.settled.as_ref())?;
        Ok(settlement)
    }

    fn response_outcome(&self, response: &Bound<'_, PyAny>) -> PyResult<Outcome<'static>> {
        Ok(Outcome::Response {
            status: self.scrapy.status(response)?,
            cached: self.scrapy.cached(response)?,
        })
    }
}

/// Whether scrapy-playwright downloads this request (it reads `meta["playwright"]` as a truth
/// value).
fn is_playwright(meta: &Bound<'_, PyDict>) -> PyResult<bool> {
    match meta.get_item(intern!(meta.py(), "playwright"))? {
        Some(flag) => flag.is_truthy(),
        None => Ok(false),
    }
}

/// Takes the session's proxy, with its password, off the browser context kwargs that
/// `browser_context` gave a Playwright attempt (the user's own kwargs stay).
fn forget_browser_proxy(meta: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = meta.py();
    let Some(kwargs) = meta.get_item(intern!(py, "playwright_context_kwargs"))? else {
        return Ok(());
    };
    if let Ok(kwargs) = kwargs.cast::<PyDict>() {
        let proxy = intern!(py, "proxy");
        if kwargs.contains(proxy)? {
            kwargs.del_item(proxy)?;
        }
    }
    Ok(())
}

/// The runtime acts on what the engine flagged: a WARNING for a blacklisted session, an ERROR
/// for a proxy or gateway that rejected the credentials, the stop.
fn report(
    owner: &Bound<'_, PyAny>,
    request: &Bound<'_, PyAny>,
    settled: Option<&Settled>,
) -> PyResult<()> {
    let Some(settled) = settled.filter(|settled| settled.flags & REPORTED != 0) else {
        return Ok(());
    };
    let py = owner.py();
    runtime_of(owner)?.call_method1(
        intern!(py, "report"),
        (
            request,
            settled.number,
            settled.flags,
            settled.host.as_deref(),
            settled.reasons.as_deref(),
        ),
    )?;
    Ok(())
}

/// The ban policy's verdict: `None` (the default rules) or a bool; anything else is the
/// policy's programming error, raised as the runtime's TypeError naming the setting and the
/// method.
fn verdict(
    owner: &Bound<'_, PyAny>,
    method: &'static str,
    request: &Bound<'_, PyAny>,
    arg: &Bound<'_, PyAny>,
) -> Verdict<PyErr> {
    let runtime = runtime_of(owner)?;
    let answer = runtime
        .getattr(PyString::intern(owner.py(), method))?
        .call1((request, arg))?;
    if answer.is_none() {
        return Ok(None);
    }
    if let Ok(ban) = answer.cast::<PyBool>() {
        return Ok(Some(ban.is_true()));
    }
    let error = runtime.call_method1(intern!(owner.py(), "bad_verdict"), (method, answer))?;
    Err(PyErr::from_value(error))
}

fn runtime_of<'py>(owner: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    owner.getattr(intern!(owner.py(), "_runtime"))
}

/// The state a hook class reads: the runtime's.
fn state_of(runtime: &Bound<'_, PyAny>) -> PyResult<Py<HookState>> {
    Ok(runtime
        .getattr(intern!(runtime.py(), "hooks"))?
        .cast_into::<HookState>()?
        .unbind())
}

/// What an exception is to the ledger; `name` keeps the class name it borrows.
fn exception_outcome<'a>(
    state: &HookState,
    exception: &Bound<'_, PyAny>,
    name: &'a mut String,
) -> PyResult<Outcome<'a>> {
    Ok(match state.scrapy.transport_failure(exception)? {
        None => Outcome::Error,
        Some((class, _, true)) => {
            *name = class;
            Outcome::Unreachable { name }
        }
        Some((class, refused, false)) => {
            *name = class;
            Outcome::Transport { name, refused }
        }
    })
}

/// The per-request hooks of `HexProxyMiddleware`.
#[pyclass(subclass, frozen, module = "scrapy_hexproxy._core")]
pub struct ProxyHooks {
    state: Py<HookState>,
}

#[pymethods]
impl ProxyHooks {
    /// Takes the runtime; further arguments are left to a subclass's `__init__`.
    #[new]
    #[pyo3(signature = (runtime, *_args, **_kwargs))]
    fn new(
        runtime: &Bound<'_, PyAny>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        Ok(Self {
            state: state_of(runtime)?,
        })
    }

    /// Gives the attempt a session; when none is live, returns the coroutine that waits for one.
    #[pyo3(signature = (request, spider = None))]
    fn process_request<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let _ = spider;
        let py = slf.py();
        let state = slf.get().state.get();
        let owner = slf.as_any();
        let meta = state.scrapy.meta(request)?;
        if switched_off(&meta)? {
            // Left alone; only what an earlier attempt of ours put on it is taken off.
            if meta.contains(intern!(py, SESSION))? || meta.contains(intern!(py, ATTEMPT))? {
                state.leave_alone(owner, request, &meta)?;
            }
            return Ok(None);
        }
        if meta.contains(intern!(py, ATTEMPT))? {
            state.settle_unobserved(owner, request, &meta)?;
        }
        if state.ban_policy {
            // A verdict no retry middleware took (HexProxy alone, or a redirect in between)
            // belongs to the attempt before.
            take_flag(&meta, intern!(py, BAN))?;
        }
        // A paced retry normally waits out of the downloader and arrives here due, without the
        // key (the runtime's request_scheduled handler); one that bypassed the scheduler
        // (`engine.download()`) still has it and waits here.
        if state.paced && meta.contains(intern!(py, NOT_BEFORE))? {
            return Ok(Some(
                runtime_of(owner)?.call_method1(intern!(py, "wait_until_due"), (request, slf))?,
            ));
        }
        if state.core.get().engine().gateway_down() {
            // Promise 17: nothing goes out while the gateway cannot be reached; the runtime
            // holds the request (out of the downloader) until a probe finds it again.
            return Ok(Some(
                runtime_of(owner)?.call_method1(intern!(py, "hold_for_gateway"), (request, slf))?,
            ));
        }
        let host = state.target_host(request)?;
        if state.pick_and_assign(owner, request, &meta, host.as_deref())? {
            return Ok(None);
        }
        // Every session is cooling (for this host, in domain scope), or the credentials were
        // rejected: wait for one, then `try_assign` again.
        let runtime = runtime_of(owner)?;
        let wait = intern!(py, "wait_and_assign");
        let assign = slf.getattr(intern!(py, "try_assign"))?;
        Ok(Some(match host {
            None => runtime.call_method1(wait, (request, assign))?,
            Some(host) => runtime.call_method1(wait, (request, assign, host))?,
        }))
    }

    #[pyo3(signature = (request, response, spider = None))]
    fn process_response<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        response: Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = spider;
        let state = slf.get().state.get();
        let meta = state.scrapy.meta(request)?;
        let read = || state.response_outcome(&response);
        let judge = ("response_is_ban", &response);
        let settlement = state.settle(slf.as_any(), request, &meta, read, Role::Proxy, judge)?;
        if let Some(error) = settlement.policy_error {
            return Err(error);
        }
        Ok(response)
    }

    #[pyo3(signature = (request, exception, spider = None))]
    fn process_exception<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        exception: &Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let _ = spider;
        let state = slf.get().state.get();
        let meta = state.scrapy.meta(request)?;
        let mut name = String::new();
        let outcome = exception_outcome(state, exception, &mut name)?;
        let judge = ("exception_is_ban", exception);
        let settlement = state.settle(
            slf.as_any(),
            request,
            &meta,
            || Ok(outcome),
            Role::Proxy,
            judge,
        )?;
        if settlement.resend {
            return resend(slf.as_any(), request, exception).map(Some);
        }
        match settlement.policy_error {
            Some(error) => Err(error),
            None => hand_on(state, exception).map(|()| None),
        }
    }

    /// The engine scheduled `request` (the runtime's `request_scheduled` handler): an attempt
    /// it still carries ended unseen (a middleware above ours made this copy of it), so it is
    /// settled now; and nothing of ours that holds credentials goes to the scheduler's queue.
    fn scheduled(slf: &Bound<'_, Self>, request: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let state = slf.get().state.get();
        let meta = state.scrapy.meta(request)?;
        if meta.contains(intern!(py, ATTEMPT))? {
            state.settle_unobserved(slf.as_any(), request, &meta)?;
        }
        take_flag(&meta, intern!(py, BAN))?;
        state.forget_credentials(request, &meta)
    }

    /// The response's headers came in (the runtime's `headers_received` handler): the attempt
    /// is over, so its credentials go before any middleware copies or stores the request.
    fn forget_credentials(&self, request: &Bound<'_, PyAny>) -> PyResult<()> {
        let state = self.state.get();
        state.forget_credentials(request, &state.scrapy.meta(request)?)
    }

    /// Sends the attempt through session `number`, whatever its state (the tests' way to
    /// choose a session).
    fn assign(slf: &Bound<'_, Self>, request: &Bound<'_, PyAny>, number: u64) -> PyResult<()> {
        let state = slf.get().state.get();
        let host = state.target_host(request)?;
        let meta = state.scrapy.meta(request)?;
        state.assign(slf.as_any(), request, &meta, number, host.as_deref())
    }

    /// Sends the attempt through a live session, if there is one (the runtime calls this
    /// while a request waits for a session); whether there was.
    fn try_assign(slf: &Bound<'_, Self>, request: &Bound<'_, PyAny>) -> PyResult<bool> {
        let state = slf.get().state.get();
        let host = state.target_host(request)?;
        let meta = state.scrapy.meta(request)?;
        state.pick_and_assign(slf.as_any(), request, &meta, host.as_deref())
    }
}

/// The per-response and per-exception hooks of `SmartRetryMiddleware`; the subclass builds
/// the retries (`_retry`).
#[pyclass(subclass, frozen, module = "scrapy_hexproxy._core")]
pub struct RetryHooks {
    state: Py<HookState>,
}

#[pymethods]
impl RetryHooks {
    /// Takes the runtime; further arguments are left to a subclass's `__init__`.
    #[new]
    #[pyo3(signature = (runtime, *_args, **_kwargs))]
    fn new(
        runtime: &Bound<'_, PyAny>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        Ok(Self {
            state: state_of(runtime)?,
        })
    }

    #[pyo3(signature = (request, response, spider = None))]
    fn process_response<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        response: Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = spider;
        let state = slf.get().state.get();
        let meta = state.scrapy.meta(request)?;
        let read = || state.response_outcome(&response);
        let judge = ("response_is_ban", &response);
        let settlement = state.settle(slf.as_any(), request, &meta, read, Role::Retry, judge)?;
        if let Some(error) = settlement.policy_error {
            return Err(error);
        }
        let retry = retry(
            slf.as_any(),
            state,
            request,
            &settlement,
            None,
            Some(&response),
        )?;
        Ok(retry.unwrap_or(response))
    }

    #[pyo3(signature = (request, exception, spider = None))]
    fn process_exception<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        exception: &Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let _ = spider;
        let state = slf.get().state.get();
        let meta = state.scrapy.meta(request)?;
        let mut name = String::new();
        let outcome = exception_outcome(state, exception, &mut name)?;
        let judge = ("exception_is_ban", exception);
        let settlement = state.settle(
            slf.as_any(),
            request,
            &meta,
            || Ok(outcome),
            Role::Retry,
            judge,
        )?;
        if settlement.resend {
            return resend(slf.as_any(), request, exception).map(Some);
        }
        if let Some(error) = settlement.policy_error {
            return Err(error);
        }
        match retry(
            slf.as_any(),
            state,
            request,
            &settlement,
            Some(exception),
            None,
        )? {
            None => hand_on(state, exception).map(|()| None),
            retry => Ok(retry),
        }
    }
}

/// The gateway could not be reached: the runtime marks it down and returns the copy to send
/// once it answers (no retry spent, nobody blamed).
fn resend<'py>(
    owner: &Bound<'py, PyAny>,
    request: &Bound<'py, PyAny>,
    exception: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    runtime_of(owner)?.call_method1(
        intern!(owner.py(), "gateway_unreachable"),
        (request, exception),
    )
}

/// The exception goes on to the next middleware and the errback as it is, unless its message
/// quotes the credentials (an echoing gateway's reason phrase in a `TunnelError`): then a copy
/// of the same class with the message redacted is raised in its place (a plain `Exception` if
/// the class cannot be made to say it).
fn hand_on(state: &HookState, exception: &Bound<'_, PyAny>) -> PyResult<()> {
    let text = exception.str()?;
    let text = text.to_cow()?;
    let redactor = &state.core.get().engine().config().redactor;
    let Cow::Owned(redacted) = redactor.redact(&text) else {
        return Ok(());
    };
    let py = exception.py();
    let says = |copy: &Bound<'_, PyAny>| -> bool {
        copy.str()
            .is_ok_and(|shown| shown.to_cow().is_ok_and(|shown| shown == redacted))
    };
    let class = exception.get_type();
    let made = class
        .call1((redacted.as_str(),))
        .ok()
        .filter(|copy| says(copy));
    let copy = match made {
        Some(copy) => copy,
        None => {
            // Without its __init__ (another signature): the message as its only argument.
            let bare = class.call_method1(intern!(py, "__new__"), (&class,));
            match bare.ok().filter(|copy| {
                copy.setattr(intern!(py, "args"), (redacted.as_str(),))
                    .is_ok()
                    && says(copy)
            }) {
                Some(copy) => copy,
                None => pyo3::exceptions::PyException::new_err(redacted.clone())
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
            }
        }
    };
    copy.setattr(intern!(py, "__suppress_context__"), true)?;
    Err(PyErr::from_value(copy))
}

/// Acts on the retry decision: `_retry` builds the copy (or logs that the request is out of
/// retries, and counts Scrapy's retry stats); `None` hands the response or exception on.
fn retry<'py>(
    owner: &Bound<'py, PyAny>,
    state: &HookState,
    request: &Bound<'py, PyAny>,
    settlement: &Settlement<'_, PyErr>,
    exception: Option<&Bound<'py, PyAny>>,
    response: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(why) = settlement.why else {
        return Ok(None);
    };
    let py = owner.py();
    let reason = match (why, exception) {
        (Why::Status(status), _) => status.to_string(),
        (Why::Ban(Some(status)), None) => format!("ban ({status})"),
        (_, Some(exception)) => {
            let text = format!("{}: {}", exception.get_type().name()?, exception.str()?);
            // An echoing gateway's reason phrase may quote the credentials.
            let redactor = &state.core.get().engine().config().redactor;
            redactor.redact(&text).into_owned()
        }
        (Why::Ban(None) | Why::Transport(_), None) => "ban".to_owned(),
    };
    let give_up = settlement.retry == Decision::GiveUp;
    let retry = owner.call_method1(
        intern!(py, "_retry"),
        (
            request,
            give_up,
            reason,
            settlement.status,
            response,
            exception,
        ),
    )?;
    Ok((!retry.is_none()).then_some(retry))
}
