"""`make demo-shared`: two Scrapy processes crawl through the bundled loopback gateway, where
3 of 20 sessions always answer 429; first each with a pool of its own, then sharing one pool
on a local Redis (HEX_PROXY_REDIS_URL). Prints what the bans cost each way, side by side.

The Redis is a real redis-server (Debian's package) started on a free loopback port and
stopped after; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys

PAGES = 150  # per process
BANNED = ("s001", "s003", "s004")


def worker(host: str, gateway_url: str, redis_url: str, seed: int) -> None:
    """One process of the crawl: PAGES pages of ``host``; prints its counts as JSON."""
    import scrapy
    from scrapy.crawler import CrawlerProcess

    fetched = []

    class Shop(scrapy.Spider):
        name = "shop"
        custom_settings = {"HTTPERROR_ALLOW_ALL": True}

        async def start(self):
            for i in range(PAGES):
                yield scrapy.Request(f"http://{host}/item/{i}")

        def start_requests(self):  # Scrapy < 2.13
            return (scrapy.Request(f"http://{host}/item/{i}") for i in range(PAGES))

        def parse(self, response):
            fetched.append(response.status)

    settings = {
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 350,
            "scrapy_hexproxy.SmartRetryMiddleware": 550,
        },
        "HEX_PROXY_GATEWAY": gateway_url,
        "HEX_PROXY_USER": "demo",
        "HEX_PROXY_PASS": "demo-pass",
        "HEX_PROXY_SEED": seed,
        "DOWNLOAD_DELAY": 0.02,  # both processes crawl at once, not one after the other
        "RANDOMIZE_DOWNLOAD_DELAY": False,
        # Few waiting in the download slot with a session given before a ban (README).
        "CONCURRENT_REQUESTS": 2,
        "LOG_LEVEL": "ERROR",
        "TELNETCONSOLE_ENABLED": False,
    }
    if redis_url:
        settings["HEX_PROXY_REDIS_URL"] = redis_url
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(Shop)
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats()
    print(
        json.dumps(
            {
                "pages": fetched.count(200),
                "blacklisted": stats.get("hex_proxy/blacklisted", 0),
                "taken": stats.get("hex_proxy/shared/bans_taken", 0),
            }
        )
    )


def crawl_twice_at_once(gateway, redis_url: str) -> dict:
    """Two worker processes at once; what they fetched and what the banned sessions got."""
    gateway.reset()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", host, gateway.url, redis_url, str(seed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed, host in ((1, "a.test"), (2, "b.test"))
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "pages": sum(r["pages"] for r in results),
        "to_banned": sum(gateway.count(s) for s in BANNED),
        "benched": sum(r["blacklisted"] + r["taken"] for r in results),
    }


def main() -> int:
    from scrapy_hexproxy.testing import Behavior, Gateway, RedisServer

    try:
        redis = RedisServer().start()
    except RuntimeError as exc:
        print(f"make demo-shared needs a redis-server: {exc}")
        return 1
    gateway = Gateway(user="demo", password="demo-pass").start()
    for session in BANNED:
        gateway.set_behavior(session, Behavior.answer(429))
    print(
        f"Gateway on {gateway.url}, Redis on 127.0.0.1:{redis.port}. Two processes crawl"
        f" {PAGES} pages each through a pool of 20 sessions;"
    )
    print(f"{', '.join(BANNED)} always answer 429 (blacklisted after 5 failures in a row).")
    try:
        alone = crawl_twice_at_once(gateway, "")
        shared = crawl_twice_at_once(gateway, redis.url)
    finally:
        gateway.stop()
        redis.stop()
    rows = [
        ("pages fetched", alone["pages"], shared["pages"]),
        ("requests to the banned sessions", alone["to_banned"], shared["to_banned"]),
        # Shared, a process benches a session on the failures of both, or takes the other's ban.
        ("sessions benched, both processes", alone["benched"], shared["benched"]),
    ]
    print()
    print(f"{'':36s}{'each alone':>12s}{'shared':>12s}")
    for name, a, b in rows:
        print(f"{name:36s}{a:12d}{b:12d}")
    ratio = shared["to_banned"] / alone["to_banned"] if alone["to_banned"] else 0.0
    print(f"\nShared, the bans cost {ratio:.2f}x what they cost two processes alone.")
    ok = alone["pages"] == shared["pages"] == 2 * PAGES
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
