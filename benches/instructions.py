"""Instructions per hook cycle (ours), counted by callgrind: to decide on when timings are noisy.

The cycle is ``hook_cycle.py``'s (``Request()``, ``process_request``, both ``process_response``
for a 200). Each count runs the cycle in a fresh process under
``valgrind --tool=callgrind``, with ``PYTHONHASHSEED=0`` and ``HEX_PROXY_SEED`` fixed, once for
``--few`` cycles and once for ``--many``: the difference over ``many - few`` is the cost of one
cycle, start-up cancelled out. ``Request()`` alone is counted the same way; the hooks' own cost
is the cycle minus it. Run from a checkout after ``make build-dev``; add ``--keep DIR`` to keep
the callgrind files (``callgrind_annotate --inclusive=yes`` breaks a count down by function).

    .venv/bin/python benches/instructions.py --sizes 20 100000
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def run_cycles(kind: str, size: int, count: int) -> None:
    """In this process: warm up, then `count` cycles (or `Request()`s alone)."""
    sys.path.insert(0, str(HERE))
    from hook_cycle import URL, ours
    from scrapy import Request
    from scrapy.http import Response

    proxy, retry = ours(size, seed=1)
    response = Response(URL, status=200)
    process_request = proxy.process_request
    retry_response = retry.process_response
    proxy_response = proxy.process_response
    for _ in range(3_000):  # a small pool's headers are all made by now
        request = Request(URL)
        process_request(request)
        proxy_response(request, retry_response(request, response))
    gc.collect()
    gc.freeze()
    gc.disable()
    if kind == "cycle":
        for _ in range(count):
            request = Request(URL)
            process_request(request)
            proxy_response(request, retry_response(request, response))
    else:
        for _ in range(count):
            Request(URL)


def count(kind: str, size: int, cycles: int, keep: Path) -> int:
    """Instructions of a whole process running `cycles` of `kind`."""
    out = keep / f"callgrind.{kind}.{size}.{cycles}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    command += [sys.executable, __file__, "--run", kind, str(size), str(cycles)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind:\n{done.stderr}")
    return int(found.group(1))


def per_cycle(kind: str, size: int, few: int, many: int, keep: Path) -> float:
    return (count(kind, size, many, keep) - count(kind, size, few, keep)) / (many - few)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100_000])
    parser.add_argument("--few", type=int, default=2_000)
    parser.add_argument("--many", type=int, default=12_000)
    parser.add_argument("--keep", type=Path, help="keep the callgrind files here")
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)  # the counted process
    args = parser.parse_args()
    if args.run:
        kind, size, cycles = args.run
        run_cycles(kind, int(size), int(cycles))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        keep = args.keep or Path(scratch)
        keep.mkdir(parents=True, exist_ok=True)
        alone = per_cycle("request", args.sizes[0], args.few, args.many, keep)
        print(f"Request() alone: {alone:,.0f} instructions")
        for size in args.sizes:
            cycle = per_cycle("cycle", size, args.few, args.many, keep)
            own = cycle - alone
            print(f"{size:>9,} sessions: cycle {cycle:,.0f}, hooks' own {own:,.0f} instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
