"""Ban detection (``HEX_PROXY_BAN_POLICY``) and the per-request switch (``meta["hex_proxy"]``).

Real crawls through the loopback gateway, and hook-level tests on real Request/Response objects
for the orderings a crawl cannot pin down. Targets like http://site.test/... are answered by the
gateway itself; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy import Request
from scrapy.crawler import CrawlerRunner
from scrapy.exceptions import NotConfigured
from scrapy.http import HtmlResponse, Response
from twisted.internet.error import ConnectionDone

from scrapy_hexproxy import (
    BanPolicy,
    HexProxyConfigError,
    HexProxyMiddleware,
    SmartRetryMiddleware,
)
from scrapy_hexproxy._core import attempt_of
from scrapy_hexproxy.testing import Behavior, Gateway

from .conftest import GUIDE_WIRING, runtime_of, urls

CAPTCHA = "<html><body><form id='captcha'>Are you a robot?</form></body></html>"

WIRINGS = {
    "guide-350-550": GUIDE_WIRING,
    "proxy-740-retry-550": {
        "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        "scrapy_hexproxy.HexProxyMiddleware": 740,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    },
}
PROXY_ALONE = {
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "scrapy_hexproxy.HexProxyMiddleware": 350,
}


# --------------------------------------------------------------------------- policies


class RecordingPolicy(BanPolicy):
    """Records every call: (method, url, session, status or exception class name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, Any]] = []

    def response_is_ban(self, request: Request, response: Response) -> bool | None:
        self.calls.append(
            ("response", response.url, request.meta.get("hex_session"), response.status)
        )
        return self.judge_response(request, response)

    def exception_is_ban(self, request: Request, exception: BaseException) -> bool | None:
        name = type(exception).__name__
        self.calls.append(("exception", request.url, request.meta.get("hex_session"), name))
        return self.judge_exception(request, exception)

    def judge_response(self, request: Request, response: Response) -> bool | None:
        return super().response_is_ban(request, response)

    def judge_exception(self, request: Request, exception: BaseException) -> bool | None:
        return super().exception_is_ban(request, exception)


class CaptchaPolicy(RecordingPolicy):
    """A captcha page is a ban whatever its status; the rest, the default rules. The marker
    comes from the settings, so the class is built with from_crawler."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker

    @classmethod
    def from_crawler(cls, crawler: Any) -> CaptchaPolicy:
        return cls(crawler.settings.get("CAPTCHA_MARKER", "captcha").encode())

    def judge_response(self, request: Request, response: Response) -> bool | None:
        if self.marker in response.body:
            return True
        return super().judge_response(request, response)


class Not503Policy(RecordingPolicy):
    """A 503 is the site being busy, not the session being banned."""

    def judge_response(self, request: Request, response: Response) -> bool | None:
        return False if response.status == 503 else None


class NoOpinionPolicy(RecordingPolicy):
    def judge_response(self, request: Request, response: Response) -> bool | None:
        return None

    def judge_exception(self, request: Request, exception: BaseException) -> bool | None:
        return None


class DropsAreNotBansPolicy(RecordingPolicy):
    def judge_exception(self, request: Request, exception: BaseException) -> bool | None:
        return False


class DropsAreBansPolicy(RecordingPolicy):
    def judge_exception(self, request: Request, exception: BaseException) -> bool | None:
        return True


class SessionRefused(Exception):
    """Not a transport failure: raised by a middleware of the user's for a known-bad exit."""


class RefusedIsABanPolicy(RecordingPolicy):
    def judge_exception(self, request: Request, exception: BaseException) -> bool | None:
        return True if isinstance(exception, SessionRefused) else None


class RefuseOnS001:
    """A user's downloader middleware below HexProxy that refuses to send through s001."""

    def process_request(self, request: Request, spider: Any = None) -> None:
        if request.meta.get("hex_session") == "s001":
            raise SessionRefused("s001 is known to be blocked")


class JunkResponseVerdict(RecordingPolicy):
    def judge_response(self, request: Request, response: Response) -> Any:
        return "yes"


class JunkExceptionVerdict(RecordingPolicy):
    def judge_exception(self, request: Request, exception: BaseException) -> Any:
        return 1


class OnlyResponses:
    def response_is_ban(self, request: Request, response: Response) -> bool | None:
        return None


class BuildsSomethingElse(BanPolicy):
    @classmethod
    def from_crawler(cls, crawler: Any) -> Any:
        return object()


# --------------------------------------------------------------------------- helpers


def _policy(crawler: Any) -> Any:
    return runtime_of(crawler).ban_policy


