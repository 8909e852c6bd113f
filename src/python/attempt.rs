//! The attempt's token and notes in `request.meta`: how the ledger's `Record` is kept on a
//! Scrapy request. The meta keys are exported to the Python side, so they are spelled only here.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::ledger::{Attempt, Record, RetryMeta};

/// Meta key of the attempt in flight (its token): the session number, which tells which id
/// of its slot the attempt went out on, and `retry_times` when it was sent. A first attempt
/// (no `retry_times`, or 0) in session scope carries the number alone, an int: that is every
/// request of a healthy crawl, and an int costs less to make and read than a tuple. Otherwise
/// `(number, retry_times)`, and in ban scope "domain" always `(number, retry_times, host)`.
pub const ATTEMPT: &str = "_hex_attempt";
/// Meta key of the session slots that already failed this request (a tuple: copies share it).
pub const FAILED: &str = "_hex_failed";
/// Meta key of the public session id of the attempt.
pub const SESSION: &str = "hex_session";
/// Meta key of a ban verdict waiting for the retry middleware: left when `ProxyHooks` settled
/// an attempt the ban policy called a ban (it saw the outcome first), taken off by
/// `RetryHooks`; a stale one is dropped when the next attempt starts.
pub const BAN: &str = "_hex_ban";
/// Meta key of the per-request switch: a falsy value other than None (`False`, `0`) leaves the
/// request alone.
pub const SWITCH: &str = "hex_proxy";
/// Meta key of a paced retry: the time on the core's clock before which it must not be sent.
pub const NOT_BEFORE: &str = "_hex_not_before";

/// The token of an attempt on session `number`; `retry_times`: the request's meta value, if
/// any; `host`: the target host in ban scope "domain".
pub fn token<'py>(
    py: Python<'py>,
    number: u64,
    retry_times: Option<Bound<'py, PyAny>>,
    host: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let number = number.into_pyobject(py)?.into_any();
    let first = match &retry_times {
        None => true,
        Some(times) => !times.is_truthy()?,
    };
    let retry_times = match retry_times {
        Some(times) => times,
        None => 0_u32.into_pyobject(py)?.into_any(),
    };
    Ok(match host {
        None if first => number,
        None => PyTuple::new(py, [number, retry_times])?.into_any(),
        Some(host) => PyTuple::new(
            py,
            [number, retry_times, PyString::new(py, host).into_any()],
        )?
        .into_any(),
    })
}

/// What a token records.
pub fn attempt_of(token: &Bound<'_, PyAny>) -> PyResult<Attempt> {
    let Ok(items) = token.cast::<PyTuple>() else {
        return Ok(Attempt {
            number: token.extract()?,
            retry_times: 0,
            host: None,
        });
    };
    Ok(Attempt {
        number: items.get_item(0)?.extract()?,
        retry_times: clamped(&items.get_item(1)?)?,
        host: match items.get_item(2) {
            Ok(host) => Some(host.extract()?),
            Err(_) => None,
        },
    })
}

/// Meta values are user data: a negative count means none, as in Scrapy.
fn clamped(value: &Bound<'_, PyAny>) -> PyResult<u32> {
    Ok(value.extract::<i64>()?.clamp(0, u32::MAX.into()) as u32)
}

/// Whether the request's `hex_proxy` meta switches the middlewares off: a falsy value other
/// than None (None reads as unset, the way `meta.get` would).
pub fn switched_off(meta: &Bound<'_, PyDict>) -> PyResult<bool> {
    match meta.get_item(intern!(meta.py(), SWITCH))? {
        Some(switch) => Ok(!switch.is_none() && !switch.is_truthy()?),
        None => Ok(false),
    }
}

/// Removes `key` from `meta`; whether it was there with a true value.
pub fn take_flag(meta: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<bool> {
    match meta.get_item(key)? {
        Some(value) => {
            meta.del_item(key)?;
            value.is_truthy()
        }
        None => Ok(false),
    }
}

/// The ledger's record of an attempt, kept in a request's meta.
pub struct MetaRecord<'a, 'py> {
    pub meta: &'a Bound<'py, PyDict>,
}

impl Record for MetaRecord<'_, '_> {
    type Error = PyErr;

    fn take_attempt(&mut self) -> PyResult<Option<Attempt>> {
        let key = intern!(self.meta.py(), ATTEMPT);
        let Some(token) = self.meta.get_item(key)? else {
            return Ok(None);
        };
        self.meta.del_item(key)?;
        attempt_of(&token).map(Some)
    }

    fn take_ban_note(&mut self) -> PyResult<bool> {
        take_flag(self.meta, intern!(self.meta.py(), BAN))
    }

    fn leave_ban_note(&mut self) -> PyResult<()> {
        self.meta.set_item(intern!(self.meta.py(), BAN), true)
    }

    fn note_failed(&mut self, slot: u32) -> PyResult<()> {
        let py = self.meta.py();
        let key = intern!(py, FAILED);
        let mut failed: Vec<u32> = match self.meta.get_item(key)? {
            Some(before) => before.extract()?,
            None => Vec::new(),
        };
        if !failed.contains(&slot) {
            failed.push(slot);
            // A new tuple: copies of the request made before share the old one.
            self.meta.set_item(key, PyTuple::new(py, failed)?)?;
        }
        Ok(())
    }

    fn retry_meta(&mut self) -> PyResult<RetryMeta> {
        let py = self.meta.py();
        let meta = self.meta;
        Ok(RetryMeta {
            dont_retry: match meta.get_item(intern!(py, "dont_retry"))? {
                Some(value) => value.is_truthy()?,
                None => false,
            },
            switched_off: switched_off(meta)?,
            retry_times: match meta.get_item(intern!(py, "retry_times"))? {
                Some(times) => clamped(&times)?,
                None => 0,
            },
            max_retry_times: match meta.get_item(intern!(py, "max_retry_times"))? {
                Some(times) if !times.is_none() => Some(clamped(&times)?),
                _ => None,
            },
        })
    }
}
