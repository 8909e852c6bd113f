//! The credentials taken out of text we log or raise that came from elsewhere: a gateway's
//! reason phrase, an exception's message (an echoing gateway may quote the
//! `Proxy-Authorization` it was sent). The rule, for every password the provider holds: the
//! password as written, percent-encoded or as Python's `repr` of its bytes shows it, and any
//! base64 run that decodes, at any alignment, to bytes holding it (the header's
//! `base64("username:password")`, whatever the username, also inside longer base64) become
//! `***`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::provider::percent_encode;

/// What a secret becomes.
pub const MASK: &str = "***";

/// Decodes what a run of base64 characters holds, padded or not, cut anywhere.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The shortest run of base64 characters looked into: "x:p" encodes to 4.
const SHORTEST_RUN: usize = 4;

/// The passwords to take out of text. `Debug` shows how many, never one.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Each distinct password's bytes, searched for in decoded base64.
    passwords: Vec<Vec<u8>>,
    /// The forms replaced as text (each password, percent-encoded, as a bytes repr), longest
    /// first so that a form holding another goes whole.
    forms: Vec<String>,
}

impl Redactor {
    /// Empty passwords are skipped (nothing to hide).
    pub fn new<I, S>(passwords: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // Sets, not scans of the vectors: a list may hold a million proxies.
        let mut seen = HashSet::new();
        let mut forms = HashSet::new();
        let mut redactor = Self::default();
        for password in passwords {
            let password = password.as_ref();
            if password.is_empty() || !seen.insert(password.to_owned()) {
                continue;
            }
            redactor.passwords.push(password.as_bytes().to_vec());
            forms.extend([
                password.to_owned(),
                percent_encode(password),
                bytes_repr(password),
            ]);
        }
        redactor.forms = forms.into_iter().collect();
        // Longest first, so that a form holding another goes whole; then in a fixed order.
        redactor
            .forms
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        redactor
    }

    /// `text` without any of the passwords in any of the forms above; borrowed when it holds
    /// none.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.passwords.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = self.redact_base64(text);
        for form in &self.forms {
            if out.contains(form.as_str()) {
                out = Cow::Owned(out.replace(form.as_str(), MASK));
            }
        }
        out
    }

    /// Every base64 run (with its padding) that decodes to bytes holding a password.
    fn redact_base64<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let bytes = text.as_bytes();
        let mut out = String::new();
        // Up to where `text` is copied into `out`.
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if !is_base64(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_base64(bytes[i]) {
                i += 1;
            }
            let run = &text[start..i];
            let end = i;
            while i < bytes.len() && bytes[i] == b'=' && i < end + 2 {
                i += 1;
            }
            if self.holds_password(run) {
                out.push_str(&text[copied..start]);
                out.push_str(MASK);
                copied = i;
            }
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// Whether the run, decoded from any of its first four characters (it may begin with
    /// characters that belong to something else), holds a password.
    fn holds_password(&self, run: &str) -> bool {
        (0..4).any(|shift| {
            let Some(chars) = run.get(shift..) else {
                return false;
            };
            // A single character past a multiple of 4 decodes to nothing: leave it.
            let usable = chars.len() - usize::from(chars.len() % 4 == 1);
            if usable < SHORTEST_RUN {
                return false;
            }
            let Ok(decoded) = LENIENT.decode(&chars[..usable]) else {
                return false;
            };
            self.passwords
                .iter()
                .any(|password| contains(&decoded, password))
        })
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("passwords", &self.passwords.len())
            .finish()
    }
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/'
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The inside of Python's `repr()` of the UTF-8 bytes (single-quoted): how a password shows in
/// a message quoting a bytes reason phrase (Scrapy's `TunnelError`).
fn bytes_repr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b' '..=b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(["s3cret-PASS", "", "p@ss wörd"])
    }

    #[test]
    fn text_without_a_password_is_borrowed() {
        let text = "Could not open CONNECT tunnel with proxy 127.0.0.1:7777 [{'status': 407}]";
        assert!(matches!(redactor().redact(text), Cow::Borrowed(_)));
        assert!(matches!(
            Redactor::default().redact("s3cret-PASS"),
            Cow::Borrowed(_)
        ));
        assert_eq!(format!("{:?}", redactor()), "Redactor { passwords: 2 }");
    }

    #[test]
    fn the_password_goes_as_written_percent_encoded_and_as_a_bytes_repr() {
        let redactor = redactor();
        assert_eq!(redactor.redact("pw=s3cret-PASS!"), "pw=***!");
        assert_eq!(redactor.redact("u:p%40ss%20w%C3%B6rd@h"), "u:***@h");
        assert_eq!(redactor.redact("b'p@ss w\\xc3\\xb6rd'"), "b'***'");
        assert_eq!(redactor.redact("p@ss wörd"), "***");
    }

    #[test]
    fn base64_holding_a_password_goes_at_every_alignment() {
        let redactor = redactor();
        for user in ["USER-session-s001", "U", "us", "use", ""] {
            let header = STANDARD.encode(format!("{user}:s3cret-PASS"));
            let text = format!("407 Basic {header} was refused");
            assert_eq!(
                redactor.redact(&text),
                "407 Basic *** was refused",
                "{user}"
            );
            // Inside longer base64, whatever comes before it.
            for before in ["", "a", "ab", "abc"] {
                let longer = STANDARD.encode(format!("{before}Proxy: {user}:s3cret-PASS;x"));
                let text = format!("[{longer}]");
                assert_eq!(redactor.redact(&text), "[***]", "{before} {user}");
                // Glued to other characters of the alphabet.
                let text = format!("Zq{longer}");
                assert_eq!(redactor.redact(&text), "***", "{before} {user}");
            }
            // Without its padding.
            let bare = header.trim_end_matches('=');
            assert_eq!(redactor.redact(&format!("'{bare}'")), "'***'");
        }
    }

    #[test]
    fn other_base64_is_kept() {
        let other = STANDARD.encode("USER-session-s001:another");
        let text = format!("Basic {other}");
        assert_eq!(redactor().redact(&text), text);
    }

    #[test]
    fn a_bytes_repr_escapes_as_python_does() {
        assert_eq!(bytes_repr("a'b\\c\n\u{e9}"), "a\\'b\\\\c\\n\\xc3\\xa9");
    }
}
