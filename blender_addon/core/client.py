"""Run the LipSync3D engine in a subprocess and read its JSON-lines protocol.

Owns: the engine's command line and environment (PYTHONPATH pointing at the engine bundled
in the add-on, so add-on and engine versions match), one reader thread per pipe (stdout:
protocol messages into a queue; stderr: a ring buffer and a log file), cancelling by SIGINT
(a kill after a grace period), hang detection, a chain of jobs run one after another, the
progress/ETA arithmetic, and turning every way a run can end (DONE, ERROR, a crash, a hang,
a missing engine) into one JobOutcome whose message a user can read.
Must not: import bpy (tests run it without Blender) or any engine module (torch, mediapipe).

Protocol version 1 (interop.py, shared with the engine): one JSON array per line on stdout,
["STATUS"|"PROGRESS"|"WARN"|"ERROR"|"RESULT"|"DONE", {...}], DONE last with
{"exit_code", "protocol"}. Exit codes: 0 OK, 1 handled error, 2 bad usage, 3 internal
error, 4 the machine (disk full, read-only, no CUDA), 130 cancelled.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# the protocol's kinds, version and exit codes are the engine's (interop.py, shared)
from .interop import (EXIT_CANCELLED, EXIT_CRASH, EXIT_ENVIRONMENT, EXIT_ERROR, EXIT_OK, EXIT_USAGE,  # noqa: F401
                      MESSAGE_TYPES, PROTOCOL_VERSION, decode_message)

STDERR_TAIL_LINES = 200        # lines of the engine's stderr kept for error reports
CANCEL_GRACE_S = 15.0          # seconds between SIGINT and a hard kill
EXIT_GRACE_S = 1.0             # seconds the pipes may stay open after the engine's main process ended
POLL_SLEEP_S = 0.05            # blocking waits poll this often
ENGINE_MODULE = "lipsync_engine"
PREFERENCES_HINT = "set it in Edit > Preferences > Add-ons > LipSync3D"


class ProtocolError(ValueError):
    """A stdout line that is not a protocol message."""


@dataclass(frozen=True)
class Message:
    kind: str       # one of MESSAGE_TYPES
    payload: dict   # the message's object, e.g. {"stage": "train", "done": 3, "total": 30}


def parse_line(line: str) -> Message:
    """One stdout line -> Message; ProtocolError naming what is wrong.

    Example: ``parse_line('["DONE", {"exit_code": 0}]') == Message("DONE", {"exit_code": 0})``.
    """
    return Message(*decode_message(line, ProtocolError))


# ---------------------------------------------------------------------------------------------
# Where the engine is
# ---------------------------------------------------------------------------------------------

def addon_dir() -> Path:
    return Path(__file__).resolve().parents[1]      # this file is <add-on>/core/client.py


def bundled_engine_dir(root: Path | None = None) -> Path | None:
    """The folder holding `lipsync_engine/`: <add-on>/engine in the built zip, or the
    repository root when the add-on runs from a source checkout; None if neither."""
    root = root or addon_dir()
    for candidate in (root / "engine", root.parent):
        if (candidate / ENGINE_MODULE / "__init__.py").is_file():
            return candidate
    return None


def default_engine_python(root: Path | None = None, user_dir: Path | None = None) -> str:
    """The engine Python used when the preference is empty: $LIPSYNC3D_ENGINE_PYTHON, the
    environment the add-on created (user_dir/engine-venv), or the README's .venv of a checkout."""
    if os.environ.get("LIPSYNC3D_ENGINE_PYTHON"):
        return os.environ["LIPSYNC3D_ENGINE_PYTHON"]
    root = root or addon_dir()
    candidates = [Path(user_dir) / "engine-venv"] if user_dir else []
    candidates.append(root.parent / ".venv")
    for venv in candidates:
        python = venv_python(venv)
        if python.is_file():
            return str(python)
    return ""


