"""The per-request cost of the middlewares: one hook cycle on real Scrapy objects.

A cycle is what one successful download costs the middlewares: build the ``Request`` (as the
engine would), ``HexProxyMiddleware.process_request``, then, with the response flowing back,
``SmartRetryMiddleware.process_response`` and ``HexProxyMiddleware.process_response`` for a 200.

Method, fixed so that runs compare:
- the ``Request`` is built inside the timer for every variant (each attempt is a new request);
  the 200 ``Response`` is built once outside it;
- the garbage collector is frozen and off while timing;
- variants are interleaved, each timed ``REPEATS`` times over ``LOOPS`` cycles; the median
  per-cycle time is reported.

Variants: the floor (a middleware that only puts a precomputed proxy URL and session id into
``request.meta``), the pure-Python implementation of ``pure_python.py``, and ours at four pool
sizes. Prints JSON lines for ``benches/run.py``, or a table with ``--table``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response
from scrapy.utils.test import get_crawler

sys.path.insert(0, str(Path(__file__).parent))
from pure_python import pure_middlewares, self_check

SIZES = (20, 1_000, 100_000, 1_000_000)
URL = "http://shop.test/item/1"
PROXY = "http://127.0.0.1:8000"


class FloorMiddleware:
    """Only the unavoidable work: a precomputed proxy URL and a session id into meta."""

    def process_request(self, request: Any, spider: Any = None) -> None:
        meta = request.meta
        meta["proxy"] = PROXY
        meta["hex_session"] = "s000"

    def process_response(self, request: Any, response: Any, spider: Any = None) -> Any:
        return response


def ours(size: int, seed: int | None = None) -> tuple[Any, Any]:
    from scrapy_hexproxy import HexProxyMiddleware, SmartRetryMiddleware

    settings: dict[str, Any] = {
        "HEX_PROXY_GATEWAY": PROXY,
        "HEX_PROXY_USER": "USER",
        "HEX_PROXY_PASS": "PASS",
        "HEX_PROXY_SESSION_POOL_SIZE": size,
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        },
    }
    if seed is not None:  # the same picks in every run (instructions.py)
        settings["HEX_PROXY_SEED"] = seed
    crawler = get_crawler(Spider, settings)
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def cycle_loop(proxy: Any, retry: Any, loops: int) -> float:
    """Seconds for `loops` cycles."""
    response = Response(URL, status=200)
    process_request = proxy.process_request
    retry_response = retry.process_response
    proxy_response = proxy.process_response
    start = time.perf_counter()
    for _ in range(loops):
        request = Request(URL)
        process_request(request)
        proxy_response(request, retry_response(request, response))
    return time.perf_counter() - start


def request_only_loop(loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        Request(URL)
    return time.perf_counter() - start


def check_cycle(proxy: Any, retry: Any) -> None:
    """Each variant really does its work (a benchmark of a no-op would prove nothing)."""
    request = Request(URL)
    proxy.process_request(request)
    assert request.meta["proxy"] == PROXY and request.meta["hex_session"].startswith("s")
    response = Response(URL, status=200)
    assert proxy.process_response(request, retry.process_response(request, response)) is response


def measure(loops: int, repeats: int) -> dict[str, float]:
    self_check()
    floor = FloorMiddleware()
    variants: dict[str, tuple[Any, Any]] = {"floor": (floor, floor)}
    for size in SIZES:
        variants[f"pure-python {size}"] = pure_middlewares(size)
        variants[f"ours {size}"] = ours(size)
    for proxy, retry in variants.values():
        check_cycle(proxy, retry)
        cycle_loop(proxy, retry, loops // 10)  # warm up
    times: dict[str, list[float]] = {name: [] for name in variants}
    times["Request() alone"] = []
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, (proxy, retry) in variants.items():
                times[name].append(cycle_loop(proxy, retry, loops))
            times["Request() alone"].append(request_only_loop(loops))
    finally:
        gc.enable()
        gc.unfreeze()
    return {name: statistics.median(t) / loops * 1e9 for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--table", action="store_true", help="print a table, not JSON")
    args = parser.parse_args()
    result = measure(args.loops, args.repeats)
    floor = result["floor"]
    for name, ns in result.items():
        row = {"bench": "hook cycle", "variant": name, "ns": ns, "x_floor": ns / floor}
        if args.table:
            print(f"{name:<22} {ns:8.0f} ns  {ns / floor:5.2f}x floor")
        else:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
