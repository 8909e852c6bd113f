"""The core is shared by the middlewares of a crawler; nothing may be lost when it is driven
from many threads at once (Scrapy's thread pool, user code, free-threaded Pythons)."""

from __future__ import annotations

import threading
from collections import Counter

from scrapy_hexproxy import _core

THREADS = 8
ROUNDS = 4000


def test_one_core_driven_from_8_threads_accounts_for_every_pick_success_and_failure():
    core = _core.Core(
        pool_size=1000,
        max_failures=3,
        cooldown=1e6,
        max_retries=4,
        retry_codes=[503],
        failure_codes=[503],
        auth_failures_to_close=3,
        user="USER",
        password="PASS",
        manual_clock=True,
        seed=5,
    )
    picked: list[Counter] = [Counter() for _ in range(THREADS)]
    failures = [0] * THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(ROUNDS):
                index = core.pick((n,))  # every thread avoids "its" session
                assert index is not None and index != n
                picked[n][index] += 1
                if (i + n) % 5 == 0:
                    core.record(index, status=503)
                    failures[n] += 1
                elif i % 7 == 0:
                    core.record(index, reason="OSError")
                    failures[n] += 1
                else:
                    core.record(index, status=200)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    stats = core.stats()
    total_picks = sum(sum(c.values()) for c in picked)
    assert total_picks == THREADS * ROUNDS
    recorded = stats.get("hex_proxy/failure/503", 0) + stats.get("hex_proxy/failure/OSError", 0)
    assert recorded == sum(failures)
    # Every session is either live or cooling, and each cooling one was blacklisted once.
    assert core.live_count + core.cooling_count == 1000
    assert stats.get("hex_proxy/blacklisted", 0) == core.cooling_count
    assert stats["hex_proxy/sessions/cooling"] == core.cooling_count
