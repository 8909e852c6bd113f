"""pytest fixtures for crawling through a loopback hexproxy gateway.

Registered through the ``pytest11`` entry point (``-p no:hexproxy`` turns it off), so pytest
loads this module in every project where scrapy-hexproxy is installed. It is a top-level module,
outside the package, because importing anything inside ``scrapy_hexproxy`` runs its
``__init__``, which imports Scrapy and Twisted (about 0.4 s) so that the public names are real;
here only pytest is imported until a fixture is used.

* ``hexproxy_gateway`` -- a started :class:`scrapy_hexproxy.testing.Gateway` on 127.0.0.1,
  stopped after the test.
* ``hexproxy_redis`` -- a started :class:`scrapy_hexproxy.testing.RedisServer` (a real
  ``redis-server`` on a free 127.0.0.1 port, nothing saved), stopped after the test: set
  ``HEX_PROXY_REDIS_URL`` to its ``url`` to share the pool between crawls.
* ``hexproxy_settings`` -- a fresh dict of Scrapy settings that route downloads through it,
  seeded (``HEX_PROXY_SEED``), so a test's sessions are picked the same way on every run.

A test whose crawl the middlewares closed because every request waited on a manual clock that
nothing moved (``HEX_PROXY_MANUAL_CLOCK`` without ``advance_clock``) fails with that message.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from scrapy_hexproxy.testing import Gateway, RedisServer

#: ``hexproxy_settings``' HEX_PROXY_SEED.
SEED = 1


@pytest.fixture
def hexproxy_gateway() -> Iterator[Gateway]:
    """A sticky-session proxy gateway on 127.0.0.1 (user ``USER``, password ``PASS``)."""
    from scrapy_hexproxy.testing import Gateway

    gateway = Gateway().start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def hexproxy_redis() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (a free port; nothing saved), stopped after the test."""
    from scrapy_hexproxy.testing import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hexproxy_settings(hexproxy_gateway: Gateway) -> dict[str, Any]:
    """Scrapy settings wiring both middlewares to ``hexproxy_gateway``, seeded, for the
    reactor already installed (pytest-twisted's, whichever its ``--reactor``)."""
    return {
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 350,
            "scrapy_hexproxy.SmartRetryMiddleware": 550,
        },
        "HEX_PROXY_GATEWAY": hexproxy_gateway.url,
        "HEX_PROXY_USER": hexproxy_gateway.user,
        "HEX_PROXY_PASS": hexproxy_gateway.password,
        "HEX_PROXY_SEED": SEED,
        # No console listening during a test (Scrapy 2.19's remote control also warns that it
        # needs the asyncio reactor when another runs).
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        **_installed_reactor(),
        **_fingerprinter(),
    }


def _installed_reactor() -> dict[str, str]:
    """TWISTED_REACTOR naming the reactor installed, if one is: Scrapy >= 2.13 asks for the
    asyncio reactor by default, and a CrawlerRunner refuses settings that name another reactor
    than the one running. None installed yet: Scrapy's own choice stands."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return {}
    cls = type(reactor)
    return {"TWISTED_REACTOR": f"{cls.__module__}.{cls.__qualname__}"}


def _fingerprinter() -> dict[str, str]:
    """Scrapy 2.11 warns of its default request fingerprinter ('2.6') unless the setting is
    given; 2.12 removed '2.6' and warns of the setting itself. So: only where it is '2.6'."""
    from scrapy.settings import default_settings

    if getattr(default_settings, "REQUEST_FINGERPRINTER_IMPLEMENTATION", None) == "2.6":
        return {"REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7"}
    return {}


def _clock_stalls() -> list[str]:
    """The stalled-clock messages since the last call (emptied); none if no crawl ran."""
    runtime = sys.modules.get("scrapy_hexproxy._runtime")
    stalls: list[str] = getattr(runtime, "CLOCK_STALLS", [])
    taken = list(stalls)
    stalls.clear()
    return taken


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A crawl closed for a stalled manual clock during the test fails it, with the message
    (before the test's own failure, if it had one)."""
    if call.when == "setup":
        _clock_stalls()
    outcome = yield
    if call.when != "call":
        return
    stalls = _clock_stalls()
    if not stalls:
        return
    report = outcome.get_result()
    own = f"\n\n{report.longreprtext}" if report.failed else ""
    report.outcome = "failed"
    report.longrepr = "\n".join(stalls) + own