def _failures(stats: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("hex_proxy/failure/")}


def _attempts(gateway: Gateway) -> int:
    return sum(gateway.counts().values())


def _assert_every_page_is_the_good_page(result: Any, n: int, bad_session: str) -> None:
    assert not result.errors, [str(e.value) for e in result.errors]
    assert sorted(p.url for p in result.pages) == sorted(urls(n))
    assert all(p.status == 200 for p in result.pages)
    # The banned session answered only captchas: no page the spider got came from it.
    assert bad_session not in {p.gateway_session for p in result.pages}
    assert all(p.gateway_session == p.meta_session for p in result.pages)


# --------------------------------------------------------------------------- crawls: bans


@pytest.mark.parametrize("wiring", list(WIRINGS.values()), ids=list(WIRINGS))
@pytest_twisted.ensureDeferred
async def test_a_captcha_served_with_200_is_a_ban_retried_on_another_session_and_blacklisted(
    crawl, base_settings, hexproxy_gateway, wiring
):
    hexproxy_gateway.set_behavior("s002", Behavior.page(CAPTCHA))
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": wiring,
        "HEX_PROXY_BAN_POLICY": "tests.test_banpolicy.CaptchaPolicy",
        "CAPTCHA_MARKER": "id='captcha'",
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 3,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(40))
    _assert_every_page_is_the_good_page(result, 40, "s002")
    stats = result.hex_stats()
    captchas = hexproxy_gateway.count("s002")
    assert captchas == 3  # exactly HEX_PROXY_MAX_FAILURES, then never again
    assert _failures(stats) == {"hex_proxy/failure/ban": 3}
    assert stats["hex_proxy/blacklisted"] == 1
    assert stats["hex_proxy/retry"] == 3
    assert stats["hex_proxy/sessions/cooling"] == 1
    assert sum(p.retry_times for p in result.pages) == 3
    # Consulted once per attempt, whichever middleware saw the response first.
    calls = _policy(result.crawler).calls
    assert len(calls) == _attempts(hexproxy_gateway) == 43
    assert Counter(session for _, _, session, _ in calls)["s002"] == 3


@pytest_twisted.ensureDeferred
async def test_hexproxy_alone_counts_captcha_bans_and_hands_them_to_the_spider(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s002", Behavior.page(CAPTCHA))
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": PROXY_ALONE,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 3,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(40))
    assert not result.errors
    assert len(result.pages) == 40  # no retry middleware: the captchas reach the spider
    from_banned = [p for p in result.pages if p.gateway_session == "s002"]
    assert len(from_banned) == hexproxy_gateway.count("s002") == 3
    stats = result.hex_stats()
    assert _failures(stats) == {"hex_proxy/failure/ban": 3}
    assert stats["hex_proxy/blacklisted"] == 1
    assert "hex_proxy/retry" not in stats
    assert len(_policy(result.crawler).calls) == 40


@pytest_twisted.ensureDeferred
async def test_a_page_banned_on_every_session_reaches_the_spider_after_max_retries(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.page(CAPTCHA))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 1000,
        "HEX_PROXY_MAX_RETRIES": 2,
    }
    result = await crawl(settings, urls(3))
    assert not result.errors
    assert sorted(p.url for p in result.pages) == sorted(urls(3))
    assert all(p.status == 200 and p.retry_times == 2 for p in result.pages)
    stats = result.hex_stats()
    assert _attempts(hexproxy_gateway) == 9
    assert _failures(stats) == {"hex_proxy/failure/ban": 9}
    assert stats["hex_proxy/retry"] == 6
    assert stats["hex_proxy/retry/max_exceeded"] == 3


@pytest_twisted.ensureDeferred
async def test_a_policy_calling_503s_not_a_ban_keeps_the_session_live_and_still_retries(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": Not503Policy,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        # Nothing keeps a retry off s001 now: room enough that no page runs out.
        "HEX_PROXY_MAX_RETRIES": 10,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30))
    assert not result.errors
    assert sorted(p.url for p in result.pages) == sorted(urls(30))
    assert all(p.status == 200 for p in result.pages)
    busy = hexproxy_gateway.count("s001")
    assert busy > 2  # more 503s than HEX_PROXY_MAX_FAILURES, and never blacklisted
    stats = result.hex_stats()
    assert _failures(stats) == {}
    assert "hex_proxy/blacklisted" not in stats
    assert stats["hex_proxy/retry"] == busy
    assert stats["hex_proxy/sessions/cooling"] == 0
    assert len(_policy(result.crawler).calls) == _attempts(hexproxy_gateway)


