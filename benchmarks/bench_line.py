"""Predicting one dialogue line (issue 18): `lipsync predict` cold, process start included, and
`lipsync serve` warm, in seconds per line.

    chrt -r 5 .venv/bin/python benchmarks/bench_line.py MODEL_DIR [--audio LINE] [--seconds 3]
        [--repeats 5] [--engine-root DIR] [--parts cold,serve,network] [--json out.json]

Cold: `python -m lipsync_engine --json predict MODEL LINE -o OUT --overwrite ...` run `repeats`
times per output set, wall time from before the process starts to its exit: coefficients and
mesh (--no-atlas --no-preview: blendshapes, Live Link CSV, JSON, Rhubarb cues, visemes,
vertices.npz, head.pc2, head.obj), + atlas (the atlas PNG sequence, --no-preview), and the
default (+ preview.mp4). Once per output set, `-X importtime` says how long the imports took and
whether torch was imported. Network: the audio path per frame in numpy and in torch, and
the cost of importing torch (why a line's prediction runs it in numpy). Serve: one `lipsync serve` process, one request to warm it (its
time is reported apart, process start and imports included), then `repeats` requests per
output set, each timed from writing the request line to reading its DONE. Beside each wall
time: the CPU seconds the engine process used (user + system; other processes on a busy
machine do not inflate it; on these 2 cores it can exceed the wall time, the predictor and
the file writer run in two threads).

LINE defaults to the 3 s from 10 s into ../shared/data/train_anchor_en_m_61s.mp4 (speech),
or the demo's synthetic speech when that file is missing. --engine-root runs the engine of
another checkout (e.g. the main branch, for the figures before a change; it needs no serve
for --parts cold). Every figure is the median of the repeats (min and max beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "train_anchor_en_m_61s.mp4"
OUTPUTS = {                                        # output set -> extra predict arguments
    "coefficients+mesh": ["--no-atlas", "--no-preview"],
    "+atlas": ["--no-preview"],
    "+atlas+preview": [],
}


def make_line(path: Path, seconds: float) -> Path:
    """A `seconds` long 16 kHz wav of speech (the anchor clip from 10 s, else synthetic speech)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import soundfile

    from lipsync_engine.io import media

    if CLIP.is_file():
        samples = media.load_audio(CLIP, 16000).samples[10 * 16000:]
    else:
        from lipsync_engine.demo.speech import synthesize_speech

        samples = synthesize_speech(seconds + 1).samples
    soundfile.write(path, np.asarray(samples[:int(seconds * 16000)], np.float32), 16000, subtype="PCM_16")
    return path


def engine_command(root: Path, *args: str, importtime: bool = False) -> tuple[list[str], dict]:
    """The command and environment of `python -m lipsync_engine --json ARGS` with ROOT's engine (run it
    with cwd=root: `python -m` puts the working directory before PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "lipsync_engine", "--json",
            *args], env


def cold(root: Path, model: Path, line: Path, extra: list[str], out: Path, repeats: int) -> dict:
    """Wall seconds of whole `lipsync predict` processes (and the CPU seconds they used, which other
    processes on the machine do not inflate), and the import report of one more run."""
    walls, cpus = [], []
    for _ in range(repeats):
        cmd, env = engine_command(root, "predict", str(model), str(line), "-o", str(out), "--overwrite",
                                  "--device", "cpu", *extra)
        c0 = cpu_of_children()
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_of_children() - c0)
        if r.returncode != 0:
            raise SystemExit(f"predict failed ({r.returncode}): {r.stdout[-400:]}{r.stderr[-400:]}")
    cmd, env = engine_command(root, "predict", str(model), str(line), "-o", str(out), "--overwrite",
                              "--device", "cpu", *extra, importtime=True)
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
    return {**summary(walls), "cpu_median_s": statistics.median(cpus), **imports(r.stderr)}


def imports(stderr: str) -> dict:
    """Seconds spent in top-level imports (-X importtime) and whether torch was among them."""
    total, torch = 0, False
    for row in stderr.splitlines():
        if not row.startswith("import time:") or "self [us]" in row:
            continue
        _, cumulative, name = row[len("import time:"):].split("|")
        torch |= name.strip() == "torch"
        if not name.startswith("  "):                 # depth 0: what the program itself imported
            total += int(cumulative)
    return {"imports_s": total / 1e6, "torch_imported": torch}


def cpu_of_children() -> float:
    """User + system seconds of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_of(pid: int) -> float:
    """User + system seconds process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "runs": len(values)}


class ServeProcess:
    """A `lipsync serve` child; request() sends one request and waits for its DONE."""

    def __init__(self, root: Path):
        cmd, env = engine_command(root, "serve")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        kind, payload = self.next()
        assert kind == "STATUS" and payload.get("ready"), (kind, payload)
        self.count = 0

    def next(self) -> tuple[str, dict]:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"lipsync serve ended (exit code {self.proc.wait()})")
        kind, payload = json.loads(line)
        return kind, payload

    def request(self, args: list[str]) -> float:
        """Wall seconds from writing the request to reading its DONE (self.cpu: the server's CPU seconds)."""
        self.count += 1
        rid = str(self.count)
        c0 = cpu_of(self.proc.pid)
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps({"id": rid, "command": "predict", "args": args}) + "\n")
        self.proc.stdin.flush()
        while True:
            kind, payload = self.next()
            if kind == "DONE" and payload.get("id") == rid:
                if payload["exit_code"] != 0:
                    raise SystemExit(f"request {rid} failed: exit code {payload['exit_code']}")
                wall = time.perf_counter() - t0
                self.cpu = cpu_of(self.proc.pid) - c0
                return wall

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve(root: Path, model: Path, line: Path, out: Path, repeats: int) -> dict:
    server = ServeProcess(root)
    try:
        first = server.request([str(model), str(line), "-o", str(out / "first"), "--overwrite", "--device", "cpu",
                                *OUTPUTS["coefficients+mesh"]])
        result = {"first_request_s": first, "start_to_first_done_s": time.perf_counter() - server.t0}
        for name, extra in OUTPUTS.items():
            walls, cpus = [], []
            for i in range(repeats):
                walls.append(server.request([str(model), str(line), "-o", str(out / f"{name}-{i}"), "--device",
                                             "cpu", *extra]))
                cpus.append(server.cpu)
            result[name] = {**summary(walls), "cpu_median_s": statistics.median(cpus)}
    finally:
        server.close()
    return result


