"""Promise 18: one pool for every process of a crawl, shared on a real Redis.

Each crawl here is one process of the shared pool: its own crawler, core and connections to
Redis, with an origin of its own (they meet only through Redis, as processes do). Several crawls
run in one reactor where a test needs them at once; tests/test_shared_processes.py runs real
``scrapy crawl`` processes. Redis is a real ``redis-server`` on a free loopback port
(``hexproxy_redis``, the pytest plugin's fixture), killed and started again for the faults.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import pytest_twisted
import redis
from twisted.internet import defer, task

from scrapy_hexproxy import HexProxyMiddleware, _core
from scrapy_hexproxy._runtime import AUTH_FAILED_REASON, Runtime
from scrapy_hexproxy._settings import HexProxyConfigError
from scrapy_hexproxy._shared import SharedPool
from scrapy_hexproxy.testing import Behavior, RedisServer

from .conftest import PagesSpider, urls
from .test_lifecycle import secret_forms

BANNED = ("s001", "s003", "s004")
REDIS_PASSWORD = "redis-s3cret-PASSWORD-18"


def _settings(base_settings: dict[str, Any], redis_url: str, **more: Any) -> dict[str, Any]:
    return {
        **base_settings,
        "HEX_PROXY_REDIS_URL": redis_url,
        "HEX_PROXY_SESSION_POOL_SIZE": 20,
        "HEX_PROXY_MAX_FAILURES": 3,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 300,
        "LOG_LEVEL": "INFO",
        **more,
    }


async def until(condition: Any, timeout: float = 1.0, step: float = 0.005) -> float:
    """Waits (without blocking the reactor) until ``condition()`` holds; the seconds it took.
    Fails the test past ``timeout``."""
    from twisted.internet import reactor

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await task.deferLater(reactor, step, lambda: None)
    return time.monotonic() - start


class Process:
    """One process's share of the pool, driven through its core (no crawl): the facts it
    takes are applied by the core as a runtime would."""

    def __init__(self, server: RedisServer, **settings: Any) -> None:
        self.core = _core.Core(
            user="USER", password="PASS", manual_clock=True, seed=1, max_failures=5, **settings
        )
        self.flags: list[tuple[int, str, int]] = []
        self.credentials_stop = 0
        self.pool = SharedPool(
            self.core,
            server.url,
            None,
            "127.0.0.1:9",
            cooldown=300,
            on_facts=self._take,
            on_credentials=self._stop,
        )
        self.pool.start()

    def _take(self, facts: list[Any]) -> None:
        for number, host, what, value in facts:
            self.flags.append((number, what, self.core.take_fact(number, host, what, value)))

    def _stop(self) -> None:
        self.credentials_stop += 1

    def fail(self, number: int, times: int = 1) -> None:
        for _ in range(times):
            self.core.record(number, status=503)

    def current_id(self, slot: int) -> str:
        """The id ``slot`` goes by now (picked until it comes up; the picks are seeded)."""
        for _ in range(10_000):
            number = self.core.pick()
            if number is not None and self.core.slot(number) == slot:
                return self.core.session_id(number)
        raise AssertionError(f"slot {slot} never picked")

    def close(self) -> dict[str, int]:
        return self.pool.close()


@pytest.fixture
def processes(hexproxy_redis: RedisServer):
    made: list[Process] = []

    def make(**settings: Any) -> Process:
        made.append(Process(hexproxy_redis, **settings))
        return made[-1]

    yield make
    for process in made:
        process.close()


def commands(server: RedisServer) -> dict[str, int]:
    """Redis's count of each command it ran, by name."""
    client = redis.Redis.from_url(server.url)
    stats = client.info("commandstats")
    client.close()
    return {name.removeprefix("cmdstat_"): int(info["calls"]) for name, info in stats.items()}


# -- at start --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_promise_18_redis_unreachable_at_start_the_crawl_does_not_start(
    crawl, base_settings, hexproxy_gateway, all_logs
):
    with RedisServer() as server:
        port = server.port  # a port nothing listens on once the server is gone
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    with pytest.raises(HexProxyConfigError) as info:
        await crawl(_settings(base_settings, url), urls(5))
    message = str(info.value)
    assert message.startswith("HEX_PROXY_REDIS_URL: Redis at 127.0.0.1:")
    assert "the crawl does not start" in message
    assert REDIS_PASSWORD not in message and REDIS_PASSWORD not in all_logs.text
    assert hexproxy_gateway.records == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:6379", "must start with redis://, rediss:// or unix://"),
        (6379, "must be a URL string"),
        (f"{REDIS_PASSWORD}@127.0.0.1://x", "got something else"),
    ],
)
def test_promise_18_a_bad_redis_url_names_the_setting_and_never_echoes_it(
    hook_crawler, value, expected
):
    with pytest.raises(HexProxyConfigError) as info:
        HexProxyMiddleware.from_crawler(hook_crawler(HEX_PROXY_REDIS_URL=value))
    assert str(info.value).startswith("HEX_PROXY_REDIS_URL ")
    assert expected in str(info.value)
    assert REDIS_PASSWORD not in str(info.value)


