//! Settings as the user wrote them, and the validated `Config` the engine runs on.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::identity::OnBlacklist;
use crate::provider::{Entry, Gateway, Provider, ProxyList};
use crate::redact::Redactor;
use crate::scope::BanScope;
use crate::settings as setting;

const FIRST_STATUS: u16 = 100;
const LAST_STATUS: u16 = 599;

/// The raw values, wide enough to hold whatever the user typed (negative numbers included) so
/// that `validate` can name the setting that is wrong.
#[derive(Clone)]
pub struct Settings {
    pub pool_size: i64,
    pub max_failures: i64,
    pub cooldown: f64,
    pub max_retries: i64,
    pub retry_codes: Vec<i64>,
    pub failure_codes: Vec<i64>,
    pub auth_failures_to_close: i64,
    pub user: String,
    pub password: String,
    /// How the gateway username is made of the user and the session id.
    pub username_template: String,
    /// The proxy list instead of the gateway (`user`, `password`, the template and `pool_size`
    /// are then not used): `(source, entry)`, source naming it in errors.
    pub proxies: Option<Vec<Entry>>,
    /// Seconds; 0 switches retry pacing off.
    pub backoff_base: f64,
    pub backoff_max: f64,
    pub on_blacklist: String,
    pub session_max_uses: i64,
    pub session_max_age: f64,
    pub ban_scope: String,
}

/// A validated configuration; only `Settings::validate` makes one.
#[derive(Debug, Clone)]
pub struct Config {
    pub pool_size: u32,
    pub max_failures: u32,
    pub cooldown: Duration,
    pub max_retries: u32,
    pub retry_codes: StatusSet,
    pub failure_codes: StatusSet,
    pub auth_failures_to_close: u32,
    pub provider: Provider,
    /// Retry pacing; `None` when `HEX_PROXY_RETRY_BACKOFF_BASE` is 0 (off).
    pub backoff: Option<Backoff>,
    pub blacklisting: Blacklisting,
    /// Hand-outs after which an id is rotated; 0 = never.
    pub max_uses: u32,
    /// Age (from its first hand-out) at which an id is rotated; zero = never.
    pub max_age: Duration,
    /// Takes the provider's passwords out of text we log or raise.
    pub redactor: Redactor,
}

/// What failures are kept against and what a blacklist does (`HEX_PROXY_BAN_SCOPE` with
/// `HEX_PROXY_ON_BLACKLIST`): only the combinations the settings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blacklisting {
    /// A session, whatever the target: it cools down, or its slot takes a new id.
    Session(OnBlacklist),
    /// A (session, target host) pair: it cools down for that host. Never a new id: a ban is
    /// one site's, and rotating the id on it would end the session for every site.
    Domain,
}

impl Blacklisting {
    pub fn scope(self) -> BanScope {
        match self {
            Self::Session(_) => BanScope::Session,
            Self::Domain => BanScope::Domain,
        }
    }

    pub fn on_blacklist(self) -> OnBlacklist {
        match self {
            Self::Session(on_blacklist) => on_blacklist,
            Self::Domain => OnBlacklist::Cooldown,
        }
    }
}

