//! The hooks Scrapy calls on every request and response, in Rust so that the per-request path
//! runs no Python frame of ours. The public middlewares (`middlewares.py`) subclass these and
//! add everything else; the rare paths (an unobserved attempt, a failure to act on, a retry to
//! build, a wait for a session) call back into the Python runtime, which the subclass keeps in
//! `self._runtime`. Kept there, not here, the garbage collector sees the reference (the runtime
//! refers back to the crawler, which refers to the middlewares).

use std::collections::HashSet;

use parking_lot::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

use crate::binding::Core;
use crate::engine::Engine;
use crate::identity::user_agent_index;
use crate::provider::{Gateway, Provider};
use crate::scope::{host_of, BanScope};
use crate::slots::{DictNew, Member};

/// Meta key of the attempt in flight (its token): the session number, which tells which id
/// of its slot the attempt went out on, and `retry_times` when it was sent. A first attempt
/// (no `retry_times`, or 0) in session scope carries the number alone, an int: that is every
/// request of a healthy crawl, and an int costs less to make and read than a tuple. Otherwise
/// `(number, retry_times)`, and in ban scope "domain" always `(number, retry_times, host)`:
/// the target host it was sent to, so that it settles against that host whatever becomes of
/// the request. The runtime reads it with `attempt_of`. The meta keys are exported to the
/// Python runtime, so they are spelled only here.
pub const ATTEMPT: &str = "_hex_attempt";
/// Meta key of the session indices that already failed this request (a tuple).
pub const FAILED: &str = "_hex_failed";
/// Meta key of the public session id of the attempt.
pub const SESSION: &str = "hex_session";
/// Meta key where Scrapy's HttpProxyMiddleware notes which proxy the `Proxy-Authorization`
/// header belongs to (2.11 ... 2.19); it drops the header when `meta["proxy"]` differs.
const AUTH_PROXY: &str = "_auth_proxy";
/// Meta key of a paced retry: the time on the core's clock before which it must not be sent.
pub const NOT_BEFORE: &str = "_hex_not_before";
/// Scrapy's meta key of the cookie jar (`HEX_PROXY_BIND_COOKIEJAR`).
const COOKIEJAR: &str = "cookiejar";
/// Meta key of a ban verdict waiting for the retry middleware: set when `ProxyHooks` settled
/// an attempt the ban policy called a ban (it saw the response first), taken off by
/// `RetryHooks`; a stale one is dropped when the next attempt starts.
pub const BAN: &str = "_hex_ban";
/// Meta key of the per-request switch: a falsy value other than None (`False`, `0`) leaves the
/// request alone.
pub const SWITCH: &str = "hex_proxy";

/// What both hook classes share: the core and what `assign` writes. Nothing here refers back
/// to Python objects that could form a cycle.
struct Shared {
    core: Py<Core>,
    route: Route,
    /// `Some` when the runtime found that the request keeps its meta, headers and encoding in
    /// the slots `_meta`, `_headers` and `_encoding` (None until first use) and that headers
    /// can be made without running `Headers.__init__` (Scrapy >= 2.13). `None`: always go
    /// through the public `request.meta` and `request.headers`.
    fresh: Option<Fresh>,
    /// The response's flags in the slot `_flags` (None until first use), when the runtime
    /// found them there (Scrapy >= 2.13): the `flags` property is a Python call.
    flags_slot: Option<Member>,
    /// The response's `status`.
    status: Member,
    /// The header's name as `Headers` normalises it.
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
}

/// A request's slots, and how to make its headers (see `Shared::fresh`).
struct Fresh {
    meta: Member,
    headers: Member,
    encoding: Member,
    /// Makes an empty `Headers` as `dict.__new__(Headers)` does.
    new_headers: DictNew,
}

impl Fresh {
    fn new(headers_type: &Bound<'_, PyType>) -> PyResult<Self> {
        let py = headers_type.py();
        let request = py
            .import("scrapy.http")?
            .getattr("Request")?
            .cast_into::<PyType>()?;
        Ok(Self {
            meta: Member::of(&request, "_meta")?,
            headers: Member::of(&request, "_headers")?,
            encoding: Member::of(&request, "_encoding")?,
            new_headers: DictNew::of(headers_type)?,
        })
    }
}