@pytest_twisted.ensureDeferred
async def test_a_policy_with_no_opinion_gets_the_default_rules(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": NoOpinionPolicy,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30))
    assert not result.errors and all(p.status == 200 for p in result.pages)
    stats = result.hex_stats()
    assert hexproxy_gateway.count("s001") == 2
    assert _failures(stats) == {"hex_proxy/failure/503": 2}
    assert stats["hex_proxy/blacklisted"] == 1
    assert stats["hex_proxy/retry"] == 2
    assert len(_policy(result.crawler).calls) == _attempts(hexproxy_gateway) == 32


@pytest.mark.parametrize(
    ("policy", "is_ban"),
    [(DropsAreBansPolicy, True), (DropsAreNotBansPolicy, False)],
    ids=["ban", "not-a-ban"],
)
@pytest_twisted.ensureDeferred
async def test_exception_is_ban_decides_whether_a_dropped_connection_counts(
    crawl, base_settings, policy, is_ban
):
    # keep_alive=False: Twisted re-sends nothing by itself, so attempts are counted exactly.
    with Gateway(keep_alive=False) as gateway:
        gateway.set_behavior("s001", Behavior.close())
        settings = {
            **base_settings,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_BAN_POLICY": policy,
            "HEX_PROXY_SESSION_POOL_SIZE": 3,
            "HEX_PROXY_MAX_FAILURES": 2,
            "HEX_PROXY_MAX_RETRIES": 10,
            "CONCURRENT_REQUESTS": 1,
        }
        result = await crawl(settings, urls(30))
        dropped = gateway.count("s001")
    assert not result.errors
    assert sorted(p.url for p in result.pages) == sorted(urls(30))
    assert all(p.status == 200 and p.meta_session != "s001" for p in result.pages)
    stats = result.hex_stats()
    assert stats["hex_proxy/retry"] == dropped  # retried either way: a transport failure
    calls = _policy(result.crawler).calls
    assert [c for c in calls if c[0] == "exception"] == [
        c for c in calls if c[2] == "s001"
    ]  # every drop judged once, nothing else judged an exception
    assert len([c for c in calls if c[0] == "exception"]) == dropped
    if is_ban:
        assert dropped == 2
        [(key, count)] = _failures(stats).items()
        assert count == 2 and key != "hex_proxy/failure/ban"  # counted under its class
        assert stats["hex_proxy/blacklisted"] == 1
    else:
        assert dropped > 2
        assert _failures(stats) == {}
        assert "hex_proxy/blacklisted" not in stats


@pytest_twisted.ensureDeferred
async def test_an_exception_the_policy_calls_a_ban_is_a_session_failure_even_if_not_transport(
    crawl, base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": {**GUIDE_WIRING, "tests.test_banpolicy.RefuseOnS001": 400},
        "HEX_PROXY_BAN_POLICY": RefusedIsABanPolicy,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30))
    assert not result.errors  # without the policy these would reach the errback
    assert all(p.status == 200 for p in result.pages) and len(result.pages) == 30
    stats = result.hex_stats()
    assert hexproxy_gateway.count("s001") == 0  # refused before it left
    assert _failures(stats) == {"hex_proxy/failure/ban": 2}
    assert stats["hex_proxy/blacklisted"] == 1
    assert stats["hex_proxy/retry"] == 2


@pytest.mark.parametrize(
    ("policy", "method", "behavior"),
    [
        (JunkResponseVerdict, "response_is_ban", Behavior.answer(503)),
        (JunkExceptionVerdict, "exception_is_ban", Behavior.close()),
    ],
    ids=["response", "exception"],
)
@pytest.mark.parametrize("wiring", list(WIRINGS.values()), ids=list(WIRINGS))
@pytest_twisted.ensureDeferred
async def test_a_policy_returning_junk_raises_a_type_error_into_the_errback(
    crawl, base_settings, policy, method, behavior, wiring
):
    with Gateway(keep_alive=False) as gateway:
        gateway.set_default_behavior(behavior)
        settings = {
            **base_settings,
            "DOWNLOADER_MIDDLEWARES": wiring,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_BAN_POLICY": policy,
        }
        result = await crawl(settings, urls(5))
        sent = _attempts(gateway)
    assert not result.pages
    assert len(result.errors) == 5 == sent  # every page accounted for, none retried
    for failure in result.errors:
        assert isinstance(failure.value, TypeError)
        message = str(failure.value)
        assert "HEX_PROXY_BAN_POLICY" in message and f"{policy.__name__}.{method}()" in message
        assert "True, False or None" in message
    assert "hex_proxy/retry" not in result.hex_stats()
    # Each attempt is still counted once, by the default rules, before the error goes on.
    assert sum(_failures(result.hex_stats()).values()) == 5


