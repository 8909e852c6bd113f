"""A newcomer's first hour (issue 15, item 4): the README's pytest example runs as written and
repeats itself, a test that forgets the manual clock fails with a message instead of hanging,
and https through the test gateway logs no certificate WARNING."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from scrapy import signals
from twisted.internet import task

from scrapy_hexproxy import _runtime
from scrapy_hexproxy.testing import Behavior, advance_clock

from .conftest import runtime_of, urls

README = Path(__file__).resolve().parent.parent / "README.md"

#: Import names the README's example may use -> the distribution that brings each: the install
#: line's, or Scrapy (a dependency of the package).
DISTRIBUTION_OF = {
    "pytest": "pytest",
    "pytest_twisted": "pytest-twisted",
    "scrapy": "scrapy-hexproxy",
    "scrapy_hexproxy": "scrapy-hexproxy",
}


def _readme_example() -> tuple[str, str]:
    """(the install line, the example test file) of the README's pytest section, verbatim."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL)
    examples = [i for i, (lang, body) in enumerate(blocks) if body.startswith("# test_spider.py")]
    assert len(examples) == 1, "the README has one example test file, starting '# test_spider.py'"
    lang, install = blocks[examples[0] - 1]
    assert lang == "sh" and install.startswith("pip install "), "the install line comes first"
    return install.strip(), blocks[examples[0]][1]


