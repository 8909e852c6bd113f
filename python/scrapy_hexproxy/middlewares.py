"""The two downloader middlewares. They speak Scrapy; the decisions are the Rust core's.

The hooks Scrapy calls for every request, response and download exception
(``process_request``, ``process_response``, ``process_exception``) are inherited from the core
(``_core.ProxyHooks``, ``_core.RetryHooks``) so that the per-request path runs no Python
frame; they call back into ``_retry`` here and into the runtime for what must be Python (a log
line, the stop, a retry request to build, a wait for a session).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.python import global_object_name
from scrapy.utils.response import response_status_message

from . import _core
from ._handlers import check_download_handlers
from ._runtime import Runtime, _listing
from ._scrapy import component_priorities, late
from ._settings import HexProxyConfigError, is_enabled

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from typing_extensions import Self

logger = logging.getLogger("scrapy_hexproxy")

_SCRAPY_RETRY = "scrapy.downloadermiddlewares.retry.RetryMiddleware"


def _runtime(crawler: Crawler) -> Runtime:
    if not is_enabled(crawler.settings):
        raise NotConfigured("HEX_PROXY_ENABLED is False")
    return Runtime.of(crawler)


class HexProxyMiddleware(_core.ProxyHooks):
    """Gives every download attempt a sticky gateway session and tracks each session's health.

    ``process_request``, ``process_response`` and ``process_exception`` come from the core.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        runtime = _runtime(crawler)
        check_download_handlers(crawler)
        gateway = runtime.settings.gateway
        if gateway is None:
            _warn_about_the_list(runtime)
        elif gateway.scheme == "https":
            logger.warning(
                "hex_proxy: HEX_PROXY_GATEWAY is an https:// gateway; Scrapy cannot reach"
                " https:// targets through an HTTPS proxy, only http:// ones. Use the gateway's"
                " http:// port if you crawl https:// sites."
            )
        if runtime.settings.bind_cookiejar:
            _check_cookiejar_binding(crawler)
        if runtime.ban_policy is not None:
            _check_ban_policy_order(crawler)
        middleware = cls(runtime)
        crawler.signals.connect(middleware._request_scheduled, signal=signals.request_scheduled)
        crawler.signals.connect(middleware._headers_received, signal=signals.headers_received)
        return middleware

    def _request_scheduled(self, request: Request, spider: Spider | None = None) -> None:
        # Whoever made this request (a retry, a redirect, the spider from a response), no
        # credentials of ours go into the scheduler's queue (JOBDIR, Redis).
        self.scheduled(request)

    def _headers_received(
        self, headers: Any, body_length: int, request: Request, spider: Spider | None = None
    ) -> None:
        # Before any middleware's process_response copies the request (a redirect) or stores
        # it (HttpCacheMiddleware).
        self.forget_credentials(request)