def network(root: Path, model: Path, line: Path, repeats: int) -> dict:
    """ms per frame of the audio path (spectrograms -> codes -> vertex deltas and blendshapes), 600
    frames batched, in numpy and in torch (one thread each, as the predictor runs them), and the
    wall seconds of `python -c "import torch"`: why short predictions run it in numpy."""
    code = f"""
import json, statistics, sys, time
sys.path.insert(0, {str(root)!r})
import numpy as np
from lipsync_engine.inference.predictor import load_predictor
from lipsync_engine.io import media
from lipsync_engine.prepare import audio
p = load_predictor({str(model)!r}, "cpu")
x = np.resize(media.load_audio({str(line)!r}, 16000).samples, 21 * 16000)
spec = audio.spectrogram_frames(x, np.arange(600) / 30.0 + 0.2)
out = {{}}
for name, numpy_path in (("numpy", True), ("torch", False)):
    times = []
    for _ in range({repeats} + 1):
        t0 = time.perf_counter()
        p.raw_outputs(p.audio_codes(spec, numpy_path), numpy_path)
        times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times[1:]) / len(spec) * 1e3
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    result = {f"{k}_ms_per_frame": v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        walls.append(time.perf_counter() - t0)
    return {**result, "import_torch_s": statistics.median(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a model folder (lipsync train; the cpu preset for the issue's bar)")
    ap.add_argument("--audio", type=Path, help="the line (default: 3 s of the anchor clip's speech)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of the default line (default 3)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine-root", type=Path, default=ROOT, help="checkout whose lipsync_engine runs")
    ap.add_argument("--parts", default="cold,serve,network", help="any of cold, serve, network (default all)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; scheduling policy {os.sched_getscheduler(0)} (2 = SCHED_RR, chrt -r)")
    print(f"# engine: {args.engine_root.resolve()}; model: {args.model}")
    report: dict = {"load_before": os.getloadavg(), "engine_root": str(args.engine_root.resolve())}
    with tempfile.TemporaryDirectory(prefix="bench_line_") as td:
        tmp = Path(td)
        line = (args.audio or make_line(tmp / "line.wav", args.seconds)).resolve()
        args.model = args.model.resolve()
        if "cold" in parts:
            for name, extra in OUTPUTS.items():
                r = cold(args.engine_root, args.model, line, extra, tmp / "cold", args.repeats)
                report[f"cold {name}"] = r
                print(f"cold `lipsync predict`, {name:<18}: median {r['median_s']:.2f} s (min {r['min_s']:.2f}, max "
                      f"{r['max_s']:.2f}; {r['runs']} runs), CPU {r['cpu_median_s']:.2f} s; imports "
                      f"{r['imports_s']:.2f} s, torch imported: {'yes' if r['torch_imported'] else 'no'}", flush=True)
        if "serve" in parts:
            r = serve(args.engine_root, args.model, line, tmp / "serve", args.repeats)
            report["serve"] = r
            print(f"serve: first request {r['first_request_s']:.2f} s (process start to its DONE "
                  f"{r['start_to_first_done_s']:.2f} s)")
            for name in OUTPUTS:
                s = r[name]
                print(f"serve, warm, {name:<18}: median {s['median_s']:.3f} s per line (min {s['min_s']:.3f}, max "
                      f"{s['max_s']:.3f}; {s['runs']} requests), server CPU {s['cpu_median_s']:.3f} s", flush=True)
        if "network" in parts:
            r = network(args.engine_root, args.model, line, args.repeats)
            report["network"] = r
            print(f"audio path, 600 frames batched, one thread: numpy {r['numpy_ms_per_frame']:.3f} ms per frame, "
                  f"torch {r['torch_ms_per_frame']:.3f} ms per frame; `import torch` {r['import_torch_s']:.2f} s "
                  f"(median of {args.repeats})", flush=True)
    report["load_after"] = os.getloadavg()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in report['load_after'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
