//! Session identity. Ids, gateway usernames and headers are derived from the index on demand,
//! so the pool stores nothing per session but its counters.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The id the gateway keys a sticky session on: "s000", "s007", "s1234".
pub fn session_id(index: u32) -> String {
    format!("s{index:03}")
}

/// The gateway credentials. `Debug` hides the password so it cannot leak into a log or panic.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// Checked by `Settings::validate`: user non-empty without ':', password non-empty.
    pub(crate) fn new(user: String, password: String) -> Self {
        Self { user, password }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The username that selects the session at the gateway.
    pub fn username(&self, index: u32) -> String {
        format!("{}-session-{}", self.user, session_id(index))
    }

    /// The `Proxy-Authorization` value (HTTP Basic) for the session.
    pub fn proxy_authorization(&self, index: u32) -> String {
        let pair = format!("{}:{}", self.username(index), self.password);
        format!("Basic {}", STANDARD.encode(pair))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials::new("USER".into(), "PASS".into())
    }

    #[test]
    fn session_ids_are_zero_padded_to_three_digits() {
        assert_eq!(session_id(0), "s000");
        assert_eq!(session_id(7), "s007");
        assert_eq!(session_id(42), "s042");
        assert_eq!(session_id(1234), "s1234");
    }

    #[test]
    fn username_names_the_session() {
        assert_eq!(credentials().username(7), "USER-session-s007");
    }

    #[test]
    fn proxy_authorization_is_basic_over_session_username_and_password() {
        let expected = format!("Basic {}", STANDARD.encode("USER-session-s003:PASS"));
        assert_eq!(credentials().proxy_authorization(3), expected);
        assert_eq!(expected, "Basic VVNFUi1zZXNzaW9uLXMwMDM6UEFTUw==");
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", credentials());
        assert!(shown.contains("USER"));
        assert!(!shown.contains("PASS"));
    }
}