class NotConfiguredPolicy(BanPolicy):
    """Scrapy's usual way to say "leave me out": it must not leave the proxy out."""

    @classmethod
    def from_crawler(cls, crawler: Any) -> NotConfiguredPolicy:
        raise NotConfigured("no captcha rules for this spider")


class NeedsAnArgument(BanPolicy):
    def __init__(self, rules: Any) -> None:
        self.rules = rules


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tests.no_such_module.Policy", "cannot import"),
        ("tests.test_banpolicy.NoSuchPolicy", "cannot import"),
        ("not-a-path", "cannot import"),
        (42, "must be a class"),
        (CaptchaPolicy(b"x"), "must be a class"),
        ("tests.test_banpolicy.OnlyResponses", "has no exception_is_ban()"),
        ("collections.OrderedDict", "has no response_is_ban() and exception_is_ban()"),
        (BuildsSomethingElse, "BuildsSomethingElse instance has no response_is_ban()"),
        (NotConfiguredPolicy, "NotConfiguredPolicy failed (NotConfigured: no captcha rules"),
        (NeedsAnArgument, "NeedsAnArgument failed (TypeError"),
    ],
    ids=[
        "no-module",
        "no-class",
        "not-a-path",
        "int",
        "instance",
        "one-method",
        "no-methods",
        "from-crawler-junk",
        "from-crawler-not-configured",
        "init-needs-an-argument",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_ban_policy_setting_stops_the_crawl_naming_the_setting(
    crawl, base_settings, hexproxy_gateway, value, expected
):
    settings = {**base_settings, "HEX_PROXY_BAN_POLICY": value}
    with pytest.raises(HexProxyConfigError, match="HEX_PROXY_BAN_POLICY") as raised:
        await crawl(settings, urls(3))
    assert expected in str(raised.value)
    assert hexproxy_gateway.records == []


# --------------------------------------------------------------------------- hooks: bans


def _pair(crawler: Any) -> tuple[Any, Any]:
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _send(proxy: Any, url: str = "http://site.test/a", **meta: Any) -> Request:
    request = Request(url, meta=meta)
    assert proxy.process_request(request) is None
    return request


def _page(request: Request, status: int = 200, body: str = "<html>ok</html>") -> Response:
    return HtmlResponse(request.url, status=status, body=body.encode(), request=request)


@pytest.mark.parametrize("order", ["retry_first", "proxy_first"])
def test_the_verdict_reaches_the_retry_decision_in_either_order_with_one_call(hook_crawler, order):
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy)
    proxy, retry = _pair(crawler)
    policy = _policy(crawler)
    request = _send(proxy)
    response = _page(request, body=CAPTCHA)
    if order == "proxy_first":
        assert proxy.process_response(request, response) is response
    again = retry.process_response(request, response)
    proxy.process_response(request, response)  # seen once more: judged and counted once
    assert isinstance(again, Request)
    assert again.meta["retry_times"] == 1
    assert "_hex_ban" not in again.meta and "_hex_ban" not in request.meta
    assert len(policy.calls) == 1
    assert _failures(runtime_of(crawler).core.stats()) == {"hex_proxy/failure/ban": 1}
    # The retry goes out on another session, and its good page is no ban.
    assert proxy.process_request(again) is None
    assert again.meta["hex_session"] != request.meta["hex_session"]
    good = _page(again)
    if order == "proxy_first":
        proxy.process_response(again, good)
    assert retry.process_response(again, good) is good
    assert len(policy.calls) == 2


@pytest.mark.parametrize("order", ["retry_first", "proxy_first"])
def test_an_exception_verdict_reaches_the_retry_decision_in_either_order_with_one_call(
    hook_crawler, order
):
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=RefusedIsABanPolicy)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    error = SessionRefused("no")
    if order == "proxy_first":
        assert proxy.process_exception(request, error) is None
    again = retry.process_exception(request, error)
    assert proxy.process_exception(request, error) is None
    assert isinstance(again, Request) and "_hex_ban" not in again.meta
    assert len(_policy(crawler).calls) == 1
    assert _failures(runtime_of(crawler).core.stats()) == {"hex_proxy/failure/ban": 1}


