"""Real Scrapy crawls through the loopback gateway, one per scenario of the contract.

Targets like http://site.test/... are answered by the gateway itself: nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import warnings
from collections import Counter

import pytest
import pytest_twisted
from scrapy.core.downloader.handlers.http11 import TunnelError

from scrapy_hexproxy import HexProxyConfigError
from scrapy_hexproxy.testing import Behavior, Gateway, advance_clock

from .conftest import urls, when_requests_wait


def _failures(result) -> int:
    return sum(v for k, v in result.hex_stats().items() if k.startswith("hex_proxy/failure/"))


def _assert_every_page_fetched(result, n, scheme="http"):
    assert not result.errors, [str(e.value) for e in result.errors]
    assert sorted(p.url for p in result.pages) == sorted(urls(n, scheme))
    assert all(p.status == 200 for p in result.pages)
    # The session the gateway saw is the one in meta, on first attempts and retries alike.
    assert all(p.gateway_session == p.meta_session for p in result.pages)


@pytest.mark.parametrize("concurrency", [1, 8])
@pytest_twisted.ensureDeferred
async def test_guide_wiring_blacklists_a_session_that_keeps_failing(
    crawl, base_settings, hexproxy_gateway, concurrency
):
    hexproxy_gateway.set_behavior("s002", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 3,
        "CONCURRENT_REQUESTS": concurrency,
    }
    result = await crawl(settings, urls(60))
    _assert_every_page_fetched(result, 60)
    stats = result.hex_stats()
    sent_to_banned = hexproxy_gateway.count("s002")
    assert stats["hex_proxy/blacklisted"] == 1
    # Each attempt counted once: as many failures as the gateway answered 503.
    assert stats["hex_proxy/failure/503"] == sent_to_banned
    assert stats["hex_proxy/retry"] == sent_to_banned
    if concurrency == 1:
        assert sent_to_banned == 3  # exactly MAX_FAILURES, then never again
    assert "s002" not in {p.meta_session for p in result.pages}
    assert stats["hex_proxy/sessions/cooling"] == 1
    assert stats["hex_proxy/sessions/live"] == 3


@pytest.mark.parametrize(
    "wiring",
    [
        {"scrapy_hexproxy.HexProxyMiddleware": 740, "scrapy_hexproxy.SmartRetryMiddleware": 550},
        {"scrapy_hexproxy.HexProxyMiddleware": 100, "scrapy_hexproxy.SmartRetryMiddleware": 900},
    ],
    ids=["proxy-740", "proxy-100-retry-900"],
)
@pytest_twisted.ensureDeferred
async def test_other_orders_blacklist_and_retry_the_same(
    crawl, base_settings, hexproxy_gateway, wiring
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(429))
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            **wiring,
        },
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30))
    _assert_every_page_fetched(result, 30)
    stats = result.hex_stats()
    assert hexproxy_gateway.count("s001") == 2
    assert stats["hex_proxy/failure/429"] == 2
    assert stats["hex_proxy/blacklisted"] == 1


@pytest_twisted.ensureDeferred
async def test_hexproxy_alone_tracks_failures_without_a_retry_middleware(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s000", Behavior.answer(403))
    settings = {
        **base_settings,
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 350,
        },
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(20))
    statuses = Counter(p.status for p in result.pages)
    assert statuses == {200: 18, 403: 2}  # no retry middleware: the two 403s reach the spider
    assert result.hex_stats()["hex_proxy/blacklisted"] == 1
    assert "hex_proxy/retry" not in result.hex_stats()


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_dropped_connection_is_retried_on_another_session_and_counted(
    crawl, base_settings, hexproxy_gateway, scheme
):
    # For https the connection drops inside the tunnel: the CONNECT itself is answered.
    hexproxy_gateway.set_behavior("s001", Behavior.close(tunnel=scheme == "https"))
    settings = {**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 3, "HEX_PROXY_MAX_FAILURES": 2}
    result = await crawl(settings, urls(30, scheme))
    _assert_every_page_fetched(result, 30, scheme)
    failures = _failures(result)
    assert failures >= 2
    # Each failed attempt was counted once and retried once. The gateway may have seen one
    # request more per attempt: Twisted re-sends a GET once by itself when a reused keep-alive
    # connection drops before answering, inside the same Scrapy attempt.
    assert result.hex_stats()["hex_proxy/retry"] == failures
    assert failures <= hexproxy_gateway.count("s001") <= 2 * failures
    assert result.hex_stats()["hex_proxy/blacklisted"] == 1
    assert "s001" not in {p.meta_session for p in result.pages}


@pytest_twisted.ensureDeferred
async def test_timeout_is_retried_on_another_session_and_counted(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s000", Behavior.hang())
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "DOWNLOAD_TIMEOUT": 0.5,
    }
    result = await crawl(settings, urls(10))
    _assert_every_page_fetched(result, 10)
    hung = hexproxy_gateway.count("s000")
    assert hung >= 1
    assert _failures(result) == hung
    assert {p.meta_session for p in result.pages} == {"s001"}


@pytest_twisted.ensureDeferred
async def test_refused_connect_tunnel_is_retried_on_another_session_and_counted(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(403))
    settings = {**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 3, "HEX_PROXY_MAX_FAILURES": 2}
    result = await crawl(settings, urls(30, "https"))
    _assert_every_page_fetched(result, 30, "https")
    refused = hexproxy_gateway.count("s001")
    assert refused >= 2
    assert result.hex_stats()["hex_proxy/failure/403"] == refused
    assert result.hex_stats()["hex_proxy/blacklisted"] == 1


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_is_retried_on_other_sessions_then_reaches_the_errback(
    crawl, base_settings, hexproxy_gateway
):
    # The gateway reads each request and closes the connection. (A gateway that refuses
    # connections is an outage, nobody's failure: tests/test_outage.py.)
    hexproxy_gateway.set_default_behavior(Behavior.close())
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 10,
        "HEX_PROXY_MAX_FAILURES": 100,
        "HEX_PROXY_MAX_RETRIES": 3,
    }
    result = await crawl(settings, urls(1))
    assert not result.pages
    [failure] = result.errors
    tried = failure.request.meta["_hex_failed"]
    assert len(tried) == 4 and len(set(tried)) == 4  # every attempt on a different session
    assert _failures(result) == 4
    assert result.hex_stats()["hex_proxy/retry/max_exceeded"] == 1


@pytest_twisted.ensureDeferred
async def test_promise_7_when_every_session_is_cooling_requests_wait_and_none_is_dropped(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 100,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": 4,
    }
    seen_waiting = []

    def release(crawler, runtime):
        # Once every request in the downloader is parked, the bans lift and the clock jumps.
        seen_waiting.append((runtime.waiting, runtime.core.live_count))
        hexproxy_gateway.set_default_behavior(Behavior.normal())
        advance_clock(crawler, 100)

    def release_when_all_wait(crawler):
        when_requests_wait(crawler, release, every_request=True)

    result = await crawl(settings, urls(8), before=release_when_all_wait)
    _assert_every_page_fetched(result, 8)
    [(waiting, live)] = seen_waiting
    assert waiting >= 1 and live == 0  # requests were parked, none dropped, all fetched later
    assert result.hex_stats()["hex_proxy/blacklisted"] == 2
    assert result.finish_reason == "finished"


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_9_wrong_password_stops_the_crawl_and_is_never_logged(
    crawl, base_settings, hexproxy_gateway, all_logs, scheme
):
    settings = {
        **base_settings,
        "HEX_PROXY_PASS": "wr0ng-Secret",
        "HEX_PROXY_SESSION_POOL_SIZE": 5,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(20, scheme))
    assert result.finish_reason == "hex_proxy_auth_failed"
    assert not [p for p in result.pages if p.status == 200]
    assert sum(hexproxy_gateway.counts().values()) == 3  # three 407s, then it stopped
    errors = [r for r in all_logs.records if r.levelno == logging.ERROR and "407" in r.getMessage()]
    assert len(errors) == 1
    assert "127.0.0.1" in errors[0].getMessage() and "USER" in errors[0].getMessage()
    everything = all_logs.text + "\n".join(r.getMessage() for r in all_logs.records)
    assert "wr0ng-Secret" not in everything
    assert "wr0ng-Secret" not in str(result.stats)


@pytest_twisted.ensureDeferred
async def test_promise_10_gateway_unset_the_crawl_does_not_start(
    crawl, base_settings, hexproxy_gateway
):
    settings = {**base_settings, "HEX_PROXY_GATEWAY": None}
    # The targets are the gateway itself: a crawl that failed open would reach it directly.
    targets = [f"{hexproxy_gateway.url}/page/{i}" for i in range(3)]
    with pytest.raises(HexProxyConfigError, match="HEX_PROXY_GATEWAY"):
        await crawl(settings, targets)
    assert hexproxy_gateway.records == []


@pytest_twisted.ensureDeferred
async def test_promise_10_enabled_false_crawls_without_the_middlewares(crawl, base_settings):
    # Deliberately off: nothing is configured, and no session is assigned. The targets are
    # loopback URLs with nobody listening, so the attempt fails locally.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = {
        **base_settings,
        "HEX_PROXY_ENABLED": False,
        "HEX_PROXY_GATEWAY": None,
        "RETRY_ENABLED": False,
    }
    result = await crawl(settings, [f"http://127.0.0.1:{port}/"])
    [failure] = result.errors
    assert "hex_session" not in failure.request.meta
    assert not result.hex_stats()


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_3_the_gateway_sees_the_session_in_meta(
    crawl, base_settings, hexproxy_gateway, scheme
):
    for session in ("s000", "s003"):
        hexproxy_gateway.set_behavior(session, Behavior.answer(502))
    settings = {**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 6, "HEX_PROXY_MAX_FAILURES": 50}
    result = await crawl(settings, urls(40, scheme))
    _assert_every_page_fetched(result, 40, scheme)
    assert any(p.retry_times for p in result.pages)  # retries happened and still matched
    assert {p.meta_session for p in result.pages} <= {"s001", "s002", "s004", "s005"}


@pytest_twisted.ensureDeferred
async def test_promise_13_a_real_crawl_raises_no_deprecation_warning(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await crawl({**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 3}, urls(10))
    _assert_every_page_fetched(result, 10)
    ours = [w for w in caught if "hexproxy" in str(w.filename) or "Hex" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]


@pytest_twisted.ensureDeferred
async def test_promise_7_with_the_real_clock_waiting_requests_wake_when_the_cooldown_ends(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 0.3,
        "CONCURRENT_REQUESTS": 2,
    }
    seen_waiting = []

    def lift_bans(crawler, runtime):
        # Only the bans lift here; the wake-up is the middleware's own timer.
        seen_waiting.append(runtime.waiting)
        hexproxy_gateway.set_default_behavior(Behavior.normal())

    def lift_bans_once_requests_wait(crawler):
        when_requests_wait(crawler, lift_bans)

    result = await crawl(settings, urls(4), before=lift_bans_once_requests_wait)
    _assert_every_page_fetched(result, 4)
    assert seen_waiting
    assert result.hex_stats()["hex_proxy/blacklisted"] >= 2


@pytest_twisted.ensureDeferred
async def test_promise_9_bad_credentials_stop_even_with_requests_waiting_for_a_session(
    crawl, base_settings, hexproxy_gateway
):
    # Both sessions cool after one 407 each, so requests park; the stop must release them
    # (the manual clock never ends the cooldown: a parked request would hang the close).
    settings = {
        **base_settings,
        "HEX_PROXY_PASS": "wr0ng-Secret",
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": 16,
    }
    result = await crawl(settings, urls(40))
    assert result.finish_reason == "hex_proxy_auth_failed"
    assert {p.status for p in result.pages} <= {407}  # in-flight 407s, not retried
    # Nothing after the stop: the first 16 in flight, plus at most the retries of the two
    # 407s that came before the third one stopped the crawl.
    assert sum(hexproxy_gateway.counts().values()) <= 16 + 2


def _holds_secret(text: str, password: str) -> bool:
    """Whether ``text`` holds the password, or base64 that decodes to bytes holding it (at any
    of the four offsets a run may start at)."""
    if password in text:
        return True
    for run in re.findall(r"[A-Za-z0-9+/]{4,}", text):
        for shift in range(4):
            chars = run[shift:]
            chars = chars[: len(chars) - (len(chars) % 4 == 1)]
            try:
                decoded = base64.b64decode(chars + "=" * (-len(chars) % 4))
            except ValueError:
                continue
            if password.encode() in decoded:
                return True
    return False


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_11_an_echoing_gateway_gets_no_credentials_into_logs_or_errbacks(
    crawl, base_settings, all_logs, scheme
):
    password = "s3cr3t-PASS"
    with Gateway(password=password) as gateway:
        # Every answer a 407 whose reason phrase quotes the Proxy-Authorization and the
        # "user:password" it decodes to; for https Scrapy's TunnelError then quotes it.
        gateway.set_default_behavior(Behavior.echo_credentials_in(407))
        settings = {
            **base_settings,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_PASS": password,
            "HEX_PROXY_SESSION_POOL_SIZE": 3,
            "HEX_PROXY_MAX_RETRIES": 1,
            "HEX_PROXY_AUTH_FAILURES_TO_CLOSE": 1000,
        }
        result = await crawl(settings, urls(3, scheme))
        assert gateway.records
    assert result.stats.get("hex_proxy/retry", 0) >= 3
    texts = [record.getMessage() for record in all_logs.records] + [all_logs.text]
    if scheme == "https":
        assert len(result.errors) == 3
        for failure in result.errors:
            # The same class, its message redacted (the errback can still check the class).
            assert failure.check(TunnelError)
            assert "407" in str(failure.value) and "***" in str(failure.value)
            texts += [str(failure.value), repr(failure.value.args), failure.getTraceback()]
        assert any("Gave up retrying" in text and "***" in text for text in texts)
    else:
        assert {page.status for page in result.pages} == {407}
    leaked = [text for text in texts if _holds_secret(text, password)]
    assert not leaked, leaked[:3]
