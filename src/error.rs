//! Errors of the core. Each message names what the user has to fix; none echoes the password.

use std::fmt;

use crate::provider::MAX_PROXIES;

/// A setting that cannot be used. The message names the setting, as the user wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    OutOfRange {
        setting: &'static str,
        min: i64,
        max: i64,
        got: i64,
    },
    /// A number of seconds that is negative, NaN or too large.
    Seconds {
        setting: &'static str,
        got: f64,
    },
    /// A number of seconds other than 0 below the setting's least.
    BelowLeast {
        setting: &'static str,
        least: f64,
        got: f64,
    },
    StatusCode {
        setting: &'static str,
        got: i64,
    },
    UserEmpty,
    UserHasColon,
    PasswordEmpty,
    /// A control character (CR, LF, ...) in a setting that goes into a header.
    ControlCharacter(&'static str),
    /// `HEX_PROXY_GATEWAY` is not `http(s)://host:port`. Never echoed: it may hold a password.
    GatewayUrl(EntryProblem),
    Template(TemplateProblem),
    /// An entry of the proxy list; `source` says which (`"HEX_PROXY_LIST entry 3"`). The
    /// entry itself is never echoed: it may hold a password, or a piece of one.
    ProxyEntry {
        source: String,
        problem: EntryProblem,
    },
    ProxyListEmpty,
    ProxyListTooLong,
    /// A word that is none of the setting's choices.
    Choice {
        setting: &'static str,
        choices: &'static [&'static str],
        got: String,
    },
    /// A setting that rotates session ids, with a proxy list.
    RotationWithList(&'static str),
    /// `HEX_PROXY_ON_BLACKLIST = "rotate"` with `HEX_PROXY_BAN_SCOPE = "domain"`.
    RotateWithDomainScope,
}

/// What is wrong with `HEX_PROXY_USERNAME_TEMPLATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    NoSession,
    Unknown(String),
    Unclosed,
    StrayBrace,
    Colon,
    Control,
}

