"""How high can the full-atlas SSIM go when the upper face is copied from one fixed image?

Usage (from the repository root, after `make venv`; MODEL is a model trained on SPEAKER):
    .venv/bin/python benchmarks/upper_face_bound.py SPEAKER MODEL [--candidates 100]

`lipsync evaluate`'s atlas SSIM pastes each method's lip crop into the speaker's reference
atlas, so outside the 128x128 lip crop every method scores the same: the fixed upper face
against each held-out frame's. This prints that outside-the-crop SSIM (and the full-atlas SSIM
with the fixed image's own lips) on the model's held-out tail for fixed upper faces:
- the reference atlas (what `lipsync evaluate` uses, as the paper);
- the best single training frame: --candidates training frames scored against 150 other
  training frames (never the held-out part), the best one then measured on the held-out tail;
- the per-pixel median and mean of the training atlases (blurry, but noise-free);
and, as a ceiling no fixed image reaches, each held-out frame's previous frame.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.prepare import dataset  # noqa: E402
from lipsync_engine.apps.evaluate import lip_region, model_split, ssim_sums  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("speaker", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--candidates", type=int, default=100, help="training frames tried as the fixed upper face")
    args = ap.parse_args()
    print("# command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    ds = dataset.open_speaker(args.speaker)
    cut, n = model_split(json.loads((args.model / "config.json").read_text()))
    rows, cols = lip_region(ds.meta["lip_box"])
    test = np.array(ds.atlas[cut:n])

    def outside_and_full(fixed: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
        pred = np.ascontiguousarray(np.broadcast_to(fixed, truth.shape)) if fixed.ndim == 3 else fixed
        total, count = ssim_sums(pred, truth)
        inside, n_inside = ssim_sums(pred[:, rows, cols], truth[:, rows, cols])
        return float(((total - inside) / (count - n_inside)).mean()), float((total / count).mean())

    rng = np.random.default_rng(0)
    candidates = np.sort(rng.choice(cut, min(args.candidates, cut), replace=False))
    probe = np.sort(rng.choice(np.setdiff1d(np.arange(cut), candidates), min(150, cut - len(candidates)),
                               replace=False))
    probe_atlas = np.array(ds.atlas[probe])
    t0 = time.perf_counter()
    scores = [outside_and_full(np.array(ds.atlas[c]), probe_atlas)[0] for c in candidates]
    best = int(candidates[int(np.argmax(scores))])
    sample = np.array(ds.atlas[0:cut:max(1, cut // 600)]).astype(np.float32)
    fixed = {"reference atlas (the metric's)": ds.reference_atlas(),
             f"best of {len(candidates)} training frames (frame {best})": np.array(ds.atlas[best]),
             "median of the training atlases": np.rint(np.median(sample, 0)).astype(np.uint8),
             "mean of the training atlases": np.rint(sample.mean(0)).astype(np.uint8)}
    print(f"held-out frames {cut}-{n - 1} ({n - cut}); candidate scoring {time.perf_counter() - t0:.0f} s")
    print(f"{'upper face':48s} outside the lip crop   full atlas")
    for name, image in fixed.items():
        o, f = outside_and_full(image, test)
        print(f"{name:48s} {o:.4f}                 {f:.4f}")
    o, f = outside_and_full(test[:-1], test[1:])
    print(f"{'(ceiling) the previous held-out frame':48s} {o:.4f}                 {f:.4f}")


if __name__ == "__main__":
    main()
