//! Rust core of scrapy-hexproxy: the sticky-session pool, failure tracking, blacklist timing,
//! retry policy and stats. Plain Rust; the Python binding is the `python` feature.

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod identity;
pub mod pool;
pub mod provider;
pub mod retry;
pub mod scope;
pub mod session;
pub mod settings;
pub mod slot_tree;
pub mod stats;

#[cfg(feature = "python")]
mod binding;
#[cfg(feature = "python")]
mod hooks;
#[cfg(feature = "python")]
mod settings_binding;
#[cfg(feature = "python")]
mod slots;

/// Native core of scrapy_hexproxy: the session pool, retry policy and stats.
#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::binding::Core;
    #[pymodule_export]
    use crate::hooks::{ProxyHooks, RetryHooks};
    #[pymodule_export]
    use crate::settings_binding::PySetting;

    #[pymodule_export]
    const ATTEMPT_KEY: &str = crate::hooks::ATTEMPT;
    #[pymodule_export]
    const FAILED_KEY: &str = crate::hooks::FAILED;
    #[pymodule_export]
    const SESSION_KEY: &str = crate::hooks::SESSION;
    #[pymodule_export]
    const BAN_KEY: &str = crate::hooks::BAN;
    #[pymodule_export]
    const SWITCH_KEY: &str = crate::hooks::SWITCH;
    #[pymodule_export]
    const DEFAULT_USERNAME_TEMPLATE: &str = crate::provider::DEFAULT_TEMPLATE;
    #[pymodule_export]
    const NOT_BEFORE_KEY: &str = crate::hooks::NOT_BEFORE;

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
    #[pymodule_export]
    const PASS: u32 = crate::retry::Decision::Pass as u32;
    #[pymodule_export]
    const RETRY: u32 = crate::retry::Decision::Retry as u32;
    #[pymodule_export]
    const GIVE_UP: u32 = crate::retry::Decision::GiveUp as u32;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("SETTINGS", crate::settings_binding::table(m.py())?)
    }
}
