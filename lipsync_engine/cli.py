"""`lipsync` command line: argparse subcommands over the public API.

Owns: argument parsing, progress bars (tqdm on stderr) or protocol messages (--json),
Ctrl-C handling (first press cancels cleanly, finished work is kept), and turning errors
into one line and an exit code: 0 OK, 1 a handled EngineError, 2 bad usage, 130
cancelled, 3 an internal error (traceback on stderr), 4 the machine (a full disk, a read-only
or forbidden folder, no CUDA; docs/errors.md). The only catch-all is here.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import re
import signal
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path

from .core import protocol
from .core.errors import (Cancelled, EngineError, EnvironmentProblem, InputError, NoAudioDevice, OutputExists,
                          UsageError)
from .core.progress import CancelToken, Progress
from .core.protocol import EXIT_CANCELLED, EXIT_CRASH, EXIT_ENVIRONMENT, EXIT_ERROR, EXIT_OK, EXIT_USAGE  # noqa: F401
from .core.version import __version__



def _console():
    """A private duplicate of stderr for progress bars: tracking silences fd 2 (MediaPipe's
    native log lines) while it runs, and the bars must stay visible meanwhile."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (OSError, ValueError, AttributeError):
        return sys.stderr


class Reporter:
    """Progress as tqdm bars (people) or PROGRESS messages (--json, the add-on).

    tag : keys added to every message, e.g. {"id": "7"} for a request of `lipsync serve`.
    """

    def __init__(self, json_mode: bool, tag: dict | None = None):
        self.json_mode = json_mode
        self.tag = dict(tag or {})
        self.bar = None
        self.stage = None
        self.console = None              # opened with the first progress bar

    def __call__(self, p: Progress) -> None:
        if self.json_mode:
            protocol.emit("PROGRESS", {"stage": p.stage, "done": p.done, "total": p.total, "message": p.message,
                                       **self.tag})
            return
        if p.stage != self.stage:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread (it only tunes redraws): later worker pools may still fork
            self.close()
            self.stage = p.stage
            self.console = self.console or _console()
            self.bar = tqdm(total=p.total, desc=f"{p.stage:>8}", unit="fr" if p.stage in ("track", "atlas") else "",
                            file=self.console, dynamic_ncols=True, leave=True, postfix=p.message or None)
        self.bar.total = p.total
        if p.message and p.message != getattr(self.bar, "postfix", None):  # e.g. the running training losses
            self.bar.set_postfix_str(p.message, refresh=False)
        self.bar.update(p.done - self.bar.n)  # tqdm throttles the redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None

    def info(self, kind: str, text: str, **extra) -> None:
        if self.json_mode:
            protocol.emit(kind, {"message": text, **extra, **self.tag})
        else:
            self.close()
            print(("warning: " if kind == "WARN" else "") + text, file=sys.stderr if kind == "WARN" else sys.stdout)


def _options(command: str, build):
    """The options a command builds from its arguments. Option dataclasses validate themselves
    and raise ValueError naming the rule; here, and only here, that becomes the one-line error
    "error: COMMAND: RULE" (exit code 1) instead of a traceback."""
    try:
        return build()
    except ValueError as e:
        raise InputError(f"{command}: {e}") from e


_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def _device(text: str) -> str:
    """--device: auto, cpu, cuda, cuda:N or mps (anything else is bad usage, exit code 2)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use auto, cpu, cuda, cuda:N or mps)")
    return text


def _finite(text: str) -> float:
    """Every float option: a finite number (nan and inf are bad usage, exit code 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _in_range(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type: kind (int or float; floats also finite) within [low, high] ((low, high] with low_open)."""
    def parse(text: str):
        value = _finite(text) if kind is float else int(text)
        if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            rule = f"> {low:g}" if low_open else f">= {low:g}" if low is not None else ""
            rule = " and ".join(r for r in (rule, f"<= {high:g}" if high is not None else "") if r)
            raise argparse.ArgumentTypeError(f"must be {rule}{what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__      # argparse names the type in "invalid int value"
    return parse


POSITIVE_FPS = _in_range(float, 0, 1000, low_open=True)
SILENCE_DB = _in_range(float, -200, 0, what=" (dB below the file's peak)")
WORKERS = _in_range(int, 1, 256)
MAX_SYNTH_SECONDS = 3600.0


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors also reach --json readers: an ERROR and a DONE line (exit code 2)."""

    json_mode = False

    def error(self, message):
        if _Parser.json_mode:
            protocol.emit("ERROR", {"message": f"{self.prog}: {message}"})
            protocol.emit("DONE", {"exit_code": EXIT_USAGE, "protocol": protocol.PROTOCOL_VERSION})
        super().error(message)


def check_device(device: str | None) -> None:
    """A device the machine does not have is an EnvironmentProblem (exit code 4), said before any
    work (not as a corrupted model or an assertion later)."""
    if not device or device in ("auto", "cpu"):
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"--device {device}: CUDA is not available; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise EnvironmentProblem(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s) "
                                     f"(cuda:0..{torch.cuda.device_count() - 1})")
    elif device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise EnvironmentProblem("--device mps: MPS is not available; use --device cpu")


# OSErrors that are the machine's, not the input's: one line and exit code 4 (docs/errors.md)
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                       errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                       errno.EPERM: "operation not permitted"}


