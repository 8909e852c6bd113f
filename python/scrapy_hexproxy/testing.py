"""A loopback sticky-session proxy gateway for tests.

:class:`Gateway` imitates a rotating proxy gateway on ``127.0.0.1``: it authenticates
``Proxy-Authorization: Basic base64(<user>-session-<id>:<password>)`` (or another spelling:
``username_template``), lets a test script each session's behaviour (ban with a status, drop the
connection, hang, fail for a while) and records every request. It can also play one proxy of a
proxy list: ``accounts`` are further user/password pairs, each one session named after its user,
and ``open_session`` serves requests without credentials (or with a username it does not know)
as an open proxy would. It never connects anywhere: it answers as the origin itself, for plain
proxied requests (``GET http://site.test/page/3 HTTP/1.1``) and inside ``CONNECT`` tunnels, where
it terminates TLS with a self-signed certificate made for the CONNECT's host (so a client that
checks the host name, as Scrapy does with a WARNING, finds it; Scrapy does not verify the issuer
by default).

It serves from daemon threads, not from the test's event loop, so it works under the asyncio
reactor and the plain Twisted reactor alike::

    with Gateway() as gw:
        gw.set_behavior("s001", Behavior.answer(403))
        settings = {"HEX_PROXY_GATEWAY": gw.url, "HEX_PROXY_USER": "USER", ...}
        ...
        assert gw.count("s001") == 1

Origin pages (normal behaviour) are ``200 OK`` HTML naming the session and the URL, with header
``X-Hex-Session``. Two paths are special, whatever the host:

* ``/links/N`` -- the page also links to ``/page/0`` ... ``/page/N-1`` (N <= 10000);
* ``/status/N`` -- the origin answers status N (200 ... 599) instead of 200;
* ``/cookie/NAME`` -- the origin also sets cookie ``NAME=<session id>`` (``Path=/``), so a test
  can tell which session's cookies a later request carries (see :attr:`Record.cookie`).

Behaviours apply to plain proxied requests; for https they apply to the CONNECT (a status
refuses the tunnel, Scrapy sees a TunnelError) and again to each request inside an opened tunnel,
so a behaviour set while a kept-alive tunnel is open takes effect on its next request.
:meth:`Gateway.set_host_behavior` scripts one target host (for one session or for all), e.g. a
site that bans ``s001`` while the others serve it.

Counting: :meth:`Gateway.count` counts download *attempts* per session (and per target host
with ``host=``), see :attr:`Record.is_attempt`.

Keep-alive and exact counts: Twisted's connection pool silently re-sends an idempotent request
once when a *reused* keep-alive connection drops, so with ``Behavior.close()`` on plain http the
gateway may see two requests for one Scrapy attempt. ``Gateway(keep_alive=False)`` closes every
connection after its answer, which makes counts exact.

Command line (serves until SIGINT/SIGTERM, prints the URL on one line; ``--help`` for the
behaviours ``--ban`` takes, every one of :class:`Behavior`'s)::

    python -m scrapy_hexproxy.testing [--port N] [--user U] [--password P] [--no-keep-alive]
        [-v] [--ban SESSION[@HOST]=BEHAVIOR ...]

What it received is kept until asked, in origin form: ``GET /_hexgate/counts``,
``GET /_hexgate/records`` (JSON), ``POST /_hexgate/reset``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import http
import json
import logging
import os
import re
import selectors
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Behavior", "Gateway", "Record", "RedisServer", "advance_clock"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_MAX_LINE = 16 * 1024
_MAX_HEADERS = 200
_MAX_BODY = 16 * 1024 * 1024
_MAX_LINKS = 10_000
_STOP_TIMEOUT = 1.0
#: Requests in origin form under this path are asked of the gateway itself (see _control).
CONTROL_PATH = "/_hexgate/"
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


# --------------------------------------------------------------------------- public data types


@dataclass(frozen=True)
class Behavior:
    """What the gateway does with a session's requests.

    ``action`` is ``"ok"`` (answer as the origin), ``"status"`` (answer ``status``),
    ``"close"`` (read the request, close without a response) or ``"hang"`` (read the request,
    never answer until the client leaves or the gateway stops). With ``seconds`` set, the action
    applies only to requests arriving within ``seconds`` of the moment the behaviour was set;
    later requests are answered normally. With ``tunnel`` set, a CONNECT is let through and the
    action applies to the requests inside the tunnel (the origin side failing, not the gateway).
    ``headers`` are extra ``(name, value)`` response headers of a ``"status"`` answer (e.g.
    ``Retry-After``, ``Date``).
    """

    action: str = "ok"
    status: int = 200
    seconds: float | None = None
    tunnel: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    #: With action ``"status"``: an HTML body to answer instead of ``hexgate: <status>``.
    body: str | None = None
    #: With action ``"status"``: the reason phrase quotes the request's credentials (its
    #: ``Proxy-Authorization`` and what it decodes to), as a careless gateway may.
    echo_credentials: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("ok", "status", "close", "hang"):
            raise ValueError(f"unknown action {self.action!r}")
        if self.action == "status" and not (
            isinstance(self.status, int) and 200 <= self.status <= 599
        ):
            raise ValueError(f"status must be an int in 200..599, got {self.status!r}")
        if self.seconds is not None and not self.seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds!r}")
        for header in self.headers:
            name, value = header  # a pair, or this raises
            if not _is_token(name) or any(c in value for c in "\r\n"):
                raise ValueError(f"headers must be (token, one-line value) pairs, got {header!r}")

    @classmethod
    def normal(cls) -> Behavior:
        """Answer as the origin (the default)."""
        return cls()

    @classmethod
    def answer(cls, status: int, headers: tuple[tuple[str, str], ...] = ()) -> Behavior:
        """Answer every request with ``status`` (body ``hexgate: <status>``), with the extra
        response ``headers`` given, e.g. ``(("Retry-After", "120"),)``."""
        return cls("status", status, headers=tuple(headers))

    @classmethod
    def page(cls, body: str, status: int = 200) -> Behavior:
        """Answer every request with ``status`` (200 by default) and this HTML ``body``: a
        captcha or block page that a status check alone would take for a success."""
        return cls("status", status, body=body)

    @classmethod
    def echo_credentials_in(cls, status: int = 407) -> Behavior:
        """Answer every request with ``status`` and a reason phrase that quotes the request's
        ``Proxy-Authorization`` and the ``user:password`` it decodes to (an echoing gateway,
        for tests that the credentials are redacted wherever the reason phrase goes)."""
        return cls("status", status, echo_credentials=True)

    @classmethod
    def close(cls, *, tunnel: bool = False) -> Behavior:
        """Read the request, then close the connection without any response.

        ``tunnel=True``: open CONNECT tunnels, then drop the requests inside them. (Scrapy
        2.11 never gives up on a CONNECT the gateway drops unanswered; later versions time out.)
        """
        return cls("close", tunnel=tunnel)

    @classmethod
    def hang(cls) -> Behavior:
        """Read the request and never answer (until the client leaves or ``stop()``)."""
        return cls("hang")

    @classmethod
    def fail_for(cls, seconds: float, status: int | None = None, close: bool = False) -> Behavior:
        """Fail requests arriving within ``seconds`` of being set, then answer normally.

        Failing means answering ``status`` (503 when neither ``status`` nor ``close`` is given)
        or, with ``close=True``, dropping the connection.
        """
        if close:
            if status is not None:
                raise ValueError("fail_for() takes status or close=True, not both")
            return cls("close", seconds=seconds)
        return cls("status", 503 if status is None else status, seconds=seconds)


@dataclass(frozen=True)
class Record:
    """One request the gateway received.

    ``kind``: ``"http"`` (plain proxied request), ``"connect"`` (a CONNECT) or ``"tunnel"`` (a
    request inside a CONNECT tunnel, attributed to the CONNECT's session and username).
    ``target``: the absolute URL, or ``host:port`` for a CONNECT.
    ``outcome``: ``"ok"`` (origin answered / tunnel opened), ``"status:<N>"`` (answered N, by a
    behaviour or by the ``/status/N`` path), ``"closed"``, ``"hang"``, ``"auth"`` (407), or
    ``"bad_request"`` (400).
    ``session``: the session id, or None when none could be parsed from the username.
    ``user_agent``, ``cookie``: the request's ``User-Agent`` and ``Cookie`` headers (None when
    absent, and for requests refused before a behaviour applies: 400, 407).
    ``at``: when the gateway received it (``time.monotonic()``).
    """

    session: str | None
    kind: str
    method: str
    target: str
    outcome: str
    username: str | None
    user_agent: str | None = None
    cookie: str | None = None
    at: float = field(default=0.0, compare=False)

    @property
    def host(self) -> str | None:
        """The target host (lowercase), from the URL or the CONNECT's ``host:port``."""
        if self.kind == "connect":
            return self.target.rpartition(":")[0].strip("[]").lower() or None
        return urlsplit(self.target).hostname

    @property
    def is_attempt(self) -> bool:
        """Whether this record is one download attempt (what :meth:`Gateway.count` counts).

        Plain requests and requests inside tunnels count once each, whatever their outcome
        (a 407 included). A CONNECT counts only when it did *not* open a tunnel (refused,
        closed, hung, 407): an opened tunnel's attempts are the requests inside it, which
        may be several when the client keeps the tunnel alive. Malformed requests never count.
        """
        if self.session is None or self.outcome == "bad_request":
            return False
        return self.kind != "connect" or self.outcome != "ok"


