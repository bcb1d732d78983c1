"""Hostile inputs and faults, one table per kind (issue 17; docs/errors.md).

Each row: the command line, the exit code (usage 2, input 1, the machine 4) and a piece of the
one-line message. Every row also checks that nothing printed a traceback, that the message is
one line, and that files already there are byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync_engine import cli

ROOT = Path(__file__).resolve().parents[2]


def lipsync(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lipsync_engine", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(code: int, stderr: str, expected_code: int, needle: str) -> str:
    assert code == expected_code, (code, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# -- rows that need no trained model: the command is refused before any input is read -----------
# {t} is the test's folder (holding keep.txt, which must stay as it is)
NO_CUDA = "CUDA is not available; use --device cpu"
ROWS = [
    # devices
    (["train", "{t}/speaker", "-o", "{t}/model", "--device", "cuda"], 4, NO_CUDA),
    (["predict", "{t}/model", "{t}/a.wav", "--device", "cuda"], 4, NO_CUDA),
    (["evaluate", "{t}/model", "{t}/speaker", "--device", "cuda"], 4, NO_CUDA),
    (["dub", "{t}/model", "--audio", "{t}/a.wav", "--video", "{t}/v.mp4", "-o", "{t}/o.mp4", "--device", "cuda"],
     4, NO_CUDA),
    (["live", "{t}/model", "--device", "cuda:0"], 4, NO_CUDA),
    (["train", "{t}/speaker", "-o", "{t}/model", "--device", "tpu"], 2, "unknown device 'tpu'"),
    (["predict", "{t}/model", "{t}/a.wav", "--device", "gpu0"], 2, "unknown device 'gpu0'"),
    (["dub", "{t}/model", "--audio", "{t}/a.wav", "--video", "{t}/v.mp4", "-o", "{t}/o.mp4", "--device", "tpu"],
     2, "unknown device"),
    (["evaluate", "{t}/model", "{t}/speaker", "--device", "gpu0"], 2, "unknown device"),
    (["live", "{t}/model", "--device", "tpu"], 2, "unknown device"),
    # numbers: finite and in range
    (["fit", "{t}/speaker", "--smoothness", "nan"], 2, "--smoothness: must be a finite number"),
    (["fit", "{t}/speaker", "--sparsity", "inf"], 2, "--sparsity: must be a finite number"),
    (["train", "{t}/speaker", "-o", "{t}/model", "--learning-rate", "nan"], 2, "--learning-rate: must be a finite"),
    (["train", "{t}/speaker", "-o", "{t}/model", "--learning-rate", "0"], 2, "--learning-rate: must be > 0"),
    (["train", "{t}/speaker", "-o", "{t}/model", "--width", "-1"], 2, "--width: must be > 0"),
    (["train", "{t}/speaker", "-o", "{t}/model", "--val-fraction", "nan"], 2, "--val-fraction: must be a finite"),
    (["synth-video", "{t}/clip.mp4", "--fps", "0"], 2, "--fps: must be > 0"),
    (["synth-video", "{t}/clip.mp4", "--duration", "0"], 2, "--duration: must be > 0"),
    (["synth-video", "{t}/clip.mp4", "--duration", "-3"], 2, "--duration: must be > 0"),
    (["synth-video", "{t}/clip.mp4", "--duration", "1e12"], 2, "--duration: must be > 0 and <= 3600"),
    (["predict", "{t}/model", "{t}/a.wav", "--fps", "0"], 2, "--fps: must be > 0"),
    (["predict", "{t}/model", "{t}/a.wav", "--silence-db", "nan"], 2, "--silence-db: must be a finite"),
    (["live", "{t}/model", "--fps", "-30"], 2, "--fps: must be > 0"),
    (["prepare", "{t}/v.mp4", "-o", "{t}/speaker", "--workers", "0"], 2, "--workers: must be >= 1"),
    (["dub", "{t}/model", "--audio", "{t}/a.wav", "--video", "{t}/v.mp4", "-o", "{t}/o.mp4", "--workers", "0"],
     2, "--workers: must be >= 1"),
    (["demo", "-o", "{t}/demo", "--duration", "nan"], 2, "--duration: must be a finite"),
    # outputs where nothing can be written (procfs, sysfs): refused before any work, exit code 4
    (["prepare", "{t}/clip.mp4", "-o", "/proc/lipsync_speaker"], 4, "/proc/lipsync_speaker: cannot write there"),
    (["train", "{t}/speaker", "-o", "/proc/lipsync_model"], 4, "/proc/lipsync_model: cannot write there"),
    (["synth-video", "/sys/lipsync.mp4", "--duration", "0.2"], 4, "/sys/lipsync.mp4: cannot write there"),
    (["predict", "{t}/model", "{t}/a.wav", "-o", "/proc/lipsync_p", "/proc/lipsync_q"], 4, "cannot write there"),
    # another command's folder
    (["train", "{t}/speaker", "-o", "{t}/speaker"], 1, "a prepared speaker directory (it holds meta.json)"),
    (["train", "{t}/speaker", "-o", "{t}/other_speaker"], 1, "other_speaker: a prepared speaker directory"),
    (["evaluate", "{t}/model", "{t}/speaker", "-o", "{t}/other_speaker"], 1, "a prepared speaker directory"),
    # files and folders
    (["synth-video", "{t}/keep.txt"], 1, "keep.txt: already exists; choose another name or pass --overwrite"),
    (["synth-video", "{t}/clip.mp4"], 1, "clip.truth.json: already exists; choose another name or pass --overwrite"),
    (["synth-video", "{t}/speaker"], 1, "speaker: a folder, not a file"),
    (["synth-video", "{t}/keep.txt/clip.mp4"], 1, "keep.txt: a file, not a folder"),
    (["export", "{t}/speaker", "-f", "json", "-o", "{t}/keep.txt"], 1, "keep.txt: already exists; choose another "
     "name or pass --overwrite"),
    (["export", "{t}/speaker", "-f", "livelink-csv", "-o", "{t}/other_speaker"], 1, "a folder, not a file"),
    (["train", "{t}/speaker", "-o", "{t}/keep.txt"], 1, "keep.txt: a file, not a folder"),
    (["evaluate", "{t}/model", "{t}/speaker", "-o", "{t}/keep.txt"], 1, "keep.txt: a file, not a folder"),
]


def _ids(rows):
    return [" ".join(a for a in argv if "{t}" not in a) for argv, *_ in rows]


def lipsync_inline(argv, capsys) -> tuple[int, str]:
    """cli.main in this process (the rows are refused before any input is read: a new process
    each would cost 2 s of imports per row); (exit code, stderr), usage errors included."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:            # argparse's usage errors
        code = e.code
    finally:
        signal.signal(signal.SIGINT, handler)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, code, needle", ROWS, ids=_ids(ROWS))