impl Config {
    /// The first setting that makes session ids rotate, if any does.
    pub fn rotation_setting(&self) -> Option<&'static str> {
        if self.blacklisting == Blacklisting::Session(OnBlacklist::Rotate) {
            Some("HEX_PROXY_ON_BLACKLIST = \"rotate\"")
        } else if self.max_uses > 0 {
            Some("HEX_PROXY_SESSION_MAX_USES")
        } else if !self.max_age.is_zero() {
            Some("HEX_PROXY_SESSION_MAX_AGE")
        } else {
            None
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let provider = match &self.proxies {
            None => Provider::Gateway(self.gateway()?),
            Some(entries) => Provider::List(ProxyList::parse(entries)?),
        };
        let redactor = provider.redactor();
        let config = Config {
            // A list's proxies are its sessions.
            pool_size: match &provider {
                Provider::Gateway(_) => setting::POOL_SIZE.check_u32(self.pool_size)?,
                Provider::List(list) => list.len(),
            },
            max_failures: setting::MAX_FAILURES_SETTING.check_u32(self.max_failures)?,
            cooldown: setting::COOLDOWN.check_seconds(self.cooldown)?,
            max_retries: setting::MAX_RETRIES.check_u32(self.max_retries)?,
            retry_codes: StatusSet::from_codes(setting::RETRY_CODES.name, &self.retry_codes)?,
            failure_codes: StatusSet::from_codes(setting::FAILURE_CODES.name, &self.failure_codes)?,
            auth_failures_to_close: setting::AUTH_FAILURES_TO_CLOSE
                .check_u32(self.auth_failures_to_close)?,
            provider,
            backoff: self.backoff()?,
            blacklisting: self.blacklisting()?,
            max_uses: setting::SESSION_MAX_USES.check_u32(self.session_max_uses)?,
            max_age: setting::SESSION_MAX_AGE.check_seconds(self.session_max_age)?,
            redactor,
        };
        // A listed proxy is one fixed identity: there is no session id to rotate.
        if let (Some(_), Some(setting)) = (config.provider.list(), config.rotation_setting()) {
            return Err(ConfigError::RotationWithList(setting));
        }
        Ok(config)
    }

    fn blacklisting(&self) -> Result<Blacklisting, ConfigError> {
        // In the order of the settings' choices.
        let on_blacklist = [OnBlacklist::Cooldown, OnBlacklist::Rotate]
            [setting::ON_BLACKLIST.check_choice(&self.on_blacklist)?];
        match setting::BAN_SCOPE.check_choice(&self.ban_scope)? {
            0 => Ok(Blacklisting::Session(on_blacklist)),
            _ if on_blacklist == OnBlacklist::Rotate => Err(ConfigError::RotateWithDomainScope),
            _ => Ok(Blacklisting::Domain),
        }
    }

    fn gateway(&self) -> Result<Gateway, ConfigError> {
        if self.user.trim().is_empty() {
            return Err(ConfigError::UserEmpty);
        }
        if self.user.contains(':') {
            return Err(ConfigError::UserHasColon);
        }
        if self.password.is_empty() {
            return Err(ConfigError::PasswordEmpty);
        }
        for (setting, text) in [
            (setting::USER.name, &self.user),
            (setting::PASSWORD.name, &self.password),
        ] {
            if text.chars().any(char::is_control) {
                return Err(ConfigError::ControlCharacter(setting));
            }
        }
        Gateway::new(
            self.user.clone(),
            self.password.clone(),
            &self.username_template,
        )
    }

    fn backoff(&self) -> Result<Option<Backoff>, ConfigError> {
        // Both checked even while pacing is off, so a typo does not wait for the day it is used.
        setting::BACKOFF_BASE.check_seconds(self.backoff_base)?;
        setting::BACKOFF_MAX.check_seconds(self.backoff_max)?;
        let (base, max) = (self.backoff_base, self.backoff_max);
        Ok((base > 0.0).then(|| Backoff::new(base, max)))
    }
}

/// A set of HTTP statuses 100..=599 as a 512-bit bitset: membership is one shift and mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 8]);

impl StatusSet {
    pub fn from_codes(setting: &'static str, codes: &[i64]) -> Result<Self, ConfigError> {
        let mut set = Self::default();
        for &code in codes {
            let status = u16::try_from(code)
                .ok()
                .filter(|s| (FIRST_STATUS..=LAST_STATUS).contains(s))
                .ok_or(ConfigError::StatusCode { setting, got: code })?;
            let bit = usize::from(status - FIRST_STATUS);
            set.0[bit / 64] |= 1 << (bit % 64);
        }
        Ok(set)
    }

