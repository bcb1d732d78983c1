"""The skin registration's optical flow: what each DIS setting costs and what it keeps.

    .venv/bin/python benchmarks/skin_registration_study.py [CLIP ...]

Default clips: ../shared/data/clip_mead_W040_f_7s.mp4, clip_anchor_de_m_20s.mp4 and the GRID
clip s4/bgbu2a.mpg, none of which any reported figure uses. Each clip is prepared once (report
off, into a temporary folder), then its atlases are made again with every setting below (every
few frames, at most about 100 a clip) and compared on skin with the normalized reference atlas
warped into the frame, as tests/engine/test_prepare.py does: SSIM averaged over the eroded skin
mask, mean and worst frame. "no registration" is the mesh alone (LightingOptions(register_skin=
False)). DIS is timed alone on a 256 x 256 pair, one thread. Prints one line per clip and setting
and the command that made them.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.core import blas  # noqa: E402
from lipsync_engine.face.topology import load_topology  # noqa: E402
from lipsync_engine.face.warp import Raster  # noqa: E402
from lipsync_engine.io import media  # noqa: E402
from lipsync_engine.prepare import dataset, normalize  # noqa: E402
from lipsync_engine.prepare.lighting import LightingOptions  # noqa: E402
from lipsync_engine.prepare.pipeline import PrepareOptions, prepare_speaker  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CLIPS = (SHARED / "clip_mead_W040_f_7s.mp4", SHARED / "clip_anchor_de_m_20s.mp4", SHARED / "grid" / "s4" / "bgbu2a.mpg")
# (finest scale, patch stride, gradient descent iterations, variational refinement iterations)
SETTINGS = {"no registration": None, "in use: finest 1, stride 3, GD 12, VR 1": (1, 3, 12, 1),
            "stride 4": (1, 4, 12, 1), "finest 2": (2, 3, 12, 1), "finest 2, stride 4": (2, 4, 12, 1),
            "GD 8": (1, 3, 8, 1), "VR 0": (1, 3, 12, 0)}
MAX_FRAMES = 100


def _flow(setting):
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fs, stride, gd, vr = setting
    flow.setFinestScale(fs)
    flow.setPatchStride(stride)
    flow.setGradientDescentIterations(gd)
    flow.setVariationalRefinementIterations(vr)
    return flow


def _dis_ms(setting) -> float:
    a = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8), (0, 0), 2)
    b = np.roll(a, 1, axis=1)
    flow = _flow(setting)
    flow.calc(a, b, None)
    t = time.perf_counter()
    for _ in range(50):
        flow.calc(a, b, None)
    return (time.perf_counter() - t) / 50 * 1000


def study(clip: Path, speaker: Path) -> None:
    meta = dataset.read_meta(speaker)
    box = meta["lip_box"]
    norm = normalize.PoseNormalization(np.load(speaker / dataset.REFERENCE_VERTICES).astype(np.float64),
                                       dataset.open_speaker(speaker).cylinder, (box["row"], box["col"]))
    landmarks, vertices = np.load(speaker / "landmarks.npy"), np.load(speaker / "vertices.npy")
    index = np.load(speaker / "frame_index.npy")
    rows = {int(index[i, 1]): i for i in range(0, len(index), max(1, len(index) // MAX_FRAMES))}
    ref_frame = meta["reference"]["frame"]
    images, reference = {}, None
    for f in media.iter_video_frames(clip):
        if f.index in rows:
            images[rows[f.index]] = f.image
        if f.index == ref_frame:
            reference = f.image
    ref_row = int(np.flatnonzero(index[:, 1] == ref_frame)[0])
    topo = load_topology()
    skin_tris = np.zeros(len(topo.triangles), bool)
    skin_tris[topo.skin_triangles] = True
    for name, setting in SETTINGS.items():
        options = LightingOptions() if setting else dataclasses.replace(LightingOptions(), register_skin=False)
        builder = normalize.AtlasBuilder(norm, options)
        builder.set_reference(reference, landmarks[ref_row])
        if setting:
            builder._flow = _flow(setting)
        ref = normalize.to_uint8(builder.reference[..., :3])
        scores = []
        for i, image in images.items():
            atlas = builder.frame(image, landmarks[i], vertices[i]).normalized
            raster = Raster(norm.cylinder.project(vertices[i].astype(np.float64)), topo.triangles, (256, 256))
            aligned = raster.warp(ref, norm.reference_uv)
            skin = cv2.erode(raster.triangle_mask(skin_tris).astype(np.uint8), np.ones((5, 5))) > 0
            _, ssim = structural_similarity(atlas, aligned, channel_axis=2, full=True, data_range=255)
            scores.append(ssim.mean(axis=2)[skin].mean())
        dis = f"DIS {_dis_ms(setting):.2f} ms" if setting else ""
        print(f"{clip.name:28s} {name:40s} skin SSIM mean {np.mean(scores):.4f}, worst {np.min(scores):.4f} "
              f"({len(scores)} frames)  {dis}", flush=True)


def main(argv: list[str]) -> int:
    clips = [Path(a) for a in argv] or list(CLIPS)
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    cv2.setNumThreads(1)
    blas.set_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for k, clip in enumerate(clips):
            speaker = Path(tmp) / f"speaker{k}"
            prepare_speaker([clip], speaker, PrepareOptions(report=False))
            study(clip, speaker)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