def environment_problem(error: BaseException) -> EnvironmentProblem | None:
    """The EnvironmentProblem behind an exception (itself or a cause: a full disk, a read-only or
    forbidden output), naming the file; None for anything else."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
            where = error.filename2 if getattr(error, "filename2", None) else error.filename
            return EnvironmentProblem(f"{where or 'output'}: {_ENVIRONMENT_ERRNOS[error.errno]}")
        error = error.__cause__ or error.__context__
    return None


# What a command's flags can do about an error the library reports without naming them.
_FLAG_HINTS = {
    ("prepare", OutputExists): "choose another folder or pass --overwrite",
    ("demo", OutputExists): "choose another folder or pass --overwrite",
    ("dub", OutputExists): "choose another name or pass --overwrite",
    ("export", OutputExists): "choose another name or pass --overwrite",
    ("synth-video", OutputExists): "choose another name or pass --overwrite",
    ("train", OutputExists): "pass --resume to continue it or choose another folder",
    ("predict", OutputExists): "pass --overwrite to replace it",
    ("live", NoAudioDevice): "or read a file with --input FILE",
}


def check_output_file(path: Path, overwrite: bool, *also: Path) -> None:
    """An output FILE (and the files written beside it): not a folder, not there unless --overwrite,
    in a folder. Said before any work; the file itself is replaced atomically at the end."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a file; give the output file's name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: a file, not a folder (in the output path {path})")
    for p in (path, *also):
        if p.is_dir():
            raise InputError(f"{p}: a folder, not a file; give the output another name")
        if p.exists() and not overwrite:
            raise OutputExists(f"{p}: already exists")


def error_line(command: str | None, error: EngineError) -> str:
    """The CLI's one line for a library error: the library's words, then the flag that helps."""
    hint = next((h for (c, kind), h in _FLAG_HINTS.items() if c == command and isinstance(error, kind)), None)
    return f"{error}; {hint}" if hint else str(error)


