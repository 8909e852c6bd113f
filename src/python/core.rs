//! The Python face of the engine: argument conversion and error mapping, nothing else.

use std::time::Duration;

use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::clock::Clock;
use crate::config::Settings;
use crate::engine::{Engine, Event};
use crate::error::Error;
use crate::provider::{Entry, Proxy};
use crate::settings as setting;
use crate::shared::{Fact, Noted};
use crate::snapshot::RestoreError;

impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::Config(_) | Error::InvalidAdvance(_) => PyValueError::new_err(message),
            Error::ClockNotManual => PyRuntimeError::new_err(message),
            Error::IndexOutOfRange { .. } => PyIndexError::new_err(message),
        }
    }
}

/// The session pool, retry policy and stats of one crawl. Thread-safe.
#[pyclass(frozen, module = "scrapy_hexproxy._core")]
pub struct Core {
    engine: Engine,
}

#[pymethods]
impl Core {
    /// `settings`: values by the keywords of the settings table (`settings::SETTINGS`, each
    /// setting's `key`); a setting left out has its declared default, so no default is written
    /// here.
    #[new]
    #[pyo3(signature = (**settings))]
    fn new(settings: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut values = Settings::documented("", "");
        let mut manual_clock = false;
        let mut seed = None;
        for (key, value) in settings.into_iter().flatten() {
            let key: String = key.extract()?;
            match key.as_str() {
                "pool_size" => values.pool_size = value.extract()?,
                "max_failures" => values.max_failures = value.extract()?,
                "cooldown" => values.cooldown = value.extract()?,
                "max_retries" => values.max_retries = value.extract()?,
                "retry_codes" => values.retry_codes = value.extract()?,
                "failure_codes" => values.failure_codes = value.extract()?,
                "auth_failures_to_close" => values.auth_failures_to_close = value.extract()?,
                "user" => values.user = value.extract()?,
                "password" => values.password = value.extract()?,
                "username_template" => values.username_template = value.extract()?,
                "proxies" => values.proxies = value.extract::<Option<Vec<Entry>>>()?,
                "backoff_base" => values.backoff_base = value.extract()?,
                "backoff_max" => values.backoff_max = value.extract()?,
                "on_blacklist" => values.on_blacklist = value.extract()?,
                "session_max_uses" => values.session_max_uses = value.extract()?,
                "session_max_age" => values.session_max_age = value.extract()?,
                "ban_scope" => values.ban_scope = value.extract()?,
                "manual_clock" => manual_clock = value.extract()?,
                "seed" => {
                    seed = value
                        .extract::<Option<i64>>()?
                        .map(|got| setting::SEED.check_int(got).map(|seed| seed as u64))
                        .transpose()
                        .map_err(Error::from)?;
                }
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "Core() got an unexpected keyword argument {key:?}"
                    )))
                }
            }
        }
        let config = values.validate().map_err(Error::from)?;
        let clock = if manual_clock {
            Clock::manual()
        } else {
            Clock::system()
        };
        Ok(Self {
            engine: Engine::new(config, clock, seed),
        })
    }

    // `host`: the request's target host, which ban scope "domain" keeps records for (here
    // and in `record`, `next_live_in`); session scope ignores it.
    #[pyo3(signature = (exclude = None, host = None))]
    fn pick(&self, exclude: Option<Vec<u32>>, host: Option<&str>) -> Option<u64> {
        self.engine
            .pick(host, exclude.as_deref().unwrap_or_default())
    }

    fn session_id(&self, number: i64) -> PyResult<String> {
        Ok(self.engine.session_id(self.number(number)?)?)
    }

    fn successor_id(&self, number: i64) -> PyResult<String> {
        Ok(self
            .engine
            .successor(self.number(number)?)?
            .as_str()
            .to_owned())
    }

    fn slot(&self, number: i64) -> PyResult<u32> {
        Ok(self.engine.slot(self.number(number)?)?)
    }

    /// Counts an outcome on session `number` directly (tests, benchmarks): a response's
    /// `status`, or a transport exception named `reason`.
    #[pyo3(signature = (number, *, status = None, reason = None, host = None))]
    fn record(
        &self,
        number: i64,
        status: Option<u16>,
        reason: Option<&str>,
        host: Option<&str>,
    ) -> PyResult<u32> {
        let event = match (status, reason) {
            (Some(status), None) => Event::Status(status),
            (None, Some(reason)) => Event::Exception(reason),
            _ => return Err(PyValueError::new_err("record takes a status or a reason")),
        };
        Ok(self.engine.record(self.number(number)?, host, event)?)
    }

    fn take_released(&self) -> bool {
        self.engine.take_released()
    }

    /// Whether the gateway is down (promise 17): the hooks hold every request.
    #[getter]
    fn get_gateway_down(&self) -> bool {
        self.engine.gateway_down()
    }

    #[setter]
    fn set_gateway_down(&self, down: bool) {
        self.engine.set_gateway_down(down);
    }

    /// Whether attempts go through one gateway (not a proxy list).
    #[getter]
    fn has_gateway(&self) -> bool {
        self.engine.has_gateway()
    }

    // `retry_times` is the new copy's (1 for the first retry).
    #[pyo3(signature = (retry_times, retry_after = None))]
    fn retry_wait(&self, retry_times: i64, retry_after: Option<f64>) -> f64 {
        let n = retry_times.clamp(0, u32::MAX.into()) as u32;
        self.engine.retry_wait(n, retry_after).as_secs_f64()
    }

    fn retries_dropped(&self, count: u64) {
        self.engine.retries_dropped(count);
    }

    #[pyo3(signature = (host = None))]
    fn next_live_in(&self, host: Option<&str>) -> f64 {
        self.engine.next_live_in(host).as_secs_f64()
    }

    /// `(session id, seconds)` of the cooling session that comes back first.
    fn next_back(&self) -> PyResult<Option<(String, f64)>> {
        self.engine
            .next_back()
            .map(|(number, until)| Ok((self.engine.session_id(number)?, until.as_secs_f64())))
            .transpose()
    }

    fn advance(&self, seconds: f64) -> PyResult<()> {
        let by =
            Duration::try_from_secs_f64(seconds).map_err(|_| Error::InvalidAdvance(seconds))?;
        Ok(self.engine.advance(by)?)
    }

    /// The pool's state for a pause (see snapshot.rs); `wall`: `time.time()`; `origin`: the
    /// gateway's host:port ("" with a proxy list).
    fn snapshot<'py>(&self, py: Python<'py>, wall: f64, origin: &str) -> Bound<'py, PyBytes> {
        let data = py.detach(|| self.engine.snapshot(wall_ns(wall), origin));
        PyBytes::new(py, &data)
    }

    /// Restores a state `snapshot` wrote: `(cooling, expired, failing, rotated, records)`, or why it was
    /// ignored (another configuration); `ValueError` for an unreadable one.
    fn restore(&self, data: &[u8], wall: f64, origin: &str) -> PyResult<RestoreOutcome> {
        match self.engine.restore(data, wall_ns(wall), origin) {
            Ok(r) => Ok(RestoreOutcome::Restored((
                r.cooling, r.expired, r.failing, r.rotated, r.records,
            ))),
            Err(err @ RestoreError::OtherConfig { .. }) => {
                Ok(RestoreOutcome::Ignored(err.to_string()))
            }
            Err(err @ RestoreError::Unreadable(_)) => Err(PyValueError::new_err(err.to_string())),
        }
    }

    /// Shares the pool with other processes from now on (`HEX_PROXY_REDIS_URL`), before the
    /// first pick; `nth`: this process's number from the shared counter (rotated ids' epoch).
    /// `wake_fd`: a socket (a descriptor this call takes over) that gets a byte whenever a
    /// note arrives in an empty outbox, for the runtime's thread to sleep on.
    #[pyo3(signature = (nth = None, wake_fd = None))]
    fn share(&self, nth: Option<u64>, wake_fd: Option<i32>) -> PyResult<()> {
        let waker = match wake_fd {
            None => None,
            Some(fd) => {
                use std::io::Write as _;
                use std::os::fd::FromRawFd as _;

                // SAFETY: the caller hands this descriptor over (a dup of its socket's).
                let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
                stream
                    .set_nonblocking(true)
                    .map_err(|err| PyValueError::new_err(format!("wake_fd: {err}")))?;
                // A full buffer means the thread has a wake-up pending already.
                let wake: crate::shared::Waker = Box::new(move || {
                    let _ = (&stream).write(&[1]);
                });
                Some(wake)
            }
        };
        self.engine.share(nth, waker);
        Ok(())
    }

    /// The notes for the other processes since the last call: `(number, host, what,
    /// seconds)`, `what` one of "failed", "cleared", "banned" (`seconds`: the ban's length).
    fn take_notes(&self) -> Vec<(u64, Option<String>, &'static str, f64)> {
        self.engine
            .take_notes()
            .into_iter()
            .map(|note| {
                let (what, seconds) = match note.noted {
                    Noted::Failed => ("failed", 0.0),
                    Noted::Cleared => ("cleared", 0.0),
                    Noted::Banned(left) => ("banned", left.as_secs_f64()),
                };
                (note.number, note.host.map(Into::into), what, seconds)
            })
            .collect()
    }

    /// Takes what another process says about session `number`: `what` "run" (`value`
    /// failures counted everywhere), "cleared", or "banned" (`value` seconds left). Returns
    /// the flags `BLACKLISTED` and `ROTATED`; 0 for a number of no session of this pool.
    #[pyo3(signature = (number, host, what, value = 0.0))]
    fn take_fact(&self, number: u64, host: Option<&str>, what: &str, value: f64) -> PyResult<u32> {
        let fact = match what {
            "run" => Fact::Run(if value.is_finite() && value > 0.0 {
                value.min(f64::from(u32::MAX)) as u32
            } else {
                0
            }),
            "cleared" => Fact::Cleared,
            "banned" => Fact::Banned(Duration::try_from_secs_f64(value).unwrap_or_default()),
            other => return Err(PyValueError::new_err(format!("no fact {other:?}"))),
        };
        match self.engine.take_fact(number, host, fact) {
            Err(Error::IndexOutOfRange { .. }) => Ok(0),
            other => Ok(other?),
        }
    }

    /// Another process sharing the pool found the credentials rejected; True the first time.
    fn credentials_rejected_elsewhere(&self) -> bool {
        self.engine.credentials_rejected_elsewhere()
    }

    /// The name of this pool's state in Redis; `origin` as for `snapshot`.
    fn shared_key(&self, origin: &str) -> String {
        self.engine.shared_key(origin)
    }

    /// What processes sharing a pool must agree on (no secret): `origin` as for `snapshot`.
    fn describe(&self, origin: &str) -> String {
        self.engine.describe(origin)
    }

    fn now(&self) -> f64 {
        self.engine.now().as_secs_f64()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (key, value) in self.engine.stats_snapshot() {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    #[getter]
    fn pool_size(&self) -> u32 {
        self.engine.config().pool_size
    }

    #[getter]
    fn ban_scope(&self) -> &'static str {
        self.engine.ban_scope().as_str()
    }

    #[getter]
    fn max_retries(&self) -> u32 {
        self.engine.config().max_retries
    }

    #[getter]
    fn paced(&self) -> bool {
        self.engine.paced()
    }

    #[getter]
    fn live_count(&self) -> u32 {
        self.engine.counts().0
    }

    #[getter]
    fn cooling_count(&self) -> u32 {
        self.engine.counts().1
    }

    #[getter]
    fn auth_failed(&self) -> bool {
        self.engine.auth_failed()
    }

    /// `None` with a proxy list.
    #[getter]
    fn user(&self) -> Option<&str> {
        Some(self.engine.config().provider.gateway()?.user())
    }

    /// The session's proxy without its password (`http://user:***@host:port`); `None` with a
    /// gateway.
    fn proxy_label(&self, number: i64) -> PyResult<Option<String>> {
        Ok(self.proxy(number)?.map(Proxy::label))
    }

    /// Where the session's proxy was listed (`"HEX_PROXY_LIST entry 3"`); `None` with a gateway.
    fn proxy_source(&self, number: i64) -> PyResult<Option<String>> {
        Ok(self.proxy(number)?.map(|proxy| proxy.source().to_owned()))
    }

    /// `(kept, dropped)` sources of the list entries that repeated an earlier one exactly.
    #[getter]
    fn duplicate_proxies(&self) -> Vec<(String, String)> {
        match self.engine.config().provider.list() {
            Some(list) => list.duplicates().to_vec(),
            None => Vec::new(),
        }
    }

    /// `text` without the credentials (see `redact.rs`): for text from elsewhere that we log
    /// or raise (a reason phrase, an exception's message).
    fn redact(&self, text: &str) -> String {
        self.engine.config().redactor.redact(text).into_owned()
    }

    // Shows the user, never the password.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (live, cooling) = self.engine.counts();
        let provider = match self.user() {
            Some(user) => format!("user={}", PyString::new(py, user).repr()?),
            None => "proxy_list=True".to_owned(),
        };
        Ok(format!(
            "Core(pool_size={}, live={live}, cooling={cooling}, {provider})",
            self.pool_size(),
        ))
    }
}

