"""Benchmark `lipsync prepare` end to end: frames per second and peak memory.

Usage (from the repository root, after `make venv`):
    .venv/bin/python benchmarks/bench_prepare.py                 # both real data sets
    .venv/bin/python benchmarks/bench_prepare.py --only anchor   # one of: anchor, grid, five-minutes
    .venv/bin/python benchmarks/bench_prepare.py --workers 1
    .venv/bin/python benchmarks/bench_prepare.py --cli ted --cli grid-clip --cli anchor --repeat 3

--only runs prepare_speaker in this process (report off; peak memory of the process tree).
--cli runs the command a person types, `python -m lipsync_engine --json prepare CLIP -o OUT`
(default options: 2 workers, report on) as a fresh process, so start-up and imports count;
the times at which its JSON progress lines arrive give each stage's span, and the median
of --repeat runs is reported. --code DIR runs another checkout's engine (PYTHONPATH=DIR),
for a before/after comparison on the same machine state. --importtime also prints the
start-up imports of the command (`python -X importtime`, cumulative ms, the largest).

Data: ../shared/data/train_anchor_en_m_61s.mp4 (1530 frames, 512x512, 25 fps), the 100 GRID
s1 clips in ../shared/data/grid/s1/ (75 frames each, 360x288), and a 5-minute single take
made here by concatenating the 61 s clip five times (re-encoded once, not timed); for --cli
also clip_ted_f_10s.mp4 (302 frames, 256x256, 30 fps) and one 3 s GRID clip, s1/bbal9a.mpg.
Peak memory is the largest summed resident set of this process and its workers,
sampled every 50 ms from /proc. Prints one line per run plus the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


class _Watcher:
    """A background thread that runs self._run() for the length of a `with` block."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class TreeMemory(_Watcher):
    """Peak summed RSS and anonymous RSS (bytes) of this process and all its descendants.

    RSS also counts file pages a process has mapped (reclaimable page cache); the anonymous
    part (RssAnon) is the memory the work really holds.
    """

    def __init__(self, period_s: float = 0.05):
        self.peak = 0
        self.peak_anon = 0
        self.period = period_s
        super().__init__()

    @staticmethod
    def _children() -> dict[int, int]:
        parents = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    pass
        return parents

    @staticmethod
    def _rss(pid: int) -> tuple[int, int]:
        rss = anon = 0
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon = int(line.split()[1]) * 1024
        except OSError:
            pass
        return rss, anon

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parents = self._children()
            tree, frontier = {me}, [me]
            while frontier:
                p = frontier.pop()
                kids = [c for c, pp in parents.items() if pp == p and c not in tree]
                tree.update(kids)
                frontier.extend(kids)
            sizes = [self._rss(p) for p in tree]
            self.peak = max(self.peak, sum(r for r, _ in sizes))
            self.peak_anon = max(self.peak_anon, sum(a for _, a in sizes))
            time.sleep(self.period)


def five_minute_take(out: Path) -> Path:
    """The 61 s anchor clip five times over, as one take (video and audio re-encoded)."""
    import av
    import numpy as np

    from lipsync_engine.io.media import load_audio

    src = SHARED / "train_anchor_en_m_61s.mp4"
    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    pcm = np.tile(load_audio(src, 16000).samples, 5).astype(np.float32)
    with av.open(str(out), "w") as o:
        vs = o.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        aud = o.add_stream("aac", rate=16000, layout="mono")
        for _ in range(5):
            for img in frames:
                o.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        o.mux(vs.encode(None))
        for i in range(0, len(pcm), 1024):
            fr = av.AudioFrame.from_ndarray(pcm[None, i:i + 1024], format="fltp", layout="mono")
            fr.sample_rate = 16000
            o.mux(aud.encode(fr))
        o.mux(aud.encode(None))
    return out