def test_promise_18_the_key_is_derived_from_the_configuration_never_the_password(
    hexproxy_redis,
):
    def key(**settings: Any) -> str:
        core = _core.Core(**{"user": "USER", "password": "PASS", **settings})
        return core.shared_key("127.0.0.1:8000")

    assert key() == key(password="other")
    assert len({key(), key(user="OTHER"), key(pool_size=10)}) == 3
    assert _core.Core(user="USER", password="PASS").shared_key("127.0.0.1:8001") != key()
    assert "PASS" not in key() and "USER" not in key()


# -- what is shared ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_promise_18_a_ban_is_honoured_by_every_process_within_1_s(processes):
    a, b, c = processes(), processes(), processes()
    delays = []
    for banned, number in enumerate((2, 5, 9), 1):
        a.fail(number, 5)
        delays.append(
            await until(lambda k=banned: b.core.cooling_count == c.core.cooling_count == k)
        )
    assert max(delays) <= 1.0
    # Each took the ban or, first, made it on the count of all (five failures): never both.
    for process in (b, c):
        stats = process.core.stats()
        taken = stats.get("hex_proxy/shared/bans_taken", 0)
        assert taken + stats.get("hex_proxy/blacklisted", 0) == 3


@pytest_twisted.ensureDeferred
async def test_promise_18_a_failure_run_is_counted_across_processes(processes, hexproxy_redis):
    a, b = processes(), processes()
    client = redis.Redis.from_url(hexproxy_redis.url)
    run_key = f"{a.pool.key}:run:7"

    a.fail(7, 2)
    await until(lambda: client.get(run_key) == b"2")
    b.fail(7, 2)
    await until(lambda: client.get(run_key) == b"4")
    # Four failures in all, none banned: neither process has reached five alone.
    assert a.core.cooling_count == b.core.cooling_count == 0
    a.fail(7)
    await until(lambda: a.core.cooling_count == 1 and b.core.cooling_count == 1)
    await until(lambda: client.get(run_key) is None)  # the ban ends the run
    # A success ends a run everywhere: two failures, a success, then four are no ban.
    b.fail(11, 2)
    # Once a knows of the run (b's two failures reached it), a's success ends it.
    await until(lambda: [n for n, what, _ in a.flags if what == "run"].count(11) == 2)
    a.core.record(11, status=200)
    await until(lambda: client.get(f"{a.pool.key}:run:11") is None)
    await until(lambda: (11, "cleared", 0) in b.flags)
    b.fail(11, 4)
    await until(lambda: client.get(f"{a.pool.key}:run:11") == b"4")
    assert a.core.cooling_count == b.core.cooling_count == 1
    client.close()


@pytest_twisted.ensureDeferred
async def test_promise_18_keys_expire_with_the_bans_they_hold(processes, hexproxy_redis):
    a = processes()
    client = redis.Redis.from_url(hexproxy_redis.url)
    a.fail(4, 5)
    ban_key = f"{a.pool.key}:ban:4"
    await until(lambda: client.exists(ban_key) == 1)
    ttl = client.pttl(ban_key)
    assert 299_000 <= ttl <= 300_000
    end = int(client.get(ban_key))
    assert abs(end - (time.time() * 1000 + ttl)) < 1000
    # A run key lives a cooldown after its last failure.
    a.fail(6)
    await until(lambda: client.exists(f"{a.pool.key}:run:6") == 1)
    assert 299_000 <= client.pttl(f"{a.pool.key}:run:6") <= 300_000
    client.close()


@pytest_twisted.ensureDeferred
async def test_promise_18_a_process_that_starts_later_takes_the_bans_in_force(processes):
    a = processes()
    a.fail(3, 5)
    a.fail(8, 2)
    await until(lambda: a.pool.counts.failures_sent == 7)
    b = processes()  # reads what is in force when it connects, before its first pick
    assert b.core.cooling_count == 1
    b.fail(8, 3)  # 2 + 3: five in all
    await until(lambda: b.core.cooling_count == 2)


@pytest_twisted.ensureDeferred
async def test_promise_18_rotated_ids_are_unique_over_every_process(processes):
    a = processes(on_blacklist="rotate")
    b = processes(on_blacklist="rotate")
    a.fail(1, 5)
    # b's slot 1 is banned too and takes a new id, of its own numbering.
    await until(lambda: any(flags & _core.ROTATED for _, _, flags in b.flags))
    new_a, new_b = a.current_id(1), b.current_id(1)
    assert "s001" not in (new_a, new_b) and new_a != new_b
    assert a.core.successor_id(1) != b.core.successor_id(1)


