"""What the geometry's weight average (train.GeometryAverage) costs in training time.

    .venv/bin/python benchmarks/weight_average_cost.py SPEAKER [--epochs 3] [--repeats 2]

Trains SPEAKER's default recipe for a few epochs with TrainOptions.weight_average 0 and 4,
interleaved (0, 4, 0, 4, ...), each into a new temporary folder, and prints each run's wall
time (phone recognition and the bank included), then the cost of one average step and one
swap on the cpu preset's network. Nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.model.network import LipSync3D, preset_dimensions  # noqa: E402
from lipsync_engine.model.train import GeometryAverage, TrainOptions, train_speaker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("speaker", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--test-fraction", type=float, default=0.1)
    a = p.parse_args()
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    for _ in range(a.repeats):
        for average in (0.0, 4.0):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                train_speaker(a.speaker, Path(tmp) / "model",
                              TrainOptions(epochs=a.epochs, test_fraction=a.test_fraction, weight_average=average))
                print(f"weight_average {average}: {a.epochs} epochs in {time.perf_counter() - t0:.1f} s", flush=True)
    model = LipSync3D(preset_dimensions("cpu").with_phones())
    avg = GeometryAverage(model, 4.0, 190)
    for _ in range(10):
        avg.step()
    t0 = time.perf_counter()
    for _ in range(200):
        avg.step()
    step = (time.perf_counter() - t0) / 200
    t0 = time.perf_counter()
    avg.swap()
    swap = time.perf_counter() - t0
    n = sum(p.numel() for p in avg.params)
    print(f"average of {n:,} weights: {step * 1e3:.2f} ms a step, {swap * 1e3:.2f} ms a swap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
