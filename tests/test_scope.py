"""Ban scope (HEX_PROXY_BAN_SCOPE): real crawls through the loopback gateway to several target
hosts (a.test, b.test: the gateway answers them itself, nothing leaves 127.0.0.1), and hook-level
tests on real Request/Response objects for what a crawl cannot pin down."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import pytest_twisted
from scrapy import Request
from scrapy.http import Response

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware, SmartRetryMiddleware
from scrapy_hexproxy._core import attempt_of
from scrapy_hexproxy.testing import Behavior, advance_clock

from .conftest import runtime_of, urls, when


def _interleaved(scheme: str, *hosts_and_counts: tuple[str, int]) -> list[str]:
    lists = [urls(n, scheme, host) for host, n in hosts_and_counts]
    out = []
    for i in range(max(len(lst) for lst in lists)):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out


def _assert_every_page_fetched(result, targets):
    assert not result.errors, [str(e.value) for e in result.errors]
    assert sorted(p.url for p in result.pages) == sorted(targets)
    assert all(p.status == 200 for p in result.pages)
    assert all(p.gateway_session == p.meta_session for p in result.pages)


def _served_after_its_ban(gateway, session: str, banned_at: str, other: str) -> int:
    """Attempts ``session`` made to ``other`` after its last attempt to ``banned_at``."""
    records = [r for r in gateway.records if r.session == session and r.is_attempt]
    last_ban = max(i for i, r in enumerate(records) if r.host == banned_at)
    return sum(1 for r in records[last_ban + 1 :] if r.host == other)


def _ban_scope_settings(base_settings: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 1,
        **more,
    }


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_domain_scope_a_ban_by_a_test_leaves_s001_serving_b_test(
    crawl, base_settings, hexproxy_gateway, caplog, scheme
):
    # a.test bans s001 (for https: the gateway refuses its CONNECT to a.test:443); b.test and
    # every other session are fine.
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(403), session="s001")
    targets = _interleaved(scheme, ("a.test", 40), ("b.test", 40))
    settings = _ban_scope_settings(base_settings, HEX_PROXY_BAN_SCOPE="domain")
    result = await crawl(settings, targets)
    _assert_every_page_fetched(result, targets)
    stats = result.hex_stats()
    # Exactly HEX_PROXY_MAX_FAILURES attempts of s001 reached a.test, then never again.
    assert hexproxy_gateway.count("s001", host="a.test") == 2
    assert stats["hex_proxy/failure/403"] == 2
    assert stats["hex_proxy/blacklisted"] == 1
    # s001 kept serving b.test after a.test banned it.
    served = _served_after_its_ban(hexproxy_gateway, "s001", "a.test", "b.test")
    assert served >= 5, served
    assert {p.meta_session for p in result.pages if "//b.test/" in p.url} == {
        "s000",
        "s001",
        "s002",
    }
    assert "s001" not in {p.meta_session for p in result.pages if "//a.test/" in p.url}
    # One (session, host) pair cooling; no session cools for every host.
    assert stats["hex_proxy/sessions/cooling"] == 1
    assert stats["hex_proxy/sessions/live"] == 2
    assert stats["hex_proxy/hosts/tracked"] == 1
    [warning] = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "scrapy_hexproxy"
    ]
    assert "s001" in warning and "a.test" in warning and "b.test" not in warning


@pytest_twisted.ensureDeferred
async def test_session_scope_a_ban_by_a_test_benches_s001_for_b_test_too(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(403), session="s001")
    targets = _interleaved("http", ("a.test", 40), ("b.test", 40))
    result = await crawl(_ban_scope_settings(base_settings), targets)  # the default scope
    _assert_every_page_fetched(result, targets)
    stats = result.hex_stats()
    # One run for all hosts: b.test's successes reset it between a.test's 403s, so the ban
    # may take more than two; then s001 is benched for every host.
    banned_after = hexproxy_gateway.count("s001", host="a.test")
    assert banned_after >= 2
    assert stats["hex_proxy/failure/403"] == banned_after
    assert stats["hex_proxy/blacklisted"] == 1
    assert _served_after_its_ban(hexproxy_gateway, "s001", "a.test", "b.test") == 0
    assert stats["hex_proxy/sessions/cooling"] == 1
    assert stats["hex_proxy/sessions/live"] == 2
    assert "hex_proxy/hosts/tracked" not in stats


def _pages_of(crawler: Any, host: str) -> int:
    return sum(1 for p in crawler.spider.result.pages if f"//{host}/" in p.url)


@pytest_twisted.ensureDeferred
async def test_domain_scope_requests_to_an_exhausted_host_wait_while_other_hosts_complete(
    crawl, base_settings, hexproxy_gateway
):
    # a.test answers 503 to every session: both cool for it after one failure each, and the
    # a.test requests wait. b.test is served meanwhile, by the same two sessions.
    hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(503))
    targets = _interleaved("http", ("a.test", 3), ("b.test", 20))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_SCOPE": "domain",
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 100,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": 8,
    }
    seen = {}

    def all_b_done_and_a_waiting(crawler, runtime):
        return runtime.waiting == 3 and _pages_of(crawler, "b.test") == 20

    def release(crawler, runtime):
        core = runtime.core
        seen.update(
            waiting=runtime.waiting,
            a_pages=_pages_of(crawler, "a.test"),
            a_wait=core.next_live_in("a.test"),
            b_wait=core.next_live_in("b.test"),
            pick_a=core.pick(None, "a.test"),
            live=core.live_count,
            cooling=core.cooling_count,
        )
        hexproxy_gateway.clear_host_behavior("a.test")
        advance_clock(crawler, 100)

    result = await crawl(
        settings, targets, before=lambda c: when(c, all_b_done_and_a_waiting, release)
    )
    _assert_every_page_fetched(result, targets)
    # While every session cooled for a.test, its 3 requests waited, none was fetched or
    # dropped, and all 20 b.test pages completed; the a.test ones completed after the clock.
    assert seen == {
        "waiting": 3,
        "a_pages": 0,
        "a_wait": 100.0,
        "b_wait": 0.0,
        "pick_a": None,
        "live": 0,
        "cooling": 2,
    }
    assert result.hex_stats()["hex_proxy/blacklisted"] == 2
    assert (
        hexproxy_gateway.count("s000", host="b.test")
        + hexproxy_gateway.count("s001", host="b.test")
        == 20
    )
    assert result.finish_reason == "finished"


@pytest_twisted.ensureDeferred
async def test_domain_scope_with_the_real_clock_waiting_requests_wake_when_their_host_is_back(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(503))
    targets = _interleaved("http", ("a.test", 2), ("b.test", 6))
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_SCOPE": "domain",
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        # Long enough that the 10 ms poll below sees the requests waiting even under load.
        "HEX_PROXY_BLACKLIST_COOLDOWN": 1.0,
        "CONCURRENT_REQUESTS": 4,
    }
    seen = []

    def lift_ban(crawler, runtime):
        # Only the ban lifts here; the wake-up is the middleware's own timer.
        seen.append(runtime.waiting)
        hexproxy_gateway.clear_host_behavior("a.test")

    result = await crawl(
        settings, targets, before=lambda c: when(c, lambda c, r: r.waiting > 0, lift_ban)
    )
    _assert_every_page_fetched(result, targets)
    assert seen and seen[0] > 0
    assert result.hex_stats()["hex_proxy/blacklisted"] >= 2


@pytest.mark.parametrize("value", ["domains", "host", "", 1, ["domain"]])
@pytest_twisted.ensureDeferred
async def test_a_bad_ban_scope_stops_the_crawl_with_a_message_naming_it(
    crawl, base_settings, hexproxy_gateway, value
):
    settings = {**base_settings, "HEX_PROXY_BAN_SCOPE": value}
    with pytest.raises(HexProxyConfigError, match="HEX_PROXY_BAN_SCOPE"):
        await crawl(settings, urls(3, host="a.test"))
    assert hexproxy_gateway.records == []


@pytest_twisted.ensureDeferred
async def test_rotate_on_blacklist_with_domain_scope_stops_the_crawl_naming_both(
    crawl, base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_SCOPE": "Domain",
        "HEX_PROXY_ON_BLACKLIST": "rotate",
    }
    with pytest.raises(HexProxyConfigError) as info:
        await crawl(settings, urls(3, host="a.test"))
    assert 'HEX_PROXY_ON_BLACKLIST = "rotate"' in str(info.value)
    assert 'HEX_PROXY_BAN_SCOPE = "domain"' in str(info.value)
    assert hexproxy_gateway.records == []


@pytest_twisted.ensureDeferred
async def test_domain_scope_an_id_rotated_for_its_uses_is_clean_on_the_host_that_banned_it(
    crawl, base_settings, hexproxy_gateway
):
    # One slot. a.test bans its first id, s000: two 403s blacklist it for a.test, and the
    # request's second retry waits (no session is live for a.test; the clock stands still).
    # Then a request to b.test takes the slot, whose id is used up (two uses): it goes out as
    # s001, a new identity no host holds anything against, and the a.test request, woken at
    # once, goes out on s001 too and gets its page.
    hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(403), session="s000")
    settings = {
        **base_settings,
        "HEX_PROXY_BAN_SCOPE": "domain",
        "HEX_PROXY_SESSION_POOL_SIZE": 1,
        "HEX_PROXY_MAX_FAILURES": 2,
        "HEX_PROXY_SESSION_MAX_USES": 2,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": 2,
    }
    seen = {}

    def send_b_test(crawler, runtime):
        seen.update(waiting=runtime.waiting, a_wait=runtime.core.next_live_in("a.test"))
        late = Request("http://b.test/late", callback=crawler.spider.parse, dont_filter=True)
        crawler.engine.crawl(late)

    result = await crawl(
        settings,
        ["http://a.test/first"],
        before=lambda c: when(c, lambda c, r: r.waiting == 1, send_b_test),
    )
    assert not result.errors
    pages = {p.url: (p.status, p.meta_session, p.retry_times) for p in result.pages}
    assert pages == {
        "http://a.test/first": (200, "s001", 2),
        "http://b.test/late": (200, "s001", 0),
    }
    # It waited on a cooldown of 300 s that the new id made moot.
    assert seen == {"waiting": 1, "a_wait": 300.0}
    assert hexproxy_gateway.count("s000", "a.test") == 2
    stats = result.hex_stats()
    assert (stats["hex_proxy/blacklisted"], stats["hex_proxy/rotated"]) == (1, 1)
    assert stats["hex_proxy/sessions/cooling"] == 0
    assert stats["hex_proxy/hosts/tracked"] == 0


# -- hook level --------------------------------------------------------------------------------


def _pair(crawler):
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _send(proxy, url):
    request = Request(url)
    assert proxy.process_request(request) is None
    return request


def test_the_attempt_token_names_the_target_host_in_domain_scope_only(hook_crawler):
    proxy, _ = _pair(hook_crawler(HEX_PROXY_BAN_SCOPE="domain"))
    request = _send(proxy, "https://User:pw@WWW.A.Test:8443/x?next=http://b.test/")
    index, retry_times, host = request.meta["_hex_attempt"]
    assert 0 <= index < 20 and (retry_times, host) == (0, "www.a.test")
    assert runtime_of(proxy._runtime.crawler).core.ban_scope == "domain"
    proxy, _ = _pair(hook_crawler())
    first = _send(proxy, "http://a.test/").meta["_hex_attempt"]
    assert isinstance(first, int) and attempt_of(first)[2] is None  # session scope: the number


def test_an_unobserved_attempt_settles_against_the_host_it_was_sent_to(hook_crawler):
    # A middleware above ours returns a retry copy aimed elsewhere (b.test): the failure is
    # a.test's, where the attempt went, not the copy's host.
    crawler = hook_crawler(
        HEX_PROXY_BAN_SCOPE="domain", HEX_PROXY_SESSION_POOL_SIZE=2, HEX_PROXY_MAX_FAILURES=1
    )
    proxy, _ = _pair(crawler)
    core = runtime_of(crawler).core
    request = _send(proxy, "http://a.test/1")
    sent_on = attempt_of(request.meta["_hex_attempt"])[0]
    retried = request.replace(url="http://b.test/1", dont_filter=True)
    retried.meta["retry_times"] = 1
    assert proxy.process_request(retried) is None
    assert core.stats()["hex_proxy/failure/unobserved"] == 1
    assert core.stats()["hex_proxy/blacklisted"] == 1
    assert {core.pick(None, "a.test") for _ in range(50)} == {1 - sent_on}
    assert {core.pick(None, "b.test") for _ in range(50)} == {0, 1}
    # The copy went out for b.test, which it now carries.
    assert retried.meta["_hex_attempt"][2] == "b.test"


def test_a_response_settles_against_the_host_in_the_token(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_BAN_SCOPE="domain", HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=2
    )
    proxy, retry = _pair(crawler)
    core = runtime_of(crawler).core
    for _ in range(2):
        request = _send(proxy, "http://a.test/1")
        response = Response("http://b.test/moved", status=503, request=request)
        assert isinstance(retry.process_response(request, response), Request)
    assert core.pick(None, "a.test") is None
    assert core.next_live_in("a.test") == 300.0
    assert core.pick(None, "b.test") == 0
    assert core.next_live_in() == 0.0  # no host: the empty one, which nothing bans