class SmartRetryMiddleware(_core.RetryHooks):
    """Retries failed requests on a different session.

    ``process_response`` and ``process_exception`` come from the core, which settles the
    attempt and decides; for a retry (or a request out of retries) it calls ``_retry``.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._priority_adjust = runtime.settings.retry_priority_adjust

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        runtime = _runtime(crawler)
        if _scrapy_retry_enabled(crawler):
            logger.warning(
                "hex_proxy: Scrapy's RetryMiddleware is enabled beside SmartRetryMiddleware, so"
                " failed requests would be retried twice over (retries would double). Disable it:"
                " DOWNLOADER_MIDDLEWARES = {%r: None, ...}",
                _SCRAPY_RETRY,
            )
        return cls(runtime)

    def _retry(
        self,
        request: Request,
        give_up: bool,
        reason: str,
        status: int | None,
        response: Response | None,
        exception: BaseException | None,
    ) -> Request | None:
        """The core decided to retry ``request`` (or that it is out of retries, ``give_up``):
        the copy to schedule, or None. ``status``: the status the decision went by (for pacing
        and the stats), None for an exception or a ban outside the retry codes; ``response``
        or ``exception``: what the attempt ended with."""
        meta = request.meta
        retry_times = meta.get("retry_times", 0)
        session = meta.get(_core.SESSION_KEY)
        _count_as_scrapy(self._runtime, give_up, status, exception)
        if give_up:
            logger.error(
                "Gave up retrying %(request)s (failed %(times)d times, last on session"
                " %(session)s): %(reason)s",
                {
                    "request": request,
                    "times": retry_times + 1,
                    "session": session,
                    "reason": reason,
                },
            )
            return None
        retry = request.replace(dont_filter=True)
        retry.meta["retry_times"] = retry_times + 1
        retry.priority = request.priority + meta.get("priority_adjust", self._priority_adjust)
        pacer = self._runtime.pacer
        wait = 0.0 if pacer is None else pacer.delay(retry, status, response)
        logger.debug(
            "Retrying %(request)s on another session%(after)s (failed %(times)d times, last on"
            " session %(session)s): %(reason)s",
            {
                "request": request,
                "after": f" in {wait:.3f}s" if wait else "",
                "times": retry_times + 1,
                "session": session,
                "reason": reason,
            },
        )
        return retry


#: The reason Scrapy's retry stats give a retry that only a ban policy asked for: a response
#: whose status is no retry code (a captcha 200, a 404), which Scrapy's RetryMiddleware would
#: not have retried at all. The same word as ``hex_proxy/failure/ban``.
BAN_REASON = "ban"


def _count_as_scrapy(
    runtime: Runtime, give_up: bool, status: int | None, exception: BaseException | None
) -> None:
    """Scrapy's own retry stats, as its ``get_retry_request`` writes them (2.11.2 ... 2.19):
    ``retry/count`` and ``retry/reason_count/<reason>`` per retry, ``retry/max_reached`` per
    request out of retries, so that monitors written for Scrapy's RetryMiddleware (Spidermon's
    RetryCountMonitor, dashboards) read them. The reason is Scrapy's: the status's
    ``response_status_message`` ("503 Service Unavailable"), an exception's
    ``global_object_name`` ("twisted.internet.error.TimeoutError"), or ``BAN_REASON``.

    Counted here, in ``crawler.stats``, not in the core: the key is made by Scrapy's own
    functions (Twisted's table of reason phrases, the exception's module path), so it is
    Scrapy's on every version; and, like Scrapy's, each is added as it happens, so it adds up
    with a spider's own ``get_retry_request`` calls (the same ``retry/`` keys) and is there
    for a monitor mid-crawl, where the core's counters are set at close. The decision, and
    what it went by, is the core's (``hex_proxy/retry``, ``hex_proxy/retry/max_exceeded``);
    this only names it."""
    stats = late(runtime.crawler, "stats")
    if stats is None:
        return
    if give_up:
        stats.inc_value("retry/max_reached")
        return
    if exception is not None:
        reason = global_object_name(exception.__class__)
    elif status is not None:
        reason = response_status_message(status)
    else:
        reason = BAN_REASON
    stats.inc_value("retry/count")
    stats.inc_value(f"retry/reason_count/{reason}")


def _warn_about_the_list(runtime: Runtime) -> None:
    """Once per crawl: entries kept once, and https:// proxies."""
    core = runtime.core
    duplicates = core.duplicate_proxies
    if duplicates:
        logger.warning(
            "hex_proxy: %s repeats proxies exactly (same URL and credentials); each is one"
            " session, kept once: %s",
            runtime.settings.proxy_list,
            _listing([f"{dropped} = {kept}" for kept, dropped in duplicates], len(duplicates)),
        )
    https = [
        runtime.session_name(index)
        for index in range(core.pool_size)
        if (core.proxy_label(index) or "").startswith("https://")
    ]
    if https:
        logger.warning(
            "hex_proxy: %d proxies of %s are https:// proxies; Scrapy cannot reach https://"
            " targets through an HTTPS proxy, only http:// ones. Use their http:// ports if"
            " you crawl https:// sites: %s",
            len(https),
            runtime.settings.proxy_list,
            _listing(https, len(https)),
        )


