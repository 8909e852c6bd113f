"""Native core of scrapy_hexproxy: the session pool, retry policy and stats."""

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypedDict, final

from scrapy import Request, Spider
from scrapy.http import Response
from typing_extensions import Self, Unpack, disjoint_base

__all__ = [
    "ATTEMPT_KEY",
    "AUTH_FAILED",
    "BAN_KEY",
    "BLACKLISTED",
    "DEFAULT_USERNAME_TEMPLATE",
    "FAILED",
    "FAILED_KEY",
    "MAX_PROXIES",
    "MAX_PROXY_FILE_BYTES",
    "NOT_BEFORE_KEY",
    "PROXY_REJECTED",
    "ROTATED",
    "SESSION_KEY",
    "SETTINGS",
    "SWITCH_KEY",
    "Core",
    "HookState",
    "ProxyHooks",
    "RetryHooks",
    "Setting",
    "__version__",
    "attempt_of",
    "parse_gateway",
]

__version__: Final[str]
"""Version of the package, from Cargo.toml."""

BLACKLISTED: Final = 1
"""Flag of a settled attempt (``Core.record``, ``Runtime.report``): this failure blacklisted the
session."""

AUTH_FAILED: Final = 2
"""Flag of a settled attempt: this 407 reached
``auth_failures_to_close`` in a row. Returned once per ``Core``; ``Core.auth_failed`` stays true
from then on, and ``pick`` hands out no session any more."""

FAILED: Final = 4
"""Flag of a settled attempt: it counted as a failure of its session."""

PROXY_REJECTED: Final = 8
"""Flag of a settled attempt, proxy list only: this 407 brought the
session's proxy to ``auth_failures_to_close`` consecutive 407s (again, after a success)."""

DEFAULT_USERNAME_TEMPLATE: Final = "{user}-session-{session}"
"""The default ``username_template``: the gateway username of the original guide."""

ROTATED: Final = 16
"""Flag of a settled attempt, with ``BLACKLISTED`` when ``on_blacklist="rotate"``: the
session's slot took a new id at once instead of cooling down; the new session's number is the
old one plus ``pool_size``."""

ATTEMPT_KEY: Final = "_hex_attempt"
"""Meta key of the attempt in flight: a first attempt in session scope carries its session
number alone (an int); otherwise ``(session number, retry_times when it was sent)``, and in ban
scope ``"domain"`` a third item, the target host it was sent to (it settles against that host)."""

FAILED_KEY: Final = "_hex_failed"
"""Meta key of the slots whose sessions already failed this request (a tuple)."""

SESSION_KEY: Final = "hex_session"
"""Meta key of the public session id of the attempt."""

BAN_KEY: Final = "_hex_ban"
"""Meta key of a ban verdict waiting for the retry middleware: set by the middleware that
settled an attempt the ban policy called a ban without deciding its retry, taken off by the
one that decides; a stale one is dropped when the next attempt starts."""

SWITCH_KEY: Final = "hex_proxy"
"""Meta key of the per-request switch: a falsy value other than None (``False``, ``0``) leaves
the request alone (no session, no retry, no stats)."""

MAX_PROXIES: Final = 1000000
"""The most proxies a list may hold (``HEX_PROXY_LIST`` or ``HEX_PROXY_LIST_FILE``)."""

MAX_PROXY_FILE_BYTES: Final = 67108864
"""The largest ``HEX_PROXY_LIST_FILE`` read (64 MiB)."""

NOT_BEFORE_KEY: Final = "_hex_not_before"
"""Meta key of a paced retry: the time on the core's clock (``Core.now``) before which it must
not be sent."""

