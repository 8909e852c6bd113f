//! Where a session's traffic goes and how it proves who it is. Either one gateway, whose
//! username names the session (`HEX_PROXY_USERNAME_TEMPLATE`), or a list of proxies, each proxy
//! (its full URL, credentials included) being one session of the pool.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::{ConfigError, EntryProblem, TemplateProblem};
use crate::redact::Redactor;
use crate::session::SessionId;

/// The username template of the original guide.
pub const DEFAULT_TEMPLATE: &str = "{user}-session-{session}";
const BASIC: &str = "Basic ";
/// The most proxies a list may hold (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE; the README says
/// it): more is a mistake, not a pool. The Python reader stops collecting lines one past it.
pub const MAX_PROXIES: usize = 1_000_000;
/// The largest HEX_PROXY_LIST_FILE read (the README says it): /dev/zero or a wrong path to a
/// big file stops the crawl instead of filling the memory. 64 MiB holds a million long URLs.
pub const MAX_PROXY_FILE_BYTES: u64 = 64 << 20;

/// The gateway or the proxy list. `Debug` shows no password.
#[derive(Debug, Clone)]
pub enum Provider {
    Gateway(Gateway),
    List(ProxyList),
}

impl Provider {
    /// The `Proxy-Authorization` value of session `index` (whose id is `id`); `None` for a
    /// listed proxy without credentials. Allocates: the hooks write or precompute theirs.
    pub fn proxy_authorization(&self, index: u32, id: &SessionId) -> Option<String> {
        match self {
            Self::Gateway(gateway) => Some(gateway.proxy_authorization(id)),
            Self::List(list) => list.get(index).header().map(str::to_owned),
        }
    }

    pub fn list(&self) -> Option<&ProxyList> {
        match self {
            Self::Gateway(_) => None,
            Self::List(list) => Some(list),
        }
    }

    pub fn gateway(&self) -> Option<&Gateway> {
        match self {
            Self::Gateway(gateway) => Some(gateway),
            Self::List(_) => None,
        }
    }

    /// What takes every password this provider holds out of a text (see `redact.rs`).
    pub fn redactor(&self) -> Redactor {
        match self {
            Self::Gateway(gateway) => Redactor::new([&gateway.password]),
            Self::List(list) => Redactor::new(list.iter().filter_map(Proxy::password)),
        }
    }
}

/// The gateway credentials and the username template, compiled. `Debug` hides the password.
#[derive(Clone)]
pub struct Gateway {
    user: String,
    /// Kept here only; each header copies it, after the username, onto the stack buffer the
    /// base64 crate encodes from (one slice).
    password: String,
    /// The username with the user filled in, cut where the session id goes:
    /// `"{user}_sid_{session}-cc"` is `["USER_sid_", "-cc"]`. At least two pieces.
    pieces: Box<[String]>,
    /// "Basic " and the base64 of the first `head_bytes` bytes of the first piece, the most a
    /// multiple of 3 can take: they encode the same in every header, so they are encoded once.
    /// (The first piece comes before any session id and the password: no secret is in it.)
    head: String,
    head_bytes: usize,
}

