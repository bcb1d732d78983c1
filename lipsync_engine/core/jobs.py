"""Run a list of independent jobs on worker processes with progress and cancellation.

Owns: the process pool (forked where that is safe, so a worker starts with the modules this
process imported; spawned elsewhere), the progress queue from workers, and passing
cancellation into them. Job functions call `report(n)` and `check_cancel()` from this module;
they work the same in-process (workers=1), which the tests use. Must not: know what the jobs do.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from . import blas
from .errors import Cancelled, EnvironmentProblem
from .progress import CancelToken
from .threads import thread_count

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


_FORK_REFUSED: list[str] = []     # what has run in this process that a forked child cannot survive


def refuse_fork(what: str) -> None:
    """Say that `what` has run in this process and a forked child would not survive it: every
    WorkerPool opened from now on spawns its workers. Called by the engine's wrapper of such a
    library before its first use (tracking.py, before a MediaPipe graph is made)."""
    if what not in _FORK_REFUSED:
        _FORK_REFUSED.append(what)


def _fork_is_safe() -> bool:
    """True on Linux when this process runs no thread but its main one and numpy's OpenBLAS
    servers (OpenBLAS stops and restarts them around a fork), has not imported torch, and has
    not run anything that refused forking (refuse_fork).

    A forked child gets only the forking thread: a lock another thread held stays held, and a
    thread pool's bookkeeping names threads that are gone (OpenCV's pool, once used, hangs the
    child's first cv2.setNumThreads). OpenCV's pool is emptied first by the caller
    (_opencv_pool_emptied); a process that runs a Python thread, or still has threads of PyAV's
    decoding, spawns. So does one that has imported torch (its OpenMP threads) or made a
    MediaPipe graph: a child forked after MediaPipe tracked in its parent dies in its first
    graph (measured). Importing MediaPipe alone is safe (no thread, no graph): prepare imports
    it before its workers fork, so that each need not (docs/benchmarks.md).
    """
    if not sys.platform.startswith("linux") or threading.active_count() != 1:
        return False
    if "torch" in sys.modules or _FORK_REFUSED:
        return False
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # OpenBLAS restarts its servers (stopped by an earlier fork) for a large product:
        square = numpy.ones((256, 256))  # then every thread beyond them is another library's
        square @ square
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    return threads <= 1 + blas.server_threads()


@contextmanager
def _opencv_pool_emptied() -> Iterator[None]:
    """OpenCV's worker threads joined for the block (their count restored after; they restart
    on OpenCV's next parallel call), when OpenCV is imported."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None or not hasattr(cv2, "setNumThreads"):
        yield
        return
    with thread_count(cv2.getNumThreads, cv2.setNumThreads, 1):
        yield


def _worker_init(event, progress_queue, warm: tuple[str, ...]) -> None:
    # one worker per core: BLAS and OpenCV thread pools would only oversubscribe the cores
    # (measured: 26 -> 19 ms per atlas frame with two workers on two cores). A spawned worker
    # has not imported numpy yet, so the variables still take effect; a forked one inherited
    # numpy's BLAS, which is set to one thread directly.
    os.environ.update(SINGLE_THREAD_ENV)
    if "numpy" in sys.modules:
        blas.set_threads(1)
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


class Batch:
    """Jobs handed to a WorkerPool (`WorkerPool.start`); `wait()` collects them."""

    def __init__(self, pool: "WorkerPool", fn: Callable, groups: list, on_units: Callable[[int], None]):
        self._pool, self._fn, self._groups, self._on_units = pool, fn, groups, on_units
        self._futures = [pool._pool.submit(fn, job) for job in groups[0]] if groups else []

    def wait(self) -> list:
        """Results in job order, draining progress meanwhile; re-raises the first error
        (Cancelled when the user cancelled)."""
        results = []
        for i in range(len(self._groups)):
            if i:  # the workers are replaced before the next group (WorkerPool.run's jobs_per_worker)
                self._pool.close()
                self._pool._open()
                self._futures = [self._pool._pool.submit(self._fn, job) for job in self._groups[i]]
            results.extend(self._wait_group())
        return results

    def _wait_group(self) -> list:
        pool, futures = self._pool, self._futures
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            _drain(pool._queue, self._on_units)
            if pool.cancel.is_set or any(f.exception() for f in done):
                pool._event.set()  # stop the others at their next unit
                for f in pending:
                    f.cancel()
                wait(pending)
                break
        _drain(pool._queue, self._on_units)
        errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
        real = [e for e in errors if not isinstance(e, Cancelled)]
        if real:
            if isinstance(real[0], BrokenProcessPool):  # a worker killed by a signal (the system's OOM killer...)
                raise EnvironmentProblem("a worker process was killed by the system (out of memory?); finished "
                                         "work is kept and a re-run resumes from it") from real[0]
            raise real[0]
        if errors or pool.cancel.is_set:
            raise Cancelled("cancelled; finished work is kept and a re-run resumes from it")
        return [f.result() for f in futures]