@pytest.mark.parametrize(
    ("status", "verdict", "failure", "retried"),
    [
        (200, True, "hex_proxy/failure/ban", True),
        (404, True, "hex_proxy/failure/ban", True),
        (503, True, "hex_proxy/failure/503", True),  # a failure code keeps its own key
        (501, True, "hex_proxy/failure/501", True),  # a failure code, not a retry code
        (503, False, None, True),  # not held against the session, still a retry code
        (200, False, None, False),
        (503, None, "hex_proxy/failure/503", True),
        (404, None, None, False),
    ],
)
def test_verdict_semantics_for_responses(hook_crawler, status, verdict, failure, retried):
    class Fixed(RecordingPolicy):
        def judge_response(self, request: Request, response: Response) -> bool | None:
            return verdict

    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=Fixed, HEX_PROXY_MAX_FAILURES=1)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    index = attempt_of(request.meta["_hex_attempt"])[0]
    result = retry.process_response(request, _page(request, status))
    assert isinstance(result, Request) is retried
    core = runtime_of(crawler).core
    assert _failures(core.stats()) == ({failure: 1} if failure else {})
    assert core.cooling_count == (1 if failure else 0)  # MAX_FAILURES=1: a failure benches it
    # A failed session is avoided by the retry; one that was not held to blame is not.
    assert request.meta.get("_hex_failed", ()) == ((index,) if failure else ())


def test_a_ban_respects_dont_retry_and_max_retry_times(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy, HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    request = _send(proxy, dont_retry=True)
    captcha = _page(request, body=CAPTCHA)
    assert retry.process_response(request, captcha) is captcha
    request = _send(proxy, max_retry_times=0)
    captcha = _page(request, body=CAPTCHA)
    assert retry.process_response(request, captcha) is captcha
    stats = runtime_of(crawler).core.stats()
    assert stats["hex_proxy/failure/ban"] == 2
    assert stats["hex_proxy/retry/max_exceeded"] == 1
    assert "hex_proxy/retry" not in stats


def test_a_ban_verdict_nobody_took_does_not_outlive_its_attempt(hook_crawler):
    # HexProxy at 740 flags a redirect page; RedirectMiddleware (600) returns a copy, so the
    # retry middleware never sees that response. The copy's own 200 must not be retried.
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    proxy.process_response(request, _page(request, 302, body=CAPTCHA))
    assert request.meta["_hex_ban"] is True
    redirected = request.replace(url="http://site.test/b")
    assert proxy.process_request(redirected) is None
    assert "_hex_ban" not in redirected.meta
    good = _page(redirected)
    proxy.process_response(redirected, good)
    assert retry.process_response(redirected, good) is good


def test_cached_responses_are_not_judged(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    cached = HtmlResponse(request.url, body=CAPTCHA.encode(), request=request, flags=["cached"])
    assert retry.process_response(request, cached) is cached
    assert _policy(crawler).calls == []
    assert _failures(runtime_of(crawler).core.stats()) == {}


def test_the_policy_gets_the_crawls_failure_codes_and_the_defaults_outside_a_crawl(
    hook_crawler,
):
    crawler = hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy, HEX_PROXY_FAILURE_CODES=[503])
    proxy, _ = _pair(crawler)
    policy = _policy(crawler)
    assert policy.failure_codes == frozenset({503})
    assert policy.marker == b"captcha"  # built with from_crawler
    request = _send(proxy)
    assert policy.response_is_ban(request, _page(request, 429)) is False
    assert policy.response_is_ban(request, _page(request, 503)) is True
    assert policy.exception_is_ban(request, ConnectionDone()) is True
    assert policy.exception_is_ban(request, ValueError()) is False
    # Outside a crawl, the class defaults are DESIGN's rules.
    alone = BanPolicy()
    assert alone.response_is_ban(request, _page(request, 429)) is True
    assert alone.response_is_ban(request, _page(request, 404)) is False
    assert alone.exception_is_ban(request, ConnectionDone()) is True
    assert alone.exception_is_ban(request, KeyError()) is False


def test_without_a_policy_the_hooks_call_no_python(hook_crawler):
    crawler = hook_crawler()
    assert runtime_of(crawler).ban_policy is None
    assert runtime_of(crawler).response_is_ban is None
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    response = _page(request, body=CAPTCHA)
    assert retry.process_response(request, response) is response  # a 200 is a success
    assert "_hex_ban" not in request.meta


# --------------------------------------------------------------------------- the switch


@dataclass
class Seen:
    url: str
    status: int
    gateway_session: str | None
    meta: dict[str, Any]
    proxy_authorization: bytes | None


@dataclass
class Crawl:
    crawler: Any
    seen: list[Seen] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)

    def hex_stats(self) -> dict[str, Any]:
        stats = self.crawler.stats.get_stats()
        return {k: v for k, v in stats.items() if k.startswith("hex_proxy/")}


