"""Timing helpers shared by the optimizer (core.quant) and the benchmarks (bench/)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np


def timed_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return float(np.median(timed_calls(fn, repeats, warmup)))


def machine() -> dict:
    """What the numbers were measured on (results files carry it)."""
    import onnxruntime

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
