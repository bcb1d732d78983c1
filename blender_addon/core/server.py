"""A warm engine: one `lipsync serve` process kept running between jobs, and the jobs sent to it.

Starting the engine costs about as much as predicting a line (Python, imports, the model), so
predictions go to one `python -m lipsync_engine serve` that stays up while Blender runs: the
model is loaded once, and a batch or a repeated prediction is one request (docs/predict.md,
"lipsync serve"). Owns: starting that process (lazily, again when it has ended or the engine
settings changed), its stdout reader (protocol messages routed to their request by id) and
stderr (a ring buffer and a log file), shutting it down (unregister, quit: stdin closed, then
the process group killed; the server also ends by itself when Blender's end closes its stdin),
and ServeJob, an EngineJob whose messages come from the server: the same poll / cancel / kill
/ outcome, so JobChain, the modal operators and the status bar work as with a process per job.
Must not: import bpy (tests run it without Blender) or any engine module.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path

from .client import (EXIT_CANCELLED, EXIT_GRACE_S, PREFERENCES_HINT, STDERR_TAIL_LINES, EngineJob, EngineSpec, JobOutcome,
                     Message, ProtocolError, parse_line, popen_engine, start_readers)

SHUTDOWN_WAIT_S = 2.0          # seconds a server may take to end after its stdin closed
_SERVERS: "weakref.WeakSet[EngineServer]" = weakref.WeakSet()


class EngineServer:
    """One `python -m lipsync_engine serve` process; start() it, then job() makes ServeJobs."""

    def __init__(self, spec: EngineSpec, log_path: Path | None = None):
        self.spec = spec
        self.env = spec.environment()
        self.key = server_key(spec)
        self.log_path = Path(log_path) if log_path else None
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._jobs: dict = {}                     # request id -> ServeJob not yet finished
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._readers: list = []
        _SERVERS.add(self)

    # -- the process -----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def started(self) -> bool:
        return self._proc is not None

    def start(self) -> "EngineServer":
        """Start the process (OSError if the engine Python cannot run); nothing if it already runs."""
        if self._proc is not None:
            return self
        # in a session of its own: its workers die with it (killpg)
        self._proc = popen_engine(self.spec.command("serve"), self.env, self.spec.working_dir(), subprocess.PIPE)
        self.pid = self._proc.pid
        self._readers, self.log_path = start_readers(self._read_stdout, self._read_stderr, self.log_path)
        return self

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                m = parse_line(line)
            except ProtocolError as e:       # a library printed to stdout: a warning for the running job
                m = Message("WARN", {"message": f"engine printed a non-protocol line ({e})"})
            job = self._route(m)
            if job is not None:
                job._last_activity = time.monotonic()
                job.messages.put(m)

    def _route(self, m: Message):
        """The job a message belongs to: its id's, or (a line without an id) the oldest running job."""
        with self._lock:
            if "id" in m.payload:
                return self._jobs.get(str(m.payload["id"]))
            if m.kind == "WARN" and self._jobs:
                return next(iter(self._jobs.values()))
        return None                                  # the server's own STATUS / DONE

    def _read_stderr(self, log) -> None:
        try:
            for line in self._proc.stderr:
                self.stderr_tail.append(line.rstrip("\r\n"))
                with self._lock:
                    for job in self._jobs.values():
                        job._last_activity = time.monotonic()
                if log is not None:
                    log.write(line)
                    log.flush()
        finally:
            if log is not None:
                log.close()

    def readers_done(self, timeout: float = 0.0) -> bool:
        """True once stdout and stderr have reached their end (the process has ended)."""
        for t in self._readers:
            t.join(timeout)
        return not any(t.is_alive() for t in self._readers)

    # -- requests --------------------------------------------------------------------------
    def job(self, label: str, subcommand: str, *args: str, hang_timeout_s: float | None = None) -> "ServeJob":
        """A ServeJob (not started) that runs `lipsync SUBCOMMAND ARGS` in this server; paths absolute."""
        return ServeJob(self, label, subcommand, [str(a) for a in args],
                        self.spec.hang_timeout_s if hang_timeout_s is None else hang_timeout_s)

    def submit(self, job: "ServeJob") -> str:
        """Start the server if needed and send the job's request; its id. OSError: the engine Python
        cannot run, or the server's stdin is closed (it has ended)."""
        self.start()
        rid = str(next(self._ids))
        with self._lock:
            self._jobs[rid] = job
        try:
            self.send({"id": rid, "command": job.request[0], "args": list(job.request[1])})
        except OSError:
            with self._lock:
                self._jobs.pop(rid, None)
            raise
        return rid

    def forget(self, rid: str) -> None:
        with self._lock:
            self._jobs.pop(rid, None)

    def send(self, obj: dict) -> None:
        """One line to the server's stdin (OSError, e.g. BrokenPipeError, when it has ended)."""
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.closed:
            raise BrokenPipeError("the engine server is not running")
        with self._write_lock:
            self._proc.stdin.write(json.dumps(obj) + "\n")
            self._proc.stdin.flush()

    def cancel(self, rid: str) -> None:
        try:
            self.send({"cancel": rid})
        except OSError:
            pass

    # -- the end ---------------------------------------------------------------------------
    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Cancel what runs, close stdin (the server ends after answering), kill it after wait_s."""
        if self._proc is None:
            return
        with self._lock:
            running = list(self._jobs)
        for rid in running:
            self.cancel(rid)
        try:
            with self._write_lock:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Kill the server and every process it started (its own session and process group)."""
        if self._proc is None:
            return
        if os.name != "nt":
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (OSError, AttributeError):     # the group has ended already
                pass
        if self._proc.poll() is None:
            try:
                self._proc.kill()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def server_key(spec: EngineSpec) -> tuple:
    """What a running server must match to serve a job: the engine Python and the engine copy (a
    change of either in the preferences starts a new server; the device goes with each request)."""
    return spec.python, spec.engine_dir