/// What is wrong with an entry of the proxy list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryProblem {
    Empty,
    NoScheme,
    Scheme,
    Tail,
    NoPort,
    Port,
    Host,
    NoUser,
    UserHasColon,
    /// A control character (CR, LF, ...) in the user or password, after percent-decoding.
    Control,
    /// Credentials where there must be none (the gateway's URL).
    Credentials,
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
            Self::Seconds { setting, got } => write!(
                f,
                "{setting} must be a finite number of seconds >= 0, got {got:?}"
            ),
            Self::BelowLeast {
                setting,
                least,
                got,
            } => {
                let unit = if *least == 1.0 { "second" } else { "seconds" };
                write!(
                    f,
                    "{setting} must be 0 (off) or at least {least} {unit}, got {got:?}"
                )
            }
            Self::StatusCode { setting, got } => write!(
                f,
                "{setting} must only hold HTTP status codes between 100 and 599, got {got}"
            ),
            Self::UserEmpty => f.write_str("HEX_PROXY_USER must not be empty or blank"),
            // The value is not echoed: a ':' usually means "user:password" was pasted here.
            Self::UserHasColon => f.write_str(
                "HEX_PROXY_USER must not contain ':' (put the password in HEX_PROXY_PASS)",
            ),
            Self::PasswordEmpty => f.write_str("HEX_PROXY_PASS must not be empty"),
            // The value is not echoed: it may be the password.
            Self::ControlCharacter(setting) => write!(
                f,
                "{setting} must not contain control characters (CR, LF, tab, ...): the \
                 credentials travel in a header, which cannot carry them"
            ),
            Self::GatewayUrl(problem) => {
                f.write_str("HEX_PROXY_GATEWAY ")?;
                f.write_str(match problem {
                    EntryProblem::Empty => "is empty (expected 'http://host:port')",
                    EntryProblem::NoScheme | EntryProblem::Scheme => {
                        "must start with http:// or https:// (expected 'http://host:port')"
                    }
                    EntryProblem::Tail => {
                        "must be just scheme, host and port ('http://host:port'), without a \
                         path or query"
                    }
                    EntryProblem::NoPort => "has no port (expected 'http://host:port')",
                    EntryProblem::Port => "port must be a number between 1 and 65535",
                    EntryProblem::Host => {
                        "has no valid host: a name of letters, digits, '-' and '.', an IPv4 \
                         address or an [IPv6] address"
                    }
                    EntryProblem::NoUser
                    | EntryProblem::UserHasColon
                    | EntryProblem::Control
                    | EntryProblem::Credentials => {
                        "must not hold credentials: put them in HEX_PROXY_USER and \
                         HEX_PROXY_PASS and give the gateway as 'http://host:port'"
                    }
                })
            }
            Self::Template(problem) => write!(f, "HEX_PROXY_USERNAME_TEMPLATE {problem}"),
            Self::ProxyEntry { source, problem } => write!(f, "{source}: {problem}"),
            Self::ProxyListEmpty => {
                f.write_str("the proxy list (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE) holds no proxy")
            }
            Self::ProxyListTooLong => write!(
                f,
                "the proxy list (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE) holds more than the \
                 {MAX_PROXIES} proxies a list may hold"
            ),
            Self::Choice {
                setting,
                choices,
                got,
            } => {
                write!(f, "{setting} must be ")?;
                for (i, choice) in choices.iter().enumerate() {
                    let glue = match i {
                        0 => "",
                        _ if i + 1 == choices.len() => " or ",
                        _ => ", ",
                    };
                    write!(f, "{glue}{choice:?}")?;
                }
                write!(f, ", got {got:?}")
            }
            Self::RotationWithList(setting) => write!(
                f,
                "{setting} cannot be used with a proxy list (HEX_PROXY_LIST or \
                 HEX_PROXY_LIST_FILE): each listed proxy is one fixed identity, with no session \
                 id to rotate"
            ),
            Self::RotateWithDomainScope => f.write_str(
                "HEX_PROXY_ON_BLACKLIST = \"rotate\" cannot be combined with \
                 HEX_PROXY_BAN_SCOPE = \"domain\": a ban by one site would retire the session's \
                 id for every site, which is what domain scope avoids (use \"cooldown\", or \
                 the \"session\" scope)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSession => f.write_str(
                "must contain {session} (else every session is one identity at the gateway), \
                 e.g. \"{user}-session-{session}\"",
            ),
            Self::Unknown(name) => write!(
                f,
                "has an unknown placeholder {{{name}}}: only {{user}} and {{session}} (write {{{{ \
                 and }}}} for literal braces)"
            ),
            Self::Unclosed => f.write_str("has an unclosed '{' (write {{ for a literal brace)"),
            Self::StrayBrace => f.write_str("has a stray '}' (write }} for a literal brace)"),
            Self::Colon => {
                f.write_str("must not contain ':' (HTTP Basic ends the username at the first ':')")
            }
            Self::Control => f.write_str(
                "must not contain control characters (CR, LF, tab, ...): the username travels \
                 in a header, which cannot carry them",
            ),
        }
    }
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::NoScheme | Self::Scheme => {
                "must start with http:// or https:// (the proxies Scrapy can use), as in \
                 http://user:password@host:port"
            }
            Self::Tail => {
                "must have nothing after host:port (no path, query or fragment); in credentials, \
                 write '/', '?', '#' and '@' as %2F, %3F, %23 and %40"
            }
            Self::NoPort => "has no port (expected scheme://[user:password@]host:port)",
            Self::Port => "port must be a number between 1 and 65535",
            Self::Host => {
                "has no valid host (a name of letters, digits, '-' and '.', an IPv4 address or \
                 an [IPv6] address)"
            }
            Self::NoUser => {
                "has credentials without a user (expected scheme://user:password@host:port)"
            }
            Self::UserHasColon => "user must not contain ':' (after percent-decoding)",
            Self::Control => {
                "user and password must not contain control characters (CR, LF, tab, ...), \
                 after percent-decoding: a header cannot carry them"
            }
            Self::Credentials => "must not hold credentials",
        })
    }
}

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