def test_refused_with_one_line(tmp_path, capsys, argv, code, needle):
    if NO_CUDA in needle and cuda_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "keep.txt").write_bytes(b"the user's file\n")
    (tmp_path / "clip.truth.json").write_bytes(b'{"the truth of an earlier video": 1}')
    for speaker in ("speaker", "other_speaker"):           # stand-ins for prepared speakers
        (tmp_path / speaker).mkdir()
        (tmp_path / speaker / "meta.json").write_text('{"format": "lipsync3d-speaker"}\n')
        (tmp_path / speaker / "reference_atlas.png").write_bytes(b"\x89PNG the user's atlas")
    before = snapshot(tmp_path)
    assert_one_line(*lipsync_inline([a.format(t=tmp_path) for a in argv], capsys), code, needle)
    assert snapshot(tmp_path) == before


# -- the machine's faults while an output is written: injected at the writer layer ----------------
# (os.replace publishes every output; a real full disk fails earlier, in a write, with the same errno)
FAULTS = [(errno.ENOSPC, "no space left on the device"), (errno.EROFS, "read-only file system"),
          (errno.EACCES, "permission denied")]


@pytest.mark.parametrize("err, needle", FAULTS, ids=[errno.errorcode[e] for e, _ in FAULTS])
@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_disk_full_read_only_and_forbidden_outputs_exit_4(tmp_path, monkeypatch, capsys, err, needle, json_mode):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"the user's file\n")
    before = snapshot(out)
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if Path(dst).parent == out:
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_replace)
    code = cli.main((["--json"] if json_mode else []) + ["synth-video", str(out / "clip.mp4"), "--duration", "0.2"])
    captured = capsys.readouterr()
    if json_mode:
        messages = [json.loads(ln) for ln in captured.out.splitlines()]
        errors = [p["message"] for kind, p in messages if kind == "ERROR"]
        assert len(errors) == 1 and needle in errors[0] and str(out / "clip.mp4") in errors[0]
        assert messages[-1] == ["DONE", {"exit_code": 4, "protocol": 1}]
        assert code == 4 and "Traceback" not in captured.err
    else:
        line = assert_one_line(code, captured.err, 4, needle)
        assert str(out / "clip.mp4") in line
    assert snapshot(out) == before        # no output, no temporary left behind


