"""A correct pure-Python implementation of the middlewares' semantics, for the benchmarks only.

It is what a careful author would write without the Rust core, through Scrapy's public API: an
O(1) pick (a dense list of live sessions, each one's position in it, rejection sampling around
the excluded ones), FIFO cooldown expiry, consecutive-failure counting, the attempt token that
settles each outcome once (unobserved and cached responses too), the 407 count, Basic
credentials per session, the per-request switch (``meta["hex_proxy"] = False``), the retry
decision of DESIGN.md and the stats. The other optional features are off by default, and off in
the benchmark: it does not carry them. The hook-cycle benchmark
measures ours against it.
"""

from __future__ import annotations

import base64
import random
import time
from collections import deque
from typing import Any

RETRY_CODES = frozenset((403, 407, 408, 429, 500, 502, 503, 504))
FAILURE_CODES = frozenset((403, 407, 429, *range(500, 600)))
COOLING = -1


class PurePool:
    def __init__(self, size: int, max_failures: int = 5, cooldown: float = 300.0) -> None:
        self.live = list(range(size))
        self.pos = list(range(size))
        self.fails = [0] * size
        self.cooling: deque[tuple[float, int]] = deque()
        self.max_failures = max_failures
        self.cooldown = cooldown

    def _expire(self, now: float) -> None:
        cooling = self.cooling
        while cooling and cooling[0][0] <= now:
            _, index = cooling.popleft()
            self.pos[index] = len(self.live)
            self.live.append(index)

    def pick(self, exclude: tuple[int, ...] = ()) -> int | None:
        if self.cooling:
            self._expire(time.monotonic())
        live = self.live
        if not live:
            return None
        if len(live) <= 4 * len(exclude):
            allowed = [i for i in live if i not in exclude]
            return random.choice(allowed or live)
        while True:  # at least 3 in 4 live sessions are allowed: ends fast
            index = live[random.randrange(len(live))]
            if index not in exclude:
                return index

    def success(self, index: int) -> None:
        if self.pos[index] != COOLING:
            self.fails[index] = 0

    def failure(self, index: int) -> bool:
        now = time.monotonic()
        self._expire(now)
        if self.pos[index] == COOLING:
            return False
        self.fails[index] += 1
        if self.fails[index] < self.max_failures:
            return False
        self.fails[index] = 0
        at = self.pos[index]
        last = self.live.pop()
        if last != index:
            self.live[at] = last
            self.pos[last] = at
        self.pos[index] = COOLING
        self.cooling.append((now + self.cooldown, index))
        return True


class PureProxyMiddleware:
    def __init__(self, pool: PurePool, proxy_url: str, user: str, password: str) -> None:
        self.pool = pool
        self.proxy_url = proxy_url
        self.user = user
        self.password = password
        self.stats: dict[str, int] = {}
        self.consecutive_407s = 0
        self.auth_failures_to_close = 3

    def process_request(self, request: Any, spider: Any = None) -> None:
        meta = request.meta
        switch = meta.get("hex_proxy")
        if switch is not None and not switch:  # the per-request switch: left alone
            return
        if "_hex_attempt" in meta:  # a middleware above returned a copy we never saw settled
            index, retry_times = meta.pop("_hex_attempt")
            if meta.get("retry_times", 0) > retry_times:
                self.failure(request, index, "unobserved")
            else:
                self.pool.success(index)
        if self.consecutive_407s >= self.auth_failures_to_close:
            raise RuntimeError("the benchmark never sends bad credentials")
        index = self.pool.pick(meta.get("_hex_failed", ()))
        if index is None:
            raise RuntimeError("the benchmark never exhausts the pool")
        session = f"s{index:03d}"
        pair = f"{self.user}-session-{session}:{self.password}".encode()
        meta["proxy"] = self.proxy_url
        meta["hex_session"] = session
        meta["_hex_attempt"] = (index, meta.get("retry_times", 0))
        request.headers[b"Proxy-Authorization"] = b"Basic " + base64.b64encode(pair)

    def failure(self, request: Any, index: int, reason: str) -> None:
        key = f"hex_proxy/failure/{reason}"
        self.stats[key] = self.stats.get(key, 0) + 1
        if self.pool.failure(index):
            self.stats["hex_proxy/blacklisted"] = self.stats.get("hex_proxy/blacklisted", 0) + 1
        failed = request.meta.get("_hex_failed", ())
        if index not in failed:
            request.meta["_hex_failed"] = (*failed, index)

    def settle(self, request: Any, response: Any) -> None:
        attempt = request.meta.pop("_hex_attempt", None)
        if attempt is None or "cached" in response.flags:
            return
        status = response.status
        if status in FAILURE_CODES:
            self.failure(request, attempt[0], str(status))
        else:
            self.pool.success(attempt[0])
        if status == 407:
            self.consecutive_407s += 1
        elif status not in FAILURE_CODES:
            self.consecutive_407s = 0

    def process_response(self, request: Any, response: Any, spider: Any = None) -> Any:
        self.settle(request, response)
        return response


class PureRetryMiddleware:
    def __init__(self, proxy: PureProxyMiddleware, max_retries: int = 4) -> None:
        self.proxy = proxy
        self.max_retries = max_retries

    def process_response(self, request: Any, response: Any, spider: Any = None) -> Any:
        self.proxy.settle(request, response)
        meta = request.meta
        if response.status not in RETRY_CODES or meta.get("dont_retry", False):
            return response
        switch = meta.get("hex_proxy")
        if switch is not None and not switch:
            return response
        stats = self.proxy.stats
        retry_times = meta.get("retry_times", 0) + 1
        if retry_times > meta.get("max_retry_times", self.max_retries):
            stats["hex_proxy/retry/max_exceeded"] = stats.get("hex_proxy/retry/max_exceeded", 0) + 1
            return response
        stats["hex_proxy/retry"] = stats.get("hex_proxy/retry", 0) + 1
        retry = request.replace(dont_filter=True)
        retry.meta["retry_times"] = retry_times
        retry.priority = request.priority - 1
        return retry


def pure_middlewares(size: int) -> tuple[PureProxyMiddleware, PureRetryMiddleware]:
    proxy = PureProxyMiddleware(PurePool(size), "http://127.0.0.1:8000", "USER", "PASS")
    return proxy, PureRetryMiddleware(proxy)


def self_check() -> None:
    """The baseline must be correct to be a fair one: blacklisting, exclusion, retries."""
    from scrapy import Request
    from scrapy.http import Response

    proxy, retry = pure_middlewares(3)
    request = Request("http://example.test/")
    proxy.process_request(request)
    first = request.meta["_hex_attempt"][0]
    new = retry.process_response(request, Response(request.url, status=503))
    assert isinstance(new, Request) and new.meta["_hex_failed"] == (first,)
    for _ in range(50):
        proxy.process_request(new)
        assert new.meta["_hex_attempt"][0] != first
        proxy.process_response(new, Response(new.url, status=200))
    for _ in range(5):
        proxy.pool.failure(first)
    assert first not in proxy.pool.live and len(proxy.pool.cooling) == 1
    assert proxy.stats == {"hex_proxy/failure/503": 1, "hex_proxy/retry": 1}
    auth = request.headers[b"Proxy-Authorization"]
    assert base64.b64decode(auth[6:]).startswith(b"USER-session-s00")
    off = Request("http://example.test/", meta={"hex_proxy": False})
    proxy.process_request(off)
    assert "proxy" not in off.meta and b"Proxy-Authorization" not in off.headers
    assert retry.process_response(off, Response(off.url, status=503)).status == 503
