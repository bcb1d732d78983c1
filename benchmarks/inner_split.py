"""A speaker folder holding only the first FRACTION of another's frames: an inner split, so that
recipes and rules are chosen on frames that never include the reported held-out part.

    .venv/bin/python benchmarks/inner_split.py out/eval/anchor/speaker out/eval/anchor80 0.8

The copy keeps the speaker's normalization (reference face, cylinder, lip box, reference atlases)
and its fitted blendshapes, cut to the same frames. Train on it with `--test-fraction 0.25` and
the test tail is the clip's 60-80%: the reported last 20% is never read.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipsync_engine.prepare import dataset  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__)
        return 2
    src, dst, fraction = Path(argv[0]), Path(argv[1]), float(argv[2])
    meta = dataset.read_meta(src)
    n = int(meta["frames"] * fraction)
    dst.mkdir(parents=True)
    for file, _, _ in dataset.ARRAYS.values():
        np.save(dst / file, np.load(src / file, mmap_mode="r")[:n])
    with np.load(src / dataset.POSES) as z:
        np.savez(dst / dataset.POSES, **{k: z[k][:n] for k in z.files})
    for name in (dataset.REFERENCE_VERTICES, *(p.name for p in dataset.reference_atlas_files(src))):
        shutil.copy(src / name, dst / name)
    if (src / "blendshapes.npy").is_file():
        np.save(dst / "blendshapes.npy", np.load(src / "blendshapes.npy")[:n])
        fit = json.loads((src / "blendshapes.json").read_text())
        fit["frames"] = n
        (dst / "blendshapes.json").write_text(json.dumps(fit, indent=1))
    meta["frames"] = n
    (dst / dataset.META).write_text(json.dumps(meta, indent=1))
    print(f"{dst}: the first {n} of {src}'s {n if fraction >= 1 else json.loads((src / dataset.META).read_text())['frames']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