def _downloader_middlewares(crawler: Crawler) -> list[type]:
    """The enabled downloader middleware classes, in the order Scrapy calls process_request."""
    from scrapy.utils.conf import build_component_list
    from scrapy.utils.misc import load_object

    found = []
    for component in build_component_list(component_priorities(crawler, "DOWNLOADER_MIDDLEWARES")):
        cls = load_object(component) if isinstance(component, str) else component
        if isinstance(cls, type):
            found.append(cls)
    return found


def _check_cookiejar_binding(crawler: Crawler) -> None:
    """HEX_PROXY_BIND_COOKIEJAR sets ``meta["cookiejar"]``, which CookiesMiddleware reads in
    its process_request: run after it, HexProxy would send one session's requests with another
    jar's cookies, which is what binding is meant to prevent. So that order stops the crawl."""
    from scrapy.downloadermiddlewares.cookies import CookiesMiddleware

    order = _downloader_middlewares(crawler)
    ours = next((i for i, cls in enumerate(order) if issubclass(cls, HexProxyMiddleware)), None)
    cookies = next((i for i, cls in enumerate(order) if issubclass(cls, CookiesMiddleware)), None)
    if cookies is None or not crawler.settings.getbool("COOKIES_ENABLED", True):
        logger.warning(
            "hex_proxy: HEX_PROXY_BIND_COOKIEJAR has no effect: Scrapy's CookiesMiddleware"
            " is disabled (COOKIES_ENABLED or DOWNLOADER_MIDDLEWARES), so no request keeps"
            " cookies at all"
        )
    elif ours is not None and ours > cookies:
        raise HexProxyConfigError(
            "HEX_PROXY_BIND_COOKIEJAR needs HexProxyMiddleware to run before Scrapy's"
            " CookiesMiddleware (which reads the jar when the request passes it, at 700 by"
            " default): give HexProxyMiddleware a lower number in DOWNLOADER_MIDDLEWARES"
            " (350 in the documented wiring), or set HEX_PROXY_BIND_COOKIEJAR = False"
        )


def _check_ban_policy_order(crawler: Crawler) -> None:
    """The ban policy judges a response in whichever of the two middlewares sees it first: the
    one with the higher number. Above Scrapy's HttpCompressionMiddleware (590) that one gets the
    body still compressed, so a policy looking for a captcha in it would never find one."""
    from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware

    if not crawler.settings.getbool("COMPRESSION_ENABLED", True):
        return
    order = _downloader_middlewares(crawler)
    ours = [
        i
        for i, cls in enumerate(order)
        if issubclass(cls, (HexProxyMiddleware, SmartRetryMiddleware))
    ]
    compression = [i for i, cls in enumerate(order) if issubclass(cls, HttpCompressionMiddleware)]
    if ours and compression and max(ours) > compression[0]:
        logger.warning(
            "hex_proxy: HEX_PROXY_BAN_POLICY is set and %s sees responses before Scrapy's"
            " HttpCompressionMiddleware has decompressed them, so response_is_ban() may get"
            " a compressed body. Give HexProxyMiddleware and SmartRetryMiddleware numbers"
            " below HttpCompressionMiddleware's (590) in DOWNLOADER_MIDDLEWARES, as in the"
            " documented wiring (350 and 550).",
            order[max(ours)].__name__,
        )


def _scrapy_retry_enabled(crawler: Crawler) -> bool:
    from scrapy.downloadermiddlewares.retry import RetryMiddleware

    if not crawler.settings.getbool("RETRY_ENABLED", True):
        return False
    return any(issubclass(cls, RetryMiddleware) for cls in _downloader_middlewares(crawler))
