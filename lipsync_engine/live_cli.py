"""The `lipsync live` and `lipsync say` subcommands (kept beside cli.py so that cli.py only registers them).

Owns: their arguments, turning them into LiveOptions / PredictOptions, and their messages.
Must not: predict or synthesize itself (inference/live.py, inference/live_io.py, io/tts.py, inference/folder.py do),
or import bpy. Errors become one line and an exit code in cli.main.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .core.errors import InputError

LIVE_HELP = "animate from a microphone or a file in real time: JSON lines, VMC/OSC, a recording"
SAY_HELP = "speak a text (offline espeak-ng) and predict the animation from it, as `lipsync predict`"


def add_live_parsers(sub, live_func, say_func) -> None:
    sl = sub.add_parser("live", help=LIVE_HELP)
    sl.add_argument("model", type=Path, help="model directory (lipsync train)")
    sl.add_argument("--input", default="mic", help="mic (the default input device) or an audio FILE played in "
                    "real time (default mic)")
    sl.add_argument("--as-fast-as-possible", action="store_true", help="a FILE input is not paced (tests)")
    sl.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="FRAME messages on stdout (the add-on's protocol; same as lipsync --json live)")
    sl.add_argument("--vmc", metavar="HOST:PORT", help="send VMC blendshapes over OSC/UDP, e.g. 127.0.0.1:39539")
    sl.add_argument("--record", type=Path, metavar="OUT", help="on exit, write what was streamed as a "
                    "prediction folder (the files of lipsync predict, plus audio.wav)")
    sl.add_argument("--lookahead", type=float, metavar="MS", help="future audio a frame waits for (default: the "
                    "model's, 120 ms unless trained with --lookahead); less is padded by mirroring")
    sl.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    sl.add_argument("--no-smoothing", action="store_true", help="no temporal smoothing (2 frames less delay)")
    sl.add_argument("--silence-db", type=float, default=-45.0,
                    help="frames this many dB below the loudest so far rest closed (default -45; -inf = off)")
    sl.add_argument("--atlas", action="store_true", help="predict the lip atlas too (recorded with --record)")
    sl.add_argument("--vertices", action="store_true", help="vertices in the FRAME messages too")
    sl.add_argument("--lips", action="store_true", help="the lip atlas crop in the FRAME messages too (base64 PNG, "
                    "\"lips_png\"; implies --atlas)")
    sl.add_argument("--stats", action="store_true", help="print latency and processing percentiles at the end")
    sl.add_argument("--max-seconds", type=float, help="stop after this much audio")
    sl.add_argument("--no-preview", action="store_true", help="--record without preview.mp4")
    sl.add_argument("--overwrite", action="store_true", help="replace a prediction already in the --record folder")
    sl.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    sl.set_defaults(func=live_func)

    sy = sub.add_parser("say", help=SAY_HELP)
    sy.add_argument("model", type=Path, nargs="?", help="model directory (lipsync train)")
    sy.add_argument("text", nargs="?", help="the words to speak (quote them)")
    sy.add_argument("-o", "--output", type=Path, help="prediction folder (default say_lipsync); speech.wav inside")
    sy.add_argument("--voice", default="en-us", help="espeak-ng language or voice (default en-us; --list-voices)")
    sy.add_argument("--rate", type=int, default=175, help="words per minute, 80..450 (default 175)")
    sy.add_argument("--list-voices", action="store_true", help="list the voices and exit")
    sy.add_argument("--fps", type=float, default=30.0, help="output frame rate (default 30)")
    sy.add_argument("--no-atlas", action="store_true", help="geometry and blendshapes only")
    sy.add_argument("--no-preview", action="store_true", help="skip preview.mp4")
    sy.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    sy.add_argument("--overwrite", action="store_true", help="replace a prediction already in the output folder")
    sy.set_defaults(func=say_func)


def run_live_command(args, reporter, cancel) -> None:
    from .inference.live import LiveOptions
    from .inference.live_io import (FileSource, JsonSink, LiveRecording, LiveStats, MicSource, VmcSink, parse_host_port,
                          run_live, write_recording)
    from .rig.names import ARKIT_NAMES
    from .inference.predictor import PredictOptions, load_predictor
    from .inference.folder import OutputOptions, check_output_dir

    try:
        options = LiveOptions(PredictOptions(fps=args.fps, smoothing=not args.no_smoothing,
                                             silence_db=args.silence_db, atlas=args.atlas or args.lips,
                                             device=args.device),
                              lookahead_ms=args.lookahead, vertices=args.vertices or args.record is not None)
        vmc = parse_host_port(args.vmc) if args.vmc else None
        out_options = OutputOptions(atlas_images=args.atlas or args.lips, preview=not args.no_preview, overwrite=args.overwrite)
    except ValueError as e:
        raise InputError(f"live: {e}") from e
    if args.record is not None:
        check_output_dir(args.record, args.overwrite)
    source = MicSource() if args.input == "mic" else FileSource(Path(args.input), not args.as_fast_as_possible)
    predictor = load_predictor(args.model, args.device)
    if args.lookahead is None:
        options = LiveOptions(options.predict, predictor.lookahead_ms, options.vertices)
    reporter.info("STATUS", f"live from {source.label} at {args.fps:g} fps, lookahead {options.lookahead_ms:g} ms "
                  f"(model {predictor.lookahead_ms:g} ms); Ctrl-C stops", names=list(ARKIT_NAMES), fps=args.fps,
                  lookahead_ms=options.lookahead_ms, model_lookahead_ms=predictor.lookahead_ms)
    stats = LiveStats()
    sinks = []
    lossless = args.as_fast_as_possible               # no clock to keep: every frame is delivered
    if args.json:
        sinks.append(JsonSink(stats, timed=True, lossless=lossless, lips=args.lips))
    if vmc is not None:
        sinks.append(VmcSink(stats, timed=not sinks, host=vmc[0], port=vmc[1], lossless=lossless))
    recording = LiveRecording() if args.record is not None else None
    try:
        run_live(predictor, source, sinks, options, stats, cancel, recording, args.max_seconds)
    finally:
        for s in sinks:
            s.close()
    cancel_was_set = cancel.is_set
    if recording is not None:
        from .core.progress import CancelToken

        manifest = write_recording(predictor, recording, args.record, options, out_options, reporter, CancelToken())
        reporter.close()
        reporter.info("RESULT", f"{args.record}: recorded {len(recording.frames)} frames; manifest: {manifest}",
                      path=str(args.record), frames=len(recording.frames), audio=str(args.record / "audio.wav"))
    summary = stats.summary()
    if args.stats or args.json:
        reporter.info("RESULT" if args.json else "STATUS", stats.line(), stats=summary)
    elif not cancel_was_set:
        reporter.info("STATUS", f"{summary['frames']} frames streamed")


def run_say_command(args, reporter, cancel) -> None:
    from .core import storage
    from .io import tts
    from .inference.predictor import PredictOptions, load_predictor
    from .inference.folder import OutputOptions, check_output_dir, predict_to_folder

    if args.list_voices:
        voices = tts.list_voices()
        reporter.info("RESULT", "\n".join(f"{v.language:<12} {v.name}" for v in voices),
                      voices=[{"language": v.language, "name": v.name} for v in voices])
        return
    if args.model is None or args.text is None:
        raise InputError("say: give MODEL_DIR and the text, e.g. lipsync say models/anna \"Hello there\" -o hello")
    try:
        options = PredictOptions(fps=args.fps, atlas=not args.no_atlas, device=args.device)
        out_options = OutputOptions(atlas_images=not args.no_atlas, preview=not args.no_preview,
                                    overwrite=args.overwrite)
    except ValueError as e:
        raise InputError(f"say: {e}") from e
    out = args.output or Path("say_lipsync")
    check_output_dir(out, args.overwrite)
    speech = tts.synthesize(args.text, args.voice, args.rate)
    predictor = load_predictor(args.model, args.device)
    with tempfile.TemporaryDirectory(prefix="lipsync-say-") as tmp:
        wav = Path(tmp) / "speech.wav"
        import soundfile

        soundfile.write(str(wav), speech.samples, speech.sample_rate, subtype="PCM_16")
        r = predict_to_folder(predictor, wav, out, options, out_options, reporter, cancel)
        reporter.close()
        shutil.copyfile(wav, out / "speech.wav")
    manifest = json.loads(r.manifest.read_text())
    manifest["audio"] = str((out / "speech.wav").resolve())
    manifest["files"]["speech"] = "speech.wav"
    manifest["say"] = {"text": args.text, "voice": args.voice, "rate_wpm": args.rate,
                       "duration_s": round(speech.duration_s, 3)}
    storage.write_json(r.manifest, manifest)
    reporter.info("RESULT", f"{out}: {speech.duration_s:.2f} s of speech ({args.voice}, {args.rate} wpm), "
                  f"{r.frames} frames at {r.fps:g} fps; speech: {out / 'speech.wav'}; manifest: {r.manifest}",
                  path=str(out), frames=r.frames, fps=r.fps, audio=str(out / "speech.wav"),
                  duration_s=speech.duration_s)