/// The User-Agents sessions present, and which values a request may carry that are not the
/// user's own choice (so a session's User-Agent replaces them).
struct UserAgents {
    /// Encoded, as `Headers` stores a value.
    values: Vec<Py<PyBytes>>,
    /// The values above (set for an earlier attempt, maybe on another session) and the
    /// `USER_AGENT` setting's (Scrapy's default, there already when HexProxy runs after
    /// UserAgentMiddleware).
    replaceable: HashSet<Vec<u8>>,
    /// `User-Agent`, as `Headers` normalises it.
    header_name: Py<PyBytes>,
}

impl UserAgents {
    fn new(runtime: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        let py = runtime.py();
        let given = runtime.getattr("user_agents")?;
        if given.is_none() {
            return Ok(None);
        }
        let values: Vec<Bound<'_, PyBytes>> = given.extract()?;
        let mut replaceable: HashSet<Vec<u8>> =
            values.iter().map(|v| v.as_bytes().to_vec()).collect();
        if let Some(default) = runtime
            .getattr("default_user_agent")?
            .extract::<Option<Vec<u8>>>()?
        {
            replaceable.insert(default);
        }
        Ok(Some(Self {
            values: values.into_iter().map(Bound::unbind).collect(),
            replaceable,
            header_name: PyBytes::new(py, b"User-Agent").unbind(),
        }))
    }

    /// Whether `value` (a header's list of values) is one of the User-Agents sessions present.
    fn is_ours(&self, value: &Bound<'_, PyAny>) -> bool {
        let last = value
            .cast::<PyList>()
            .ok()
            .and_then(|list| list.iter().last())
            .and_then(|last| last.extract::<Vec<u8>>().ok());
        last.is_some_and(|last| {
            let py = value.py();
            self.values
                .iter()
                .any(|ours| ours.bind(py).as_bytes() == last)
        })
    }

    /// Gives the attempt the User-Agent of session `number`, unless the request carries one
    /// the user chose.
    fn present(&self, py: Python<'_>, headers: &Bound<'_, PyDict>, number: u64) -> PyResult<()> {
        let name = self.header_name.bind(py);
        if let Some(values) = headers.get_item(name)? {
            // Stored as `Headers` stores values: a list of bytes, the last one the value.
            let current = values
                .cast::<PyList>()
                .ok()
                .and_then(|list| list.iter().last())
                .and_then(|last| last.extract::<Vec<u8>>().ok());
            match current {
                Some(value) if self.replaceable.contains(&value) => {}
                _ => return Ok(()),
            }
        }
        let value = &self.values[user_agent_index(number, self.values.len())];
        headers.set_item(name, PyList::new(py, [value.bind(py)])?)
    }
}

/// Where `assign` sends an attempt, and with which credentials.
enum Route {
    /// One URL (the runtime's `proxy_url`); the username, so the header, is made per session.
    Gateway(GatewayRoute),
    /// A proxy per session: each one's URL and header made once, at start (a list is small).
    List(Box<[Listed]>),
}

/// Pools of up to this many sessions keep the id string and header bytes made for each session
/// (a cache, direct-mapped by session number), so that attempts on a session share them: each
/// is made once a crawl (once per identity when ids rotate). In a larger pool an attempt would
/// rarely find its session's there, so every attempt makes its own (as all did before).
const MADE_CAP: u32 = 1024;

struct GatewayRoute {
    url: Py<PyString>,
    gateway: Gateway,
    /// `None` for a pool larger than `MADE_CAP`.
    made: Option<Mutex<Box<[Option<Made>]>>>,
    /// Attempts may share their session's id object: not with `HEX_PROXY_BIND_COOKIEJAR`,
    /// which tells a jar it set (the very `hex_session` object) from one the user set by
    /// identity, and a user may well set a jar to the id a response came back with.
    share_ids: bool,
}

/// A session number's id (for `meta["hex_session"]`) and `Proxy-Authorization` value. Both are
/// immutable Python objects, so requests may share them.
struct Made {
    number: u64,
    id: Py<PyString>,
    header: Py<PyBytes>,
}

