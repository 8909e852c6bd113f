"""The wall around Scrapy's and Twisted's internals, Python side.

Every probe of another library's private attributes, and every shim between Scrapy versions,
is here; the Rust side of the wall (``src/python/scrapy.rs``) holds the direct accesses the
hooks make, and takes what these probes found. Each probe checks the fact it relies on with
real objects of the installed Scrapy, at start, and falls back to the public API when the fact
does not hold (an older or a newer Scrapy). ``SCRAPY_HEXPROXY_PUBLIC_API=1`` in the environment
forces every fallback, so that the tests can run the hooks through them on any version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

#: Set to "1" to force the public API everywhere (the tests' fallback leg).
PUBLIC_API_ENV = "SCRAPY_HEXPROXY_PUBLIC_API"

_PROBE_URL = "http://127.0.0.1/"
_PROBE_PROXY = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Probes:
    """What the hooks may do directly; read once per crawl by ``_core.HookState``."""

    #: Every fallback forced (``SCRAPY_HEXPROXY_PUBLIC_API=1``).
    public_api_only: bool
    #: Scrapy's ``Headers`` when a request keeps ``_meta``/``_headers``/``_encoding`` in
    #: slots, None until first use, and ``Headers`` may be made as ``dict.__new__`` makes them;
    #: None: use ``request.meta`` and ``request.headers``.
    lazy_headers_type: type | None
    #: A response keeps its flags in the slot ``_flags``, None until first use.
    response_flags_slot: bool
    #: ``Headers`` stores a normalised name to a list of bytes, so the dict's own functions
    #: may write it; False: ``Headers.__setitem__`` and friends.
    headers_are_dicts: bool
    #: The meta key where HttpProxyMiddleware notes which proxy a ``Proxy-Authorization``
    #: header belongs to; None: not found (credentials then go in the proxy URL).
    auth_proxy_key: str | None
    #: The exceptions whose message may give a refused CONNECT's status: Scrapy's HTTP/1.1
    #: handler's ``TunnelError``, and curl_cffi's ``CurlError`` (scrapy-impersonate's
    #: handler) when it is installed.
    refused_connect: tuple[type[BaseException], ...]
    #: Playwright's ``Error`` and ``TimeoutError`` (scrapy-playwright's handler raises them)
    #: when it is installed: a ``net::ERR_...`` error or a timeout is the attempt failing on
    #: the way, any other error a programming error.
    browser_errors: tuple[type[BaseException], type[BaseException]] | None
    #: The exceptions that mean the attempt failed on the way (the session's fault, maybe).
    transport_exceptions: tuple[type[BaseException], ...]
    #: Whether a transport failure says the proxy's own address could not be reached.
    unreachable: Callable[[BaseException], bool]


def probe() -> Probes:
    """Probes the installed Scrapy (each fact on real objects)."""
    public = os.environ.get(PUBLIC_API_ENV) == "1"
    return Probes(
        public_api_only=public,
        lazy_headers_type=None if public else _lazy_headers_type(),
        response_flags_slot=not public and _response_flags_slot(),
        headers_are_dicts=not public and _headers_are_dicts(),
        auth_proxy_key=None if public else _auth_proxy_key(),
        refused_connect=refused_connect_errors(),
        browser_errors=browser_errors(),
        transport_exceptions=transport_exceptions(),
        unreachable=unreachable,
    )


def transport_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the attempt failed on the way (the session's fault, maybe)."""
    import scrapy.exceptions as scrapy_exceptions
    from scrapy.core.downloader.handlers.http11 import TunnelError
    from twisted.internet import defer, error
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    # Scrapy >= 2.15 wraps the Twisted errors into its own download exceptions.
    new_in_2_15 = (
        "DownloadConnectionRefusedError",
        "CannotResolveHostError",
        "DownloadTimeoutError",
        "DownloadFailedError",
        "ResponseDataLossError",
    )
    found = tuple(
        getattr(scrapy_exceptions, name) for name in new_in_2_15 if hasattr(scrapy_exceptions, name)
    )
    return (
        *found,
        TunnelError,
        error.ConnectError,
        error.ConnectionLost,
        error.ConnectionDone,
        error.TimeoutError,
        defer.TimeoutError,
        ResponseFailed,
        ResponseNeverReceived,
        OSError,
    )


