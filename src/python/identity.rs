//! Identity binding: a session's own cookie jar (`HEX_PROXY_BIND_COOKIEJAR`) and User-Agent
//! (`HEX_PROXY_USER_AGENTS`), which follow the attempt onto its session.

use std::collections::HashSet;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::identity::user_agent_index;

use super::attempt::SESSION;
use super::scrapy::Headers;

/// Scrapy's meta key of the cookie jar.
const COOKIEJAR: &str = "cookiejar";

/// The session's id is its cookie jar, unless the user chose the request's jar. A jar we chose
/// for an earlier attempt is the very object in `hex_session` (copies of a request share meta
/// values), so a retry moves to the new session's jar; any other is the user's. Call before
/// `hex_session` is overwritten.
pub fn bind_cookiejar(meta: &Bound<'_, PyDict>, id: &Bound<'_, PyString>) -> PyResult<()> {
    let py = meta.py();
    let key = intern!(py, COOKIEJAR);
    if let Some(jar) = meta.get_item(key)? {
        if !is_our_jar(meta, &jar)? {
            return Ok(());
        }
    }
    meta.set_item(key, id)
}

/// Takes off a cookie jar that binding set (`leave_alone`).
pub fn unbind_cookiejar(meta: &Bound<'_, PyDict>) -> PyResult<()> {
    let key = intern!(meta.py(), COOKIEJAR);
    if let Some(jar) = meta.get_item(key)? {
        if is_our_jar(meta, &jar)? {
            meta.del_item(key)?;
        }
    }
    Ok(())
}

fn is_our_jar(meta: &Bound<'_, PyDict>, jar: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(meta
        .get_item(intern!(meta.py(), SESSION))?
        .is_some_and(|id| jar.is(&id)))
}

/// The User-Agents sessions present, and which values a request may carry that are not the
/// user's own choice (so a session's User-Agent replaces them).
pub struct UserAgents {
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
    /// From the runtime's `user_agents` and `default_user_agent`; `None` when not set.
    pub fn new(runtime: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
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

    /// Gives the attempt the User-Agent of session `number`, unless the request carries one
    /// the user chose.
    pub fn present(&self, headers: &Headers<'_>, py: Python<'_>, number: u64) -> PyResult<()> {
        let name = self.header_name.bind(py);
        if let Some(current) = headers.value(name)? {
            if !self.replaceable.contains(&current) {
                return Ok(());
            }
        }
        let value = &self.values[user_agent_index(number, self.values.len())];
        headers.set(name, value.bind(py))
    }

    /// Takes off a User-Agent sessions present (`leave_alone`).
    pub fn remove(&self, headers: &Headers<'_>, py: Python<'_>) -> PyResult<()> {
        let name = self.header_name.bind(py);
        let ours = headers.value(name)?.is_some_and(|current| {
            self.values
                .iter()
                .any(|value| value.bind(py).as_bytes() == current)
        });
        if ours {
            headers.remove(name)?;
        }
        Ok(())
    }
}
