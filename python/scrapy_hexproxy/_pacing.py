"""Retry pacing: a retry waits out its backoff outside the downloader.

A retry that waited inside the downloader middlewares would hold one of CONCURRENT_REQUESTS for
its whole wait: a few waiting retries would stall the crawl. So ``SmartRetryMiddleware._retry``
returns the copy at once, marked with the time on the core's clock before which it must not be
sent (meta ``NOT_BEFORE``). When the engine schedules it, the ``request_scheduled`` handler here
keeps it out of the scheduler (``IgnoreRequest``: Scrapy >= 2.11.2 then leaves it out without
counting it as dropped) and parks it; once due it goes back to the engine (``engine.crawl``),
passes the handler and is downloaded like any other request. While a retry is parked the
``spider_idle`` handler keeps the spider open.

A request that bypasses the scheduler (``engine.download()``) reaches
``HexProxyMiddleware.process_request`` still marked; that waits in the downloader instead
(``Runtime.wait_until_due``), the only place left.

When the spider closes, requests sleeping in the downloader give up at once; parked retries
are dropped and counted, or, with a JOBDIR, saved there (``HELD_FILE``, with their wall-clock
due time) and put back in the engine when the next run on it opens (``restore``).

The pacer exists only when pacing is on (HEX_PROXY_RETRY_BACKOFF_BASE > 0), so a crawl without
it runs no handler of ours per scheduled request.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import pickle
import re
import time
from http import cookiejar
from typing import TYPE_CHECKING, Any, Callable

from scrapy import signals
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.request import request_from_dict
from twisted.internet.defer import Deferred

from . import _core
from ._scrapy import engine_open, late

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger("scrapy_hexproxy")

#: meta key of a paced retry: the core-clock time before which it must not be sent.
NOT_BEFORE = _core.NOT_BEFORE_KEY

#: meta key of a paced retry saved in JOBDIR at close: the wall-clock time (epoch seconds)
#: before which it must not be sent, as the core's clock of one run means nothing in the next.
NOT_BEFORE_WALL = "_hex_not_before_wall"

#: The file in JOBDIR that keeps the parked retries of a paused crawl until the next start.
HELD_FILE = "hexproxy-held.retries"

#: Statuses whose Retry-After header sets the wait (the two RFC 9110 gives it a meaning for
#: that a retry can act on: 429 Too Many Requests and 503 Service Unavailable).
RETRY_AFTER_STATUSES = (429, 503)

# RFC 9110 delay-seconds is 1*DIGIT; a fraction is accepted too, as some servers send one.
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")

# Reads every HTTP-date form (RFC 9110 5.6.7: IMF-fixdate, RFC 850, asctime); public in the
# module but missing from typeshed's stub of it.
_http2time: Callable[[str], float | None] = cookiejar.http2time  # type: ignore[attr-defined]


def retry_after_seconds(response: Response) -> float | None:
    """The seconds a ``Retry-After`` header asks for; None if absent or malformed.

    delay-seconds, or an HTTP-date: compared with the response's own ``Date`` header when it
    has one (the server's clock, so clock skew does not matter), else with this machine's
    clock. A date in the past means no wait (0.0).
    """
    value = response.headers.get(b"Retry-After")
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    when = _http2time(text)
    if when is None:
        return None
    date = response.headers.get(b"Date")
    now = _http2time(date.decode("latin-1")) if date else None
    if now is None:
        now = time.time()
    return max(0.0, when - now)


class Pacer:
    """The retries of one crawler that wait for their backoff; one per runtime, if pacing is on."""

    def __init__(self, crawler: Crawler, core: _core.Core, manual_clock: bool) -> None:
        self._crawler = crawler
        self._core = core
        # A manual clock moves only in advance_clock(), which calls wake(): no timer then.
        self._manual_clock = manual_clock
        #: (due, order, request): a heap, the next due first; `order` keeps ties first-in first-out.
        self._parked: list[tuple[float, int, Request]] = []
        self._order = itertools.count()
        #: (due, waiter) of requests waiting inside the downloader (see wait_until_due).
        self._sleepers: list[tuple[float, Deferred[None]]] = []
        self._timer: Any = None
        self._timer_due = 0.0
        #: Called when a retry is parked or a request sleeps (the runtime watches for a close).
        self.on_hold: Callable[[], None] | None = None
        #: Set when the spider began to close: requests sleeping in the downloader give up.
        self._closing = False
        # Held weakly (the default), as Scrapy's own extensions do: the runtime keeps the pacer
        # as long as the crawler lives. Held strongly, they would keep the crawler alive in
        # pydispatcher's global table whenever its spider never closes (close() disconnects).
        for receiver, signal in self._receivers():
            crawler.signals.connect(receiver, signal=signal)

    def _receivers(self) -> tuple[tuple[Any, Any], ...]:
        return (
            (self._request_scheduled, signals.request_scheduled),
            (self._spider_idle, signals.spider_idle),
        )

    @property
    def parked(self) -> int:
        """How many retries wait outside the downloader for their backoff to end."""
        return len(self._parked)

    @property
    def sleeping(self) -> int:
        """How many requests sleep in the downloader for their backoff (``engine.download()``)."""
        return len(self._sleepers)

    @property
    def holding(self) -> bool:
        """Whether a retry is parked or a request sleeps in the downloader."""
        return bool(self._parked or self._sleepers)

    def next_due(self) -> float | None:
        """The core-clock time the next parked retry is due; None if none is parked."""
        return self._parked[0][0] if self._parked else None

    # -- marking --------------------------------------------------------------------------

    def delay(self, retry: Request, status: int | None, response: Response | None) -> float:
        """Draw the wait of ``retry`` (a fresh copy, its ``retry_times`` already raised) and
        mark it with the time it is due. Returns the wait in seconds."""
        retry_after = None
        if response is not None and status in RETRY_AFTER_STATUSES:
            retry_after = retry_after_seconds(response)
        wait = self._core.retry_wait(retry.meta["retry_times"], retry_after)
        if wait > 0:
            retry.meta[NOT_BEFORE] = self._core.now() + wait
        return wait

    # -- signal handlers (never return a Deferred) -----------------------------------------

    def _request_scheduled(self, request: Request, spider: Any = None) -> None:
        meta = request.meta
        due = meta.get(NOT_BEFORE)
        if due is None:
            return
        now = self._core.now()
        if due <= now:
            # Due: on to the scheduler, unmarked (so a crawl resumed from JOBDIR, whose clock
            # starts again at zero, never sees a stale time).
            del meta[NOT_BEFORE]
            return
        heapq.heappush(self._parked, (due, next(self._order), request))
        self._arm()
        if self.on_hold is not None:
            self.on_hold()
        raise IgnoreRequest("scrapy-hexproxy: retry parked until its backoff ends")

    def _spider_idle(self, spider: Any = None) -> None:
        if self._parked:
            raise DontCloseSpider

    # -- time -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Let the parked retries and waiting requests whose time has come go."""
        self._cancel_timer()
        now = self._core.now()
        due: list[Request] = []
        engine: Any  # Scrapy's ExecutionEngine, or None before the crawl starts
        try:
            engine = getattr(self._crawler, "engine", None)
        except RuntimeError:  # Scrapy >= 2.14 raises before the crawl starts
            engine = None
        # Not while the engine is closing the spider: a retry let go then would be lost in the
        # scheduler's queue uncounted, so it stays parked and is counted as dropped at close.
        releasable = engine is not None and engine_open(engine)
        if releasable:
            while self._parked and self._parked[0][0] <= now:
                due.append(heapq.heappop(self._parked)[2])
        sleepers = [waiter for at, waiter in self._sleepers if at <= now]
        self._sleepers = [(at, waiter) for at, waiter in self._sleepers if at > now]
        for request in due:
            engine.crawl(request)
        for waiter in sleepers:
            if not waiter.called:
                waiter.callback(None)
        self._arm(releasable)

    async def sleep_until(self, due: float) -> None:
        """Wait, without blocking the reactor, until the core's clock reaches ``due``."""
        while due > self._core.now() and not self._closing:
            waiter: Deferred[None] = Deferred(self._forget)
            self._sleepers.append((due, waiter))
            self._arm()
            await maybe_deferred_to_future(waiter)

    def _forget(self, waiter: Deferred[None]) -> None:
        """A waiting download was cancelled: stop tracking it."""
        self._sleepers = [(at, w) for at, w in self._sleepers if w is not waiter]

    def _arm(self, releasable: bool = True) -> None:
        """Set the timer for the next due time (system clock only). ``releasable=False``: the
        engine is closing, parked retries stay where they are."""
        if self._manual_clock:
            return
        dues = [at for at, _ in self._sleepers]
        if self._parked and releasable:
            dues.append(self._parked[0][0])
        if not dues:
            return
        at = min(dues)
        if self._timer is not None and self._timer.active():
            if self._timer_due <= at:
                return
            self._timer.cancel()
        from twisted.internet import reactor

        self._timer_due = at
        # The reactor's clock and the core's may differ by a hair: wake() re-arms if early.
        self._timer = reactor.callLater(max(0.0, at - self._core.now()), self.wake)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- close ----------------------------------------------------------------------------

    def close_begun(self) -> None:
        """The spider began to close: requests sleeping in the downloader wake (and give up);
        parked retries stay parked until ``close``."""
        self._closing = True
        self._cancel_timer()
        sleepers, self._sleepers = self._sleepers, []
        for _, waiter in sleepers:
            if not waiter.called:
                waiter.callback(None)

    def close(self, jobdir: str | None = None) -> tuple[int, int]:
        """The spider closed: forget everything. With ``jobdir`` the parked retries are saved
        there for the next start (``restore``). Returns (retries dropped, retries saved).

        A file of ours rather than the scheduler's queue: when the downloader is idle the
        engine closes the scheduler a few loop turns after the close begins, before any watch
        of ours could see it, while ``spider_closed`` always comes."""
        parked = self.take_parked()
        if not parked:
            return 0, 0
        if jobdir is None:
            return len(parked), 0
        return 0, save_held(self._crawler, self._core, jobdir, parked)

    def take_parked(self) -> list[Request]:
        """The spider closed: the parked retries, in due order (forgotten here), each still
        marked with its due time; the handlers are disconnected."""
        self._cancel_timer()
        parked = [request for _, _, request in sorted(self._parked, key=lambda e: e[:2])]
        self._parked.clear()
        self.close_begun()
        for receiver, signal in self._receivers():
            self._crawler.signals.disconnect(receiver, signal=signal)
        return parked

    def restore(self, jobdir: str) -> int:
        """The spider opened on a JOBDIR: what a paused run saved goes back (``restore_held``)."""
        return restore_held(self._crawler, self._core, jobdir)


def save_held(crawler: Crawler, core: _core.Core, jobdir: str, held: list[Request]) -> int:
    """Saves the requests we held at close in JOBDIR (``HELD_FILE``) for the next start: paced
    retries with their due time (``NOT_BEFORE``) turned into wall-clock time, requests that
    waited for the gateway with none. Never the credentials (promise 16). Returns how many."""
    now, wall = core.now(), time.time()
    spider = late(crawler, "spider")
    saved = []
    for request in held:
        meta = request.meta
        meta[NOT_BEFORE_WALL] = wall + max(0.0, meta.pop(NOT_BEFORE, now) - now)
        record = request.to_dict(spider=spider)
        record["headers"] = {  # never the credentials (promise 16)
            k: v for k, v in record["headers"].items() if k.lower() != b"proxy-authorization"
        }
        saved.append(record)
    path = os.path.join(jobdir, HELD_FILE)
    with open(path + ".tmp", "wb") as out:
        pickle.dump({"version": 1, "retries": saved}, out, protocol=4)
    os.replace(path + ".tmp", path)
    return len(saved)


def restore_held(crawler: Crawler, core: _core.Core, jobdir: str) -> int:
    """The spider opened on a JOBDIR: the requests a paused run saved (``save_held``) go back
    to the engine, a paced retry marked on this run's clock with what is left of its wait (so
    it parks again, or goes at once). Returns how many."""
    path = os.path.join(jobdir, HELD_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as held:
        saved = pickle.load(held)["retries"]
    os.remove(path)
    engine, spider = late(crawler, "engine"), late(crawler, "spider")
    wall = time.time()
    for record in saved:
        request = request_from_dict(record, spider=spider)
        left = float(request.meta.pop(NOT_BEFORE_WALL, wall)) - wall
        if left > 0 and core.paced:
            request.meta[NOT_BEFORE] = core.now() + left
        engine.crawl(request)
    return len(saved)
