"""Which download handler sends our requests, checked at start (promise 19).

A request leaves through the handler DOWNLOAD_HANDLERS (merged with DOWNLOAD_HANDLERS_BASE)
names for its URL's scheme. HexProxy routes by ``meta["proxy"]`` and a ``Proxy-Authorization``
header, so a handler that ignores either would send the request from the machine's own address,
and one that refuses proxies would fail every request. Each handler of ``http`` and ``https``
is one of:

- known to honour both: Scrapy's HTTP/1.1 handler, and scrapy-impersonate's (curl_cffi; it
  hands the header to curl as a proxy header): nothing said;
- scrapy-playwright's: its browser ignores both, so each session becomes a browser context
  given the session's proxy credentials (``_playwright.py``); its other requests go through
  Scrapy's HTTP/1.1 handler: nothing said;
- known not to: Scrapy's HTTP/2 handler (it raises NotImplementedError for any proxy): the
  crawl does not start, and the message names DOWNLOAD_HANDLERS and the handler;
- anything else, a subclass of Scrapy's handler included (it may override how a request goes
  out): one WARNING at start that we cannot tell whether it honours ``meta["proxy"]``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._settings import HexProxyConfigError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger("scrapy_hexproxy")

#: The URL schemes whose requests go through the gateway.
ROUTED_SCHEMES = ("http", "https")

HTTP11 = "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"
IMPERSONATE = "scrapy_impersonate.handler.ImpersonateDownloadHandler"
H2 = "scrapy.core.downloader.handlers.http2.H2DownloadHandler"
PLAYWRIGHT = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"

#: Handlers that send every request through its session's proxy: through ``meta["proxy"]``
#: with our header, or (scrapy-playwright's) in the session's browser context.
HONOUR_PROXY = frozenset({HTTP11, IMPERSONATE, PLAYWRIGHT})

#: Handlers that cannot send a request through the gateway, and why.
REFUSE_PROXY = {
    H2: "it cannot use a proxy (it raises NotImplementedError for every proxied request)",
}


def _fix(scheme: str) -> str:
    return (
        f"Send {scheme}:// through Scrapy's HTTP/1.1 handler (DOWNLOAD_HANDLERS ="
        f" {{{scheme!r}: {HTTP11!r}}}, or remove the entry), or switch the middleware off"
        " with HEX_PROXY_ENABLED = False."
    )


def check_download_handlers(crawler: Crawler) -> None:
    """Stops the crawl at start if a routed scheme's handler cannot use the gateway; one
    WARNING for a handler we cannot vouch for."""
    # As Scrapy's DownloadHandlers reads it (a scheme -> handler dict, not a component one).
    handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
    unknown: dict[str, list[str]] = {}
    for scheme in ROUTED_SCHEMES:
        handler = handlers.get(scheme)
        if handler is None:  # disabled: Scrapy downloads nothing of this scheme
            continue
        names = handler_names(handler)
        refused = next((name for name in names if name in REFUSE_PROXY), None)
        if refused is not None:
            raise HexProxyConfigError(
                f"DOWNLOAD_HANDLERS sends {scheme}:// requests to {names[0]}, which HexProxy"
                f" cannot route through HEX_PROXY_GATEWAY: {REFUSE_PROXY[refused]}. " + _fix(scheme)
            )
        if names[0] not in HONOUR_PROXY:
            unknown.setdefault(names[0], []).append(scheme)
    for name, schemes in unknown.items():
        logger.warning(
            "hex_proxy: DOWNLOAD_HANDLERS sends %s requests to %s; HexProxy cannot tell whether"
            ' it sends them through meta["proxy"] with the Proxy-Authorization header, as'
            " Scrapy's HTTP/1.1 handler does. If it does not, they go out without the gateway.",
            " and ".join(f"{scheme}://" for scheme in schemes),
            name,
        )


def handler_names(handler: Any) -> list[str]:
    """The handler's import path, then those of the classes it derives from (so that a
    subclass of a handler that refuses proxies is refused too)."""
    from scrapy.utils.misc import load_object
    from scrapy.utils.python import global_object_name

    if isinstance(handler, str):
        canonical = _canonical(handler)
        if canonical in REFUSE_PROXY or canonical in HONOUR_PROXY:
            return [canonical]
        try:
            handler = load_object(handler)
        except Exception:  # Scrapy itself reports it when it loads the handlers
            return [handler]
    if not isinstance(handler, type):
        return [global_object_name(type(handler))]
    return [_canonical(global_object_name(cls)) for cls in handler.__mro__ if cls is not object]


#: Other import paths of the same classes.
_ALIASES = {
    "scrapy.core.downloader.handlers.http.HTTPDownloadHandler": HTTP11,
    "scrapy.core.downloader.handlers.http.HTTP11DownloadHandler": HTTP11,
    "scrapy_impersonate.ImpersonateDownloadHandler": IMPERSONATE,
    "scrapy.core.downloader.handlers.http.H2DownloadHandler": H2,
}


def _canonical(name: str) -> str:
    return _ALIASES.get(name, name)
