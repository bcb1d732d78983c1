"""numpy's BLAS thread count: set for a block of code (one thread while predicting on a CPU),
set for good (a forked worker process, core/jobs.py), and how many server threads it runs.

numpy's OpenBLAS runs one thread per core. The audio encoder's matrix products are small:
one thread is as fast as two on this 2-core machine when it is idle, and does not stall when
other work holds the second core (as the predictor's one torch thread, docs/predict.md).
threadpoolctl does this in general; this is the part the engine needs. Where numpy's
BLAS is not an OpenBLAS found beside numpy, these functions do nothing (and count none).
Must not: import anything of the engine (it is core).
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _openblas():
    """(get, set) thread-count functions of the OpenBLAS numpy loaded, or None."""
    import numpy

    root = Path(numpy.__file__).resolve().parent
    for path in [*root.parent.glob("numpy.libs/*openblas*"), *root.glob(".dylibs/*openblas*")]:
        try:
            lib = ctypes.CDLL(str(path))        # already loaded by numpy: the same library
        except OSError:
            continue
        for suffix in ("64_", "_64", ""):
            get = getattr(lib, f"openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


def set_threads(count: int) -> None:
    """numpy's BLAS uses `count` threads from now on (a forked worker process: one per core)."""
    functions = _openblas()
    if functions is not None:
        with _LOCK:
            functions[1](count)


def server_threads() -> int:
    """How many threads numpy's OpenBLAS runs besides the caller's (0 where none is found)."""
    functions = _openblas()
    return max(0, int(functions[0]()) - 1) if functions is not None else 0


@contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """numpy's BLAS uses `count` threads inside the block; the earlier count is restored after."""
    functions = _openblas()
    if functions is None:
        yield
        return
    get, put = functions
    with _LOCK:
        before = int(get())
        put(count)
    try:
        yield
    finally:
        with _LOCK:
            put(before)
