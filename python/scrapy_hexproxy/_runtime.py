"""State shared by the two middlewares of one crawler: the Rust core and the attempt ledger.

An attempt's outcome is settled exactly once, by whichever middleware sees it first: the
attempt token lives in ``request.meta`` and is popped by the first one to see the outcome.
That is what makes failure tracking independent of the middlewares' order (the guide's
retry middleware saw failures first and returned a new request, so they were never counted).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Callable

from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred

from . import _core
from ._banpolicy import bad_verdict, build_ban_policy
from ._logstats import PoolHealth
from ._pacing import NOT_BEFORE, Pacer
from ._settings import HexProxyConfigError, HexSettings, check_pool_size, read_settings

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger("scrapy_hexproxy")

#: meta key of the attempt in flight: the session number, retry_times when it was sent, and in
#: ban scope "domain" the target host it was sent to; read it with ``attempt_of``.
ATTEMPT = _core.ATTEMPT_KEY
#: meta key of the session indices that already failed this request (a tuple: copies share it).
FAILED = _core.FAILED_KEY
#: meta key of a ban verdict left for the retry middleware (see hooks.rs).
BAN = _core.BAN_KEY
#: meta key of the per-request switch: ``meta["hex_proxy"] = False`` leaves a request alone.
SWITCH = _core.SWITCH_KEY

AUTH_FAILED_REASON = "hex_proxy_auth_failed"
_TUNNEL_STATUS = re.compile(r"'status': (\d{3})")


def _transport_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the attempt failed on the way (the session's fault, maybe)."""
    import scrapy.exceptions as scrapy_exceptions
    from scrapy.core.downloader.handlers.http11 import TunnelError
    from twisted.internet import defer, error
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    # Scrapy >= 2.15 wraps the Twisted errors into its own download exceptions.
    new_in_2_15 = (
        "DownloadConnectionRefusedError",
        "CannotResolveHostError",
        "DownloadTimeoutError",
        "DownloadFailedError",
        "ResponseDataLossError",
    )
    found = tuple(
        getattr(scrapy_exceptions, name) for name in new_in_2_15 if hasattr(scrapy_exceptions, name)
    )
    return (
        *found,
        TunnelError,
        error.ConnectError,
        error.ConnectionLost,
        error.ConnectionDone,
        error.TimeoutError,
        defer.TimeoutError,
        ResponseFailed,
        ResponseNeverReceived,
        OSError,
    )


def _fresh_headers_type() -> type | None:
    """Scrapy's ``Headers`` if the core may read a request's slots directly; else None.

    Scrapy >= 2.13 keeps a request's meta, headers and encoding in the slots ``_meta``,
    ``_headers`` and ``_encoding``, and makes the meta dict and the headers on first use (None
    until then); ``Headers.__init__`` only stores ``encoding`` (and what it is given). Going
    through the public properties and ``Headers.__init__`` costs Python calls on every request,
    half of the middlewares' own per-request cost. This checks each of those facts on real
    objects of the installed Scrapy; if any fails (older Scrapy builds both eagerly, a newer one
    may change), the core uses ``request.meta`` and ``request.headers``.
    """
    from scrapy import Request
    from scrapy.http.headers import Headers

    probe = Request("http://127.0.0.1/", encoding="ascii")
    slots = ("_meta", "_headers", "_encoding")
    if [getattr(probe, name, False) for name in slots] != [None, None, "ascii"]:
        return None
    try:
        made_state = vars(Headers(encoding="ascii"))
    except TypeError:  # no __dict__
        return None
    if Headers.__new__ is not dict.__new__:  # the core makes them as dict.__new__ does
        return None
    fresh = dict.__new__(Headers)
    fresh.encoding = "ascii"
    meta: dict[str, Any] = {}
    probe._headers = fresh
    probe._meta = meta
    if made_state != {"encoding": "ascii"} or probe.headers is not fresh or probe.meta is not meta:
        return None
    return Headers


