"""The prediction folder of `lipsync predict`: every output file, written as chunks arrive.

Owns: the OUT layout (docs/predict.md; result.json is the manifest the Blender add-on, the
dub and cartoon passes read), writing it into a temporary folder beside OUT and renaming it
at the end (nothing half-written; an existing result only replaced with overwrite), the
vertices as a PC2 streamed frame block by frame block and an npz copied from it, the neutral
head OBJ, the full-atlas PNG sequence, the coefficient exports, the preview MP4, and the
thread that predicts the next chunk while this one is written.
Must not: predict (predictor.py), or import bpy.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core import storage
from ..core.errors import EngineError, InputError, OutputExists
from ..io import exports, media
from ..prepare import audio
from ..rig import names
from ..rig.names import ARKIT_NAMES
from .predictor import (PROGRESS_EVERY, Plan, PredictionChunk, Prediction, PredictOptions, Predictor, load_samples,
                      load_predictor, plan_prediction)
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..core.version import __version__
from ..face.topology import load_topology
from ..io.pointcache import PC2_HEADER, PC2Writer, write_obj
from ..io.videowriter import Mp4Writer
from ..model.checkpoint import read_reference_atlas
from .render import HeadRenderer, compose_atlas, frontal_camera, relighting, write_png

PREDICTION_FORMAT, PREDICTION_VERSION = "lipsync3d-prediction", 1
FILES = {"vertices": "vertices.npz", "pc2": "head.pc2", "obj": "head.obj", "mtl": "head.mtl",
         "atlas_dir": "atlas", "atlas_pattern": "atlas_%06d.png", "reference_atlas": "reference_atlas.png",
         "livelink_csv": "blendshapes_livelink.csv", "blendshapes_json": "blendshapes.json",
         "rhubarb_tsv": "mouth_cues.tsv", "rhubarb_json": "mouth_cues.json", "visemes_json": "visemes.json",
         "preview": "preview.mp4"}
AXES = ("normalized speaker space: x to the viewer's right, y up, z towards the viewer, ~cm "
        "(vertices.npz, head.obj, head.pc2)")
VISEME_PRESET = "visemes_oculus"
COPY_BLOCK = 1 << 24          # bytes copied at a time from head.pc2 into vertices.npz
PNG_THREADS = 2               # atlas images encoded at once (3 ms each on one core)


@dataclass(frozen=True)
class OutputOptions:
    atlas_images: bool = True        # write atlas/atlas_%06d.png (when lips were predicted)
    preview: bool = True             # render preview.mp4: the textured head, frontal, audio muxed in
    preview_size: int = 512          # preview side (pixels, even)
    relight: int | str | None = None  # None: lighting-normalized atlases; "reference" or a speaker frame index
    overwrite: bool = False          # replace a prediction already in OUT

    def __post_init__(self) -> None:
        if self.preview_size < 64 or self.preview_size % 2:
            raise ValueError(f"preview_size must be even and >= 64, got {self.preview_size}")
        if self.relight is not None and self.relight != "reference" and not isinstance(self.relight, int):
            raise ValueError(f"relight must be None, 'reference' or a frame index, got {self.relight!r}")


@dataclass(frozen=True)
class PredictResult:
    path: Path              # OUT
    manifest: Path          # OUT/result.json
    frames: int
    fps: float
    silent_frames: int
    seconds: float          # wall time


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over a prediction (unless overwrite) or into a folder holding anything else."""
    storage.clear_leftovers(out)  # of a run killed before it could clean up (first: it may restore OUT)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if (out / "result.json").exists():
        if not overwrite:
            raise OutputExists(f"{out}: already holds a prediction")  # the CLI adds its flag
    elif any(out.iterdir()):
        raise EngineError(f"{out}: folder is not empty and holds no prediction; choose another output folder")


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to OUT (moving an older result aside first)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _FolderWriter:
    """Writes one prediction folder (into a temporary folder) as chunks arrive."""

    def __init__(self, tmp: Path, predictor: Predictor, plan: Plan, fps: float, has_lips: bool,
                 options: OutputOptions):
        tmp.mkdir(parents=True)
        self.tmp, self.p, self.plan, self.fps, self.options = tmp, predictor, plan, fps, options
        self.blendshapes = np.zeros((plan.frames, len(ARKIT_NAMES)), np.float32)
        self.base = read_reference_atlas(predictor.model_dir)                 # lighting-normalized reference
        self.relight = relighting(read_reference_atlas(predictor.model_dir, normalized=False), self.base, options.relight,
                                  Path(predictor.config.get("speaker", "")))
        self.atlas_dir = tmp / FILES["atlas_dir"] if has_lips and options.atlas_images else None
        self.png_pool = None
        if self.atlas_dir is not None:
            self.atlas_dir.mkdir()
            # PNG encoding releases the GIL: the atlas images of a chunk are written on every core
            self.png_pool = ThreadPoolExecutor(PNG_THREADS, thread_name_prefix="lipsync-png")
        self.static = self.relight(self.base) if self.relight else self.base
        self.pc2 = PC2Writer(tmp / FILES["pc2"], len(predictor.reference_vertices), plan.frames)
        self.mp4 = self.renderer = None
        if options.preview:
            self.mp4 = Mp4Writer(tmp / FILES["preview"], fps, options.preview_size, options.preview_size,
                                 audio.SAMPLE_RATE)
            self.renderer = HeadRenderer(predictor.cylinder, frontal_camera(predictor.reference_vertices,
                                                                            options.preview_size))
        self.first_sample = int(round(plan.start_s * audio.SAMPLE_RATE))

    def add(self, chunk: PredictionChunk, cancel: CancelToken, on_progress: ProgressCallback) -> None:
        self.pc2.write(chunk.vertices)
        self.blendshapes[chunk.first:chunk.first + len(chunk.times)] = chunk.blendshapes
        pending = []
        for i in range(len(chunk.times)):
            atlas = self.static
            if chunk.lips is not None:
                atlas = compose_atlas(self.base, chunk.lips[i], self.p.lip_box)
                atlas = self.relight(atlas) if self.relight else atlas
            if self.png_pool is not None:
                pending.append(self.png_pool.submit(
                    write_png, self.atlas_dir / (FILES["atlas_pattern"] % (chunk.first + i)), atlas))
            if self.mp4 is not None:
                self.mp4.add_frame(self.renderer.render(atlas, chunk.vertices[i]))
            if i % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                for f in pending:       # the chunk's images so far are on disk (and an error surfaces here)
                    f.result()
                pending.clear()
                on_progress(Progress("predict", chunk.first + i + 1, self.plan.frames, self.plan.label))
                cancel.check()
        for f in pending:
            f.result()
        if self.mp4 is not None:
            self._audio_until(chunk.first + len(chunk.times))
        on_progress(Progress("predict", chunk.first + len(chunk.times), self.plan.frames, self.plan.label))

    def _audio_until(self, frame: int) -> None:
        """Mux the preview's audio up to the end of `frame` - 1 (zeros past the file's end)."""
        stop = int(round(frame / self.fps * audio.SAMPLE_RATE))
        lo, hi = self.first_sample + self.mp4.samples, self.first_sample + stop
        if hi > lo:
            x = self.plan.samples[lo:hi]
            self.mp4.add_audio(np.pad(x, (0, hi - lo - len(x))))

    def _close_pool(self) -> None:
        if self.png_pool is not None:
            self.png_pool.shutdown(wait=True, cancel_futures=True)
            self.png_pool = None

    def abort(self) -> None:
        self._close_pool()
        self.pc2.abort()
        if self.mp4 is not None:
            self.mp4.abort()

    def finish(self, manifest: dict) -> None:
        self._close_pool()
        self.pc2.close()
        if self.mp4 is not None:
            self.mp4.close()
        self._vertices_npz()
        write_png(self.tmp / FILES["reference_atlas"], self.static)
        uv = self.p.cylinder.project(self.p.reference_vertices).astype(np.float64)
        obj_uv = np.stack([(uv[:, 0] + 0.5) / 256, 1.0 - (uv[:, 1] + 0.5) / 256], 1)  # pixel centres; v up
        write_obj(self.tmp / FILES["obj"], self.p.reference_vertices, load_topology().triangles, obj_uv,
                  texture=FILES["reference_atlas"])
        _write_exports(self.tmp, self.blendshapes, self.plan, self.fps)
        storage.write_json(self.tmp / "result.json", manifest)                      # last

    def _vertices_npz(self) -> None:
        """vertices.npz streamed from head.pc2 (same float32 numbers), so F x 468 x 3 never sits in memory."""
        small = {"times": self.plan.times, "blendshapes": self.blendshapes, "silent": self.plan.silent}
        shape = (self.plan.frames, len(self.p.reference_vertices), 3)
        with zipfile.ZipFile(self.tmp / FILES["vertices"], "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("vertices.npy", "w", force_zip64=True) as f, open(self.tmp / FILES["pc2"], "rb") as src:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                src.seek(PC2_HEADER.size)
                while block := src.read(COPY_BLOCK):
                    f.write(block)
            for name, array in small.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def _write_exports(folder: Path, bs: np.ndarray, plan: Plan, fps: float) -> None:
    """Live Link Face CSV, JSON, Rhubarb TSV/JSON and viseme channels of the blendshapes."""
    start_tc = exports.frame_timecode(0, fps, plan.start_s)
    exports.write_livelink_csv(folder / FILES["livelink_csv"], bs, ARKIT_NAMES, fps, start_timecode=start_tc)
    exports.write_coefficients_json(folder / FILES["blendshapes_json"], bs, ARKIT_NAMES, fps,
                                    metadata={"start_s": plan.start_s, "audio": plan.label})
    rhubarb = names.load_preset("rhubarb")
    labels = np.asarray(rhubarb.classify(bs), dtype=object)
    labels[plan.silent] = rhubarb.rest                       # silence is Rhubarb's rest shape
    exports.write_rhubarb_tsv(folder / FILES["rhubarb_tsv"], labels, fps, rest=rhubarb.rest)
    exports.write_rhubarb_json(folder / FILES["rhubarb_json"], labels, fps, sound_file=plan.label)
    channels, values = names.convert_coefficients(bs, ARKIT_NAMES, VISEME_PRESET)
    exports.write_coefficients_json(folder / FILES["visemes_json"], values, channels, fps,
                                    metadata={"preset": VISEME_PRESET, "start_s": plan.start_s})


def _manifest(p: Predictor, plan: Plan, options: PredictOptions, out: OutputOptions, audio_ref: str,
              has_lips: bool, seconds: float) -> dict:
    files = dict(FILES)
    if not (has_lips and out.atlas_images):
        del files["atlas_dir"], files["atlas_pattern"]
    if not out.preview:
        del files["preview"]
    return {"format": PREDICTION_FORMAT, "format_version": PREDICTION_VERSION, "engine_version": __version__,
            "model_id": p.model_id, "model_dir": str(p.model_dir.resolve()),
            "model_format_version": p.config.get("format_version"),
            "model_engine_version": p.config.get("engine_version"),
            "audio": audio_ref, "fps": float(options.fps), "start_s": plan.start_s, "frames": plan.frames,
            "duration_s": plan.frames / options.fps, "frame_time": "frame i is shown from start_s + i / fps",
            "blendshape_names": list(ARKIT_NAMES), "blendshapes_trained": p.has_blendshapes, "files": files,
            "smoothing": options.smoothing, "smoothing_sigma_s": options.smoothing_sigma_s,
            "silence_db": options.silence_db if math.isfinite(options.silence_db) else None,
            "silence_min_s": options.silence_min_s,
            "silence_ramp_s": options.silence_ramp_s, "silent_frames": int(plan.silent.sum()),
            "atlas": has_lips, "relight": out.relight, "axes": AXES, "cylinder": p.config["cylinder"],
            "lip_box": p.lip_box, "atlas_size": 256, "device": str(p.device), "seconds": round(seconds, 3)}


def _write_folder(p: Predictor, plan: Plan, chunks, out: Path, options: PredictOptions, out_options: OutputOptions,
                  audio_ref: str, on_progress: ProgressCallback, cancel: CancelToken, t0: float) -> PredictResult:
    """Write the chunks into a temporary folder beside OUT, result.json last, then rename it to OUT."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = storage.temp_path_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = _FolderWriter(tmp, p, plan, options.fps, options.atlas, out_options)
        try:
            for chunk in chunks:
                writer.add(chunk, cancel, on_progress)
            writer.finish(_manifest(p, plan, options, out_options, audio_ref, options.atlas,
                                    time.perf_counter() - t0))
        except BaseException:
            writer.abort()
            raise
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PredictResult(out, out / "result.json", plan.frames, float(options.fps), int(plan.silent.sum()),
                         time.perf_counter() - t0)


def _prefetch(chunks: Iterator[PredictionChunk], stop: threading.Event) -> Iterator[PredictionChunk]:
    """Run the chunk iterator one chunk ahead in a thread, so that predicting the next chunk
    (torch, one thread) overlaps writing this one (PNG, rendering, H.264; OpenCV and PyAV
    release the GIL). Exceptions, Cancelled included, come out of the consumer's loop; setting
    `stop` (the consumer failed) ends the thread at its next chunk."""
    q: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in chunks:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)

    thread = threading.Thread(target=produce, name="lipsync-predict", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=1.0)      # a thread still inside a chunk ends at its next put


def predict_to_folder(model, audio_path: Path | str, out_dir: Path | str, options: PredictOptions = PredictOptions(),
                      out_options: OutputOptions = OutputOptions(), on_progress: ProgressCallback = no_progress,
                      cancel: CancelToken | None = None) -> PredictResult:
    """Predict from AUDIO and write OUT (layout in docs/predict.md), streaming chunk by chunk:
    memory stays bounded for any length. model : a Predictor or a model directory."""
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    out = Path(out_dir)
    check_output_dir(out, out_options.overwrite)
    p = model if isinstance(model, Predictor) else load_predictor(model, options.device)
    plan = plan_prediction(audio_path, options)
    on_progress(Progress("predict", 0, plan.frames, plan.label))
    chunks = _prefetch(p.iter_chunks(plan, options, no_progress, cancel), threading.Event())  # the writer reports
    return _write_folder(p, plan, chunks, out, options, out_options, str(Path(audio_path).resolve()),
                         on_progress, cancel, t0)


def write_outputs(prediction: Prediction, model_dir, out_dir: Path | str, audio_path: Path | str,
                  options: OutputOptions = OutputOptions(), on_progress: ProgressCallback = no_progress,
                  cancel: CancelToken | None = None) -> Path:
    """Write an in-memory Prediction as a prediction folder; returns OUT/result.json.

    model_dir : the model it came from (or its Predictor); audio_path : the audio it was made
    from (muxed into the preview; its level is not re-analysed: prediction.silent is kept).
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    out = Path(out_dir)
    check_output_dir(out, options.overwrite)
    p = model_dir if isinstance(model_dir, Predictor) else load_predictor(model_dir, "cpu")
    samples, label = load_samples(audio_path)
    n = len(prediction.times)
    plan = Plan(samples, label, float(prediction.start_s), n, np.asarray(prediction.times, np.float64),
                np.where(prediction.silent, 0.0, 1.0).astype(np.float32), np.asarray(prediction.silent, bool), 0.0)
    popts = PredictOptions(fps=prediction.fps, atlas=prediction.lips is not None)
    chunk = PredictionChunk(0, plan.times, prediction.vertices, prediction.blendshapes, prediction.lips, plan.silent)
    ref = str(Path(audio_path).resolve()) if not isinstance(audio_path, media.AudioTrack) else label
    return _write_folder(p, plan, [chunk], out, popts, options, ref, on_progress, cancel, t0).manifest
