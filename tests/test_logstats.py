"""Pool health in the log (HEX_PROXY_LOGSTATS_INTERVAL) and its gauges at close."""

from __future__ import annotations

import logging
import re

import pytest
import pytest_twisted
from scrapy import signals

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware
from scrapy_hexproxy.testing import Behavior, advance_clock

from .conftest import runtime_of, urls

LINE = re.compile(
    r"hex_proxy: (\d+) live, (\d+) cooling sessions \((.*)\); per minute: ([\d.]+) blacklisted,"
    r" ([\d.]+) rotated, ([\d.]+) retries, ([\d.]+) failures"
)


def _health_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    found = (LINE.fullmatch(r.getMessage()) for r in caplog.records if r.levelno == logging.INFO)
    return [m for m in found if m]


def _advance_after(crawler, responses: int, seconds: float) -> None:
    """Move the core's clock by ``seconds`` once ``responses`` responses have arrived."""
    seen = []

    def received(**kwargs):
        seen.append(1)
        if len(seen) == responses:
            advance_clock(crawler, seconds)

    crawler.signals.connect(received, signal=signals.response_received, weak=False)


@pytest_twisted.ensureDeferred
async def test_pool_health_is_logged_each_interval_with_per_minute_rates_and_kept_at_close(
    crawl, base_settings, hexproxy_gateway, caplog
):
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 2,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 300,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "HEX_PROXY_LOGSTATS_INTERVAL": 60,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(30), before=lambda c: _advance_after(c, 30, 90))
    assert sorted({p.status for p in result.pages}) == [200] and len(result.pages) == 30
    hex_stats = result.hex_stats()
    # One at a time: s001 failed twice in a row, was blacklisted, and both pages retried.
    assert hex_stats["hex_proxy/blacklisted"] == 1
    assert hex_stats["hex_proxy/failure/503"] == 2 and hex_stats["hex_proxy/retry"] == 2
    [line] = _health_lines(caplog)  # 90 s passed: one interval, one line
    live, cooling, back, blacklisted, rotated, retries, failures = line.groups()
    assert (live, cooling) == ("3", "1")
    # Blacklisted at 0 s on the core's clock with a 300 s cooldown; the line came at 90 s.
    assert back == "next back: s001 in 210s"
    # Rates over the 90 s since the crawl opened: 1 blacklist, 2 retries, 2 failures.
    assert (blacklisted, rotated, retries, failures) == ("0.7", "0.0", "1.3", "1.3")
    # The same figures as gauges at close, over the whole crawl (90 s on the core's clock).
    assert hex_stats["hex_proxy/sessions/live"] == 3
    assert hex_stats["hex_proxy/sessions/cooling"] == 1
    assert hex_stats["hex_proxy/sessions/next_back"] == "s001"
    assert hex_stats["hex_proxy/sessions/next_back_in"] == 210.0
    assert hex_stats["hex_proxy/per_minute/blacklisted"] == pytest.approx(1 / 1.5, abs=1e-3)
    assert hex_stats["hex_proxy/per_minute/retry"] == pytest.approx(2 / 1.5, abs=1e-3)
    assert hex_stats["hex_proxy/per_minute/failure"] == pytest.approx(2 / 1.5, abs=1e-3)
    assert hex_stats["hex_proxy/per_minute/rotated"] == 0


@pytest_twisted.ensureDeferred
async def test_pool_health_interval_zero_logs_no_line_and_still_sets_the_gauges(
    crawl, base_settings, caplog
):
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    settings = {
        **base_settings,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "HEX_PROXY_LOGSTATS_INTERVAL": 0,
    }
    result = await crawl(settings, urls(5), before=lambda c: _advance_after(c, 5, 600))
    assert len(result.pages) == 5
    assert _health_lines(caplog) == []
    hex_stats = result.hex_stats()
    assert hex_stats["hex_proxy/per_minute/failure"] == 0
    assert hex_stats["hex_proxy/sessions/live"] == 20
    assert "hex_proxy/sessions/next_back" not in hex_stats  # nothing is cooling


def test_pool_health_runs_on_a_reactor_timer_with_the_system_clock(hook_crawler, caplog):
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    crawler = hook_crawler(HEX_PROXY_MANUAL_CLOCK=False, HEX_PROXY_LOGSTATS_INTERVAL=2.5)
    HexProxyMiddleware.from_crawler(crawler)
    runtime = runtime_of(crawler)
    runtime._spider_opened()
    task = runtime.health._task
    try:
        assert task.running and task.interval == 2.5
        runtime.health.log()  # what the timer calls
        [line] = _health_lines(caplog)
        assert line.group(1, 2, 3) == ("20", "0", "none cooling")
    finally:
        runtime.health.stop()
    assert not task.running


def test_pool_health_timer_is_off_at_interval_zero(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_MANUAL_CLOCK=False, HEX_PROXY_LOGSTATS_INTERVAL="0")
    HexProxyMiddleware.from_crawler(crawler)
    runtime = runtime_of(crawler)
    runtime._spider_opened()
    assert runtime.health._task is None


@pytest.mark.parametrize("value", [-1, "often", float("inf"), float("nan"), True])
def test_bad_logstats_interval_stops_the_crawl_naming_the_setting(hook_crawler, value):
    with pytest.raises(HexProxyConfigError) as info:
        HexProxyMiddleware.from_crawler(hook_crawler(HEX_PROXY_LOGSTATS_INTERVAL=value))
    assert "HEX_PROXY_LOGSTATS_INTERVAL" in str(info.value)