impl Gateway {
    /// `user` and `password` are checked by `Settings::validate` (non-empty, no ':' in user).
    pub(crate) fn new(user: String, password: String, template: &str) -> Result<Self, ConfigError> {
        let pieces = compile_template(template, &user).map_err(ConfigError::Template)?;
        let head_bytes = pieces[0].len() / 3 * 3;
        let head = format!(
            "{BASIC}{}",
            STANDARD.encode(&pieces[0].as_bytes()[..head_bytes])
        );
        Ok(Self {
            user,
            password,
            pieces,
            head,
            head_bytes,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The username that selects the session at the gateway.
    pub fn username(&self, id: &SessionId) -> String {
        let mut username = String::with_capacity(self.username_len(id));
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                username.push_str(id.as_str());
            }
            username.push_str(piece);
        }
        username
    }

    /// The `Proxy-Authorization` value (HTTP Basic) for the session.
    pub fn proxy_authorization(&self, id: &SessionId) -> String {
        let mut header = vec![0; self.proxy_authorization_len(id)];
        self.write_proxy_authorization(id, &mut header);
        String::from_utf8(header).expect("ASCII")
    }

    /// The length of `proxy_authorization(id)`.
    pub fn proxy_authorization_len(&self, id: &SessionId) -> usize {
        BASIC.len() + self.pair_len(id).div_ceil(3) * 4
    }

    /// Writes `proxy_authorization(id)` into `out`, which has exactly its length. The binding
    /// writes straight into the Python bytes object.
    pub fn write_proxy_authorization(&self, id: &SessionId, out: &mut [u8]) {
        // "username:password" but the bytes `head` encodes, on the stack when it fits (it does
        // for any usual template).
        let len = self.pair_len(id) - self.head_bytes;
        let mut stack = [0_u8; 256];
        let mut heap = Vec::new();
        let pair: &mut [u8] = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            pair[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.pieces[0].as_bytes()[self.head_bytes..]);
        for piece in &self.pieces[1..] {
            put(id.as_bytes());
            put(piece.as_bytes());
        }
        put(b":");
        put(self.password.as_bytes());
        debug_assert_eq!(at, len, "the pair fills its buffer");
        let head = self.head.len();
        out[..head].copy_from_slice(self.head.as_bytes());
        let written = STANDARD
            .encode_slice(&*pair, &mut out[head..])
            .expect("out has the header's length");
        debug_assert_eq!(head + written, out.len());
    }

    fn username_len(&self, id: &SessionId) -> usize {
        let text: usize = self.pieces.iter().map(String::len).sum();
        text + (self.pieces.len() - 1) * id.as_bytes().len()
    }

    /// Length of "username:password".
    fn pair_len(&self, id: &SessionId) -> usize {
        self.username_len(id) + 1 + self.password.len()
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("user", &self.user)
            .field("password", &"***")
            .field("pieces", &self.pieces)
            .finish()
    }
}

/// `{user}` and `{session}` are the placeholders, `{{` and `}}` the braces themselves. The
/// session must be in it (else every session would be one identity at the gateway), and no
/// ':' may be (HTTP Basic ends the username at the first ':').
fn compile_template(template: &str, user: &str) -> Result<Box<[String]>, TemplateProblem> {
    let mut pieces = vec![String::new()];
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = pieces.last_mut().expect("never empty");
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                piece.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                piece.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(TemplateProblem::Unclosed),
                        Some(c) => name.push(c),
                    }
                }
                match name.as_str() {
                    "user" => piece.push_str(user),
                    "session" => pieces.push(String::new()),
                    _ => return Err(TemplateProblem::Unknown(name)),
                }
            }
            '}' => return Err(TemplateProblem::StrayBrace),
            ':' => return Err(TemplateProblem::Colon),
            c if c.is_control() => return Err(TemplateProblem::Control),
            c => piece.push(c),
        }
    }
    if pieces.len() < 2 {
        return Err(TemplateProblem::NoSession);
    }
    Ok(pieces.into_boxed_slice())
}

/// `HEX_PROXY_GATEWAY`, `http(s)://host:port` (a `/` after it allowed), as `(scheme, host,
/// port)`: the scheme and host lower-cased, an IPv6 host without its brackets. The same rules
/// as a listed proxy's, without credentials.
pub fn parse_gateway_url(text: &str) -> Result<(String, String, u16), ConfigError> {
    let problem = ConfigError::GatewayUrl;
    let text = text.trim();
    if text.is_empty() {
        return Err(problem(EntryProblem::Empty));
    }
    let (scheme, rest) = text
        .split_once("://")
        .ok_or(problem(EntryProblem::NoScheme))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(problem(EntryProblem::Scheme));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(problem(EntryProblem::Credentials));
    }
    if !tail.is_empty() && tail != "/" {
        return Err(problem(EntryProblem::Tail));
    }
    let (host, port) = split_host_port(authority).map_err(problem)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.trim_end_matches(']').to_owned(),
        None => host,
    };
    Ok((scheme, host, port))
}

