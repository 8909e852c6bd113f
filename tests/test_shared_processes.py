"""Promise 18 with real processes: one, two and three ``scrapy crawl`` processes on one
scrapy-redis queue and one Redis, through the loopback gateway with three sessions of twenty
always answering 429; and two processes with their own start URLs sharing only the pool.

Each process is a real ``scrapy crawl`` of a project written into the test's directory, with a
seed of its own. Redis is a real ``redis-server`` (``hexproxy_redis``); the gateway serves from
this process's threads. Run once, under the asyncio leg of the suite: the crawls are the
subprocesses', whatever reactor this process runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from scrapy_hexproxy.testing import Behavior, Gateway, RedisServer

pytest.importorskip("scrapy_redis", reason="scrapy-redis is installed beside .venv's Scrapy only")

pytestmark = pytest.mark.timeout(300)

BANNED = ("s001", "s003", "s004")
PAGES = 300
START_KEY = "pages:start_urls"

SPIDERS = '''
import scrapy
from scrapy_redis.spiders import RedisSpider


class Pages(RedisSpider):
    """Pages from the shared scrapy-redis queue; closes once it has been idle 2 s."""

    name = "pages"
    redis_key = "pages:start_urls"
    max_idle_time = 2
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def parse(self, response):
        yield {"url": response.url, "status": response.status}


class Own(scrapy.Spider):
    """Its own start URLs: ``-a host=... -a count=N``."""

    name = "own"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    async def start(self):
        for i in range(int(self.count)):
            yield scrapy.Request(f"http://{self.host}/page/{i}")

    def parse(self, response):
        yield {"url": response.url, "status": response.status}
'''

SETTINGS = """
BOT_NAME = "shared"
SPIDER_MODULES = ["shared.spiders"]
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "scrapy_hexproxy.HexProxyMiddleware": 350,
    "scrapy_hexproxy.SmartRetryMiddleware": 550,
}
ROBOTSTXT_OBEY = False
TELNETCONSOLE_ENABLED = False
DOWNLOAD_TIMEOUT = 5
LOG_LEVEL = "INFO"
# 50 requests a second per process: the processes crawl together, rather than one after
# another as their start-up times fall (the loopback gateway answers in well under 1 ms).
DOWNLOAD_DELAY = 0.02
RANDOMIZE_DOWNLOAD_DELAY = False
# With a download delay, requests wait in Scrapy's download slot after our process_request
# gave them a session, and go out on it even if it was benched meanwhile (alone, 16
# concurrent requests sent up to 20 to the banned sessions instead of 15): two at a time
# keeps that wait short, so what is measured is what sharing adds.
CONCURRENT_REQUESTS = 2
"""

SCRAPY_REDIS = {
    "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
    "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
}


@pytest.fixture(autouse=True)
def _once(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("subprocess crawls: run once, under the asyncio leg")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = shared.settings\n")
    package = tmp_path / "shared"
    (package / "spiders").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS)
    (package / "spiders" / "__init__.py").write_text(SPIDERS)
    return tmp_path


@pytest.fixture
def gateway():
    gateway = Gateway().start()
    for session in BANNED:
        gateway.set_behavior(session, Behavior.answer(429))
    yield gateway
    gateway.stop()


def run(
    project: Path,
    spider: str,
    settings: list[dict[str, Any]],
    args: list[dict[str, Any]] | None = None,
) -> list[list[dict[str, Any]]]:
    """Runs one ``scrapy crawl`` per settings dict, all at once; each one's items."""
    procs = []
    for i, extra in enumerate(settings):
        feed = project / f"items-{i}.jsonl"
        feed.unlink(missing_ok=True)
        command = [sys.executable, "-m", "scrapy", "crawl", spider, "-o", f"{feed}:jsonl"]
        for name, value in extra.items():
            command += ["-s", f"{name}={value}"]
        for name, value in (args[i] if args else {}).items():
            command += ["-a", f"{name}={value}"]
        env = {**os.environ, "PYTHONPATH": str(project)}
        log = open(project / f"log-{i}.txt", "w")
        procs.append((subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=log), log))
    for proc, log in procs:
        proc.wait(timeout=240)
        log.close()
    for i, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (project / f"log-{i}.txt").read_text()[-3000:]
    return [
        [json.loads(line) for line in (project / f"items-{i}.jsonl").read_text().splitlines()]
        for i in range(len(procs))
    ]