def _pytest(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` in ``directory``: its own rootdir, none of this suite's options; the
    installed plugins (pytest-twisted, ours) load as in a user's project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: Beside the example (not in it): writes the sessions the gateway saw, in order, after each
#: test, so that runs can be compared.
RECORDING_CONFTEST = """
import json, os
import pytest

@pytest.fixture(autouse=True)
def _sessions_seen(hexproxy_gateway):
    yield
    with open(os.environ["SESSIONS_SEEN"], "w") as f:
        json.dump([(r.session, r.target, r.outcome) for r in hexproxy_gateway.records], f)
"""


def test_the_readme_pytest_example_runs_verbatim_and_repeats_itself(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("runs its own pytest processes, with both reactors: once a suite is enough")
    install, example = _readme_example()
    named = set(install.split()[2:])
    imported = set(re.findall(r"^(?:import|from) (\w+)", example, flags=re.MULTILINE))
    for module in imported:
        distribution = DISTRIBUTION_OF[module]
        assert distribution in named or (
            distribution == "scrapy-hexproxy" and "scrapy_hexproxy" in install
        ), f"the example imports {module}, which the install line does not bring"
    (tmp_path / "test_spider.py").write_text(example, encoding="utf-8")
    (tmp_path / "conftest.py").write_text(RECORDING_CONFTEST, encoding="utf-8")
    seen = []
    # As written (pytest-twisted's default reactor), again, and with the asyncio reactor.
    for i, args in enumerate([(), (), ("--reactor=asyncio",)]):
        out = tmp_path / f"sessions-{i}.json"
        os.environ["SESSIONS_SEEN"] = str(out)
        try:
            result = _pytest(tmp_path, *args)
        finally:
            del os.environ["SESSIONS_SEEN"]
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed" in result.stdout
        seen.append(json.loads(out.read_text()))
    # The fixture's seed: the same sessions, in the same order, every run, on either reactor.
    assert seen[0] == seen[1] == seen[2]
    assert [s for s, _, _ in seen[0]].count("s001") == 2
    assert sum(1 for _, _, outcome in seen[0] if outcome == "ok") == 10


FORGETFUL_TEST = """
import pytest_twisted
import scrapy
from scrapy.crawler import CrawlerRunner

from scrapy_hexproxy import _runtime
from scrapy_hexproxy.testing import Behavior

_runtime.MANUAL_CLOCK_STALL = 0.5  # real seconds (10 by default): a short wait for this test


class MySpider(scrapy.Spider):
    name = "my"
    start_urls = ["http://site.test/page/0"]

    def parse(self, response):
        pass


@pytest_twisted.ensureDeferred
async def test_the_session_comes_back_after_its_cooldown(hexproxy_gateway, hexproxy_settings):
    hexproxy_gateway.set_default_behavior(Behavior.fail_for(5, status=503))
    runner = CrawlerRunner({**hexproxy_settings, "HEX_PROXY_MANUAL_CLOCK": True,
                            "HEX_PROXY_SESSION_POOL_SIZE": 1, "HEX_PROXY_MAX_FAILURES": 1})
    crawler = runner.create_crawler(MySpider)
    await runner.crawl(crawler)   # forgot advance_clock(crawler, 300) somewhere
    assert crawler.stats.get_value("response_received_count") == 1
"""


def test_a_test_that_forgets_to_advance_the_manual_clock_fails_with_a_message(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("runs its own pytest process: once a suite is enough")
    (tmp_path / "test_forgetful.py").write_text(FORGETFUL_TEST, encoding="utf-8")
    result = _pytest(tmp_path, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed" in result.stdout
    failure = output.split("FAILURES", 1)[1]
    assert "HEX_PROXY_MANUAL_CLOCK" in failure
    assert "scrapy_hexproxy.testing.advance_clock(crawler, seconds)" in failure
    assert "hex_proxy_manual_clock_stalled" in failure
    assert "assert" in failure  # the test's own failure follows the message


def _manual_clock(base_settings: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        **base_settings,
        "HEX_PROXY_MANUAL_CLOCK": True,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 2,
        "CONCURRENT_REQUESTS": 2,
        **more,
    }


@pytest_twisted.ensureDeferred
async def test_a_stalled_manual_clock_closes_the_crawl_with_one_error_naming_the_fix(
    crawl, base_settings, hexproxy_gateway, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(_runtime, "MANUAL_CLOCK_STALL", 0.3)
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    result = await crawl(_manual_clock(base_settings, HEX_PROXY_MAX_RETRIES=1), urls(4))
    assert result.finish_reason == "hex_proxy_manual_clock_stalled"
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "manual clock" in r.getMessage()
    ]
    assert len(errors) == 1
    assert "HEX_PROXY_MANUAL_CLOCK" in errors[0]
    assert "advance_clock(crawler, seconds)" in errors[0]
    # Both sessions cooled at their first 503 (a request that failed on one is retried on the
    # other); the requests then in the downloader waited, and were let go unsent.
    assert result.stats["hex_proxy/blacklisted"] == 2
    assert 1 <= result.stats["hex_proxy/dropped_at_close"] <= 2  # CONCURRENT_REQUESTS
    assert _runtime.CLOCK_STALLS == [errors[0]]
    _runtime.CLOCK_STALLS.clear()  # this test expected it: the plugin must not fail it


@pytest_twisted.ensureDeferred
async def test_a_manual_clock_that_moves_is_never_called_stalled(
    crawl, base_settings, hexproxy_gateway, monkeypatch
) -> None:
    # Every first attempt gets a 503, which benches both sessions (for 5 s of the core's clock)
    # and leaves every request waiting. The clock moves 1 s every 0.2 s of real time, so the
    # sessions are back after 1 s or more: longer than the 0.3 s a clock may stand still.
    monkeypatch.setattr(_runtime, "MANUAL_CLOCK_STALL", 0.3)
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    mover: task.LoopingCall | None = None

    def before(crawler: Any) -> None:
        nonlocal mover

        def tick() -> None:
            if runtime_of(crawler).waiting:  # the sessions are benched: serve from now on
                hexproxy_gateway.set_default_behavior(Behavior.normal())
            advance_clock(crawler, 1.0)

        def opened(spider: Any) -> None:
            assert mover is not None
            mover.start(0.2, now=False)

        mover = task.LoopingCall(tick)
        crawler.signals.connect(opened, signal=signals.spider_opened, weak=False)

    settings = _manual_clock(base_settings, HEX_PROXY_BLACKLIST_COOLDOWN=5)
    result = await crawl(settings, urls(6), before=before)
    assert mover is not None
    if mover.running:
        mover.stop()
    assert result.finish_reason == "finished"
    assert len(result.pages) == 6
    assert result.stats["hex_proxy/blacklisted"] == 2


@pytest_twisted.ensureDeferred
async def test_https_through_the_test_gateway_logs_no_certificate_warning(
    crawl, base_settings, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    # Not an IP literal: Scrapy 2.11 checks one as a DNS name, and warns whatever the certificate.
    targets = [*urls(20, "https"), "https://localhost:8443/page/x"]
    result = await crawl({**base_settings, "CONCURRENT_REQUESTS": 8}, targets)
    assert sorted(p.status for p in result.pages) == [200] * 21
    tls = [r for r in caplog.records if r.name.startswith("scrapy.core.downloader")]
    assert [r.getMessage() for r in tls if r.levelno >= logging.WARNING] == []