def venv_python(venv: Path) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass(frozen=True)
class EngineSpec:
    """How to start the engine: which Python, and which copy of the engine package."""

    python: str                          # the engine environment's interpreter
    engine_dir: str | None = None        # folder holding lipsync_engine/ (None = the one installed in python)
    device: str = "auto"                 # auto, cpu, cuda, mps: passed to subcommands that take --device
    hang_timeout_s: float = 600.0        # no output at all for this long = the engine hangs

    def command(self, subcommand: str, *args: str) -> list[str]:
        """`python -m lipsync_engine --json SUBCOMMAND ARGS...` as an argument list."""
        return [self.python, "-m", ENGINE_MODULE, "--json", subcommand, *[str(a) for a in args]]

    def environment(self, base: dict | None = None) -> dict:
        """The child's environment: PYTHONPATH = the bundled engine only, unbuffered UTF-8 output."""
        env = dict(os.environ if base is None else base)
        env.pop("PYTHONHOME", None)     # Blender's own Python must not leak into the engine's
        if self.engine_dir:
            env["PYTHONPATH"] = str(self.engine_dir)
        else:
            env.pop("PYTHONPATH", None)
        env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", GLOG_minloglevel="2")
        return env

    def job(self, label: str, subcommand: str, *args: str, log_path: Path | None = None) -> "EngineJob":
        """An EngineJob (not started) running SUBCOMMAND; paths in args must be absolute."""
        return EngineJob(label, self.command(subcommand, *args), self.environment(), log_path=log_path,
                         hang_timeout_s=self.hang_timeout_s, missing_hint=self.python, cwd=self.working_dir())

    def working_dir(self) -> str:
        """`python -m` puts the working directory first on sys.path: run in the engine's own folder
        (so the bundled engine wins over any other copy), or in the temp folder."""
        if self.engine_dir and Path(self.engine_dir).is_dir():
            return str(self.engine_dir)
        return tempfile.gettempdir()


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------

@dataclass
class ProgressState:
    """The latest PROGRESS of a job with its ETA (seconds, None until it can be estimated)."""

    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    eta_s: float | None = None
    _stage_start: float = 0.0
    _first_done: int = 0

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def update(self, payload: dict, now: float) -> None:
        stage = str(payload.get("stage", ""))
        done, total = int(payload.get("done", 0)), int(payload.get("total", 0))
        if stage != self.stage or done < self.done:
            self._stage_start, self._first_done = now, done   # a new stage: the rate restarts
        self.stage, self.done, self.total, self.message = stage, done, total, str(payload.get("message") or "")
        elapsed, progressed = now - self._stage_start, done - self._first_done
        self.eta_s = elapsed / progressed * (total - done) if progressed > 0 and elapsed > 0.5 else None


