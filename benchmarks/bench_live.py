"""Benchmark of `lipsync live` (issue 15): a long file played in real time through the streaming engine.

Measures, for coefficients only and with the lip atlas: frames out vs audio duration x fps (drift),
resident memory over the run (growth), processing time per frame, latency (block captured -> frame
sent) and the sound-to-frame delay (the frame's own audio instant captured -> frame sent), p50/p99,
and frames dropped by the JSON sink (written to /dev/null through the add-on's FRAME protocol).

    PYTHONPATH=. nice -n 15 .venv/bin/python benchmarks/bench_live.py MODEL_DIR AUDIO [--minutes 10]
        [--modes coefficients,atlas] [--json out.json]

AUDIO is looped to the requested length (the anchor's 61 s: ../shared/data/train_anchor_en_m_61s.mp4).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import soundfile

from lipsync_engine.io import media
from lipsync_engine.prepare import audio
from lipsync_engine.inference.live import LiveOptions
from lipsync_engine.inference.live_io import FileSource, JsonSink, LiveStats, run_live
from lipsync_engine.inference.predictor import PredictOptions, frame_count, load_predictor
from lipsync_engine.core.progress import CancelToken


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def looped_file(src: Path, minutes: float, out: Path) -> Path:
    x = media.load_audio(src, audio.SAMPLE_RATE).samples
    n = int(minutes * 60 * audio.SAMPLE_RATE)
    soundfile.write(out, np.resize(x, n), audio.SAMPLE_RATE, subtype="FLOAT")
    return out


def run_mode(predictor, path: Path, atlas: bool, fps: float) -> dict:
    stats = LiveStats()
    with open("/dev/null", "w") as null:
        sink = JsonSink(stats, timed=True, stream=null)
        source = FileSource(path, realtime=True)
        rss, stop = [], threading.Event()

        def sample() -> None:
            while not stop.wait(10.0):
                rss.append((time.monotonic(), rss_mb()))
        threading.Thread(target=sample, daemon=True).start()
        t0 = time.monotonic()
        rss.append((t0, rss_mb()))
        run_live(predictor, source, [sink], LiveOptions(PredictOptions(fps=fps, atlas=atlas)), stats, CancelToken())
        wall = time.monotonic() - t0
        stop.set()
        sink.close()
    duration = len(source.samples) / audio.SAMPLE_RATE
    after_1min = [m for t, m in rss if t - t0 >= 60.0] or [rss[-1][1]]
    s = stats.summary()
    s.update(mode="atlas" if atlas else "coefficients", audio_s=round(duration, 3), wall_s=round(wall, 2),
             expected_frames=frame_count(duration, fps), drift_frames=s["frames"] - frame_count(duration, fps),
             rss_mb_start=round(rss[0][1], 1), rss_mb_1min=round(after_1min[0], 1), rss_mb_end=round(rss_mb(), 1),
             rss_mb_max=round(max(m for _, m in rss), 1), lookahead_ms=predictor.lookahead_ms)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("audio", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--modes", default="coefficients,atlas")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    path = looped_file(args.audio, args.minutes, Path(f"/tmp/bench_live_{args.minutes:g}min.wav"))
    predictor = load_predictor(args.model, "cpu")
    out = []
    for mode in args.modes.split(","):
        r = run_mode(predictor, path, mode == "atlas", args.fps)
        out.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
