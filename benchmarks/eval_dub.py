"""Quality of `lipsync dub` in self-reenactment, against the static-face baseline.

Usage (from the repository root):
    .venv/bin/python benchmarks/eval_dub.py            # the anchor model (out/eval/anchor/model)
    .venv/bin/python benchmarks/eval_dub.py --model M --video V --start-s 4.8 --images docs/images

The model was trained on the first 80% of the video (out/eval/anchor: `lipsync train` with
val_fraction 0.2); the last 20% is dubbed with its own audio, so the original frames are the
ground truth. The static baseline goes through the same pipeline with the reference face
(reference vertices and lips for every frame) instead of the prediction.

Metrics, per method (docs/evaluation.md, "Cartoon and dubbing"):
- SSIM (grey levels, skimage's 7x7 window) inside the face box: the bounding box of the
  original frame's tracked landmarks; mean over frames.
- Mouth LMD: both videos are tracked again with MediaPipe, their landmarks aligned to the
  model's reference face (Umeyama on the rigid upper face, as prepare does) and the 40 lip
  landmarks projected into the 256-px atlas (evaluate.py's definition); mean distance.
- Mouth openness correlation with the original (inner-lip gap / face height).
- Seam: the blend mask of each frame is recomputed (faceblend), its transition ring is the
  pixels with 0.1 < alpha < 0.9; the mean Sobel gradient magnitude of the dubbed frame on
  the ring over that of the original frame on the same ring. Within 0.8-1.2 is "no visible seam".
Writes METRICS_JSON and, with --images, small PNGs of sample frames and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.io import media  # noqa: E402
from lipsync_engine.prepare import normalize  # noqa: E402
from lipsync_engine.apps.dub import DubOptions, _poses, dub_video  # noqa: E402
from lipsync_engine.apps.faceblend import FaceBlender  # noqa: E402
from lipsync_engine.face.tracking import track_frames  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RING = (0.1, 0.9)            # alpha range of the blend boundary ring
TILE = 160                   # pixels per sample crop in the figures


def frames_of(path: Path, first: int = 0, count: int | None = None) -> list:
    out = []
    for f in media.iter_video_frames(path, start_s=max(0.0, first / (media.probe(path).fps or 25.0) - 1.0)):
        if f.index < first:
            continue
        if count is not None and len(out) >= count:
            break
        out.append(f.image)
    return out


def track(images: list) -> dict:
    from types import SimpleNamespace

    t = track_frames(SimpleNamespace(index=i, time_s=i / 25.0, image=im) for i, im in enumerate(images))
    return {"landmarks": t.landmarks, "face_count": t.face_count, "times": t.times_s}


def ssim_face(a: np.ndarray, b: np.ndarray, lm: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    x0, y0 = np.floor(lm[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(lm[:, :2].max(0)).astype(int)
    g = [cv2.cvtColor(im[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY) for im in (a, b)]
    return float(structural_similarity(g[0], g[1], data_range=255))


def lip_pixels(landmarks: np.ndarray, reference: np.ndarray, cylinder) -> np.ndarray:
    """(N, 40, 2) lip landmarks in 256-px atlas pixels (evaluate.py's LMD space)."""
    from lipsync_engine.apps.evaluate import landmark_pixels

    verts, *_ = normalize.normalize_vertices(landmarks, reference, None, 0.0)
    return landmark_pixels(verts, cylinder)


def gradient(image: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def seam_ratios(originals, dubbed, track_o, poses, verts, lips, blender: FaceBlender) -> np.ndarray:
    out = []
    for i, (o, d) in enumerate(zip(originals, dubbed)):
        if not poses["usable"][i]:
            continue
        pose = (poses["scale"][i], poses["rotation"][i], poses["translation"][i])
        _, alpha, _ = blender.blend(o, track_o["landmarks"][i], poses["target_vertices"][i], pose, verts[i], lips[i])
        ring = (alpha > RING[0]) & (alpha < RING[1])
        if ring.sum() > 50:
            out.append(float(gradient(d)[ring].mean() / max(gradient(o)[ring].mean(), 1e-6)))
    return np.asarray(out)


def run_method(name, model, video, start_s, end_s, out_dir, predict_fn, originals, track_o, ref, cylinder):
    t0 = time.perf_counter()
    r = dub_video(model, video, video, out_dir / f"{name}.mp4",
                  DubOptions(video_start_s=start_s, video_end_s=end_s, audio_start_s=start_s, audio_end_s=end_s),
                  overwrite=True, predict_fn=predict_fn)
    seconds = time.perf_counter() - t0
    dubbed = frames_of(r.path)
    n = min(len(dubbed), len(originals))
    track_d = track(dubbed[:n])
    ok = (track_d["face_count"][:n] == 1) & (track_o["face_count"][:n] == 1)
    ssim = np.array([ssim_face(originals[i], dubbed[i], track_o["landmarks"][i]) for i in range(n)])
    lmd = np.linalg.norm(lip_pixels(track_d["landmarks"][:n][ok], ref, cylinder)
                         - lip_pixels(track_o["landmarks"][:n][ok], ref, cylinder), axis=-1).mean()
    open_d = normalize.mouth_openness(track_d["landmarks"][:n][ok])
    open_o = normalize.mouth_openness(track_o["landmarks"][:n][ok])
    return {"frames": n, "seconds": seconds, "ssim_face": float(ssim.mean()), "ssim_face_min": float(ssim.min()),
            "lmd": float(lmd), "openness_r": float(np.corrcoef(open_d, open_o)[0, 1]),
            "ssim_per_frame": ssim.tolist(), "openness": open_d.tolist()}, dubbed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "out" / "eval" / "anchor" / "model")
    p.add_argument("--video", type=Path, default=DATA / "train_anchor_en_m_61s.mp4")
    p.add_argument("--start-s", type=float, default=48.96, help="first second of the held-out part (default: last 20%%)")
    p.add_argument("--end-s", type=float, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "eval" / "dub")
    p.add_argument("--images", type=Path, help="write sample PNGs and the plot here (e.g. docs/images)")
    args = p.parse_args(argv)
    from lipsync_engine.apps.faceblend import model_assets
    from lipsync_engine.inference.predictor import PredictOptions, predict
    from lipsync_engine.model.checkpoint import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    info = media.probe(args.video)
    first = int(round(args.start_s * info.fps))
    count = (int(round(args.end_s * info.fps)) if args.end_s else info.frame_count) - first
    originals = frames_of(args.video, first, count)
    track_o = track(originals)
    assets = model_assets(args.model)
    ref, cylinder = assets["reference_vertices"], assets["cylinder"]
    recorded = {}

    def model_fn(model_dir, audio, fps, start_s, end_s, n, options, on_progress, cancel):
        pr = predict(model_dir, audio, PredictOptions(fps=fps, start_s=start_s, end_s=end_s), on_progress, cancel)
        recorded["model"] = (pr.vertices[:n], pr.lips[:n])
        return recorded["model"]

    def static_fn(model_dir, audio, fps, start_s, end_s, n, options, on_progress, cancel):
        _, _, extra = load_model(model_dir)
        lips = ((extra["reference_lips"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        recorded["static"] = (np.repeat(ref[None].astype(np.float32), n, 0), np.repeat(lips[None], n, 0))
        return recorded["static"]

    results, videos = {}, {}
    for name, fn in (("model", model_fn), ("static", static_fn)):
        results[name], videos[name] = run_method(name, args.model, args.video, args.start_s, args.end_s, args.out,
                                                 fn, originals, track_o, ref, cylinder)
        print(f"{name}: SSIM face {results[name]['ssim_face']:.4f} (min {results[name]['ssim_face_min']:.3f}), "
              f"LMD {results[name]['lmd']:.3f} px, openness r {results[name]['openness_r']:.3f}", flush=True)
    poses = _poses(track_o, ref, first, info.fps, DubOptions().pose_smoothing_s)
    blender = FaceBlender(args.model, DubOptions().lighting)
    ratios = seam_ratios(originals, videos["model"], track_o, poses, *recorded["model"], blender)
    results["seam"] = {"frames": int(len(ratios)), "ratio_mean": float(ratios.mean()),
                       "ratio_p05": float(np.percentile(ratios, 5)), "ratio_p95": float(np.percentile(ratios, 95)),
                       "within_20pct": float(np.mean(np.abs(ratios - 1.0) <= 0.2))}
    print(f"seam: gradient ratio mean {ratios.mean():.3f} (5-95%: {results['seam']['ratio_p05']:.3f}-"
          f"{results['seam']['ratio_p95']:.3f}), frames within 20%: {results['seam']['within_20pct']:.1%}")
    results["original_openness"] = normalize.mouth_openness(track_o["landmarks"]).tolist()
    (args.out / "metrics.json").write_text(json.dumps(results, indent=1))
    if args.images:
        figures(args.images, originals, videos, results, track_o)
    return 0


def small_png(path: Path, rgb: np.ndarray) -> None:
    """A PNG with a 256-colour palette: photographs of faces stay small in the repository."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def figures(folder: Path, originals, videos, results, track_o) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    openness = np.asarray(results["original_openness"])
    picks = [int(np.argmax(openness)), int(np.argmin(openness)), len(originals) // 2]
    rows = []
    for i in picks:
        lm = track_o["landmarks"][i]
        c = lm[:, :2].mean(0).astype(int)
        half = int(np.ptp(lm[:, 1]) * 0.75)
        y0, x0 = max(c[1] - half, 0), max(c[0] - half, 0)
        crop = [cv2.resize(im[y0:y0 + 2 * half, x0:x0 + 2 * half], (TILE, TILE), interpolation=cv2.INTER_AREA)
                for im in (originals[i], videos["model"][i], videos["static"][i])]
        rows.append(np.hstack(crop))
    small_png(folder / "dub_samples.png", np.vstack(rows))
    fig, ax = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    t = np.arange(len(results["model"]["ssim_per_frame"])) / 25.0
    for name in ("model", "static"):
        ax[0].plot(t, results[name]["ssim_per_frame"], label=f"{name} (mean {results[name]['ssim_face']:.3f})")
    ax[0].axhline(0.9, color="grey", lw=0.8, ls="--")
    ax[0].set_ylabel("SSIM in the face box")
    ax[0].legend(loc="lower right")
    ax[1].plot(t[:len(openness)], openness[:len(t)], label="original", color="black", lw=1)
    for name in ("model", "static"):
        ax[1].plot(np.arange(len(results[name]["openness"])) / 25.0, results[name]["openness"], label=name, lw=1)
    ax[1].set_ylabel("mouth openness")
    ax[1].set_xlabel("seconds into the held-out 20%")
    ax[1].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(folder / "dub_quality.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
