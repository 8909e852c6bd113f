"""Promises 14 (stop means stop) and 15 (pause and resume lose nothing we hold).

Where the signal is the point, the crawl runs in its own process (``tests/held_crawl.py``) and
gets a real SIGINT, as a user's Ctrl-C; the gateway runs here and records every arrival.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scrapy_hexproxy._pacing import HELD_FILE, NOT_BEFORE_WALL
from scrapy_hexproxy.testing import Behavior, Gateway

from .conftest import FINGERPRINTER_SETTINGS, GUIDE_WIRING, urls, when_requests_wait
from .test_lifecycle import PASSWORD, files_holding, secret_forms

HELPER = Path(__file__).with_name("held_crawl.py")
#: The close must take at most 1 s beyond what is downloading; the rest is the interpreter's
#: start-up-free exit on two shared cores (the measure is printed with -s).
EXIT_BOUND = 1.0 + 1.5


#: The reactor of the crawl in its own process: the one the suite runs under.
REACTORS = {
    "asyncio": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    "default": "twisted.internet.selectreactor.SelectReactor",
}


@pytest.fixture
def reactor(pytestconfig: pytest.Config) -> str:
    return REACTORS[pytestconfig.getoption("reactor")]


def _settings(gateway: Gateway, reactor: str, **more: Any) -> dict[str, Any]:
    return {
        "DOWNLOADER_MIDDLEWARES": dict(GUIDE_WIRING),
        "HEX_PROXY_GATEWAY": gateway.url,
        "HEX_PROXY_USER": "USER",
        "HEX_PROXY_PASS": gateway.password,
        "HEX_PROXY_SEED": 7,
        "TWISTED_REACTOR": reactor,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "INFO",
        "ROBOTSTXT_OBEY": False,
        "DOWNLOAD_TIMEOUT": 5,
        **FINGERPRINTER_SETTINGS,
        **more,
    }


def _start(tmp_path: Path, name: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(HELPER.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_held(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The helper's HELD line (it holds what the test asked for)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("HELD"):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the crawl never held its requests: {proc.communicate()[1][-3000:]}")


def _interrupt(proc: subprocess.Popen[str]) -> tuple[float, float, str, str]:
    """One SIGINT; returns (monotonic time of the signal, seconds to exit, stdout, stderr)."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # bounded: a crawl that ignores the stop does not outlive the test
        proc.communicate()
        raise
    return sent, time.monotonic() - sent, out, err


#: Scrapy's own: under a plain reactor a close that runs through synchronously (nothing in the
#: downloader) ends the crawl inside CrawlerProcess.stop(), which iterates its set of crawlers
#: with a generator (scrapy/crawler.py, ``DeferredList(... for c in self.crawlers)``).
SCRAPY_STOP_RACE = "RuntimeError: Set changed size during iteration"


def _clean(err: str) -> bool:
    """No error and no traceback in a crawl's log but Scrapy's ``SCRAPY_STOP_RACE``."""
    if SCRAPY_STOP_RACE in err and "in _graceful_stop_reactor" in err:
        err = err[: err.index("Unhandled error in Deferred")]
    return "Traceback" not in err and " ERROR: " not in err


def _stats(out: str) -> dict[str, Any]:
    line = next(line for line in out.splitlines() if line.startswith("STATS "))
    return json.loads(line[len("STATS ") :])  # type: ignore[no-any-return]


def test_promise_14_one_sigint_releases_requests_waiting_for_a_session_at_once_none_sent(
    tmp_path: Path, reactor: str
) -> None:
    # Pool 1, cooldown 60 s: the first failure benches the one session; its retry and the
    # other 15 concurrent requests wait for it.
    with Gateway(password="secret", keep_alive=False) as gateway:
        gateway.set_behavior("s000", Behavior.answer(503))
        settings = _settings(
            gateway,
            reactor,
            HEX_PROXY_SESSION_POOL_SIZE=1,
            HEX_PROXY_MAX_FAILURES=1,
            HEX_PROXY_BLACKLIST_COOLDOWN=60,
            CONCURRENT_REQUESTS=16,
        )
        config = {
            "settings": settings,
            "pages": 40,
            "out": str(tmp_path / "pages.txt"),
            "held": {"waiting": 16, "parked": 0},
        }
        proc = _start(tmp_path, "stop", config)
        held = _wait_held(proc)
        sent, seconds, out, err = _interrupt(proc)
        after = [r for r in gateway.records if r.at >= sent]
    print(
        f"\npromise 14 (SIGINT, {held}): exit {seconds:.2f} s after the signal,"
        f" {len(after)} requests to the gateway after it"
    )
    assert proc.returncode == 0, err[-3000:]
    assert _clean(err), err[-3000:]
    assert after == []
    assert seconds < EXIT_BOUND, err[-3000:]
    stats = _stats(out)
    assert stats["hex_proxy/dropped_at_close"] == 16
    assert stats["finish_reason"] == "shutdown"
    assert err.count("requests waiting for a session") == 1
    assert "16 requests waiting for a session or the gateway and 0 retries" in err


