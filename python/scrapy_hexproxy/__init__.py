"""Rotating sticky-session proxy middlewares for Scrapy, with a Rust core.

List them in ``DOWNLOADER_MIDDLEWARES``::

    DOWNLOADER_MIDDLEWARES = {
        "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        "scrapy_hexproxy.HexProxyMiddleware": 350,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    }
"""

# Plain imports, so help(), dir() and type checkers see the public names. Importing the package
# imports Scrapy but installs no reactor: nothing here or below touches twisted.internet.reactor
# at import time (tests/test_public_api.py checks it).
from ._banpolicy import BanPolicy
from ._core import __version__
from ._settings import HexProxyConfigError
from .middlewares import HexProxyMiddleware, SmartRetryMiddleware

__all__ = [
    "BanPolicy",
    "HexProxyConfigError",
    "HexProxyMiddleware",
    "SmartRetryMiddleware",
    "__version__",
]