def format_eta(seconds: float | None) -> str:
    """Example: ``format_eta(75) == "1m15s"``; "" when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ---------------------------------------------------------------------------------------------
# One engine run
# ---------------------------------------------------------------------------------------------

@dataclass
class JobOutcome:
    """How a job ended. status: ok, error, cancelled, crashed, hung, missing."""

    status: str
    exit_code: int | None
    error: str = ""                                  # one line for the UI ("" when ok)
    results: list = field(default_factory=list)      # RESULT payloads, in order
    warnings: list = field(default_factory=list)     # WARN messages (text)
    stderr_tail: str = ""                            # the last lines of the engine's stderr
    log_path: str = ""                               # the full stderr log, if one was written

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"


def popen_engine(command: list[str], env: dict, cwd, stdin) -> subprocess.Popen:
    """Start an engine process with its output piped as text lines, in a session (process group) of its
    own, so that its workers end with it and Ctrl-C in Blender's terminal is the add-on's to relay.
    OSError when the engine Python cannot run."""
    popen = dict(stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, text=True,
                 encoding="utf-8", errors="replace", bufsize=1)
    if os.name == "nt":
        popen["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        popen["start_new_session"] = True
    return subprocess.Popen(command, **popen)


def start_readers(read_stdout, read_stderr, log_path: Path | None) -> tuple[list[threading.Thread], Path | None]:
    """Start the two reader threads of an engine process; stderr is also written to log_path when it can
    be opened. Returns (the threads, log_path or None when there is no log)."""
    log = None
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "w", encoding="utf-8")
        except OSError:
            log_path = None
    threads = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=read_stderr, args=(log,), daemon=True)]
    for t in threads:
        t.start()
    return threads, log_path


class EngineJob:
    """One engine subprocess. start(), then poll() from the UI thread (never blocks), or wait().

    protocol=False runs a plain program (pip, venv): each stdout line becomes a STATUS message.
    """

    def __init__(self, label: str, command: list, env: dict | None = None, log_path: Path | None = None,
                 hang_timeout_s: float | None = 600.0, protocol: bool = True, missing_hint: str = "",
                 cwd: str | None = None):
        self.label, self.command, self.env, self.cwd = label, [str(c) for c in command], env, cwd
        self.log_path = Path(log_path) if log_path else None
        self.hang_timeout_s, self.protocol = hang_timeout_s, protocol
        self.missing_hint = missing_hint or self.command[0]
        self.progress = ProgressState()
        self.outcome: JobOutcome | None = None
        self.messages: queue.Queue = queue.Queue()
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._results, self._warnings, self._errors = [], [], []
        self._done_payload: dict | None = None
        self._proc: subprocess.Popen | None = None
        self._threads: list = []
        self._last_activity = 0.0
        self._cancel_at: float | None = None
        self._hung = False
        self._exited_at: float | None = None     # when the main process was first seen ended
        self._orphans = False                    # workers outlived it and were stopped

    # -- starting --------------------------------------------------------------------------
    def start(self) -> "EngineJob":
        self._last_activity = time.monotonic()
        try:
            self._proc = popen_engine(self.command, self.env, self.cwd, subprocess.DEVNULL)
        except OSError as e:
            self.outcome = JobOutcome("missing", None, f"engine Python not found or not runnable: "
                                      f"{self.missing_hint} ({e.strerror or e}); {PREFERENCES_HINT}")
            return self
        self._threads, self.log_path = start_readers(self._read_stdout, self._read_stderr, self.log_path)
        return self

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            self._last_activity = time.monotonic()
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not self.protocol:
                self.messages.put(Message("STATUS", {"message": line}))
                continue
            try:
                self.messages.put(parse_line(line))
            except ProtocolError as e:  # a library printed to stdout: keep it, but as a warning
                self.messages.put(Message("WARN", {"message": f"engine printed a non-protocol line ({e})"}))

    def _read_stderr(self, log) -> None:
        try:
            for line in self._proc.stderr:
                self._last_activity = time.monotonic()
                self.stderr_tail.append(line.rstrip("\r\n"))
                if log is not None:
                    log.write(line)
                    log.flush()
        finally:
            if log is not None:
                log.close()

    # -- polling ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def poll(self) -> list[Message]:
        """Messages that arrived since the last call (never blocks); sets .outcome at the end."""
        if self.outcome is not None and self._proc is None:
            return []
        out = self._drain()
        if self.outcome is None:
            self._check_cancel_and_hang()
            if self._proc.poll() is not None and self._pipes_closed():
                out += self._drain()
                self.outcome = self._finish(self._proc.returncode)
        return out

    def _pipes_closed(self) -> bool:
        """The main process has ended: wait (briefly) for the readers' end-of-file. Worker processes
        that outlive it keep the pipes open; after EXIT_GRACE_S they are stopped (the whole process
        group), and after twice that the job ends anyway (a worker that left the group)."""
        if not any(t.is_alive() for t in self._threads):
            return True
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
            return False
        if now - self._exited_at > EXIT_GRACE_S and not self._orphans:
            self._orphans = True
            self._kill_group()
        return now - self._exited_at > 3 * EXIT_GRACE_S

    def _drain(self) -> list[Message]:
        out = []
        while True:
            try:
                m = self.messages.get_nowait()
            except queue.Empty:
                return out
            self._record(m)
            out.append(m)

    def _record(self, m: Message) -> None:
        text = str(m.payload.get("message", ""))
        if m.kind == "PROGRESS":
            self.progress.update(m.payload, time.monotonic())
        elif m.kind == "RESULT":
            self._results.append(m.payload)
        elif m.kind == "WARN":
            self._warnings.append(text)
        elif m.kind == "ERROR":
            self._errors.append(text)
        elif m.kind == "DONE":
            self._done_payload = m.payload
            if int(m.payload.get("protocol", PROTOCOL_VERSION)) > PROTOCOL_VERSION:
                self._warnings.append(f"the engine speaks protocol {m.payload['protocol']}, this add-on "
                                      f"{PROTOCOL_VERSION}; update the add-on")

    def _check_cancel_and_hang(self) -> None:
        now = time.monotonic()
        if self._cancel_at is not None and now - self._cancel_at > CANCEL_GRACE_S:
            self._kill()
        elif self.hang_timeout_s and now - self._last_activity > self.hang_timeout_s and not self._hung:
            self._hung = True
            self._kill()

    def wait(self, timeout_s: float | None = None, on_message=None) -> JobOutcome:
        """Block until the job ends (tests, background mode); on_message(Message) for each message."""
        _poll_until_done(self, timeout_s, on_message)
        for m in self.poll():
            if on_message:
                on_message(m)
        return self.outcome

    # -- stopping --------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop (SIGINT: it keeps finished work and exits 130); workers still
        running once it has ended, or after CANCEL_GRACE_S, are killed with it (the process group)."""
        if self._proc is None or self._proc.poll() is not None or self._cancel_at is not None:
            return
        self._cancel_at = time.monotonic()
        try:
            self._proc.send_signal(signal.CTRL_BREAK_EVENT if os.name == "nt" else signal.SIGINT)
        except OSError:
            pass

    def kill(self) -> None:
        """Stop at once (the UI's last resort; also after a hang)."""
        if self._cancel_at is None:
            self._cancel_at = time.monotonic()
        self._kill()

    def _kill(self) -> None:
        """Kill the engine and every process it started (its own session and process group)."""
        if self._proc is not None:
            self._kill_group()
            if self._proc.poll() is None:
                try:
                    self._proc.kill()
                except OSError:
                    pass

    def _kill_group(self) -> None:
        """SIGKILL the engine's process group (its pid: start() gives it a new session); the
        members left once the main process has ended are its orphaned workers."""
        if self._proc is None or os.name == "nt":
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (OSError, AttributeError):   # no such group: everything has ended already
            pass

    # -- the end ---------------------------------------------------------------------------
    def _finish(self, returncode: int) -> JobOutcome:
        tail = "\n".join(self.stderr_tail)
        done = self._done_payload
        code = int(done.get("exit_code", returncode)) if done else returncode
        base = dict(results=list(self._results), warnings=list(self._warnings), stderr_tail=tail,
                    log_path=str(self.log_path or ""))
        status, error = self._classify(code, done is not None, tail)
        if self._orphans and status != "ok":
            error += " (its worker processes were stopped)"
        self._kill_group()                  # nothing of the engine outlives its job
        return JobOutcome(status, code, error, **base)

    def _classify(self, code: int, got_done: bool, tail: str) -> tuple[str, str]:
        last_error = self._errors[-1] if self._errors else ""
        last_line = next((ln for ln in reversed(self.stderr_tail) if ln.strip()), "")
        if self._hung:
            return "hung", f"{self.label}: the engine stopped responding (no output for {self.hang_timeout_s:.0f} s) " \
                           f"and was stopped; last log line: {last_line or '(none)'}"
        if code == EXIT_OK and (got_done or not self.protocol):
            return "ok", ""
        if code == EXIT_CANCELLED or (self._cancel_at is not None and code != EXIT_OK):
            return "cancelled", f"{self.label}: cancelled; finished work is kept and running it again resumes"
        if not self.protocol:
            return "error", f"{self.label}: {self.command[0]} exited with code {code}: {last_line}"
        if f"No module named {ENGINE_MODULE}" in tail or f"No module named '{ENGINE_MODULE}'" in tail:
            return "missing", f"the engine package is not importable by {self.command[0]}; use the engine " \
                              f"bundled with the add-on or install it there ({PREFERENCES_HINT})"
        if got_done and code in (EXIT_ERROR, EXIT_ENVIRONMENT):
            return "error", f"{self.label}: {last_error or 'the engine reported an error'}"
        if code == EXIT_USAGE:
            return "error", f"{self.label}: the engine refused the command line: {last_line}"
        if got_done:
            return "crashed", f"{self.label}: {last_error or 'internal error'} (log: {self.log_path or 'stderr'})"
        how = f"signal {-code}" if code < 0 else f"code {code}"
        return "crashed", f"{self.label}: the engine exited with {how} before finishing; last log line: " \
                          f"{last_line or '(none)'}"


