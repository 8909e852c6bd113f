"""State shared by the two middlewares of one crawler: the Rust core, the hooks' state, and
what must be Python: waiting for a session, the log lines and the stop a settled attempt calls
for, the stats.

Each attempt is settled exactly once, by whichever middleware sees its outcome first; the
ledger in the core (``src/ledger.rs``) keeps that rule and makes every decision, and the hooks
(``src/python/hooks.rs``) call it. This module decides nothing about an outcome.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from . import _core, _scrapy
from ._banpolicy import bad_verdict, build_ban_policy
from ._jobdir import PoolStateFile
from ._logstats import PoolHealth, warn_without_timeout
from ._outage import HELD, GatewayWatch
from ._pacing import NOT_BEFORE, Pacer, restore_held, save_held
from ._playwright import BrowserContexts, serves_routed_schemes
from ._scrapy import engine_open
from ._settings import (
    HexProxyConfigError,
    HexSettings,
    check_pool_size,
    origin_of,
    read_settings,
    warn_unknown_settings,
)
from ._shared import Fact, SharedPool, redis_key, redis_url

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger("scrapy_hexproxy")

AUTH_FAILED_REASON = "hex_proxy_auth_failed"

#: Stat: requests waiting for a session (or, fetched with ``engine.download()``, for their
#: backoff) when the spider closed without a JOBDIR: released unsent.
DROPPED_AT_CLOSE = "hex_proxy/dropped_at_close"

#: How often, while we hold a request, we look whether the engine began to close the spider.
#: Scrapy sends no signal when a close begins (``spider_closed`` comes after the downloader's
#: requests are done, and ours would wait for a cooldown), so the slot's ``closing`` is polled.
CLOSE_POLL = 0.1

#: Finish reason when a test's manual clock held every request for MANUAL_CLOCK_STALL seconds.
CLOCK_STALLED_REASON = "hex_proxy_manual_clock_stalled"

#: Seconds of real time that every request in the downloader may wait on a manual clock
#: (HEX_PROXY_MANUAL_CLOCK) that nothing moves, before the crawl is closed as a test that forgot
#: to call advance_clock: without this, such a test hangs for ever.
MANUAL_CLOCK_STALL = 10.0

#: The ERROR messages of crawls closed so, for the pytest plugin (_scrapy_hexproxy_pytest), which
#: fails the test with them; it empties the list around each test.
CLOCK_STALLS: list[str] = []


class Runtime:
    """One per crawler; created by the first of the two middlewares to be built."""

    @classmethod
    def of(cls, crawler: Crawler) -> Runtime:
        runtime = getattr(crawler, "_hex_proxy_runtime", None)
        if runtime is None:
            warn_unknown_settings(crawler.settings)  # before a wrong value stops the crawl
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
        #: The pool shared with other processes on Redis (HEX_PROXY_REDIS_URL); None alone.
        #: Before the JOBDIR's state is restored: a resumed crawl keeps its rotated ids' epoch.
        self.shared: SharedPool | None = None
        url = redis_url(crawler.settings)
        if url is not None:
            self.shared = SharedPool(
                self.core,
                url,
                redis_key(crawler.settings),
                origin_of(settings.gateway),
                cooldown=settings.core_kwargs["cooldown"],
                on_facts=self._take_shared,
                on_credentials=self._stop_for_credentials_elsewhere,
            )
        #: The pool's state in JOBDIR, restored here; None without JOBDIR.
        self.pool_state = PoolStateFile.open(crawler, self.core, settings.gateway)
        # The gateway's URL for meta["proxy"]; a list's URLs are the core's.
        self.proxy_url = None if settings.gateway is None else settings.gateway.url
        #: What the hooks may do directly with Scrapy's objects (the wall's probes).
        self.probes = _scrapy.probe()
        # Identity binding, read by the core's hooks (HEX_PROXY_BIND_COOKIEJAR, _USER_AGENTS).
        self.bind_cookiejar = settings.bind_cookiejar
        self.user_agents, self.default_user_agent = _user_agent_values(crawler, settings)
        self.transport_exceptions = self.probes.transport_exceptions
        # HEX_PROXY_BAN_POLICY, read by the core's hooks: None leaves every verdict to the
        # core's default rules.
        self.ban_policy: Any = None
        self.response_is_ban: Any = None
        self.exception_is_ban: Any = None
        if settings.ban_policy is not None:
            self.ban_policy = build_ban_policy(
                settings.ban_policy,
                crawler,
                frozenset(settings.core_kwargs["failure_codes"]),
                self.transport_exceptions,
            )
            self.response_is_ban = self.ban_policy.response_is_ban
            self.exception_is_ban = self.ban_policy.exception_is_ban
        self._waiters: list[Deferred[None]] = []
        self._wake_call: Any = None
        #: Set once the spider began to close: nothing we hold is sent any more (promise 14).
        self.closing = False
        #: With a JOBDIR what we hold at close is kept for the resume.
        self.jobdir: str | None = crawler.settings.get("JOBDIR") or None
        self._close_poll: Any = None
        #: advance_clock() calls so far, and (calls, real time) when every request was last
        #: seen waiting with that count: the manual clock's stall watch (see _check_stall).
        self.clock_moves = 0
        self._stall_since: tuple[int, float] | None = None
        self._dropped_at_close = 0
        self.health = PoolHealth(
            self.core,
            settings.logstats_interval,
            manual_clock=settings.core_kwargs["manual_clock"],
            crawler=crawler,
        )
        if self.shared is not None:
            self.health.extra = self.shared.health
        warn_without_timeout(crawler.settings)
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        #: Retry pacing (HEX_PROXY_RETRY_BACKOFF_BASE > 0); None when off.
        self.pacer: Pacer | None = None
        if self.core.paced:
            self.pacer = Pacer(crawler, self.core, settings.core_kwargs["manual_clock"])
            self.pacer.on_hold = self._watch_close
        #: The gateway's outages (promise 17); None with a proxy list, whose proxies are
        #: each judged as a session.
        self.outage: GatewayWatch | None = None
        if settings.gateway is not None:
            self.outage = GatewayWatch(
                crawler,
                self.core,
                settings.gateway.host,
                settings.gateway.port,
                settings.gateway_down_timeout,
            )
            self.outage.on_hold = self._watch_close
            self.outage.on_give_up = self._stop_for_unreachable_gateway
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        #: scrapy-playwright's handler serves http or https: an attempt with
        #: meta["playwright"] goes out in its session's browser context (read by the hooks).
        self.browser_contexts = BrowserContexts(crawler) if serves_routed_schemes(crawler) else None
        self.playwright = self.browser_contexts is not None
        #: The state both hook classes share (made last: it reads the attributes above).
        self.hooks = _core.HookState(self)

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
        self, request: Request, try_assign: Callable[[Request], bool], host: str | None = None
    ) -> Request | None:
        """Every session is cooling (for ``host``, the target host in ban scope "domain"): wait
        for one to come back, without blocking the reactor, and send the request through it
        (``try_assign``, the hooks': a pick and an assignment). Requests to other hosts go on
        meanwhile. Once the spider closes it is released unsent (``_released``)."""
        while True:
            if self.closing:
                return self._released(request)
            # Try before parking too: a session may have come back since process_request.
            self.check_credentials()
            if try_assign(request):
                return None
            waiter: Deferred[None] = Deferred(self._forget)
            self._waiters.append(waiter)
            self._schedule_wake(host)
            self._watch_close()
            await maybe_deferred_to_future(waiter)

    def _released(self, request: Request) -> Request:
        """The spider is closing: a request waiting for a session is not sent. With a JOBDIR it
        is returned, and the engine puts it back in the scheduler, whose disk queue keeps it for
        the resume (``dont_filter``: its fingerprint is already in ``requests.seen``); without,
        it is dropped and counted."""
        if self.jobdir is None:
            self._dropped_at_close += 1
            raise IgnoreRequest("scrapy-hexproxy: the spider closed while it waited for a session")
        request.dont_filter = True
        return request

    async def wait_until_due(self, request: Request, hooks: Any) -> Any:
        """A paced retry that bypassed the scheduler (``engine.download()``) reached the
        downloader before its time: wait here, then give it a session as usual
        (``hooks.process_request``, which may wait for one in turn). If the spider closes
        meanwhile it is dropped: ``engine.download()``'s caller waits for its answer."""
        due = request.meta.pop(NOT_BEFORE)
        assert self.pacer is not None  # the core only calls this when pacing is on
        self._watch_close()
        await self.pacer.sleep_until(due)
        if self.closing:
            self._dropped_at_close += 1
            raise IgnoreRequest("scrapy-hexproxy: the spider closed during the backoff")
        return await _answer(hooks.process_request(request))

    # -- the gateway's outage (promise 17) -----------------------------------------------

    def gateway_unreachable(self, request: Request, exception: BaseException) -> Request:
        """The ledger found this attempt's gateway unreachable (nobody blamed, no retry spent):
        the gateway is down; the copy to hold until it answers."""
        assert self.outage is not None  # the ledger says so only with a gateway
        self.outage.went_down(exception)
        return self.outage.mark(request.replace(dont_filter=True))

    def hold_for_gateway(self, request: Request, hooks: Any) -> Any:
        """``process_request`` while the gateway is down: the request, marked, for the engine
        to reschedule (the watch's handler then parks it outside the downloader); if it came
        back marked, it bypassed the scheduler (``engine.download()``): the coroutine that
        waits here for the gateway, then gives it a session."""
        assert self.outage is not None
        if self.closing:
            return self._released(request)
        if request.meta.pop(HELD, False):
            return self._wait_for_gateway(request, hooks)
        return self.outage.mark(request)

    async def _wait_for_gateway(self, request: Request, hooks: Any) -> Any:
        assert self.outage is not None
        self._watch_close()
        if not await self.outage.wait():
            self._dropped_at_close += 1
            raise IgnoreRequest("scrapy-hexproxy: the spider closed while the gateway was down")
        return await _answer(hooks.process_request(request))

    def _stop_for_unreachable_gateway(self, reason: str) -> None:
        _scrapy.close_spider(self.crawler, reason)
        self.close_begun()

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

    # -- close ----------------------------------------------------------------------------

    def _watch_close(self) -> None:
        """We hold a request: look every CLOSE_POLL seconds whether the spider began to close."""
        if self.closing or (self._close_poll is not None and self._close_poll.running):
            return
        from twisted.internet.task import LoopingCall

        self._close_poll = LoopingCall(self._poll_close)
        self._close_poll.start(CLOSE_POLL, now=False)

    def _poll_close(self) -> None:
        engine = _scrapy.late(self.crawler, "engine")
        if engine is not None and not engine_open(engine):
            self.close_begun()
        elif (
            not self._waiters
            and (self.pacer is None or not self.pacer.holding)
            and (self.outage is None or not self.outage.holding)
        ):
            self._stop_close_poll()
        elif self.settings.core_kwargs["manual_clock"]:
            self._check_stall(engine)

    def _check_stall(self, engine: Any) -> None:
        """On a manual clock, a request we hold waits until the test moves the clock. If every
        request in the downloader waits (and any paced retry is parked) while the clock stays
        put for MANUAL_CLOCK_STALL seconds of real time, nothing else can move it: the test
        forgot to. Say so and close the spider, rather than hang."""
        from twisted.internet import reactor

        now = reactor.seconds()
        in_downloader = _scrapy.downloading(engine) if engine is not None else None
        sleeping = self.pacer.sleeping if self.pacer is not None else 0
        everything_waits = (
            in_downloader is not None and in_downloader <= len(self._waiters) + sleeping
        )
        since = self._stall_since
        if not everything_waits or since is None or since[0] != self.clock_moves:
            self._stall_since = (self.clock_moves, now) if everything_waits else None
            return
        if now - since[1] < MANUAL_CLOCK_STALL:
            return
        retries = sleeping + (self.pacer.parked if self.pacer is not None else 0)
        message = (
            f"hex_proxy: {len(self._waiters)} requests waiting for a session and {retries} paced"
            f" retries have waited {MANUAL_CLOCK_STALL:g} s of real time on the manual clock"
            " (HEX_PROXY_MANUAL_CLOCK = True), which nothing moved: a test must call"
            " scrapy_hexproxy.testing.advance_clock(crawler, seconds) to end cooldowns and"
            f" backoffs. Closing the spider ({CLOCK_STALLED_REASON})."
        )
        logger.error(message)
        CLOCK_STALLS.append(message)
        _scrapy.close_spider(self.crawler, CLOCK_STALLED_REASON)
        self.close_begun()

    def _stop_close_poll(self) -> None:
        if self._close_poll is not None and self._close_poll.running:
            self._close_poll.stop()
        self._close_poll = None
        self._stall_since = None

    def close_begun(self) -> None:
        """The spider began to close: release at once every request we hold, unsent (the
        waiting ones leave the downloader, so the engine's close does not wait for them)."""
        if self.closing:
            return
        self.closing = True
        self._stop_close_poll()
        if self.pacer is not None:
            self.pacer.close_begun()
        if self.outage is not None:
            self.outage.close_begun()
        self.wake()

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

    # -- what a settled attempt calls for ----------------------------------------------

    def bad_verdict(self, method: str, verdict: Any) -> TypeError:
        """The TypeError for a ban policy's verdict that is not True, False or None."""
        return bad_verdict(self.ban_policy, method, verdict)

    def report(
        self,
        request: Request,
        number: int,
        flags: int,
        host: str | None = None,
        reasons: str | None = None,
    ) -> None:
        """The log lines and the stop that the core's flags for an attempt on session
        ``number`` call for; ``host``: where it went (ban scope "domain"); ``reasons``: what
        the run that benched the session was made of (``"429 x3"`` with a multiplication sign).
        The hooks call this only when a flag other than ``FAILED`` is set."""
        self._close_browser_context(number, flags, host)
        max_failures = self.settings.core_kwargs["max_failures"]
        why = f"{max_failures} consecutive failures" + (f": {reasons}" if reasons else "")
        if flags & _core.ROTATED:
            logger.warning(
                "hex_proxy: session %s blacklisted after %s; its place goes on at once as new"
                " session %s",
                self.session_name(number),
                why,
                self.core.successor_id(number),
            )
        elif flags & _core.BLACKLISTED and host is not None:
            logger.warning(
                "hex_proxy: session %s blacklisted for host %s for %gs after %s there (it keeps"
                " serving other hosts)",
                self.session_name(number),
                host or "(none)",
                self.settings.core_kwargs["cooldown"],
                why,
            )
        elif flags & _core.BLACKLISTED:
            logger.warning(
                "hex_proxy: session %s blacklisted for %gs after %s",
                self.session_name(number),
                self.settings.core_kwargs["cooldown"],
                why,
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

    def browser_context(
        self, meta: dict[str, Any], number: int, proxy_url: str, session: str, header: Any
    ) -> None:
        """The hooks send a Playwright attempt through session ``number``
        (``BrowserContexts.assign``)."""
        assert self.browser_contexts is not None
        self.browser_contexts.assign(meta, number, proxy_url, session, header)

    def session_name(self, number: int) -> str:
        """The session id; with a proxy list, also its proxy (no password) and entry."""
        session = self.core.session_id(number)
        label = self.core.proxy_label(number)
        if label is None:
            return session
        return f"{session} ({label}, {self.core.proxy_source(number)})"

    # -- the shared pool (promise 18) ---------------------------------------------------

    def _take_shared(self, facts: list[Fact]) -> None:
        """What other processes sharing the pool said (the shared pool's thread hands it over
        on the reactor's): the core takes each; a ban that follows is logged here."""
        for number, host, what, value in facts:
            flags = self.core.take_fact(number, host, what, value)
            if flags:
                self._report_shared(number, host, what, flags)

    def _close_browser_context(self, number: int, flags: int, host: str | None) -> None:
        """A session benched everywhere (not for one host only) or rotated: its browser
        context goes (scrapy-playwright)."""
        if self.browser_contexts is not None and (
            flags & _core.ROTATED or (flags & _core.BLACKLISTED and host is None)
        ):
            self.browser_contexts.benched(number)

    def _report_shared(self, number: int, host: str | None, what: str, flags: int) -> None:
        self._close_browser_context(number, flags, host)
        where = f" for host {host or '(none)'}" if host is not None else ""
        then = (
            f"; its place goes on at once as new session {self.core.successor_id(number)}"
            if flags & _core.ROTATED
            else ""
        )
        if what == "run":
            # Decided here, on the count of every process: a ban like a local one.
            logger.warning(
                "hex_proxy: session %s blacklisted%s after %d consecutive failures counted by"
                " every process sharing the pool%s",
                self.session_name(number),
                where,
                self.settings.core_kwargs["max_failures"],
                then,
            )
        else:
            logger.info(
                "hex_proxy: session %s blacklisted%s: another process sharing the pool"
                " benched it%s",
                self.session_name(number),
                where,
                then,
            )

    def _stop_for_credentials_elsewhere(self) -> None:
        assert self.shared is not None
        logger.error(
            "hex_proxy: another process sharing the pool (Redis %s) found the credentials"
            " rejected: check HEX_PROXY_USER and HEX_PROXY_PASS (or the list's). Closing the"
            " spider (%s).",
            self.shared.where,
            AUTH_FAILED_REASON,
        )
        _scrapy.close_spider(self.crawler, AUTH_FAILED_REASON)
        self.close_begun()

    def _stop_for_bad_credentials(self) -> None:
        if self.shared is not None:
            self.shared.credentials_rejected()
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
        _scrapy.close_spider(self.crawler, AUTH_FAILED_REASON)
        # Requests waiting for a session would hold the close up until a cooldown ends:
        # release them now (the close itself may start only on the next loop turn).
        self.close_begun()

    # -- stats ----------------------------------------------------------------------------

    def publish_stats(self) -> None:
        """Copy the core's counters and gauges into the crawler's stats."""
        stats = _scrapy.late(self.crawler, "stats")
        if stats is None:
            return
        for key, value in self.core.stats().items():
            stats.set_value(key, value)

    def _spider_opened(self, spider: Any = None) -> None:
        self.health.start()
        if self.shared is not None:
            self.shared.start()
        if self.jobdir is not None:
            restored = restore_held(self.crawler, self.core, self.jobdir)
            if restored:
                logger.info(
                    "hex_proxy: %d requests held by the paused crawl (paced retries, each"
                    " waiting what is left of its backoff; requests that waited for the"
                    " gateway) are back",
                    restored,
                )
        if self.pool_state is not None:
            self.pool_state.start()

    def _spider_closed(self, spider: Any = None, reason: str = "") -> None:
        self.close_begun()  # a close we did not see begin (nothing was held then)
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        parked = [] if self.pacer is None else self.pacer.take_parked()
        held = [] if self.outage is None else self.outage.close()
        retries = 0
        if self.jobdir is not None and (parked or held):
            saved = save_held(self.crawler, self.core, self.jobdir, parked + held)
            logger.info(
                "hex_proxy: the spider closed (%s) with %d retries waiting for their backoff"
                " and %d requests waiting for the gateway; they are saved in JOBDIR for the"
                " resume",
                reason,
                len(parked),
                len(held),
            )
            assert saved == len(parked) + len(held)
        elif parked:
            retries = len(parked)
            # As Scrapy drops its scheduler's queue on close (without JOBDIR).
            self.core.retries_dropped(retries)
        if self.jobdir is None:
            # Counted with those that waited for a session (hex_proxy/dropped_at_close).
            self._dropped_at_close += len(held)
        waiting = self._dropped_at_close
        if retries or waiting:
            logger.warning(
                "hex_proxy: the spider closed (%s) with %d requests waiting for a session or"
                " the gateway and %d retries waiting for their backoff; they were dropped"
                " unsent (a JOBDIR keeps them for the resume)",
                reason,
                waiting,
                retries,
            )
        gauges = self.health.stop()
        if self.shared is not None:
            gauges.update(self.shared.close())
        self.publish_stats()
        stats = _scrapy.late(self.crawler, "stats")
        if stats is not None:
            for key, value in gauges.items():
                stats.set_value(key, value)
            if waiting:
                stats.set_value(DROPPED_AT_CLOSE, waiting)
        if self.pool_state is not None:
            self.pool_state.close()


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


async def _answer(answer: Any) -> Any:
    """What ``process_request`` answered, awaited if it is a coroutine: None, a request, or
    (once awaited) what the coroutine gave."""
    if answer is None or not hasattr(answer, "__await__"):
        return answer
    return await answer


def advance_clock(crawler: Crawler, seconds: float) -> None:
    """Move the core's manual clock (``HEX_PROXY_MANUAL_CLOCK = True``); wake waiting requests."""
    runtime = Runtime.of(crawler)
    runtime.core.advance(seconds)
    runtime.clock_moves += 1
    runtime.wake()
    runtime.health.clock_moved()