class RequestsSpider(scrapy.Spider):
    """Sends the given requests (url, meta); records what came back and with which request.
    ``follow(response)`` may return more requests."""

    name = "requests"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def __init__(self, requests: list[tuple[str, dict]], result: Crawl, follow: Any = None):
        super().__init__()
        self.to_send = requests
        self.result = result
        self.follow = follow

    def _requests(self) -> Any:
        for url, meta in self.to_send:
            yield scrapy.Request(
                url, meta=dict(meta), callback=self.parse, errback=self.failed, dont_filter=True
            )

    async def start(self) -> Any:  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self) -> Any:  # Scrapy < 2.13
        return self._requests()

    def parse(self, response: Response, **kwargs: Any) -> Any:
        self.result.seen.append(
            Seen(
                url=response.url,
                status=response.status,
                gateway_session=response.headers.get(b"X-Hex-Session", b"").decode() or None,
                meta=dict(response.meta),
                proxy_authorization=response.request.headers.get(b"Proxy-Authorization"),
            )
        )
        if self.follow is not None:
            for request in self.follow(response):
                request.callback, request.errback = self.parse, self.failed
                yield request

    def failed(self, failure: Any) -> None:
        self.result.errors.append(failure)


async def _crawl_requests(settings: dict, requests: list, follow: Any = None) -> Crawl:
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(RequestsSpider)
    result = Crawl(crawler)
    await runner.crawl(crawler, requests=requests, result=result, follow=follow)
    return result


@pytest.mark.parametrize("switch", [False, 0], ids=["False", "0"])
@pytest.mark.parametrize("wiring", list(WIRINGS.values()), ids=list(WIRINGS))
@pytest_twisted.ensureDeferred
async def test_requests_switched_off_get_no_session_no_retry_and_no_stats(
    base_settings, hexproxy_gateway, switch, wiring
):
    # Switched-off requests name the gateway themselves, without credentials: it answers
    # them 407, which we would retry, count against the credentials and stop the crawl for
    # (HEX_PROXY_AUTH_FAILURES_TO_CLOSE = 3) if we touched them. The others go as usual.
    # Others name a loopback port nobody listens on: refused, which we would retry.
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    off = {"hex_proxy": switch, "proxy": hexproxy_gateway.url}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = {"hex_proxy": switch, "proxy": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    requests = []
    for i in range(30):
        requests.append((f"http://site.test/on/{i}", {"hex_proxy": True} if i % 2 else {}))
        if i < 10:
            requests.append((f"http://site.test/off/{i}", off))
        if i < 5:
            requests.append((f"http://site.test/refused/{i}", dead))
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": wiring,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 4,
    }
    result = await _crawl_requests(settings, requests)
    assert result.crawler.stats.get_value("finish_reason") == "finished"
    # The refused ones reach the errback at once: not retried, no session.
    assert sorted(e.request.url for e in result.errors) == [
        f"http://site.test/refused/{i}" for i in range(5)
    ]
    for error in result.errors:
        assert error.request.meta.get("retry_times", 0) == 0
        assert "hex_session" not in error.request.meta
        assert b"Proxy-Authorization" not in error.request.headers
    left_alone = [s for s in result.seen if "/off/" in s.url]
    handled = [s for s in result.seen if "/on/" in s.url]
    assert len(left_alone) == 10 and len(handled) == 30
    for seen in left_alone:
        assert seen.status == 407 and seen.gateway_session is None
        assert seen.proxy_authorization is None
        assert "hex_session" not in seen.meta and "_hex_attempt" not in seen.meta
        assert seen.meta.get("retry_times", 0) == 0
    unauthenticated = [r for r in hexproxy_gateway.records if r.username is None]
    assert len(unauthenticated) == 10
    assert all(r.outcome == "auth" and "/off/" in r.target for r in unauthenticated)
    assert all(s.status == 200 and s.gateway_session == s.meta["hex_session"] for s in handled)
    stats = result.hex_stats()
    banned = hexproxy_gateway.count("s001")
    assert _failures(stats) == {"hex_proxy/failure/503": banned}  # no 407 among them
    assert stats["hex_proxy/retry"] == banned
    assert stats["hex_proxy/blacklisted"] == 1
    # The policy judged only the handled requests' attempts.
    calls = _policy(result.crawler).calls
    assert len(calls) == sum(hexproxy_gateway.counts().values()) == 30 + banned
    assert not [c for c in calls if "/off/" in c[1]]


