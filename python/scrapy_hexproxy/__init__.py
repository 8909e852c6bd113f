"""Rotating sticky-session proxy middlewares for Scrapy, with a Rust core.

List them in ``DOWNLOADER_MIDDLEWARES``::

    DOWNLOADER_MIDDLEWARES = {
        "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        "scrapy_hexproxy.HexProxyMiddleware": 350,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import __version__

if TYPE_CHECKING:
    from ._banpolicy import BanPolicy
    from ._settings import HexProxyConfigError
    from .middlewares import HexProxyMiddleware, SmartRetryMiddleware

__all__ = [
    "BanPolicy",
    "HexProxyConfigError",
    "HexProxyMiddleware",
    "SmartRetryMiddleware",
    "__version__",
]

_LAZY = {
    "HexProxyMiddleware": "middlewares",
    "SmartRetryMiddleware": "middlewares",
    "HexProxyConfigError": "_settings",
    "BanPolicy": "_banpolicy",
}


def __getattr__(name: str) -> Any:
    # Lazy so that the pytest plugin (loaded in every project that installs us) stays cheap
    # and importing the package never pulls in Twisted's reactor.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scrapy_hexproxy' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
