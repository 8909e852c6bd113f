"""The shared pool on a real Redis (HEX_PROXY_REDIS_URL): what sharing costs and how fast it is.

1. **Ban delay**: a child process bans sessions one at a time (five failures each, through its
   core and its shared pool, as a crawl's hooks would); this process, sharing the pool, notes
   when each ban reaches its own core (a 1 ms poll). Both read the same wall clock.
2. **Redis commands per 1,000 requests**: real crawls in child processes (CrawlerProcess through
   the loopback gateway, a pool of 20): a healthy crawl, and one where 3 of 20 sessions always
   answer 429. Counted twice: the commands the process sent (its ``hex_proxy/shared/
   redis_commands``; a script call is one round trip), and what Redis ran (INFO commandstats,
   before and after, each command inside a script counted; INFO and the connections'
   CLIENT SETINFO not counted). Start-up included.
3. **Redis memory**: ``used_memory`` before and after 10,000 sessions are banned through the real
   path (bans) and after 10,000 more have an open failure run (runs), per key.

Prints JSON lines (``--table``: a table). Needs ``redis-server`` on PATH and the redis package.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

BANS = 60
BAN_EVERY = 0.05
COOLDOWN = 600


def _core(**settings: Any) -> Any:
    from scrapy_hexproxy import _core

    return _core.Core(user="USER", password="PASS", manual_clock=True, **settings)


def _shared(core: Any, url: str, on_facts: Any) -> Any:
    from scrapy_hexproxy._shared import SharedPool

    pool = SharedPool(
        core, url, "bench", "127.0.0.1:9", cooldown=COOLDOWN, on_facts=on_facts,
        on_credentials=lambda: None,
    )  # fmt: skip
    pool.start()
    return pool


# ----------------------------------------------------------------------------- 1. ban delay


def banning_child(url: str) -> int:
    """Bans sessions 0 .. BANS-1, one every BAN_EVERY s; prints each ban's wall time."""
    from twisted.internet import reactor, task

    core = _core(pool_size=BANS + 10, max_failures=5)
    pool = _shared(core, url, lambda facts: None)
    times = []

    def ban(number: int) -> None:
        times.append(time.time())
        for _ in range(5):
            core.record(number, status=503)

    calls = [task.deferLater(reactor, 0.5 + i * BAN_EVERY, ban, i) for i in range(BANS)]
    reactor.callLater(0.5 + BANS * BAN_EVERY + 0.5, reactor.stop)
    reactor.run()
    pool.close()
    del calls
    print(json.dumps({"banned_at": times}), flush=True)
    return 0


def ban_delay(url: str) -> dict[str, Any]:
    from twisted.internet import reactor, task

    core = _core(pool_size=BANS + 10, max_failures=5)

    def take(facts: list[Any]) -> None:
        for fact in facts:
            core.take_fact(*fact)

    pool = _shared(core, url, take)
    seen: list[float] = []

    def look() -> None:
        while core.cooling_count > len(seen):
            seen.append(time.time())

    child = subprocess.Popen(
        [sys.executable, __file__, "--ban-child", url], stdout=subprocess.PIPE, text=True
    )
    loop = task.LoopingCall(look)
    loop.start(0.001)

    def done() -> None:
        if child.poll() is None:
            reactor.callLater(0.1, done)
        else:
            loop.stop()
            reactor.stop()

    reactor.callLater(0.1, done)
    reactor.run()
    pool.close()
    out, _ = child.communicate()
    banned_at = json.loads(out.strip().splitlines()[-1])["banned_at"]
    if len(seen) != len(banned_at):
        raise RuntimeError(f"{len(banned_at)} bans made, {len(seen)} seen")
    delays_ms = [(s - b) * 1000 for s, b in zip(seen, banned_at)]
    return {
        "bench": "ban delay",
        "bans": len(delays_ms),
        "median_ms": statistics.median(delays_ms),
        "max_ms": max(delays_ms),
    }


# ------------------------------------------------------------------ 2. commands per requests


