"""Keep freed memory in the process's heap while training: glibc's malloc settings, once per process.

A training step allocates and frees the same few dozen tensors of 1-32 MB every step. glibc
serves a block that large with its own mmap and hands it back to the kernel when freed, so
every step pays the page faults (and the kernel's zeroing) of about a gigabyte of fresh
pages: on this 2-core machine a cpu-preset step at batch 32 takes 214-221 ms with glibc's
defaults and 176-179 ms with the heap kept (benchmarks/bench_train.py heap, docs/benchmarks.md). The
values computed are the same; only where the memory comes from changes. Peak memory is
about the same (the blocks are reused instead of mapped again), but up to TRIM_THRESHOLD of
freed memory stays with the process until it exits.

Where the C library is not glibc (macOS, Windows, musl), keep_freed_memory does nothing.
Must not: import anything of the engine (it is core).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20       # blocks up to 32 MiB (glibc's largest setting) come from the heap
TRIM_THRESHOLD = 256 << 20      # free memory at the top of the heap kept before it is trimmed
TOP_PAD = 64 << 20              # extra memory asked of the kernel when the heap grows

_LOCK = threading.Lock()
_DONE: list[bool] = []


def keep_freed_memory() -> bool:
    """Set glibc's malloc to serve blocks up to 32 MiB from the heap and keep freed ones (once per
    process; later calls return the first result). True when the settings took effect."""
    with _LOCK:
        if not _DONE:
            _DONE.append(_set())
        return _DONE[0]


def _set() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version      # glibc only (musl has mallopt as a stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
          mallopt(M_TOP_PAD, TOP_PAD)]
    return all(v == 1 for v in ok)