def run(name: str, inputs: list[Path], workers: int, tmp: Path) -> dict:
    from lipsync_engine.prepare.pipeline import PrepareOptions, prepare_speaker

    out = tmp / f"speaker_{name}"
    t0 = time.perf_counter()
    with TreeMemory() as mem:
        result = prepare_speaker(inputs, out, PrepareOptions(workers=workers, report=False))
    wall = time.perf_counter() - t0
    import json

    timings = json.loads((out / "meta.json").read_text())["timings"]
    return {"name": name, "frames": result.frames, "takes": result.takes, "seconds": wall,
            "fps": result.frames / wall, "peak_gb": mem.peak / 2 ** 30, "anon_gb": mem.peak_anon / 2 ** 30,
            "timings": timings}


class OtherRealtime(_Watcher):
    """Whether any real-time process (SCHED_RR or SCHED_FIFO, e.g. another `chrt -r` benchmark)
    outside this process tree was running while the block ran, sampled every 0.2 s from /proc.
    Run under `chrt -r 5` on a shared machine, a run that shared the cores with one is not
    comparable, and --cli repeats it (up to --retries times)."""

    def __init__(self):
        self.seen = False
        super().__init__()

    @staticmethod
    def sample() -> bool:
        stats = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    stats[int(d)] = (fields[0], int(fields[1]), int(fields[38]))  # state, ppid, policy
                except (OSError, IndexError, ValueError):
                    pass
        me = os.getpid()
        for pid, (state, _, policy) in stats.items():
            if state == "R" and policy in (1, 2) and stats[pid][1] != 2:  # SCHED_FIFO, SCHED_RR; no kernel thread
                p = pid
                while p > 1 and p != me and p in stats:
                    p = stats[p][1]
                if p != me:
                    return True
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen = self.seen or self.sample()
            time.sleep(0.2)


CLIPS = {"ted": SHARED / "clip_ted_f_10s.mp4", "grid-clip": SHARED / "grid" / "s1" / "bbal9a.mpg",
         "anchor": SHARED / "train_anchor_en_m_61s.mp4"}


def cli_run(clip: Path, out: Path, code: Path, workers: int) -> dict:
    """One `python -m lipsync_engine --json prepare` run: wall time, stage spans, CPU time."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "lipsync_engine", "--json", "prepare", str(clip), "-o", str(out),
                          "--workers", str(workers)], stdout=subprocess.PIPE, text=True, env=env, cwd=code)
    first, last, first_frame = {}, {}, None
    for line in p.stdout:
        t = time.perf_counter() - t0
        kind, payload = json.loads(line)
        if kind == "PROGRESS":
            stage = payload["stage"]
            first.setdefault(stage, t)
            last[stage] = t
            if stage == "track" and payload["done"] > 0 and first_frame is None:
                first_frame = t
    if p.wait() != 0:
        raise SystemExit(f"prepare failed on {clip} (exit code {p.returncode})")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    meta = json.loads((out / "meta.json").read_text())
    spans = {}  # each stage from its first progress line to the next stage's first (the last: to the end)
    order = sorted(first, key=first.get)
    for a, b in zip(order, order[1:] + [None]):
        spans[a] = (first[b] if b else wall) - first[a]
    return {"wall": wall, "frames": meta["frames"], "fps": meta["frames"] / wall, "startup": first.get("track", 0.0),
            "first_frame": first_frame, "spans": spans, "cpu": (after.ru_utime - before.ru_utime,
                                                              after.ru_stime - before.ru_stime), "load": load}


HEAVY = ("numpy", "cv2", "av", "scipy", "mediapipe", "matplotlib", "skimage", "torch", "tqdm")


def import_times(code: Path) -> tuple[float, list[tuple[str, float]]]:
    """Start-up imports of the command (`python -X importtime`): total ms of the CLI and the
    prepare pipeline, and the cumulative ms of each third-party package among them."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    err = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import lipsync_engine.cli, lipsync_engine.prepare.pipeline"],
                         capture_output=True, text=True, env=env, cwd=code).stderr
    total, packages, started = 0.0, {}, False
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        ms, depth, name = int(cumulative) / 1000, len(name) - len(name.lstrip()), name.strip()
        if not started:  # the interpreter's own start-up imports end with site
            started = depth == 1 and name == "site"
            continue
        if depth == 1:
            total += ms
        if name in HEAVY:
            packages[name] = max(packages.get(name, 0.0), ms)
    return total, sorted(packages.items(), key=lambda r: -r[1])


