"""Fake `python -m lipsync_engine --json SUBCOMMAND ...`: speaks protocol 1 and misbehaves on request.

The behaviour comes from $LIPSYNC_FAKE_MODE (default "ok"):
ok, error, crash (killed mid-run, no DONE), hang (silent), slow (cancellable, exits 130 on
SIGINT), garbage (a non-protocol stdout line), newer (protocol 2), usage (argparse-like exit 2),
orphan (starts a worker that sleeps holding stdout and stderr, then is killed like crash) and
orphan-slow (the same worker, then as slow); the worker's pid goes to $LIPSYNC_FAKE_CHILD.
`predict` copies the folder $LIPSYNC_FAKE_RESULT (a hand-made prediction) to its -o folder.
Every run appends its argv to $LIPSYNC_FAKE_LOG when set, so tests can check command lines.
"""

import json
import os
import signal
import sys
import time


def emit(kind, payload):
    sys.stdout.write(json.dumps([kind, payload]) + "\n")
    sys.stdout.flush()


def main():
    mode = os.environ.get("LIPSYNC_FAKE_MODE", "ok")
    if os.environ.get("LIPSYNC_FAKE_LOG"):
        with open(os.environ["LIPSYNC_FAKE_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(sys.argv[1:]) + "\n")
    if mode == "usage":
        print("usage: lipsync [-h] {prepare,train} ...\nlipsync: error: unrecognized arguments: --bogus",
              file=sys.stderr)
        return 2
    cancelled = []
    signal.signal(signal.SIGINT, lambda *a: cancelled.append(1))
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
    if sys.argv[2:3] == ["predict"] and os.environ.get("LIPSYNC_FAKE_RESULT"):
        import shutil               # a canned prediction folder stands in for the engine's output
        i = sys.argv.index("-o") + 1
        while i < len(sys.argv) and not sys.argv[i].startswith("--"):     # one -o folder per audio
            shutil.copytree(os.environ["LIPSYNC_FAKE_RESULT"], sys.argv[i], dirs_exist_ok=True)
            i += 1
    emit("WARN", {"message": "fake warning"})
    emit("RESULT", {"message": "fake result", "path": os.getcwd(), "argv": sys.argv[1:]})
    emit("DONE", {"exit_code": 0, "protocol": 2 if mode == "newer" else 1})
    return 0


sys.exit(main())