class _Done:
    """A Batch that ran in this process (workers <= 1)."""

    def __init__(self, results: list):
        self._results = results

    def wait(self) -> list:
        return self._results


class WorkerPool:
    """Worker processes (forked or spawned: `start_method`) that run jobs with progress and cancellation.

    Created early with `warm` module names, its workers start and import while the main
    process does other work (probing, reading back a stage), so a later stage starts at once;
    `preload` runs a warm-up (imports, caches) in idle workers before a stage that needs it.
    One pool serves every stage of a run. workers <= 1 runs every job in this process.
    """

    def __init__(self, workers: int, cancel: CancelToken, warm: tuple[str, ...] = ()):
        self.workers, self.cancel, self.warm, self._pool = workers, cancel, tuple(warm), None
        self.start_method = "inline"  # "fork" or "spawn" once workers start (workers > 1)
        if workers > 1:
            self._open()

    def _open(self) -> None:
        # forked workers start with the modules this process imported: about 0.3 s of start-up
        # less per worker, a sixth of a 3 s clip's preparation (docs/benchmarks.md); spawned
        # ones import afresh, where a fork is not safe (_fork_is_safe) or not offered
        with _opencv_pool_emptied():
            self.start_method = "fork" if _fork_is_safe() else "spawn"
            ctx = mp.get_context(self.start_method)
            self._event, self._queue = ctx.Event(), ctx.Queue()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                             initargs=(self._event, self._queue, self.warm))
            for _ in range(self.workers):  # with "fork", every worker is forked now, in this thread
                self._pool.submit(_noop)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, wait_for_exit: bool = True) -> None:
        """Stop the workers. wait_for_exit=False returns at once while they exit (between
        stages, when no job is left: the main process goes on meanwhile)."""
        if self._pool is not None:
            self._event.set()
            self._pool.shutdown(wait=wait_for_exit, cancel_futures=True)
            self._pool = None
            self._queue.close()
            if wait_for_exit:
                self._queue.join_thread()
            del self._queue, self._event  # their semaphores are released with them

    def preload(self, fn: Callable[[], None]) -> None:
        """Run fn() (imports, caches) once per worker now, while they are idle: no waiting, best
        effort (a worker may run it twice and another not at all); errors are left to the jobs."""
        if self._pool is not None:
            for _ in range(self.workers):
                self._pool.submit(fn)

    def start(self, fn: Callable, jobs: Sequence, on_units: Callable[[int], None],
              jobs_per_worker: int | None = None):
        """Hand fn(job) for every job to the workers and return at once; `.wait()` on the
        returned batch collects the results (see `run`). Without workers the jobs run here, now.

        jobs_per_worker : the workers are replaced by fresh ones after each workers x
        jobs_per_worker jobs, for work that leaks memory in native code. (ProcessPoolExecutor's
        max_tasks_per_child deadlocks on Python 3.11, so the whole pool is renewed instead.)
        """
        if self._pool is None:
            return _Done(_run_inline(fn, jobs, on_units, self.cancel))
        group = max(1, self.workers * jobs_per_worker) if jobs_per_worker else max(1, len(jobs))
        return Batch(self, fn, [jobs[i:i + group] for i in range(0, len(jobs), group)], on_units)

    def run(self, fn: Callable, jobs: Sequence, on_units: Callable[[int], None],
            jobs_per_worker: int | None = None) -> list:
        """Run fn(job) for every job; results in job order; re-raises the first error."""
        return self.start(fn, jobs, on_units, jobs_per_worker).wait()


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