@pytest_twisted.ensureDeferred
async def test_a_request_switched_off_after_an_attempt_goes_out_as_if_never_handled(
    base_settings, hexproxy_gateway
):
    # The first request goes through a session to the gateway's own address (answered as the
    # origin); its copy, switched off, then goes there directly: the gateway sees a plain
    # origin-form request (answered 400), with nothing of ours on it.
    target = f"{hexproxy_gateway.url}/page/0"

    def follow(response: Response) -> list[Request]:
        if response.meta.get("hex_proxy") is False:
            return []
        return [
            response.request.replace(meta={**response.meta, "hex_proxy": False}, dont_filter=True)
        ]

    result = await _crawl_requests(base_settings, [(target, {})], follow)
    assert not result.errors
    first, copy = result.seen
    assert first.status == 200 and first.gateway_session == first.meta["hex_session"]
    # The gateway saw the session's credentials; the spider never does (promise 16).
    assert first.proxy_authorization is None
    assert copy.status == 400
    assert copy.proxy_authorization is None
    assert not {"hex_session", "proxy", "_hex_attempt", "_hex_failed"} & set(copy.meta)
    assert [r.outcome for r in hexproxy_gateway.records] == ["ok", "bad_request"]
    assert hexproxy_gateway.records[1].username is None
    assert "hex_proxy/retry" not in result.hex_stats()


def test_switching_off_a_copy_settles_the_attempt_we_never_saw(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    header = request.headers[b"Proxy-Authorization"]
    assert base64.b64decode(header[6:]).startswith(b"USER-session-")
    # A middleware above ours retried it (we never saw the response) and switched us off.
    copy = request.replace(dont_filter=True)
    copy.meta.update(retry_times=1, hex_proxy=False)
    assert proxy.process_request(copy) is None
    assert runtime_of(crawler).core.stats()["hex_proxy/failure/unobserved"] == 1
    assert b"Proxy-Authorization" not in copy.headers
    assert not {"hex_session", "proxy", "_hex_attempt", "_hex_failed"} & set(copy.meta)
    # Its own outcome is nobody's: not counted, not retried.
    response = Response(copy.url, status=503, request=copy)
    assert retry.process_response(copy, response) is response
    assert proxy.process_response(copy, response) is response
    assert retry.process_exception(copy, ConnectionDone()) is None
    assert proxy.process_exception(copy, ConnectionDone()) is None
    stats = runtime_of(crawler).core.stats()
    assert _failures(stats) == {"hex_proxy/failure/unobserved": 1}
    assert "hex_proxy/retry" not in stats


@pytest.mark.parametrize(
    ("switch", "left_alone"),
    [(False, True), (0, True), ("", True), (None, False), (True, False), (1, False)],
)
def test_which_values_of_the_switch_leave_a_request_alone(hook_crawler, switch, left_alone):
    crawler = hook_crawler()
    proxy, retry = _pair(crawler)
    request = Request("http://site.test/a", meta={"hex_proxy": switch})
    assert proxy.process_request(request) is None
    assert ("hex_session" in request.meta) is not left_alone
    assert (b"Proxy-Authorization" in request.headers) is not left_alone
    response = Response(request.url, status=503, request=request)
    assert isinstance(retry.process_response(request, response), Request) is not left_alone


# ------------------------------------------------------------------ with the other features


@pytest_twisted.ensureDeferred
async def test_domain_scope_a_captcha_from_one_host_benches_the_session_for_that_host_only(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_host_behavior("a.test", Behavior.page(CAPTCHA), session="s001")
    targets = [u for pair in zip(urls(30, host="a.test"), urls(30, host="b.test")) for u in pair]
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_BAN_SCOPE": "domain",
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, targets)
    assert not result.errors
    assert sorted(p.url for p in result.pages) == sorted(targets)
    assert all(p.status == 200 for p in result.pages)
    assert "s001" not in {p.gateway_session for p in result.pages if "//a.test/" in p.url}
    stats = result.hex_stats()
    assert hexproxy_gateway.count("s001", host="a.test") == 2
    assert _failures(stats) == {"hex_proxy/failure/ban": 2}
    assert stats["hex_proxy/blacklisted"] == 1
    # Banned by a.test, s001 went on serving b.test.
    records = [r for r in hexproxy_gateway.records if r.session == "s001"]
    last_ban = max(i for i, r in enumerate(records) if r.host == "a.test")
    assert any(r.host == "b.test" for r in records[last_ban + 1 :])


@pytest_twisted.ensureDeferred
async def test_rotate_on_blacklist_a_session_banned_by_captchas_goes_on_under_a_new_id(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.page(CAPTCHA))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_ON_BLACKLIST": "rotate",
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30))
    _assert_every_page_is_the_good_page(result, 30, "s001")
    stats = result.hex_stats()
    assert hexproxy_gateway.count("s001") == 2
    assert _failures(stats) == {"hex_proxy/failure/ban": 2}
    assert stats["hex_proxy/rotated"] == 1
    assert hexproxy_gateway.count("s004") > 0  # slot 1's new id (1 + pool size)
    assert stats["hex_proxy/sessions/cooling"] == 0