def test_atomic_writes_name_the_output_not_the_temporary(tmp_path, monkeypatch):
    from lipsync_engine.core import storage

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as info:
        storage.write_json(tmp_path / "meta.json", {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "meta.json")
    problem = cli.environment_problem(info.value)
    assert problem is not None and str(problem) == f"{tmp_path / 'meta.json'}: no space left on the device"
    assert problem.exit_code == 4
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, needle", [
    (["--json", "fit", "x", "--smoothness", "nan"], "--smoothness: must be a finite number"),
    (["--json", "prepare"], "the following arguments are required"),
    (["--json", "train", "x", "-o", "y", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_json_usage_errors_send_error_and_done(argv, needle):
    proc = lipsync(*argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    messages = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [kind for kind, _ in messages] == ["ERROR", "DONE"]
    assert needle in messages[0][1]["message"]
    assert messages[1][1]["exit_code"] == 2


def test_synth_video_replaces_only_with_overwrite(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"the user's video")
    assert_one_line(*lipsync_inline(["synth-video", video, "--duration", "0.2"], capsys), 1, "already exists")
    assert video.read_bytes() == b"the user's video"
    code, err = lipsync_inline(["synth-video", video, "--duration", "0.2", "--overwrite"], capsys)
    assert code == 0, err
    assert video.stat().st_size > 1000 and (tmp_path / "clip.truth.json").is_file()


# -- rows on the demo speaker and its trained model (slow: the fixtures track and train) -------------
# {speaker}: the prepared demo speaker, {model}: the tiny model trained on it, {video}: the demo video
SLOW_ROWS = [
    (["train", "{speaker}", "-o", "{speaker}"], 1, "a prepared speaker directory (it holds meta.json)"),
    (["evaluate", "{model}", "{speaker}", "-o", "{speaker}"], 1, "a prepared speaker directory"),
    (["fit", "{speaker}", "--smoothness", "nan"], 2, "--smoothness: must be a finite number"),
    (["export", "{speaker}", "-f", "json", "-o", "{t}/keep.txt"], 1, "already exists; choose another name"),
    (["predict", "{model}", "{video}", "-o", "{t}/keep.txt"], 1, "keep.txt: exists and is not a folder"),
    (["predict", "{model}", "{video}", "-o", "{t}/p", "--device", "cuda"], 4, NO_CUDA),
    (["evaluate", "{model}", "{speaker}", "--device", "cuda"], 4, NO_CUDA),
    (["dub", "{model}", "--audio", "{video}", "--video", "{video}", "-o", "{t}/keep.txt"], 1,
     "keep.txt: the output must be an .mp4"),
]


def _digest(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, code, needle", SLOW_ROWS, ids=_ids(SLOW_ROWS))
def test_refused_with_one_line_on_a_real_speaker(trained_demo, demo_video, tmp_path, argv, code, needle):
    if NO_CUDA in needle and cuda_available():
        pytest.skip("this machine has CUDA")
    model, ds, _ = trained_demo
    (tmp_path / "keep.txt").write_bytes(b"the user's file\n")
    before = [_digest(ds.path), _digest(model), snapshot(tmp_path)]
    proc = lipsync(*[a.format(t=tmp_path, speaker=ds.path, model=model, video=demo_video[0]) for a in argv])
    assert_one_line(proc.returncode, proc.stderr, code, needle)
    assert [_digest(ds.path), _digest(model), snapshot(tmp_path)] == before


def test_predict_on_a_full_disk_exits_4_and_leaves_nothing(trained_demo, demo_video, tmp_path, monkeypatch,
                                                           capsys):
    model, _, _ = trained_demo
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"the user's file\n")
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if Path(dst).parent == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_replace)
    code = cli.main(["predict", str(model), str(demo_video[0]), "-o", str(out / "pred"), "--no-preview",
                     "--end", "1"])
    line = assert_one_line(code, capsys.readouterr().err, 4, "no space left on the device")
    assert str(out / "pred") in line
    assert snapshot(out) == {"keep.txt": b"the user's file\n"}
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_library_errors_name_no_flag_and_the_cli_adds_it():
    from lipsync_engine.core.errors import OutputExists

    assert cli.error_line("train", OutputExists("m: already holds a model")) == \
        "m: already holds a model; pass --resume to continue it or choose another folder"
    assert cli.error_line("predict", OutputExists("p: already holds a prediction")) == \
        "p: already holds a prediction; pass --overwrite to replace it"
    assert cli.error_line("serve", OutputExists("x: already exists")) == "x: already exists"
    # the library's own messages: no command-line flag in any of them
    import re

    library = [p for p in (ROOT / "lipsync_engine").rglob("*.py") if p.name not in ("cli.py", "live_cli.py")]
    raised = [m for p in library for m in re.findall(r"raise \w+\((f?\"[^\n]*)", p.read_text(encoding="utf-8"))]
    assert raised and not [m for m in raised if re.search(r"pass --|use --|--resume|--overwrite", m)]
