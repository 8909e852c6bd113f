"""A gateway outage is not a ban (promise 17).

When an attempt ends because the gateway's own address could not be reached (the wall's
``_scrapy.unreachable``: refused, DNS, connect timeout), the ledger blames no session and
spends no retry; the hooks hand the request here (``Runtime.gateway_unreachable``), which
marks the gateway down in the core and returns a copy to hold. While the gateway is down:

- every request is held outside the downloader, so none holds a download slot: the copy of a
  failed attempt, and each request that reaches ``process_request`` meanwhile, is returned to
  the engine marked (``HELD``), and the ``request_scheduled`` handler here keeps it out of the
  scheduler and parks it (as the pacer parks a paced retry). A request that bypasses the
  scheduler (``engine.download()``) comes back to ``process_request`` still marked: it waits
  there instead, the only place left;
- the engine is paused (``engine.pause()``, as the telnet console does), so it does not move
  the scheduler's queue, maybe a JOBDIR's disk queue, into our memory one request at a time;
- the gateway's host and port are probed with a plain TCP connect, 0.5 s after the outage
  began and then at doubling intervals up to 10 s.

When a probe connects, the held requests go back to the engine (``engine.crawl``), the engine
is unpaused, and one INFO says so. If the gateway stays unreachable longer than
``HEX_PROXY_GATEWAY_DOWN_TIMEOUT`` (0: for ever), one ERROR names its host and port and the
spider closes with finish reason ``hex_proxy_gateway_unreachable``. A close of any kind
releases the held requests at once (promise 14): saved in JOBDIR for the resume, or counted
and warned about.

A proxy list has no crawl-wide outage: each listed proxy is a session, and one that cannot be
reached fails as that session (the ledger decides so), so the others carry on.

The signal handlers are connected only while the gateway is down: a healthy crawl runs none
of them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from ._scrapy import late, pause_engine

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from . import _core

logger = logging.getLogger("scrapy_hexproxy")

#: The finish reason of a crawl whose gateway stayed unreachable too long.
UNREACHABLE_REASON = "hex_proxy_gateway_unreachable"

#: Stats: how many times the gateway went down, and for how many seconds in all.
DOWN = "hex_proxy/gateway/down"
DOWN_SECONDS = "hex_proxy/gateway/down_seconds"

#: meta key of a request handed back to the engine to be held while the gateway is down.
HELD = "_hex_gateway_held"

#: The first probe, seconds after the outage began; each next one waits twice as long, up to
#: LONGEST_PROBE.
FIRST_PROBE = 0.5
LONGEST_PROBE = 10.0
#: How long a probe's connect may take.
PROBE_TIMEOUT = 5.0


class GatewayWatch:
    """The gateway's outages in one crawl: what is held, the probe, the timeout."""

    def __init__(
        self, crawler: Crawler, core: _core.Core, host: str, port: int, timeout: float
    ) -> None:
        self._crawler = crawler
        self._core = core
        self.host = host
        self.port = port
        #: HEX_PROXY_GATEWAY_DOWN_TIMEOUT; 0: wait for ever.
        self.timeout = timeout
        #: Requests parked outside the downloader until the gateway answers, in order.
        self._held: list[Request] = []
        #: Requests waiting inside the downloader (they bypassed the scheduler).
        self._sleepers: list[Deferred[None]] = []
        self._down_since: float | None = None
        self._reason = ""
        self._delay = FIRST_PROBE
        self._probe_call: Any = None
        self._give_up_call: Any = None
        self._paused_engine = False
        self._connected = False
        #: Set once the spider began to close: nothing held is sent any more.
        self._closing = False
        #: Called when the gateway is given up on (the runtime closes the spider).
        self.on_give_up: Any = None
        #: Called when a request is held (the runtime watches for a close).
        self.on_hold: Any = None

    @property
    def where(self) -> str:
        """``host:port`` of the gateway (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def held(self) -> int:
        """How many requests wait for the gateway, outside the downloader or in it."""
        return len(self._held) + len(self._sleepers)

    @property
    def holding(self) -> bool:
        return bool(self._held or self._sleepers)

    # -- down -----------------------------------------------------------------------------

    def went_down(self, exception: BaseException) -> None:
        """An attempt found the gateway unreachable: mark it down (once per outage)."""
        if self._core.gateway_down or self._closing:
            return
        from twisted.internet import reactor

        self._core.gateway_down = True
        self._down_since = reactor.seconds()
        self._reason = type(exception).__name__
        self._delay = FIRST_PROBE
        stats = late(self._crawler, "stats")
        if stats is not None:
            stats.inc_value(DOWN)
        logger.warning(
            "hex_proxy: the gateway %s cannot be reached (%s): no session is blamed and no"
            " retry is spent; requests are held until it answers (probed with backoff)%s",
            self.where,
            self._reason,
            f", for at most {self.timeout:g}s" if self.timeout > 0 else "",
        )
        engine = late(self._crawler, "engine")
        if engine is not None and not pause_engine(engine, True):
            self._paused_engine = True
        self._connect()
        self._probe_call = reactor.callLater(self._delay, self._probe)
        if self.timeout > 0:
            self._give_up_call = reactor.callLater(self.timeout, self._give_up)

    def mark(self, request: Request) -> Request:
        """``request``, marked to be held when the engine schedules it (``dont_filter``: its
        fingerprint is already seen)."""
        request.dont_filter = True
        request.meta[HELD] = True
        return request

    def _request_scheduled(self, request: Request, spider: Any = None) -> None:
        if not request.meta.pop(HELD, False):
            return
        if not self._core.gateway_down and not self._closing:
            return  # back already: on to the scheduler
        self._held.append(request)
        if self.on_hold is not None:
            self.on_hold()
        raise IgnoreRequest("scrapy-hexproxy: held until the gateway answers")

    def _spider_idle(self, spider: Any = None) -> None:
        if self._held:
            raise DontCloseSpider

    async def wait(self) -> bool:
        """Wait inside the downloader until the gateway answers; False if the spider began
        to close meanwhile."""
        while self._core.gateway_down and not self._closing:
            waiter: Deferred[None] = Deferred(self._forget)
            self._sleepers.append(waiter)
            if self.on_hold is not None:
                self.on_hold()
            await maybe_deferred_to_future(waiter)
        return not self._closing

    def _forget(self, waiter: Deferred[None]) -> None:
        if waiter in self._sleepers:
            self._sleepers.remove(waiter)

    # -- probe ----------------------------------------------------------------------------

    def _probe(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        self._probe_call = None
        if not self._core.gateway_down or self._closing:
            return
        endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=PROBE_TIMEOUT)
        connecting = connectProtocol(endpoint, Protocol())  # type: ignore[no-untyped-call]
        connecting.addCallbacks(self._answered, self._unanswered)

    def _answered(self, protocol: Any) -> None:
        protocol.transport.loseConnection()
        self._back()

    def _unanswered(self, failure: Any) -> None:
        from twisted.internet import reactor

        if not self._core.gateway_down or self._closing:
            return
        self._delay = min(self._delay * 2, LONGEST_PROBE)
        self._probe_call = reactor.callLater(self._delay, self._probe)

    # -- back -----------------------------------------------------------------------------

    def _back(self) -> None:
        """A probe connected: the held requests go on."""
        if not self._core.gateway_down or self._closing:
            return
        seconds = self._end_outage()
        logger.info(
            "hex_proxy: the gateway %s answers again after %.1fs; %d held requests go on",
            self.where,
            seconds,
            self.held,
        )
        self._release()

    def _end_outage(self) -> float:
        """Marks the gateway up, stops the timers; the seconds it was down."""
        from twisted.internet import reactor

        self._core.gateway_down = False
        for call in (self._probe_call, self._give_up_call):
            if call is not None and call.active():
                call.cancel()
        self._probe_call = self._give_up_call = None
        seconds = 0.0
        if self._down_since is not None:
            seconds = max(0.0, reactor.seconds() - self._down_since)
            self._down_since = None
            stats = late(self._crawler, "stats")
            if stats is not None:
                stats.set_value(DOWN_SECONDS, round(stats.get_value(DOWN_SECONDS, 0) + seconds, 3))
        return seconds

    def _release(self) -> None:
        engine = late(self._crawler, "engine")
        if self._paused_engine and engine is not None:
            pause_engine(engine, False)
        self._paused_engine = False
        held, self._held = self._held, []
        self._disconnect()
        for request in held:
            if engine is not None:
                engine.crawl(request)
        self._wake_sleepers()

    def _wake_sleepers(self) -> None:
        sleepers, self._sleepers = self._sleepers, []
        for waiter in sleepers:
            if not waiter.called:
                waiter.callback(None)

    def _give_up(self) -> None:
        self._give_up_call = None
        if not self._core.gateway_down or self._closing:
            return
        logger.error(
            "hex_proxy: the gateway %s has been unreachable for %gs (%s; HEX_PROXY_GATEWAY"
            " and the gateway itself are worth a look): closing the spider (%s)",
            self.where,
            self.timeout,
            self._reason,
            UNREACHABLE_REASON,
        )
        if self.on_give_up is not None:
            self.on_give_up(UNREACHABLE_REASON)

    # -- close ----------------------------------------------------------------------------

    def close_begun(self) -> None:
        """The spider began to close: stop probing; requests waiting in the downloader give
        up; parked ones stay parked until ``close``."""
        if self._closing:
            return
        self._closing = True
        if self._core.gateway_down:
            self._end_outage()
        engine = late(self._crawler, "engine")
        if self._paused_engine and engine is not None:
            pause_engine(engine, False)
        self._paused_engine = False
        self._wake_sleepers()

    def close(self) -> list[Request]:
        """The spider closed: the parked requests, to save or count; forget them."""
        self.close_begun()
        self._disconnect()
        held, self._held = self._held, []
        return held

    # -- signals --------------------------------------------------------------------------

    def _receivers(self) -> tuple[tuple[Any, Any], ...]:
        return (
            (self._request_scheduled, signals.request_scheduled),
            (self._spider_idle, signals.spider_idle),
        )

    def _connect(self) -> None:
        if self._connected:
            return
        self._connected = True
        for receiver, signal in self._receivers():
            self._crawler.signals.connect(receiver, signal=signal)

    def _disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        for receiver, signal in self._receivers():
            self._crawler.signals.disconnect(receiver, signal=signal)
