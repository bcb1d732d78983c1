"""A copy of a trained model whose mouth bank is built again with the current code.

    .venv/bin/python benchmarks/rebuild_bank.py MODEL SPEAKER COPY [--neighbours K] [--medoids]
    .venv/bin/lipsync evaluate COPY SPEAKER

COPY must be a new folder. The weights, gain and every other file are copied unchanged; mouth_bank.npz is built from the
same training frames (the model's split of SPEAKER, which must be the speaker it was trained on)
and the config's blend is set to K crops. `--medoids` builds the bank of lip-shape medoids alone,
as before 2026-12-07 (no teeth fractions, so no teeth pick). Compares the texture step's settings
on the same network: choose settings with it on inner splits (benchmarks/inner_split.py); on a
reported split it only shows what a chosen change does alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.face.geometry import CylinderMap  # noqa: E402
from lipsync_engine.model import articulation  # noqa: E402
from lipsync_engine.model.checkpoint import MOUTH_BANK  # noqa: E402
from lipsync_engine.prepare.dataset import open_speaker  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("speaker", type=Path)
    ap.add_argument("copy", type=Path)
    ap.add_argument("--neighbours", type=int, default=articulation.BANK_NEIGHBOURS)
    ap.add_argument("--medoids", action="store_true", help="the bank of lip-shape medoids alone")
    args = ap.parse_args(argv)
    if args.copy.exists():      # never replace a folder: it may be the model itself or someone's work
        print(f"error: {args.copy}: already exists; name a new folder for the copy", file=sys.stderr)
        return 1
    config = json.loads((args.model / "config.json").read_text())
    shutil.copytree(args.model, args.copy, ignore=shutil.ignore_patterns("train_state.pt", "evaluation"))
    ds = open_speaker(args.speaker)
    rows = np.arange(int(config["split"]["train_frames"]))
    cylinder = CylinderMap.from_dict(config["cylinder"])
    window = None if args.medoids else articulation.mouth_window(ds.reference_vertices, cylinder, config["lip_box"])
    vertices = np.asarray(ds.vertices)[rows]
    bank = articulation.MouthBank.build(np.asarray(ds.lips)[rows], vertices, cylinder,
                                        int(config["mouth_bank"]["size"]), window=window)
    with open(args.copy / MOUTH_BANK, "wb") as f:
        np.savez(f, **bank.to_arrays())
    config["mouth_bank"] = {**config["mouth_bank"], "size": len(bank), "neighbours": args.neighbours}
    (args.copy / "config.json").write_text(json.dumps(config, indent=1))
    shows = 0 if bank.teeth is None else int((bank.teeth >= articulation.TEETH_MIN_FRACTION).sum())
    print(f"{args.copy}: bank of {len(bank)} crops ({shows} show teeth), {args.neighbours} blended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