impl Core {
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    fn proxy(&self, number: i64) -> PyResult<Option<&Proxy>> {
        let slot = self.engine.slot(self.number(number)?)?;
        Ok(self
            .engine
            .config()
            .provider
            .list()
            .map(|list| list.get(slot)))
    }

    /// Python ints are unbounded; a negative number is out of range too.
    fn number(&self, number: i64) -> Result<u64, Error> {
        u64::try_from(number).map_err(|_| Error::IndexOutOfRange {
            index: number,
            pool_size: self.pool_size(),
        })
    }
}

#[derive(IntoPyObject)]
enum RestoreOutcome {
    Restored((u32, u32, u32, u32, u32)),
    Ignored(String),
}

/// Seconds since the Unix epoch as ns; 0 for a time before it (or not a number).
fn wall_ns(wall: f64) -> u64 {
    Duration::try_from_secs_f64(wall).map_or(0, crate::clock::saturating_ns)
}

/// `(number, retry_times, host)` of an attempt token (`meta["_hex_attempt"]`).
#[pyfunction]
pub fn attempt_of(token: &Bound<'_, PyAny>) -> PyResult<(u64, u32, Option<String>)> {
    let attempt = crate::python::attempt::attempt_of(token)?;
    Ok((attempt.number, attempt.retry_times, attempt.host))
}

/// `HEX_PROXY_GATEWAY` as `(scheme, host, port)`; `ValueError` naming the setting.
#[pyfunction]
pub fn parse_gateway(url: &str) -> PyResult<(String, String, u16)> {
    Ok(crate::provider::parse_gateway_url(url).map_err(Error::from)?)
}
