"""Sessions as browser contexts, for scrapy-playwright's download handler (promise 19).

The browser ignores ``meta["proxy"]`` and would copy a ``Proxy-Authorization`` header onto its
request to the target site; a Playwright context, though, takes a proxy with a username and a
password. So when scrapy-playwright's handler serves http or https, an attempt with
``meta["playwright"]`` goes out in a context of its session's own: the hooks
(``src/python/hooks.rs``, ``assign``) call ``BrowserContexts.assign`` instead of putting the
header on, which sets

- ``meta["playwright_context"]``: ``"hex_proxy:<session id>"``;
- ``meta["playwright_context_kwargs"]``: the user's kwargs, with ``"proxy"``: the server, and
  the session's username and password (taken off the header the core made, so the username is
  the core's, made once);

and the hooks take ``"proxy"`` off those kwargs again wherever they take the header off (the
attempt settled, the response's headers in, the request scheduled): the password is on a
request only between our ``process_request`` and the handler (promise 16). The context keeps
it, inside the browser. A session that is blacklisted (for every host) or rotated has its
context closed, so its next use (after the cooldown) makes a fresh one.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from . import _scrapy
from ._handlers import PLAYWRIGHT, ROUTED_SCHEMES, handler_names

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger("scrapy_hexproxy")

#: The meta keys scrapy-playwright reads.
CONTEXT_KEY = "playwright_context"
CONTEXT_KWARGS_KEY = "playwright_context_kwargs"


def serves_routed_schemes(crawler: Crawler) -> bool:
    """Whether scrapy-playwright's handler (or a subclass) serves http or https."""
    handlers = crawler.settings.getwithbase("DOWNLOAD_HANDLERS")
    return any(
        handlers.get(scheme) is not None and PLAYWRIGHT in handler_names(handlers[scheme])
        for scheme in ROUTED_SCHEMES
    )


def context_name(session: str) -> str:
    return f"hex_proxy:{session}"


class BrowserContexts:
    """The browser contexts of our sessions, one crawl's."""

    def __init__(self, crawler: Crawler) -> None:
        self._crawler = crawler
        #: Session number -> the name of the context its last attempt went out in.
        self._open: dict[int, str] = {}

    def assign(
        self, meta: dict[str, Any], number: int, proxy_url: str, session: str, header: Any
    ) -> None:
        """Sends this Playwright attempt through session ``number`` (id ``session``):
        ``proxy_url`` is its ``meta["proxy"]`` (credentials maybe in it, with a list),
        ``header`` its ``Proxy-Authorization`` value (bytes) or None."""
        server, username, password = _proxy_of(proxy_url, header)
        proxy: dict[str, str] = {"server": server}
        if username is not None:
            proxy["username"] = username
            proxy["password"] = password or ""
        # Chromium sends loopback addresses around a proxy unless told not to.
        proxy["bypass"] = "<-loopback>"
        kwargs = dict(meta.get(CONTEXT_KWARGS_KEY) or {})
        kwargs["proxy"] = proxy
        name = context_name(session)
        meta["proxy"] = server  # no credentials for HttpProxyMiddleware to make a header of
        meta[CONTEXT_KEY] = name
        meta[CONTEXT_KWARGS_KEY] = kwargs
        previous = self._open.get(number)
        self._open[number] = name
        if previous is not None and previous != name:  # rotated since
            self.close(previous)

    def benched(self, number: int) -> None:
        """Session ``number`` was blacklisted or rotated: its context goes."""
        name = self._open.pop(number, None)
        if name is not None:
            self.close(name)

    def close(self, name: str) -> None:
        if _scrapy.close_playwright_context(self._crawler, name):
            logger.debug("hex_proxy: closing browser context %s", name)


def _proxy_of(url: str, header: Any) -> tuple[str, str | None, str | None]:
    """The server (no credentials), username and password for a Playwright proxy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    server = urlunsplit((parts.scheme, netloc, "", "", ""))
    if header is not None:
        scheme, _, encoded = bytes(header).partition(b" ")
        if scheme.lower() == b"basic":
            username, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
            return server, username, password
    if parts.username is not None:
        from urllib.parse import unquote

        return server, unquote(parts.username), unquote(parts.password or "")
    return server, None, None