def _cmd_prepare(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .prepare.pipeline import PrepareOptions, prepare_speaker

    options = PrepareOptions(workers=args.workers, report=not args.no_report)
    if args.no_lighting_normalization:  # the ablation of Section 3.1.2 (docs/evaluation.md)
        options = replace(options, lighting=replace(options.lighting, normalize=False))
    if args.reference_speaker:  # held-out videos in a trained speaker's normalized space
        options = replace(options, reference_speaker=str(args.reference_speaker))
    if args.reference:
        take, _, frame = args.reference.partition(":")
        options = replace(options, reference=(int(take), int(frame)))
    result = prepare_speaker(args.videos, args.output, options, reporter, cancel, overwrite=args.overwrite)
    reporter.close()
    for line in (*result.excluded, *result.warnings):
        reporter.info("WARN", line)
    for line in result.cuts:
        reporter.info("STATUS", line)
    what = "already prepared" if result.skipped else f"prepared in {result.seconds:.1f} s"
    report = result.path / "report" / "index.html"
    where = f"; report: {report}" if options.report and report.is_file() else ""
    reporter.info("RESULT", f"{result.path}: {result.frames} frames from {result.takes} take(s), {what}{where}",
                  path=str(result.path), frames=result.frames)


def _cmd_fit(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .rig.fitting import FitOptions, fit_speaker

    options = _options("fit", lambda: replace(FitOptions(), smoothness=args.smoothness, sparsity=args.sparsity,
                                                adapt_to_neutral=not args.no_adapt))
    s = fit_speaker(args.speaker, options, reporter, cancel)
    reporter.close()
    reporter.info("RESULT", f"{s.coefficients_path}: {s.frames} frames of {len(s.names)} ARKit coefficients "
                  f"({s.frames_per_second:.0f} frames/s; residual RMS mean {s.residual_rms_mean:.3f} cm, "
                  f"95th percentile {s.residual_rms_p95:.3f} cm); plot: {s.plot_path}",
                  path=str(s.coefficients_path), frames=s.frames)


EXPORT_FORMATS = ("livelink-csv", "json", "rhubarb-tsv", "rhubarb-json", "visemes-json", "vrm-json", "cc4-json")


def _cmd_export(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .io import exports
    from .rig import names
    from .rig.fitting import load_fitted

    out, fmt = Path(args.output), args.format
    check_output_file(out, args.overwrite)
    coeffs, fps = load_fitted(args.speaker)
    if fmt == "livelink-csv":
        exports.write_livelink_csv(out, coeffs, names.ARKIT_NAMES, fps)
    elif fmt == "json":
        exports.write_coefficients_json(out, coeffs, names.ARKIT_NAMES, fps)
    elif fmt.startswith("rhubarb"):
        preset = names.load_preset("rhubarb")
        labels = preset.classify(coeffs)
        if fmt == "rhubarb-tsv":
            exports.write_rhubarb_tsv(out, labels, fps, rest=preset.rest)
        else:
            exports.write_rhubarb_json(out, labels, fps)
    else:
        preset = {"visemes-json": "visemes_oculus", "vrm-json": "vrm", "cc4-json": "cc4"}[fmt]
        channel_names, values = names.convert_coefficients(coeffs, names.ARKIT_NAMES, preset)
        exports.write_coefficients_json(out, values, channel_names, fps, metadata={"preset": preset})
    reporter.info("RESULT", f"wrote {out} ({fmt}, {len(coeffs)} frames at {fps:g} fps)", path=str(out))


def _cmd_train(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .model.train import recipe_options, train_speaker

    chosen = {k: v for k, v in (("learning_rate", args.learning_rate), ("geometry_weight", args.geometry_weight),
                                ("lip_weight", args.lip_weight), ("geometry_epochs", args.geometry_epochs),
                                ("lookahead_ms", args.lookahead), ("phones", args.phones),
                                ("phone_dropout", args.phone_dropout))
              if v is not None}
    options = _options("train", lambda: recipe_options(
        args.recipe, preset=args.preset, epochs=args.epochs, device=args.device, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, batch_size=args.batch_size, mixed_precision=args.mixed_precision, **chosen))
    dims = None
    if args.width is not None:  # e.g. 1/32 for a tiny test model (the add-on's "Tiny" quality)
        from .model.network import ModelDimensions

        dims = ModelDimensions().scaled(args.width)
    r = train_speaker(args.speaker, args.output, options, reporter, cancel, resume=args.resume, dims=dims)
    reporter.close()
    for line in r.warnings:
        reporter.info("WARN", line)
    val = f", held-out {r.val_loss:.4f}" if r.val_loss is not None else ""
    reporter.info("RESULT", f"{r.path}: {r.epochs} epochs in {r.seconds:.0f} s, loss {r.train_loss:.4f}{val}; "
                  f"curve: {r.path / 'loss_curve.png'}", path=str(r.path))


def _cmd_synth(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .demo.video import make_demo_video, truth_path

    check_output_file(Path(args.output), args.overwrite, truth_path(args.output))

    def on_frame(done: int, total: int) -> None:
        reporter(Progress("synth", done, total))
        cancel.check()

    make_demo_video(Path(args.output), duration_s=args.duration, fps=args.fps, seed=args.seed, on_frame=on_frame)
    reporter.close()
    reporter.info("RESULT", f"wrote {args.output} and its ground truth {Path(args.output).with_suffix('.truth.json')}",
                  path=str(args.output))


def _cmd_demo(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .rig.fitting import fit_speaker, load_fitted
    from .io.exports import write_livelink_csv
    from .rig.names import ARKIT_NAMES
    from .prepare.pipeline import PrepareOptions, prepare_speaker
    from .demo.video import make_demo_video

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "demo_speaker.mp4"
    if not video.is_file():
        make_demo_video(video, duration_s=args.duration,
                        on_frame=lambda d, t: (reporter(Progress("synth", d, t)), cancel.check()))
    reporter.close()
    result = prepare_speaker([video], out / "speaker", PrepareOptions(), reporter, cancel)
    reporter.close()
    fit = fit_speaker(result.path, on_progress=reporter, cancel=cancel)
    reporter.close()
    livelink = out / "demo_blendshapes_livelink.csv"
    coeffs, fps = load_fitted(result.path)
    write_livelink_csv(livelink, coeffs, ARKIT_NAMES, fps)
    model, pred = _demo_train_and_predict(out, result.path, video, reporter, cancel)
    reporter.info("RESULT", "\n".join([
        "demo finished. Outputs:",
        f"  synthetic input video : {video} (ground truth: {video.with_suffix('.truth.json')})",
        f"  prepared speaker      : {result.path} ({result.frames} frames)",
        f"  report (open this)    : {result.path / 'report' / 'index.html'}",
        f"  ARKit-52 coefficients : {fit.coefficients_path} (plot: {fit.plot_path})",
        f"  Live Link Face CSV    : {livelink}",
        f"  trained model         : {model} (loss curve: {model / 'loss_curve.png'})",
        f"  prediction from audio : {pred.path} ({pred.frames} frames at {pred.fps:g} fps; result.json)",
        f"  preview (watch this)  : {pred.path / 'preview.mp4'}",
    ]), path=str(out))


DEMO_WIDTH, DEMO_EPOCHS = 1 / 32, 60   # the tests' tiny model (1/32 width); all of make demo: ~4.5 min


def _demo_train_and_predict(out: Path, speaker: Path, video: Path, reporter: Reporter, cancel: CancelToken):
    """make demo, last steps: a tiny model trained on the demo speaker (resumed or skipped when
    already there), then `lipsync predict` from the demo video's own audio at 30 fps."""
    from .model.network import ModelDimensions
    from .inference.predictor import PredictOptions
    from .inference.folder import OutputOptions, predict_to_folder
    from .model.checkpoint import holds_model
    from .model.train import recipe_options, train_speaker

    model = out / "model"
    # without phone features: the synthetic voice speaks no language, so its phones are noise
    options = recipe_options("fast", epochs=DEMO_EPOCHS, batch_size=16, seed=1, phones=False)
    train_speaker(speaker, model, options, reporter, cancel, resume=holds_model(model),
                  dims=ModelDimensions().scaled(DEMO_WIDTH))
    reporter.close()
    pred = predict_to_folder(model, video, out / "prediction", PredictOptions(fps=30.0),
                             OutputOptions(overwrite=True), reporter, cancel)
    reporter.close()
    return model, pred


def _predict_outputs(audio: list[Path], output: list[Path] | None) -> list[Path]:
    """One AUDIO: OUT is its prediction folder. Several: OUT (default .) holds STEM_lipsync per file,
    or one OUT per AUDIO (-o O1 O2 ...: each its prediction folder, e.g. two parts of one file)."""
    output = list(output or [])
    if len(audio) == 1:
        if len(output) > 1:
            raise InputError(f"predict: {len(output)} output folders for one audio file")
        return [output[0] if output else Path(f"{audio[0].stem}_lipsync")]
    if len(output) == len(audio):
        if len(set(output)) != len(output):
            raise InputError("predict: two audio files share an output folder")
        return output
    if len(output) > 1:
        raise InputError(f"predict: {len(output)} output folders for {len(audio)} audio files (give one folder, "
                         "or one per file)")
    stems = [a.stem for a in audio]
    if len(set(stems)) != len(stems):
        raise InputError(f"several audio files share a name ({', '.join(sorted({s for s in stems if stems.count(s) > 1}))}); "
                         "give one -o folder per file, or predict them in separate calls")
    return [(output[0] if output else Path(".")) / f"{s}_lipsync" for s in stems]


def _per_audio(values: list | None, count: int, option: str) -> list:
    """--start/--end: none, one value for every file, or one per file."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise InputError(f"predict: {len(values)} {option} values for {count} audio files (give one, or one per file)")
    return list(values)


def _cmd_predict(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .inference.predictor import PredictOptions, load_predictor
    from .inference.folder import OutputOptions, check_output_dir, predict_to_folder

    relight = args.relight if args.relight in (None, "reference") else int(args.relight) \
        if args.relight.lstrip("-").isdigit() else args.relight
    starts, ends = _per_audio(args.start, len(args.audio), "--start"), _per_audio(args.end, len(args.audio), "--end")
    options, out_options = _options("predict", lambda: (
        [PredictOptions(fps=args.fps, start_s=a, end_s=b, smoothing=not args.no_smoothing,
                        silence_db=args.silence_db, atlas=not args.no_atlas, chunk_frames=args.chunk_frames,
                        device=args.device, articulation=args.articulation, texture=args.texture)
         for a, b in zip(starts, ends)],
        OutputOptions(atlas_images=not args.no_atlas, preview=not args.no_preview, preview_size=args.preview_size,
                      relight=relight, overwrite=args.overwrite)))
    outs = _predict_outputs(args.audio, args.output)
    for out in outs:                      # refuse before any work is done
        check_output_dir(out, args.overwrite)
    load = args.predictors.get if args.predictors is not None else load_predictor   # `lipsync serve`: cached
    predictor = load(args.model, args.device)             # loaded once for every file
    for audio, out, opts in zip(args.audio, outs, options):
        r = predict_to_folder(predictor, audio, out, opts, out_options, reporter, cancel)
        reporter.close()
        reporter.info("RESULT", f"{r.path}: {r.frames} frames at {r.fps:g} fps ({r.silent_frames} silent) from "
                      f"{audio.name} in {r.seconds:.1f} s; manifest: {r.manifest}"
                      + (f"; preview: {r.path / 'preview.mp4'}" if out_options.preview else ""),
                      path=str(r.path), frames=r.frames, fps=r.fps)


def _cmd_info(args, reporter: Reporter, cancel: CancelToken) -> None:
    """Versions, the engine's location and the compute device (the add-on's "Check engine")."""
    import platform

    import numpy
    import torch

    from .model.checkpoint import pick_device

    device = pick_device(args.device)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        "Apple MPS" if device.type == "mps" else ""
    try:
        import mediapipe
        mp_version = mediapipe.__version__
    except ImportError as e:
        mp_version = ""
        reporter.info("WARN", f"mediapipe cannot be imported ({e}); prepare will not work")
    info = {"engine_version": __version__, "protocol": protocol.PROTOCOL_VERSION, "python": platform.python_version(),
            "torch": torch.__version__, "mediapipe": mp_version, "numpy": numpy.__version__,
            "device": str(device), "gpu": gpu, "engine_path": str(Path(__file__).resolve().parent)}
    reporter.info("RESULT", f"lipsync {__version__} (Python {info['python']}, torch {info['torch']}, mediapipe "
                  f"{mp_version or 'missing'}); device {device}" + (f" ({gpu})" if gpu else ", no GPU found"),
                  **info)


def _cmd_dub(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .apps.dub import DubOptions, dub_video

    options = _options("dub", lambda: DubOptions(
        video_start_s=args.video_start, video_end_s=args.video_end, audio_start_s=args.audio_start,
        audio_end_s=args.audio_end, loop=args.loop, workers=args.workers, crf=args.crf, device=args.device,
        articulation=args.articulation))
    r = dub_video(args.model, args.audio, args.video, args.output, options, reporter, cancel, overwrite=args.overwrite)
    reporter.close()
    for line in r.warnings:
        reporter.info("WARN", line)
    looped = f", video {'looped (pingpong)' if args.loop == 'pingpong' else 'held'} to the audio's length" \
        if r.looped else ""
    resumed = f", {r.resumed} segment(s) reused" if r.resumed else ""
    reporter.info("RESULT", f"{r.path}: {r.frames} frames at {r.fps:g} fps, {r.faces} with the new mouth{looped}; "
                  f"{r.seconds:.1f} s ({r.frames / max(r.seconds, 1e-9):.1f} frames/s){resumed}",
                  path=str(r.path), frames=r.frames)


def _rgb(text: str) -> tuple[int, int, int]:
    """'30,22,20' or '#1e1614' -> (30, 22, 20)."""
    t = text.strip().lstrip("#")
    try:
        rgb = tuple(int(t[i:i + 2], 16) for i in (0, 2, 4)) if "," not in t and len(t) == 6 else \
            tuple(int(v) for v in t.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"not a colour: {text!r} (use R,G,B with 0-255 or #rrggbb)")
    return rgb


def _cmd_cartoon(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .apps.cartoon import FEATURES, CartoonOptions, cartoon_prediction

    features = tuple(f.strip() for f in args.features.split(",")) if args.features else FEATURES
    options = _options("cartoon", lambda: CartoonOptions(
        size=args.size, line_width=args.line_width, line_color=args.line_color, filter_strength=args.filter_strength,
        color_levels=args.color_levels, features=features, preview=not args.no_preview))
    r = cartoon_prediction(args.prediction, options, reporter, cancel)
    reporter.close()
    reporter.info("RESULT", f"{r.path / r.files['cartoon_dir']}: {r.frames} cartoon frames "
                  f"({r.frames / max(r.seconds, 1e-9):.0f} frames/s); contours: {r.path / r.files['contours']}"
                  + (f"; preview: {r.path / r.files['cartoon_preview']}" if "cartoon_preview" in r.files else ""),
                  path=str(r.path), frames=r.frames)


def _cmd_evaluate(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .apps.evaluate import EvaluateOptions, evaluate_model

    r = evaluate_model(args.model, args.held_out, args.output, EvaluateOptions(device=args.device, texture=args.texture),
                       reporter, cancel)
    reporter.close()
    lines = [f"{'method':<10} {'LMD px':>7} {'lip SSIM':>8} {'atlas SSIM':>10} {'open r':>7} {'jitter':>7} {'bs MAE':>7}"
             f" {'jaw':>5} {'amp':>5} {'speed':>5} {'tx amp':>6} {'tx spd':>6} {'sharp':>5} {'teeth':>5}"]
    for name, m in r.metrics.items():
        bs = "-" if m["blendshape_mae"] is None else f"{m['blendshape_mae']:.4f}"
        jaw = "-" if m.get("jaw_amplitude_ratio") is None else f"{m['jaw_amplitude_ratio']:.2f}"
        teeth = "-" if m["teeth_recall"] != m["teeth_recall"] else f"{m['teeth_recall']:.2f}"
        lines.append(f"{name:<10} {m['lmd_px']:7.3f} {m['lip_ssim']:8.4f} {m['atlas_ssim']:10.4f} "
                     f"{m['openness_r']:7.3f} {m['jitter_ratio']:7.2f} {bs:>7} {jaw:>5} {m['amplitude_ratio']:5.2f} "
                     f"{m['speed_ratio']:5.2f} {m['texture_amplitude_ratio']:6.2f} {m['texture_speed_ratio']:6.2f} "
                     f"{m['sharpness_ratio']:5.2f} {teeth:>5}")
    reporter.info("RESULT", f"{r.frames} held-out frames (jitter, amp(litude), speed, sharp(ness): x the ground "
                            f"truth's own; jaw: the jawOpen coefficient's amplitude, x the fitted one's; tx: of the "
                            f"atlases tracked again; teeth: recall of frames showing teeth)\n" + "\n".join(lines)
                  + f"\nwrote {r.path}", path=str(r.path), metrics=r.metrics)


def _cmd_live(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .live_cli import run_live_command

    run_live_command(args, reporter, cancel)


def _cmd_say(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .live_cli import run_say_command

    run_say_command(args, reporter, cancel)


def _cmd_serve(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .serve import serve

    parser = build_parser(_RequestParser)           # built once, parses every request
    serve(sys.stdin, parser.parse_args, run_command, lambda tag: Reporter(True, tag))


class _RequestParser(argparse.ArgumentParser):
    """The parser of `lipsync serve` requests: a usage error raises UsageError (the server answers
    ERROR and DONE, exit code 2, with the CLI's words, and keeps serving); help never reaches
    stdout, which belongs to the protocol."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status=0, message=None):
        raise UsageError((message or f"{self.prog}: help and version are written to stderr").strip())

    def _print_message(self, message, file=None):
        super()._print_message(message, sys.stderr)


def build_parser(parser_class: type = _Parser) -> argparse.ArgumentParser:
    p = parser_class(prog="lipsync", description="LipSync3D engine: personalized 3D talking faces from video.")
    p.add_argument("--version", action="version", version=f"lipsync {__version__}")
    p.add_argument("--json", action="store_true", help="machine-readable JSON-lines messages on stdout")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("prepare", help="track, pose- and lighting-normalize videos of one speaker")
    sp.add_argument("videos", nargs="+", type=Path, help="video files or folders of takes of ONE speaker")
    sp.add_argument("-o", "--output", type=Path, required=True, help="speaker directory to write")
    sp.add_argument("--workers", type=WORKERS, default=2, help="worker processes (default 2)")
    sp.add_argument("--reference", metavar="TAKE:FRAME", help="force the reference frame")
    sp.add_argument("--overwrite", action="store_true", help="replace a speaker directory made from other inputs")
    sp.add_argument("--no-report", action="store_true", help="skip the HTML/PNG report")
    sp.add_argument("--no-lighting-normalization", action="store_true",
                    help="keep raw atlases (no gain/colour normalization); for the ablation study")
    sp.add_argument("--reference-speaker", type=Path, metavar="SPEAKER_DIR",
                    help="use that speaker directory's reference face and atlas (held-out videos for evaluation)")
    sp.set_defaults(func=_cmd_prepare)

    sf = sub.add_parser("fit", help="fit ARKit-52 blendshape coefficients to a prepared speaker")
    sf.add_argument("speaker", type=Path, help="prepared speaker directory")
    sf.add_argument("--smoothness", type=float, default=0.1, help="weight of frame-to-frame change (default 0.1)")
    sf.add_argument("--sparsity", type=float, default=0.03, help="L1 weight in cm of motion (default 0.03)")
    sf.add_argument("--no-adapt", action="store_true", help="do not adapt the rig to the speaker's neutral face")
    sf.set_defaults(func=_cmd_fit)

    st = sub.add_parser("train", help="train a personalized model on a prepared speaker")
    st.add_argument("speaker", type=Path, help="prepared speaker directory (run `lipsync fit` first for blendshapes)")
    st.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    st.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="network width (default cpu = 1/8)")
    st.add_argument("--epochs", type=int, default=30)
    st.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    st.add_argument("--resume", action="store_true", help="continue MODEL_DIR after Ctrl-C or a crash")
    st.add_argument("--width", type=_in_range(float, 0, 4, low_open=True),
                    help="channel width as a fraction of the paper's (overrides --preset)")
    st.add_argument("--val-fraction", type=float, default=0.1,
                    help="validation tail (default 0.1): stops the vertices when they over-fit and fits the "
                         "articulation gain; never trained on")
    st.add_argument("--test-fraction", type=float, default=0.0,
                    help="last part of the frames that training never reads, for `lipsync evaluate` (default 0)")
    st.add_argument("--recipe", choices=("fast", "paper"), default="fast",
                    help="fast (default: learning rate 1e-3, vertex loss x30, lip vertices x11; best within minutes "
                         "on a CPU) or paper (1e-4, x3, as published, for ~500 epochs)")
    st.add_argument("--learning-rate", type=_in_range(float, 0, 1, low_open=True),
                    help="Adam step size (default: the recipe's)")
    st.add_argument("--batch-size", type=int, default=32, help="frames per step (default 32)")
    st.add_argument("--geometry-weight", type=float, help="weight of the vertex loss (default: the recipe's)")
    st.add_argument("--lip-weight", type=float, help="extra weight of the lip vertices in the vertex loss "
                                                      "(default: the recipe's)")
    st.add_argument("--geometry-epochs", type=int, metavar="N",
                    help="after N epochs only the lip texture keeps learning: the audio encoder, vertices and "
                         "blendshapes stop (default 0 = never; short videos over-fit the vertices first)")
    st.add_argument("--lookahead", type=float, metavar="MS", help="future audio the model may hear, 0..120 ms "
                    "(default 120, the paper's centred window; 40 for a low-latency `lipsync live`)")
    st.add_argument("--phones", action=argparse.BooleanOptionalAction, default=None,
                    help="the network also hears the phones PocketSphinx recognises around each frame (default: "
                         "on in the fast recipe, off in the paper's); --no-phones for the spectrogram alone")
    st.add_argument("--phone-dropout", type=_in_range(float, 0, 0.9), metavar="FRACTION",
                    help="fraction of the training frames that learn without their phones, so the spectrogram "
                         "learns too (default: the recipe's)")
    st.add_argument("--mixed-precision", choices=("auto", "off", "bf16", "fp16"), default="auto",
                    help="autocast dtype (default auto: bf16 on CUDA; on a CPU fp32, with the texture decoder and atlas "
                         "encoder in bf16 where the CPU has bf16 in hardware and their gradient misses the geometry: "
                         "every epoch of the fast recipe, after the geometry froze in the paper's; bf16 throughout is "
                         "faster but not reproducible)")
    st.set_defaults(func=_cmd_train)

    se = sub.add_parser("export", help="write a speaker's fitted coefficients for other tools")
    se.add_argument("speaker", type=Path, help="prepared speaker directory (after `lipsync fit`)")
    se.add_argument("-f", "--format", choices=EXPORT_FORMATS, required=True)
    se.add_argument("-o", "--output", type=Path, required=True)
    se.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    se.set_defaults(func=_cmd_export)

    ss = sub.add_parser("synth-video", help="write the built-in synthetic talking-face video with ground truth")
    ss.add_argument("output", type=Path, help="output .mp4")
    ss.add_argument("--duration", type=_in_range(float, 0, MAX_SYNTH_SECONDS, low_open=True), default=8.0,
                    help="seconds (default 8, at most an hour)")
    ss.add_argument("--fps", type=POSITIVE_FPS, default=25.0)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--overwrite", action="store_true", help="replace an existing video and its ground truth")
    ss.set_defaults(func=_cmd_synth)

    sd = sub.add_parser("demo", help="run the pipeline on the built-in synthetic demo video")
    sd.add_argument("-o", "--output", type=Path, default=Path("out/demo"))
    sd.add_argument("--duration", type=_in_range(float, 0, MAX_SYNTH_SECONDS, low_open=True), default=8.0)
    sd.set_defaults(func=_cmd_demo)

    sq = sub.add_parser("predict", help="animation from dialogue audio: meshes, atlases, blendshapes, a preview")
    sq.add_argument("model", type=Path, help="model directory (lipsync train)")
    sq.add_argument("audio", type=Path, nargs="+", help="wav, flac, ogg, mp3, m4a/aac, or a video's audio track")
    sq.add_argument("-o", "--output", type=Path, nargs="+", help="prediction folder (one AUDIO; default STEM_lipsync), "
                    "the folder of one STEM_lipsync per AUDIO (several; default .), or one folder per AUDIO")
    sq.add_argument("--fps", type=POSITIVE_FPS, default=30.0,
                    help="output frame rate, e.g. 24, 25, 29.97, 60 (default 30)")
    sq.add_argument("--start", type=float, nargs="+", help="first second of the audio to use (one value, or one "
                    "per AUDIO)")
    sq.add_argument("--end", type=float, nargs="+", help="last second of the audio to use (one value, or one per "
                    "AUDIO)")
    sq.add_argument("--no-smoothing", action="store_true", help="no temporal smoothing of vertices/blendshapes")
    sq.add_argument("--silence-db", type=SILENCE_DB, default=-45.0,
                    help="frames this many dB below the file's peak rest closed (default -45)")
    sq.add_argument("--no-atlas", action="store_true", help="geometry and blendshapes only (no lip atlases)")
    sq.add_argument("--no-preview", action="store_true", help="skip preview.mp4")
    sq.add_argument("--preview-size", type=int, default=512, help="preview side in pixels (default 512)")
    sq.add_argument("--relight", metavar="FRAME|reference",
                    help="put the lighting of the reference frame (or of a speaker frame index) back on the atlases")
    sq.add_argument("--articulation", type=float, metavar="GAIN",
                    help="mouth movement about the rest face: 0 = rest, 1 = the raw network, default = the gain "
                         "fitted on the model's validation tail (lively as the speaker)")
    sq.add_argument("--texture", choices=("auto", "bank", "network"), default="auto",
                    help="lip crops from the model's mouth bank of real crops warped to the predicted mesh (auto, "
                         "bank) or from the texture decoder (network)")
    sq.add_argument("--chunk-frames", type=int, default=512, help="frames per chunk (memory bound; default 512)")
    sq.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    sq.add_argument("--overwrite", action="store_true", help="replace a prediction already in the output folder")
    sq.set_defaults(func=_cmd_predict, predictors=None)   # `lipsync serve` sets a PredictorCache

    si = sub.add_parser("info", help="versions, engine location and the compute device found")
    si.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    si.set_defaults(func=_cmd_info)

    sb = sub.add_parser("dub", help="put the mouth predicted from new audio into a video of the speaker")
    sb.add_argument("model", type=Path, help="model directory (lipsync train)")
    sb.add_argument("--audio", type=Path, required=True, help="the new audio (any audio file or a video's track)")
    sb.add_argument("--video", type=Path, required=True, help="target video of the same speaker")
    sb.add_argument("-o", "--output", type=Path, required=True, help="output .mp4")
    sb.add_argument("--articulation", type=float, metavar="GAIN",
                    help="mouth movement about the rest face: 0 = rest, 1 = the raw network, default = the gain "
                         "fitted on the model's validation tail (lively as the speaker)")
    sb.add_argument("--video-start", type=float, default=0.0, help="first second of the target video (default 0)")
    sb.add_argument("--video-end", type=float, help="last second of the target video (default: its end)")
    sb.add_argument("--audio-start", type=float, default=0.0, help="first second of the audio (default 0)")
    sb.add_argument("--audio-end", type=float, help="last second of the audio (default: its end)")
    sb.add_argument("--loop", choices=("pingpong", "hold"), default="pingpong",
                    help="audio longer than the video: play it back and forth (default) or hold the last frame")
    sb.add_argument("--workers", type=WORKERS, default=2, help="worker processes (default 2)")
    sb.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    sb.add_argument("--device", default="auto", help="prediction device: auto, cpu, cuda or mps")
    sb.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sb.set_defaults(func=_cmd_dub)

    sc = sub.add_parser("cartoon", help="add cartoon line-art frames and contours to a prediction folder")
    sc.add_argument("prediction", type=Path, help="prediction folder (lipsync predict -o ...)")
    sc.add_argument("--size", type=int, default=512, help="frame side in pixels (default 512)")
    sc.add_argument("--line-width", type=float, default=3.0, help="contour width in pixels (default 3)")
    sc.add_argument("--line-color", type=_rgb, default=(30, 22, 20), help="R,G,B or #rrggbb (default 30,22,20)")
    sc.add_argument("--filter-strength", type=float, default=1.0, help="bilateral filtering, 0 = off (default 1)")
    sc.add_argument("--color-levels", type=int, default=12, help="posterization levels per channel, 0 = off")
    sc.add_argument("--features", help="comma-separated contours (default: all; see docs/dub.md)")
    sc.add_argument("--no-preview", action="store_true", help="skip cartoon_preview.mp4")
    sc.set_defaults(func=_cmd_cartoon)
    sv = sub.add_parser("evaluate", help="score a model on held-out speech against baselines (JSON + plots)")
    sv.add_argument("model", type=Path, help="model directory (lipsync train)")
    sv.add_argument("held_out", type=Path, nargs="+", help="the model's speaker directory (its held-out tail is "
                    "used), another speaker directory in its space, or held-out videos of the same speaker")
    sv.add_argument("-o", "--output", type=Path, help="folder for evaluation.json and plots (default MODEL/evaluation)")
    sv.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    sv.add_argument("--texture", choices=("auto", "bank", "network"), default="auto",
                    help="the model's lip crops: from its mouth bank, as predict does (auto, bank), or from the "
                         "texture decoder (network)")
    sv.set_defaults(func=_cmd_evaluate)
    sr = sub.add_parser("serve", help="answer many requests in one process: one JSON object per line on stdin "
                        "(docs/predict.md)")
    sr.set_defaults(func=_cmd_serve)
    from .live_cli import add_live_parsers

    add_live_parsers(sub, _cmd_live, _cmd_say)
    for command in sub.choices.values():      # every --device is checked the same way
        for action in command._actions:
            if action.dest == "device":
                action.type = _device
            elif action.dest == "fps":
                action.type = POSITIVE_FPS
            elif action.dest == "workers":
                action.type = WORKERS
            elif action.dest == "silence_db":
                action.type = SILENCE_DB
            elif action.type is float:        # nan and inf are never what a user meant
                action.type = _finite
    return p


def main(argv: list[str] | None = None) -> int:
    _Parser.json_mode = "--json" in (sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False) or args.command == "serve"    # serve speaks the protocol only
    reporter = Reporter(args.json)
    cancel = CancelToken()

    def on_sigint(signum, frame):
        if cancel.is_set:
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGINT, on_sigint)
    code = run_command(args, reporter, cancel)
    if args.json:
        protocol.emit("DONE", {"exit_code": code, "protocol": protocol.PROTOCOL_VERSION, **reporter.tag})
    return code


def run() -> None:
    """The `lipsync` program (`python -m lipsync_engine` too): main(), then an exit that skips the
    interpreter's teardown. That teardown (a last garbage collection and every module freed, with
    copy-on-write faults on pages the forked workers shared) took 45-60 ms after `lipsync prepare`
    of a 3 s clip, 3% of the whole command (docs/benchmarks.md). Nothing is lost by skipping it:
    the output streams are flushed and the atexit handlers run first, every file the engine writes
    is closed by then (atomic writes), and where a thread other than this one is still running the
    exit is the ordinary one, which waits for it."""
    code = main()
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing left to say there
            pass
    atexit._run_exitfuncs()
    os._exit(code)


def check_outputs(args) -> None:
    """Every output the command line names (-o/--output, --record) is somewhere this process can
    write: said at once, not after the work (exit code 4)."""
    from .core import storage

    for dest in ("output", "record"):
        value = getattr(args, dest, None)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, Path):
                storage.check_writable(path)


def run_command(args, reporter: Reporter, cancel: CancelToken) -> int:
    """Run a parsed command; every error becomes one line (an ERROR message with --json) and the exit
    code is returned (main, and each request of `lipsync serve`)."""
    code = EXIT_OK
    try:
        check_device(getattr(args, "device", None))
        check_outputs(args)
        args.func(args, reporter, cancel)
    except (Cancelled, KeyboardInterrupt) as e:
        reporter.close()
        msg = str(e) if str(e).startswith("cancelled") else "cancelled"
        reporter.info("ERROR", msg) if args.json else print(msg, file=sys.stderr)
        code = EXIT_CANCELLED
    except EngineError as e:
        reporter.close()
        line = error_line(args.command, e)
        reporter.info("ERROR", line) if args.json else print(f"error: {line}", file=sys.stderr)
        code = getattr(e, "exit_code", EXIT_ERROR)      # e.g. 2: live's missing microphone is bad usage here
    except Exception as e:  # the one catch-all: an engine bug, reported as such, or the machine's fault
        reporter.close()
        problem = environment_problem(e)    # a full disk, a read-only or forbidden output: exit code 4
        if problem is None:
            traceback.print_exc(file=sys.stderr)
        msg = str(problem) if problem else \
            f"internal error ({type(e).__name__}: {e}); please report it with the lines above"
        reporter.info("ERROR", msg) if args.json else print(f"error: {msg}", file=sys.stderr)
        code = EXIT_ENVIRONMENT if problem else EXIT_CRASH
    return code


if __name__ == "__main__":      # python -m lipsync_engine.cli, as python -m lipsync_engine
    sys.exit(main())