@final
class Setting:
    """One ``HEX_PROXY_*`` setting, as the core declares it (``src/settings.rs``)."""

    @property
    def name(self) -> str:
        """``"HEX_PROXY_SESSION_POOL_SIZE"``."""
    @property
    def key(self) -> str | None:
        """The keyword ``Core`` takes it by; ``None`` for one the Python package alone reads."""
    @property
    def kind(self) -> str:
        """How the value is read: ``"bool"``, ``"int"``, ``"seconds"``, ``"codes"``,
        ``"choice"``, ``"text"``, ``"gateway"``, ``"proxy_list"``, ``"proxy_file"``,
        ``"user_agents"`` or ``"ban_policy"``."""
    @property
    def default(self) -> bool | int | float | str | tuple[int, ...] | None:
        """The value while unset; ``None``: no value (see ``required``)."""
    @property
    def required(self) -> bool:
        """Whether a value is needed (with the gateway): there is no default."""
    @property
    def minimum(self) -> int | None:
        """The smallest value of an ``"int"`` setting."""
    @property
    def maximum(self) -> int | None:
        """The largest value of an ``"int"`` setting."""
    @property
    def choices(self) -> tuple[str, ...] | None:
        """The words of a ``"choice"`` setting (case is ignored), the default first."""
    @property
    def fallback(self) -> str | None:
        """A setting whose value stands in while this one is unset (Scrapy's own)."""
    @property
    def doc(self) -> str:
        """What it does, in a line."""
    def check(self, value: object) -> None:
        """``ValueError`` naming the setting when ``value`` (converted to the kind) is out of
        its bounds or none of its choices; for the settings ``Core`` does not take."""

SETTINGS: Final[tuple[Setting, ...]]
"""Every ``HEX_PROXY_*`` setting, in the README's order: the one declaration of each."""

class _CoreSettings(TypedDict, total=False):
    """``Core``'s keywords: the ``key`` of each ``Setting`` that has one, and ``proxies``."""

    pool_size: int
    max_failures: int
    cooldown: float
    max_retries: int
    retry_codes: Sequence[int]
    failure_codes: Sequence[int]
    auth_failures_to_close: int
    user: str
    password: str
    username_template: str
    proxies: Sequence[tuple[str, str]] | None
    manual_clock: bool
    seed: int | None
    backoff_base: float
    backoff_max: float
    on_blacklist: str
    session_max_uses: int
    session_max_age: float
    ban_scope: str