impl GatewayRoute {
    /// The id and header of session `number` (a number the engine handed out).
    fn credentials<'py>(
        &self,
        py: Python<'py>,
        engine: &Engine,
        number: u64,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyBytes>)> {
        let Some(made) = &self.made else {
            return self.make(py, engine, number);
        };
        let entries = made.lock();
        let at = (number % entries.len() as u64) as usize;
        let found = entries[at]
            .as_ref()
            .filter(|entry| entry.number == number)
            .map(|Made { id, header, .. }| (id.bind(py).clone(), header.bind(py).clone()));
        drop(entries);
        if let Some((id, header)) = found {
            if self.share_ids {
                return Ok((id, header));
            }
            let id = PyString::new(py, &id.to_cow()?);
            return Ok((id, header));
        }
        // Made with the lock released (making a Python object is no place to hold it).
        let (id, header) = self.make(py, engine, number)?;
        made.lock()[at] = Some(Made {
            number,
            id: id.clone().unbind(),
            header: header.clone().unbind(),
        });
        Ok((id, header))
    }

    fn make<'py>(
        &self,
        py: Python<'py>,
        engine: &Engine,
        number: u64,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyBytes>)> {
        let session = engine.session(number)?;
        let gateway = &self.gateway;
        let header = PyBytes::new_with(py, gateway.proxy_authorization_len(&session), |out| {
            gateway.write_proxy_authorization(&session, out);
            Ok(())
        })?;
        Ok((PyString::from_bytes(py, session.as_bytes())?, header))
    }
}

struct Listed {
    url: Py<PyString>,
    /// `None`: a proxy without credentials.
    header: Option<Py<PyBytes>>,
}

impl Route {
    fn new(runtime: &Bound<'_, PyAny>, core: &Core) -> PyResult<Self> {
        let py = runtime.py();
        Ok(match &core.engine().config().provider {
            Provider::Gateway(gateway) => Self::Gateway(GatewayRoute {
                url: runtime
                    .getattr("proxy_url")?
                    .cast_into::<PyString>()?
                    .unbind(),
                gateway: gateway.clone(),
                share_ids: !runtime.getattr("bind_cookiejar")?.extract::<bool>()?,
                made: match core.engine().config().pool_size {
                    size @ 1..=MADE_CAP => Some(Mutex::new((0..size).map(|_| None).collect())),
                    _ => None,
                },
            }),
            Provider::List(list) => Self::List(
                list.iter()
                    .map(|proxy| Listed {
                        url: PyString::new(py, proxy.url()).unbind(),
                        header: proxy
                            .header()
                            .map(|header| PyBytes::new(py, header.as_bytes()).unbind()),
                    })
                    .collect(),
            ),
        })
    }
}

