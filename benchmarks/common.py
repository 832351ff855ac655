"""Shared helpers for the benchmarks: timing, memory, and this CPU's peak FLOP rate."""

import json
import os
import resource
import statistics
import time
from collections.abc import Callable

FP32_FLOP_PER_CYCLE_PER_CORE = 16  # AVX2: two 256-bit FMA units = 2 x 8 lanes x 2 FLOP / 2.


def cpu_clock_ghz() -> float:
    """The clock /proc/cpuinfo reports for the first core (GHz)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000.0
    raise RuntimeError("no 'cpu MHz' line in /proc/cpuinfo")


def cpu_peak_gflops(cores: int | None = None) -> float:
    """FP32 peak of the cores this process may use: cores x 16 FLOP/cycle x clock."""
    cores = cores or len(os.sched_getaffinity(0))
    return cores * FP32_FLOP_PER_CYCLE_PER_CORE * cpu_clock_ghz()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_json(record: dict) -> None:
    """The last output line of every benchmark: one JSON object."""
    print(json.dumps(record), flush=True)
