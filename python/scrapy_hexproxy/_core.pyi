"""Native core of scrapy_hexproxy: the session pool, retry policy and stats."""

from collections.abc import Coroutine, Sequence
from typing import Any, Final, Protocol, final

from scrapy import Request, Spider
from scrapy.http import Response
from typing_extensions import Self, disjoint_base

__all__ = [
    "ATTEMPT_KEY",
    "AUTH_FAILED",
    "BAN_KEY",
    "BLACKLISTED",
    "DEFAULT_USERNAME_TEMPLATE",
    "FAILED",
    "FAILED_KEY",
    "GIVE_UP",
    "NOT_BEFORE_KEY",
    "PASS",
    "PROXY_REJECTED",
    "RETRY",
    "ROTATED",
    "SESSION_KEY",
    "SWITCH_KEY",
    "Core",
    "ProxyHooks",
    "RetryHooks",
    "__version__",
]

__version__: Final[str]
"""Version of the package, from Cargo.toml."""

BLACKLISTED: Final = 1
"""Flag returned by ``record_*``: this failure blacklisted the session."""

AUTH_FAILED: Final = 2
"""Flag returned by ``record_status`` / ``record_refusal``: this 407 reached
``auth_failures_to_close`` in a row. Returned once per ``Core``; ``Core.auth_failed`` stays true
from then on, and ``pick`` hands out no session any more."""

FAILED: Final = 4
"""Flag returned by ``record_*``: the attempt counted as a failure of its session."""

PROXY_REJECTED: Final = 8
"""Flag returned by ``record_status`` / ``record_refusal``, proxy list only: this 407 brought the
session's proxy to ``auth_failures_to_close`` consecutive 407s (again, after a success)."""

DEFAULT_USERNAME_TEMPLATE: Final = "{user}-session-{session}"
"""The default ``username_template``: the gateway username of the original guide."""

ROTATED: Final = 16
"""Flag returned by ``record_*`` with ``BLACKLISTED`` when ``on_blacklist="rotate"``: the
session's slot took a new id at once instead of cooling down; the new session's number is the
old one plus ``pool_size``."""

PASS: Final = 0
"""``decide_retry``: not a retry case, hand the response or exception on unchanged."""

RETRY: Final = 1
"""``decide_retry``: schedule a retry (counted in ``hex_proxy/retry``)."""

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

NOT_BEFORE_KEY: Final = "_hex_not_before"
"""Meta key of a paced retry: the time on the core's clock (``Core.now``) before which it must
not be sent."""

GIVE_UP: Final = 2
"""``decide_retry``: retryable but out of retries (counted in ``hex_proxy/retry/max_exceeded``)."""