/// One raw entry of the proxy list: where it came from (`"HEX_PROXY_LIST entry 3"`, named in
/// errors) and its text.
pub type Entry = (String, String);

/// The proxies of `HEX_PROXY_LIST` / `HEX_PROXY_LIST_FILE`, in list order, each once.
#[derive(Debug, Clone)]
pub struct ProxyList {
    proxies: Box<[Proxy]>,
    /// `(kept, dropped)` sources of entries that repeat an earlier one exactly.
    duplicates: Vec<(String, String)>,
}

impl ProxyList {
    /// Parses every entry; the first error names its entry and does not echo it (it may hold
    /// a password, or part of one if it is malformed).
    pub fn parse(entries: &[Entry]) -> Result<Self, ConfigError> {
        if entries.is_empty() {
            return Err(ConfigError::ProxyListEmpty);
        }
        if entries.len() > MAX_PROXIES {
            return Err(ConfigError::ProxyListTooLong);
        }
        let mut proxies: Vec<Proxy> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<(String, Option<String>), usize> = HashMap::new();
        let mut duplicates = Vec::new();
        for (source, text) in entries {
            let proxy = Proxy::parse(source, text).map_err(|problem| ConfigError::ProxyEntry {
                source: source.clone(),
                problem,
            })?;
            let key = (proxy.url.clone(), proxy.header.clone());
            if let Some(&first) = seen.get(&key) {
                let kept: &Proxy = &proxies[first];
                duplicates.push((kept.source.clone(), proxy.source));
                continue;
            }
            seen.insert(key, proxies.len());
            proxies.push(proxy);
        }
        Ok(Self {
            proxies: proxies.into_boxed_slice(),
            duplicates,
        })
    }

