"""Run a Python module under tracemalloc and write what holds (and what grows) to a file.

    python -m bench.memtrace --out trace.txt --interval 60 nexus.cli manager --kubeconfig=...

A thread takes a snapshot every ``--interval`` seconds and appends to ``--out``: the traced
total, the top allocation sites by size, and the top differences against the previous
snapshot and against the first (the baseline, taken after ``--baseline-after`` seconds, once
start-up is over). Benchmarks launch the manager through it when ``NEXUS_TRACEMALLOC=1`` is set
(see :func:`wrap`). tracemalloc roughly doubles memory and slows the process down: figures of a
traced run are for finding what grows, not for the RSS tables.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ENV = "NEXUS_TRACEMALLOC"
ENV_OUT = "NEXUS_TRACEMALLOC_OUT"
ENV_INTERVAL = "NEXUS_TRACEMALLOC_INTERVAL"
ENV_FRAMES = "NEXUS_TRACEMALLOC_FRAMES"
ENV_BASELINE = "NEXUS_TRACEMALLOC_BASELINE"

_IGNORE = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def enabled() -> bool:
    return _flag(ENV)


def wrap(module_args: list[str], out: Path) -> list[str]:
    """``python -m <module_args>`` as argv, under tracemalloc when ``NEXUS_TRACEMALLOC`` is set.

    ``module_args`` is ``["nexus.cli", "manager", ...]`` (a module, then its arguments).
    """
    if not enabled():
        return [sys.executable, "-m", *module_args]
    interval = os.environ.get(ENV_INTERVAL, "60")
    target = os.environ.get(ENV_OUT) or str(out)
    return [
        sys.executable, "-m", "bench.memtrace", f"--out={target}", f"--interval={interval}",
        *module_args,
    ]  # fmt: skip


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_IGNORE)


def _report(
    f: object, title: str, stats: list[tracemalloc.StatisticDiff] | list[tracemalloc.Statistic]
) -> None:
    write = f.write  # type: ignore[attr-defined]
    write(f"-- {title}\n")
    for s in stats:
        write(f"{s}\n")


def _loop(out: Path, interval: float, baseline_after: float, top: int) -> None:
    time.sleep(baseline_after)
    base = _snapshot()
    prev = base
    started = time.monotonic()
    with out.open("a") as f:
        f.write(f"== baseline traced={tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB\n")
        _report(f, "top by size (lineno)", base.statistics("lineno")[:top])
        f.flush()
    while True:
        time.sleep(interval)
        snap = _snapshot()
        current, peak = tracemalloc.get_traced_memory()
        with out.open("a") as f:
            f.write(
                f"== t=+{time.monotonic() - started:.0f}s traced={current / 2**20:.1f} MiB "
                f"peak={peak / 2**20:.1f} MiB\n"
            )
            _report(f, "top by size (lineno)", snap.statistics("lineno")[:top])
            _report(f, "growth since baseline (lineno)", snap.compare_to(base, "lineno")[:top])
            _report(f, "growth since last (lineno)", snap.compare_to(prev, "lineno")[:top])
            if tracemalloc.get_traceback_limit() > 1:
                _report(
                    f, "growth since baseline (traceback)", snap.compare_to(base, "traceback")[:5]
                )
            f.flush()
        prev = snap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument(
        "--baseline-after", type=float, default=float(os.environ.get(ENV_BASELINE, "30"))
    )
    parser.add_argument("--frames", type=int, default=int(os.environ.get(ENV_FRAMES, "1")))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-trace", action="store_true", help="only launch the module")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    if not ns.no_trace:
        tracemalloc.start(ns.frames)
        threading.Thread(
            target=_loop, args=(ns.out, ns.interval, ns.baseline_after, ns.top), daemon=True
        ).start()
    sys.argv = [ns.module, *ns.args]
    runpy.run_module(ns.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
