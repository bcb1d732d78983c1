"""Run a list of independent jobs on worker processes with progress and cancellation.

Owns: the process pool (spawn, so MediaPipe and OpenCV start clean in each worker), the
progress queue from workers, and passing cancellation into them. Job functions call
`report(n)` and `check_cancel()` from this module; they work the same in-process
(workers=1), which the tests use. Must not: know what the jobs do.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
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


class FrameReporter:
    """on_frame(n) for tracking in a job: reports progress and checks for cancel every `every`
    frames; finish(total) reports the rest."""

    def __init__(self, every: int = 10):
        self.every, self.done = every, 0

    def __call__(self, n: int) -> None:
        if n - self.done >= self.every:
            report(n - self.done)
            self.done = n
            check_cancel()

    def finish(self, total: int) -> None:
        report(total - self.done)
        self.done = total


def _worker_init(event, progress_queue, warm: tuple[str, ...]) -> None:
    # one worker per core: BLAS and OpenCV thread pools would only oversubscribe the cores
    # (measured: 26 -> 19 ms per atlas frame with two workers on two cores). numpy is not
    # imported yet at this point, so the variables still take effect.
    os.environ.update(SINGLE_THREAD_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    _state["report"] = progress_queue.put
    _state["cancelled"] = event.is_set
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    for module in warm:
        importlib.import_module(module)


def _noop() -> None:
    """A first task that makes the pool start every worker (and run its imports) now."""


class WorkerPool:
    """Spawned worker processes that run jobs with progress and cancellation.

    Created early with `warm` module names, its workers start and import while the main
    process does other work (tracking a single take), so a later stage starts at once.
    workers <= 1 runs every job in this process.
    """

    def __init__(self, workers: int, cancel: CancelToken, warm: tuple[str, ...] = ()):
        self.workers, self.cancel, self._pool = workers, cancel, None
        if workers <= 1:
            return
        ctx = mp.get_context("spawn")
        self._event, self._queue = ctx.Event(), ctx.Queue()
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                         initargs=(self._event, self._queue, tuple(warm)))
        for _ in range(workers):
            self._pool.submit(_noop)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._event.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._queue.close()
            self._queue.join_thread()
            del self._queue, self._event  # their semaphores are released with them

    def run(self, fn: Callable, jobs: Sequence, on_units: Callable[[int], None]) -> list:
        """Run fn(job) for every job; results in job order; re-raises the first error."""
        if self._pool is None or len(jobs) <= 1:
            return _run_inline(fn, jobs, on_units, self.cancel)
        futures = [self._pool.submit(fn, job) for job in jobs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            _drain(self._queue, on_units)
            if self.cancel.is_set or any(f.exception() for f in done):
                self._event.set()  # stop the others at their next unit
                for f in pending:
                    f.cancel()
                wait(pending)
                break
        _drain(self._queue, on_units)
        errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
        real = [e for e in errors if not isinstance(e, Cancelled)]
        if real:
            raise real[0]
        if errors or self.cancel.is_set:
            raise Cancelled("cancelled; finished work is kept and a re-run resumes from it")
        return [f.result() for f in futures]


def run_jobs(fn: Callable, jobs: Sequence, workers: int, on_units: Callable[[int], None],
             cancel: CancelToken, jobs_per_worker: int | None = None) -> list:
    """Run fn(job) for every job on pools of their own (see WorkerPool.run).

    jobs_per_worker : a fresh pool is started after each workers x jobs_per_worker jobs, for
    work that leaks memory in native code. (ProcessPoolExecutor's max_tasks_per_child
    deadlocks on Python 3.11, so whole pools are renewed instead.)
    """
    group = len(jobs) if not jobs_per_worker else max(1, workers * jobs_per_worker)
    results = []
    for i in range(0, len(jobs), max(group, 1)):
        part = jobs[i:i + group]
        with WorkerPool(min(workers, len(part)), cancel) as pool:
            results.extend(pool.run(fn, part, on_units))
    return results


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
