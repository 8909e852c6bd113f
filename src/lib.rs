//! Rust core of scrapy-hexproxy: the sticky-session pool, failure tracking, blacklist timing,
//! retry policy and stats. Plain Rust; the Python binding is the `python` feature.

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod identity;
pub mod ledger;
pub mod pool;
pub mod provider;
pub mod redact;
pub mod retry;
pub mod runs;
pub mod scope;
pub mod session;
pub mod settings;
pub mod shared;
pub mod slot_tree;
pub mod snapshot;
pub mod stats;
pub mod worst;

#[cfg(feature = "python")]
mod python;

/// Native core of scrapy_hexproxy: the session pool, retry policy and stats.
#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::python::core::{attempt_of, parse_gateway, Core};
    #[pymodule_export]
    use crate::python::hooks::{HookState, ProxyHooks, RetryHooks};
    #[pymodule_export]
    use crate::python::settings::PySetting;

    #[pymodule_export]
    const ATTEMPT_KEY: &str = crate::python::attempt::ATTEMPT;
    #[pymodule_export]
    const FAILED_KEY: &str = crate::python::attempt::FAILED;
    #[pymodule_export]
    const SESSION_KEY: &str = crate::python::attempt::SESSION;
    #[pymodule_export]
    const BAN_KEY: &str = crate::python::attempt::BAN;
    #[pymodule_export]
    const SWITCH_KEY: &str = crate::python::attempt::SWITCH;
    #[pymodule_export]
    const DEFAULT_USERNAME_TEMPLATE: &str = crate::provider::DEFAULT_TEMPLATE;
    #[pymodule_export]
    const MAX_PROXIES: usize = crate::provider::MAX_PROXIES;
    #[pymodule_export]
    const MAX_PROXY_FILE_BYTES: u64 = crate::provider::MAX_PROXY_FILE_BYTES;
    #[pymodule_export]
    const NOT_BEFORE_KEY: &str = crate::python::attempt::NOT_BEFORE;

    #[pymodule_export]
    const BLACKLISTED: u32 = crate::engine::BLACKLISTED;
    #[pymodule_export]
    const AUTH_FAILED: u32 = crate::engine::AUTH_FAILED;
    #[pymodule_export]
    const FAILED: u32 = crate::engine::FAILED;
    #[pymodule_export]
    const PROXY_REJECTED: u32 = crate::engine::PROXY_REJECTED;
    #[pymodule_export]
    const ROTATED: u32 = crate::engine::ROTATED;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("SETTINGS", crate::python::settings::table(m.py())?)
    }
}
