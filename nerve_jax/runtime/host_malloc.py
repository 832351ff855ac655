"""Huge pages for glibc's large allocations, so that XLA:CPU's temporaries fault 2 MiB at a time.

XLA:CPU allocates each execution's temporaries afresh; glibc serves an allocation that large with
a fresh mmap and hands it back with munmap, so every step faults all of it in again, 4 KiB page
by page. glibc's tunable `glibc.malloc.hugetlb=1` makes it ask for transparent huge pages on
those mappings (docs/performance.md, "Train step on the CPU", has the step times).

glibc reads tunables when a process starts, so `nerve-jax train|evaluate|predict` and the
benchmarks restart themselves once with GLIBC_TUNABLES extended (`reexec_with_huge_pages`, via
`runtime.reexec_with_huge_pages` on the CPU backend only); another program sets it itself:
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py. It matters where the kernel's
transparent huge pages are in "madvise" mode (Debian's and Ubuntu's default): in "always" mode
the kernel does it unasked, in "never" mode nothing does. glibc has the tunable since 2.35.
NERVE_JAX_HUGE_PAGES=0 turns the restart off.
"""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_VARIABLE = "NERVE_JAX_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ('always', 'madvise', 'never'), None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def tunables_with_huge_pages(tunables: str) -> str:
    """A GLIBC_TUNABLES value with glibc.malloc.hugetlb=1 added (other tunables kept)."""
    items = [item for item in tunables.split(":") if item]
    if not any(item.startswith("glibc.malloc.hugetlb=") for item in items):
        items.append(TUNABLE)
    return ":".join(items)


def should_reexec(environ=os.environ, mode: str | None = None,
                  glibc: tuple[int, ...] | None = None) -> bool:
    """True when a restart with the tunable would change how this process gets its pages."""
    if environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    tunables = environ.get("GLIBC_TUNABLES", "")
    if tunables_with_huge_pages(tunables) == tunables:
        return False  # Already set, by us or by the user: never restart twice.
    glibc = glibc_version() if glibc is None else glibc
    mode = thp_mode() if mode is None else mode
    return mode == "madvise" and glibc is not None and glibc >= MIN_GLIBC


def reexec_with_huge_pages(environ=os.environ) -> None:
    """Replaces this process by the same command with the tunable set, when it would help.

    Call it first thing in a program's entry point: whatever ran before is done again."""
    if should_reexec(environ):
        env = dict(environ, GLIBC_TUNABLES=tunables_with_huge_pages(
            environ.get("GLIBC_TUNABLES", "")))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