def _response_flags_slot() -> bool:
    """Whether a response keeps its flags in the slot ``_flags``, None until first use, so the
    core may read it instead of the ``flags`` property (Scrapy >= 2.13; 2.11 keeps a plain
    attribute). Checked on real objects of the installed Scrapy, as the request's slots are."""
    from scrapy.http import Response

    plain = Response("http://127.0.0.1/")
    if getattr(plain, "_flags", False) is not None:
        return False
    cached = Response("http://127.0.0.1/", flags=["cached"])
    return cached._flags == ["cached"] and cached.flags is cached._flags


class Runtime:
    """One per crawler; created by the first of the two middlewares to be built."""

    @classmethod
    def of(cls, crawler: Crawler) -> Runtime:
        runtime = getattr(crawler, "_hex_proxy_runtime", None)
        if runtime is None:
            runtime = cls(crawler, read_settings(crawler.settings))
            crawler._hex_proxy_runtime = runtime  # type: ignore[attr-defined]
        return runtime

    def __init__(self, crawler: Crawler, settings: HexSettings) -> None:
        self.crawler = crawler
        self.settings = settings
        try:
            self.core = _core.Core(**settings.core_kwargs)
        except (ValueError, OverflowError) as exc:  # the core names the setting
            raise HexProxyConfigError(str(exc)) from None
        check_pool_size(settings, self.core.pool_size)
        # The gateway's URL for meta["proxy"]; a list's URLs are the core's.
        self.proxy_url = None if settings.gateway is None else settings.gateway.url
        self.fresh_headers_type = _fresh_headers_type()  # the core's fast path, if it holds
        self.response_flags_slot = _response_flags_slot()  # and the response's
        # Identity binding, read by the core's hooks (HEX_PROXY_BIND_COOKIEJAR, _USER_AGENTS).
        self.bind_cookiejar = settings.bind_cookiejar
        self.user_agents, self.default_user_agent = _user_agent_values(crawler, settings)
        self.transport_exceptions = _transport_exceptions()
        # HEX_PROXY_BAN_POLICY, read by the core's hooks: None leaves every verdict to the
        # core's default rules.
        self.ban_policy: Any = None
        self.response_is_ban: Any = None
        if settings.ban_policy is not None:
            self.ban_policy = build_ban_policy(
                settings.ban_policy,
                crawler,
                frozenset(settings.core_kwargs["failure_codes"]),
                self.transport_exceptions,
            )
            self.response_is_ban = self.ban_policy.response_is_ban
        self._waiters: list[Deferred[None]] = []
        self._wake_call: Any = None
        self.health = PoolHealth(
            self.core,
            settings.logstats_interval,
            manual_clock=settings.core_kwargs["manual_clock"],
        )
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        #: Retry pacing (HEX_PROXY_RETRY_BACKOFF_BASE > 0); None when off.
        self.pacer: Pacer | None = None
        if self.core.paced:
            self.pacer = Pacer(crawler, self.core, settings.core_kwargs["manual_clock"])
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    # -- sessions -----------------------------------------------------------------------

    def check_credentials(self) -> None:
        """Once the gateway has rejected the credentials, nothing more is sent with them (the
        core then hands out no session, so requests reach this through ``wait_and_assign``)."""
        if self.core.auth_failed:
            raise IgnoreRequest(
                "scrapy-hexproxy: the gateway rejected the credentials"
                if self.settings.gateway is not None
                else "scrapy-hexproxy: every proxy of the list rejected its credentials"
            )

    async def wait_and_assign(
        self, request: Request, assign: Callable[[Request, int], None], host: str | None = None
    ) -> None:
        """Every session is cooling (for ``host``, the target host in ban scope "domain"): wait
        for one to come back, without blocking the reactor; then ``assign(request, number)``
        (``HexProxyMiddleware.assign``). Requests to other hosts go on meanwhile."""
        while True:
            # Pick before parking too: a session may have come back since process_request.
            self.check_credentials()
            number = self.core.pick(request.meta.get(FAILED), host)
            if number is not None:
                assign(request, number)
                if host is not None and self.core.take_released():
                    self.wake()  # that pick gave a slot a new id, which ended a ban early
                return
            waiter: Deferred[None] = Deferred(self._forget)
            self._waiters.append(waiter)
            self._schedule_wake(host)
            await maybe_deferred_to_future(waiter)

    async def wait_until_due(self, request: Request, hooks: Any) -> None:
        """A paced retry that bypassed the scheduler (``engine.download()``) reached the
        downloader before its time: wait here, then give it a session as usual
        (``hooks.process_request``, which may wait for one in turn)."""
        due = request.meta.pop(NOT_BEFORE)
        assert self.pacer is not None  # the core only calls this when pacing is on
        await self.pacer.sleep_until(due)
        waiting = hooks.process_request(request)
        if waiting is not None:
            await waiting

    def _forget(self, waiter: Deferred[None]) -> None:
        """A waiting download was cancelled: stop tracking it."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    @property
    def waiting(self) -> int:
        """How many requests are waiting for a session to come back."""
        return len(self._waiters)

    def wake(self) -> None:
        """Let the waiting requests try again (after a cooldown ended or the clock moved), and
        the paced retries whose wait is over go."""
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        if self.pacer is not None:
            self.pacer.wake()

    def _schedule_wake(self, host: str | None = None) -> None:
        call = self._wake_call
        if call is not None and call.active() and host is None:
            return
        if self.settings.core_kwargs["manual_clock"]:
            return  # the test drives the clock; advance_clock() wakes the waiters
        from twisted.internet import reactor

        delay = self.core.next_live_in(host)
        if call is not None and call.active():
            # Domain scope: hosts come back at different times; wake for the earliest.
            if call.getTime() <= reactor.seconds() + delay:
                return
            call.cancel()
        self._wake_call = reactor.callLater(delay, self.wake)

    # -- outcomes -----------------------------------------------------------------------

    def settle_unobserved(self, request: Request) -> None:
        """The previous attempt's outcome never reached us (a middleware above ours returned a
        new request). A retry means it failed; anything else (a redirect) means it worked."""
        # The host it was sent to, not the copy's (a redirect may go elsewhere).
        number, retry_times, host = attempt_of(request.meta.pop(ATTEMPT))
        try:
            if request.meta.get("retry_times", 0) > retry_times:
                flags = self.core.record_exception(number, "unobserved", host)
                self._settled(request, number, flags, host)
            else:
                self.core.record_success(number, host)
        except IndexError:
            # No session of this crawl: the attempt of an earlier one (a request resumed from
            # JOBDIR, with another pool size or rotated ids of another epoch). Nothing to count.
            pass

    def settle_exception(
        self, request: Request, exception: BaseException, *, decides: bool = False
    ) -> bool:
        """Settle the attempt; True when the request is to be retried: a transport failure, or
        what the ban policy called a ban. With a policy, it judges the attempt here, once.
        ``decides``: the caller decides the retry; otherwise a ban verdict is left in meta for
        the retry middleware."""
        meta = request.meta
        attempt = meta.pop(ATTEMPT, None)
        transport = isinstance(exception, self.transport_exceptions)
        policy = self.ban_policy
        if attempt is None:
            # Settled already: by a middleware that may have left a ban verdict for us.
            if decides and policy is not None and meta.pop(BAN, False):
                return True
            return transport
        number, _, host = attempt_of(attempt)
        verdict, error = None, None
        if policy is not None:
            try:
                verdict = policy.exception_is_ban(request, exception)
                if verdict is not None and not isinstance(verdict, bool):
                    raise self.bad_verdict("exception_is_ban", verdict)
            except Exception as exc:
                # The policy's own error goes to the errback, but only once the attempt is
                # counted, by the default rules: its token is gone already.
                verdict, error = None, exc
        retry = self._settle_judged(request, exception, number, host, transport, verdict, decides)
        if error is not None:
            raise error
        return retry

    def _settle_judged(
        self,
        request: Request,
        exception: BaseException,
        number: int,
        host: str | None,
        transport: bool,
        verdict: bool | None,
        decides: bool,
    ) -> bool:
        """Count the attempt as the verdict says; True when the request is to be retried."""
        meta = request.meta
        status = self.tunnel_status(exception) if transport else None
        if verdict is False:
            # Not held against the session. A refused tunnel is the gateway's answer: a
            # response judged not a ban (a 407 still counts against the credentials).
            if status is not None:
                flags = self.core.record_response(number, status, False, host)
                self._settled(request, number, flags, host)
            return transport
        if transport:
            if status is None:
                flags = self.core.record_exception(number, type(exception).__name__, host)
            else:
                flags = self.core.record_refusal(number, status, host)
        elif verdict:
            flags = self.core.record_ban(number, host)
        else:
            return False  # a programming error is nobody's failure
        self._settled(request, number, flags, host)
        if verdict and not decides:
            meta[BAN] = True
        return True

    def bad_verdict(self, method: str, verdict: Any) -> TypeError:
        """The TypeError for a ban policy's verdict that is not True, False or None."""
        return bad_verdict(self.ban_policy, method, verdict)

    @staticmethod
    def tunnel_status(exception: BaseException) -> int | None:
        """The status with which the gateway refused a CONNECT tunnel, if that is what happened."""
        from scrapy.core.downloader.handlers.http11 import TunnelError

        if isinstance(exception, TunnelError):
            found = _TUNNEL_STATUS.search(str(exception))
            if found:
                return int(found.group(1))
        return None

    def _settled(self, request: Request, number: int, flags: int, host: str | None = None) -> None:
        """Act on the flags of an attempt on session ``number``; ``host``: where it went (ban
        scope "domain")."""
        if flags & _core.FAILED:
            # The slot, whatever id it goes by: the next pick avoids it.
            slot = self.core.slot(number)
            failed_before = request.meta.get(FAILED, ())
            if slot not in failed_before:
                request.meta[FAILED] = (*failed_before, slot)
        if flags & _core.ROTATED:
            logger.warning(
                "hex_proxy: session %s blacklisted after %d consecutive failures;"
                " its place goes on at once as new session %s",
                self.session_name(number),
                self.settings.core_kwargs["max_failures"],
                self.core.successor_id(number),
            )
        elif flags & _core.BLACKLISTED and host is not None:
            logger.warning(
                "hex_proxy: session %s blacklisted for host %s for %gs after %d consecutive"
                " failures there (it keeps serving other hosts)",
                self.session_name(number),
                host or "(none)",
                self.settings.core_kwargs["cooldown"],
                self.settings.core_kwargs["max_failures"],
            )
        elif flags & _core.BLACKLISTED:
            logger.warning(
                "hex_proxy: session %s blacklisted for %gs after %d consecutive failures",
                self.session_name(number),
                self.settings.core_kwargs["cooldown"],
                self.settings.core_kwargs["max_failures"],
            )
        if flags & _core.PROXY_REJECTED:
            logger.error(
                "hex_proxy: proxy %s rejected its credentials with %d consecutive 407"
                " responses: check that entry. The other proxies carry on.",
                self.session_name(number),
                self.settings.core_kwargs["auth_failures_to_close"],
            )
        if flags & _core.AUTH_FAILED:
            self._stop_for_bad_credentials()

    def session_name(self, number: int) -> str:
        """The session id; with a proxy list, also its proxy (no password) and entry."""
        session = self.core.session_id(number)
        label = self.core.proxy_label(number)
        if label is None:
            return session
        return f"{session} ({label}, {self.core.proxy_source(number)})"

    def _stop_for_bad_credentials(self) -> None:
        gateway = self.settings.gateway
        if gateway is not None:
            logger.error(
                "hex_proxy: the gateway %s rejected user %r with %d consecutive 407 responses:"
                " check HEX_PROXY_USER and HEX_PROXY_PASS. Closing the spider (%s).",
                gateway.host,
                self.core.user,
                self.settings.core_kwargs["auth_failures_to_close"],
                AUTH_FAILED_REASON,
            )
        else:
            logger.error(
                "hex_proxy: every proxy of %s rejected its credentials (%d consecutive 407"
                " responses each): %s. Closing the spider (%s).",
                self.settings.proxy_list,
                self.settings.core_kwargs["auth_failures_to_close"],
                _listing(
                    [self.session_name(i) for i in range(min(self.core.pool_size, _SHOWN))],
                    self.core.pool_size,
                ),
                AUTH_FAILED_REASON,
            )
        # Requests waiting for a session would hold the close up until a cooldown ends:
        # wake them, and they give up (check_credentials); so do any that come after.
        self.wake()
        engine = _late(self.crawler, "engine")
        if engine is None:
            return
        if hasattr(engine, "close_spider_async"):  # Scrapy >= 2.14
            deferred_from_coro(engine.close_spider_async(reason=AUTH_FAILED_REASON))
        else:
            engine.close_spider(self.crawler.spider, AUTH_FAILED_REASON)

    # -- stats ----------------------------------------------------------------------------

    def publish_stats(self) -> None:
        """Copy the core's counters and gauges into the crawler's stats."""
        stats = _late(self.crawler, "stats")
        if stats is None:
            return
        for key, value in self.core.stats().items():
            stats.set_value(key, value)

    def _spider_opened(self, spider: Any = None) -> None:
        self.health.start()

    def _spider_closed(self, spider: Any = None, reason: str = "") -> None:
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        if self.pacer is not None:
            dropped = self.pacer.close()
            if dropped:
                # As Scrapy drops its scheduler's queue on close (without JOBDIR).
                self.core.retries_dropped(dropped)
                logger.warning(
                    "hex_proxy: the spider closed (%s) with %d retries still waiting for their"
                    " backoff; they were dropped",
                    reason,
                    dropped,
                )
        gauges = self.health.stop()
        self.publish_stats()
        stats = _late(self.crawler, "stats")
        if stats is not None:
            for key, value in gauges.items():
                stats.set_value(key, value)