    pub fn contains(&self, status: u16) -> bool {
        if !(FIRST_STATUS..=LAST_STATUS).contains(&status) {
            return false;
        }
        let bit = usize::from(status - FIRST_STATUS);
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

impl Settings {
    /// The declared defaults (`setting::SETTINGS`, the README's table) with these credentials.
    pub fn documented(user: &str, password: &str) -> Self {
        Settings {
            pool_size: setting::POOL_SIZE.default_int(),
            max_failures: setting::MAX_FAILURES_SETTING.default_int(),
            cooldown: setting::COOLDOWN.default_seconds(),
            max_retries: setting::MAX_RETRIES.default_int(),
            retry_codes: setting::RETRY_CODES.default_codes().to_vec(),
            failure_codes: setting::FAILURE_CODES.default_codes().to_vec(),
            auth_failures_to_close: setting::AUTH_FAILURES_TO_CLOSE.default_int(),
            user: user.into(),
            password: password.into(),
            username_template: setting::USERNAME_TEMPLATE.default_text().into(),
            proxies: None,
            backoff_base: setting::BACKOFF_BASE.default_seconds(),
            backoff_max: setting::BACKOFF_MAX.default_seconds(),
            on_blacklist: setting::ON_BLACKLIST.default_text().into(),
            session_max_uses: setting::SESSION_MAX_USES.default_int(),
            session_max_age: setting::SESSION_MAX_AGE.default_seconds(),
            ban_scope: setting::BAN_SCOPE.default_text().into(),
        }
    }
}

/// The documented defaults with example credentials, for tests across the crate.
#[cfg(test)]
pub(crate) fn example_settings() -> Settings {
    Settings::documented("USER", "s3cret-PASS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    fn error_of(change: impl FnOnce(&mut Settings)) -> String {
        let mut settings = example_settings();
        change(&mut settings);
        let message = settings.validate().unwrap_err().to_string();
        assert!(!message.contains("s3cret"), "{message}");
        message
    }

    #[test]
    fn documented_defaults_are_valid() {
        let config = example_settings().validate().unwrap();
        assert_eq!(config.pool_size, 20);
        assert_eq!(config.cooldown, Duration::from_secs(300));
        assert!(config.failure_codes.contains(429));
        assert!(config.failure_codes.contains(599));
        assert!(!config.failure_codes.contains(404));
        assert!(config.retry_codes.contains(408));
        assert!(!config.retry_codes.contains(501));
        assert_eq!(
            config.blacklisting,
            Blacklisting::Session(OnBlacklist::Cooldown)
        );
        assert_eq!((config.max_uses, config.max_age), (0, Duration::ZERO));
    }

    #[test]
    fn ban_scope_is_session_or_domain() {
        assert_eq!(
            error_of(|s| s.ban_scope = "host".into()),
            "HEX_PROXY_BAN_SCOPE must be \"session\" or \"domain\", got \"host\""
        );
        let mut settings = example_settings();
        settings.ban_scope = "Domain".into();
        assert_eq!(
            settings.validate().unwrap().blacklisting,
            Blacklisting::Domain
        );
        // Rotation for age or uses goes with domain scope (the new id starts clean everywhere).
        settings.session_max_uses = 10;
        settings.session_max_age = 60.0;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn rotate_on_blacklist_with_domain_scope_is_an_error_naming_both() {
        let message = error_of(|s| {
            s.ban_scope = "domain".into();
            s.on_blacklist = "rotate".into();
        });
        assert!(
            message.contains("HEX_PROXY_ON_BLACKLIST = \"rotate\""),
            "{message}"
        );
        assert!(
            message.contains("HEX_PROXY_BAN_SCOPE = \"domain\""),
            "{message}"
        );
    }

    #[test]
    fn identity_settings_are_checked_and_named() {
        assert_eq!(
            error_of(|s| s.on_blacklist = "Rotate!".into()),
            "HEX_PROXY_ON_BLACKLIST must be \"cooldown\" or \"rotate\", got \"Rotate!\""
        );
        assert!(error_of(|s| s.session_max_uses = -1)
            .starts_with("HEX_PROXY_SESSION_MAX_USES must be between 0 and 4294967295"));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(error_of(|s| s.session_max_age = bad)
                .starts_with("HEX_PROXY_SESSION_MAX_AGE must be a finite number of seconds"));
        }
        let mut settings = example_settings();
        settings.on_blacklist = "Rotate".into();
        settings.session_max_uses = 50;
        settings.session_max_age = 599.5;
        let config = settings.validate().unwrap();
        assert_eq!(
            config.blacklisting,
            Blacklisting::Session(OnBlacklist::Rotate)
        );
        assert_eq!(config.max_uses, 50);
        assert_eq!(config.max_age, Duration::from_millis(599_500));
    }

    #[test]
    fn pool_size_range_is_named() {
        assert_eq!(
            error_of(|s| s.pool_size = 0),
            "HEX_PROXY_SESSION_POOL_SIZE must be between 1 and 10000000, got 0"
        );
        assert!(error_of(|s| s.pool_size = 10_000_001).starts_with("HEX_PROXY_SESSION_POOL_SIZE"));
        let mut settings = example_settings();
        settings.pool_size = 10_000_000;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn counts_must_be_positive() {
        assert!(error_of(|s| s.max_failures = 0).starts_with("HEX_PROXY_MAX_FAILURES must be"));
        assert!(error_of(|s| s.max_failures = -3).ends_with("got -3"));
        assert!(error_of(|s| s.max_failures = 65_536).contains("65535"));
        assert!(error_of(|s| s.auth_failures_to_close = 0)
            .starts_with("HEX_PROXY_AUTH_FAILURES_TO_CLOSE must be"));
        assert!(error_of(|s| s.max_retries = -1).starts_with("HEX_PROXY_MAX_RETRIES must be"));
        assert!(error_of(|s| s.max_retries = 1001).contains("between 0 and 1000"));
        let mut settings = example_settings();
        settings.max_retries = 0;
        assert_eq!(settings.validate().unwrap().max_retries, 0);
    }

    #[test]
    fn cooldown_must_be_finite_and_not_negative() {
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(error_of(|s| s.cooldown = bad).starts_with("HEX_PROXY_BLACKLIST_COOLDOWN"));
        }
        let mut settings = example_settings();
        settings.cooldown = 0.25;
        assert_eq!(
            settings.validate().unwrap().cooldown,
            Duration::from_millis(250)
        );
        settings.cooldown = 0.0;
        assert_eq!(settings.validate().unwrap().cooldown, Duration::ZERO);
    }

    #[test]
    fn backoff_is_off_at_base_zero_and_both_settings_are_checked() {
        let config = example_settings().validate().unwrap();
        assert_eq!(config.backoff, None);
        let mut settings = example_settings();
        settings.backoff_base = 0.5;
        settings.backoff_max = 0.0;
        assert_eq!(
            settings.validate().unwrap().backoff,
            Some(Backoff::new(0.5, 0.0))
        );
        for bad in [-1.0, -0.0001, f64::NAN, f64::INFINITY, 1e300] {
            assert_eq!(
                error_of(|s| s.backoff_base = bad),
                format!(
                    "HEX_PROXY_RETRY_BACKOFF_BASE must be a finite number of seconds >= 0, got {bad:?}"
                )
            );
            // Checked even while pacing is off, so a typo does not wait for the day it is used.
            assert!(error_of(|s| s.backoff_max = bad).starts_with("HEX_PROXY_RETRY_BACKOFF_MAX"));
        }
    }

    #[test]
    fn status_codes_must_be_http_statuses() {
        assert_eq!(
            error_of(|s| s.retry_codes.push(99)),
            "HEX_PROXY_RETRY_CODES must only hold HTTP status codes between 100 and 599, got 99"
        );
        assert!(error_of(|s| s.failure_codes.push(600)).starts_with("HEX_PROXY_FAILURE_CODES"));
        assert!(error_of(|s| s.failure_codes.push(-429)).ends_with("got -429"));
        let mut settings = example_settings();
        settings.retry_codes.clear();
        assert_eq!(
            settings.validate().unwrap().retry_codes,
            StatusSet::default()
        );
    }

    #[test]
    fn status_set_edges() {
        let set = StatusSet::from_codes("X", &[100, 163, 164, 599]).unwrap();
        for status in [100, 163, 164, 599] {
            assert!(set.contains(status));
        }
        for status in [0, 99, 101, 162, 165, 598, 600, u16::MAX] {
            assert!(!set.contains(status));
        }
    }

    #[test]
    fn credentials_are_checked_without_echoing_them() {
        for blank in ["", "   ", "\t"] {
            assert_eq!(
                error_of(|s| s.user = blank.into()),
                "HEX_PROXY_USER must not be empty or blank"
            );
        }
        for (setting, change) in [
            (
                "HEX_PROXY_USER",
                (|s: &mut Settings| s.user = "USER\r\nX-Injected".into()) as fn(&mut Settings),
            ),
            ("HEX_PROXY_PASS", |s| s.password = "s3cret-PASS\n".into()),
            ("HEX_PROXY_PASS", |s| s.password = "s3cret\u{7f}".into()),
        ] {
            let message = error_of(change);
            assert!(
                message.starts_with(&format!("{setting} must not contain control characters")),
                "{message}"
            );
        }
        let message = error_of(|s| s.user = "USER:s3cret-PASS".into());
        assert!(message.starts_with("HEX_PROXY_USER must not contain ':'"));
        assert_eq!(
            error_of(|s| s.password.clear()),
            "HEX_PROXY_PASS must not be empty"
        );
    }

    #[test]
    fn the_username_template_is_checked_with_the_gateway() {
        for bad in [
            "{user}-{session}\r\n",
            "{user}\n-{session}",
            "{user}\0{session}",
        ] {
            let message = error_of(|s| s.username_template = bad.into());
            assert!(
                message.starts_with("HEX_PROXY_USERNAME_TEMPLATE must not contain control"),
                "{message}"
            );
        }
        let message = error_of(|s| s.username_template = "{user}-{id}".into());
        assert!(message.starts_with("HEX_PROXY_USERNAME_TEMPLATE has an unknown placeholder {id}"));
        let mut settings = example_settings();
        settings.username_template = "{user}_sid_{session}".into();
        let config = settings.validate().unwrap();
        let gateway = config.provider.gateway().unwrap();
        assert_eq!(gateway.username(&SessionId::new(1)), "USER_sid_s001");
    }

    #[test]
    fn a_proxy_list_sets_the_pool_size_and_needs_no_gateway_credentials() {
        let mut settings = example_settings();
        settings.user.clear();
        settings.password.clear();
        settings.username_template = "not used".into();
        settings.pool_size = 0; // not used either: the runtime checks a pool size set by hand
        settings.proxies = Some(vec![
            (
                "HEX_PROXY_LIST entry 1".into(),
                "http://a:s3cret@h:1".into(),
            ),
            (
                "HEX_PROXY_LIST entry 2".into(),
                "http://b:s3cret@h:1".into(),
            ),
            ("HEX_PROXY_LIST entry 3".into(), "http://h:2".into()),
        ]);
        let config = settings.validate().unwrap();
        assert_eq!(config.pool_size, 3);
        assert_eq!(config.provider.list().unwrap().get(2).url(), "http://h:2");
        assert!(!format!("{config:?}").contains("s3cret"));
        for (change, named) in [
            (
                (|s: &mut Settings| s.on_blacklist = "rotate".into()) as fn(&mut Settings),
                "HEX_PROXY_ON_BLACKLIST = \"rotate\"",
            ),
            (|s| s.session_max_uses = 10, "HEX_PROXY_SESSION_MAX_USES"),
            (|s| s.session_max_age = 60.0, "HEX_PROXY_SESSION_MAX_AGE"),
        ] {
            let mut rotating = settings.clone();
            change(&mut rotating);
            let message = rotating.validate().unwrap_err().to_string();
            assert!(message.starts_with(named), "{message}");
            assert!(message.contains("HEX_PROXY_LIST"), "{message}");
        }
        settings.proxies = Some(vec![("HEX_PROXY_LIST_FILE line 4".into(), "h:1".into())]);
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.starts_with("HEX_PROXY_LIST_FILE line 4: must start with http://"));
    }
}