@pytest_twisted.ensureDeferred
async def test_promise_18_a_healthy_crawl_costs_no_redis_round_trip(
    crawl, base_settings, hexproxy_redis
):
    before = commands(hexproxy_redis)
    result = await crawl(_settings(base_settings, hexproxy_redis.url), urls(200))
    after = commands(hexproxy_redis)
    assert len(result.pages) == 200
    ran = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # Start (a number, the description, three scripts, what is in force), the subscription,
    # how many share, each connection's HELLO and CLIENT SETINFO (this test's own INFO
    # too): a fixed handful, whatever the number of pages; no script call.
    assert ran.get("evalsha", 0) == 0 and ran.get("publish", 0) == 0
    assert sum(ran.values()) <= 16, ran
    stats = result.hex_stats()
    assert stats["hex_proxy/shared/failures_sent"] == 0


# -- crawls --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_promise_18_two_crawls_pay_a_ban_once(
    crawl, base_settings, hexproxy_gateway, hexproxy_redis
):
    for session in BANNED:
        hexproxy_gateway.set_behavior(session, Behavior.answer(429))
    settings = _settings(base_settings, hexproxy_redis.url, HEX_PROXY_SESSION_POOL_SIZE=6)
    first = await crawl(settings, urls(60))
    alone = sum(hexproxy_gateway.count(s) for s in BANNED)
    assert first.hex_stats()["hex_proxy/blacklisted"] == 3
    hexproxy_gateway.reset()
    # A second process of the crawl, while the bans are in force: it sends them nothing.
    second = await crawl(settings, urls(60))
    assert len([p for p in second.pages if p.status == 200]) == 60
    assert sum(hexproxy_gateway.count(s) for s in BANNED) == 0
    assert second.hex_stats()["hex_proxy/shared/facts_taken"] >= 3
    assert alone >= 9


@pytest_twisted.ensureDeferred
async def test_promise_18_concurrent_crawls_share_their_bans(
    crawl, base_settings, hexproxy_gateway, hexproxy_redis
):
    for session in BANNED:
        hexproxy_gateway.set_behavior(session, Behavior.answer(429))
    # HEX_PROXY_MAX_FAILURES at its default, 5: the trial.
    settings = _settings(
        base_settings, hexproxy_redis.url, CONCURRENT_REQUESTS=4, HEX_PROXY_MAX_FAILURES=5
    )

    def to_banned() -> int:
        return sum(hexproxy_gateway.count(s) for s in BANNED)

    # One process alone (a pool of its own on Redis), then two at once sharing one.
    alone = await crawl({**settings, "HEX_PROXY_REDIS_KEY": "alone"}, urls(240))
    assert alone.hex_stats()["hex_proxy/blacklisted"] == 3
    by_one = to_banned()
    hexproxy_gateway.reset()
    # Processes do not pick alike (a seed each; unseeded, the OS seeds each).
    results = await defer.gatherResults(
        [
            defer.ensureDeferred(crawl({**settings, "HEX_PROXY_SEED": seed}, urls(120, host=h)))
            for seed, h in ((7, "a.test"), (8, "b.test"))
        ]
    )
    assert all(len([p for p in r.pages if p.status == 200]) == 120 for r in results)
    # Unshared, two processes would pay each ban twice.
    assert to_banned() <= 1.3 * by_one, (to_banned(), by_one)


@pytest_twisted.ensureDeferred
async def test_promise_18_a_credentials_stop_in_one_process_stops_the_others(
    crawl, base_settings, hexproxy_gateway, hexproxy_redis, caplog
):
    settings = _settings(base_settings, hexproxy_redis.url, DOWNLOAD_DELAY=0.05)
    wrong = {**settings, "HEX_PROXY_PASS": "wrong"}
    slow = defer.ensureDeferred(crawl(settings, urls(400)))
    from twisted.internet import reactor

    await task.deferLater(reactor, 0.3, lambda: None)
    rejected = await crawl(wrong, urls(10))
    started = time.monotonic()
    stopped = await slow
    assert rejected.finish_reason == AUTH_FAILED_REASON
    assert stopped.finish_reason == AUTH_FAILED_REASON
    assert time.monotonic() - started < 2.0
    assert len(stopped.pages) < 400
    assert any("another process sharing the pool" in r.getMessage() for r in caplog.records)


# -- faults ----------------------------------------------------------------------------------


