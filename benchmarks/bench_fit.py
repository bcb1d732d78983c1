"""Benchmark the batched blendshape fit: frames per second on this CPU.

Usage (from the repository root, after `make venv`):
    .venv/bin/python benchmarks/bench_fit.py                      # synthetic: 1500 and 10000 frames
    .venv/bin/python benchmarks/bench_fit.py --frames 3000 --repeats 5
    .venv/bin/python benchmarks/bench_fit.py --speaker out/demo/speaker   # a prepared speaker (read only)

Synthetic data: smooth sparse ARKit coefficients (each shape on ~10% of the time) blended on
the canonical face, plus Gaussian vertex noise of 0.5% of the face height; independent
frames (--independent) are harder (more ADMM iterations). Time is wall-clock for
`fit_coefficients` end to end (basis adaptation, projection, ADMM, residuals), best of
--repeats runs (the machine may be shared). Prints one line per run plus the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.rig.fitting import (FitOptions, coefficients_to_vertices, fit_coefficients,  # noqa: E402
                                        load_rig, segment_breaks)
from lipsync_engine.face.topology import CHIN, FOREHEAD_TOP  # noqa: E402

NOISE_FRACTION = 0.005   # of the forehead-to-chin height


def synthetic(frames: int, independent: bool, seed: int = 0):
    """(vertices (F, 468, 3), neutral (468, 3), true coefficients (F, 52))."""
    rig, rng = load_rig(), np.random.default_rng(seed)
    c = np.zeros((frames, len(rig.names)))
    if independent:
        for row in c:
            on = rng.choice(len(rig.names) - 1, 5, replace=False)
            row[on] = rng.uniform(0.2, 1.0, 5)
    else:
        kernel = np.hanning(25) / np.hanning(25).sum()
        for j in range(len(rig.names) - 1):
            x = np.convolve(rng.standard_normal(frames + 40), kernel, "same")[20:-20]
            c[:, j] = np.clip(x / x.std() * 0.5 - 0.8 + rng.uniform(0.0, 0.4), 0.0, 1.0)
    sigma = NOISE_FRACTION * np.linalg.norm(rig.neutral[FOREHEAD_TOP] - rig.neutral[CHIN])
    v = coefficients_to_vertices(c, rig.neutral, rig.deltas) + rng.normal(0.0, sigma, (frames, 468, 3))
    return v.astype(np.float32), rig.neutral, c


def timed(vertices, neutral, options: FitOptions, repeats: int, breaks=None):
    best, result = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fit_coefficients(vertices, neutral, options=options, breaks=breaks)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[1500, 10000], help="synthetic frame counts")
    ap.add_argument("--independent", action="store_true", help="independent random frames (smoothness 0)")
    ap.add_argument("--speaker", type=Path, help="fit a prepared speaker directory instead (nothing is written)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    options = FitOptions(smoothness=0.0) if args.independent else FitOptions()
    if args.speaker:
        from lipsync_engine.prepare.dataset import open_speaker

        ds = open_speaker(args.speaker)
        v = np.asarray(ds.vertices)
        sec, r = timed(v, ds.reference_vertices, options, args.repeats, segment_breaks(ds.frame_index))
        print(f"{args.speaker.name}: {len(v)} frames in {sec:.3f} s = {len(v) / sec:,.0f} frames/s, "
              f"{r.iterations} ADMM iterations, residual RMS {r.residual_rms.mean():.3f} cm")
        return 0
    for n in args.frames:
        v, neutral, truth = synthetic(n, args.independent)
        sec, r = timed(v, neutral, options, args.repeats)
        print(f"synthetic {'independent' if args.independent else 'smooth'}: {n} frames in {sec:.3f} s = "
              f"{n / sec:,.0f} frames/s, {r.iterations} ADMM iterations, "
              f"mean |error| {np.abs(r.coefficients - truth).mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