def unreachable(exception: BaseException) -> bool:
    """Whether a transport failure says the proxy's own address could not be reached, so the
    attempt never got to it (promise 17): the connection was refused, the proxy's name did not
    resolve, or the connection was not made in time. Not a drop or a timeout after connecting,
    not the proxy's answer.

    Twisted raises every failure to connect as a ``ConnectError`` (refused, no route, its
    connect timeout ``TimeoutError()``, ...) and a failed lookup as ``DNSLookupError``; Scrapy
    >= 2.15 wraps the refused and the lookup into ``DownloadConnectionRefusedError`` and
    ``CannotResolveHostError``, and a Twisted timeout into ``DownloadTimeoutError`` with the
    Twisted error as its ``__cause__``. Scrapy's own download timeout (the whole download took
    too long, connected or not) is a ``TimeoutError`` with a message (Scrapy < 2.15), or a
    ``DownloadTimeoutError`` without a cause: not this.
    """
    import scrapy.exceptions as scrapy_exceptions
    from twisted.internet import error

    if isinstance(exception, error.TimeoutError):
        # Twisted's connect timeout says nothing more; Scrapy's says which URL took too long.
        return getattr(exception, "osError", None) is None and not any(exception.args)
    if isinstance(exception, (error.ConnectError, error.DNSLookupError)):
        return True
    wrapped = tuple(
        getattr(scrapy_exceptions, name)
        for name in ("DownloadConnectionRefusedError", "CannotResolveHostError")
        if hasattr(scrapy_exceptions, name)
    )
    if wrapped and isinstance(exception, wrapped):
        return True
    timeout = getattr(scrapy_exceptions, "DownloadTimeoutError", None)
    cause = exception.__cause__
    return (
        timeout is not None
        and isinstance(exception, timeout)
        and cause is not None
        and unreachable(cause)
    )