@final
class Core:
    """The session pool, retry policy and stats of one crawl. Thread-safe.

    The pool has ``pool_size`` slots, ``0 .. pool_size - 1``. A session is named by its
    *number*: its slot plus the slot's generation times ``pool_size``. Without rotation
    (``on_blacklist="cooldown"``, no ``session_max_uses`` or ``session_max_age``) every
    generation is 0 and the number is the slot; with it, a slot moves to its next generation,
    a number no session had before. Every method that takes a ``number`` raises
    ``IndexError`` for one no slot can have. Every operation is O(1) at any pool size.

    ``host`` (in ``pick``, ``record_*``, ``next_live_in``): the request's target host. In ban
    scope ``"domain"`` failures and blacklists are kept per (slot, host) and there is no global
    blacklist (``None`` stands for the empty host); in scope ``"session"`` it is ignored.
    """

    # PyO3 writes an owned String default as "..." in the signature the module carries, and
    # stubtest compares defaults with it: the docstring names those defaults instead.
    def __new__(
        cls,
        *,
        pool_size: int,
        max_failures: int,
        cooldown: float,
        max_retries: int,
        retry_codes: Sequence[int],
        failure_codes: Sequence[int],
        auth_failures_to_close: int,
        user: str,
        password: str,
        username_template: str = ...,
        proxies: Sequence[tuple[str, str]] | None = None,
        manual_clock: bool = False,
        seed: int | None = None,
        backoff_base: float = 0.0,
        backoff_max: float = 60.0,
        on_blacklist: str = ...,
        session_max_uses: int = 0,
        session_max_age: float = 0.0,
        ban_scope: str = ...,
    ) -> Self:
        """Validate the settings and build the pool with every session live.

        Raises ``ValueError`` naming the ``HEX_PROXY_*`` setting that is out of range (the
        password is never part of the message). ``manual_clock=True`` starts a clock at 0 that
        only ``advance`` moves; ``seed`` (``0 <= seed < 2**64``) makes the picks and the retry
        waits reproducible. ``backoff_base`` > 0 switches retry pacing on (see ``retry_wait``).

        With a gateway, ``username_template`` (default ``DEFAULT_USERNAME_TEMPLATE``) makes the
        username of each session from ``{user}`` and ``{session}``. ``proxies`` replaces the
        gateway with a list: ``(source, "scheme://[user[:password]@]host:port")`` pairs, source
        naming the entry in errors (``"HEX_PROXY_LIST entry 3"``); each distinct proxy is one
        session, in list order, exact repeats kept once (``duplicate_proxies``); ``user``,
        ``password``, ``username_template`` and ``pool_size`` are then not used.
        ``on_blacklist`` is ``"cooldown"`` (the default) or ``"rotate"``: a blacklisted
        session's slot takes a new id at once instead of cooling down. ``session_max_uses``
        (hand-outs) and ``session_max_age`` (seconds from the id's first hand-out) rotate an id
        when it is next picked; 0 = never.
        ``ban_scope`` is ``"session"`` (the default) or ``"domain"`` (``HEX_PROXY_BAN_SCOPE``;
        ``"domain"`` refuses ``on_blacklist="rotate"``).
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

    def record_status(self, number: int, status: int, host: str | None = None) -> int:
        """Count a response on the session. A status in ``failure_codes`` is a failure (stat
        ``hex_proxy/failure/<status>``); any other status is a success that resets the session's
        consecutive failures. A 407 counts towards ``auth_failures_to_close`` whatever the
        failure codes; a success resets that count. Returns ``FAILED | BLACKLISTED | ROTATED |
        AUTH_FAILED`` flags. A failure on a session that is already cooling, or whose slot has
        moved on to a new id since, is counted in the stats only (and such a success resets
        nothing)."""

    def record_response(
        self, number: int, status: int, failed: bool, host: str | None = None
    ) -> int:
        """Count a response as a ban policy judged it: ``failed`` (a ban) is a failure of the
        session, counted under ``hex_proxy/failure/<status>`` when the status is one of
        ``failure_codes`` and under ``hex_proxy/failure/ban`` otherwise; not ``failed`` is a
        success, whatever the status. A 407 counts towards ``auth_failures_to_close`` either
        way. Returns flags as ``record_status``."""

    def record_ban(self, number: int, host: str | None = None) -> int:
        """Count a ban without a status (a ban policy's verdict on an exception that is no
        transport failure) as a failure, stat ``hex_proxy/failure/ban``. Returns ``FAILED``,
        with ``BLACKLISTED`` (and ``ROTATED``) when it blacklisted the session."""

    def record_success(self, number: int, host: str | None = None) -> None:
        """Count an attempt that worked but whose status was not seen (e.g. a redirect):
        resets the session's consecutive failures and the consecutive 407s."""

    def record_exception(self, number: int, reason: str, host: str | None = None) -> int:
        """Count a transport exception on the session as a failure; ``reason`` (the exception
        class name) names the stat ``hex_proxy/failure/<reason>``. Returns ``FAILED``, with
        ``BLACKLISTED`` (and ``ROTATED``) when it blacklisted the session."""

    def record_refusal(self, number: int, status: int, host: str | None = None) -> int:
        """Count a CONNECT tunnel the gateway refused with ``status``: always a failure of the
        session, stat ``hex_proxy/failure/<status>`` (``TunnelError`` outside 100..599); a 407
        also counts towards ``auth_failures_to_close``. Returns ``FAILED | BLACKLISTED |
        ROTATED | AUTH_FAILED`` flags."""

    def decide_retry(
        self, status: int | None, retry_times: int, max_retry_times: int | None = None
    ) -> int:
        """Whether to retry: ``PASS``, ``RETRY`` or ``GIVE_UP``.

        ``status`` is the response status, or ``None`` for a transport exception or a ban
        (always retryable); a status is retryable when it is in ``retry_codes``, except a 407 once
        ``auth_failed``. ``retry_times`` is the number of retries already done (the request's
        ``retry_times`` meta); ``max_retry_times`` (meta) overrides ``max_retries``. Counts
        ``RETRY`` and ``GIVE_UP`` in the stats."""

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

    def take_released(self) -> bool:
        """Whether a cooldown ended early since the last call (domain scope: a slot cooling for
        some host took a new id, in ``pick`` or ``forget``): then wake the waiting requests."""

    def next_back(self) -> tuple[str, float] | None:
        """``(session id, seconds)`` of the cooling session whose cooldown ends first (domain
        scope: of the cooling (session, host) pairs); ``None`` when no session is cooling."""

    def advance(self, seconds: float) -> None:
        """Move the manual clock forward. ``RuntimeError`` on the system clock, ``ValueError``
        for a negative or non-finite number of seconds."""

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