@final
class Core:
    """The session pool, retry policy and stats of one crawl. Thread-safe.

    The pool has ``pool_size`` slots, ``0 .. pool_size - 1``. A session is named by its
    *number*: its slot plus the slot's generation times ``pool_size``. Without rotation
    (``on_blacklist="cooldown"``, no ``session_max_uses`` or ``session_max_age``) every
    generation is 0 and the number is the slot; with it, a slot moves to its next generation,
    a number no session had before. Every method that takes a ``number`` raises
    ``IndexError`` for one no slot can have. Every operation is O(1) at any pool size.

    ``host`` (in ``pick``, ``record``, ``next_live_in``): the request's target host. In ban
    scope ``"domain"`` failures and blacklists are kept per (slot, host) and there is no global
    blacklist (``None`` stands for the empty host); in scope ``"session"`` it is ignored.
    """

    def __new__(cls, **settings: Unpack[_CoreSettings]) -> Self:
        """Validate the settings and build the pool with every session live.

        Takes each setting by its ``key`` in ``SETTINGS``; one left out has its declared
        default (``user`` and ``password``: empty, so a gateway needs them); ``TypeError`` for
        a keyword no setting has. Raises ``ValueError`` naming the ``HEX_PROXY_*`` setting that
        is out of range (the password is never part of the message). ``manual_clock=True``
        starts a clock at 0 that only ``advance`` moves; ``seed`` (``0 <= seed < 2**63``) makes
        the picks and the retry waits reproducible. ``backoff_base`` > 0 switches retry pacing
        on (see ``retry_wait``).

        With a gateway, ``username_template`` (default ``DEFAULT_USERNAME_TEMPLATE``) makes the
        username of each session from ``{user}`` and ``{session}``. ``proxies`` replaces the
        gateway with a list: ``(source, "scheme://[user[:password]@]host:port")`` pairs, source
        naming the entry in errors (``"HEX_PROXY_LIST entry 3"``); each distinct proxy is one
        session, in list order, exact repeats kept once (``duplicate_proxies``); ``user``,
        ``password``, ``username_template`` and ``pool_size`` are then not used.
        ``on_blacklist="rotate"``: a blacklisted session's slot takes a new id at once instead
        of cooling down. ``session_max_uses`` (hand-outs) and ``session_max_age`` (seconds from
        the id's first hand-out) rotate an id when it is next picked; 0 = never.
        ``ban_scope`` is ``"session"`` or ``"domain"`` (``HEX_PROXY_BAN_SCOPE``; ``"domain"``
        refuses ``on_blacklist="rotate"``).
        """

    def pick(self, exclude: tuple[int, ...] | None = None, host: str | None = None) -> int | None:
        """The number of a live session chosen uniformly at random, avoiding the slots in
        ``exclude`` (those that already failed this request) when any other session is live;
        among all live sessions if every one is excluded. A slot whose id was handed out
        ``session_max_uses`` times or first handed out ``session_max_age`` ago gets a new id
        first (stat ``hex_proxy/rotated``). ``None`` when every session is cooling down (see
        ``next_live_in``), and for good once ``auth_failed``. Domain scope: live = not cooling
        for ``host``, O(log c) for c sessions cooling for it; a slot that gets a new id is
        forgotten by every host."""

    def session_id(self, number: int) -> str:
        """The session's id: ``"s000"``, ``"s007"``, ``"s1234"`` (``f"s{number:03d}"``)."""

    def successor_id(self, number: int) -> str:
        """The id the session's slot takes when it rotates away from ``number``. Rotated ids are
        numbered from a per-crawl epoch (0 with ``seed``), so a restarted crawl does not reuse
        the last one's."""

    def slot(self, number: int) -> int:
        """The slot of the session: ``number % pool_size``."""

    def record(
        self,
        number: int,
        *,
        status: int | None = None,
        reason: str | None = None,
        host: str | None = None,
    ) -> int:
        """Count an outcome on the session directly, as the ledger would (for tests and
        benchmarks; a crawl's attempts are settled by the hooks): a response's ``status`` (a
        failure when it is one of ``failure_codes``, else a success that resets the session's
        consecutive failures; a 407 counts towards ``auth_failures_to_close``) or a transport
        exception named ``reason`` (stat ``hex_proxy/failure/<reason>``). Returns ``FAILED |
        BLACKLISTED | ROTATED | AUTH_FAILED | PROXY_REJECTED`` flags. ``ValueError`` unless
        exactly one of ``status`` and ``reason`` is given."""

    def retry_wait(self, retry_times: int, retry_after: float | None = None) -> float:
        """Seconds the retry whose ``retry_times`` (meta, 1 for the first retry) is ``n`` waits
        before it is downloaded: uniform in ``[0, min(backoff_max, backoff_base * 2**n)]`` (full
        jitter), or ``retry_after`` (what a ``Retry-After`` header asked for) capped by
        ``backoff_max``. Always 0.0 while pacing is off. Counts ``hex_proxy/retry/delayed``,
        ``.../retry_after``, ``.../wait_ms_total`` and ``.../wait_ms_max``."""

    def retries_dropped(self, count: int) -> None:
        """Count paced retries still waiting when the spider closed
        (``hex_proxy/retry/dropped_at_close``)."""

    def next_live_in(self, host: str | None = None) -> float:
        """Seconds until a session is live again (for ``host`` in domain scope); 0.0 when one is
        live now."""

    @property
    def gateway_down(self) -> bool:
        """Whether the gateway is down (promise 17): the hooks hold every request. Setting it
        with a proxy list leaves it false."""

    @gateway_down.setter
    def gateway_down(self, down: bool) -> None: ...
    @property
    def has_gateway(self) -> bool:
        """Whether attempts go through one gateway (not a proxy list)."""

    def take_released(self) -> bool:
        """Whether a cooldown ended early since the last call (domain scope: a slot cooling for
        some host took a new id, in ``pick`` or ``forget``): then wake the waiting requests."""

    def next_back(self) -> tuple[str, float] | None:
        """``(session id, seconds)`` of the cooling session whose cooldown ends first (domain
        scope: of the cooling (session, host) pairs); ``None`` when no session is cooling."""

    def advance(self, seconds: float) -> None:
        """Move the manual clock forward. ``RuntimeError`` on the system clock, ``ValueError``
        for a negative or non-finite number of seconds."""

    def snapshot(self, wall: float, origin: str) -> bytes:
        """The pool's state for a pause (JOBDIR): cooling sessions with the time they have
        left, failure runs, the rotated ids' numbering, ban scope "domain"'s records; never the
        password. ``wall``:
        ``time.time()``; ``origin``: the gateway's ``host:port`` (``""`` with a proxy list).
        A scan of the pool: call it periodically, not per request."""

    def restore(
        self, data: bytes, wall: float, origin: str
    ) -> tuple[int, int, int, int, int] | str:
        """Restores a state ``snapshot`` wrote, before the first pick: the sessions
        ``(cooling, expired, failing, rotated, records)`` (``records``: ban scope "domain"'s
        (session, host) records); cooldowns go on with the time they had left less the pause
        by the wall clock. A state of another configuration (gateway, user,
        list, pool size, ban scope, rotation) changes nothing: the reason, as a string.
        ``ValueError`` for an unreadable state (truncated, damaged), which changes nothing."""

    def share(self, nth: int | None = None, wake_fd: int | None = None) -> None:
        """Shares the pool with other processes from now on (HEX_PROXY_REDIS_URL), before
        the first pick; ``nth``: this process's number from the shared counter; ``wake_fd``:
        a socket descriptor, taken over, that gets a byte when a note arrives in an empty
        outbox."""
    def take_notes(self) -> list[tuple[int, str | None, str, float]]:
        """``(number, host, what, seconds)`` noted for the other processes since the last
        call; ``what``: "failed", "cleared" or "banned"."""
    def take_fact(self, number: int, host: str | None, what: str, value: float = 0.0) -> int:
        """Takes another process's "run", "cleared" or "banned" about session ``number``;
        the flags BLACKLISTED and ROTATED."""
    def credentials_rejected_elsewhere(self) -> bool:
        """Another process sharing the pool found the credentials rejected: no session is
        handed out any more; True the first time."""
    def shared_key(self, origin: str) -> str:
        """The name of this pool's state in Redis."""
    def describe(self, origin: str) -> str:
        """What processes sharing a pool must agree on (no secret)."""
    def now(self) -> float:
        """Seconds on the core's clock since the core was created (monotonic)."""

    def stats(self) -> dict[str, int]:
        """The nonzero ``hex_proxy/...`` counters (``hex_proxy/rotated`` among them), plus the
        gauges ``hex_proxy/sessions/live`` and ``hex_proxy/sessions/cooling``. Domain scope:
        live = sessions cooling for no host, cooling = (session, host) pairs cooling, plus
        ``hex_proxy/hosts/tracked`` (and the counter ``hex_proxy/hosts/evicted``)."""

    @property
    def pool_size(self) -> int:
        """Number of sessions (slots)."""

    @property
    def ban_scope(self) -> str:
        """``"session"`` or ``"domain"``."""

    @property
    def max_retries(self) -> int:
        """Retries per request unless ``max_retry_times`` says otherwise."""

    @property
    def paced(self) -> bool:
        """Whether retries are paced (``backoff_base`` > 0)."""

    @property
    def live_count(self) -> int:
        """Sessions live now (domain scope: cooling for no host)."""

    @property
    def cooling_count(self) -> int:
        """Sessions cooling down now (domain scope: (session, host) pairs)."""

    @property
    def auth_failed(self) -> bool:
        """True once ``auth_failures_to_close`` consecutive 407s were recorded."""

    @property
    def user(self) -> str | None:
        """The gateway user (``HEX_PROXY_USER``); ``None`` with a proxy list. The password is
        never exposed."""

    def redact(self, text: str) -> str:
        """``text`` with every password of the gateway or the list replaced by ``***``: as
        written, percent-encoded, as a bytes repr shows it, and any base64 run that decodes to
        bytes holding it (a ``Proxy-Authorization`` value, at any alignment). For text from
        elsewhere that we log or raise (a reason phrase, an exception's message)."""

    def proxy_label(self, number: int) -> str | None:
        """The session's proxy as a person may see it, ``http://user:***@host:port`` (no
        password); ``None`` with a gateway."""

    def proxy_source(self, number: int) -> str | None:
        """Where the session's proxy was listed (``"HEX_PROXY_LIST entry 3"``); ``None`` with a
        gateway."""

    @property
    def duplicate_proxies(self) -> list[tuple[str, str]]:
        """``(kept, dropped)`` sources of the list entries that repeated an earlier entry exactly
        (same URL and credentials); empty with a gateway."""

