"""`lipsync` command line: argparse subcommands over the public API.

Owns: argument parsing, progress bars (tqdm on stderr) or protocol messages (--json),
Ctrl-C handling (first press cancels cleanly, finished work is kept), and turning errors
into one line and an exit code: 0 OK, 1 a handled EngineError, 2 bad usage, 130
cancelled, 3 an internal error (traceback on stderr). The only catch-all is here.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from . import protocol
from .errors import Cancelled, EngineError
from .progress import CancelToken, Progress
from .version import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CRASH, EXIT_CANCELLED = 0, 1, 2, 3, 130


def _console():
    """A private duplicate of stderr for progress bars: tracking silences fd 2 (MediaPipe's
    native log lines) while it runs, and the bars must stay visible meanwhile."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (OSError, ValueError, AttributeError):
        return sys.stderr


class Reporter:
    """Progress as tqdm bars (people) or PROGRESS messages (--json, the add-on)."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self.bar = None
        self.stage = None
        self.console = _console()

    def __call__(self, p: Progress) -> None:
        if self.json_mode:
            protocol.emit("PROGRESS", {"stage": p.stage, "done": p.done, "total": p.total, "message": p.message})
            return
        from tqdm import tqdm

        if p.stage != self.stage:
            self.close()
            self.stage = p.stage
            self.bar = tqdm(total=p.total, desc=f"{p.stage:>8}", unit="fr" if p.stage in ("track", "atlas") else "",
                            file=self.console, dynamic_ncols=True, leave=True, postfix=p.message or None)
        self.bar.total = p.total
        self.bar.update(p.done - self.bar.n)  # tqdm throttles the redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None

    def info(self, kind: str, text: str, **extra) -> None:
        if self.json_mode:
            protocol.emit(kind, {"message": text, **extra})
        else:
            self.close()
            print(("warning: " if kind == "WARN" else "") + text, file=sys.stderr if kind == "WARN" else sys.stdout)


def _cmd_prepare(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .prepare import PrepareOptions, prepare_speaker

    options = PrepareOptions(workers=args.workers, report=not args.no_report)
    if args.reference:
        take, _, frame = args.reference.partition(":")
        options = replace(options, reference=(int(take), int(frame)))
    result = prepare_speaker(args.videos, args.output, options, reporter, cancel, overwrite=args.overwrite)
    reporter.close()
    for line in result.excluded:
        reporter.info("WARN", line)
    what = "already prepared" if result.skipped else f"prepared in {result.seconds:.1f} s"
    reporter.info("RESULT", f"{result.path}: {result.frames} frames from {result.takes} take(s), {what}; "
                  f"report: {result.path / 'report' / 'index.html'}", path=str(result.path), frames=result.frames)


def _cmd_fit(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .blendshapes import FitOptions, fit_speaker

    options = replace(FitOptions(), smoothness=args.smoothness, sparsity=args.sparsity,
                      adapt_to_neutral=not args.no_adapt)
    s = fit_speaker(args.speaker, reporter, options, cancel)
    reporter.close()
    reporter.info("RESULT", f"{s.coefficients_path}: {s.frames} frames of {len(s.names)} ARKit coefficients "
                  f"({s.frames_per_second:.0f} frames/s; residual RMS mean {s.residual_rms_mean:.3f} cm, "
                  f"95th percentile {s.residual_rms_p95:.3f} cm); plot: {s.plot_path}",
                  path=str(s.coefficients_path), frames=s.frames)


EXPORT_FORMATS = ("livelink-csv", "json", "rhubarb-tsv", "rhubarb-json", "visemes-json", "vrm-json", "cc4-json")


def _cmd_export(args, reporter: Reporter, cancel: CancelToken) -> None:
    from . import exports, names
    from .blendshapes import load_fitted

    coeffs, fps = load_fitted(args.speaker)
    out, fmt = Path(args.output), args.format
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
    from .train import TrainOptions, train_speaker

    options = TrainOptions(preset=args.preset, epochs=args.epochs, device=args.device)
    r = train_speaker(args.speaker, args.output, options, reporter, cancel, resume=args.resume)
    reporter.close()
    val = f", held-out {r.val_loss:.4f}" if r.val_loss is not None else ""
    reporter.info("RESULT", f"{r.path}: {r.epochs} epochs in {r.seconds:.0f} s, loss {r.train_loss:.4f}{val}; "
                  f"curve: {r.path / 'loss_curve.png'}", path=str(r.path))


def _cmd_synth(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .synthetic import make_demo_video

    def on_frame(done: int, total: int) -> None:
        reporter(Progress("synth", done, total))
        cancel.check()

    make_demo_video(Path(args.output), duration_s=args.duration, fps=args.fps, seed=args.seed, on_frame=on_frame)
    reporter.close()
    reporter.info("RESULT", f"wrote {args.output} and its ground truth {Path(args.output).with_suffix('.truth.json')}",
                  path=str(args.output))


def _cmd_demo(args, reporter: Reporter, cancel: CancelToken) -> None:
    from .blendshapes import fit_speaker, load_fitted
    from .exports import write_livelink_csv
    from .names import ARKIT_NAMES
    from .prepare import PrepareOptions, prepare_speaker
    from .synthetic import make_demo_video

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "demo_speaker.mp4"
    if not video.is_file():
        make_demo_video(video, duration_s=args.duration,
                        on_frame=lambda d, t: (reporter(Progress("synth", d, t)), cancel.check()))
    reporter.close()
    result = prepare_speaker([video], out / "speaker", PrepareOptions(), reporter, cancel)
    reporter.close()
    fit = fit_speaker(result.path, reporter, cancel=cancel)
    reporter.close()
    livelink = out / "demo_blendshapes_livelink.csv"
    coeffs, fps = load_fitted(result.path)
    write_livelink_csv(livelink, coeffs, ARKIT_NAMES, fps)
    reporter.info("RESULT", "\n".join([
        "demo finished. Outputs:",
        f"  synthetic input video : {video} (ground truth: {video.with_suffix('.truth.json')})",
        f"  prepared speaker      : {result.path} ({result.frames} frames)",
        f"  report (open this)    : {result.path / 'report' / 'index.html'}",
        f"  ARKit-52 coefficients : {fit.coefficients_path} (plot: {fit.plot_path})",
        f"  Live Link Face CSV    : {livelink}",
    ]), path=str(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lipsync", description="LipSync3D engine: personalized 3D talking faces from video.")
    p.add_argument("--version", action="version", version=f"lipsync {__version__}")
    p.add_argument("--json", action="store_true", help="machine-readable JSON-lines messages on stdout")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("prepare", help="track, pose- and lighting-normalize videos of one speaker")
    sp.add_argument("videos", nargs="+", type=Path, help="video files or folders of takes of ONE speaker")
    sp.add_argument("-o", "--output", type=Path, required=True, help="speaker directory to write")
    sp.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    sp.add_argument("--reference", metavar="TAKE:FRAME", help="force the reference frame")
    sp.add_argument("--overwrite", action="store_true", help="replace a speaker directory made from other inputs")
    sp.add_argument("--no-report", action="store_true", help="skip the HTML/PNG report")
    sp.set_defaults(func=_cmd_prepare)

    sf = sub.add_parser("fit", help="fit ARKit-52 blendshape coefficients to a prepared speaker")
    sf.add_argument("speaker", type=Path, help="prepared speaker directory")
    sf.add_argument("--smoothness", type=float, default=0.1, help="weight of frame-to-frame change (default 0.1)")
    sf.add_argument("--sparsity", type=float, default=0.03, help="L1 weight in cm of motion (default 0.03)")
    sf.add_argument("--no-adapt", action="store_true", help="do not adapt the rig to the speaker's neutral face")
    sf.set_defaults(func=_cmd_fit)

    st = sub.add_parser("train", help="train a personalized model on a prepared speaker (no evaluation yet)")
    st.add_argument("speaker", type=Path, help="prepared speaker directory (run `lipsync fit` first for blendshapes)")
    st.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    st.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="network width (default cpu = 1/8)")
    st.add_argument("--epochs", type=int, default=30)
    st.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    st.add_argument("--resume", action="store_true", help="continue MODEL_DIR after Ctrl-C or a crash")
    st.set_defaults(func=_cmd_train)

    se = sub.add_parser("export", help="write a speaker's fitted coefficients for other tools")
    se.add_argument("speaker", type=Path, help="prepared speaker directory (after `lipsync fit`)")
    se.add_argument("-f", "--format", choices=EXPORT_FORMATS, required=True)
    se.add_argument("-o", "--output", type=Path, required=True)
    se.set_defaults(func=_cmd_export)

    ss = sub.add_parser("synth-video", help="write the built-in synthetic talking-face video with ground truth")
    ss.add_argument("output", type=Path, help="output .mp4")
    ss.add_argument("--duration", type=float, default=8.0, help="seconds (default 8)")
    ss.add_argument("--fps", type=float, default=25.0)
    ss.add_argument("--seed", type=int, default=0)
    ss.set_defaults(func=_cmd_synth)

    sd = sub.add_parser("demo", help="run the pipeline on the built-in synthetic demo video")
    sd.add_argument("-o", "--output", type=Path, default=Path("out/demo"))
    sd.add_argument("--duration", type=float, default=8.0)
    sd.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = Reporter(args.json)
    cancel = CancelToken()

    def on_sigint(signum, frame):
        if cancel.is_set:
            raise KeyboardInterrupt
        cancel.set()

    signal.signal(signal.SIGINT, on_sigint)
    code = EXIT_OK
    try:
        args.func(args, reporter, cancel)
    except (Cancelled, KeyboardInterrupt) as e:
        reporter.close()
        msg = str(e) if str(e).startswith("cancelled") else "cancelled"
        reporter.info("ERROR", msg) if args.json else print(msg, file=sys.stderr)
        code = EXIT_CANCELLED
    except EngineError as e:
        reporter.close()
        reporter.info("ERROR", str(e)) if args.json else print(f"error: {e}", file=sys.stderr)
        code = EXIT_ERROR
    except Exception as e:  # the one catch-all: an engine bug, reported as such
        reporter.close()
        traceback.print_exc(file=sys.stderr)
        msg = f"internal error ({type(e).__name__}: {e}); please report it with the lines above"
        reporter.info("ERROR", msg) if args.json else print(f"error: {msg}", file=sys.stderr)
        code = EXIT_CRASH
    if args.json:
        protocol.emit("DONE", {"exit_code": code, "protocol": protocol.PROTOCOL_VERSION})
    return code
