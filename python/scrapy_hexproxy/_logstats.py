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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("scrapy_hexproxy")

#: The counters reported per minute, by the name used in the log line and the stats.
_RATES = ("blacklisted", "rotated", "retry", "failure")


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

    def __init__(self, core: Core, interval: float, *, manual_clock: bool) -> None:
        self.core = core
        self.interval = interval
        self._manual_clock = manual_clock
        self._task: Any = None
        self._start = self._last = Counters.read(core)

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
        logger.info(
            "hex_proxy: %d live, %d cooling sessions (%s); per minute: %.1f blacklisted,"
            " %.1f rotated, %.1f retries, %.1f failures",
            live,
            cooling,
            _next_back_text(self.core.next_back()),
            rates["blacklisted"],
            rates["rotated"],
            rates["retry"],
            rates["failure"],
        )

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
