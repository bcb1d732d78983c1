"""The `lipsync` command line: one-line errors, exit codes, the JSON-lines protocol."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def lipsync(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lipsync_engine", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=300)


def write_video(path: Path, frames: int = 30, audio: bool = True, face_free: bool = True):
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 96, 96, "yuv420p"
        aud = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for _ in range(frames):
            img = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) if face_free else None
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
        if aud is not None:
            t = np.arange(int(16000 * frames / 25)) / 16000
            pcm = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            for i in range(0, len(pcm), 1024):
                fr = av.AudioFrame.from_ndarray(pcm[None, i:i + 1024], format="fltp", layout="mono")
                fr.sample_rate = 16000
                out.mux(aud.encode(fr))
            out.mux(aud.encode(None))


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", ["not_a_video", "no_audio", "no_face", "truncated", "missing"])
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, case):
    src = tmp_path / f"clip {case} é.mp4"
    if case == "not_a_video":
        src.write_text("this is not a video")
    elif case == "no_audio":
        write_video(src, audio=False)
    elif case in ("no_face", "truncated"):
        write_video(src)
        if case == "truncated":
            data = src.read_bytes()
            src.write_bytes(data[: len(data) // 3])
    out = tmp_path / "speaker"
    proc = lipsync("prepare", src, "-o", out, "--workers", "1")
    expected = {"not_a_video": "", "no_audio": "no audio track", "no_face": "no face found in any of its 30 frames",
                "truncated": "", "missing": "no such file"}[case]
    assert_one_line_error(proc, src.name, expected)
    assert not (out / "meta.json").exists()
    assert not list(out.glob("*.npy")) if out.exists() else True


def test_the_program_exits_with_the_code_after_its_output_and_atexit_handlers(tmp_path):
    """`lipsync` (cli.run) skips the interpreter's teardown: its exit code, everything it wrote
    to a pipe and the atexit handlers registered in it all survive; a thread still running is
    waited for (the ordinary exit)."""
    script = (
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "from lipsync_engine import cli\n"
        "out = Path(sys.argv[1])\n"
        "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
        "if sys.argv[2] == 'thread':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.5), (out / 'thread').write_text('done'))).start()\n"
        "sys.argv = ['lipsync', '--json', 'prepare', str(out / 'missing.mp4'), '-o', str(out / 'speaker')]\n"
        "cli.run()\n")
    for case in ("alone", "thread"):
        folder = tmp_path / case
        folder.mkdir()
        proc = subprocess.run([sys.executable, "-c", script, str(folder), case], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 1, proc.stderr[-1000:]
        msgs = [json.loads(line) for line in proc.stdout.splitlines()]
        assert msgs[-1] == ["DONE", {"exit_code": 1, "protocol": 1}]
        assert "missing.mp4" in next(m[1]["message"] for m in msgs if m[0] == "ERROR")
        assert (folder / "atexit").read_text() == "ran"
        assert (folder / "thread").read_text() == "done" if case == "thread" else not (folder / "thread").exists()


def test_json_protocol_messages_end_with_done(tmp_path):
    src = tmp_path / "silent.mp4"
    write_video(src)
    proc = lipsync("--json", "prepare", src, "-o", tmp_path / "out", "--workers", "1")
    msgs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert msgs[-1] == ["DONE", {"exit_code": 1, "protocol": 1}]
    kinds = [m[0] for m in msgs]
    assert "ERROR" in kinds and set(kinds) <= {"STATUS", "PROGRESS", "WARN", "ERROR", "RESULT", "DONE"}
    assert "no face" in next(m[1]["message"] for m in msgs if m[0] == "ERROR")


def test_progress_bars_start_no_thread():
    """The command line's progress bars start no thread of their own (tqdm's monitor), so a worker
    pool opened after a bar can still be forked (core/jobs.py)."""
    script = ("import threading\n"
              "from lipsync_engine.cli import Reporter\n"
              "from lipsync_engine.core.progress import Progress\n"
              "r = Reporter(json_mode=False)\n"
              "for done in (0, 5, 10):\n"
              "    r(Progress('track', done, 10))\n"
              "print(threading.active_count())\n"
              "r.close()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.split() == ["1"]


def test_usage_errors_exit_2():
    proc = lipsync("prepare")
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_out_of_range_options_give_one_line_error(tmp_path, capsys):
    """Values argparse accepts but the options refuse: a one-line error naming the command, no traceback."""
    import signal
    from types import SimpleNamespace

    from lipsync_engine import cli

    def inline(*args):      # cli.main in this process: the refusal comes before any input is read
        handler = signal.getsignal(signal.SIGINT)
        try:
            code = cli.main([str(a) for a in args])
        finally:
            signal.signal(signal.SIGINT, handler)      # cli.main installs its own Ctrl-C handler
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    assert_one_line_error(inline("train", tmp_path, "-o", tmp_path / "m", "--geometry-epochs", "-1"),
                          "train:", "geometry_epochs")
    assert_one_line_error(inline("train", tmp_path, "-o", tmp_path / "m", "--val-fraction", "0.7"),
                          "train:", "val_fraction")
    refused = lipsync("train", str(tmp_path), "-o", str(tmp_path / "m"), "--phone-dropout", "1")  # argparse's
    assert refused.returncode == 2 and "--phone-dropout: must be >= 0 and <= 0.9" in refused.stderr
    assert_one_line_error(inline("fit", tmp_path, "--smoothness", "-1"), "fit:", "smoothness")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_fit_and_export_commands(prepared_demo, tmp_path):
    from lipsync_engine.io.exports import read_livelink_csv, read_rhubarb_json
    from lipsync_engine.rig.names import ARKIT_NAMES

    ds, _, truth = prepared_demo
    proc = lipsync("fit", ds.path)
    assert proc.returncode == 0, proc.stderr
    assert (ds.path / "blendshapes.npy").is_file() and (ds.path / "report" / "blendshapes.png").is_file()
    assert 'src="blendshapes.png"' in (ds.path / "report" / "index.html").read_text()
    csv_path, cues_path = tmp_path / "take.csv", tmp_path / "cues.json"
    assert lipsync("export", ds.path, "-f", "livelink-csv", "-o", csv_path).returncode == 0
    assert lipsync("export", ds.path, "-f", "rhubarb-json", "-o", cues_path).returncode == 0
    take = read_livelink_csv(csv_path, fps=truth.fps)
    jaw = take.coefficients[:, ARKIT_NAMES.index("jawOpen")]
    assert len(jaw) == len(truth.openness) and np.corrcoef(jaw, truth.openness)[0, 1] > 0.9
    assert read_rhubarb_json(cues_path)
