"""glibc malloc settings nerve-jax applies at import, so that host memory is reused, not re-mapped.

XLA:CPU allocates each execution's temporaries afresh: 1.2 GB for the default train step
(benchmarks/train_throughput.py). glibc serves an allocation that large with a fresh mmap and
hands it back with munmap, so every step page-faults all of it again (300k faults of 4 KiB, with
the kernel zeroing each page) before any work is done; a 42 MB elementwise op took 20 ms instead
of 3. With one arena, no mmap and no trimming, freed blocks stay in the heap and the next step
reuses them: train step 2770 -> 2460 ms here (README, Performance).

The cost: the process keeps what it freed (its RSS stays near its peak), and the one heap can
fragment, which raised the benchmark's peak RSS from 2.7 GB to 2.7-3.8 GB between runs.
`NERVE_JAX_MALLOC=0` turns this off. Only glibc (Linux) has these knobs; elsewhere it does
nothing. Another process (PyTorch's, say) can get the same at its start from the environment:
GLIBC_TUNABLES set to `glibc_tunables()` (benchmarks/compare_torch.py --torch-malloc does).
"""

import ctypes
import os
import platform

# mallopt parameters (glibc malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = (
    # One arena: threads other than the main one would otherwise get arenas whose heaps are
    # capped at 64 MiB, and glibc serves anything bigger there with mmap whatever M_MMAP_MAX says.
    ("arena_max", M_ARENA_MAX, 1),
    ("mmap_max", M_MMAP_MAX, 0),
    ("trim_threshold", M_TRIM_THRESHOLD, -1),  # -1: never give the top of the heap back.
)
OPT_OUT_VARIABLE = "NERVE_JAX_MALLOC"


def glibc_tunables() -> str:
    """The same settings as a GLIBC_TUNABLES value, for a process started from outside."""
    return ":".join(f"glibc.malloc.{name}={value if value >= 0 else 2**64 - 1}"
                    for name, _, value in SETTINGS)


def enabled(environ=os.environ) -> bool:
    return environ.get(OPT_OUT_VARIABLE, "1") != "0" and platform.libc_ver()[0] == "glibc"


def apply(environ=os.environ) -> bool:
    """Sets the malloc parameters if enabled; True when all of them took effect.

    Arenas that threads already own keep working as before, so this belongs before anything
    starts threads (nerve_jax/__init__.py runs it first)."""
    if not enabled(environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for _, param, value in SETTINGS)
