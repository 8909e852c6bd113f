"""`make bench`: every benchmark, then one table.

1. the core's criterion benchmarks (``cargo bench --bench core``, short warm-up and measurement);
2. the hook cycle on real Scrapy objects: floor, pure-Python, ours (``hook_cycle.py``);
3. resident memory and build time per pool size (``memory.py``);
4. the end-to-end crawl CPU against Scrapy alone with one fixed proxy, and with the pool
   shared on a real Redis against the same crawl alone (``e2e.py``);
5. the shared pool: a ban's delay in reaching another process, Redis commands per 1,000
   requests, Redis memory per key (``shared.py``).

Each part runs in its own process; this one collects their JSON lines and prints the table in
Markdown, ready for the README. ``--quick`` makes every part shorter (for a smoke run; its
numbers are noisier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
SIZES = (20, 1_000, 100_000, 1_000_000)
CRITERION = ROOT / "target" / "criterion"


def lines_of(*args: str) -> list[dict[str, Any]]:
    """Run a bench script; its JSON lines."""
    print(f"$ {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, timeout=1800
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def criterion(quick: bool) -> dict[tuple[str, str], float]:
    """Median ns per iteration of each criterion bench, keyed by (group/function, size)."""
    timing = ["--warm-up-time", "0.3", "--measurement-time", "0.5" if quick else "1"]
    command = ["cargo", "bench", "-q", "--bench", "core", "--", *timing]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    subprocess.run(
        command,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=1800,
    )
    found = {}
    for path in CRITERION.rglob("new/benchmark.json"):
        meta = json.loads(path.read_text())
        estimates = json.loads((path.parent / "estimates.json").read_text())
        name = meta["group_id"] + ("/" + meta["function_id"] if meta.get("function_id") else "")
        found[(name, meta.get("value_str") or "")] = estimates["median"]["point_estimate"]
    return found


def row(name: str, cells: list[str], goal: str = "") -> str:
    return "| " + " | ".join([name, *cells, goal]) + " |"


def table(
    core: dict[tuple[str, str], float],
    hooks: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    e2e: list[dict[str, Any]],
    shared: list[dict[str, Any]],
) -> list[str]:
    by_variant = {h["variant"]: h["ns"] for h in hooks}
    floor = by_variant["floor"]
    request = by_variant["Request() alone"]
    head = row("", [f"{size:,} sessions" for size in SIZES], "goal")
    out = [head, "|" + "---|" * (len(SIZES) + 2)]

    def per_size(fmt: Any) -> list[str]:
        return [fmt(size) for size in SIZES]

    out.append(row("**hook cycle** (ns; x floor)", ["" for _ in SIZES]))
    out.append(row("floor", [f"{floor:,.0f}"] * len(SIZES)))
    for label, key, goal in (
        ("pure Python, O(1) pick", "pure-python", ""),
        ("ours", "ours", "<= 1.5x floor"),
    ):
        cells = per_size(
            lambda size, key=key: (
                f"{by_variant[f'{key} {size}']:,.0f}; {by_variant[f'{key} {size}'] / floor:.2f}x"
            )
        )
        out.append(row(label, cells, goal))

    def own_cost(size: int) -> str:
        pure = by_variant[f"pure-python {size}"] - request
        mine = by_variant[f"ours {size}"] - request
        return f"{pure:,.0f} / {mine:,.0f} = {pure / mine:.1f}x"

    out.append(
        row(
            "hooks' own cost (cycle - `Request()`), pure Python / ours", per_size(own_cost), ">= 4x"
        )
    )
    out.append(row("**core, criterion** (ns)", ["" for _ in SIZES]))
    for label, name in (
        ("pick, none cooling", "pool/pick/0% cooling"),
        ("pick, 99% cooling", "pool/pick/99% cooling"),
        ("pick, 4 excluded", "pool/pick/4 excluded"),
        ("blacklist + expiry", "pool/blacklist+expire"),
        ("a request: pick, id, header, a 200", "engine/request"),
    ):
        out.append(row(label, per_size(lambda size, name=name: f"{core[(name, str(size))]:.1f}")))
    mem = {m["sessions"]: m for m in memory}
    out.append(
        row(
            "build the pool, first time in a process (ms)",
            per_size(lambda size: f"{mem[size]['build_ms']:.3f}"),
            "<= 20 ms",
        )
    )
    out.append(row("**resident memory** (bytes/session)", ["" for _ in SIZES]))
    for label, key in (
        ("all live", "bytes_per_session_live"),
        ("all cooling (worst case)", "bytes_per_session_all_cooling"),
    ):
        cells = per_size(lambda size, key=key: f"{mem[size][key]:.1f}" if size >= 100_000 else "-")
        out.append(row(label, cells, "<= 16 at 1M"))
    fixed, ours, on_redis = e2e
    paired = statistics.median(o / f for o, f in zip(ours["runs"], fixed["runs"]))
    paired_shared = statistics.median(s / o for s, o in zip(on_redis["runs"], ours["runs"]))
    out.append(row(f"**end to end**, {fixed['pages']:,} pages (CPU s)", ["" for _ in SIZES]))
    blank = ["", ""]
    out.append(row("Scrapy alone, one fixed proxy", [*blank, f"{fixed['cpu_s']:.3f}", ""]))
    out.append(
        row(
            "ours (median; median of paired ratios)",
            [*blank, f"{ours['cpu_s']:.3f}; {ours['x_fixed']:.3f}x; {paired:.3f}x", ""],
            "<= 1.02x",
        )
    )
    out.append(
        row(
            "ours sharing the pool on Redis (median; x ours; median of paired ratios)",
            [
                *blank,
                f"{on_redis['cpu_s']:.3f}; {on_redis['cpu_s'] / ours['cpu_s']:.3f}x;"
                f" {paired_shared:.3f}x",
                "",
            ],
            "<= 1.02x ours",
        )
    )
    out.append(row("**shared pool on Redis**", ["" for _ in SIZES]))
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for line in shared:
        by_bench.setdefault(line["bench"], []).append(line)
    (delay,) = by_bench["ban delay"]
    out.append(
        row(
            f"a ban reaching another process, {delay['bans']} bans (ms)",
            [*blank, f"median {delay['median_ms']:.1f}; max {delay['max_ms']:.1f}", ""],
            "max <= 1,000 ms",
        )
    )
    for line in by_bench["redis commands"]:
        out.append(
            row(
                f"Redis commands per 1,000 requests, {line['scenario']}"
                f" ({line['requests']:,} requests; round trips, and what Redis ran)",
                [
                    *blank,
                    f"{line['round_trips'] * 1000 / line['requests']:.1f}; {line['per_1000']:.1f}",
                    "",
                ],
                "0 per healthy request",
            )
        )
    (mem,) = by_bench["redis memory"]
    out.append(
        row(
            "Redis memory per banned session; per open failure run (bytes)",
            [*blank, f"{mem['bytes_per_ban']:.0f}; {mem['bytes_per_run']:.0f}", ""],
        )
    )
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scrapy

    return (
        f"{cpu}, {os.cpu_count()} cores; Linux {platform.release()}; "
        f"CPython {platform.python_version()}; Scrapy {scrapy.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier numbers")
    args = parser.parse_args()
    core = criterion(args.quick)
    hooks = lines_of(
        str(HERE / "hook_cycle.py"), *(["--loops", "5000", "--repeats", "5"] if args.quick else [])
    )
    memory = lines_of(str(HERE / "memory.py"))
    e2e = lines_of(
        str(HERE / "e2e.py"), *(["--pages", "500", "--rounds", "2"] if args.quick else [])
    )
    shared = lines_of(str(HERE / "shared.py"), *(["--pages", "500"] if args.quick else []))
    print()
    print("\n".join(table(core, hooks, memory, e2e, shared)))
    print()
    print(f"Measured on: {machine()}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
