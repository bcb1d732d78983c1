"""Benchmark `lipsync dub` and the cartoon pass: frames per second on this CPU.

Usage (from the repository root, after `make venv`):
    .venv/bin/python benchmarks/bench_dub.py                       # the anchor model, 12 s of dubbing
    .venv/bin/python benchmarks/bench_dub.py --model out/demo/model --video out/demo/demo_speaker.mp4 \
        --audio out/demo/demo_speaker.mp4 --seconds 6

Dubbing: the target video (default the last 20% of ../shared/data/train_anchor_en_m_61s.mp4,
512x512, 25 fps) is dubbed with new audio (default the German clip
../shared/data/clip_anchor_de_m_20s.mp4) for --seconds seconds, end to end as `lipsync dub`
runs it (tracking, prediction, blending, H.264 encoding, muxing; 2 worker processes), timed
from the call to the finished file; the per-stage times come from the progress callbacks.
Cartoon: `lipsync predict` writes a prediction folder of the same audio (not timed), then the
cartoon pass renders it at 512x512 (PNG sequence, contours, with and without the preview MP4).
The machine may be shared: the load average before and after each run is printed with it,
and the CPU time (user + system, this process and its worker processes) per frame, which
other processes do not inflate much.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.apps.cartoon import CartoonOptions, cartoon_prediction  # noqa: E402
from lipsync_engine.apps.dub import DubOptions, dub_video  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
ANCHOR = DATA / "train_anchor_en_m_61s.mp4"
GERMAN = DATA / "clip_anchor_de_m_20s.mp4"
LAST_FIFTH_S = 48.96            # the last 20% of the anchor video (frames 1224-1529)


class StageClock:
    """Progress callback that records when each stage is first and last seen."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.first, self.last = {}, {}

    def __call__(self, p) -> None:
        now = time.perf_counter() - self.t0
        self.first.setdefault(p.stage, now)
        self.last[p.stage] = now

    def summary(self) -> str:
        order = sorted(self.first, key=self.first.get)
        return ", ".join(f"{s} {self.last[s] - self.first[s]:.1f}" for s in order)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the worker pools)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_dub(model: Path, video: Path, audio: Path, seconds: float, video_start: float, workers: int,
              out_dir: Path) -> dict:
    clock = StageClock()
    before, c0 = load(), cpu_seconds()
    t0 = time.perf_counter()
    r = dub_video(model, audio, video, out_dir / "dub.mp4",
                  DubOptions(video_start_s=video_start, audio_end_s=seconds, workers=workers), clock, overwrite=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"frames": r.frames, "wall": wall, "fps": r.frames / wall, "stages": clock.summary(),
            "load": f"{before} -> {load()}", "cpu": cpu}


def bench_cartoon(model: Path, audio: Path, seconds: float, out_dir: Path) -> list:
    from lipsync_engine.inference.folder import OutputOptions, predict_to_folder
    from lipsync_engine.inference.predictor import PredictOptions

    pred = out_dir / "prediction"
    predict_to_folder(model, audio, pred, PredictOptions(fps=25.0, end_s=seconds), OutputOptions(preview=False,
                                                                                                  overwrite=True))
    rows = []
    for preview in (False, True):
        before, c0 = load(), cpu_seconds()
        r = cartoon_prediction(pred, CartoonOptions(size=512, preview=preview))
        rows.append({"preview": preview, "frames": r.frames, "wall": r.seconds, "fps": r.frames / r.seconds,
                     "load": f"{before} -> {load()}", "cpu": cpu_seconds() - c0})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "out" / "eval" / "anchor" / "model")
    p.add_argument("--video", type=Path, default=ANCHOR)
    p.add_argument("--video-start", type=float, default=None, help="default: the last 20%% of the anchor video")
    p.add_argument("--audio", type=Path, default=GERMAN)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-cartoon", action="store_true")
    args = p.parse_args(argv)
    start = args.video_start if args.video_start is not None else (LAST_FIFTH_S if args.video == ANCHOR else 0.0)
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; model {args.model}")
    work = Path(tempfile.mkdtemp(prefix="bench-dub-"))
    try:
        d = bench_dub(args.model, args.video, args.audio, args.seconds, start, args.workers, work)
        print(f"dub: {d['frames']} frames in {d['wall']:.1f} s = {d['fps']:.1f} frames/s "
              f"(stages, s: {d['stages']}; load {d['load']}); CPU {d['cpu']:.1f} s = "
              f"{1000 * d['cpu'] / d['frames']:.0f} ms/frame")
        if not args.skip_cartoon:
            for c in bench_cartoon(args.model, args.audio, args.seconds, work):
                print(f"cartoon (preview {'on' if c['preview'] else 'off'}): {c['frames']} frames in {c['wall']:.1f} s "
                      f"= {c['fps']:.1f} frames/s (load {c['load']}); CPU {c['cpu']:.1f} s = "
                      f"{1000 * c['cpu'] / c['frames']:.1f} ms/frame")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
