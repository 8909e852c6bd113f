"""The stats monitors read: Scrapy's own retry stats (promise 20), and the worst sessions.

Real crawls through the loopback gateway; targets like http://busy.test/... are answered by
the gateway itself.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from scrapy_hexproxy.testing import Behavior

from .conftest import GUIDE_WIRING, urls
from .test_banpolicy import CAPTCHA

#: HexProxy with Scrapy's own RetryMiddleware (enabled by default at 550) instead of ours.
SCRAPYS_RETRY = {"scrapy_hexproxy.HexProxyMiddleware": 350}


def _retry_stats(result: Any) -> dict[str, Any]:
    return {k: v for k, v in result.stats.items() if k.startswith("retry/")}


def _mixed_targets(gateway: Any) -> list[str]:
    """Hosts answering the same whichever session asks (so both crawls meet the same
    failures): busy (503), throttled (429), dropping the connection, gone (404, retried by
    neither), fine; and flaky, which only fails on s000 (502), so that some retries succeed."""
    gateway.set_host_behavior("busy.test", Behavior.answer(503))
    gateway.set_host_behavior("throttled.test", Behavior.answer(429))
    gateway.set_host_behavior("drop.test", Behavior.close())
    gateway.set_host_behavior("gone.test", Behavior.answer(404))
    gateway.set_host_behavior("flaky.test", Behavior.answer(502), session="s000")
    return [
        *urls(2, host="busy.test"),
        *urls(2, host="throttled.test"),
        *urls(2, host="drop.test"),
        *urls(1, host="gone.test"),
        *urls(6, host="flaky.test"),
        *urls(3, host="fine.test"),
    ]


@pytest_twisted.ensureDeferred
async def test_promise_20_scrapys_retry_stats_are_written_as_its_retry_middleware_writes_them(
    crawl, base_settings, hexproxy_gateway
):
    targets = _mixed_targets(hexproxy_gateway)
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1000,  # no blacklisting: the picks stay the same
        "HEX_PROXY_MAX_RETRIES": 2,
        "RETRY_TIMES": 2,
        "CONCURRENT_REQUESTS": 1,  # the same picks, in the same order, in both crawls
    }
    scrapys = await crawl({**settings, "DOWNLOADER_MIDDLEWARES": SCRAPYS_RETRY}, targets)
    hexproxy_gateway.reset()
    ours = await crawl({**settings, "DOWNLOADER_MIDDLEWARES": dict(GUIDE_WIRING)}, targets)
    expected = _retry_stats(scrapys)
    assert _retry_stats(ours) == expected
    # What Scrapy wrote, so the comparison is not of two empty dicts: 6 requests out of
    # retries (busy, throttled, drop), each after 2 retries, and the flaky ones retried once.
    assert expected["retry/max_reached"] == 6
    reasons = {k: v for k, v in expected.items() if k.startswith("retry/reason_count/")}
    flaky = reasons.pop("retry/reason_count/502 Bad Gateway")
    assert flaky > 0
    (dropped,) = (k for k in reasons if "503" not in k and "429" not in k)
    assert reasons == {
        "retry/reason_count/503 Service Unavailable": 4,
        # Twisted's table of reason phrases, which Scrapy's response_status_message reads,
        # has none for 429 (http.HTTPStatus says "Too Many Requests").
        "retry/reason_count/429 Unknown Status": 4,
        dropped: 4,
    }
    assert dropped.split("/")[-1].count(".") >= 2, "the exception's full import path"
    assert expected["retry/count"] == 12 + flaky
    # Ours stay beside them.
    assert ours.stats["hex_proxy/retry"] == expected["retry/count"]
    assert ours.stats["hex_proxy/retry/max_exceeded"] == 6


@pytest_twisted.ensureDeferred
async def test_a_retry_only_a_ban_policy_asked_for_counts_as_reason_ban(
    crawl, base_settings, hexproxy_gateway
):
    # A captcha with a 200: Scrapy's RetryMiddleware would not retry it at all.
    hexproxy_gateway.set_behavior("s001", Behavior.page(CAPTCHA))
    # A ban on a 503 keeps the status's reason, as Scrapy would count it.
    hexproxy_gateway.set_behavior("s002", Behavior.page(CAPTCHA, status=503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 1000,
        "HEX_PROXY_BAN_POLICY": "tests.test_banpolicy.CaptchaPolicy",
    }
    result = await crawl(settings, urls(30))
    retry = _retry_stats(result)
    banned = hexproxy_gateway.count("s001")
    busy = hexproxy_gateway.count("s002")
    assert banned and busy
    assert retry == {
        "retry/count": banned + busy,
        "retry/reason_count/ban": banned,
        "retry/reason_count/503 Service Unavailable": busy,
    }
    assert result.stats["hex_proxy/retry"] == banned + busy


@pytest_twisted.ensureDeferred
async def test_scrapys_retry_keys_add_up_with_a_spiders_own_get_retry_request(
    crawl, base_settings, hexproxy_gateway
):
    """A spider that retries by itself (Scrapy's documented ``get_retry_request``) writes the
    same keys: both are counted, neither overwrites the other."""
    from scrapy.downloadermiddlewares.retry import get_retry_request

    from .conftest import PagesSpider

    class EmptySpider(PagesSpider):
        def parse(self, response: Any, **kwargs: Any) -> Any:
            self.record(response)
            if response.meta.get("retried_as_empty"):
                return None
            retry = get_retry_request(response.request, spider=self, reason="empty")
            assert retry is not None
            retry.meta["retried_as_empty"] = True
            return retry

    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    settings = {**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 3, "HEX_PROXY_MAX_FAILURES": 1000}
    result = await crawl(settings, urls(10), spider=EmptySpider)
    ours = result.stats["hex_proxy/retry"]
    assert ours > 0
    retry = _retry_stats(result)
    assert retry["retry/reason_count/empty"] == 10
    assert retry["retry/reason_count/503 Service Unavailable"] == ours
    assert retry["retry/count"] == 10 + ours


@pytest_twisted.ensureDeferred
async def test_the_worst_sessions_figures_say_which_were_benched_and_why(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s002", Behavior.answer(503))
    hexproxy_gateway.set_behavior("s004", Behavior.close())
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 6,
        "HEX_PROXY_MAX_FAILURES": 3,
    }
    result = await crawl(settings, urls(60))
    assert not result.errors
    figures = {k: v for k, v in result.stats.items() if k.startswith("hex_proxy/session/")}
    busy = hexproxy_gateway.count("s002")
    (dropped,) = (
        k.rsplit("/", 1)[1]
        for k in result.stats
        if k.startswith("hex_proxy/failure/") and not k.endswith("/503")
    )
    # Only s004 drops connections. (The gateway may see more of them than attempts: Twisted
    # re-sends a GET once by itself when a reused keep-alive connection drops.)
    dropping = result.stats[f"hex_proxy/failure/{dropped}"]
    assert busy >= 3 and dropping >= 3
    assert figures == {
        "hex_proxy/session/s002/failures": busy,
        "hex_proxy/session/s002/blacklisted": 1,
        "hex_proxy/session/s002/failure/503": busy,
        "hex_proxy/session/s004/failures": dropping,
        "hex_proxy/session/s004/blacklisted": 1,
        f"hex_proxy/session/s004/failure/{dropped}": dropping,
    }
    # Plain ints, as every stats collector takes (a Redis hash, a JSON dump).
    assert all(type(v) is int for v in figures.values())


@pytest_twisted.ensureDeferred
async def test_the_worst_sessions_are_bounded_to_the_ten_that_failed_most(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    hexproxy_gateway.set_behavior("s000", Behavior.normal())
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 40,
        "HEX_PROXY_MAX_FAILURES": 1000,
        "HEX_PROXY_MAX_RETRIES": 60,
    }
    result = await crawl(settings, urls(30))
    assert not result.errors
    failures = {
        k.split("/")[2]: v
        for k, v in result.stats.items()
        if k.startswith("hex_proxy/session/") and k.endswith("/failures")
    }
    counts = hexproxy_gateway.counts()
    assert len(failures) == 10
    assert "s000" not in failures
    # The ten that failed most, with their exact figures (39 sessions failed: fewer than the
    # 64 the core follows).
    assert all(failures[s] == counts[s] for s in failures)
    others = [n for s, n in counts.items() if s not in failures and s != "s000"]
    assert min(failures.values()) >= max(others)