def crawl_child(gateway: str, url: str, pages: int) -> int:
    from scrapy import Request, Spider
    from scrapy.crawler import CrawlerProcess

    class Bench(Spider):
        name = "shared-bench"
        custom_settings = {"HTTPERROR_ALLOW_ALL": True}

        async def start(self) -> Any:
            for i in range(pages):
                yield Request(f"http://shop.test/item/{i}")

        def parse(self, response: Any) -> None:
            pass

    process = CrawlerProcess(
        {
            "DOWNLOADER_MIDDLEWARES": {
                "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
                "scrapy_hexproxy.HexProxyMiddleware": 350,
                "scrapy_hexproxy.SmartRetryMiddleware": 550,
            },
            "HEX_PROXY_GATEWAY": gateway,
            "HEX_PROXY_USER": "USER",
            "HEX_PROXY_PASS": "PASS",
            "HEX_PROXY_REDIS_URL": url,
            "CONCURRENT_REQUESTS": 16,
            "LOG_LEVEL": "ERROR",
            "TELNETCONSOLE_ENABLED": False,
        }
    )
    crawler = process.create_crawler(Bench)
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats()
    print(
        json.dumps(
            {
                "requests": stats.get("downloader/request_count", 0),
                "round_trips": stats.get("hex_proxy/shared/redis_commands", 0),
            }
        ),
        flush=True,
    )
    return 0


def commands(server: Any) -> int:
    import redis

    client = redis.Redis.from_url(server.url)
    stats = client.info("commandstats")
    client.close()
    # Not counted: INFO (this script's) and CLIENT SETINFO (every connection's handshake).
    skip = ("cmdstat_info", "cmdstat_client|setinfo")
    return sum(int(info["calls"]) for name, info in stats.items() if name not in skip)


def commands_per_1000(server: Any, pages: int) -> list[dict[str, Any]]:
    from scrapy_hexproxy.testing import Behavior, Gateway

    rows = []
    for scenario, banned in (("healthy", ()), ("3 of 20 sessions answer 429", BANNED)):
        gateway = Gateway().start()
        for session in banned:
            gateway.set_behavior(session, Behavior.answer(429))
        server.command("FLUSHALL")
        before = commands(server)
        out = subprocess.run(
            [sys.executable, __file__, "--crawl-child", gateway.url, server.url, str(pages)],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout  # fmt: skip
        ran = commands(server) - before
        gateway.stop()
        child = json.loads(out.strip().splitlines()[-1])
        requests = child["requests"]
        rows.append(
            {
                "bench": "redis commands",
                "scenario": scenario,
                "requests": requests,
                # The client's commands (a script call is one), start-up included; and what
                # Redis ran for them (each command inside a script counted).
                "round_trips": child["round_trips"],
                "commands": ran,
                "per_1000": ran * 1000 / requests,
            }
        )
    return rows


BANNED = ("s001", "s003", "s004")


# ----------------------------------------------------------------------------- 3. memory


def memory(server: Any) -> dict[str, Any]:
    import redis

    server.command("FLUSHALL")
    client = redis.Redis.from_url(server.url)
    n = 10_000
    core = _core(pool_size=2 * n, max_failures=2)
    pool = _shared(core, server.url, lambda facts: None)

    def used() -> int:
        return int(client.info("memory")["used_memory"])

    def wait(count: int, kind: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(list(client.scan_iter(match=f"bench:{kind}:*", count=5000))) >= count:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{kind} keys did not all arrive")

    base = used()
    for number in range(n):
        core.record(number, status=503)
        core.record(number, status=503)
    wait(n, "ban")
    banned = used()
    for number in range(n, 2 * n):
        core.record(number, status=503)
    wait(n, "run")
    running = used()
    ban_key = client.memory_usage(f"bench:ban:{n - 1}")
    run_key = client.memory_usage(f"bench:run:{2 * n - 1}")
    pool.close()
    client.close()
    return {
        "bench": "redis memory",
        "keys": n,
        "bytes_per_ban": (banned - base) / n,
        "bytes_per_run": (running - banned) / n,
        "memory_usage_ban_key": ban_key,
        "memory_usage_run_key": run_key,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2_000)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--ban-child", help=argparse.SUPPRESS)
    parser.add_argument("--crawl-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ban_child:
        return banning_child(args.ban_child)
    if args.crawl_child:
        gateway, url, pages = args.crawl_child
        return crawl_child(gateway, url, int(pages))

    from scrapy_hexproxy.testing import RedisServer

    with RedisServer() as server:
        server.command("FLUSHALL")
        rows = [ban_delay(server.url)]
        rows += commands_per_1000(server, args.pages)
        rows.append(memory(server))
    for row in rows:
        if args.table:
            print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row.items()))  # fmt: skip
        else:
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