# --------------------------------------------------------------------------- TLS certificate

_tls_lock = threading.Lock()
#: host -> a server context whose certificate names that host (see _server_tls_context).
_tls_contexts: dict[str, ssl.SSLContext] = {}
_tls_key: Any = None  # cryptography's EC private key, imported only once TLS is used
#: Contexts kept at most; past that the cache starts afresh (a test crawls a few hosts).
_TLS_CONTEXTS_MAX = 1024


def _server_tls_context(host: str) -> ssl.SSLContext:
    """A server context whose self-signed certificate is valid for ``host`` (the CONNECT's
    target), made once per host and process. A client that checks the name it dialled against
    the certificate (Scrapy does, and logs a WARNING on a mismatch, though it does not verify
    the issuer) finds it; only the issuer is unknown."""
    with _tls_lock:
        ctx = _tls_contexts.get(host)
        if ctx is None:
            if len(_tls_contexts) >= _TLS_CONTEXTS_MAX:
                _tls_contexts.clear()
            ctx = _tls_contexts[host] = _make_tls_context(host)
        return ctx


def _make_tls_context(host: str) -> ssl.SSLContext:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    global _tls_key
    if _tls_key is None:  # one key for every host's certificate
        _tls_key = ec.generate_private_key(ec.SECP256R1())
    key: ec.EllipticCurvePrivateKey = _tls_key
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address(HOST)),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host and host != "localhost" and host.isascii():
            names.append(x509.DNSName(host))
    else:
        if str(address) != HOST:
            names.append(x509.IPAddress(address))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hexgate test origin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain only reads files: write a private temporary file, load it, delete it.
    fd, path = tempfile.mkstemp(prefix="hexgate-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --------------------------------------------------------------------------- HTTP plumbing


class _BadRequest(Exception):
    """Malformed request: answer 400 and close."""


class _ClientGone(Exception):
    """The client closed the connection in the middle of a request."""


class _Reader:
    """Minimal buffered reader over a (possibly TLS) socket, with size limits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        """One line including its LF; b"" at EOF (partial trailing data is returned as is)."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                if len(line) > _MAX_LINE:
                    raise _BadRequest("line too long")
                return line
            if len(self.buf) > _MAX_LINE:
                raise _BadRequest("line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _ClientGone()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class _Request:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in reversed(self.headers):
            if k.lower() == name:
                return v
        return None

    def header_tokens(self, name: str) -> list[str]:
        name = name.lower()
        return [
            t.strip().lower()
            for k, v in self.headers
            if k.lower() == name
            for t in v.split(",")
            if t.strip()
        ]

    def wants_close(self) -> bool:
        tokens = self.header_tokens("connection") + self.header_tokens("proxy-connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" not in tokens
        return "close" in tokens


def _is_token(s: str) -> bool:
    return bool(s) and all(c in _TOKEN_CHARS for c in s)


def _read_request(reader: _Reader) -> _Request | None:
    """Read one request. None on a clean EOF before it; raises _BadRequest / _ClientGone."""
    line = reader.readline()
    # RFC 9112 2.2: ignore at least one empty line before the request line.
    for _ in range(8):
        if line not in (b"\r\n", b"\n"):
            break
        line = reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _ClientGone()
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise _BadRequest("non-ascii request line") from None
    parts = text.split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest("unsupported HTTP version")
    headers: list[tuple[str, str]] = []
    while True:
        hline = reader.readline()
        if not hline.endswith(b"\n"):
            raise _ClientGone()
        if hline in (b"\r\n", b"\n"):
            break
        if len(headers) >= _MAX_HEADERS:
            raise _BadRequest("too many headers")
        try:
            htext = hline.decode("latin-1").rstrip("\r\n")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise _BadRequest("bad header") from None
        name, sep, value = htext.partition(":")
        if not sep or not _is_token(name):
            raise _BadRequest("malformed header line")
        headers.append((name, value.strip(" \t")))
    req = _Request(method, target, version, headers)
    req.body = _read_body(reader, req)
    return req


def _read_body(reader: _Reader, req: _Request) -> bytes:
    te = req.header_tokens("transfer-encoding")
    lengths = {v.strip() for k, v in req.headers if k.lower() == "content-length"}
    if te:
        if lengths or te != ["chunked"]:
            raise _BadRequest("unsupported transfer-encoding")
        body = bytearray()
        while True:
            size_line = reader.readline()
            if not size_line.endswith(b"\n"):
                raise _ClientGone()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size < 0 or len(body) + size > _MAX_BODY:
                raise _BadRequest("bad chunk size")
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += reader.read(size)
            if reader.readline() not in (b"\r\n", b"\n"):
                raise _BadRequest("bad chunk")
    if not lengths:
        return b""
    if len(lengths) != 1:
        raise _BadRequest("conflicting content-length")
    value = lengths.pop()
    if not value.isdigit() or int(value) > _MAX_BODY:
        raise _BadRequest("bad content-length")
    return reader.read(int(value))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: tuple[tuple[str, str], ...] = (),
    head: bool = False,
    close: bool = False,
    reason: str | None = None,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_reason(status) if reason is None else reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in extra]
    lines.append("Connection: close" if close else "Connection: keep-alive")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head else out + body


def _echoed(req: _Request) -> str:
    """The request's credentials as an echoing gateway's reason phrase: the header value and
    what it decodes to."""
    value = (req.header("proxy-authorization") or "").strip()
    try:
        decoded = base64.b64decode(value.partition(" ")[2], validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        decoded = ""
    return "".join(c for c in f"Bad credentials {value} ({decoded})" if " " <= c <= "~")


def _username_pattern(template: str, user: str | None) -> re.Pattern[str]:
    """A regex for the usernames ``template`` makes (``{user}``, ``{session}``, ``{{``, ``}}``,
    as HEX_PROXY_USERNAME_TEMPLATE); group ``session`` is the session. ``user=None``: any user
    (to attribute a 407 for a wrong user to the session it names)."""
    out = []
    sessions = 0
    for part in re.split(r"(\{\{|\}\}|\{user\}|\{session\})", template):
        if part == "{session}":
            out.append("(?P=session)" if sessions else "(?P<session>.+?)")
            sessions += 1
        elif part == "{user}":
            out.append(".*?" if user is None else re.escape(user))
        else:
            out.append(re.escape({"{{": "{", "}}": "}"}.get(part, part)))
    if not sessions:
        raise ValueError(f"username_template must contain {{session}}, got {template!r}")
    return re.compile("".join(out), re.DOTALL)


def _origin_page(session: str, url: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of the origin's answer for ``url``."""
    segs = urlsplit(url).path.split("/")
    if len(segs) == 3 and segs[1] == "status" and segs[2].isdigit():
        status = int(segs[2])
        if 200 <= status <= 599:
            return status, f"hexgate: {status}".encode(), "text/plain; charset=utf-8"
    links = ""
    if len(segs) == 3 and segs[1] == "links" and segs[2].isdigit():
        n = min(int(segs[2]), _MAX_LINKS)
        links = "<ul>" + "".join(f'<li><a href="/page/{i}">page {i}</a></li>' for i in range(n))
        links += "</ul>"
    body = (
        f'<html><body><p id="session">{html.escape(session)}</p>'
        f'<p id="url">{html.escape(url)}</p>{links}</body></html>'
    )
    return 200, body.encode("utf-8"), "text/html; charset=utf-8"


def _record_fields(record: Record) -> dict[str, object]:
    """A record as the control path's JSON gives it (``at`` is this process's monotonic clock,
    meaningless elsewhere: left out)."""
    return {
        "session": record.session,
        "kind": record.kind,
        "method": record.method,
        "target": record.target,
        "outcome": record.outcome,
        "username": record.username,
        "user_agent": record.user_agent,
        "cookie": record.cookie,
    }


def _origin_cookie(session: str, url: str) -> tuple[tuple[str, str], ...]:
    """The ``Set-Cookie`` header the origin adds for ``/cookie/NAME``: ``NAME=<session>``."""
    segs = urlsplit(url).path.split("/")
    if len(segs) == 3 and segs[1] == "cookie" and _is_token(segs[2]):
        return (("Set-Cookie", f"{segs[2]}={session}; Path=/"),)
    return ()


# --------------------------------------------------------------------------- the gateway


class _Conn:
    """A client connection; ``sock`` becomes the TLS socket once a tunnel is opened."""

    __slots__ = ("sock", "thread")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.thread: threading.Thread | None = None


class Gateway:
    """Sticky-session proxy gateway on 127.0.0.1 for tests (see the module docstring)."""

    host = HOST

    def __init__(
        self,
        user: str = "USER",
        password: str = "PASS",
        *,
        port: int = 0,
        keep_alive: bool = True,
        username_template: str = "{user}-session-{session}",
        accounts: Mapping[str, str] | None = None,
        open_session: str | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.user = user
        self._password = password
        # How session ids are read out of usernames (HEX_PROXY_USERNAME_TEMPLATE's syntax).
        self.username_template = username_template
        self._username = _username_pattern(username_template, user)
        self._any_username = _username_pattern(username_template, None)
        # Proxy-list accounts: user -> password, each one session named after the user.
        self._accounts = dict(accounts or {})
        # Requests without credentials are served as this session (an open proxy).
        self.open_session = open_session
        # Called with each Record as it is made, on the serving thread (the command line's -v).
        self.on_record = on_record
        self.port = port
        # False: "Connection: close" on every answer (see "Keep-alive and exact counts" above).
        self.keep_alive = keep_alive
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._behaviors: dict[str, tuple[Behavior, float]] = {}
        # (session or None for every session, target host) -> behaviour, see set_host_behavior.
        self._host_behaviors: dict[tuple[str | None, str], tuple[Behavior, float]] = {}
        self._default: tuple[Behavior, float] = (Behavior(), 0.0)
        self._conns: set[_Conn] = set()
        self._stop_event = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle

    def start(self) -> Gateway:
        """Bind 127.0.0.1 (``port``, 0 = any free port) and serve from daemon threads."""
        with self._lock:
            if self._started:
                raise RuntimeError("Gateway already started")
            self._started = True
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # So that restart() may bind the same port while old connections are in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"hexgate-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, release hung requests. Idempotent."""
        with self._lock:
            if not self._started or self._stopping:
                return
            self._stopping = True
        self._stop_event.set()
        deadline = time.monotonic() + _STOP_TIMEOUT
        if self._accept_thread is not None:
            self._accept_thread.join(_STOP_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                # The base-class method: shuts the file descriptor down even for a TLS socket
                # whose reading thread is blocked inside OpenSSL.
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))

    def restart(self) -> Gateway:
        """Serve again on the same port after ``stop()`` (a gateway that came back from an
        outage); records and behaviours are kept."""
        with self._lock:
            if not self._stopping:
                raise RuntimeError("Gateway not stopped")
            self._started = self._stopping = False
        self._stop_event = threading.Event()
        return self.start()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` -- the value for HEX_PROXY_GATEWAY."""
        if not self._started:
            raise RuntimeError("Gateway not started")
        return f"http://{HOST}:{self.port}"

    @property
    def password(self) -> str:
        return self._password

    def __repr__(self) -> str:
        where = f"http://{HOST}:{self.port}" if self._started else "not started"
        return f"<Gateway {where} user={self.user!r}>"

    # -- behaviours

    def set_behavior(self, session: str, behavior: Behavior) -> None:
        """Use ``behavior`` for ``session`` from now on (a fail_for window starts now)."""
        with self._lock:
            self._behaviors[session] = (behavior, time.monotonic())

    def set_default_behavior(self, behavior: Behavior) -> None:
        """Use ``behavior`` for every session without its own (a fail_for window starts now)."""
        with self._lock:
            self._default = (behavior, time.monotonic())

    def clear_behavior(self, session: str) -> None:
        """Make ``session`` follow the default behaviour again."""
        with self._lock:
            self._behaviors.pop(session, None)

    def set_host_behavior(self, host: str, behavior: Behavior, session: str | None = None) -> None:
        """Use ``behavior`` for requests to target ``host`` (a CONNECT's and its tunnel's too):
        those of ``session`` only, or of every session when ``session`` is None. It comes before
        the per-session and default behaviours, ``session``'s own before every session's."""
        with self._lock:
            self._host_behaviors[session, host.lower()] = (behavior, time.monotonic())

    def clear_host_behavior(self, host: str, session: str | None = None) -> None:
        """Undo ``set_host_behavior(host, ..., session)``."""
        with self._lock:
            self._host_behaviors.pop((session, host.lower()), None)

    def _action(self, session: str, host: str | None = None) -> Behavior:
        with self._lock:
            by_host = self._host_behaviors
            found = None
            if by_host and host is not None:
                found = by_host.get((session, host)) or by_host.get((None, host))
            behavior, since = found or self._behaviors.get(session, self._default)
        if behavior.seconds is not None and time.monotonic() - since >= behavior.seconds:
            return Behavior()
        return behavior

    # -- observation

    @property
    def records(self) -> list[Record]:
        """A snapshot of every request received since start or the last reset(), in order."""
        with self._lock:
            return list(self._records)

    def count(self, session: str, host: str | None = None) -> int:
        """Download attempts received for ``session`` (see :attr:`Record.is_attempt`); with
        ``host``, only those to that target host."""
        with self._lock:
            return sum(
                1
                for r in self._records
                if r.session == session and r.is_attempt and (host is None or r.host == host)
            )

    def counts(self) -> dict[str, int]:
        """Download attempts per session, for every session that made any."""
        out: dict[str, int] = {}
        with self._lock:
            for r in self._records:
                if r.is_attempt and r.session is not None:  # an attempt always has a session
                    out[r.session] = out.get(r.session, 0) + 1
        return out

    def reset(self) -> None:
        """Forget every record (and so every count). Behaviours are kept."""
        with self._lock:
            self._records.clear()

    def _record(
        self,
        session: str | None,
        kind: str,
        method: str,
        target: str,
        outcome: str,
        username: str | None,
        user_agent: str | None = None,
        cookie: str | None = None,
    ) -> None:
        rec = Record(
            session, kind, method, target, outcome, username, user_agent, cookie, time.monotonic()
        )
        with self._lock:
            self._records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)

    # -- serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._listener, selectors.EVENT_READ)
            while not self._stop_event.is_set():
                if not sel.select(0.05):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                sock.setblocking(True)
                conn = _Conn(sock)
                conn.thread = threading.Thread(
                    target=self._serve, args=(conn,), name="hexgate-conn", daemon=True
                )
                with self._lock:
                    if self._stopping:
                        sock.close()
                        break
                    self._conns.add(conn)
                try:
                    conn.thread.start()
                except RuntimeError:  # out of threads: refuse this client, keep serving
                    with self._lock:
                        self._conns.discard(conn)
                    sock.close()
        finally:
            sel.close()

    def _serve(self, conn: _Conn) -> None:
        try:
            self._serve_connection(conn)
        except (OSError, _ClientGone):
            pass  # the client went away, or stop() shut the socket
        except Exception:
            logger.exception("hexgate: unexpected error while serving a connection")
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.sock.close()
            except OSError:
                pass

    def _serve_connection(self, conn: _Conn) -> None:
        reader = _Reader(conn.sock)
        while not self._stop_event.is_set():
            try:
                req = _read_request(reader)
            except _BadRequest:
                self._record(None, "http", "", "", "bad_request", None)
                conn.sock.sendall(_response(400, b"hexgate: 400", close=True))
                return
            if req is None:
                return
            if req.method == "CONNECT":
                self._handle_connect(conn, reader, req)
                return
            if not self._handle_proxied(conn, req):
                return

    def _authenticate(self, req: _Request) -> tuple[str | None, str | None, bool]:
        """(session, username, ok) from Proxy-Authorization.

        An account's username or the template's spelling of the gateway user is checked
        against its password (a wrong one: 407). With ``open_session``, a request without
        credentials, or with a username that is neither, is served as that session, as an open
        proxy ignores what it does not ask for (the username is recorded)."""
        session, username, ok = self._check_credentials(req.header("proxy-authorization"))
        if self.open_session is not None and not ok and not self._known(username):
            return self.open_session, username, True
        return session, username, ok

    def _known(self, username: str | None) -> bool:
        """Whether ``username`` is one whose password this gateway checks."""
        return username is not None and (
            username in self._accounts or self._username.fullmatch(username) is not None
        )

    def _check_credentials(self, value: str | None) -> tuple[str | None, str | None, bool]:
        if value is None:
            return None, None, False
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            return None, None, False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None, None, False
        username, sep, password = decoded.partition(":")
        if not sep:
            return None, None, False  # no "user:password" shape: record nothing of it
        if username in self._accounts:
            ok = hmac.compare_digest(
                password.encode("utf-8"), self._accounts[username].encode("utf-8")
            )
            return username, username, ok
        named = self._username.fullmatch(username)
        if named:
            ok = hmac.compare_digest(password.encode("utf-8"), self._password.encode("utf-8"))
            return named.group("session"), username, ok
        # Wrong user: still attribute the 407 to the session it names, if any.
        named = self._any_username.fullmatch(username)
        return (named.group("session") if named else None), username, False

    def _handle_proxied(self, conn: _Conn, req: _Request) -> bool:
        """Serve one plain proxied request; False when the connection must close."""
        if req.target.startswith(CONTROL_PATH):
            return self._control(conn, req)
        split = urlsplit(req.target)
        if split.scheme not in ("http", "https") or not split.netloc:
            self._record(None, "http", req.method, req.target, "bad_request", None)
            conn.sock.sendall(_response(400, b"hexgate: 400", close=True))
            return False
        close = req.wants_close() or not self.keep_alive
        session, username, ok = self._authenticate(req)
        if not ok:
            self._record(session, "http", req.method, req.target, "auth", username)
            conn.sock.sendall(
                _response(
                    407,
                    b"hexgate: 407",
                    extra=(("Proxy-Authenticate", 'Basic realm="hexgate"'),),
                    head=req.method == "HEAD",
                    close=close,
                )
            )
            return not close
        assert session is not None
        behavior = self._action(session, split.hostname)
        return self._answer(conn, req, "http", session, username, req.target, close, behavior)

    def _control(self, conn: _Conn, req: _Request) -> bool:
        """A request to the gateway itself (origin form, ``/_hexgate/...``): what it recorded,
        for a gateway run from the command line. Not recorded itself."""
        close = req.wants_close() or not self.keep_alive
        what = req.target[len(CONTROL_PATH) :]
        body: object
        if what == "counts" and req.method == "GET":
            body = self.counts()
        elif what == "records" and req.method == "GET":
            body = [_record_fields(r) for r in self.records]
        elif what == "reset" and req.method == "POST":
            self.reset()
            body = {"reset": True}
        else:
            conn.sock.sendall(
                _response(
                    404,
                    b"hexgate: GET /_hexgate/counts, GET /_hexgate/records, POST /_hexgate/reset",
                    close=close,
                )
            )
            return not close
        payload = json.dumps(body, indent=None).encode("utf-8")
        conn.sock.sendall(_response(200, payload, content_type="application/json", close=close))
        return not close

    def _answer(
        self,
        conn: _Conn,
        req: _Request,
        kind: str,
        session: str,
        username: str | None,
        url: str,
        close: bool,
        behavior: Behavior,
    ) -> bool:
        """Apply ``behavior`` to an authenticated request; False when the connection must close."""
        head = req.method == "HEAD"
        extra: tuple[tuple[str, str], ...] = (("X-Hex-Session", session),)
        seen = (req.header("user-agent"), req.header("cookie"))
        if behavior.action == "close":
            self._record(session, kind, req.method, url, "closed", username, *seen)
            return False
        if behavior.action == "hang":
            self._record(session, kind, req.method, url, "hang", username, *seen)
            self._hang(conn)
            return False
        if behavior.action == "status":
            status = behavior.status
            self._record(session, kind, req.method, url, f"status:{status}", username, *seen)
            body = f"hexgate: {status}".encode()
            extra = (*extra, *behavior.headers)
            ctype = "text/plain; charset=utf-8"
            if behavior.body is not None:
                body, ctype = behavior.body.encode("utf-8"), "text/html; charset=utf-8"
            reason = _echoed(req) if behavior.echo_credentials else None
            conn.sock.sendall(
                _response(
                    status,
                    body,
                    content_type=ctype,
                    extra=extra,
                    head=head,
                    close=close,
                    reason=reason,
                )
            )
            return not close
        status, body, ctype = _origin_page(session, url)
        outcome = "ok" if status == 200 else f"status:{status}"
        self._record(session, kind, req.method, url, outcome, username, *seen)
        extra += _origin_cookie(session, url)
        conn.sock.sendall(
            _response(status, body, content_type=ctype, extra=extra, head=head, close=close)
        )
        return not close

    def _hang(self, conn: _Conn) -> None:
        """Never answer: wait until the client leaves or stop() shuts the socket down."""
        while not self._stop_event.is_set():
            try:
                if not conn.sock.recv(65536):
                    return
            except OSError:
                return

    def _handle_connect(self, conn: _Conn, reader: _Reader, req: _Request) -> None:
        host, sep, port_text = req.target.rpartition(":")
        if (
            not sep
            or not host
            or not port_text.isdigit()
            or not 0 < int(port_text) < 65536
            or "/" in host
        ):
            self._record(None, "connect", req.method, req.target, "bad_request", None)
            conn.sock.sendall(_response(400, b"hexgate: 400", close=True))
            return
        session, username, ok = self._authenticate(req)
        if not ok:
            self._record(session, "connect", req.method, req.target, "auth", username)
            conn.sock.sendall(
                _response(
                    407,
                    b"hexgate: 407",
                    extra=(("Proxy-Authenticate", 'Basic realm="hexgate"'),),
                    close=True,
                )
            )
            return
        assert session is not None
        behavior = self._action(session, host.strip("[]").lower())
        if behavior.action != "ok" and not behavior.tunnel:
            # Any refusal ends the connection, whatever the client asked for.
            self._answer(conn, req, "connect", session, username, req.target, True, behavior)
            return
        self._record(session, "connect", req.method, req.target, "ok", username)
        conn.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._serve_tunnel(conn, reader, session, username, host, int(port_text))

    def _serve_tunnel(
        self,
        conn: _Conn,
        reader: _Reader,
        session: str,
        username: str | None,
        host: str,
        port: int,
    ) -> None:
        # Peek so that a client speaking plain HTTP through the tunnel is served too.
        first = bytes(reader.buf[:1]) or conn.sock.recv(1, socket.MSG_PEEK)
        if not first:
            return
        scheme = "http"
        if first == b"\x16" and not reader.buf:  # a TLS handshake record
            ctx = _server_tls_context(host.strip("[]").lower())
            with self._lock:
                if self._stopping:
                    return
                conn.sock = ctx.wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False
                )
            try:
                conn.sock.do_handshake()
            except OSError:
                return  # ssl.SSLError is an OSError: a client that gave up, or no TLS after all
            reader = _Reader(conn.sock)
            scheme = "https"
        default_port = 443 if scheme == "https" else 80
        authority = host if port == default_port else f"{host}:{port}"
        while not self._stop_event.is_set():
            try:
                req = _read_request(reader)
            except _BadRequest:
                self._record(session, "tunnel", "", "", "bad_request", username)
                conn.sock.sendall(_response(400, b"hexgate: 400", close=True))
                return
            if req is None:
                return
            if req.target.startswith("/"):
                url = f"{scheme}://{authority}{req.target}"
            elif urlsplit(req.target).scheme in ("http", "https"):
                url = req.target
            else:
                self._record(session, "tunnel", req.method, req.target, "bad_request", username)
                conn.sock.sendall(_response(400, b"hexgate: 400", close=True))
                return
            close = req.wants_close() or not self.keep_alive
            behavior = self._action(session, host.strip("[]").lower())
            if not self._answer(conn, req, "tunnel", session, username, url, close, behavior):
                return


# --------------------------------------------------------------------------- command line


class RedisServer:
    """A real ``redis-server`` (Debian's package, or any on PATH) on a free loopback port, for
    tests of the shared pool (``HEX_PROXY_REDIS_URL``): nothing saved to disk, stopped with
    :meth:`stop`. ``password`` sets ``requirepass`` (then :attr:`url` carries it).
    :meth:`stop` then :meth:`start` again is Redis lost and back, on the same port, empty::

        with RedisServer() as redis:
            settings["HEX_PROXY_REDIS_URL"] = redis.url
    """

    def __init__(self, password: str | None = None, executable: str = "redis-server") -> None:
        import shutil

        found = shutil.which(executable)
        if found is None:
            raise RuntimeError(
                f"{executable} is not installed: apt-get install redis-server (Debian, Ubuntu)"
                " or see https://redis.io/docs/latest/operate/oss_and_stack/install/"
            )
        self.executable = found
        self.password = password
        self.port = _free_port()
        self._process: Any = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        import subprocess

        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir()
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (port {self.port})")
            try:
                if self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required."):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        """Stops the server at once (SIGKILL: nothing is flushed, as when it crashes)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def command(self, *words: str) -> bytes:
        """One command in RESP, the first line of the reply (for the fixture's own checks;
        tests use the ``redis`` package). Authenticates first when a password is set."""

        def encode(parts: tuple[str, ...]) -> bytes:
            out = f"*{len(parts)}\r\n".encode()
            for part in parts:
                data = part.encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
            return out

        with socket.create_connection((HOST, self.port), timeout=2) as sock:
            payload = encode(words)
            if self.password:
                payload = encode(("AUTH", self.password)) + payload
            sock.sendall(payload)
            reader = sock.makefile("rb")
            if self.password:
                reader.readline()
            return reader.readline().rstrip(b"\r\n")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisServer {HOST}:{self.port}>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def advance_clock(crawler: object, seconds: float) -> None:
    """Move the middlewares' clock by ``seconds`` and wake requests waiting for a session.

    Needs ``HEX_PROXY_MANUAL_CLOCK = True``: then cooldowns end only when a test says so,
    without sleeping.
    """
    # Imported here: this module stays free of Scrapy/Twisted imports until used with them.
    from ._runtime import advance_clock as advance

    advance(crawler, seconds)  # type: ignore[arg-type]


#: ``--ban SESSION=page``'s body: a captcha page served with a 200, which only a ban policy
#: that reads the body calls a ban.
CAPTCHA_PAGE = '<html><body><form id="captcha">Are you a robot?</form></body></html>'

_BAN_FORMS = (
    "STATUS[,HEADER=VALUE...] | page[,STATUS][,@FILE] | echo[,STATUS] | close[,tunnel] | hang"
    " | fail,SECONDS[,STATUS|close] | ok"
)


def _parse_ban(text: str) -> tuple[str | None, str | None, Behavior]:
    """``--ban``'s ``[SESSION|*][@HOST]=BEHAVIOR``: (session or None for every session, host or
    None, the behaviour). Raises ValueError with what was expected."""
    who, sep, what = text.partition("=")
    session, _, host = who.partition("@")
    if not sep or not session or (not host and "@" in who):
        raise ValueError(
            f"expected SESSION=BEHAVIOR (SESSION: an id, *, or either @HOST), got {text!r}"
        )
    try:
        behavior = _parse_behavior(what)
    except ValueError as exc:
        raise ValueError(f"--ban {text!r}: {exc}; BEHAVIOR is {_BAN_FORMS}") from None
    return (None if session == "*" else session), (host or None), behavior


def _parse_behavior(what: str) -> Behavior:
    kind, *rest = what.split(",")
    if kind.isdigit():
        headers: list[tuple[str, str]] = []
        for part in rest:
            name, sep, value = part.partition("=")
            if sep and _is_token(name):
                headers.append((name, value))
            elif headers:  # a comma inside a value (an HTTP date): part of the last header
                headers[-1] = (headers[-1][0], f"{headers[-1][1]},{part}")
            else:
                raise ValueError(f"expected HEADER=VALUE, got {part!r}")
        return Behavior.answer(int(kind), tuple((n, v.strip()) for n, v in headers))
    if kind == "page":
        status, body = 200, CAPTCHA_PAGE
        for part in rest:
            if part.isdigit():
                status = int(part)
            elif part.startswith("@"):
                with open(part[1:], encoding="utf-8") as f:
                    body = f.read()
            else:
                raise ValueError(f"expected STATUS or @FILE, got {part!r}")
        return Behavior.page(body, status)
    if kind == "echo" and len(rest) <= 1 and all(p.isdigit() for p in rest):
        return Behavior.echo_credentials_in(*(int(p) for p in rest))
    if kind == "close" and rest in ([], ["tunnel"]):
        return Behavior.close(tunnel=bool(rest))
    if kind == "hang" and not rest:
        return Behavior.hang()
    if kind == "ok" and not rest:
        return Behavior.normal()
    if kind == "fail" and 1 <= len(rest) <= 2:
        try:
            seconds = float(rest[0])
        except ValueError:
            raise ValueError(f"expected SECONDS, got {rest[0]!r}") from None
        then = rest[1] if len(rest) == 2 else None
        if then == "close":
            return Behavior.fail_for(seconds, close=True)
        if then is None or then.isdigit():
            return Behavior.fail_for(seconds, None if then is None else int(then))
        raise ValueError(f"expected STATUS or close, got {then!r}")
    raise ValueError(f"unknown behaviour {what!r}")


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port, 0 ... 65535, got {text!r}")
    return int(text)


def _log_line(record: Record) -> str:
    """``-v``'s line for one request (the username, never a password: none is recorded)."""
    who = record.session or "-"
    as_user = f" (as {record.username})" if record.username else ""
    return (
        f"hexgate: {who} {record.kind} {record.method} {record.target} -> {record.outcome}{as_user}"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import errno
    import signal
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m scrapy_hexproxy.testing",
        description="Serve a loopback sticky-session proxy gateway on 127.0.0.1 until "
        "SIGINT/SIGTERM; prints its URL on one line. What it received stays until asked: "
        f"GET {CONTROL_PATH}counts, GET {CONTROL_PATH}records (JSON), POST {CONTROL_PATH}reset.",
    )
    parser.add_argument(
        "--port", type=_port, default=0, help="port, 0 ... 65535 (default 0: any free port)"
    )
    parser.add_argument("--user", default="USER", help="gateway user (default: USER)")
    parser.add_argument(
        "--password",
        default=os.environ.get("HEX_PROXY_PASS", "PASS"),
        help="gateway password (default: $HEX_PROXY_PASS or PASS)",
    )
    parser.add_argument(
        "--no-keep-alive",
        dest="keep_alive",
        action="store_false",
        help='answer every request with "Connection: close"',
    )
    parser.add_argument(
        "--ban",
        action="append",
        default=[],
        metavar="SESSION=BEHAVIOR",
        help="script a session's behaviour (repeatable); SESSION is a session id, or * for every"
        " session without its own, either optionally @HOST for one target host; BEHAVIOR is "
        + _BAN_FORMS.replace("%", "%%")
        + f" (page without @FILE: a captcha page, {CAPTCHA_PAGE!r}). Examples: s001=403,"
        " s002=429,Retry-After=30, s003=page, s004=close, s005=fail,5,503, *@shop.test=403",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log one line per request on stderr: session, kind, method, target, outcome",
    )
    args = parser.parse_args(argv)
    try:
        bans = [_parse_ban(b) for b in args.ban]
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    def log(record: Record) -> None:
        sys.stderr.write(_log_line(record) + "\n")
        sys.stderr.flush()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    gateway = Gateway(
        args.user,
        args.password,
        port=args.port,
        keep_alive=args.keep_alive,
        on_record=log if args.verbose else None,
    )
    for session, host, behavior in bans:
        if host is not None:
            gateway.set_host_behavior(host, behavior, session)
        elif session is None:
            gateway.set_default_behavior(behavior)
        else:
            gateway.set_behavior(session, behavior)
    try:
        gateway.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"hexgate: port {args.port} on {HOST} is already in use (another gateway?):"
                " choose another with --port, or leave --port out for any free port",
                file=sys.stderr,
            )
        else:
            print(f"hexgate: cannot listen on {HOST}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        print(gateway.url, flush=True)
        while not done.wait(0.5):  # a timed wait: the signal handler runs in between
            pass
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
