"""Shared helpers for benchmarks: RSS, a control plane, timing."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def settle() -> int:
    for _ in range(3):
        gc.collect()
    return rss_bytes()


async def bounded[T](
    items: Iterable[T], fn: Callable[[T], Awaitable[Any]], concurrency: int = 50
) -> None:
    """Run fn over items with at most ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: T) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