#: How many proxies a log line names at most (a list may be long).
_SHOWN = 10


def _listing(names: list[str], total: int) -> str:
    """The first of ``total`` names, joined; says how many more there are."""
    shown = names[:_SHOWN]
    more = total - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _user_agent_values(
    crawler: Crawler, settings: HexSettings
) -> tuple[tuple[bytes, ...] | None, bytes | None]:
    """HEX_PROXY_USER_AGENTS as header values, and Scrapy's default User-Agent (USER_AGENT),
    which a session's replaces: UserAgentMiddleware sets it first when HexProxy runs after it."""
    if settings.user_agents is None:
        return None, None
    default = crawler.settings.get("USER_AGENT")
    return (
        tuple(agent.encode("ascii") for agent in settings.user_agents),
        default.encode("utf-8") if isinstance(default, str) and default else None,
    )


def switched_off(meta: dict[str, Any]) -> bool:
    """Whether ``meta["hex_proxy"]`` leaves the request alone: a falsy value other than None."""
    switch = meta.get(SWITCH)
    return switch is not None and not switch


def attempt_of(token: int | tuple[Any, ...]) -> tuple[int, int, str | None]:
    """An attempt token's session number, ``retry_times`` when it was sent, and target host
    (ban scope "domain"; None in session scope). A first attempt in session scope is the
    number alone (see ``ATTEMPT_KEY`` in the core)."""
    if isinstance(token, int):
        return token, 0, None
    return token[0], token[1], token[2] if len(token) > 2 else None


def _late(crawler: Crawler, name: str) -> Any:
    """A crawler attribute that only exists once the crawl starts (None before)."""
    try:
        return getattr(crawler, name, None)
    except RuntimeError:  # Scrapy >= 2.14 raises instead of returning None
        return None


def advance_clock(crawler: Crawler, seconds: float) -> None:
    """Move the core's manual clock (``HEX_PROXY_MANUAL_CLOCK = True``); wake waiting requests."""
    runtime = Runtime.of(crawler)
    runtime.core.advance(seconds)
    runtime.wake()
    runtime.health.clock_moved()
