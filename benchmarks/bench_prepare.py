"""Benchmark `lipsync prepare` end to end: frames per second and peak memory.

Usage (from the repository root, after `make venv`):
    .venv/bin/python benchmarks/bench_prepare.py                 # both real data sets
    .venv/bin/python benchmarks/bench_prepare.py --only anchor   # one of: anchor, grid, five-minutes
    .venv/bin/python benchmarks/bench_prepare.py --workers 1

Data: ../shared/data/train_anchor_en_m_61s.mp4 (1530 frames, 512x512, 25 fps), the 100 GRID
s1 clips in ../shared/data/grid/s1/ (75 frames each, 360x288), and a 5-minute single take
made here by concatenating the 61 s clip five times (re-encoded once, not timed).
Peak memory is the largest summed resident set of this process and its workers,
sampled every 50 ms from /proc. Prints one line per run plus the command that made it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


class TreeMemory:
    """Peak summed RSS and anonymous RSS (bytes) of this process and all its descendants.

    RSS also counts file pages a process has mapped (reclaimable page cache); the anonymous
    part (RssAnon) is the memory the work really holds.
    """

    def __init__(self, period_s: float = 0.05):
        self.peak = 0
        self.peak_anon = 0
        self.period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

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

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("anchor", "grid", "five-minutes"), action="append")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    which = args.only or ["anchor", "grid", "five-minutes"]
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in which:
            if name == "anchor":
                inputs = [SHARED / "train_anchor_en_m_61s.mp4"]
            elif name == "grid":
                inputs = [SHARED / "grid" / "s1"]
            else:
                inputs = [five_minute_take(tmp / "five_minutes.mp4")]
            r = run(name, inputs, args.workers, tmp)
            print(f"{r['name']:>13}: {r['frames']} frames, {r['takes']} take(s), {r['seconds']:.1f} s, "
                  f"{r['fps']:.1f} frames/s end to end, peak memory {r['anon_gb']:.2f} GB "
                  f"(resident incl. mapped files {r['peak_gb']:.2f} GB), "
                  f"stages {r['timings']}", flush=True)


if __name__ == "__main__":
    main()
