"""Speed and memory of `lipsync predict` on this machine (figures for docs/benchmarks.md).

Usage: .venv/bin/python benchmarks/bench_predict.py [--device cpu] [--presets cpu paper] [--skip-hour]

Models: the network at each width preset with its initial weights (speed does not depend on
training), in a model directory made here (canonical MediaPipe face as the reference, its
cylinder, grey reference atlases). Audio: the speech of /work/shared/data's 61 s training clip
(a synthetic demo voice when that folder is missing), tiled as needed.

Prints, per preset:
- per-frame latency at batch 1 (median of 30; with the engine's thread setting: one torch
  thread on a CPU, predict._one_thread): spectrogram + audio encoder + geometry decoder
  ("vertices"), the blendshape decoder, one auto-regressive atlas step (atlas encoder +
  texture decoder), and all three together;
- throughput of Predictor.predict: geometry + blendshapes batched (atlas off), and with the
  auto-regressive atlas on, end to end from decoded audio (spectrograms included);
then, in child processes (peak resident memory: VmHWM), `predict_to_folder` on 60
minutes of audio (geometry, blendshapes, PC2, npz, exports; no atlas images or preview), and
with atlas images + preview on 1 and 3 minutes to show that memory does not grow with length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

from lipsync_engine.prepare import audio  # noqa: E402
from lipsync_engine.io import media  # noqa: E402
from lipsync_engine.model.network import LipSync3D, preset_dimensions  # noqa: E402
from lipsync_engine.inference.folder import OutputOptions, predict_to_folder  # noqa: E402
from lipsync_engine.inference.predictor import PredictOptions, load_predictor, plan_prediction  # noqa: E402

CLIP = Path("/work/shared/data/train_anchor_en_m_61s.mp4")
FPS = 30.0


def make_model_dir(folder: Path, preset: str) -> Path:
    """A loadable model directory with the preset's network at its initial weights."""
    from safetensors.torch import save_file

    from lipsync_engine.face.geometry import reference_cylinder
    from lipsync_engine.face.topology import NOSE_TIP, load_topology
    from lipsync_engine.model.checkpoint import MODEL_FORMAT, MODEL_FORMAT_VERSION

    topo = load_topology()
    ref = topo.vertices.astype(np.float32)
    cyl = reference_cylinder(ref.astype(np.float64), topo.right_eye, topo.left_eye, NOSE_TIP)
    lips_uv = cyl.project(ref[topo.lips_outer]).mean(0)
    box = {"row": int(round(lips_uv[1] - 64)), "col": int(round(lips_uv[0] - 64)), "size": 128}
    torch.manual_seed(0)
    dims = preset_dimensions(preset)
    model = LipSync3D(dims)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["reference_vertices"] = torch.from_numpy(ref)
    tensors["reference_lips"] = torch.zeros(3, 128, 128)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    grey = np.full((256, 256, 3), 150, np.uint8)
    for name in ("reference_atlas.png", "reference_atlas_normalized.png"):
        cv2.imwrite(str(folder / name), grey)
    config = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "dims": dims.to_dict(),
              "spectrogram_scale": 1.0, "fps": 25.0, "lip_box": box, "cylinder": cyl.to_dict(),
              "model_id": f"bench-{preset}", "has_blendshapes": True}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def speech(seconds: float) -> np.ndarray:
    """(N,) float32 16 kHz speech, the clip's audio tiled to `seconds`."""
    if CLIP.is_file():
        base = media.load_audio(CLIP).samples
    else:
        from lipsync_engine.demo.speech import synthesize
        base = synthesize(20.0)[0]
    n = int(seconds * audio.SAMPLE_RATE)
    return np.resize(base, n).astype(np.float32)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def latency(p, samples: np.ndarray, repeats: int = 30) -> dict:
    """Median ms per frame at batch 1 of each part (see the module docstring)."""
    plan = plan_prediction(media.AudioTrack(samples[: 10 * audio.SAMPLE_RATE], audio.SAMPLE_RATE, 0.0),
                           PredictOptions(fps=FPS))
    from lipsync_engine.inference.predictor import _one_thread

    m, out = p.model, {"vertices": [], "blendshapes": [], "atlas": [], "all": []}
    prev = torch.zeros(1, 3, 128, 128, device=p.device)
    with torch.inference_mode(), _one_thread(p.device):
        for i in range(repeats + 3):
            k = 40 + i
            t0 = time.perf_counter()
            code = torch.from_numpy(p._codes(plan, k, k + 1, numpy_path=False)).to(p.device)   # torch's encoder
            m.geometry(code).cpu()
            _sync(p.device)
            t1 = time.perf_counter()
            m.blendshapes(code).cpu()
            _sync(p.device)
            t2 = time.perf_counter()
            prev = (p.reference_lips + m.texture(torch.cat([code, m.atlas(prev)], 1))).clamp(-1, 1)
            prev.cpu()
            _sync(p.device)
            t3 = time.perf_counter()
            if i >= 3:
                for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    out[key].append(dt * 1e3)
    return {k: float(np.median(v)) for k, v in out.items()}


