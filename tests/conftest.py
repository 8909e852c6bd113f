"""Shared test support: real Scrapy crawls through the loopback gateway.

The reactor is pytest-twisted's (``--reactor asyncio`` or ``--reactor default``); `make test`
runs the suite under both. Crawls use Scrapy's CrawlerRunner: the real engine, downloader,
HttpProxyMiddleware and HTTP/1.1 download handler, not mocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
import scrapy
from scrapy.crawler import CrawlerRunner
from scrapy.settings import default_settings
from scrapy.utils.test import get_crawler

from scrapy_hexproxy._runtime import Runtime

GUIDE_WIRING = {
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "scrapy_hexproxy.HexProxyMiddleware": 350,
    "scrapy_hexproxy.SmartRetryMiddleware": 550,
}


# Scrapy 2.11 defaults REQUEST_FINGERPRINTER_IMPLEMENTATION to '2.6' and warns that it is
# deprecated unless the setting is given; 2.12 removed '2.6' and deprecates the setting itself.
# So it is set only where the installed Scrapy's default is '2.6'.
FINGERPRINTER_SETTINGS = (
    {"REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7"}
    if getattr(default_settings, "REQUEST_FINGERPRINTER_IMPLEMENTATION", None) == "2.6"
    else {}
)


def reactor_setting(config: pytest.Config) -> str | None:
    if config.getoption("reactor") == "asyncio":
        return "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
    return None  # a plain Twisted reactor: Scrapy must accept whatever is installed


@pytest.fixture
def base_settings(request: pytest.FixtureRequest, hexproxy_gateway: Any) -> dict[str, Any]:
    """Settings for a quiet, deterministic crawl through the test gateway, guide wiring."""
    return {
        "DOWNLOADER_MIDDLEWARES": dict(GUIDE_WIRING),
        "HEX_PROXY_GATEWAY": hexproxy_gateway.url,
        "HEX_PROXY_USER": "USER",
        "HEX_PROXY_PASS": "PASS",
        "HEX_PROXY_SEED": 7,
        "TWISTED_REACTOR": reactor_setting(request.config),
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "DEBUG",
        "ROBOTSTXT_OBEY": False,
        "DOWNLOAD_TIMEOUT": 5,
        "CONCURRENT_REQUESTS": 8,
        **FINGERPRINTER_SETTINGS,
    }


@dataclass
class Page:
    url: str
    status: int
    meta_session: str | None
    gateway_session: str | None
    retry_times: int


@dataclass
class CrawlResult:
    crawler: Any
    pages: list[Page] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any]:
        return self.crawler.stats.get_stats()

    @property
    def finish_reason(self) -> str:
        return self.stats.get("finish_reason")

    def hex_stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.stats.items() if k.startswith("hex_proxy/")}


class PagesSpider(scrapy.Spider):
    """Fetches the given URLs; records every response it gets and every error."""

    name = "pages"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def __init__(
        self, urls: list[str | tuple[str, int]], result: CrawlResult, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.urls = urls  # a URL, or (URL, priority)
        self.result = result

    def _requests(self) -> Any:
        for target in self.urls:
            url, priority = (target, 0) if isinstance(target, str) else target
            yield scrapy.Request(
                url, priority=priority, callback=self.parse, errback=self.failed, dont_filter=True
            )

    async def start(self) -> Any:  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self) -> Any:  # Scrapy < 2.13
        return self._requests()

    def parse(self, response: scrapy.http.Response, **kwargs: Any) -> Any:
        self.record(response)

    def record(self, response: scrapy.http.Response) -> None:
        self.result.pages.append(
            Page(
                url=response.url,
                status=response.status,
                meta_session=response.meta.get("hex_session"),
                gateway_session=response.headers.get(b"X-Hex-Session", b"").decode() or None,
                retry_times=response.meta.get("retry_times", 0),
            )
        )

    def failed(self, failure: Any) -> None:
        self.result.errors.append(failure)


@pytest.fixture
def crawl():
    """``await crawl(settings, urls)`` runs a real crawl and returns a CrawlResult."""

    async def run(
        settings: dict[str, Any], urls: list[Any], *, before=None, spider=PagesSpider
    ) -> CrawlResult:
        runner = CrawlerRunner(settings)
        result = CrawlResult(crawler=None)
        crawler = runner.create_crawler(spider)
        result.crawler = crawler
        if before is not None:
            before(crawler)
        await runner.crawl(crawler, urls=urls, result=result)
        return result

    return run


def urls(n: int, scheme: str = "http", host: str = "site.test") -> list[str]:
    """Targets only the gateway answers for: it never connects to them."""
    return [f"{scheme}://{host}/page/{i}" for i in range(n)]


@pytest.fixture
def hook_crawler(request: pytest.FixtureRequest):
    """A configured crawler for hook-level tests (real Request/Response objects)."""

    def make(**overrides: Any) -> Any:
        settings = {
            "DOWNLOADER_MIDDLEWARES": dict(GUIDE_WIRING),
            "HEX_PROXY_GATEWAY": "http://127.0.0.1:7777",
            "HEX_PROXY_USER": "USER",
            "HEX_PROXY_PASS": "s3cr3t-PASS",
            "HEX_PROXY_MANUAL_CLOCK": True,
            "HEX_PROXY_SEED": 1,
            "TWISTED_REACTOR": reactor_setting(request.config),
        }
        settings.update(overrides)
        return get_crawler(scrapy.Spider, settings)

    return make


def when(crawler: Any, condition: Any, action: Any) -> None:
    """Call ``action(crawler, runtime)`` once, the first time ``condition(crawler, runtime)``
    holds. Polls the reactor every 10 ms during the crawl: the test drives what happens, not
    how long it takes."""
    from scrapy import signals
    from twisted.internet import task

    def check() -> None:
        runtime = Runtime.of(crawler)
        if condition(crawler, runtime):
            loop.stop()
            action(crawler, runtime)

    loop = task.LoopingCall(check)

    def opened(spider: Any) -> None:
        loop.start(0.01)

    def closed(spider: Any, reason: str) -> None:
        if loop.running:
            loop.stop()

    # weak=False: these closures have no other owner.
    crawler.signals.connect(opened, signal=signals.spider_opened, weak=False)
    crawler.signals.connect(closed, signal=signals.spider_closed, weak=False)


def when_requests_wait(crawler: Any, action: Any, *, every_request: bool = False) -> None:
    """Call ``action(crawler, runtime)`` once, the first time requests wait for a session
    (with ``every_request``: once every request in the downloader waits)."""

    def waiting(crawler: Any, runtime: Runtime) -> bool:
        parked = runtime.waiting
        if every_request and parked != len(crawler.engine.downloader.active):
            return False
        return parked > 0

    when(crawler, waiting, action)


def runtime_of(crawler: Any) -> Runtime:
    return Runtime.of(crawler)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture):
    """Every log record at every level, for secret checks."""
    caplog.set_level(logging.DEBUG)
    return caplog