def cli_main(args) -> None:
    code = Path(args.code).resolve() if args.code else ROOT
    print(f"# engine: {code}")
    if args.importtime:
        total, packages = import_times(code)
        print(f"# start-up imports: {total:.0f} ms in all; of which (cumulative ms) "
              + ", ".join(f"{n} {ms:.0f}" for n, ms in packages))
    with tempfile.TemporaryDirectory() as d:
        for name in args.cli:
            runs, discarded = [], 0
            for i in range(args.repeat):
                for _ in range(args.retries + 1):
                    while args.retries and OtherRealtime.sample():  # wait for the cores to be ours
                        time.sleep(1)
                    with OtherRealtime() as other:
                        r = cli_run(CLIPS[name], Path(d) / "speaker", code, args.workers)
                    r["contended"] = other.seen
                    if not (args.retries and other.seen):
                        break
                    discarded += 1
                    print(f"{name:>10} run {i + 1} discarded ({r['wall']:.2f} s): another real-time process ran",
                          flush=True)
                runs.append(r)
                spans = ", ".join(f"{k} {v:.2f}" for k, v in r["spans"].items())
                print(f"{name:>10} run {i + 1}: {r['frames']} frames, {r['wall']:.2f} s, {r['fps']:.1f} frames/s "
                      f"end to end; start-up {r['startup']:.2f} s (first tracked frames at {r['first_frame']:.2f} s); "
                      f"stages (s) {spans}; CPU user {r['cpu'][0]:.2f} s, sys {r['cpu'][1]:.2f} s; "
                      f"load before {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}"
                      + ("; CONTENDED: another real-time process ran" if r["contended"] else ""), flush=True)
            med = statistics.median(r["wall"] for r in runs)
            print(f"{name:>10} median of {len(runs)}: {med:.2f} s, {runs[0]['frames'] / med:.1f} frames/s end to end"
                  + (f" ({discarded} contended run(s) discarded)" if discarded else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("anchor", "grid", "five-minutes"), action="append")
    ap.add_argument("--cli", choices=tuple(CLIPS), action="append", help="end-to-end command runs (see above)")
    ap.add_argument("--repeat", type=int, default=3, help="--cli runs per clip (the median is reported)")
    ap.add_argument("--code", help="--cli: the checkout whose engine runs (default: this one)")
    ap.add_argument("--importtime", action="store_true", help="--cli: print the start-up imports")
    ap.add_argument("--retries", type=int, default=0,
                    help="run again (up to this many times) when another real-time process ran meanwhile")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M')}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.cli:
        cli_main(args)
        if not args.only:
            return
    which = args.only or ["anchor", "grid", "five-minutes"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in which:
            if name == "anchor":
                inputs = [SHARED / "train_anchor_en_m_61s.mp4"]
            elif name == "grid":
                inputs = [SHARED / "grid" / "s1"]
            else:
                inputs = [five_minute_take(tmp / "five_minutes.mp4")]
            for _ in range(args.retries + 1):
                while args.retries and OtherRealtime.sample():  # wait for the cores to be ours
                    time.sleep(1)
                shutil.rmtree(tmp / f"speaker_{name}", ignore_errors=True)
                with OtherRealtime() as other:
                    r = run(name, inputs, args.workers, tmp)
                if not (args.retries and other.seen):
                    break
                print(f"{name:>13}: run discarded ({r['seconds']:.1f} s): another real-time process ran", flush=True)
            print(f"{r['name']:>13}: {r['frames']} frames, {r['takes']} take(s), {r['seconds']:.1f} s, "
                  f"{r['fps']:.1f} frames/s end to end, peak memory {r['anon_gb']:.2f} GB "
                  f"(resident incl. mapped files {r['peak_gb']:.2f} GB), "
                  f"stages {r['timings']}" + ("; CONTENDED: another real-time process ran" if other.seen else ""),
                  flush=True)


if __name__ == "__main__":
    main()