class _Runtime(Protocol):
    """What the hooks need of ``scrapy_hexproxy._runtime.Runtime``."""

    core: Core
    proxy_url: str | None
    fresh_headers_type: type | None
    response_flags_slot: bool
    bind_cookiejar: bool
    user_agents: tuple[bytes, ...] | None
    default_user_agent: bytes | None
    ban_policy: Any
    """The ``HEX_PROXY_BAN_POLICY`` instance, or None; read once, when the hooks are made."""

# Native base classes with their own instance layout: a class cannot derive from both.
@disjoint_base
class ProxyHooks:
    """The per-request hooks of ``HexProxyMiddleware``, which subclasses this.

    The subclass keeps the runtime in ``self._runtime``; the hooks call its
    ``settle_unobserved``, ``wait_and_assign``, ``wait_until_due`` and ``_settled`` on the rare
    paths, and with a ban policy its ``response_is_ban`` (and ``bad_verdict``).
    """

    def __new__(cls, runtime: _Runtime, *args: Any, **kwargs: Any) -> Self: ...
    def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """Give the attempt a session: ``meta["proxy"]``, ``meta["hex_session"]``, the attempt
        token and the ``Proxy-Authorization`` header; with ``bind_cookiejar``,
        ``meta["cookiejar"]`` (the session id) unless the user chose the jar; with
        ``user_agents``, the session's ``User-Agent`` unless the user chose one. With no live
        session, return the runtime's coroutine that waits for one. A paced retry that still
        carries ``NOT_BEFORE_KEY`` (it bypassed the scheduler) gets the runtime's coroutine that
        waits until it is due, then does all this. A request with ``meta["hex_proxy"] = False``
        gets nothing; what an earlier attempt of ours put on it is taken off."""

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response:
        """Count the response against the attempt's session (once; never a cached one). With a
        ban policy, its verdict decides; a ban is left in ``meta[BAN_KEY]`` for the retry
        middleware."""

    def assign(self, request: Request, number: int) -> None:
        """Send the attempt through session ``number`` (as ``Core.pick`` returns it)."""

@disjoint_base
class RetryHooks:
    """The per-response hook of ``SmartRetryMiddleware``, which subclasses this and provides
    ``_retry(request, status, reason, response) -> Request | None`` and ``self._runtime``."""

    def __new__(cls, runtime: _Runtime, *args: Any, **kwargs: Any) -> Self: ...
    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        """Count the response as ``ProxyHooks.process_response`` does; for a status in the
        retry codes or a ban (and no ``dont_retry``, no ``meta["hex_proxy"] = False``) return
        ``self._retry(...)`` or the response."""