def test_switching_off_a_copy_takes_off_our_cookie_jar_and_user_agent_but_not_the_users(
    hook_crawler,
):
    crawler = hook_crawler(
        HEX_PROXY_BIND_COOKIEJAR=True, HEX_PROXY_USER_AGENTS=["agent-one", "agent-two"]
    )
    proxy, _ = _pair(crawler)
    ours = _send(proxy)
    assert ours.meta["cookiejar"] == ours.meta["hex_session"]
    assert ours.headers[b"User-Agent"] in (b"agent-one", b"agent-two")
    copy = ours.replace(dont_filter=True)
    copy.meta.update(hex_proxy=False)
    assert proxy.process_request(copy) is None
    assert "cookiejar" not in copy.meta and b"User-Agent" not in copy.headers
    # The user's own jar and User-Agent stay.
    users = Request("http://site.test/b", meta={"cookiejar": "mine"}, headers={"User-Agent": "me"})
    assert proxy.process_request(users) is None
    copy = users.replace(dont_filter=True)
    copy.meta.update(hex_proxy=False)
    assert proxy.process_request(copy) is None
    assert copy.meta["cookiejar"] == "mine" and copy.headers[b"User-Agent"] == b"me"
    assert "hex_session" not in copy.meta and b"Proxy-Authorization" not in copy.headers


def test_switching_off_a_copy_takes_off_a_listed_proxy_but_not_another(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_GATEWAY=None,
        HEX_PROXY_USER=None,
        HEX_PROXY_PASS=None,
        HEX_PROXY_LIST=["http://ann:pw-1@127.0.0.1:9001", "http://bob:pw-2@127.0.0.1:9002"],
    )
    proxy, _ = _pair(crawler)
    request = _send(proxy)
    assert request.meta["proxy"] in ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    copy = request.replace(dont_filter=True)
    copy.meta.update(hex_proxy=False)
    assert proxy.process_request(copy) is None
    assert "proxy" not in copy.meta and b"Proxy-Authorization" not in copy.headers
    elsewhere = request.replace(dont_filter=True)
    elsewhere.meta.update(hex_proxy=False, proxy="http://127.0.0.1:9999")
    assert proxy.process_request(elsewhere) is None
    assert elsewhere.meta["proxy"] == "http://127.0.0.1:9999"
    assert "hex_session" not in elsewhere.meta


@pytest_twisted.ensureDeferred
async def test_a_ban_retry_waits_its_backoff_when_retries_are_paced(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.page(CAPTCHA))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_RETRY_BACKOFF_BASE": 0.05,
        "HEX_PROXY_RETRY_BACKOFF_MAX": 0.2,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(12))
    _assert_every_page_is_the_good_page(result, 12, "s001")
    stats = result.hex_stats()
    assert _failures(stats) == {"hex_proxy/failure/ban": 2}
    assert stats["hex_proxy/retry"] == 2
    # Both ban retries were held back by their backoff, as any other retry.
    assert stats["hex_proxy/retry/delayed"] == 2
    assert 0 < stats["hex_proxy/retry/wait_ms_total"] <= 2 * 200


@pytest.mark.parametrize(
    ("wiring", "warned"),
    [(GUIDE_WIRING, False), (WIRINGS["proxy-740-retry-550"], True), (PROXY_ALONE, False)],
    ids=["guide-350-550", "proxy-740-retry-550", "proxy-alone-350"],
)
def test_a_policy_that_would_judge_compressed_bodies_is_warned_about_at_start(
    hook_crawler, caplog, wiring, warned
):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    _pair(hook_crawler(HEX_PROXY_BAN_POLICY=CaptchaPolicy, DOWNLOADER_MIDDLEWARES=wiring))
    found = [
        r.getMessage() for r in caplog.records if "HttpCompressionMiddleware" in r.getMessage()
    ]
    assert len(found) == int(warned)
    if warned:
        assert "HexProxyMiddleware sees responses before" in found[0]
