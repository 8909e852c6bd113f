"""Pool health in the log: one INFO line every ``HEX_PROXY_LOGSTATS_INTERVAL`` seconds, and the
same figures as gauges in the crawl stats when the spider closes (as Scrapy's own LogStats does
for pages and items).

Nothing here runs per request: the figures are read from the core's counters on a timer. Rates
are measured on the core's clock, so with ``HEX_PROXY_MANUAL_CLOCK`` a test moves time with
``advance_clock`` and the line comes out when an interval has passed on that clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from . import _core

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("scrapy_hexproxy")

#: The counters reported per minute, by the name used in the log line and the stats.
_RATES = ("blacklisted", "rotated", "retry", "failure")

#: Attempts in flight longer than this are counted in the line: a session that hangs. It is
#: also the DOWNLOAD_TIMEOUT we recommend when none is set (``warn_without_timeout``).
HANGING_SECONDS = 30


@dataclass(frozen=True)
class Counters:
    """The core's cumulative counters at one moment of its clock."""

    at: float
    blacklisted: int
    rotated: int
    retry: int
    failure: int

    @classmethod
    def read(cls, core: Core) -> Counters:
        stats = core.stats()
        return cls(
            at=core.now(),
            blacklisted=stats.get("hex_proxy/blacklisted", 0),
            rotated=stats.get("hex_proxy/rotated", 0),
            retry=stats.get("hex_proxy/retry", 0),
            failure=sum(v for k, v in stats.items() if k.startswith("hex_proxy/failure/")),
        )

    def per_minute(self, since: Counters) -> dict[str, float]:
        minutes = (self.at - since.at) / 60
        if minutes <= 0:
            return dict.fromkeys(_RATES, 0.0)
        return {name: (getattr(self, name) - getattr(since, name)) / minutes for name in _RATES}


class PoolHealth:
    """Reports the pool's health for one crawl; see the module docstring."""

    def __init__(
        self, core: Core, interval: float, *, manual_clock: bool, crawler: Any = None
    ) -> None:
        self.core = core
        self.interval = interval
        self._manual_clock = manual_clock
        self._crawler = crawler
        self._task: Any = None
        self._start = self._last = Counters.read(core)
        #: When each attempt in the downloader was first seen on a line (by ``id``): an
        #: attempt seen HANGING_SECONDS ago and still there has hung at least that long.
        self._first_seen: dict[int, float] = {}
        #: More for the line (the shared pool's figures), or None.
        self.extra: Callable[[], str] | None = None

    def start(self) -> None:
        """The crawl starts: rates count from now; the timer starts (system clock only)."""
        self._start = self._last = Counters.read(self.core)
        if self.interval > 0 and not self._manual_clock:
            from twisted.internet import task

            self._task = task.LoopingCall(self.log)
            self._task.start(self.interval, now=False)

    def clock_moved(self) -> None:
        """The manual clock moved: log if an interval has passed on it since the last line."""
        if self.interval > 0 and self.core.now() - self._last.at >= self.interval:
            self.log()

    def log(self) -> None:
        """One INFO line: sessions live and cooling, the next one back, rates since the last."""
        now = Counters.read(self.core)
        rates = now.per_minute(self._last)
        self._last = now
        live, cooling = self.core.live_count, self.core.cooling_count
        hanging = self.hanging(now.at)
        logger.info(
            "hex_proxy: %d live, %d cooling sessions (%s)%s; per minute: %.1f blacklisted,"
            " %.1f rotated, %.1f retries, %.1f failures%s",
            live,
            cooling,
            _next_back_text(self.core.next_back()),
            f"; {hanging} in flight > {HANGING_SECONDS} s" if hanging else "",
            rates["blacklisted"],
            rates["rotated"],
            rates["retry"],
            rates["failure"],
            self.extra() if self.extra is not None else "",
        )

    def hanging(self, now: float) -> int:
        """How many attempts in the downloader (sent through a session, not waiting for one)
        have been there for HANGING_SECONDS at least: first seen by an earlier line that long
        ago. Read from the downloader on the timer; nothing runs per request."""
        from ._scrapy import late

        engine = late(self._crawler, "engine") if self._crawler is not None else None
        active = getattr(getattr(engine, "downloader", None), "active", ())
        first_seen = {}
        for request in active:
            if _core.ATTEMPT_KEY in request.meta:
                key = id(request)
                first_seen[key] = self._first_seen.get(key, now)
        self._first_seen = first_seen
        return sum(1 for seen in first_seen.values() if now - seen >= HANGING_SECONDS)

    def stop(self) -> dict[str, Any]:
        """The crawl ends: stop the timer; the gauges for the stats (rates over the crawl)."""
        if self._task is not None and self._task.running:
            self._task.stop()
        rates = Counters.read(self.core).per_minute(self._start)
        gauges: dict[str, Any] = {
            f"hex_proxy/per_minute/{name}": round(rate, 3) for name, rate in rates.items()
        }
        back = self.core.next_back()
        if back is not None:
            gauges["hex_proxy/sessions/next_back"] = back[0]
            gauges["hex_proxy/sessions/next_back_in"] = round(back[1], 3)
        return gauges


def _next_back_text(back: tuple[str, float] | None) -> str:
    if back is None:
        return "none cooling"
    session, seconds = back
    return f"next back: {session} in {seconds:.0f}s"


def warn_without_timeout(settings: Any) -> None:
    """One INFO at start when DOWNLOAD_TIMEOUT is Scrapy's default: a session that hangs then
    holds a download slot for minutes while every figure looks healthy."""
    if settings.getpriority("DOWNLOAD_TIMEOUT") not in (None, 0):  # set by the user
        return
    logger.info(
        "hex_proxy: DOWNLOAD_TIMEOUT is Scrapy's default (%ss): a session that hangs holds a"
        " download slot that long. Through a rotating gateway we recommend DOWNLOAD_TIMEOUT ="
        " %d: a timeout counts against the session and the request is retried on another.",
        settings.get("DOWNLOAD_TIMEOUT"),
        HANGING_SECONDS,
    )