impl Route {
    /// Whether `proxy` (a `meta["proxy"]` value) is a URL this route sends attempts to. With a
    /// list, a scan: only for a copy switched off after an attempt (`leave_alone`).
    fn is_ours(&self, proxy: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = proxy.py();
        match self {
            Self::Gateway(GatewayRoute { url, .. }) => proxy.eq(url.bind(py)),
            Self::List(listed) => {
                for entry in listed {
                    if proxy.eq(entry.url.bind(py))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

impl Shared {
    fn new(runtime: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = runtime.py();
        let fresh = runtime.getattr("fresh_headers_type")?;
        let core = runtime.getattr("core")?.cast_into::<Core>()?;
        let response = py
            .import("scrapy.http")?
            .getattr("Response")?
            .cast_into::<PyType>()?;
        Ok(Self {
            paced: core.get().engine().paced(),
            domain: core.get().engine().ban_scope() == BanScope::Domain,
            route: Route::new(runtime, core.get())?,
            core: core.unbind(),
            fresh: if fresh.is_none() {
                None
            } else {
                Some(Fresh::new(fresh.cast::<PyType>()?)?)
            },
            flags_slot: if runtime.getattr("response_flags_slot")?.extract()? {
                Some(Member::of(&response, "_flags")?)
            } else {
                None
            },
            status: Member::of(&response, "status")?,
            header_name: PyBytes::new(py, b"Proxy-Authorization").unbind(),
            bind_cookiejar: runtime.getattr("bind_cookiejar")?.extract()?,
            user_agents: UserAgents::new(runtime)?,
            ban_policy: !runtime.getattr("ban_policy")?.is_none(),
        })
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
        if meta.contains(intern!(py, ATTEMPT))? {
            runtime_of(owner)?.call_method1(intern!(py, "settle_unobserved"), (request,))?;
        }
        let session = intern!(py, SESSION);
        if let (Some(jar), Some(id)) = (
            meta.get_item(intern!(py, COOKIEJAR))?,
            meta.get_item(session)?,
        ) {
            if self.bind_cookiejar && jar.is(&id) {
                meta.del_item(intern!(py, COOKIEJAR))?;
            }
        }
        for key in [
            session,
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
        let headers = self.headers(py, request)?;
        let name = self.header_name.bind(py);
        if headers.contains(name)? {
            headers.del_item(name)?;
        }
        if let Some(user_agents) = &self.user_agents {
            let name = user_agents.header_name.bind(py);
            if let Some(value) = headers.get_item(name)? {
                if user_agents.is_ours(&value) {
                    headers.del_item(name)?;
                }
            }
        }
        Ok(())
    }

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

    /// Sends this attempt through session `number` (as the engine's pick returns it): the
    /// proxy and session in meta, the session's credentials in the `Proxy-Authorization`
    /// header (none for a listed proxy without credentials); when switched on, its cookie jar
    /// and its User-Agent. `host`: the target host (domain scope), kept in the attempt token.
    fn assign(
        &self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
        number: u64,
        host: Option<&str>,
    ) -> PyResult<()> {
        let engine = self.core.get().engine();
        let retry_times = meta.get_item(intern!(py, "retry_times"))?;
        let (url, id, header) = match &self.route {
            Route::Gateway(route) => {
                let (id, header) = route.credentials(py, engine, number)?;
                (&route.url, id, Some(header))
            }
            Route::List(listed) => {
                let id = PyString::new(py, engine.session(number)?.as_str());
                // A list's sessions never rotate (the config refuses it): number = index.
                let Listed { url, header } = &listed[number as usize];
                let header = header.as_ref().map(|header| header.bind(py).clone());
                self.note_auth_proxy(py, request, meta, url, header.is_some())?;
                (url, id, header)
            }
        };
        meta.set_item(intern!(py, "proxy"), url.bind(py))?;
        if self.bind_cookiejar {
            self.bind_cookiejar(py, meta, &id)?;
        }
        meta.set_item(intern!(py, SESSION), &id)?;
        let number_item = number.into_pyobject(py)?.into_any();
        let first = match &retry_times {
            None => true,
            Some(times) => !times.is_truthy()?,
        };
        let retry_times = match retry_times {
            Some(times) => times,
            None => 0_u32.into_pyobject(py)?.into_any(),
        };
        let attempt = match host {
            None if first => number_item,
            None => PyTuple::new(py, [number_item, retry_times])?.into_any(),
            Some(host) => PyTuple::new(
                py,
                [number_item, retry_times, PyString::new(py, host).into_any()],
            )?
            .into_any(),
        };
        meta.set_item(intern!(py, ATTEMPT), attempt)?;
        if header.is_none() && self.user_agents.is_none() {
            return Ok(());
        }
        let headers = self.headers(py, request)?;
        if let Some(header) = header {
            // The key as `Headers` normalises it, stored as `Headers.__setitem__` would (a list
            // of bytes) without running its normalisation: the value is already bytes.
            headers.set_item(self.header_name.bind(py), PyList::new(py, [header])?)?;
        }
        if let Some(user_agents) = &self.user_agents {
            user_agents.present(py, &headers, number)?;
        }
        Ok(())
    }

    /// The session's id is its cookie jar, unless the user chose the request's jar. A jar we
    /// chose for an earlier attempt is the very object in `hex_session` (copies of a request
    /// share meta values), so a retry moves to the new session's jar; any other is the user's.
    /// Call before `hex_session` is overwritten.
    fn bind_cookiejar(
        &self,
        py: Python<'_>,
        meta: &Bound<'_, PyDict>,
        id: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        let key = intern!(py, COOKIEJAR);
        if let Some(jar) = meta.get_item(key)? {
            let ours = meta
                .get_item(intern!(py, SESSION))?
                .is_some_and(|previous| jar.is(&previous));
            if !ours {
                return Ok(());
            }
        }
        meta.set_item(key, id)
    }

    /// With a list, the proxy may change between attempts of a request. Scrapy's
    /// HttpProxyMiddleware drops a `Proxy-Authorization` header it noted for another proxy,
    /// so note it for this one; and a proxy without credentials must not keep the header of
    /// the previous attempt's proxy.
    fn note_auth_proxy(
        &self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyDict>,
        url: &Py<PyString>,
        has_header: bool,
    ) -> PyResult<()> {
        let key = intern!(py, AUTH_PROXY);
        if has_header {
            return meta.set_item(key, url.bind(py));
        }
        if meta.contains(key)? {
            meta.del_item(key)?;
        }
        let headers = self.headers(py, request)?;
        let name = self.header_name.bind(py);
        if headers.contains(name)? {
            headers.del_item(name)?;
        }
        Ok(())
    }

    fn meta<'py>(&self, request: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let py = request.py();
        if let Some(fresh) = &self.fresh {
            let current = fresh.meta.get(request)?;
            if !current.is_none() {
                return Ok(current.cast_into::<PyDict>()?);
            }
            let made = PyDict::new(py);
            fresh.meta.set(request, &made)?;
            return Ok(made);
        }
        Ok(request
            .getattr(intern!(py, "meta"))?
            .cast_into::<PyDict>()?)
    }

    fn headers<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if let Some(fresh) = &self.fresh {
            let current = fresh.headers.get(request)?;
            if !current.is_none() {
                return Ok(current.cast_into::<PyDict>()?);
            }
            // As `Headers(encoding=request.encoding)` leaves it.
            let attrs = PyDict::new(py);
            attrs.set_item(intern!(py, "encoding"), fresh.encoding.get(request)?)?;
            let made = fresh.new_headers.make_with(attrs)?;
            fresh.headers.set(request, &made)?;
            return Ok(made.cast_into::<PyDict>()?);
        }
        Ok(request
            .getattr(intern!(py, "headers"))?
            .cast_into::<PyDict>()?)
    }

    /// Whether the response came from HttpCacheMiddleware (its flags hold "cached"). In the
    /// `_flags` slot None means no flags; a response without that slot (not one of Scrapy's)
    /// is read through `flags`.
    fn cached(&self, response: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = response.py();
        let flags = match &self.flags_slot {
            Some(slot) => match slot.get(response) {
                Ok(flags) if flags.is_none() => return Ok(false),
                Ok(flags) => flags,
                Err(_) => response.getattr(intern!(py, "flags"))?,
            },
            None => response.getattr(intern!(py, "flags"))?,
        };
        flags.contains(intern!(py, "cached"))
    }

    /// Statuses beyond u16 are in no status set: they count as what they are, successes.
    fn status_of(&self, response: &Bound<'_, PyAny>) -> PyResult<u16> {
        let status: i64 = match self.status.get(response) {
            Ok(status) => status.extract()?,
            Err(_) => response
                .getattr(intern!(response.py(), "status"))?
                .extract()?,
        };
        Ok(status.clamp(0, u16::MAX.into()) as u16)
    }

    /// Counts the response against the attempt's session, unless another middleware did it
    /// already (the attempt token is gone) or it came from the cache. With a ban policy, the
    /// policy judges the attempt here, once. Returns the meta and whether the attempt was a
    /// ban; `decides`: the caller decides the retry, so a ban verdict needs no meta flag.
    fn settle_response<'py>(
        &self,
        owner: &Bound<'py, PyAny>,
        request: &Bound<'py, PyAny>,
        response: &Bound<'py, PyAny>,
        decides: bool,
    ) -> PyResult<Settled<'py>> {
        let py = owner.py();
        let meta = self.meta(request)?;
        let key = intern!(py, ATTEMPT);
        let Some(attempt) = meta.get_item(key)? else {
            // Settled already: by a middleware that may have left a ban verdict for us.
            let banned = decides && self.ban_policy && take_flag(&meta, intern!(py, BAN))?;
            return Ok(Settled {
                meta,
                banned,
                status: None,
            });
        };
        meta.del_item(key)?;
        // A cached response (HttpCacheMiddleware) never went through the session.
        if self.cached(response)? {
            return Ok(Settled {
                meta,
                banned: false,
                status: None,
            });
        }
        let (number, host): (u64, Option<String>) = match attempt.cast::<PyTuple>() {
            Ok(attempt) if self.domain => (
                attempt.get_item(0)?.extract()?,
                Some(attempt.get_item(2)?.extract()?),
            ),
            Ok(attempt) => (attempt.get_item(0)?.extract()?, None),
            Err(_) => (attempt.extract()?, None),
        };
        let status = self.status_of(response)?;
        let engine = self.core.get().engine();
        // The policy's own error (it raised, or answered junk) goes to the errback, but only
        // once the attempt is counted, by the default rules: its token is gone already.
        let judged = if self.ban_policy {
            judge(owner, request, response)
        } else {
            Ok(None)
        };
        let (flags, banned) = match judged.as_ref().ok().copied().flatten() {
            None => (
                engine.record_status_for(number, host.as_deref(), status)?,
                false,
            ),
            Some(ban) => (
                engine.record_response_for(number, host.as_deref(), status, ban)?,
                ban,
            ),
        };
        if flags != 0 {
            let runtime = runtime_of(owner)?;
            let settled = intern!(py, "_settled");
            match host {
                None => runtime.call_method1(settled, (request, number, flags))?,
                Some(host) => runtime.call_method1(settled, (request, number, flags, host))?,
            };
        }
        judged?;
        if banned && !decides {
            meta.set_item(intern!(py, BAN), true)?;
        }
        Ok(Settled {
            meta,
            banned,
            status: Some(status),
        })
    }
}

/// The ban policy's verdict on a response (see `verdict_of`).
fn judge(
    owner: &Bound<'_, PyAny>,
    request: &Bound<'_, PyAny>,
    response: &Bound<'_, PyAny>,
) -> PyResult<Option<bool>> {
    let runtime = runtime_of(owner)?;
    let verdict = runtime
        .getattr(intern!(owner.py(), "response_is_ban"))?
        .call1((request, response))?;
    verdict_of(&runtime, "response_is_ban", &verdict)
}

/// A ban policy's answer: `None` (the default rules) or a bool; anything else is the policy's
/// programming error, raised as the runtime's TypeError naming the setting and the method.
fn verdict_of(
    runtime: &Bound<'_, PyAny>,
    method: &str,
    verdict: &Bound<'_, PyAny>,
) -> PyResult<Option<bool>> {
    if verdict.is_none() {
        return Ok(None);
    }
    if let Ok(ban) = verdict.cast::<PyBool>() {
        return Ok(Some(ban.is_true()));
    }
    let error = runtime.call_method1(intern!(runtime.py(), "bad_verdict"), (method, verdict))?;
    Err(PyErr::from_value(error))
}

/// Removes `key` from `meta`; whether it was there with a true value.
fn take_flag(meta: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<bool> {
    match meta.get_item(key)? {
        Some(value) => {
            meta.del_item(key)?;
            value.is_truthy()
        }
        None => Ok(false),
    }
}

/// Whether the request's `hex_proxy` meta switches the middlewares off: a falsy value other
/// than None (None reads as unset, the way `meta.get` would).
fn switched_off(meta: &Bound<'_, PyDict>) -> PyResult<bool> {
    match meta.get_item(intern!(meta.py(), SWITCH))? {
        Some(switch) => Ok(!switch.is_none() && !switch.is_truthy()?),
        None => Ok(false),
    }
}

fn runtime_of<'py>(owner: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    owner.getattr(intern!(owner.py(), "_runtime"))
}

/// What `settle_response` leaves for the retry decision.
struct Settled<'py> {
    meta: Bound<'py, PyDict>,
    /// The ban policy called the attempt a ban.
    banned: bool,
    /// The response's status, if settling read it (so the retry hook need not read it again).
    status: Option<u16>,
}

/// The per-request hooks of `HexProxyMiddleware`.
#[pyclass(subclass, frozen, module = "scrapy_hexproxy._core")]
pub struct ProxyHooks {
    shared: Shared,
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
            shared: Shared::new(runtime)?,
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
        let shared = &slf.get().shared;
        let meta = shared.meta(request)?;
        if switched_off(&meta)? {
            // Left alone; only what an earlier attempt of ours put on it is taken off.
            if meta.contains(intern!(py, SESSION))? || meta.contains(intern!(py, ATTEMPT))? {
                shared.leave_alone(slf.as_any(), request, &meta)?;
            }
            return Ok(None);
        }
        if meta.contains(intern!(py, ATTEMPT))? {
            runtime_of(slf.as_any())?.call_method1(intern!(py, "settle_unobserved"), (request,))?;
        }
        if shared.ban_policy {
            // A verdict no retry middleware took (HexProxy alone, or a redirect in between)
            // belongs to the attempt before.
            take_flag(&meta, intern!(py, BAN))?;
        }
        // A paced retry normally waits out of the downloader and arrives here due, without the
        // key (the runtime's request_scheduled handler); one that bypassed the scheduler
        // (`engine.download()`) still has it and waits here.
        if shared.paced && meta.contains(intern!(py, NOT_BEFORE))? {
            return Ok(Some(
                runtime_of(slf.as_any())?
                    .call_method1(intern!(py, "wait_until_due"), (request, slf))?,
            ));
        }
        let engine = shared.core.get().engine();
        let host = shared.target_host(request)?;
        let host = host.as_deref();
        let picked = match meta.get_item(intern!(py, FAILED))? {
            None => engine.pick_for(host, &[]),
            Some(failed) => engine.pick_for(host, &failed.extract::<Vec<u32>>()?),
        };
        match picked {
            Some(number) => {
                shared.assign(py, request, &meta, number, host)?;
                // Domain scope: this pick gave a slot a new id and so ended a ban early; the
                // requests waiting for that host may go.
                if shared.domain && engine.take_released() {
                    runtime_of(slf.as_any())?.call_method0(intern!(py, "wake"))?;
                }
                Ok(None)
            }
            // Every session is cooling (for this host, in domain scope), or the credentials
            // were rejected.
            None => {
                let runtime = runtime_of(slf.as_any())?;
                let wait = intern!(py, "wait_and_assign");
                let assign = slf.getattr(intern!(py, "assign"))?;
                Ok(Some(match host {
                    None => runtime.call_method1(wait, (request, assign))?,
                    Some(host) => runtime.call_method1(wait, (request, assign, host))?,
                }))
            }
        }
    }

