//! Session identity. Ids are derived from the index on demand, so the pool stores nothing per
//! session but its counters (the provider makes usernames and headers from the id).

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

#[cfg(test)]
mod tests {
    use super::*;

    fn session_id(index: u32) -> String {
        SessionId::new(index).as_str().to_owned()
    }

    #[test]
    fn session_ids_are_zero_padded_to_three_digits() {
        assert_eq!(session_id(0), "s000");
        assert_eq!(session_id(7), "s007");
        assert_eq!(session_id(42), "s042");
        assert_eq!(session_id(1234), "s1234");
        assert_eq!(session_id(u32::MAX), "s4294967295");
    }
}