def refused_connect_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a supported download handler raises for a CONNECT the proxy refused,
    with the proxy's status in the message (read by ``src/python/scrapy.rs``,
    ``refused_status``): Scrapy's ``TunnelError``, and curl_cffi's ``CurlError`` ("CONNECT
    tunnel failed, response 407"), which scrapy-impersonate's handler lets through."""
    from importlib.util import find_spec

    from scrapy.core.downloader.handlers.http11 import TunnelError

    if find_spec("curl_cffi") is None:
        return (TunnelError,)
    from curl_cffi import CurlError

    return (TunnelError, CurlError)


def browser_errors() -> tuple[type[BaseException], type[BaseException]] | None:
    """Playwright's ``Error`` and ``TimeoutError``, if Playwright is installed."""
    from importlib.util import find_spec

    if find_spec("playwright") is None:
        return None
    from playwright.async_api import Error, TimeoutError

    return (Error, TimeoutError)


def _lazy_headers_type() -> type | None:
    """Scrapy's ``Headers`` if the core may read a request's slots directly; else None.

    Scrapy >= 2.15 keeps a request's meta, headers and encoding in the slots ``_meta``,
    ``_headers`` and ``_encoding``, and makes the meta dict and the headers on first use (None
    until then); ``Headers.__init__`` only stores ``encoding`` (and what it is given), and from
    2.18 on ``Headers.__new__`` is ``dict.__new__`` (2.15 ... 2.17 run a deprecation check in
    ``CaselessDict.__new__``), so the whole of it holds from 2.18. Going through the public
    properties and ``Headers.__init__`` costs Python calls on every request, half of the
    middlewares' own per-request cost. This checks each of those facts on real objects of the
    installed Scrapy.
    """
    from scrapy import Request
    from scrapy.http.headers import Headers

    probe = Request(_PROBE_URL, encoding="ascii")
    slots = ("_meta", "_headers", "_encoding")
    if [getattr(probe, name, False) for name in slots] != [None, None, "ascii"]:
        return None
    try:
        made_state = vars(Headers(encoding="ascii"))
    except TypeError:  # no __dict__
        return None
    if Headers.__new__ is not dict.__new__:  # the core makes them as dict.__new__ does
        return None
    fresh = dict.__new__(Headers)
    fresh.encoding = "ascii"
    meta: dict[str, Any] = {}
    probe._headers = fresh
    probe._meta = meta
    if made_state != {"encoding": "ascii"} or probe.headers is not fresh or probe.meta is not meta:
        return None
    return Headers


def _response_flags_slot() -> bool:
    """Whether a response keeps its flags in the slot ``_flags``, None until first use, so the
    core may read it instead of the ``flags`` property (Scrapy >= 2.15; 2.11 ... 2.14 keep a
    plain attribute)."""
    from scrapy.http import Response

    plain = Response(_PROBE_URL)
    if getattr(plain, "_flags", False) is not None:
        return False
    cached = Response(_PROBE_URL, flags=["cached"])
    return cached._flags == ["cached"] and cached.flags is cached._flags


def _headers_are_dicts() -> bool:
    """Whether a header written as the core writes it (the normalised name to a one-item list
    of bytes, with the dict's own functions) is what ``Headers.__setitem__`` would store."""
    from scrapy.http.headers import Headers

    name, value = b"Proxy-Authorization", b"Basic eA=="
    public = Headers(encoding="utf-8")
    public[name] = value
    direct = Headers(encoding="utf-8")
    dict.__setitem__(direct, name, [value])
    return (
        dict(public) == dict(direct)
        and direct.get(b"proxy-authorization") == value
        and direct.getlist(name) == [value]
        and name in direct
    )


def _auth_proxy_key() -> str | None:
    """The meta key where Scrapy's HttpProxyMiddleware notes the proxy a
    ``Proxy-Authorization`` header belongs to: what its ``process_request`` adds to the meta of
    a real request that carries a proxy and the header."""
    from scrapy import Request
    from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware

    request = Request(
        _PROBE_URL,
        meta={"proxy": _PROBE_PROXY},
        headers={"Proxy-Authorization": "Basic eA=="},
    )
    before = set(request.meta)
    middleware = HttpProxyMiddleware()
    try:
        try:
            middleware.process_request(request)
        except TypeError:  # Scrapy < 2.13 takes the spider
            middleware.process_request(request, None)
    except Exception:
        return None
    added = [key for key in request.meta if key not in before]
    noted = [key for key in added if request.meta[key] == _PROBE_PROXY]
    return noted[0] if len(noted) == 1 else None


def late(crawler: Crawler, name: str) -> Any:
    """A crawler attribute that only exists once the crawl starts (None before)."""
    try:
        return getattr(crawler, name, None)
    except RuntimeError:  # Scrapy >= 2.14 raises instead of returning None
        return None


def close_spider(crawler: Crawler, reason: str) -> Deferred[None] | None:
    """Closes the crawler's spider with ``reason`` (once the engine exists)."""
    from scrapy.utils.defer import deferred_from_coro

    engine = late(crawler, "engine")
    if engine is None:
        return None
    if hasattr(engine, "close_spider_async"):  # Scrapy >= 2.14
        return deferred_from_coro(engine.close_spider_async(reason=reason))  # type: ignore[no-any-return]
    return engine.close_spider(crawler.spider, reason)  # type: ignore[no-any-return]


def pause_engine(engine: Any, paused: bool) -> bool:
    """Pause (or unpause) the engine's taking of requests from the scheduler, as the telnet
    console's ``engine.pause()`` does; downloads under way go on. Returns whether it was
    paused before."""
    before = bool(getattr(engine, "paused", False))
    if paused:
        engine.pause()
    else:
        engine.unpause()
    return before


def engine_open(engine: Any) -> bool:
    """False while the engine is closing the spider. The engine's slot is private (``slot`` on
    Scrapy 2.11, ``_slot`` on later ones); if neither is there, the engine is taken as open."""
    for name in ("_slot", "slot"):
        if hasattr(engine, name):
            slot = getattr(engine, name)
            return slot is not None and getattr(slot, "closing", None) is None
    return True


def downloading(engine: Any) -> int | None:
    """How many requests are in the engine's downloader (``downloader.active``, which holds
    a request from the moment it enters the downloader middlewares); None if not readable."""
    active = getattr(getattr(engine, "downloader", None), "active", None)
    try:
        return len(active)  # type: ignore[arg-type]
    except TypeError:
        return None


def close_playwright_context(crawler: Crawler, name: str) -> bool:
    """Closes scrapy-playwright's browser context ``name``, if its handler has it open (its
    ``context_wrappers``, run on its loop as it runs its own coroutines); whether it had.
    No public API closes a context but the page's ``context.close()`` in a callback. The
    handler is the one Scrapy's ``DownloadHandlers`` made (its ``_handlers``, by scheme)."""
    engine = late(crawler, "engine")
    downloader = getattr(engine, "downloader", None)
    handlers = getattr(getattr(downloader, "handlers", None), "_handlers", None)
    if not isinstance(handlers, dict):
        return False
    for handler in {id(h): h for h in handlers.values()}.values():
        wrappers = getattr(handler, "context_wrappers", None)
        wrapper = wrappers.get(name) if isinstance(wrappers, dict) else None
        run = getattr(handler, "_deferred_from_coro", None)
        if wrapper is None or run is None:
            continue
        closed = run(wrapper.context.close())
        closed.addErrback(lambda failure: None)  # already closing, or the browser gone
        return True
    return False


def component_priorities(crawler: Crawler, name: str) -> Any:
    """The ``name`` setting (a component dict) merged with its ``_BASE``."""
    settings = crawler.settings
    getter = getattr(settings, "get_component_priority_dict_with_base", settings.getwithbase)
    return getter(name)
