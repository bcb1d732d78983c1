"""`lipsync serve` (issue 18): one engine process answering many requests over the JSON-lines protocol.

Every test runs the real server as a subprocess and reads every line of its stdout. The model is
conftest's untrained tiny model (made in a second: the numbers mean nothing, every part of
predict runs), or the trained demo model (slow). Outputs are compared with one-shot
`lipsync predict` processes, number for number."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lipsync_engine.demo.speech import synthesize_speech

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """(3 s line at 44.1 kHz stereo with a pause, 2 s line, 90 s file): synthetic speech."""
    folder = tmp_path_factory.mktemp("lines")
    s = synthesize_speech(6.0, RATE, seed=11).samples
    x = np.concatenate([s[:20000], np.zeros(8000, np.float32), s[20000:40000]])
    t = np.arange(int(len(x) * 44100 / RATE)) / 44100
    y = np.interp(t, np.arange(len(x)) / RATE, x).astype(np.float32)
    soundfile.write(folder / "line one.wav", np.stack([y, 0.5 * y], 1), 44100)
    soundfile.write(folder / "line two.flac", s[40000:72000], RATE)
    soundfile.write(folder / "long.wav", np.resize(s, 90 * RATE), RATE)
    return folder / "line one.wav", folder / "line two.flac", folder / "long.wav"


def lipsync(*args):
    """A one-shot engine process with --json: (exit code, [(kind, payload), ...])."""
    r = subprocess.run([sys.executable, "-m", "lipsync_engine", "--json", *map(str, args)], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    return r.returncode, [tuple(json.loads(line)) for line in r.stdout.splitlines()]


class Server:
    """A running `lipsync serve`. Lines of stdout are read by a thread; replies() collects the
    messages of one request id up to its DONE."""

    def __init__(self, stderr: Path):
        self.stderr = open(stderr, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lipsync_engine", "serve"], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.backlog: list = []
        threading.Thread(target=self._read, daemon=True).start()
        kind, ready = self.next()
        assert kind == "STATUS" and ready["ready"] and ready["pid"] == self.proc.pid and "id" not in ready

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(tuple(json.loads(line)))     # every stdout line is a protocol message
        self.lines.put(None)

    def next(self, timeout: float = 300):
        item = self.lines.get(timeout=timeout)
        assert item is not None, "the server ended"
        return item

    def send(self, obj) -> None:
        self.proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.proc.stdin.flush()

    def request(self, rid, command: str, *args) -> None:
        self.send({"id": rid, "command": command, "args": [str(a) for a in args]})

    def replies(self, rid, until=None) -> list:
        """Messages of request `rid` in order, up to its DONE (or the first one until(kind, payload) accepts)."""
        out, rest = [], []
        pending = self.backlog
        self.backlog = []
        while True:
            kind, payload = pending.pop(0) if pending else self.next()
            if payload.get("id") != rid:
                rest.append((kind, payload))
                continue
            out.append((kind, payload))
            if kind == "DONE" or (until is not None and until(kind, payload)):
                self.backlog = rest + pending
                return out

    def close(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(timeout=120)
        self.stderr.close()
        return code


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "serve.stderr")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def done_code(messages: list) -> int:
    kind, payload = messages[-1]
    assert kind == "DONE" and payload["protocol"] == 1
    return payload["exit_code"]


def assert_same_prediction(a: Path, b: Path) -> None:
    """Two prediction folders hold the same numbers, images and exports (timings aside)."""
    import cv2

    with np.load(a / "vertices.npz") as x, np.load(b / "vertices.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            assert np.array_equal(x[name], y[name]), name
    for name in ("head.pc2", "blendshapes_livelink.csv", "blendshapes.json", "mouth_cues.tsv", "visemes.json",
                 "head.obj"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    atlases = sorted(p.name for p in (a / "atlas").glob("*.png")) if (a / "atlas").is_dir() else []
    assert atlases == (sorted(p.name for p in (b / "atlas").glob("*.png")) if (b / "atlas").is_dir() else [])
    for name in atlases:
        assert np.array_equal(cv2.imread(str(a / "atlas" / name)), cv2.imread(str(b / "atlas" / name))), name
    ra, rb = (json.loads((f / "result.json").read_text()) for f in (a, b))
    for r in (ra, rb):
        r.pop("seconds")
    assert ra == rb


def requests_and_one_shots(model: Path, lines, out: Path) -> dict:
    """id -> (predict arguments after MODEL, the output folders): atlases from the bank or the network
    (the latter loads torch inside the server), several files at once, --start/--end, fps."""
    one, two, _ = lines
    return {
        "bank": ([one, "-o", out / "bank", "--no-preview"], [out / "bank"]),
        7: ([one, "-o", out / "coefficients", "--no-atlas", "--no-preview", "--fps", "24", "--start", "0.5"],
            [out / "coefficients"]),
        "two files": ([one, two, "-o", out / "net1", out / "net2", "--no-preview", "--texture", "network",
                       "--end", "2"], [out / "net1", out / "net2"]),
        "bank again": ([one, "-o", out / "bank again", "--no-preview"], [out / "bank again"]),
    }


@pytest.mark.parametrize("which", ["untrained", pytest.param("trained", marks=pytest.mark.slow)])
def test_serve_answers_several_predicts_equal_to_one_shot_predict(which, request, lines, server, tmp_path):
    model = request.getfixturevalue("untrained_model" if which == "untrained" else "trained_demo")
    model = model if isinstance(model, Path) else model[0]
    served = requests_and_one_shots(model, lines, tmp_path / "served")
    for rid, (args, _) in served.items():            # pipelined: all sent before the first answer
        server.request(rid, "predict", model, *args, "--device", "cpu")
    for rid, (args, outs) in served.items():
        messages = server.replies(rid)
        assert done_code(messages) == 0, messages
        assert all(p["id"] == rid for _, p in messages)             # every message echoes the id
        assert [k for k, _ in messages].count("DONE") == 1 and messages[0][0] == "PROGRESS"
        assert [p["path"] for k, p in messages if k == "RESULT"] == [str(o) for o in outs]
    assert server.close() == 0
    shots = requests_and_one_shots(model, lines, tmp_path / "one shot")
    for rid, (args, outs) in shots.items():
        code, messages = lipsync("predict", model, *args, "--device", "cpu")
        assert code == 0 and messages[-1][0] == "DONE" and "id" not in messages[-1][1]
        for mine, theirs in zip(served[rid][1], outs):
            assert_same_prediction(mine, theirs)
    assert_same_prediction(tmp_path / "served" / "bank", tmp_path / "served" / "bank again")


def test_bad_requests_get_the_clis_one_line_errors_and_the_server_goes_on(untrained_model, lines, server, tmp_path):
    one = lines[0]
    bad = {"fps": [untrained_model, one, "-o", tmp_path / "x", "--fps", "0"],
           "missing audio": [untrained_model, tmp_path / "missing.wav", "-o", tmp_path / "y"],
           "not a model": [tmp_path, one, "-o", tmp_path / "z"],
           "unknown option": [untrained_model, one, "--colour", "red"]}
    for rid, args in bad.items():
        server.request(rid, "predict", *args)
        mine = server.replies(rid)
        code, theirs = lipsync("predict", *args)
        assert done_code(mine) == code == theirs[-1][1]["exit_code"] != 0
        errors = [p["message"] for k, p in mine if k == "ERROR"]
        assert errors == [p["message"] for k, p in theirs if k == "ERROR"] and len(errors) == 1
        assert "\n" not in errors[0]
    server.request("fps again", "predict", *bad["fps"])
    fps_error = server.replies("fps again")[0][1]["message"]
    assert fps_error.startswith("lipsync predict: argument --fps: must be > 0")
    for line, rid, needle in (("not json", None, "one JSON object per line"),
                              ('{"command": "predict", "args": []}', None, 'needs an "id"'),
                              ('{"id": "t", "command": "train", "args": []}', "t", "unknown command 'train'"),
                              ('{"id": "n", "command": "predict", "args": [3]}', "n", '"args" must be a list of strings'),
                              ('[1, 2]', None, "a JSON object")):
        server.send(line)
        messages = server.replies(rid)
        assert done_code(messages) == 2 and needle in messages[0][1]["message"], messages
    server.request("good", "predict", untrained_model, one, "-o", tmp_path / "good", "--no-atlas", "--no-preview")
    assert done_code(server.replies("good")) == 0 and (tmp_path / "good" / "result.json").is_file()
    assert server.close() == 0
    assert "Traceback" not in (tmp_path / "serve.stderr").read_text()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def started(kind: str, payload: dict) -> bool:
    return kind == "PROGRESS"


def test_cancel_stops_one_request_and_the_server_goes_on(untrained_model, lines, server, tmp_path):
    one, _, long = lines
    slow = ["predict", untrained_model, long, "--texture", "network", "--no-preview", "--chunk-frames", "64"]
    server.request("long", *slow, "-o", tmp_path / "long")
    server.request("next", "predict", untrained_model, one, "-o", tmp_path / "next", "--no-atlas", "--no-preview")
    server.request("waiting", "predict", untrained_model, one, "-o", tmp_path / "waiting")
    assert server.replies("long", until=started)[-1][0] == "PROGRESS"        # it runs
    server.send({"cancel": "waiting"})                                         # not started yet
    server.send({"cancel": "long"})
    messages = server.replies("long")
    assert done_code(messages) == 130 and messages[-2][0] == "ERROR"
    assert messages[-2][1]["message"].startswith("cancelled") and messages[-2][1]["id"] == "long"
    assert done_code(server.replies("next")) == 0 and (tmp_path / "next" / "result.json").is_file()
    waiting = server.replies("waiting")
    assert done_code(waiting) == 130 and [k for k, _ in waiting] == ["ERROR", "DONE"]
    # SIGINT cancels the running request only
    server.request("long 2", *slow, "-o", tmp_path / "long 2")
    server.replies("long 2", until=started)
    server.proc.send_signal(signal.SIGINT)
    assert done_code(server.replies("long 2")) == 130
    server.request("after", "predict", untrained_model, one, "-o", tmp_path / "after", "--no-atlas", "--no-preview")
    assert done_code(server.replies("after")) == 0
    assert not any(p.name.startswith(("long", "waiting", ".long")) for p in tmp_path.iterdir())   # nothing half-written
    server.send({"id": "bye", "command": "quit"})
    assert done_code(server.replies("bye")) == 0
    assert server.next() == ("DONE", {"exit_code": 0, "protocol": 1})          # the server's own, last
    assert server.proc.wait(timeout=60) == 0


def test_models_stay_loaded_until_their_files_change(untrained_model, tmp_path):
    import shutil

    from lipsync_engine.inference.predictor import PredictorCache

    cache = PredictorCache(size=2)
    first = cache.get(untrained_model, "cpu")
    assert cache.get(untrained_model, "cpu") is first and cache.get(Path(str(untrained_model) + "/."), "cpu") is first
    copy = tmp_path / "copy"
    shutil.copytree(untrained_model, copy)
    other = cache.get(copy, "cpu")
    assert other is not first and len(cache) == 2
    config = copy / "config.json"
    config.write_text(config.read_text())                      # a model trained again: new files
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    again = cache.get(copy, "cpu")
    assert again is not other and len(cache) == 2 and cache.get(untrained_model, "cpu") is first
    third = tmp_path / "third"
    shutil.copytree(untrained_model, third)
    cache.get(third, "cpu")                                    # two at most: the least recently used goes
    assert len(cache) == 2 and cache.get(copy, "cpu") is not again


@pytest.mark.parametrize("outputs", [["--no-atlas", "--no-preview"], []], ids=["coefficients and mesh", "all"])
def test_predicting_a_line_imports_neither_torch_nor_scipy_ndimage_nor_matplotlib(untrained_model, lines, tmp_path,
                                                                                   outputs):
    """The cold `lipsync predict` of a line: torch's import alone took longer than the 1.5 s bar.
    With a mouth bank the atlas and the preview need no torch either."""
    code = ("import json, sys; from lipsync_engine import cli; "
            f"c = cli.main({json.dumps(['predict', str(untrained_model), str(lines[0]), '-o', str(tmp_path / 'o'), *outputs])}); "
            "print(json.dumps([c, sorted(m for m in ('torch', 'scipy.ndimage', 'matplotlib', 'mediapipe') "
            "if m in sys.modules)]), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert json.loads(r.stderr.strip().splitlines()[-1]) == [0, []], r.stderr[-2000:]
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["frames"] == 90 and ("preview" in result["files"]) == (not outputs)