class RedisGoesAway(PagesSpider):
    """After its 10th page Redis is killed and three sessions start answering 429; after its
    40th Redis is started again (empty, on the same port): Redis lost and back mid-crawl, the
    bans made while it was away."""

    server: RedisServer
    gateway: Any

    def parse(self, response: Any, **kwargs: Any) -> Any:
        self.record(response)
        done = len(self.result.pages)
        if done == 10:
            self.server.stop()
            for session in BANNED:
                self.gateway.set_behavior(session, Behavior.answer(429))
        elif done == 40:
            self.server.start()


@pytest_twisted.ensureDeferred
async def test_promise_18_redis_lost_mid_crawl_goes_on_alone_and_shares_again_when_back(
    crawl, base_settings, hexproxy_gateway, all_logs
):
    server = RedisServer(password=REDIS_PASSWORD).start()
    try:
        RedisGoesAway.server = server
        RedisGoesAway.gateway = hexproxy_gateway
        settings = _settings(
            base_settings,
            server.url,
            HEX_PROXY_SESSION_POOL_SIZE=6,
            DOWNLOAD_DELAY=0.02,
            CONCURRENT_REQUESTS=2,
        )
        result = await crawl(settings, urls(80), spider=RedisGoesAway)
        assert sorted(p.url for p in result.pages if p.status == 200) == sorted(urls(80))
        assert result.finish_reason == "finished"
        lost = [r for r in all_logs.records if "lost Redis at 127.0.0.1" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.WARNING
        assert any("is back" in r.getMessage() for r in all_logs.records)
        stats = result.hex_stats()
        assert stats["hex_proxy/shared/redis_lost"] == 1
        assert stats["hex_proxy/blacklisted"] == 3
        # Redis came back empty; the process published its bans in force again.
        client = redis.Redis.from_url(server.url)
        bans = list(client.scan_iter(match="hexproxy:*:ban:*"))
        client.close()
        assert len(bans) == 3
        text = all_logs.text.encode()
        assert not any(form in text for form in secret_forms(REDIS_PASSWORD))
        assert not any(REDIS_PASSWORD in str(v) for v in result.stats.values())
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_promise_18_the_redis_password_is_in_no_log_line_or_stat(
    crawl, base_settings, hexproxy_gateway, all_logs
):
    with RedisServer(password=REDIS_PASSWORD) as server:
        for session in BANNED:
            hexproxy_gateway.set_behavior(session, Behavior.answer(503))
        settings = _settings(
            base_settings, server.url, HEX_PROXY_LOGSTATS_INTERVAL=1, HEX_PROXY_SESSION_POOL_SIZE=6
        )
        result = await crawl(settings, urls(60))
        assert result.hex_stats()["hex_proxy/shared/bans_sent"] == 3
        text = all_logs.text.encode()
        assert not any(form in text for form in secret_forms(REDIS_PASSWORD))
        assert not any(REDIS_PASSWORD in repr(v) for v in result.stats.values())
        with pytest.raises(HexProxyConfigError) as info:
            wrong = server.url.replace(REDIS_PASSWORD, REDIS_PASSWORD + "x")
            await crawl(_settings(base_settings, wrong), urls(1))
        assert REDIS_PASSWORD not in str(info.value)
        assert "HEX_PROXY_REDIS_URL" in str(info.value)


def test_promise_18_sharing_needs_the_redis_package_and_says_so(monkeypatch, hexproxy_redis):
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)
    core = _core.Core(user="USER", password="PASS")
    with pytest.raises(HexProxyConfigError, match=r"pip install 'scrapy-hexproxy\[redis\]'"):
        SharedPool(
            core, hexproxy_redis.url, None, "", cooldown=1, on_facts=print, on_credentials=print
        )


@pytest_twisted.ensureDeferred
async def test_promise_18_the_health_line_shows_the_shared_figures(
    processes, hexproxy_redis, hook_crawler, caplog
):
    a = processes()
    a.fail(3, 5)
    client = redis.Redis.from_url(hexproxy_redis.url)
    await until(lambda: client.exists(f"{a.pool.key}:ban:3") == 1)
    client.close()
    crawler = hook_crawler(
        HEX_PROXY_REDIS_URL=hexproxy_redis.url,
        HEX_PROXY_REDIS_KEY=a.pool.key,
        HEX_PROXY_LOGSTATS_INTERVAL=1,
    )
    HexProxyMiddleware.from_crawler(crawler)
    runtime = Runtime.of(crawler)
    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    runtime.health.log()
    assert runtime.shared is not None
    line = caplog.records[-1].getMessage()
    assert line.startswith("hex_proxy: 19 live, 1 cooling sessions")
    assert line.endswith(
        f"; shared on Redis 127.0.0.1:{hexproxy_redis.port}/0 (up): 1 bans in force, 1 processes"
    )
    runtime.shared.close()
