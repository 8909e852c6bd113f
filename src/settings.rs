//! Every `HEX_PROXY_*` setting, declared once: name, kind (type and bounds), default and what
//! it does. The core validates with these bounds, `Settings::documented` is made of these
//! defaults, and the Python package reads `_core.SETTINGS` (this table) to convert the Scrapy
//! settings, fill in defaults, build `Core` and check the README's table. Scrapy's
//! `default_settings.py` is the model; the table is in Rust because the core checks most of
//! the values, and a bound must live where it is checked.

use std::time::Duration;

use crate::error::ConfigError;
use crate::pool::MAX_FAILURES;
use crate::provider::DEFAULT_TEMPLATE;

/// One setting.
#[derive(Debug)]
pub struct Setting {
    pub name: &'static str,
    /// The keyword `Core(...)` takes it by; `None`: the Python package alone reads it.
    pub key: Option<&'static str>,
    pub kind: Kind,
    pub default: Default,
    /// A setting whose value stands in while this one is unset (Scrapy's own).
    pub fallback: Option<&'static str>,
    pub doc: &'static str,
}

/// What a value must be. The numeric bounds and the choices are checked by the core (`check_*`
/// below); the Python reader converts by kind and checks the kinds only it can read.
#[derive(Debug)]
pub enum Kind {
    /// `True` / `False` (or a string or 0/1 that says so).
    Bool,
    /// A whole number in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A finite number of seconds: 0, or at least `least` (0.0: any number >= 0).
    Seconds {
        least: f64,
    },
    /// A list of HTTP statuses 100..=599.
    Codes,
    /// One of these words, ignoring case.
    Choice(&'static [&'static str]),
    Text,
    /// `http(s)://host:port`, parsed by the core (`provider::parse_gateway_url`).
    Gateway,
    /// Proxy URLs: a list, or one string cut at commas and whitespace.
    ProxyList,
    /// The path of a file of proxy URLs, one a line.
    ProxyFile,
    /// User-Agent strings: a list, or one string with one a line.
    UserAgents,
    /// A ban policy class, or its import path.
    BanPolicy,
}

impl Kind {
    /// The kind's name in Python (`Setting.kind`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int { .. } => "int",
            Self::Seconds { .. } => "seconds",
            Self::Codes => "codes",
            Self::Choice(_) => "choice",
            Self::Text => "text",
            Self::Gateway => "gateway",
            Self::ProxyList => "proxy_list",
            Self::ProxyFile => "proxy_file",
            Self::UserAgents => "user_agents",
            Self::BanPolicy => "ban_policy",
        }
    }
}

