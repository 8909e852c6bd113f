//! Session identity. Ids, gateway usernames and headers are derived from the index on demand,
//! so the pool stores nothing per session but its counters.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The id the gateway keys a sticky session on ("s000", "s007", "s1234"), written on the
/// stack: it is made for every request.
pub struct SessionId {
    /// 's' and up to 10 digits, right-aligned.
    buf: [u8; 11],
    start: usize,
}

impl SessionId {
    pub fn new(index: u32) -> Self {
        let mut buf = [b'0'; 11];
        let mut end = buf.len();
        let mut rest = index;
        while rest > 0 {
            end -= 1;
            buf[end] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        // At least three digits ('0'-padded), then the 's'.
        let start = end.min(buf.len() - 3) - 1;
        buf[start] = b's';
        Self { buf, start }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).expect("ASCII")
    }
}

/// Between the user and the session id in the gateway username.
const SESSION_MARK: &str = "-session-";
const BASIC: &str = "Basic ";

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
        format!(
            "{}{SESSION_MARK}{}",
            self.user,
            SessionId::new(index).as_str()
        )
    }

    /// The `Proxy-Authorization` value (HTTP Basic) for the session.
    pub fn proxy_authorization(&self, index: u32) -> String {
        let mut header = vec![0; self.proxy_authorization_len(index)];
        self.write_proxy_authorization(index, &mut header);
        String::from_utf8(header).expect("ASCII")
    }

    /// The length of `proxy_authorization(index)`.
    pub fn proxy_authorization_len(&self, index: u32) -> usize {
        BASIC.len() + self.pair_len(&SessionId::new(index)).div_ceil(3) * 4
    }

    /// Writes `proxy_authorization(index)` into `out`, which has exactly its length. One
    /// allocation: the binding writes straight into the Python bytes object.
    pub fn write_proxy_authorization(&self, index: u32, out: &mut [u8]) {
        let id = SessionId::new(index);
        let mut pair = Vec::with_capacity(self.pair_len(&id));
        for part in [&self.user, SESSION_MARK, id.as_str(), ":", &self.password] {
            pair.extend_from_slice(part.as_bytes());
        }
        out[..BASIC.len()].copy_from_slice(BASIC.as_bytes());
        let written = STANDARD
            .encode_slice(&pair, &mut out[BASIC.len()..])
            .expect("out has the header's length");
        debug_assert_eq!(BASIC.len() + written, out.len());
    }

    /// Length of "user-session-id:password".
    fn pair_len(&self, id: &SessionId) -> usize {
        self.user.len() + SESSION_MARK.len() + id.as_str().len() + 1 + self.password.len()
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

    fn session_id(index: u32) -> String {
        SessionId::new(index).as_str().to_owned()
    }

    fn credentials() -> Credentials {
        Credentials::new("USER".into(), "PASS".into())
    }

    #[test]
    fn session_ids_are_zero_padded_to_three_digits() {
        assert_eq!(session_id(0), "s000");
        assert_eq!(session_id(7), "s007");
        assert_eq!(session_id(42), "s042");
        assert_eq!(session_id(1234), "s1234");
        assert_eq!(session_id(u32::MAX), "s4294967295");
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
        // Every padding case of base64 (the pair's length mod 3) fills the buffer exactly.
        for password in ["P", "PA", "PAS"] {
            let credentials = Credentials::new("U".into(), password.into());
            for index in [0, 999, 1000, u32::MAX] {
                let pair = format!("U-session-{}:{password}", session_id(index));
                let header = credentials.proxy_authorization(index);
                assert_eq!(header, format!("Basic {}", STANDARD.encode(pair)));
                assert_eq!(header.len(), credentials.proxy_authorization_len(index));
            }
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", credentials());
        assert!(shown.contains("USER"));
        assert!(!shown.contains("PASS"));
    }
}
