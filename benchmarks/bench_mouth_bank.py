"""Lip crops per second of `lipsync predict`: the mouth bank (real crops warped to the mesh) against
the texture decoder (auto-regressive), on one trained model (it must have a mouth bank).

    .venv/bin/python benchmarks/bench_mouth_bank.py MODEL_DIR [--audio FILE] [--seconds 20]

Reads ../shared/data/train_anchor_en_m_61s.mp4 by default; 30 fps; whole predictions in memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.inference.predictor import PredictOptions, load_predictor  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "data" / "train_anchor_en_m_61s.mp4")
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    print(f"# command: {' '.join(sys.argv)}")
    predictor = load_predictor(args.model, "cpu")
    for texture in ("bank", "network"):
        predictor.predict(args.audio, PredictOptions(fps=30.0, end_s=2.0, texture=texture))   # warm-up
        t0 = time.perf_counter()
        pred = predictor.predict(args.audio, PredictOptions(fps=30.0, end_s=args.seconds, texture=texture))
        dt = time.perf_counter() - t0
        print(f"{texture}: {len(pred)} frames with lips in {dt:.2f} s = {len(pred) / dt:.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
