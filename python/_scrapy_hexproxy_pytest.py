"""pytest fixtures for crawling through a loopback hexproxy gateway.

Registered through the ``pytest11`` entry point (``-p no:hexproxy`` turns it off), so pytest
loads this module in every project where scrapy-hexproxy is installed. It is a top-level module,
outside the package, because importing anything inside ``scrapy_hexproxy`` runs its
``__init__``, which imports Scrapy and Twisted (about 0.4 s) so that the public names are real;
here only pytest is imported until a fixture is used.

* ``hexproxy_gateway`` -- a started :class:`scrapy_hexproxy.testing.Gateway` on 127.0.0.1,
  stopped after the test.
* ``hexproxy_settings`` -- a fresh dict of Scrapy settings that route downloads through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scrapy_hexproxy.testing import Gateway


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
def hexproxy_settings(hexproxy_gateway: Gateway) -> dict[str, Any]:
    """Scrapy settings wiring both middlewares to ``hexproxy_gateway``."""
    return {
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 350,
            "scrapy_hexproxy.SmartRetryMiddleware": 550,
        },
        "HEX_PROXY_GATEWAY": hexproxy_gateway.url,
        "HEX_PROXY_USER": hexproxy_gateway.user,
        "HEX_PROXY_PASS": hexproxy_gateway.password,
    }