    #[pyo3(signature = (request, response, spider = None))]
    fn process_response<'py>(
        slf: &Bound<'py, Self>,
        request: &Bound<'py, PyAny>,
        response: Bound<'py, PyAny>,
        spider: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = spider;
        slf.get()
            .shared
            .settle_response(slf.as_any(), request, &response, false)?;
        Ok(response)
    }

    /// Sends the attempt through session `number` (the runtime calls this once a wait ends).
    fn assign(&self, py: Python<'_>, request: &Bound<'_, PyAny>, number: u64) -> PyResult<()> {
        let shared = &self.shared;
        let host = shared.target_host(request)?;
        shared.assign(py, request, &shared.meta(request)?, number, host.as_deref())
    }
}

/// The per-response hook of `SmartRetryMiddleware`; the subclass builds the retries (`_retry`).
#[pyclass(subclass, frozen, module = "scrapy_hexproxy._core")]
pub struct RetryHooks {
    shared: Shared,
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
            shared: Shared::new(runtime)?,
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
        let py = slf.py();
        let shared = &slf.get().shared;
        let Settled {
            meta,
            banned,
            status,
        } = shared.settle_response(slf.as_any(), request, &response, true)?;
        let status = match status {
            Some(status) => status,
            None => shared.status_of(&response)?,
        };
        let retryable = shared.core.get().engine().may_retry(status);
        if !retryable && !banned {
            return Ok(response);
        }
        if let Some(dont_retry) = meta.get_item(intern!(py, "dont_retry"))? {
            if dont_retry.is_truthy()? {
                return Ok(response);
            }
        }
        if switched_off(&meta)? {
            return Ok(response);
        }
        // A ban is retried whatever its status; a status the retry codes hold keeps its own
        // rules (a 407 once the credentials failed, a Retry-After). `None`: always retryable.
        let (status_arg, reason) = if banned {
            (retryable.then_some(status), format!("ban ({status})"))
        } else {
            (Some(status), status.to_string())
        };
        let retry = slf.call_method1(
            intern!(py, "_retry"),
            (request, status_arg, reason, &response),
        )?;
        Ok(if retry.is_none() { response } else { retry })
    }
}