def hex_settings(gateway: Gateway, server: RedisServer, seed: int) -> dict[str, Any]:
    return {
        "HEX_PROXY_GATEWAY": gateway.url,
        "HEX_PROXY_USER": gateway.user,
        "HEX_PROXY_PASS": gateway.password,
        "HEX_PROXY_REDIS_URL": server.url,
        "HEX_PROXY_SEED": seed,
    }


def log_of(project: Path, i: int) -> str:
    return (project / f"log-{i}.txt").read_text()


def taken(log: str) -> int:
    """``hex_proxy/shared/facts_taken`` in the stats a process dumped at close."""
    found = re.search(r"'hex_proxy/shared/facts_taken': (\d+)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def test_promise_18_scrapy_redis_processes_fetch_every_page_once_and_pay_each_ban_once(
    project, gateway, hexproxy_redis
):
    client = redis.Redis.from_url(hexproxy_redis.url)
    to_banned: dict[int, int] = {}
    for processes in (1, 2, 3):
        client.flushall()
        gateway.reset()
        client.rpush(START_KEY, *[f"http://site.test/page/{i}" for i in range(PAGES)])
        settings = [
            {**hex_settings(gateway, hexproxy_redis, seed), **SCRAPY_REDIS,
             "REDIS_URL": hexproxy_redis.url}
            for seed in range(1, processes + 1)
        ]  # fmt: skip
        per_process = run(project, "pages", settings)
        assert all(per_process), "a process fetched nothing"
        items = [item for own in per_process for item in own]
        fetched = [item["url"] for item in items if item["status"] == 200]
        # Every page once, over all processes: none lost, none twice.
        assert sorted(fetched) == sorted(f"http://site.test/page/{i}" for i in range(PAGES))
        assert len(items) == PAGES
        answered = [r.target for r in gateway.records if r.outcome == "ok" and r.is_attempt]
        assert len(answered) == len(set(answered)) == PAGES
        to_banned[processes] = sum(gateway.count(s) for s in BANNED)
        if processes > 1:
            # Every process took part, and learnt the bans it did not make from the others.
            assert all(taken(log_of(project, i)) > 0 for i in range(processes))
    client.close()
    print(f"requests to the banned sessions by 1, 2, 3 processes: {to_banned}")
    assert to_banned[1] >= 15  # alone: five failures each before the ban
    assert to_banned[2] <= 1.3 * to_banned[1]
    assert to_banned[3] <= 1.3 * to_banned[1]


def test_promise_18_processes_with_their_own_start_urls_share_only_the_pool(
    project, gateway, hexproxy_redis
):
    hosts = ("a.test", "b.test")
    alone = run(
        project,
        "own",
        [{**hex_settings(gateway, hexproxy_redis, 1), "HEX_PROXY_REDIS_KEY": "alone"}],
        [{"host": "a.test", "count": PAGES}],
    )
    assert len([i for i in alone[0] if i["status"] == 200]) == PAGES
    by_one = sum(gateway.count(s) for s in BANNED)
    gateway.reset()
    items = run(
        project,
        "own",
        [hex_settings(gateway, hexproxy_redis, seed) for seed in (1, 2)],
        [{"host": host, "count": PAGES // 2} for host in hosts],
    )
    for host, own in zip(hosts, items):
        assert sorted(i["url"] for i in own if i["status"] == 200) == sorted(
            f"http://{host}/page/{n}" for n in range(PAGES // 2)
        )
    shared = sum(gateway.count(s) for s in BANNED)
    print(f"requests to the banned sessions: alone {by_one}, two processes sharing {shared}")
    assert shared <= 1.3 * by_one
