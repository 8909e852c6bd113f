"""End to end: the CPU of a real Scrapy crawl through the gateway, ours against Scrapy alone.

A crawl is ``PAGES`` (default 2,000) plain-http requests ``http://shop.test/item/N`` through the
loopback gateway of ``scrapy_hexproxy.testing``, which answers as the origin itself and never
connects anywhere: only ``127.0.0.1`` is ever contacted. Two variants, identical but for the
proxying:

- ``fixed``: Scrapy alone with one fixed proxy. No hexproxy middleware; every request carries
  ``meta["proxy"] = "http://USER-session-fixed:PASS@127.0.0.1:PORT"`` and Scrapy's own
  ``HttpProxyMiddleware`` turns the credentials into the header. Scrapy's ``RetryMiddleware``
  stays as it is.
- ``ours``: ``HexProxyMiddleware`` (350) and ``SmartRetryMiddleware`` (550) in place of
  Scrapy's ``RetryMiddleware``, with a pool of 100,000 sessions.
- ``shared``: ``ours`` sharing its pool on a real Redis (``HEX_PROXY_REDIS_URL``; a
  ``redis-server`` this script starts on a free loopback port and stops, emptied before each
  crawl), as one process of many would.

Both use the same spider (it yields the requests, ``parse`` only counts), ``CrawlerProcess``,
Scrapy's default reactor, ``CONCURRENT_REQUESTS = 16``, no cookies, no cache, no robots.txt.

Method, fixed so that runs compare:
- the gateway runs in its own process for the whole benchmark; its CPU is not counted;
- each crawl runs in its own child process (``--child MODE``), so no reactor, setting or
  environment state leaks from one crawl to the next; proxy variables are removed from the
  children's environment;
- a child counts its own CPU time (``time.process_time()``, all its threads) from just before
  ``process.crawl()`` to just after ``process.start()`` returns. Building the middlewares and
  the 100,000-session core is counted; importing the modules of the downloader middlewares is
  not, for either variant: they are imported before the clock starts. (Left in, the count
  would include compiling our modules from source when no bytecode cache can be written, as
  under ``PYTHONDONTWRITEBYTECODE`` with the editable install ``make bench`` uses: about 15 ms,
  0.5% of a crawl, that an installed wheel never pays.) It checks that every page was parsed
  and fails otherwise;
- one warm-up crawl of each variant is discarded, then ``ROUNDS`` rounds each run both
  variants, alternating which goes first (ABBA...); the median CPU time per variant is reported,
  with its ratio to ``fixed`` and the min/max of the runs.

Prints JSON lines for ``benches/run.py``, or a table with ``--table``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

USER = "USER"
PASSWORD = "PASS"
POOL_SIZE = 100_000
MODES = ("fixed", "ours", "shared")
VARIANTS = {
    "fixed": "fixed proxy (Scrapy alone)",
    "ours": f"ours, {POOL_SIZE} sessions",
    "shared": "ours, sharing on Redis",
}
#: The children's Redis URL (mode ``shared``), in their environment.
REDIS_VAR = "HEXPROXY_BENCH_REDIS_URL"
CHILD_TIMEOUT = 300.0
GATEWAY_START_TIMEOUT = 30.0
GATEWAY_STOP_TIMEOUT = 10.0
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# --------------------------------------------------------------------------- child: one crawl


def crawl(mode: str, gateway: str, pages: int) -> dict[str, Any]:
    """Run one crawl in this process; the CPU and wall time it took and the pages parsed."""
    from scrapy import Request, Spider
    from scrapy.crawler import CrawlerProcess

    settings: dict[str, Any] = {
        "CONCURRENT_REQUESTS": 16,
        "LOG_LEVEL": "ERROR",
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "COOKIES_ENABLED": False,
        "HTTPCACHE_ENABLED": False,
    }
    proxy = None
    if mode in ("ours", "shared"):
        settings.update(
            {
                "DOWNLOADER_MIDDLEWARES": {
                    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
                    "scrapy_hexproxy.HexProxyMiddleware": 350,
                    "scrapy_hexproxy.SmartRetryMiddleware": 550,
                },
                "HEX_PROXY_GATEWAY": gateway,
                "HEX_PROXY_USER": USER,
                "HEX_PROXY_PASS": PASSWORD,
                "HEX_PROXY_SESSION_POOL_SIZE": POOL_SIZE,
            }
        )
        if mode == "shared":
            settings["HEX_PROXY_REDIS_URL"] = os.environ[REDIS_VAR]
    elif mode == "fixed":
        netloc = urlsplit(gateway).netloc
        proxy = f"http://{USER}-session-fixed:{PASSWORD}@{netloc}"
    else:
        raise ValueError(f"unknown mode {mode!r}")

    class BenchSpider(Spider):
        name = "e2e"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.parsed = 0

        def _requests(self) -> Any:
            meta = {} if proxy is None else {"proxy": proxy}
            for i in range(pages):
                yield Request(f"http://shop.test/item/{i}", meta=dict(meta))

        async def start(self) -> Any:  # Scrapy >= 2.13
            for request in self._requests():
                yield request

        def start_requests(self) -> Any:  # older Scrapy
            return self._requests()

        def parse(self, response: Any) -> None:
            self.parsed += 1

    process = CrawlerProcess(settings)
    crawler = process.create_crawler(BenchSpider)
    import_middlewares(crawler.settings)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    process.crawl(crawler)
    process.start()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    parsed = crawler.spider.parsed if crawler.spider is not None else 0
    return {"mode": mode, "cpu_s": cpu, "wall_s": wall, "pages": parsed}


def import_middlewares(settings: Any) -> None:
    """Imports the module of every enabled downloader middleware (Scrapy's and ours alike)."""
    from scrapy.utils.conf import build_component_list
    from scrapy.utils.misc import load_object

    for path in build_component_list(settings.getwithbase("DOWNLOADER_MIDDLEWARES")):
        load_object(path)


def child_main(mode: str, gateway: str, pages: int) -> int:
    result = crawl(mode, gateway, pages)
    print(json.dumps(result), flush=True)
    if result["pages"] != pages:
        print(f"e2e child: parsed {result['pages']} pages, expected {pages}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- parent


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def start_gateway() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scrapy_hexproxy.testing", "--user", USER, "--password", PASSWORD],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(GATEWAY_START_TIMEOUT)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://127.0.0.1:"):
        stop_gateway(proc)
        raise RuntimeError(f"the gateway did not start (got {line!r})")
    return proc, line


def stop_gateway(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(GATEWAY_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(GATEWAY_STOP_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def run_child(mode: str, gateway: str, pages: int, redis: Any = None) -> dict[str, Any]:
    if redis is not None:
        redis.command("FLUSHALL")
    args = [sys.executable, os.path.abspath(__file__), "--child", mode]
    args += ["--gateway", gateway, "--pages", str(pages)]
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env={**child_env(), **({REDIS_VAR: redis.url} if redis is not None else {})},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{mode} crawl did not finish within {CHILD_TIMEOUT:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{mode} crawl failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        )
    result = json.loads(lines[-1])
    if result.get("mode") != mode or result.get("pages") != pages:
        raise RuntimeError(f"{mode} crawl: unexpected result {result!r}")
    return result


def measure(pages: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    from scrapy_hexproxy.testing import RedisServer

    proc, gateway = start_gateway()
    redis = RedisServer().start()
    try:

        def run(mode: str) -> dict[str, Any]:
            return run_child(mode, gateway, pages, redis if mode == "shared" else None)

        for mode in MODES:  # warm up: disk caches, the gateway's first connections
            run(mode)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for r in range(rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                runs[mode].append(run(mode))
        return runs
    finally:
        redis.stop()
        stop_gateway(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--table", action="store_true", help="print a table, not JSON")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pages < 1 or args.rounds < 1:
        parser.error("--pages and --rounds must be at least 1")
    if args.child:
        if not args.gateway:
            parser.error("--child needs --gateway")
        return child_main(args.child, args.gateway, args.pages)

    runs = measure(args.pages, args.rounds)
    fixed = statistics.median(r["cpu_s"] for r in runs["fixed"])
    if args.table:
        print(f"{args.pages} pages, {args.rounds} rounds, median of interleaved runs")
        print(f"{'variant':<28} {'cpu s':>7} {'min':>7} {'max':>7} {'wall s':>7} {'x fixed':>8}")
    for mode in MODES:
        cpu = [r["cpu_s"] for r in runs[mode]]
        wall = [r["wall_s"] for r in runs[mode]]
        median = statistics.median(cpu)
        row = {
            "bench": "end to end",
            "variant": VARIANTS[mode],
            "pages": args.pages,
            "cpu_s": median,
            "x_fixed": median / fixed,
            "min_s": min(cpu),
            "max_s": max(cpu),
            "wall_s": statistics.median(wall),
            "runs": cpu,
        }
        if args.table:
            print(
                f"{VARIANTS[mode]:<28} {median:7.3f} {min(cpu):7.3f} {max(cpu):7.3f}"
                f" {row['wall_s']:7.3f} {median / fixed:7.3f}x"
            )
        else:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
