"""Promise 17: a gateway outage is not a ban.

The outage is real: the loopback gateway is stopped (its port refuses connections) and started
again on the same port. Waits are short by settings (a 1 s HEX_PROXY_GATEWAY_DOWN_TIMEOUT, the
gateway back after 1 s); the probe's own backoff (0.5 s, then doubling) is the watch's.
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from twisted.internet import error

from scrapy_hexproxy import _scrapy
from scrapy_hexproxy._outage import DOWN, DOWN_SECONDS, UNREACHABLE_REASON
from scrapy_hexproxy._pacing import HELD_FILE
from scrapy_hexproxy.testing import Behavior, Gateway

from .conftest import PagesSpider, urls, when
from .test_lifecycle import secret_forms

PASSWORD = "outage-s3cret-PASSWORD-17"


@pytest.fixture
def gateway():
    gateway = Gateway(password=PASSWORD).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def settings(base_settings: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    return {
        **base_settings,
        "HEX_PROXY_GATEWAY": gateway.url,
        "HEX_PROXY_PASS": PASSWORD,
        "LOG_LEVEL": "INFO",
    }


class OutageSpider(PagesSpider):
    """Fetches its first URL; in that page's callback the gateway goes down (nothing else is
    in flight then, so no attempt is cut after connecting) and comes back ``back_after``
    seconds later (never if None); then it asks for the other URLs."""

    name = "outage"

    def __init__(
        self, gateway: Gateway, back_after: float | None, stop: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.back_after = back_after
        self.stop = stop  # False: a resumed run, whose gateway stays up
        self.first_done = False

    def _requests(self) -> Any:
        yield scrapy.Request(self.urls[0], callback=self.parse, errback=self.failed)

    def parse(self, response: scrapy.http.Response, **kwargs: Any) -> Any:
        self.record(response)
        if self.first_done:
            return
        self.first_done = True
        if self.stop:
            self.gateway.stop()
        if self.stop and self.back_after is not None:
            from twisted.internet import reactor

            reactor.callLater(self.back_after, self.gateway.restart)
        for url in self.urls[1:]:
            yield scrapy.Request(url, callback=self.parse, errback=self.failed)


def _ours(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "scrapy_hexproxy" and r.levelno == level
    ]


def _blame(stats: dict[str, Any]) -> dict[str, Any]:
    """Every stat that would blame a session or spend a retry."""
    return {
        key: value
        for key, value in stats.items()
        if key.startswith(("hex_proxy/failure/", "hex_proxy/retry", "retry/"))
        or key == "hex_proxy/blacklisted"
    }


def _fetched(gateway: Gateway) -> list[str]:
    return sorted(record.target for record in gateway.records if record.is_attempt)


def _no_secret_in(text: str) -> None:
    for form in secret_forms(PASSWORD):
        assert form.decode() not in text


@pytest_twisted.ensureDeferred
async def test_promise_17_a_gateway_restarted_on_its_port_loses_nothing_and_blames_nobody(
    settings, gateway, caplog
):
    caplog.set_level(logging.DEBUG)
    pages = urls(21)
    started = time.monotonic()
    result = await _crawl_outage(settings, pages, gateway, back_after=1.0)
    took = time.monotonic() - started
    stats = result.stats
    print(f"outage of ~1s: {took:.2f}s in all, down_seconds={stats.get(DOWN_SECONDS)}")
    assert result.finish_reason == "finished"
    assert sorted(p.url for p in result.pages) == sorted(pages)  # every page, once
    assert _fetched(gateway) == sorted(pages)  # each reached the gateway once
    assert result.errors == []
    assert _blame(stats) == {}  # no session blamed, no retry spent
    assert stats[DOWN] == 1
    assert stats[DOWN_SECONDS] > 0
    warnings = _ours(caplog, logging.WARNING)
    assert len(warnings) == 1 and "cannot be reached" in warnings[0], warnings
    back = [m for m in _ours(caplog, logging.INFO) if "answers again" in m]
    assert len(back) == 1, back
    assert f"127.0.0.1:{gateway.port}" in warnings[0] and f"127.0.0.1:{gateway.port}" in back[0]
    assert _ours(caplog, logging.ERROR) == []
    _no_secret_in(caplog.text)


async def _crawl_outage(settings, pages, gateway, *, back_after, stop=True):
    from scrapy.crawler import CrawlerRunner

    from .conftest import CrawlResult

    runner = CrawlerRunner(settings)
    result = CrawlResult(crawler=None)
    crawler = runner.create_crawler(OutageSpider)
    result.crawler = crawler
    await runner.crawl(
        crawler, urls=pages, result=result, gateway=gateway, back_after=back_after, stop=stop
    )
    return result


@pytest_twisted.ensureDeferred
async def test_promise_17_a_gateway_that_never_answers_closes_the_crawl_with_one_error(
    settings, gateway, caplog
):
    caplog.set_level(logging.DEBUG)
    pages = urls(21)
    settings["HEX_PROXY_GATEWAY_DOWN_TIMEOUT"] = 1
    result = await _crawl_outage(settings, pages, gateway, back_after=None)
    stats = result.stats
    down_to_close = stats["elapsed_time_seconds"]
    print(f"gateway never back, timeout 1s: closed {down_to_close:.2f}s after the start")
    assert result.finish_reason == UNREACHABLE_REASON
    errors = _ours(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert f"127.0.0.1:{gateway.port}" in errors[0] and UNREACHABLE_REASON in errors[0]
    _no_secret_in(caplog.text)
    assert _blame(stats) == {}
    assert stats[DOWN] == 1 and stats[DOWN_SECONDS] >= 1
    assert [p.url for p in result.pages] == pages[:1]
    # Nothing held is dropped silently: each refused attempt's request was held, and is
    # counted and warned about; the engine, paused, left the others in the scheduler (whose
    # memory queue Scrapy drops at any close; a JOBDIR keeps it, below).
    held = stats["downloader/exception_count"]
    assert held == settings["CONCURRENT_REQUESTS"]
    assert stats["hex_proxy/dropped_at_close"] == held
    assert held + stats["scheduler/enqueued"] - stats["scheduler/dequeued"] == 20
    dropped = [m for m in _ours(caplog, logging.WARNING) if "dropped unsent" in m]
    assert len(dropped) == 1 and f" {held} requests " in dropped[0], dropped
    assert len(_ours(caplog, logging.WARNING)) == 2  # down, dropped
    assert down_to_close < 1 + 1.5  # the timeout, and the close


@pytest_twisted.ensureDeferred
async def test_promise_17_with_a_jobdir_what_waited_for_the_gateway_is_fetched_after_resume(
    settings, gateway, caplog, tmp_path: Path
):
    caplog.set_level(logging.INFO)
    pages = urls(21)
    settings["HEX_PROXY_GATEWAY_DOWN_TIMEOUT"] = 1
    settings["JOBDIR"] = str(tmp_path / "job")
    first = await _crawl_outage(settings, pages, gateway, back_after=None)
    assert first.finish_reason == UNREACHABLE_REASON
    assert "hex_proxy/dropped_at_close" not in first.stats
    with open(tmp_path / "job" / HELD_FILE, "rb") as held:
        saved = pickle.load(held)["retries"]
    assert 0 < len(saved) <= 20
    for form in secret_forms(PASSWORD):
        for path in (tmp_path / "job").rglob("*"):
            if path.is_file():
                assert form not in path.read_bytes(), path
    gateway.restart()
    second = await _crawl_outage(settings, pages, gateway, back_after=None, stop=False)
    assert second.finish_reason == "finished"
    # Across both runs every page is fetched once.
    assert sorted(p.url for p in first.pages + second.pages) == sorted(pages)
    assert _fetched(gateway) == sorted(pages)
    assert _blame(first.stats) == {} and _blame(second.stats) == {}


@pytest_twisted.ensureDeferred
async def test_promise_17_a_drop_after_connecting_is_still_the_sessions_failure(
    crawl, settings, gateway
):
    # The gateway accepts, reads the request and closes: the attempt reached it.
    gateway.set_default_behavior(Behavior.close())
    settings["HEX_PROXY_MAX_RETRIES"] = 1
    result = await crawl(settings, urls(1))
    stats = result.stats
    assert DOWN not in stats
    assert stats["hex_proxy/retry"] == 1
    assert sum(v for k, v in stats.items() if k.startswith("hex_proxy/failure/")) == 2


@pytest_twisted.ensureDeferred
async def test_promise_17_a_timeout_after_connecting_is_still_the_sessions_failure(
    crawl, settings, gateway
):
    gateway.set_default_behavior(Behavior.hang())
    settings.update(HEX_PROXY_MAX_RETRIES=0, DOWNLOAD_TIMEOUT=0.5)
    result = await crawl(settings, urls(1))
    stats = result.stats
    assert DOWN not in stats
    failures = {k: v for k, v in stats.items() if k.startswith("hex_proxy/failure/")}
    assert sum(failures.values()) == 1, failures


@pytest_twisted.ensureDeferred
async def test_promise_17_a_listed_proxy_that_cannot_be_reached_is_judged_on_its_own(
    crawl, base_settings, gateway
):
    # Two listed proxies: the gateway, and a port nothing listens on.
    dead = Gateway().start()
    dead_port = dead.port
    dead.stop()
    settings = {
        key: value
        for key, value in base_settings.items()
        if not key.startswith(("HEX_PROXY_GATEWAY", "HEX_PROXY_USER", "HEX_PROXY_PASS"))
    }
    settings["HEX_PROXY_LIST"] = [
        f"http://USER-session-a:{PASSWORD}@127.0.0.1:{gateway.port}",
        f"http://USER-session-b:{PASSWORD}@127.0.0.1:{dead_port}",
    ]
    settings["HEX_PROXY_MAX_FAILURES"] = 1
    pages = urls(10)
    result = await crawl(settings, pages)
    stats = result.stats
    assert result.finish_reason == "finished"
    assert sorted(p.url for p in result.pages) == sorted(pages)
    assert DOWN not in stats  # no crawl-wide outage
    # The unreachable proxy failed as a session (and was benched), the other carried on.
    assert stats.get("hex_proxy/blacklisted") == 1


@pytest.mark.parametrize(
    ("exception", "unreachable"),
    [
        (error.ConnectionRefusedError(), True),
        (error.DNSLookupError("gate.example"), True),
        (error.TCPTimedOutError(), True),
        (error.NoRouteError(), True),
        (error.TimeoutError(), True),  # Twisted's connect timeout
        (error.TimeoutError("Getting http://x took longer than 5 seconds."), False),
        (error.ConnectionLost(), False),
        (error.ConnectionDone(), False),
        (OSError("reset"), False),
    ],
)
def test_promise_17_which_failures_say_the_gateway_cannot_be_reached(exception, unreachable):
    assert _scrapy.unreachable(exception) is unreachable


def test_promise_17_scrapy_2_15_wrapped_failures_are_read_by_their_cause():
    import scrapy.exceptions as ours

    if not hasattr(ours, "DownloadTimeoutError"):
        pytest.skip("Scrapy < 2.15 raises Twisted's errors unwrapped")
    assert _scrapy.unreachable(ours.DownloadConnectionRefusedError("refused"))
    assert _scrapy.unreachable(ours.CannotResolveHostError("gate.example"))
    connect_timeout = ours.DownloadTimeoutError("User timeout caused connection failure.")
    connect_timeout.__cause__ = error.TimeoutError()
    assert _scrapy.unreachable(connect_timeout)
    # Scrapy's own download timeout, raised without a cause: connected or not, nobody knows.
    assert not _scrapy.unreachable(ours.DownloadTimeoutError("Getting x took longer than 5s"))


@pytest_twisted.ensureDeferred
async def test_promise_17_a_gateway_that_does_not_accept_in_time_is_an_outage_too(
    crawl, settings, caplog
):
    """Twisted's connect timeout: the gateway's port takes no more connections (a listener
    with a full backlog that never accepts: the kernel drops the SYNs), then the gateway is
    started on that port. https:// targets: Scrapy's HTTP/1.1 handler connects for a CONNECT
    tunnel with Twisted's timeout, which then ends the attempt before Scrapy's own download
    timeout (for http:// targets it connects through HostnameEndpoint, whose timeout starts
    after Scrapy's: that case shows as Scrapy's download timeout, a session's failure)."""
    import socket

    from twisted.internet import reactor

    caplog.set_level(logging.INFO)
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # fills the backlog of 0
    gateway = Gateway(password=PASSWORD, port=port)

    def back() -> None:
        filler.close()
        blackhole.close()
        gateway.start()

    settings.update(HEX_PROXY_GATEWAY=f"http://127.0.0.1:{port}", DOWNLOAD_TIMEOUT=0.5)
    pages = urls(3, "https")

    def watch(crawler: Any) -> None:  # the gateway starts 0.5 s after the outage is seen
        when(crawler, lambda c, runtime: runtime.core.gateway_down, lambda c, r: later())

    def later() -> None:
        reactor.callLater(0.5, back)

    try:
        result = await crawl(settings, pages, before=watch)
    finally:
        gateway.stop()
        filler.close()
        blackhole.close()
    stats = result.stats
    assert result.finish_reason == "finished"
    assert sorted(p.url for p in result.pages) == sorted(pages)
    assert len(_fetched(gateway)) == len(pages)  # one tunnel each
    assert _blame(stats) == {}
    assert stats[DOWN] == 1
    warnings = _ours(caplog, logging.WARNING)
    assert len(warnings) == 1 and "TimeoutError" in warnings[0], warnings


@pytest.mark.parametrize(
    ("value", "read"), [(None, 60.0), ("2.5", 2.5), (0, 0.0), (-1, None), ("soon", None)]
)
def test_promise_17_the_timeout_setting_is_checked_at_start(value, read):
    from scrapy.settings import Settings

    from scrapy_hexproxy._settings import HexProxyConfigError, read_settings

    given = {"HEX_PROXY_GATEWAY": "http://127.0.0.1:7777", "HEX_PROXY_USER": "U"}
    given["HEX_PROXY_PASS"] = PASSWORD
    if value is not None:
        given["HEX_PROXY_GATEWAY_DOWN_TIMEOUT"] = value
    if read is None:
        with pytest.raises(HexProxyConfigError, match=r"^HEX_PROXY_GATEWAY_DOWN_TIMEOUT "):
            read_settings(Settings(given))
    else:
        assert read_settings(Settings(given)).gateway_down_timeout == read


@pytest_twisted.ensureDeferred
async def test_promise_17_a_timeout_of_0_waits_for_ever_and_a_close_releases_what_it_holds(
    settings, gateway, caplog
):
    """0: no give-up; 1.5 s into the outage the engine is told to close (as Ctrl-C or a
    CLOSESPIDER_* limit would): the held requests are released at once, counted."""
    from scrapy.crawler import CrawlerRunner
    from twisted.internet import reactor

    from .conftest import CrawlResult

    caplog.set_level(logging.INFO)
    settings["HEX_PROXY_GATEWAY_DOWN_TIMEOUT"] = 0
    runner = CrawlerRunner(settings)
    result = CrawlResult(crawler=None)
    crawler = runner.create_crawler(OutageSpider)
    result.crawler = crawler
    asked: list[float] = []

    def close(crawler: Any) -> None:
        asked.append(time.monotonic())
        _scrapy.close_spider(crawler, "shutdown")

    when(
        crawler,
        lambda c, runtime: runtime.core.gateway_down,
        lambda c, runtime: reactor.callLater(1.5, close, c),
    )
    await runner.crawl(crawler, urls=urls(21), result=result, gateway=gateway, back_after=None)
    closed = time.monotonic() - asked[0]
    print(f"timeout 0, closed by the engine: {closed:.3f}s from the ask to the end")
    stats = result.stats
    assert result.finish_reason == "shutdown"
    assert _ours(caplog, logging.ERROR) == []  # no give-up with 0
    assert stats["hex_proxy/dropped_at_close"] == stats["downloader/exception_count"] > 0
    assert stats[DOWN_SECONDS] >= 1.5
    assert closed < 1.0
