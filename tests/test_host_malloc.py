"""The glibc malloc settings nerve_jax applies at import (nerve_jax/host_malloc.py)."""

import os
import subprocess
import sys

import pytest

from nerve_jax import host_malloc

# Loads host_malloc.py on its own (not the package, which imports TensorFlow), applies it, then
# mallocs, fills and frees 256 MB twice (as XLA does with a step's temporaries; numpy would
# madvise huge pages itself) and prints the page faults of the second time.
REUSE_PROBE = """
import ctypes, importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("host_malloc", sys.argv[1])
host_malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_malloc)
print(host_malloc.apply())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def fill_and_free():
    block = libc.malloc(256 * 2**20)
    ctypes.memset(block, 1, 256 * 2**20)
    libc.free(block)
fill_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_256MB = 256 * 2**20 // 4096


def probe(opt_out: bool) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != host_malloc.OPT_OUT_VARIABLE}
    if opt_out:
        env[host_malloc.OPT_OUT_VARIABLE] = "0"
    out = subprocess.run([sys.executable, "-c", REUSE_PROBE, host_malloc.__file__], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not host_malloc.enabled({}), reason="needs glibc")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults = probe(opt_out=False)
    assert applied
    assert faults < PAGES_256MB // 20
    applied, faults = probe(opt_out=True)
    assert not applied
    assert faults > PAGES_256MB // 2  # glibc's default: a fresh mmap, faulted page by page.


def test_opt_out_and_tunables():
    assert not host_malloc.enabled({host_malloc.OPT_OUT_VARIABLE: "0"})
    assert not host_malloc.apply({host_malloc.OPT_OUT_VARIABLE: "0"})
    assert host_malloc.glibc_tunables() == (
        "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
        f"glibc.malloc.trim_threshold={2**64 - 1}")