def attempt_of(token: int | tuple[Any, ...]) -> tuple[int, int, str | None]:
    """``(session number, retry_times when it was sent, target host)`` of an attempt token
    (``meta[ATTEMPT_KEY]``); the host is ``None`` in session scope."""

def parse_gateway(url: str) -> tuple[str, str, int]:
    """``HEX_PROXY_GATEWAY`` (``http(s)://host:port``) as ``(scheme, host, port)``, scheme and
    host lower-cased, an IPv6 host without brackets. ``ValueError`` names the setting and what
    is wrong, never echoing the URL (it may hold a password)."""

class _Probes(Protocol):
    """What ``scrapy_hexproxy._scrapy.Probes`` found (the wall's probes)."""

    @property
    def public_api_only(self) -> bool: ...
    @property
    def lazy_headers_type(self) -> type | None: ...
    @property
    def response_flags_slot(self) -> bool: ...
    @property
    def headers_are_dicts(self) -> bool: ...
    @property
    def auth_proxy_key(self) -> str | None: ...
    @property
    def refused_connect(self) -> tuple[type[BaseException], ...]: ...
    @property
    def browser_errors(self) -> tuple[type[BaseException], type[BaseException]] | None: ...
    @property
    def transport_exceptions(self) -> tuple[type[BaseException], ...]: ...
    @property
    def unreachable(self) -> Callable[[BaseException], bool]: ...

