"""Fake `python -m lipsync_engine --json SUBCOMMAND ...`: speaks protocol 1 and misbehaves on request.

The behaviour comes from the file $LIPSYNC_FAKE_MODE_FILE, read at each run (a warm server
changes mode with it), else $LIPSYNC_FAKE_MODE (default "ok"):
ok, error, crash (killed mid-run, no DONE), hang (silent), slow (cancellable, exits 130 on
SIGINT), garbage (a non-protocol stdout line), newer (protocol 2), usage (argparse-like exit 2),
orphan (starts a worker that sleeps holding stdout and stderr, then is killed like crash) and
orphan-slow (the same worker, then as slow); the worker's pid goes to $LIPSYNC_FAKE_CHILD.
`predict` copies the folder $LIPSYNC_FAKE_RESULT (a hand-made prediction) to its -o folder.
Every run appends its argv to $LIPSYNC_FAKE_LOG when set, so tests can check command lines.

`serve` answers requests ({"id", "command", "args"} lines on stdin) as the real server does:
each request runs as a one-shot run of ["--json", COMMAND, *ARGS] would (the same modes and
log lines), its messages carrying the id; {"cancel": ID} and SIGINT cancel the running request;
crash kills the whole server. Every process start (one-shot or serve) appends
[subcommand, pid] to $LIPSYNC_FAKE_STARTS when set.
"""

import json
import os
import queue
import signal
import sys
import threading
import time


_WRITE = threading.Lock()


def emit(kind, payload):
    with _WRITE:
        sys.stdout.write(json.dumps([kind, payload]) + "\n")
        sys.stdout.flush()


def log(path_variable, entry):
    if os.environ.get(path_variable):
        with open(os.environ[path_variable], "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def main():
    log("LIPSYNC_FAKE_STARTS", [sys.argv[2] if len(sys.argv) > 2 else "", os.getpid()])
    if sys.argv[2:3] == ["serve"]:
        return serve()
    cancelled = []
    signal.signal(signal.SIGINT, lambda *a: cancelled.append(1))
    return run(sys.argv[1:], emit, cancelled)


def serve():
    """The server: one request at a time, cancel lines read meanwhile by a thread."""
    requests, cancelled, current = queue.Queue(), set(), {}

    def read():
        for line in sys.stdin:
            data = json.loads(line)
            if "cancel" in data:
                cancelled.add(data["cancel"])
            elif data.get("command") == "quit":
                break
            else:
                requests.put(data)
        requests.put(None)

    signal.signal(signal.SIGINT, lambda *a: cancelled.add(current.get("id")))
    threading.Thread(target=read, daemon=True).start()
    emit("STATUS", {"message": "fake server ready", "ready": True, "pid": os.getpid()})
    while (request := requests.get()) is not None:
        rid = request["id"]
        current["id"] = rid
        flag = _Flag(cancelled, rid)
        code = run(["--json", request["command"], *request["args"]], lambda k, p: emit(k, {**p, "id": rid}), flag)
        if code == 2:                               # the one-shot's usage error: an ERROR and DONE here
            emit("ERROR", {"message": "lipsync: error: unrecognized arguments: --bogus", "id": rid})
            emit("DONE", {"exit_code": 2, "protocol": 1, "id": rid})
    emit("DONE", {"exit_code": 0, "protocol": 1})
    return 0


class _Flag:
    """Truthy once request `rid` was cancelled (as the one-shot's list of SIGINTs)."""

    def __init__(self, cancelled, rid):
        self.cancelled, self.rid = cancelled, rid

    def __bool__(self):
        return self.rid in self.cancelled


def run(argv, emit, cancelled):
    """One run of `lipsync ARGV` (argv[0] is --json): the scripted behaviour of $LIPSYNC_FAKE_MODE."""
    mode = os.environ.get("LIPSYNC_FAKE_MODE", "ok")
    if os.environ.get("LIPSYNC_FAKE_MODE_FILE") and os.path.isfile(os.environ["LIPSYNC_FAKE_MODE_FILE"]):
        with open(os.environ["LIPSYNC_FAKE_MODE_FILE"], encoding="utf-8") as f:
            mode = f.read().strip()
    log("LIPSYNC_FAKE_LOG", argv)
    if mode == "usage":
        print("usage: lipsync [-h] {prepare,train} ...\nlipsync: error: unrecognized arguments: --bogus",
              file=sys.stderr)
        return 2
    if mode.startswith("orphan"):            # a worker process that inherits stdout and stderr
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.environ["LIPSYNC_FAKE_CHILD"], "w", encoding="utf-8") as f:
            f.write(str(child.pid))
    emit("STATUS", {"message": "fake engine started"})
    print("fake engine log line", file=sys.stderr, flush=True)
    if mode == "garbage":
        print("some library printed this", flush=True)
    steps = 200 if mode in ("slow", "orphan-slow") else 5
    for i in range(steps):
        if cancelled:
            emit("ERROR", {"message": "cancelled; finished work is kept and a re-run resumes from it"})
            emit("DONE", {"exit_code": 130, "protocol": 1})
            return 130
        emit("PROGRESS", {"stage": "train", "done": i + 1, "total": steps, "message": f"epoch {i + 1}/{steps}"})
        if mode in ("crash", "orphan") and i == 2:
            print("Traceback (most recent call last):\n  File \"fake.py\", line 1\nMemoryError: fake out of memory",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang" and i == 1:
            time.sleep(120)
        time.sleep(0.05 if mode in ("slow", "orphan-slow") else 0.01)
    if mode == "error":
        emit("ERROR", {"message": "clip.mp4: no face found in any of its 75 frames"})
        emit("DONE", {"exit_code": 1, "protocol": 1})
        return 1
    if argv[1:2] == ["predict"] and os.environ.get("LIPSYNC_FAKE_RESULT"):
        import shutil               # a canned prediction folder stands in for the engine's output
        i = argv.index("-o") + 1
        while i < len(argv) and not argv[i].startswith("--"):     # one -o folder per audio
            shutil.copytree(os.environ["LIPSYNC_FAKE_RESULT"], argv[i], dirs_exist_ok=True)
            i += 1
    emit("WARN", {"message": "fake warning"})
    emit("RESULT", {"message": "fake result", "path": os.getcwd(), "argv": argv, "pid": os.getpid()})
    emit("DONE", {"exit_code": 0, "protocol": 2 if mode == "newer" else 1})
    return 0


sys.exit(main())
