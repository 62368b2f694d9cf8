"""Shared timing helper for the benchmarks: warm-up first, then the median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2, number: int = 1,
                   sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``number`` calls of ``fn`` (per call), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)