class ServeJob(EngineJob):
    """An EngineJob whose messages come from an EngineServer request instead of a process of its own.

    The same start / poll / cancel / kill / wait and JobOutcome: cancel sends {"cancel": id} (the
    server stays up); kill, a hang or a cancel not answered within CANCEL_GRACE_S kill the server
    (the next job starts a new one). A server that ends while the job runs is a crash, reported
    with the server's last stderr lines.
    """

    def __init__(self, server: EngineServer, label: str, subcommand: str, args: list, hang_timeout_s: float):
        super().__init__(label, server.spec.command("serve"), server.env, log_path=server.log_path,
                         hang_timeout_s=hang_timeout_s, missing_hint=server.spec.python)
        self.server = server
        self.request = (subcommand, tuple(args))     # what is asked of the server
        self.request_id: str | None = None

    def start(self) -> "ServeJob":
        self._last_activity = time.monotonic()
        try:
            self.request_id = self.server.submit(self)
        except OSError as e:
            hint = self.server.spec.python
            error = f"engine Python not found or not runnable: {hint} ({e.strerror or e}); {PREFERENCES_HINT}" \
                if not self.server.started or self.server.pid is None else \
                f"{self.label}: the engine server has ended ({e}); run it again"
            self.outcome = JobOutcome("missing" if not self.server.started else "crashed", None, error)
        self.log_path = self.server.log_path
        return self

    def poll(self) -> list[Message]:
        if self.outcome is not None:
            return []
        out = self._drain()
        if self._done_payload is None:
            self._check_cancel_and_hang()
            if not self.server.alive:             # ended: wait (briefly, never blocking) for its last lines
                now = time.monotonic()
                self._exited_at = self._exited_at or now
                if not self.server.readers_done() and now - self._exited_at < 3 * EXIT_GRACE_S:
                    return out
                out += self._drain()
        if self._done_payload is not None or not self.server.alive:
            self.outcome = self._finish_request()
        return out

    def _finish_request(self) -> JobOutcome:
        self.server.forget(self.request_id)
        self.stderr_tail.extend(self.server.stderr_tail)
        done = self._done_payload
        if done is not None:
            code = int(done.get("exit_code", 0))
        else:
            code = self.server._proc.returncode if self.server._proc is not None else None
            code = EXIT_CANCELLED if code is None and self._cancel_at is not None else code
        status, error = self._classify(code if code is not None else -1, done is not None,
                                       "\n".join(self.stderr_tail))
        if done is not None and status == "error" and self._errors:    # bad usage: the engine's one line
            error = f"{self.label}: {self._errors[-1]}"
        return JobOutcome(status, code, error, list(self._results), list(self._warnings),
                          "\n".join(self.stderr_tail), str(self.log_path or ""))

    def cancel(self) -> None:
        """Ask the server to stop this request (it keeps finished work and answers exit code 130)."""
        if self.outcome is not None or self.request_id is None or self._cancel_at is not None:
            return
        self._cancel_at = time.monotonic()
        self.server.cancel(self.request_id)

    def _kill(self) -> None:
        self.server.kill()

    def _kill_group(self) -> None:
        self.server.kill()


def shutdown_all() -> None:
    """Every server this module started (at interpreter exit: none outlives Blender)."""
    for server in list(_SERVERS):
        server.shutdown(wait_s=0.5)


atexit.register(shutdown_all)