def _held_settings(base_settings: dict[str, Any], **more: Any) -> dict[str, Any]:
    """Pool 1, benched for 60 s on the core's manual clock (which the test never moves): a
    request that waits for the session waits until the close releases it."""
    return {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 1,
        "HEX_PROXY_MAX_FAILURES": 1,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 60,
        "HEX_PROXY_MANUAL_CLOCK": True,
        **more,
    }


def _close(reason: str) -> Any:
    def close(crawler: Any, runtime: Any) -> None:
        from scrapy_hexproxy import _scrapy

        close.sent = len(crawler._gateway.records)  # type: ignore[attr-defined]
        close.at = time.monotonic()  # type: ignore[attr-defined]
        _scrapy.close_spider(crawler, reason)

    return close


@pytest.mark.parametrize("how", ["engine.close_spider", "CLOSESPIDER_TIMEOUT"])
async def test_promise_14_a_close_releases_waiting_requests_unsent_and_warns_once(
    crawl, base_settings, hexproxy_gateway, caplog, how
):
    hexproxy_gateway.set_behavior("s000", Behavior.answer(503))
    settings = _held_settings(base_settings)
    close = _close("test_close")

    def before(crawler: Any) -> None:
        crawler._gateway = hexproxy_gateway
        if how == "engine.close_spider":
            when_requests_wait(crawler, close, every_request=True)

    if how == "CLOSESPIDER_TIMEOUT":
        # Scrapy's own limit (a retried response is no "page" for CLOSESPIDER_PAGECOUNT).
        settings["CLOSESPIDER_TIMEOUT"] = 0.5
    started = time.monotonic()
    result = await crawl(settings, urls(20), before=before)
    ended = time.monotonic()
    seconds = ended - started
    stats = result.stats
    held = stats.get("hex_proxy/dropped_at_close", 0)
    sent = len(hexproxy_gateway.records)
    print(f"\npromise 14 ({how}): closed in {seconds:.2f} s, {held} released unsent, {sent} sent")
    assert seconds < 5  # the cooldown is 60 s and the manual clock never moves
    assert held > 0
    if how == "engine.close_spider":
        assert stats["finish_reason"] == "test_close"
        assert sent == close.sent  # none sent after the close began
        print(f"promise 14 (engine.close_spider): {ended - close.at:.2f} s from the close")
        assert ended - close.at < 1.5
    else:
        assert stats["finish_reason"] == "closespider_timeout"
    assert not result.pages or all(p.status == 503 for p in result.pages)
    warnings = [r for r in caplog.records if "waiting for a session" in r.getMessage()]
    assert [w.levelname for w in warnings] == ["WARNING"]
    assert f"{held} requests waiting for a session" in warnings[0].getMessage()


