"""Throughput of the controller work queue: add + get + done cycles per second.

Run: ``.venv/bin/python bench/workqueue.py [--n N] [--seconds S]``. Each round adds ``N``
distinct keys, then takes every one with ``await queue.get()`` and marks it ``done``; rounds
repeat for about ``S`` seconds per configuration. Keys are ``namespace/name`` strings, as
client-go's; a last informational run uses the controller's ``Request`` dataclass, whose
hashing is slower. The last line, ``ops_per_second=...``, is the metrics-enabled figure with
the default rate limiter: the configuration a controller runs with.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Hashable, Sequence

from nexus.runtime.workqueue import WorkQueue


async def cycles_per_second[K: Hashable](
    queue: WorkQueue[K], keys: Sequence[K], seconds: float
) -> float:
    add, get, done = queue.add, queue.get, queue.done
    n = len(keys)
    cycles = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for key in keys:
            add(key)
        for _ in range(n):
            done(await get())
        cycles += n
        now = time.perf_counter()
        if now >= deadline:
            break
    sizes = queue.sizes()
    if sizes["ready"] or sizes["dirty"] or sizes["processing"]:
        raise AssertionError(f"queue not drained: {sizes}")
    return cycles / (now - start)


async def measure[K: Hashable](queue: WorkQueue[K], keys: Sequence[K], seconds: float) -> float:
    gc.collect()  # do not charge one configuration for another's garbage
    return await cycles_per_second(queue, keys, seconds)


async def main() -> None:
    parser = argparse.ArgumentParser(description="WorkQueue add+get+done throughput")
    parser.add_argument("--n", type=int, default=1000, help="distinct keys per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration per configuration")
    args = parser.parse_args()
    keys = [f"namespace-{i % 17}/object-{i}" for i in range(args.n)]

    await measure(WorkQueue[str](metrics=False), keys, 0.2)  # warm-up
    plain = await measure(WorkQueue[str]("bench-plain", metrics=False), keys, args.seconds)
    with_metrics = await measure(WorkQueue[str]("bench-metrics"), keys, args.seconds)

    print(f"keys per round: {args.n}; one cycle = add + await get() + done; str keys")
    print(f"metrics disabled: {plain:,.0f} cycles/s")
    print(f"metrics enabled:  {with_metrics:,.0f} cycles/s")
    try:
        from nexus.runtime.reconcile import Request
    except ImportError:
        pass
    else:
        requests = [Request(name=f"object-{i}", namespace=f"ns-{i % 17}") for i in range(args.n)]
        rate = await measure(WorkQueue[Request]("bench-request"), requests, args.seconds)
        print(f"metrics enabled, Request keys: {rate:,.0f} cycles/s (informational)")
    print("ops_per_second below: metrics enabled, default rate limiter, str keys")
    print(f"ops_per_second={int(with_metrics)}")


if __name__ == "__main__":
    asyncio.run(main())
