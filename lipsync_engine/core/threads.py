"""A library's thread count, set for a block of code and restored after it.

Owns: the set-and-restore of any library's thread-count setting given its getter and setter
(torch's while predicting on a CPU, OpenCV's around a fork; numpy's BLAS has its own, locked,
in blas.py). Must not: import anything of the engine (it is core).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def thread_count(get: Callable[[], int], put: Callable[[int], None], count: int) -> Iterator[None]:
    """put(count) for the block, then the count get() returned before it.

    >>> setting = [4]
    >>> with thread_count(lambda: setting[0], lambda n: setting.__setitem__(0, n), 1):
    ...     setting[0]
    1
    >>> setting[0]
    4
    """
    before = int(get())
    put(count)
    try:
        yield
    finally:
        put(before)