def test_promise_15_a_paused_jobdir_crawl_resumes_with_every_held_request_fetched_once(
    tmp_path: Path, reactor: str
) -> None:
    pages = 30
    out = tmp_path / "pages.txt"
    jobdir = str(tmp_path / "job")
    with Gateway(password="secret", keep_alive=False) as gateway:
        # Run 1: every session fails; their retries park for their backoff, the sessions are
        # benched for 60 s and the next requests wait for one. Then one SIGINT: a pause.
        gateway.set_default_behavior(Behavior.answer(503))
        settings = _settings(
            gateway,
            reactor,
            JOBDIR=jobdir,
            HEX_PROXY_SESSION_POOL_SIZE=2,
            HEX_PROXY_MAX_FAILURES=3,
            HEX_PROXY_BLACKLIST_COOLDOWN=60,
            HEX_PROXY_RETRY_BACKOFF_BASE=1,
            HEX_PROXY_MAX_RETRIES=8,
            CONCURRENT_REQUESTS=4,
        )
        config = {"settings": settings, "pages": pages, "out": str(out)}
        proc = _start(tmp_path, "run1", {**config, "held": {"waiting": 2, "parked": 2}})
        held = _wait_held(proc)
        sent, seconds, out1, err1 = _interrupt(proc)
        assert proc.returncode == 0, err1[-3000:]
        assert _clean(err1), err1[-3000:]
        assert [r for r in gateway.records if r.at >= sent] == []  # nothing sent after it
        assert _stats(out1)["hex_proxy/retry/dropped_at_close"] in (None, 0)
        assert _stats(out1)["hex_proxy/dropped_at_close"] in (None, 0)
        # The parked retries, saved with their wall-clock due time.
        due = {}
        with open(os.path.join(jobdir, HELD_FILE), "rb") as held_file:
            for record in pickle.load(held_file)["retries"]:
                due[record["url"]] = record["meta"][NOT_BEFORE_WALL]
        # Run 2 on the same JOBDIR, the gateway healthy again; it notes when each page arrives.
        gateway.set_default_behavior(Behavior.normal())
        times = tmp_path / "times.txt"
        proc = _start(tmp_path, "run2", {**config, "times": str(times)})
        out2, err2 = proc.communicate(timeout=120)
        assert proc.returncode == 0, err2[-3000:]
        assert _clean(err2), err2[-3000:]
    fetched = out.read_text().splitlines() if out.exists() else []
    arrived = dict(line.split() for line in times.read_text().splitlines())
    early = [url for url, at in due.items() if float(arrived[url]) < at]
    print(
        f"\npromise 15 (pause: {held}, exit {seconds:.2f} s): {len(fetched)} pages over both"
        f" runs ({len(set(fetched))} distinct of {pages}); {len(due)} retries saved with a"
        f" wall-clock due time, {len(early)} fetched before it"
    )
    assert due  # parked retries went through the pause
    assert early == []
    assert sorted(fetched) == sorted(f"http://site.test/page/{i}" for i in range(pages))
    assert _stats(out2)["finish_reason"] == "finished"


def test_promise_15_retries_parked_in_an_idle_crawl_survive_a_pause(
    tmp_path: Path, reactor: str
) -> None:
    # Nothing in the downloader: the engine's close runs through to the scheduler's close
    # within a few loop turns, faster than any watch of ours could see it begin.
    pages = 3
    out = tmp_path / "pages.txt"
    with Gateway(password=PASSWORD, keep_alive=False) as gateway:
        gateway.set_default_behavior(Behavior.answer(503))
        settings = _settings(
            gateway,
            reactor,
            JOBDIR=str(tmp_path / "job"),
            HEX_PROXY_SESSION_POOL_SIZE=3,
            HEX_PROXY_MAX_FAILURES=10,
            HEX_PROXY_RETRY_BACKOFF_BASE=0.75,  # the first retry waits up to 1.5 s
            HEX_PROXY_RETRY_BACKOFF_MAX=1.5,
            HEX_PROXY_SEED=3,
        )
        config = {"settings": settings, "pages": pages, "out": str(out)}
        proc = _start(tmp_path, "run1", {**config, "held": {"waiting": 0, "parked": pages}})
        held = _wait_held(proc)
        sent, seconds, out1, err1 = _interrupt(proc)
        assert _stats(out1)["hex_proxy/retry/dropped_at_close"] in (None, 0)
        assert proc.returncode == 0, err1[-3000:]
        assert _clean(err1), err1[-3000:]
        assert [r for r in gateway.records if r.at >= sent] == []
        # Saved for the resume, and never with the credentials (promise 16).
        assert (tmp_path / "job" / HELD_FILE).exists()
        assert files_holding(tmp_path / "job", secret_forms(PASSWORD)) == []
        gateway.set_default_behavior(Behavior.normal())
        proc = _start(tmp_path, "run2", config)
        out2, err2 = proc.communicate(timeout=60)
        assert proc.returncode == 0, err2[-3000:]
        assert _clean(err2), err2[-3000:]
        assert _stats(out2)["finish_reason"] == "finished"
    fetched = out.read_text().splitlines() if out.exists() else []
    print(f"\npromise 15 (idle pause: {held}, exit {seconds:.2f} s): {len(fetched)} pages")
    assert sorted(fetched) == sorted(f"http://site.test/page/{i}" for i in range(pages))
