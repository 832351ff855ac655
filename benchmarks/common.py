"""Shared helpers for the benchmarks: timing, memory, and this CPU's peak FLOP rate."""

import json
import os
import resource
import statistics
import time
from collections.abc import Callable

from nerve_jax import runtime

# Two 256-bit FMA pipes (Zen 2-4; Zen 4 runs AVX-512 on the same pipes): 2 x 8 lanes x 2 FLOP.
# Measured here: PyTorch's train step sustains ~141 GFLOP/s on 2 cores at 2.6 GHz, above the
# 83 GFLOP/s a 16 FLOP/cycle peak would allow, so 16 is not this CPU's peak.
FP32_FLOP_PER_CYCLE_PER_CORE = 32


def cpu_clock_ghz() -> float:
    """The clock /proc/cpuinfo reports for the first core (GHz)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000.0
    raise RuntimeError("no 'cpu MHz' line in /proc/cpuinfo")


def cpu_peak_gflops(cores: int | None = None) -> float:
    """FP32 peak of the cores this process may use: cores x FP32_FLOP_PER_CYCLE_PER_CORE x clock."""
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


def add_step_flags(parser) -> None:
    """The flags every train-step benchmark shares (same names and defaults on both sides)."""
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after compilation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--upsample", default="pixel_shuffle",
                        choices=("pixel_shuffle", "transpose"))


def run_main(main: Callable[[], object], huge_pages: bool = False) -> None:
    """A benchmark's entry point: the nerve-jax command's process settings, then main().
    `huge_pages` restarts the process once with them first, as train/evaluate/predict do."""
    if huge_pages:
        runtime.reexec_with_huge_pages()
    runtime.configure()
    main()