/// The value a setting has while the user leaves it unset.
#[derive(Debug)]
pub enum Default {
    /// None: the feature is off, or the setting is one of two ways to give something.
    Unset,
    /// None, and the crawl needs a value (with the gateway).
    Required,
    Bool(bool),
    Int(i64),
    Seconds(f64),
    Codes(&'static [i64]),
    Text(&'static str),
}

const UNBOUNDED: i64 = u32::MAX as i64;

pub const ENABLED: Setting = Setting {
    name: "HEX_PROXY_ENABLED",
    key: None,
    kind: Kind::Bool,
    default: Default::Bool(true),
    fallback: None,
    doc: "False: both middlewares switch themselves off",
};
pub const GATEWAY: Setting = Setting {
    name: "HEX_PROXY_GATEWAY",
    key: None,
    kind: Kind::Gateway,
    default: Default::Required,
    fallback: None,
    doc: "the gateway, http://host:port or https://host:port, without credentials",
};
pub const USER: Setting = Setting {
    name: "HEX_PROXY_USER",
    key: Some("user"),
    kind: Kind::Text,
    default: Default::Required,
    fallback: None,
    doc: "the gateway's user",
};
pub const PASSWORD: Setting = Setting {
    name: "HEX_PROXY_PASS",
    key: Some("password"),
    kind: Kind::Text,
    default: Default::Required,
    fallback: None,
    doc: "the gateway's password",
};
pub const USERNAME_TEMPLATE: Setting = Setting {
    name: "HEX_PROXY_USERNAME_TEMPLATE",
    key: Some("username_template"),
    kind: Kind::Text,
    default: Default::Text(DEFAULT_TEMPLATE),
    fallback: None,
    doc: "how the gateway username is made of {user} and {session}",
};
pub const LIST: Setting = Setting {
    name: "HEX_PROXY_LIST",
    key: None,
    kind: Kind::ProxyList,
    default: Default::Unset,
    fallback: None,
    doc: "instead of the gateway: your proxies, each one session",
};
pub const LIST_FILE: Setting = Setting {
    name: "HEX_PROXY_LIST_FILE",
    key: None,
    kind: Kind::ProxyFile,
    default: Default::Unset,
    fallback: None,
    doc: "instead of the gateway: a UTF-8 file of proxies, one a line",
};
pub const POOL_SIZE: Setting = Setting {
    name: "HEX_PROXY_SESSION_POOL_SIZE",
    key: Some("pool_size"),
    kind: Kind::Int {
        min: 1,
        max: 10_000_000,
    },
    default: Default::Int(20),
    fallback: None,
    doc: "number of sessions (with a list: the number of different proxies)",
};
pub const MAX_FAILURES_SETTING: Setting = Setting {
    name: "HEX_PROXY_MAX_FAILURES",
    key: Some("max_failures"),
    kind: Kind::Int {
        min: 1,
        max: MAX_FAILURES as i64,
    },
    default: Default::Int(5),
    fallback: None,
    doc: "consecutive failures that blacklist a session",
};
pub const COOLDOWN: Setting = Setting {
    name: "HEX_PROXY_BLACKLIST_COOLDOWN",
    key: Some("cooldown"),
    kind: Kind::Seconds { least: 0.0 },
    default: Default::Seconds(300.0),
    fallback: None,
    doc: "seconds a blacklisted session rests",
};
pub const MAX_RETRIES: Setting = Setting {
    name: "HEX_PROXY_MAX_RETRIES",
    key: Some("max_retries"),
    kind: Kind::Int { min: 0, max: 1000 },
    default: Default::Int(4),
    fallback: None,
    doc: "retries per request (max_retry_times in meta overrides)",
};
pub const RETRY_CODES: Setting = Setting {
    name: "HEX_PROXY_RETRY_CODES",
    key: Some("retry_codes"),
    kind: Kind::Codes,
    default: Default::Codes(&[403, 407, 408, 429, 500, 502, 503, 504]),
    fallback: None,
    doc: "statuses that are retried",
};
pub const FAILURE_CODES: Setting = Setting {
    name: "HEX_PROXY_FAILURE_CODES",
    key: Some("failure_codes"),
    kind: Kind::Codes,
    default: Default::Codes(&DEFAULT_FAILURE_CODES),
    fallback: None,
    doc: "statuses that count against the session",
};
pub const AUTH_FAILURES_TO_CLOSE: Setting = Setting {
    name: "HEX_PROXY_AUTH_FAILURES_TO_CLOSE",
    key: Some("auth_failures_to_close"),
    kind: Kind::Int {
        min: 1,
        max: UNBOUNDED,
    },
    default: Default::Int(3),
    fallback: None,
    doc: "consecutive 407s (no success between) that stop the crawl",
};
pub const BACKOFF_BASE: Setting = Setting {
    name: "HEX_PROXY_RETRY_BACKOFF_BASE",
    key: Some("backoff_base"),
    kind: Kind::Seconds { least: 0.0 },
    default: Default::Seconds(0.0),
    fallback: None,
    doc: "seconds; above 0 retries are paced (full jitter); 0 = off",
};
pub const BACKOFF_MAX: Setting = Setting {
    name: "HEX_PROXY_RETRY_BACKOFF_MAX",
    key: Some("backoff_max"),
    kind: Kind::Seconds { least: 0.0 },
    default: Default::Seconds(60.0),
    fallback: None,
    doc: "seconds: the longest a paced retry waits, Retry-After included",
};
pub const RETRY_PRIORITY_ADJUST: Setting = Setting {
    name: "HEX_PROXY_RETRY_PRIORITY_ADJUST",
    key: None,
    kind: Kind::Int {
        min: i64::MIN,
        max: i64::MAX,
    },
    default: Default::Int(-1),
    fallback: Some("RETRY_PRIORITY_ADJUST"),
    doc: "added to a retry's priority (priority_adjust in meta overrides)",
};
pub const ON_BLACKLIST: Setting = Setting {
    name: "HEX_PROXY_ON_BLACKLIST",
    key: Some("on_blacklist"),
    kind: Kind::Choice(&["cooldown", "rotate"]),
    default: Default::Text("cooldown"),
    fallback: None,
    doc: "rotate: a blacklisted session's place takes a new session id at once",
};
pub const SESSION_MAX_USES: Setting = Setting {
    name: "HEX_PROXY_SESSION_MAX_USES",
    key: Some("session_max_uses"),
    kind: Kind::Int {
        min: 0,
        max: UNBOUNDED,
    },
    default: Default::Int(0),
    fallback: None,
    doc: "hand-outs after which a session id is rotated; 0 = never",
};
pub const SESSION_MAX_AGE: Setting = Setting {
    name: "HEX_PROXY_SESSION_MAX_AGE",
    key: Some("session_max_age"),
    kind: Kind::Seconds { least: 0.0 },
    default: Default::Seconds(0.0),
    fallback: None,
    doc: "seconds from a session id's first use after which it is rotated; 0 = never",
};
pub const BAN_SCOPE: Setting = Setting {
    name: "HEX_PROXY_BAN_SCOPE",
    key: Some("ban_scope"),
    kind: Kind::Choice(&["session", "domain"]),
    default: Default::Text("session"),
    fallback: None,
    doc: "domain: failures and blacklists are kept per (session, target host)",
};
pub const BIND_COOKIEJAR: Setting = Setting {
    name: "HEX_PROXY_BIND_COOKIEJAR",
    key: None,
    kind: Kind::Bool,
    default: Default::Bool(false),
    fallback: None,
    doc: "each session id has its own cookie jar",
};
pub const USER_AGENTS: Setting = Setting {
    name: "HEX_PROXY_USER_AGENTS",
    key: None,
    kind: Kind::UserAgents,
    default: Default::Unset,
    fallback: None,
    doc: "User-Agents; each session id always presents the same one of them",
};
pub const LOGSTATS_INTERVAL: Setting = Setting {
    name: "HEX_PROXY_LOGSTATS_INTERVAL",
    key: None,
    // Below a second the log is flooded (1e-9 wrote 20,000 lines in 9 s).
    kind: Kind::Seconds { least: 1.0 },
    default: Default::Seconds(60.0),
    fallback: None,
    doc: "seconds between pool-health lines in the log; 0: none",
};
pub const GATEWAY_DOWN_TIMEOUT: Setting = Setting {
    name: "HEX_PROXY_GATEWAY_DOWN_TIMEOUT",
    key: None,
    kind: Kind::Seconds { least: 0.0 },
    default: Default::Seconds(60.0),
    fallback: None,
    doc: "seconds the gateway may stay unreachable before the crawl closes; 0: wait for ever",
};
pub const REDIS_URL: Setting = Setting {
    name: "HEX_PROXY_REDIS_URL",
    key: None,
    kind: Kind::Text,
    default: Default::Unset,
    fallback: None,
    doc: "`redis://[user:password@]host:port/db` or `rediss://…`: one pool state shared by \
          every process that uses it (needs the `redis` package); unset: this process alone",
};
pub const REDIS_KEY: Setting = Setting {
    name: "HEX_PROXY_REDIS_KEY",
    key: None,
    kind: Kind::Text,
    default: Default::Unset,
    fallback: None,
    doc: "name of the shared state in Redis; unset: derived from the gateway's host:port \
          and user (or the list's proxies) and the pool's configuration, never a password",
};
pub const BAN_POLICY: Setting = Setting {
    name: "HEX_PROXY_BAN_POLICY",
    key: None,
    kind: Kind::BanPolicy,
    default: Default::Unset,
    fallback: None,
    doc: "a ban policy class or its import path; unset: the core's status and exception rules",
};
pub const MANUAL_CLOCK: Setting = Setting {
    name: "HEX_PROXY_MANUAL_CLOCK",
    key: Some("manual_clock"),
    kind: Kind::Bool,
    default: Default::Bool(false),
    fallback: None,
    doc: "testing: the core's clock only moves when a test moves it",
};
pub const SEED: Setting = Setting {
    name: "HEX_PROXY_SEED",
    key: Some("seed"),
    kind: Kind::Int {
        min: 0,
        max: i64::MAX,
    },
    default: Default::Unset,
    fallback: None,
    doc: "testing: seed the session picker for reproducible runs",
};

/// Every setting, in the README's order.
pub static SETTINGS: &[Setting] = &[
    ENABLED,
    GATEWAY,
    USER,
    PASSWORD,
    USERNAME_TEMPLATE,
    LIST,
    LIST_FILE,
    POOL_SIZE,
    MAX_FAILURES_SETTING,
    COOLDOWN,
    MAX_RETRIES,
    RETRY_CODES,
    FAILURE_CODES,
    AUTH_FAILURES_TO_CLOSE,
    BACKOFF_BASE,
    BACKOFF_MAX,
    RETRY_PRIORITY_ADJUST,
    ON_BLACKLIST,
    SESSION_MAX_USES,
    SESSION_MAX_AGE,
    BAN_SCOPE,
    BIND_COOKIEJAR,
    USER_AGENTS,
    LOGSTATS_INTERVAL,
    GATEWAY_DOWN_TIMEOUT,
    REDIS_URL,
    REDIS_KEY,
    BAN_POLICY,
    MANUAL_CLOCK,
    SEED,
];

/// 403, 407, 429 and every 5xx.
const DEFAULT_FAILURE_CODES: [i64; 103] = {
    let mut codes = [0; 103];
    codes[0] = 403;
    codes[1] = 407;
    codes[2] = 429;
    let mut i = 3;
    while i < 103 {
        codes[i] = 500 + (i as i64 - 3);
        i += 1;
    }
    codes
};

impl Setting {
    /// The setting of this name, if there is one.
    pub fn named(name: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|setting| setting.name == name)
    }

    pub const fn default_int(&self) -> i64 {
        match self.default {
            Default::Int(value) => value,
            _ => panic!("not an int setting"),
        }
    }

    pub const fn default_seconds(&self) -> f64 {
        match self.default {
            Default::Seconds(value) => value,
            _ => panic!("not a seconds setting"),
        }
    }

    pub fn default_codes(&self) -> &'static [i64] {
        match self.default {
            Default::Codes(codes) => codes,
            _ => panic!("not a codes setting"),
        }
    }