class _Runtime(Protocol):
    """What the hooks need of ``scrapy_hexproxy._runtime.Runtime``."""

    core: Core
    @property
    def probes(self) -> _Probes: ...
    proxy_url: str | None
    bind_cookiejar: bool
    user_agents: tuple[bytes, ...] | None
    default_user_agent: bytes | None
    ban_policy: Any
    """The ``HEX_PROXY_BAN_POLICY`` instance, or None; read once, when the hooks are made."""
    playwright: bool
    """scrapy-playwright's handler serves http or https (read once)."""
    def browser_context(
        self, meta: dict[str, Any], number: int, proxy_url: str, session: str, header: Any
    ) -> None:
        """Sends a Playwright attempt through session ``number`` in its browser context."""
    hooks: HookState

@final
class HookState:
    """What both hook classes of a crawl share (made once, by the runtime, as ``hooks``): the
    core, the route and credentials, what the probes allow, the identity switches."""

    def __new__(cls, runtime: _Runtime) -> Self: ...

# Native base classes with their own instance layout: a class cannot derive from both.
@disjoint_base
class ProxyHooks:
    """The per-request hooks of ``HexProxyMiddleware``, which subclasses this.

    The subclass keeps the runtime in ``self._runtime``; the hooks read its ``hooks`` and call
    its ``report`` (a blacklist, a rejected proxy, the stop), ``wait_and_assign``,
    ``wait_until_due``, ``wake``, ``hold_for_gateway`` and ``gateway_unreachable`` on the
    rare paths, and with a ban policy its
    ``response_is_ban`` and ``exception_is_ban`` (and ``bad_verdict``).
    """

    def __new__(cls, runtime: _Runtime, *args: Any, **kwargs: Any) -> Self: ...
    def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Coroutine[Any, Any, None] | Request | None:
        """Give the attempt a session: ``meta["proxy"]``, ``meta["hex_session"]``, the attempt
        token and the ``Proxy-Authorization`` header; with ``bind_cookiejar``,
        ``meta["cookiejar"]`` (the session id) unless the user chose the jar; with
        ``user_agents``, the session's ``User-Agent`` unless the user chose one. An earlier
        attempt whose outcome never reached us is settled first. With no live session, return
        the runtime's coroutine that waits for one. A paced retry that still carries
        ``NOT_BEFORE_KEY`` (it bypassed the scheduler) gets the runtime's coroutine that waits
        until it is due, then does all this. While ``Core.gateway_down``, return what the runtime's
        ``hold_for_gateway`` returns (the request to hold, or a coroutine). A request with
        ``meta["hex_proxy"] = False`` gets nothing; what an earlier attempt of ours put on it
        is taken off."""

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response:
        """Settle the attempt (once; a cached response is nobody's outcome). With a ban
        policy, its verdict decides; a ban is left in ``meta[BAN_KEY]`` for the retry
        middleware."""

    def process_exception(
        self, request: Request, exception: BaseException, spider: Spider | None = None
    ) -> Request | None:
        """Settle the attempt on a download exception: a transport failure counts against the
        session (a refused CONNECT under the proxy's status), a programming error against
        nobody; with a ban policy, its verdict decides. A gateway that could not be reached
        (``_scrapy.unreachable``) is nobody's failure: return the runtime's
        ``gateway_unreachable`` copy to send once it answers."""

    def scheduled(self, request: Request) -> None:
        """The engine scheduled ``request``: settle an attempt it still carries (a middleware
        above ours made this copy of it) and take our credentials off it."""

    def forget_credentials(self, request: Request) -> None:
        """Take our ``Proxy-Authorization`` (and HttpProxyMiddleware's note of it) off a request
        that went through a session: its attempt is over."""

    def assign(self, request: Request, number: int) -> None:
        """Send the attempt through session ``number``, whatever its state."""

    def try_assign(self, request: Request) -> bool:
        """Send the attempt through a live session, avoiding those that failed the request;
        ``False`` when none is live."""

@disjoint_base
class RetryHooks:
    """The per-response and per-exception hooks of ``SmartRetryMiddleware``, which subclasses
    this and provides ``self._runtime`` and ``_retry(request, give_up, reason, status,
    response, exception) -> Request | None``, called when the ledger decided a retry (or that
    the request is out of retries, ``give_up``); ``response`` or ``exception`` is what the
    attempt ended with."""

    def __new__(cls, runtime: _Runtime, *args: Any, **kwargs: Any) -> Self: ...
    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        """Settle the attempt as ``ProxyHooks.process_response`` does, then decide: for a
        status in the retry codes or a ban (and no ``dont_retry``, no ``meta["hex_proxy"] =
        False``, retries left) return ``self._retry(...)``'s copy, else the response."""

    def process_exception(
        self, request: Request, exception: BaseException, spider: Spider | None = None
    ) -> Request | None:
        """Settle as ``ProxyHooks.process_exception`` does, then decide as for a response: a
        transport failure (or a ban) is retried; ``None`` hands the exception on."""
