"""Promise 15, second half: with a JOBDIR the pool's state survives a pause (_jobdir.py over the
core's snapshot/restore, src/snapshot.rs). Real crawls through the loopback gateway, paused
(closed) and resumed on the same JOBDIR."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest_twisted
from scrapy import signals
from twisted.internet import task

from scrapy_hexproxy import _jobdir
from scrapy_hexproxy._core import Core
from scrapy_hexproxy._runtime import Runtime
from scrapy_hexproxy.testing import Behavior, advance_clock

from .conftest import urls

BANNED = ("s001", "s003", "s004")


def _settings(base_settings: dict[str, Any], jobdir: Any, **more: Any) -> dict[str, Any]:
    return {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 6,
        "HEX_PROXY_MAX_FAILURES": 2,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 300,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": 2,
        "JOBDIR": str(jobdir),
        **more,
    }


def _restored_lines(caplog: Any) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "scrapy_hexproxy" and "pool state" in r.getMessage()
    ]


@pytest_twisted.ensureDeferred
async def test_promise_15_the_pool_state_survives_a_pause_benched_sessions_stay_out_until_their_end(
    crawl, base_settings, hexproxy_gateway, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    jobdir = tmp_path / "job"
    settings = _settings(base_settings, jobdir)
    for session in BANNED:
        hexproxy_gateway.set_behavior(session, Behavior.answer(503))
    first = await crawl(settings, urls(40))
    assert first.hex_stats()["hex_proxy/blacklisted"] == 3
    state = jobdir / _jobdir.STATE_FILE
    assert state.exists()
    assert b"PASS" not in state.read_bytes() and b"UEFTU" not in state.read_bytes()

    # The resume: every session answers well now, so only the restored bans keep the three out.
    for session in BANNED:
        hexproxy_gateway.clear_behavior(session)
    hexproxy_gateway.reset()
    second = await crawl(settings, urls(40))
    assert len([p for p in second.pages if p.status == 200]) == 40
    to_banned = sum(hexproxy_gateway.count(session) for session in BANNED)
    assert to_banned == 0, f"{to_banned} requests to sessions banned before the pause"
    assert second.hex_stats()["hex_proxy/sessions/cooling"] == 3
    assert any("3 sessions still cooling" in line for line in _restored_lines(caplog))

    # Resumed again, and the cooldowns' time passes (the manual clock, moved at open): back.
    hexproxy_gateway.reset()

    def pass_the_cooldown(crawler: Any) -> None:
        crawler.signals.connect(
            lambda: advance_clock(crawler, 300), signal=signals.spider_opened, weak=False
        )

    third = await crawl(settings, urls(60), before=pass_the_cooldown)
    assert len([p for p in third.pages if p.status == 200]) == 60
    assert all(hexproxy_gateway.count(session) > 0 for session in BANNED)
    assert third.hex_stats()["hex_proxy/sessions/cooling"] == 0


@pytest_twisted.ensureDeferred
async def test_promise_15_the_pool_state_survives_a_pause_the_periodic_save_is_on_disk_before_close(
    hook_crawler, tmp_path, monkeypatch
):
    # As after a kill -9: the crawl never closes, the last periodic save is what there is.
    monkeypatch.setattr(_jobdir, "SAVE_INTERVAL", 0.05)
    jobdir = tmp_path / "job"
    crawler = hook_crawler(JOBDIR=str(jobdir), HEX_PROXY_MAX_FAILURES=1)
    runtime = Runtime.of(crawler)
    assert runtime.pool_state is not None
    for number in (2, 5, 7):
        runtime.core.record(number, status=503)
    runtime.core.advance(50)
    runtime.pool_state.start()
    try:
        from twisted.internet import reactor

        await task.deferLater(reactor, 0.3, lambda: None)
        data = (jobdir / _jobdir.STATE_FILE).read_bytes()
    finally:
        assert runtime.pool_state._loop is not None
        runtime.pool_state._loop.stop()
    assert [p.name for p in jobdir.iterdir()] == [_jobdir.STATE_FILE]  # no temporary left
    resumed = Core(
        pool_size=20,
        max_failures=1,
        user="USER",
        password="s3cr3t-PASS",
        manual_clock=True,
    )
    outcome = resumed.restore(data, time.time(), "127.0.0.1:7777")
    assert outcome[0] == 3
    back = resumed.next_back()
    assert back is not None and back[0] == "s002" and 249 < back[1] <= 250
    print(f"\n{len(data)} bytes for 3 benched sessions of 20")


def test_promise_15_the_pool_state_survives_a_pause_a_state_of_another_configuration_is_ignored(
    hook_crawler, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG, logger="scrapy_hexproxy")
    jobdir = tmp_path / "job"
    first = Runtime.of(hook_crawler(JOBDIR=str(jobdir), HEX_PROXY_MAX_FAILURES=1))
    first.core.record(3, status=503)
    assert first.pool_state is not None
    first.pool_state.close()
    caplog.clear()
    for change in (
        {"HEX_PROXY_SESSION_POOL_SIZE": 7},
        {"HEX_PROXY_GATEWAY": "http://127.0.0.1:7778"},
        {"HEX_PROXY_USER": "OTHER"},
        {"HEX_PROXY_BAN_SCOPE": "domain"},
    ):
        runtime = Runtime.of(hook_crawler(JOBDIR=str(jobdir), **change))
        assert runtime.core.cooling_count == 0
        [line] = _restored_lines(caplog)
        assert "another configuration" in line and "ignored" in line, line
        assert [r.levelname for r in caplog.records if "pool state" in r.getMessage()] == ["INFO"]
        caplog.clear()
    # Another password is the same configuration.
    runtime = Runtime.of(hook_crawler(JOBDIR=str(jobdir), HEX_PROXY_PASS="new-PASS"))
    assert runtime.core.cooling_count == 1


def test_promise_15_the_pool_state_survives_a_pause_a_damaged_file_is_refused_cleanly(
    hook_crawler, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    jobdir = tmp_path / "job"
    first = Runtime.of(hook_crawler(JOBDIR=str(jobdir), HEX_PROXY_MAX_FAILURES=1))
    first.core.record(3, status=503)
    assert first.pool_state is not None
    first.pool_state.close()
    state = jobdir / _jobdir.STATE_FILE
    state.write_bytes(state.read_bytes()[:-3])
    runtime = Runtime.of(hook_crawler(JOBDIR=str(jobdir)))
    assert runtime.core.cooling_count == 0
    [line] = _restored_lines(caplog)
    assert "unreadable" in line


@pytest_twisted.ensureDeferred
async def test_promise_15_the_pool_state_survives_a_pause_rotated_ids_go_on_and_none_is_reused(
    crawl, base_settings, hexproxy_gateway, tmp_path
):
    # Seeded, the numbering's epoch is 0: a fresh crawl would hand out s007 again.
    jobdir = tmp_path / "job"
    settings = _settings(base_settings, jobdir, HEX_PROXY_ON_BLACKLIST="rotate")
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    await crawl(settings, urls(30))
    first = set(hexproxy_gateway.counts())
    assert {"s001", "s007"} <= first

    hexproxy_gateway.reset()
    hexproxy_gateway.clear_behavior("s001")
    hexproxy_gateway.set_behavior("s007", Behavior.answer(503))
    second = await crawl(settings, urls(30))
    used = set(hexproxy_gateway.counts())
    # Slot 1 went on as s007, which failed on and gave way to s013, never used before.
    assert "s001" not in used and {"s007", "s013"} <= used
    assert used & first == {"s000", "s002", "s003", "s004", "s005", "s007"}
    assert second.hex_stats()["hex_proxy/rotated"] == 1


@pytest_twisted.ensureDeferred
async def test_promise_15_the_pool_state_survives_a_pause_domain_records_stay_with_their_host(
    crawl, base_settings, hexproxy_gateway, tmp_path
):
    jobdir = tmp_path / "job"
    settings = _settings(base_settings, jobdir, HEX_PROXY_BAN_SCOPE="domain")
    for session in BANNED:
        hexproxy_gateway.set_host_behavior("a.test", Behavior.answer(503), session=session)
    # 40 pages on a.test: each banned session is tried there twice whatever the order answers
    # come in (with 20, one of them was once tried there only once and stayed in).
    targets = urls(40, host="a.test") + urls(20, host="b.test")
    first = await crawl(settings, targets)
    assert first.hex_stats()["hex_proxy/blacklisted"] == 3

    hexproxy_gateway.reset()
    for session in BANNED:
        hexproxy_gateway.clear_host_behavior("a.test", session=session)
    second = await crawl(settings, targets)
    assert len([p for p in second.pages if p.status == 200]) == 60
    # Still banned for a.test, whatever the new process's hash key; b.test has them all.
    assert sum(hexproxy_gateway.count(s, "a.test") for s in BANNED) == 0
    assert sum(hexproxy_gateway.count(s, "b.test") for s in BANNED) > 0