def throughput(p, samples: np.ndarray, atlas: bool) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process) of Predictor.predict.

    The CPU-time figure is what the process itself consumed (all threads), so it is not
    inflated by other processes on a busy machine; on an idle 2-core machine the wall figure
    lies between it and twice it."""
    track = media.AudioTrack(samples, audio.SAMPLE_RATE, 0.0)
    opts = PredictOptions(fps=FPS, atlas=atlas, silence_db=-np.inf)    # every frame computed
    t0, c0 = time.perf_counter(), time.process_time()
    pred = p.predict(track, opts)
    return len(pred.times) / (time.perf_counter() - t0), len(pred.times) / (time.process_time() - c0)


def child(args) -> None:
    """Run in a fresh process: predict_to_folder, then print a JSON line with time and peak RSS."""
    t0 = time.perf_counter()
    r = predict_to_folder(args.model, args.audio, args.out, PredictOptions(fps=FPS, atlas=args.atlas,
                                                                           device=args.device),
                          OutputOptions(atlas_images=args.atlas, preview=args.atlas))
    print(json.dumps({"frames": r.frames, "seconds": time.perf_counter() - t0, "peak_gb": peak_rss_gb()}))


def peak_rss_gb() -> float:
    """This process's resident-memory high-water mark (VmHWM). Not getrusage's ru_maxrss, which
    Linux keeps across execve, so a child would report its parent's peak at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20                               # KiB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run_child(model: Path, seconds: float, atlas: bool, device: str, tmp: Path) -> dict:
    wav = tmp / f"speech_{int(seconds)}s.wav"
    if not wav.is_file():
        soundfile.write(wav, speech(seconds), audio.SAMPLE_RATE, subtype="PCM_16")
    out = tmp / f"out_{int(seconds)}_{int(atlas)}"
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--audio", str(wav), "--out", str(out),
           "--device", device] + (["--atlas"] if atlas else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--skip-hour", action="store_true", help="skip the 60-minute memory run")
    ap.add_argument("--only", choices=("speed", "memory"), help="run one part only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--atlas", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    print(f"# command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""))
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as td:
        tmp = Path(td)
        samples = speech(120.0)
        for preset in args.presets if args.only != "memory" else ():
            p = load_predictor(make_model_dir(tmp / preset, preset), args.device)
            lat = latency(p, samples)
            print(f"{preset:>6}: latency per frame at batch 1: vertices {lat['vertices']:.2f} ms, blendshapes "
                  f"{lat['blendshapes']:.3f} ms, atlas step {lat['atlas']:.2f} ms, all three {lat['all']:.2f} ms",
                  flush=True)
            geo_s = 120.0 if preset == "cpu" or args.device != "cpu" else 20.0
            fps_geo = throughput(p, samples[: int(geo_s * audio.SAMPLE_RATE)], atlas=False)
            atlas_s = 20.0 if preset == "cpu" or args.device != "cpu" else 2.0
            fps_atlas = throughput(p, samples[: int(atlas_s * audio.SAMPLE_RATE)], atlas=True)
            print(f"{preset:>6}: throughput: geometry + blendshapes {fps_geo[0]:,.0f} frames/s wall, "
                  f"{fps_geo[1]:,.0f} per CPU second ({geo_s:g} s of audio at {FPS:g} fps); with the AR atlas "
                  f"{fps_atlas[0]:,.1f} frames/s wall, {fps_atlas[1]:,.1f} per CPU second ({atlas_s:g} s)", flush=True)
        if args.only == "speed":
            return
        model = make_model_dir(tmp / "cpu", "cpu")
        for seconds in (60.0, 180.0):
            r = run_child(model, seconds, True, args.device, tmp)
            print(f"cpu preset, {seconds / 60:g} min, atlas images + preview: {r['frames']} frames in "
                  f"{r['seconds']:.0f} s ({r['frames'] / r['seconds']:.1f} frames/s), peak RSS {r['peak_gb']:.2f} GB",
                  flush=True)
        if not args.skip_hour:
            for seconds in (600.0, 3600.0):
                r = run_child(model, seconds, False, args.device, tmp)
                print(f"cpu preset, {seconds / 60:g} min, no atlas: {r['frames']} frames in {r['seconds']:.0f} s "
                      f"({r['frames'] / r['seconds']:,.0f} frames/s end to end incl. decoding and files), "
                      f"peak RSS {r['peak_gb']:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