    pub fn len(&self) -> u32 {
        self.proxies.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// The proxy of session `index` (< `len()`).
    pub fn get(&self, index: u32) -> &Proxy {
        &self.proxies[index as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Proxy> {
        self.proxies.iter()
    }

    /// `(kept, dropped)` sources of the entries that repeated an earlier one.
    pub fn duplicates(&self) -> &[(String, String)] {
        &self.duplicates
    }
}

/// One proxy of the list. `Debug` shows no password.
#[derive(Clone)]
pub struct Proxy {
    /// `scheme://host:port`, for `meta["proxy"]`: exactly what Scrapy's HttpProxyMiddleware
    /// makes of it, so that its own bookkeeping of the header agrees with ours.
    url: String,
    /// The user, percent-decoded; `None` without credentials.
    user: Option<String>,
    has_password: bool,
    /// `Basic base64(user:password)`, made once.
    header: Option<String>,
    source: String,
}

impl Proxy {
    /// `scheme://[user[:password]@]host:port[/]` with scheme http or https; user and password
    /// percent-decoded as Scrapy's HttpProxyMiddleware does.
    fn parse(source: &str, text: &str) -> Result<Self, EntryProblem> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EntryProblem::Empty);
        }
        let (scheme, rest) = text.split_once("://").ok_or(EntryProblem::NoScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(EntryProblem::Scheme);
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(EntryProblem::Tail);
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let url = format!("{scheme}://{host}:{port}");
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(percent_decode(password))),
                    None => (userinfo, None),
                };
                let user = percent_decode(user);
                if user.is_empty() {
                    return Err(EntryProblem::NoUser);
                }
                if user.contains(':') {
                    return Err(EntryProblem::UserHasColon);
                }
                let control = |text: &str| text.chars().any(char::is_control);
                if control(&user) || password.as_deref().is_some_and(control) {
                    return Err(EntryProblem::Control);
                }
                (Some(user), password)
            }
        };
        let header = user.as_ref().map(|user| {
            let pair = format!("{user}:{}", password.as_deref().unwrap_or(""));
            format!("{BASIC}{}", STANDARD.encode(pair))
        });
        Ok(Self {
            url,
            has_password: password.is_some_and(|p| !p.is_empty()),
            user,
            header,
            source: source.to_owned(),
        })
    }

    /// `scheme://host:port`, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The `Proxy-Authorization` value; `None` for a proxy without credentials.
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// The URL with the credentials in it, percent-encoded (`scheme://user:password@host:port`),
    /// for Scrapy's HttpProxyMiddleware to make the header of; `None` without credentials.
    pub fn url_with_credentials(&self) -> Option<String> {
        let encoded = self.header.as_deref()?.strip_prefix("Basic ")?;
        let pair = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (user, password) = pair.split_once(':')?;
        let (scheme, hostport) = self.url.split_once("://")?;
        Some(format!(
            "{scheme}://{}:{}@{hostport}",
            percent_encode(user),
            percent_encode(password)
        ))
    }

    /// The password, percent-decoded; `None` without one.
    fn password(&self) -> Option<String> {
        if !self.has_password {
            return None;
        }
        let encoded = self.header.as_deref()?.strip_prefix(BASIC)?;
        let pair = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        Some(pair.split_once(':')?.1.to_owned())
    }

    /// Where the entry came from: `"HEX_PROXY_LIST entry 3"`.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_https(&self) -> bool {
        self.url.starts_with("https:")
    }

    /// The URL as a person may see it: `http://user:***@host:port`.
    pub fn label(&self) -> String {
        let Some(user) = &self.user else {
            return self.url.clone();
        };
        let (scheme, hostport) = self.url.split_once("://").expect("made by parse");
        let secret = if self.has_password { ":***" } else { "" };
        format!("{scheme}://{user}{secret}@{hostport}")
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("proxy", &self.label())
            .field("source", &self.source)
            .finish()
    }
}

/// `host:port` or `[v6]:port`; the host lower-cased (host names are case-insensitive, and
/// Scrapy's HttpProxyMiddleware compares URLs as strings).
fn split_host_port(hostport: &str) -> Result<(String, u16), EntryProblem> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or(EntryProblem::Host)?;
        let ok = !inside.is_empty()
            && inside.contains(':')
            && inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !ok {
            return Err(EntryProblem::Host);
        }
        let port = after.strip_prefix(':').ok_or(EntryProblem::NoPort)?;
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (host, port) = hostport.rsplit_once(':').ok_or(EntryProblem::NoPort)?;
        let ok = !host.is_empty()
            // No '_': no host name holds one (RFC 1123); IDNA encoding refuses it.
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if !ok {
            return Err(EntryProblem::Host);
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = Some(port)
        .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p > 0)
        .ok_or(EntryProblem::Port)?;
    Ok((host, port))
}

