"""Run a list of independent jobs on worker processes with progress and cancellation.

Owns: the process pool (spawn, so MediaPipe and OpenCV start clean in each worker), the
progress queue from workers, and passing cancellation into them. Job functions call
`report(n)` and `check_cancel()` from this module; they work the same in-process
(workers=1), which the tests use. Must not: know what the jobs do.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Sequence

from .errors import Cancelled
from .progress import CancelToken

_state: dict = {"report": lambda n: None, "cancelled": lambda: False}
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_S = 0.1  # how often the main process drains progress and looks at the cancel flag


def report(units: int) -> None:
    """Called by a job: `units` more units of work are done."""
    _state["report"](units)


def check_cancel() -> None:
    """Called by a job between units: raise Cancelled if the user asked to stop."""
    if _state["cancelled"]():
        raise Cancelled("cancelled; finished work is kept and a re-run resumes from it")


def _worker_init(event, progress_queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core: no thread pools fighting over the cores
    except ImportError:
        pass
    _state["report"] = progress_queue.put
    _state["cancelled"] = event.is_set


def run_jobs(fn: Callable, jobs: Sequence, workers: int, on_units: Callable[[int], None],
             cancel: CancelToken) -> list:
    """Run fn(job) for every job; returns results in job order; re-raises the first error."""
    if workers <= 1 or len(jobs) <= 1:
        return _run_inline(fn, jobs, on_units, cancel)
    ctx = mp.get_context("spawn")
    event, progress_queue = ctx.Event(), ctx.Queue()
    with _single_threaded_children(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init,
                             initargs=(event, progress_queue)) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            _drain(progress_queue, on_units)
            if cancel.is_set or any(f.exception() for f in done):
                event.set()  # stop the others at their next unit
                for f in pending:
                    f.cancel()
                wait(pending)
                break
        _drain(progress_queue, on_units)
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
    real = [e for e in errors if not isinstance(e, Cancelled)]
    if real:
        raise real[0]
    if errors or cancel.is_set:
        raise Cancelled("cancelled; finished work is kept and a re-run resumes from it")
    return [f.result() for f in futures]


@contextmanager
def _single_threaded_children():
    """Workers inherit these: with one worker per core, BLAS thread pools only oversubscribe
    (measured: 26 ms -> 19 ms per atlas frame with two workers on two cores)."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _drain(progress_queue, on_units) -> None:
    while True:
        try:
            on_units(progress_queue.get_nowait())
        except queue.Empty:
            return


def _run_inline(fn, jobs, on_units, cancel: CancelToken) -> list:
    saved = dict(_state)
    _state["report"], _state["cancelled"] = on_units, lambda: cancel.is_set
    try:
        return [fn(job) for job in jobs]
    finally:
        _state.update(saved)
