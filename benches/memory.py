"""Resident memory and build time of the session pool, per pool size.

Each size is measured in a fresh child process: the resident set size (``/proc/self/statm``)
before and after ``_core.Core(pool_size=N)``, the build time, then the resident size once every
session has been blacklisted (the worst case: the cooling queue full as well). Prints JSON lines
for ``benches/run.py``, or a table with ``--table``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = (20, 1_000, 100_000, 1_000_000)
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def child(size: int) -> dict[str, float]:
    from scrapy_hexproxy import _core

    kwargs = {
        "max_failures": 1,
        "cooldown": 300.0,
        "max_retries": 4,
        "retry_codes": [503],
        "failure_codes": [503],
        "auth_failures_to_close": 3,
        "user": "USER",
        "password": "PASS",
    }
    _core.Core(pool_size=20, **kwargs)  # load the module and warm the allocator first
    before = resident_bytes()
    start = time.perf_counter()
    core = _core.Core(pool_size=size, **kwargs)
    build_s = time.perf_counter() - start
    built = resident_bytes()
    for index in range(size):
        core.record(index, status=503)
    assert core.cooling_count == size and core.live_count == 0
    cooling = resident_bytes()
    return {
        "sessions": size,
        "build_ms": build_s * 1e3,
        "bytes_per_session_live": (built - before) / size,
        "bytes_per_session_all_cooling": (cooling - before) / size,
    }


def measure(size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(size)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print a table, not JSON")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return 0
    for size in SIZES:
        row = measure(size)
        if args.table:
            print(
                f"{size:>9} sessions  build {row['build_ms']:7.2f} ms  "
                f"{row['bytes_per_session_live']:7.1f} B/session live  "
                f"{row['bytes_per_session_all_cooling']:7.1f} B/session all cooling"
            )
        else:
            print(json.dumps({"bench": "memory", **row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