/// RFC 3986 userinfo: every byte but the unreserved ones percent-encoded (as Python's
/// `quote(safe="")` writes it).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `%XX` to the byte; anything else as it is; invalid UTF-8 replaced (Python's `unquote`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(template: &str) -> Gateway {
        Gateway::new("USER".into(), "PASS".into(), template).unwrap()
    }

    fn template_error(template: &str) -> String {
        Gateway::new("USER".into(), "s3cret".into(), template)
            .unwrap_err()
            .to_string()
    }

    fn basic(pair: &str) -> String {
        format!("Basic {}", STANDARD.encode(pair))
    }

    fn entries(texts: &[&str]) -> Vec<Entry> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                (
                    format!("HEX_PROXY_LIST entry {}", i + 1),
                    (*text).to_owned(),
                )
            })
            .collect()
    }

    fn list(texts: &[&str]) -> ProxyList {
        ProxyList::parse(&entries(texts)).unwrap()
    }

    fn entry_error(text: &str) -> String {
        let message = ProxyList::parse(&entries(&["http://ok:fine@h:1", text]))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("HEX_PROXY_LIST entry 2: "), "{message}");
        message
    }

    #[test]
    fn the_default_template_is_the_guides_username() {
        let gateway = gateway(DEFAULT_TEMPLATE);
        assert_eq!(gateway.username(&SessionId::new(7)), "USER-session-s007");
        let expected = basic("USER-session-s003:PASS");
        assert_eq!(expected, "Basic VVNFUi1zZXNzaW9uLXMwMDM6UEFTUw==");
        assert_eq!(gateway.proxy_authorization(&SessionId::new(3)), expected);
    }

    #[test]
    fn a_template_spells_the_session_as_the_gateway_wants() {
        let id = SessionId::new(42);
        let cases = [
            (
                "{user}_sid_{session}-country-us",
                "USER_sid_s042-country-us",
            ),
            (
                "customer-{user}-sessid-{session}",
                "customer-USER-sessid-s042",
            ),
            ("{session}", "s042"),
            ("{session}.{user}.{session}", "s042.USER.s042"),
            ("{{{user}}}-{session}", "{USER}-s042"),
            (
                "nutzer-{user}-sitzung-{session}-\u{e9}",
                "nutzer-USER-sitzung-s042-\u{e9}",
            ),
            // The bytes encoded once (a multiple of 3 of the first piece) end inside the 'é'.
            ("xx\u{e9}{session}-{user}", "xx\u{e9}s042-USER"),
        ];
        for (template, username) in cases {
            let gateway = gateway(template);
            assert_eq!(gateway.username(&id), username, "{template}");
            let header = gateway.proxy_authorization(&id);
            assert_eq!(header, basic(&format!("{username}:PASS")), "{template}");
            assert_eq!(header.len(), gateway.proxy_authorization_len(&id));
        }
    }

    #[test]
    fn every_base64_padding_case_fills_the_header_exactly() {
        for password in ["P", "PA", "PAS"] {
            let gateway = Gateway::new("U".into(), password.into(), "{user}+{session}").unwrap();
            for index in [0, 999, 1000, u64::from(u32::MAX), u64::MAX] {
                let id = SessionId::new(index);
                let header = gateway.proxy_authorization(&id);
                assert_eq!(header, basic(&format!("U+{}:{password}", id.as_str())));
                assert_eq!(header.len(), gateway.proxy_authorization_len(&id));
            }
        }
    }

    #[test]
    fn a_pair_too_long_for_the_stack_buffer_is_written_whole() {
        // "username:password" is built on a 256-byte stack buffer, on the heap beyond it
        // ("USER-s007:" is 10 bytes: a 246-byte password fills the buffer exactly).
        for password_len in [200, 245, 246, 247, 300, 5000] {
            let password = "p".repeat(password_len);
            let gateway =
                Gateway::new("USER".into(), password.clone(), "{user}-{session}").unwrap();
            let id = SessionId::new(7);
            let header = gateway.proxy_authorization(&id);
            assert_eq!(
                header,
                basic(&format!("USER-s007:{password}")),
                "{password_len}"
            );
            assert_eq!(header.len(), gateway.proxy_authorization_len(&id));
        }
    }

    #[test]
    fn headers_match_a_whole_encoding_at_every_alignment() {
        // Every length mod 3 of the first piece (`head` encodes a multiple of 3 of it) and of
        // the whole pair (the padding), with one and two ids of every length mod 3.
        let texts = ["", "a", "ab", "abc", "abcd"];
        for before in texts {
            for user in ["u", "us", "use"] {
                // No password is refused by the settings; the encoding does not care.
                for password in ["", "p", "pa", "pas"] {
                    for ids in 1..=2 {
                        let template = format!("{before}{{user}}{}", "-{session}".repeat(ids));
                        let gateway =
                            Gateway::new(user.into(), password.into(), &template).unwrap();
                        for number in [0, 1_000, 10_000, 100_000_000] {
                            let id = SessionId::new(number);
                            let pair = format!("{}:{password}", gateway.username(&id));
                            let header = gateway.proxy_authorization(&id);
                            assert_eq!(header, basic(&pair), "{template} {number}");
                            assert_eq!(header.len(), gateway.proxy_authorization_len(&id));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn template_errors_name_the_setting_and_what_is_wrong() {
        assert_eq!(
            template_error("{user}-sticky"),
            "HEX_PROXY_USERNAME_TEMPLATE must contain {session} (else every session is one \
             identity at the gateway), e.g. \"{user}-session-{session}\""
        );
        assert_eq!(
            template_error("{user}-{sesion}"),
            "HEX_PROXY_USERNAME_TEMPLATE has an unknown placeholder {sesion}: only {user} and \
             {session} (write {{ and }} for literal braces)"
        );
        for bad in ["{user-{session}", "{session}{"] {
            assert!(template_error(bad).contains("unclosed '{'"), "{bad}");
        }
        assert!(template_error("{session}}x").contains("stray '}'"));
        assert!(template_error("{user}:{session}").contains("must not contain ':'"));
        assert!(template_error("").contains("must contain {session}"));
    }

    #[test]
    fn gateway_debug_hides_the_password() {
        let shown = format!("{:?}", Provider::Gateway(gateway("{user}-x-{session}")));
        assert!(shown.contains("USER") && shown.contains("-x-"), "{shown}");
        assert!(!shown.contains("PASS"), "{shown}");
        // Nor the password in base64, at any alignment.
        for k in 0..3 {
            let encoded = STANDARD.encode(&b":PASS"[k..]);
            assert!(!shown.contains(encoded.trim_end_matches('=')), "{shown}");
        }
    }

    #[test]
    fn list_entries_give_url_header_and_label() {
        let proxies = list(&[
            "http://alice:pa%40ss@127.0.0.1:8001",
            "https://Bob@Proxy.Example.com:443/",
            "http://[::1]:3128",
            "HTTP://carol:@10.0.0.1:80",
        ]);
        assert_eq!(proxies.len(), 4);
        let alice = proxies.get(0);
        assert_eq!(alice.url(), "http://127.0.0.1:8001");
        assert_eq!(alice.user(), Some("alice"));
        assert_eq!(alice.header(), Some(basic("alice:pa@ss").as_str()));
        assert_eq!(alice.label(), "http://alice:***@127.0.0.1:8001");
        assert_eq!(alice.source(), "HEX_PROXY_LIST entry 1");
        assert!(!alice.is_https());
        let bob = proxies.get(1);
        assert_eq!(bob.url(), "https://proxy.example.com:443");
        assert_eq!(bob.header(), Some(basic("Bob:").as_str()));
        assert_eq!(bob.label(), "https://Bob@proxy.example.com:443");
        assert!(bob.is_https());
        let open = proxies.get(2);
        assert_eq!(open.url(), "http://[::1]:3128");
        assert_eq!((open.user(), open.header()), (None, None));
        assert_eq!(open.label(), "http://[::1]:3128");
        let carol = proxies.get(3);
        assert_eq!(carol.url(), "http://10.0.0.1:80");
        assert_eq!(carol.header(), Some(basic("carol:").as_str()));
        let provider = Provider::List(proxies);
        assert_eq!(provider.proxy_authorization(2, &SessionId::new(2)), None);
        assert_eq!(
            provider.proxy_authorization(0, &SessionId::new(0)),
            Some(basic("alice:pa@ss"))
        );
    }

    #[test]
    fn credentials_go_back_into_the_url_percent_encoded() {
        let list = ProxyList::parse(&[(
            "HEX_PROXY_LIST entry 1".into(),
            "http://us%20er:p%40ss:w@127.0.0.1:8001".into(),
        )])
        .unwrap();
        let proxy = list.get(0);
        assert_eq!(
            proxy.url_with_credentials().as_deref(),
            Some("http://us%20er:p%40ss%3Aw@127.0.0.1:8001")
        );
        assert_eq!(
            percent_decode("us%20er:p%40ss%3Aw"),
            "us er:p@ss:w",
            "what Scrapy decodes it back to"
        );
    }

    #[test]
    fn credentials_are_percent_decoded_as_scrapy_does() {
        assert_eq!(percent_decode("a%3Ab%2fc%25"), "a:b/c%");
        // Not an escape: kept as written, like Python's unquote.
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "\u{e9}");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
        let proxies = list(&["http://us%65r:p%3Aw%2F@h:1"]);
        assert_eq!(proxies.get(0).header(), Some(basic("user:p:w/").as_str()));
    }

    #[test]
    fn entries_that_differ_only_in_credentials_are_two_sessions() {
        let proxies = list(&[
            "http://user-1:pw@gate.test:7000",
            "http://user-2:pw@gate.test:7000",
            "http://user-1:other@gate.test:7000",
            "http://gate.test:7000",
        ]);
        assert_eq!(proxies.len(), 4);
        assert!(proxies.iter().all(|p| p.url() == "http://gate.test:7000"));
        assert!(proxies.duplicates().is_empty());
    }

    #[test]
    fn an_exact_duplicate_is_kept_once_and_reported() {
        let proxies = list(&[
            "http://a:pw@h:1",
            "http://b:pw@h:1",
            "http://a:pw@H:1/",
            "http://a:p%77@h:1",
        ]);
        assert_eq!(proxies.len(), 2);
        assert_eq!(proxies.get(1).user(), Some("b"));
        assert_eq!(
            proxies.duplicates(),
            [
                (
                    "HEX_PROXY_LIST entry 1".to_owned(),
                    "HEX_PROXY_LIST entry 3".to_owned()
                ),
                (
                    "HEX_PROXY_LIST entry 1".to_owned(),
                    "HEX_PROXY_LIST entry 4".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn malformed_entries_name_their_position_and_never_echo_the_entry() {
        let cases = [
            ("   ", "is empty"),
            ("user:s3cret@h:1", "must start with http:// or https://"),
            (
                "socks5://user:s3cret@h:1",
                "must start with http:// or https://",
            ),
            ("http://user:s3cret@h", "has no port"),
            ("http://user:s3cr/et@h:1", "nothing after host:port"),
            ("http://user:s3cret@h:1/path", "nothing after host:port"),
            ("http://user:s3cret@h:1?q", "nothing after host:port"),
            ("http://user:s3cret@h:0", "port must be"),
            ("http://user:s3cret@h:65536", "port must be"),
            ("http://user:s3cret@h:+80", "port must be"),
            ("http://user:s3cret@:80", "host"),
            ("http://user:s3cret@h st:80", "host"),
            ("http://user:s3cret@[zz]:80", "host"),
            ("http://user:s3cret@[::1]80", "has no port"),
            ("http://:s3cret@h:1", "credentials without a user"),
            ("http://@h:1", "credentials without a user"),
            ("http://us%3Aer:s3cret@h:1", "user must not contain ':'"),
            // A password with a raw ':' cut wrongly: still nothing of it is echoed.
            ("http://user:s3cret", "port must be"),
        ];
        for (text, expected) in cases {
            let message = entry_error(text);
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains("s3cr"), "{text}: {message}");
        }
        let many = vec![
            (
                "HEX_PROXY_LIST_FILE line 1".to_owned(),
                "http://h:1".to_owned()
            );
            MAX_PROXIES + 1
        ];
        assert_eq!(
            ProxyList::parse(&many).unwrap_err().to_string(),
            "the proxy list (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE) holds more than the 1000000 \
             proxies a list may hold"
        );
        assert_eq!(
            ProxyList::parse(&[]).unwrap_err().to_string(),
            "the proxy list (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE) holds no proxy"
        );
    }

    #[test]
    fn the_gateway_url_is_scheme_host_and_port() {
        let ok = |text: &str| parse_gateway_url(text).unwrap();
        let owned = |scheme: &str, host: &str, port| (scheme.to_owned(), host.to_owned(), port);
        assert_eq!(
            ok("http://127.0.0.1:7777"),
            owned("http", "127.0.0.1", 7777)
        );
        assert_eq!(
            ok(" HTTPS://Gate.Example.com:1/ "),
            owned("https", "gate.example.com", 1)
        );
        assert_eq!(ok("http://[::1]:8080"), owned("http", "::1", 8080));
        let cases = [
            ("", "is empty"),
            ("127.0.0.1:7777", "must start with http:// or https://"),
            ("ftp://127.0.0.1:21", "must start with http:// or https://"),
            ("http://127.0.0.1", "has no port"),
            (
                "http://127.0.0.1:0",
                "port must be a number between 1 and 65535",
            ),
            (
                "http://127.0.0.1:99999",
                "port must be a number between 1 and 65535",
            ),
            ("http://127.0.0.1:", "port must be"),
            ("http://gate way:7777", "has no valid host"),
            ("http://gate_way:7777", "has no valid host"),
            ("http://:7777", "has no valid host"),
            (
                "http://127.0.0.1:7777/path",
                "must be just scheme, host and port",
            ),
            (
                "http://127.0.0.1:7777?q",
                "must be just scheme, host and port",
            ),
            (
                "http://USER:s3cret@127.0.0.1:7777",
                "must not hold credentials",
            ),
            ("http://s3cret@127.0.0.1:7777", "must not hold credentials"),
        ];
        for (text, expected) in cases {
            let message = parse_gateway_url(text).unwrap_err().to_string();
            assert!(
                message.starts_with("HEX_PROXY_GATEWAY "),
                "{text}: {message}"
            );
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains("s3cret"), "{text}: {message}");
        }
    }

    #[test]
    fn control_characters_in_listed_credentials_are_refused() {
        for text in [
            "http://us%0Der:pw@h:1",
            "http://user:p%0Aw@h:1",
            "http://user:p%09w@h:1",
        ] {
            assert!(entry_error(text).contains("control characters"), "{text}");
        }
        // '_' in a host: no host name holds one, and IDNA encoding refuses it.
        assert!(entry_error("http://user:pw@my_proxy:1").contains("has no valid host"));
    }

    #[test]
    fn the_redactor_holds_every_listed_password() {
        let provider = Provider::List(list(&[
            "http://alice:s3cret@h:1",
            "http://bob:pa%40ss@h:2",
            "http://carol@h:3",
        ]));
        let redactor = provider.redactor();
        let text = format!("s3cret pa@ss pa%40ss {}", STANDARD.encode("alice:s3cret"));
        assert_eq!(redactor.redact(&text), "*** *** *** ***");
        let gateway = Provider::Gateway(gateway(DEFAULT_TEMPLATE));
        let header = gateway.proxy_authorization(5, &SessionId::new(5)).unwrap();
        assert_eq!(gateway.redactor().redact(&header), "Basic ***");
    }

    #[test]
    fn list_debug_hides_every_password() {
        let shown = format!(
            "{:?}",
            Provider::List(list(&["http://alice:s3cret@h:1", "http://h:2"]))
        );
        assert!(shown.contains("alice:***@h:1"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // Nor the header, which is the password in base64.
        assert!(!shown.contains(&STANDARD.encode("alice:s3cret")), "{shown}");
    }
}
