"""Run every benchmark in bench/ and print one table of their headline figures.

Each benchmark runs as its own process (``python -m bench.<name>``), one after the other, so
they do not disturb each other; its headline is the last line of its output made of
``key=value`` pairs. The soak runs for ``--soak-minutes`` (default 2).

    .venv/bin/python -m bench.run_all [--only workqueue,soak] [--soak-minutes 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: Not benchmarks.
SKIP = {"__init__", "common", "run_all", "memtrace"}
#: The order to run them in (cheap first); anything else found in bench/ runs afterwards.
ORDER = [
    "workqueue",
    "cache_memory",
    "tenant_throughput",
    "steady_state",
    "api_breakdown",
    "api_throughput",
    "login",
    "soak",
    "scale_curve",
]
#: Arguments that keep a benchmark within ``--timeout`` here (run it alone for the full set).
ARGS = {"scale_curve": ["--points", "1000,2000"]}
_PAIR = re.compile(r"^[A-Za-z_][\w.]*=\S+$")


@dataclass
class Outcome:
    name: str
    seconds: float
    code: int
    headline: dict[str, str]
    output: str

    @property
    def tail(self) -> str:
        return self.output[-3000:]


def discover(only: set[str] | None) -> list[str]:
    found = {p.stem for p in BENCH.glob("*.py") if p.stem not in SKIP}
    names = [n for n in ORDER if n in found] + sorted(found - set(ORDER))
    return [n for n in names if only is None or n in only]


def headline(output: str) -> dict[str, str]:
    """The last line made only of key=value pairs."""
    for line in reversed(output.strip().splitlines()):
        words = line.split()
        if words and all(_PAIR.match(w) for w in words):
            return dict(w.split("=", 1) for w in words)
    return {}


async def run(name: str, args: list[str], timeout: float) -> Outcome:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"bench.{name}",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        out += f"\n(timed out after {timeout:.0f} s)".encode()
    text = out.decode(errors="replace")
    return Outcome(name, time.monotonic() - start, proc.returncode or 0, headline(text), text)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kb / 2**20:.1f} GiB RAM, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--soak-minutes", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per benchmark (s)")
    parser.add_argument("--out", type=Path, help="also save each benchmark's output here")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    outcomes = []
    for name in discover(only):
        extra = ["--minutes", str(args.soak_minutes)] if name == "soak" else ARGS.get(name, [])
        timeout = args.timeout + (args.soak_minutes * 60 if name == "soak" else 0)
        print(f"running bench.{name} {' '.join(extra)}".rstrip(), flush=True)
        outcome = await run(name, extra, timeout)
        outcomes.append(outcome)
        if args.out:
            (args.out / f"{name}.txt").write_text(outcome.output)
        if outcome.code != 0:
            print(f"bench.{name} exited with {outcome.code}:\n{outcome.tail}", flush=True)
    print()
    print(machine())
    rows = []
    for o in outcomes:
        figures = " ".join(f"{k}={v}" for k, v in o.headline.items()) or "(no headline)"
        rows.append((o.name, f"{figures}   [{o.seconds:.0f} s, exit {o.code}]"))
    print(table(rows))
    failed = [o.name for o in outcomes if o.code != 0]
    print(f"benchmarks={len(outcomes)} failed={len(failed)}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