    pub fn default_text(&self) -> &'static str {
        match self.default {
            Default::Text(text) => text,
            _ => panic!("not a text setting"),
        }
    }

    pub const fn bounds(&self) -> Option<(i64, i64)> {
        match self.kind {
            Kind::Int { min, max } => Some((min, max)),
            _ => None,
        }
    }

    /// `got`, when it is within the setting's bounds.
    pub fn check_int(&self, got: i64) -> Result<i64, ConfigError> {
        let (min, max) = self.bounds().expect("an int setting");
        if (min..=max).contains(&got) {
            Ok(got)
        } else {
            Err(ConfigError::OutOfRange {
                setting: self.name,
                min,
                max,
                got,
            })
        }
    }

    /// `got` as a `u32`, for the settings whose bounds fit one.
    pub fn check_u32(&self, got: i64) -> Result<u32, ConfigError> {
        let (min, max) = self.bounds().expect("an int setting");
        debug_assert!(min >= 0 && max <= UNBOUNDED);
        Ok(self.check_int(got)? as u32)
    }

    /// `got`, when it is a number of seconds a `Duration` holds (finite and not negative) and,
    /// unless 0, not below the setting's least.
    pub fn check_seconds(&self, got: f64) -> Result<Duration, ConfigError> {
        let Kind::Seconds { least } = self.kind else {
            panic!("not a seconds setting")
        };
        let seconds = Duration::try_from_secs_f64(got).map_err(|_| ConfigError::Seconds {
            setting: self.name,
            got,
        })?;
        if got != 0.0 && got < least {
            return Err(ConfigError::BelowLeast {
                setting: self.name,
                least,
                got,
            });
        }
        Ok(seconds)
    }

    /// The position among the setting's choices of `got`, ignoring case.
    pub fn check_choice(&self, got: &str) -> Result<usize, ConfigError> {
        let Kind::Choice(choices) = self.kind else {
            panic!("not a choice setting")
        };
        choices
            .iter()
            .position(|choice| choice.eq_ignore_ascii_case(got))
            .ok_or_else(|| ConfigError::Choice {
                setting: self.name,
                choices,
                got: got.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_default_fits_its_kind() {
        for (i, setting) in SETTINGS.iter().enumerate() {
            assert!(setting.name.starts_with("HEX_PROXY_"), "{}", setting.name);
            assert!(
                SETTINGS[..i].iter().all(|s| s.name != setting.name),
                "{} twice",
                setting.name
            );
            match (&setting.kind, &setting.default) {
                (_, Default::Unset | Default::Required) | (Kind::Bool, Default::Bool(_)) => {}
                (Kind::Int { .. }, Default::Int(value)) => {
                    setting.check_int(*value).unwrap();
                }
                (Kind::Seconds { .. }, Default::Seconds(value)) => {
                    setting.check_seconds(*value).unwrap();
                }
                (Kind::Codes, Default::Codes(codes)) => {
                    assert!(codes.iter().all(|code| (100..=599).contains(code)));
                }
                (Kind::Choice(_), Default::Text(word)) => {
                    assert_eq!(setting.check_choice(word).unwrap(), 0);
                }
                (Kind::Text, Default::Text(_)) => {}
                (kind, default) => panic!("{}: {default:?} for {kind:?}", setting.name),
            }
        }
        assert_eq!(Setting::named("HEX_PROXY_SEED").unwrap().key, Some("seed"));
        assert!(Setting::named("HEX_PROXY_SEEDS").is_none());
    }

    #[test]
    fn the_failure_codes_are_403_407_429_and_every_5xx() {
        let mut expected = vec![403, 407, 429];
        expected.extend(500..=599);
        assert_eq!(FAILURE_CODES.default_codes(), expected);
    }

    #[test]
    fn the_log_interval_is_0_or_at_least_a_second() {
        assert_eq!(
            LOGSTATS_INTERVAL
                .check_seconds(1e-9)
                .unwrap_err()
                .to_string(),
            "HEX_PROXY_LOGSTATS_INTERVAL must be 0 (off) or at least 1 second, got 1e-9"
        );
        assert!(LOGSTATS_INTERVAL.check_seconds(0.999).is_err());
        for fine in [0.0, 1.0, 2.5, 3600.0] {
            assert!(LOGSTATS_INTERVAL.check_seconds(fine).is_ok(), "{fine}");
        }
        assert!(COOLDOWN.check_seconds(1e-9).is_ok());
    }

    #[test]
    fn choices_ignore_case_and_name_every_word_when_wrong() {
        assert_eq!(BAN_SCOPE.check_choice("Domain"), Ok(1));
        assert_eq!(
            ON_BLACKLIST.check_choice("x").unwrap_err().to_string(),
            "HEX_PROXY_ON_BLACKLIST must be \"cooldown\" or \"rotate\", got \"x\""
        );
    }
}