# ---------------------------------------------------------------------------------------------
# Several runs, one after another
# ---------------------------------------------------------------------------------------------

class JobChain:
    """Jobs run in order (prepare -> fit -> train); stops at the first that does not succeed.

    jobs : EngineJob objects, not yet started. The chain's outcome gathers every job's
    results and warnings; its status and error are those of the job that ended it.
    """

    def __init__(self, jobs: list):
        if not jobs:
            raise ValueError("a job chain needs at least one job")
        self.jobs = list(jobs)
        self.index = 0
        self.outcome: JobOutcome | None = None
        self._cancelled = False

    @property
    def current(self) -> EngineJob:
        return self.jobs[min(self.index, len(self.jobs) - 1)]

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self) -> "JobChain":
        self.current.start()
        return self

    def poll(self) -> list[Message]:
        if self.outcome is not None:
            return []
        job = self.current
        out = job.poll()
        if job.finished:
            if job.outcome.ok and self.index + 1 < len(self.jobs) and not self._cancelled:
                self.index += 1
                self.current.start()
            else:
                self.outcome = self._gather(job.outcome)
        return out

    def _gather(self, last: JobOutcome) -> JobOutcome:
        ran = self.jobs[:self.index + 1]
        results = [r for j in ran if j.outcome for r in j.outcome.results]
        warnings = [w for j in ran if j.outcome for w in j.outcome.warnings]
        status = "cancelled" if self._cancelled and last.ok else last.status
        return JobOutcome(status, last.exit_code, last.error, results, warnings, last.stderr_tail, last.log_path)

    def cancel(self) -> None:
        self._cancelled = True
        self.current.cancel()

    def kill(self) -> None:
        self._cancelled = True
        self.current.kill()

    def wait(self, timeout_s: float | None = None, on_message=None) -> JobOutcome:
        _poll_until_done(self, timeout_s, on_message)
        return self.outcome

    def status_text(self) -> str:
        """e.g. "Train (3/3): train 45% epoch 5/30, ETA 1m20s"."""
        job, p = self.current, self.current.progress
        head = f"{job.label} ({self.index + 1}/{len(self.jobs)})" if len(self.jobs) > 1 else job.label
        if not p.stage:
            return f"{head}: starting"
        eta = format_eta(p.eta_s)
        return f"{head}: {p.stage} {p.fraction * 100:.0f}%" + (f" {p.message}" if p.message else "") + \
            (f", ETA {eta}" if eta else "")

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: finished jobs count whole, the current one by its stage."""
        return min((self.index + self.current.progress.fraction) / len(self.jobs), 1.0)


def _poll_until_done(job, timeout_s: float | None, on_message) -> None:
    """Poll a Job or Chain until it has an outcome, giving each message to on_message; kill it
    once timeout_s has passed (it then still ends through its own outcome)."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while job.outcome is None:
        for m in job.poll():
            if on_message:
                on_message(m)
        if end is not None and time.monotonic() > end:
            job.kill()
            end = None
        time.sleep(POLL_SLEEP_S)
