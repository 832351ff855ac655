"""Huge pages for glibc's large allocations (nerve_jax/runtime/host_malloc.py)."""

import ast
import os
import subprocess
import sys

import pytest

from nerve_jax.runtime import host_malloc

# Loads host_malloc.py on its own (the package imports TensorFlow), restarts itself with the
# tunable as the `nerve-jax` command does, then mallocs and fills 256 MB as XLA does with a
# step's temporaries (numpy would madvise huge pages itself) and prints GLIBC_TUNABLES and the
# page faults of the fill.
PROBE = """
import ctypes, importlib.util, os, resource, sys
spec = importlib.util.spec_from_file_location("host_malloc", sys.argv[1])
host_malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_malloc)
host_malloc.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(256 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(block, 1, 256 * 2**20)
print(repr(os.environ.get("GLIBC_TUNABLES", "")))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_256MB = 256 * 2**20 // 4096


def probe(extra_env: dict) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items()
           if k not in (host_malloc.OPT_OUT_VARIABLE, "GLIBC_TUNABLES")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", PROBE, host_malloc.__file__], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return ast.literal_eval(out[0]), int(out[1])


@pytest.mark.skipif(not host_malloc.should_reexec({}), reason="needs THP 'madvise', glibc 2.35")
def test_restart_gets_huge_pages():
    tunables, faults = probe({})
    assert tunables == host_malloc.TUNABLE
    assert faults < PAGES_256MB // 4  # 2 MiB pages: one fault where there were 512.
    tunables, faults = probe({host_malloc.OPT_OUT_VARIABLE: "0"})
    assert tunables == ""
    assert faults > PAGES_256MB // 2  # glibc's default: a fresh mmap, faulted 4 KiB at a time.
    tunables, _ = probe({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert tunables == "glibc.malloc.arena_max=2:" + host_malloc.TUNABLE


def test_tunables_are_added_once():
    assert host_malloc.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert host_malloc.tunables_with_huge_pages("glibc.malloc.arena_max=1") == (
        "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1")
    assert host_malloc.tunables_with_huge_pages("glibc.malloc.hugetlb=0") == (
        "glibc.malloc.hugetlb=0")  # The user's choice wins.


@pytest.mark.parametrize("environ, mode, glibc, expected", [
    ({}, "madvise", (2, 36), True),
    ({host_malloc.OPT_OUT_VARIABLE: "0"}, "madvise", (2, 36), False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", (2, 36), False),
    ({}, "always", (2, 36), False),
    ({}, "never", (2, 36), False),
    ({}, "madvise", (2, 31), False),
])
def test_restart_only_where_it_helps(environ, mode, glibc, expected):
    assert host_malloc.should_reexec(environ, mode, glibc) is expected


def test_thp_mode_is_read_from_the_bracket(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_malloc.thp_mode(str(path)) == "madvise"
    assert host_malloc.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("argv, restarts", [
    (["nerve-jax", "train", "--config", "c.py", "--workdir", "w"], True),
    (["nerve-jax", "predict", "--workdir", "w"], True),
    (["nerve-jax", "check-submission", "s.csv"], False),
    (["nerve-jax"], False),
])
def test_command_restarts_only_for_xla_work(monkeypatch, argv, restarts):
    from nerve_jax import cli

    calls = []
    monkeypatch.setattr(cli.runtime, "reexec_with_huge_pages", lambda: calls.append(1))
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(sys, "argv", argv)
    assert cli.entry() == 0
    assert bool(calls) is restarts
