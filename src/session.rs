//! Session identity. Ids are derived from the session number on demand, so the pool stores
//! nothing per session but its counters (the provider makes usernames and headers from the id).

/// The id the gateway keys a sticky session on ("s000", "s007", "s1234"), written on the
/// stack: it is made for every request. It formats a session *number*: the slot's index plus
/// its generation times the pool size, so generation 0 is "s" and the index, and every id a
/// slot gets on rotation is new (see `identity.rs`).
pub struct SessionId {
    /// 's' and up to 20 digits, right-aligned.
    buf: [u8; 21],
    start: usize,
}

impl SessionId {
    pub fn new(number: u64) -> Self {
        let mut buf = [b'0'; 21];
        let mut end = buf.len();
        let mut rest = number;
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
        std::str::from_utf8(self.as_bytes()).expect("ASCII")
    }

    /// The id's bytes (ASCII), without `as_str`'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_id(number: u64) -> String {
        SessionId::new(number).as_str().to_owned()
    }

    #[test]
    fn session_ids_are_zero_padded_to_three_digits() {
        assert_eq!(session_id(0), "s000");
        assert_eq!(session_id(7), "s007");
        assert_eq!(session_id(42), "s042");
        assert_eq!(session_id(1234), "s1234");
        assert_eq!(session_id(u32::MAX.into()), "s4294967295");
        assert_eq!(session_id(u64::MAX), "s18446744073709551615");
    }
}
