//! Errors of the core. Each message names what the user has to fix; none echoes the password.

use std::fmt;

/// A setting that cannot be used. The message names the setting, as the user wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    OutOfRange {
        setting: &'static str,
        min: i64,
        max: i64,
        got: i64,
    },
    Cooldown(f64),
    StatusCode {
        setting: &'static str,
        got: i64,
    },
    UserEmpty,
    UserHasColon,
    PasswordEmpty,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange {
                setting,
                min,
                max,
                got,
            } => write!(f, "{setting} must be between {min} and {max}, got {got}"),
            Self::Cooldown(got) => write!(
                f,
                "HEX_PROXY_BLACKLIST_COOLDOWN must be a finite number of seconds >= 0, got {got:?}"
            ),
            Self::StatusCode { setting, got } => write!(
                f,
                "{setting} must only hold HTTP status codes between 100 and 599, got {got}"
            ),
            Self::UserEmpty => f.write_str("HEX_PROXY_USER must not be empty"),
            // The value is not echoed: a ':' usually means "user:password" was pasted here.
            Self::UserHasColon => f.write_str(
                "HEX_PROXY_USER must not contain ':' (put the password in HEX_PROXY_PASS)",
            ),
            Self::PasswordEmpty => f.write_str("HEX_PROXY_PASS must not be empty"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Any error of the core; the binding maps each variant to one Python exception.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    Config(ConfigError),
    /// Only a manual clock can be moved by hand.
    ClockNotManual,
    /// A clock step that is negative, NaN or too large.
    InvalidAdvance(f64),
    IndexOutOfRange {
        index: i64,
        pool_size: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(err) => err.fmt(f),
            Self::ClockNotManual => f.write_str(
                "advance() needs a manual clock (create the Core with manual_clock=True)",
            ),
            Self::InvalidAdvance(got) => write!(
                f,
                "advance() takes a finite number of seconds >= 0, got {got:?}"
            ),
            Self::IndexOutOfRange { index, pool_size } => write!(
                f,
                "session index {index} is out of range for a pool of {pool_size} sessions"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Self::Config(err)
    }
}
