"""How the mouth bank's blend settings trade teeth against smoothness, on an inner split.

    .venv/bin/python benchmarks/bank_blend_study.py SPEAKER [--bank-until 0.7] [--until 0.8]
        [--settings 3:1,3:1:medoids,3:1:nopick,...]

The bank is built from the speaker's first `--bank-until` of frames (as training builds it from
its training frames); the frames from there to `--until` are rendered from their TRUE meshes
through the bank with each setting, so only the texture step is judged, and the reported
held-out part (after `--until`) is never read. Per setting: teeth recall (frames whose true crop
shows teeth, the fraction whose rendered crop does too), teeth in frames without them (false
teeth), lip-crop SSIM to the truth, sharpness and the frame-to-frame change of the crops, both
as a ratio to the truth's own. A setting is neighbours:sigma, with ":medoids" for the bank of lip
shape medoids alone (before teeth frames were kept first) and ":nopick" for a blended mouth
interior (before the teeth pick), the bank and renderer of the models before 2026-12-07.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.model import articulation  # noqa: E402
from lipsync_engine.model.losses import ssim  # noqa: E402
from lipsync_engine.prepare.dataset import open_speaker  # noqa: E402


def crop_ssim(a: np.ndarray, b: np.ndarray) -> float:
    import torch

    x = torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.array(b)).permute(0, 3, 1, 2).float() / 255
    return float(ssim(x, y))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("speaker", type=Path)
    ap.add_argument("--bank-until", type=float, default=0.7)
    ap.add_argument("--until", type=float, default=0.8)
    ap.add_argument("--settings", default="3:1,3:1:nopick,3:1:medoids:nopick,3:0,2:1,1:1,1:0",
                    help="neighbours:temporal_sigma[:medoids][:nopick], comma separated")
    args = ap.parse_args(argv)
    print(f"# command: {' '.join(sys.argv)}")
    ds = open_speaker(args.speaker)
    n = len(ds)
    a, b = int(n * args.bank_until), int(n * args.until)
    verts, lips = np.asarray(ds.vertices), np.asarray(ds.lips)
    box, cyl = ds.meta["lip_box"], ds.cylinder
    window = articulation.mouth_window(ds.reference_vertices, cyl, box)
    banks = {"teeth": articulation.MouthBank.build(lips[:a], verts[:a], cyl, window=window),
             "medoids": articulation.MouthBank.build(lips[:a], verts[:a], cyl)}
    banks["medoids"] = replace(banks["medoids"], teeth=articulation.teeth_fraction(banks["medoids"].crops, window))
    bank = banks["teeth"]
    truth, breaks = lips[a:b], ds.breaks[a:b].copy()
    breaks[0] = True
    true_teeth = articulation.teeth_fraction(truth, window) >= articulation.TEETH_MIN_FRACTION
    true_sharp = articulation.sharpness(truth).mean()
    true_speed = np.abs(np.diff(truth.astype(np.float32), axis=0)).mean()
    medoid_teeth = banks["medoids"].teeth >= articulation.TEETH_MIN_FRACTION
    print(f"bank of {len(bank)} crops from frames 0-{a} ({int((bank.teeth >= articulation.TEETH_MIN_FRACTION).sum())} "
          f"show teeth; {int(medoid_teeth.sum())} in the bank of medoids alone); rendered frames {a}-{b} ({b - a}), "
          f"{int(true_teeth.sum())} of them show teeth in the truth")
    print("setting (neighbours:sigma)  teeth recall  false teeth  lip SSIM  sharpness  crop change")
    for setting in args.settings.split(","):
        k, sigma, *flags = setting.split(":")
        renderer = articulation.MouthRenderer(banks["medoids" if "medoids" in flags else "teeth"], cyl, box,
                                              neighbours=int(k), temporal_sigma=float(sigma),
                                              teeth_pick="nopick" not in flags)
        out = renderer.render(verts[a:b], breaks)
        teeth = articulation.teeth_fraction(out, window) >= articulation.TEETH_MIN_FRACTION
        recall = teeth[true_teeth].mean() if true_teeth.any() else float("nan")
        false = teeth[~true_teeth].mean() if (~true_teeth).any() else float("nan")
        speed = np.abs(np.diff(out.astype(np.float32), axis=0)).mean() / true_speed
        print(f"{setting:>27}  {recall:12.2f}  {false:11.2f}  {crop_ssim(out, truth):8.4f}  "
              f"{articulation.sharpness(out).mean() / true_sharp:9.2f}  {speed:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
