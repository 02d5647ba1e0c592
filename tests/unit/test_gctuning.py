"""GCThresholds: the process's collector runs less often, and still collects cycles."""

from __future__ import annotations

import gc
import weakref

from nexus.runtime.gctuning import GCThresholds


class Node:
    def __init__(self) -> None:
        self.me = self


def test_thresholds_are_applied_and_cycles_still_collected() -> None:
    before = gc.get_threshold()
    try:
        GCThresholds(young=5000, middle=15, old=12).apply()
        assert gc.get_threshold() == (5000, 15, 12)
        cycle = Node()
        ref = weakref.ref(cycle)
        del cycle
        # Containers that stay alive count towards the young threshold: a collection comes.
        alive = [[] for _ in range(20_000)]
        assert ref() is None
        del alive
    finally:
        gc.set_threshold(*before)
