"""Killed, starved and fooled runs (issue 17): kill -9 at random instants of prepare, train and
predict, then a re-run that equals an uninterrupted one; a real full disk; replacing a speaker
atomically; warnings for suspicious input (a truncated file, another person, too little video).

The kills hit the whole process group (main process and workers), as a power cut or the OOM
killer of a container would; the instants come from a seeded generator, so a failure repeats.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync_engine.core import storage
from lipsync_engine.core.errors import EngineError
from lipsync_engine.prepare import dataset, normalize, pipeline

ROOT = Path(__file__).resolve().parents[2]
TINY_WIDTH = str(1 / 32)


def command(*args) -> list[str]:
    return [sys.executable, "-m", "lipsync_engine", *map(str, args)]


def run(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(command("--json", *args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _progress(line: str) -> dict | None:
    try:
        kind, payload = json.loads(line)
    except ValueError:
        return None
    return payload if kind == "PROGRESS" else None


def _kill(proc: subprocess.Popen) -> bool:
    """kill -9 the whole process group; True if the command was still running."""
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def kill_at(args, seconds: float) -> bool:
    """Start the command (--json) in its own session and kill -9 its whole process group `seconds`
    after its first progress message, i.e. after start-up, whose length depends on how warm the
    disk is. True if it was killed (False: it had already finished)."""
    proc = _start(args)
    try:
        for line in proc.stdout:
            if _progress(line) is not None:
                break
        else:
            proc.wait()
            return False
        # the messages are drained meanwhile: a full pipe would stall the command
        drain = threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True)
        drain.start()
        try:
            proc.wait(timeout=seconds)
            return False
        except subprocess.TimeoutExpired:
            return _kill(proc)
        finally:
            drain.join()
    finally:
        proc.stdout.close()


def kill_when(args, stage: str, fraction: float) -> bool:
    """Start the command (--json) and kill -9 its process group as soon as it reports `fraction`
    of its `stage` done: a point inside the work however fast the machine is."""
    proc = _start(args)
    try:
        for line in proc.stdout:
            p = _progress(line)
            if p is not None and p["stage"] == stage and p["done"] >= fraction * p["total"] and p["done"] < p["total"]:
                return _kill(proc)
        proc.wait()
        return False
    finally:
        proc.stdout.close()


def timed(*args) -> float:
    """Seconds from the command's first progress message to its end (see kill_at)."""
    proc = _start(args)
    t0 = None
    for line in proc.stdout:
        if t0 is None and _progress(line) is not None:
            t0 = time.perf_counter()
    proc.stdout.close()
    assert proc.wait() == 0 and t0 is not None
    return time.perf_counter() - t0


def arrays(folder: Path) -> dict:
    return {name: np.load(folder / file) for name, (file, _, _) in dataset.ARRAYS.items()}


def digest(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- kill -9, then a re-run -------------------------------------------------------------------------

def test_prepare_killed_at_random_instants_then_rerun_equals_an_uninterrupted_run(demo_video, tmp_path):
    video, _ = demo_video
    straight = tmp_path / "straight"
    whole = timed("prepare", video, "-o", straight, "--no-report")
    out = tmp_path / "killed"
    rng = np.random.default_rng(17)
    killed = [kill_at(["prepare", video, "-o", out, "--no-report"], t)
              for t in sorted(rng.uniform(0.3, 0.9, 3) * whole)]
    assert any(killed)
    proc = run("prepare", video, "-o", out, "--no-report")
    assert "report:" not in proc.stdout                      # --no-report names no report
    a, b = arrays(straight), arrays(out)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert json.loads((out / "meta.json").read_text())["reference"] == \
        json.loads((straight / "meta.json").read_text())["reference"]
    assert not (out / pipeline.WORK).exists() and hidden_leftovers(out) == []


def test_prepare_killed_after_its_meta_then_rerun_clears_the_scratch_and_keeps_the_speaker(prepared_demo, tmp_path):
    """The instant a CI run hit: the speaker was complete (meta.json written) but its scratch folder
    not yet removed; the re-run finds the speaker done, keeps it byte for byte and clears the scratch."""
    from lipsync_engine.prepare.pipeline import PrepareOptions, prepare_speaker

    ds, _, truth = prepared_demo
    out = tmp_path / "speaker"
    shutil.copytree(ds.path, out)
    before = digest(out)
    (out / pipeline.WORK).mkdir()
    (out / pipeline.WORK / "track_0000_000000.npz").write_bytes(b"left by the killed run")
    video = Path(json.loads((out / "meta.json").read_text())["takes"][0]["path"])
    result = prepare_speaker([video], out, PrepareOptions(workers=2, chunk_frames=60))
    assert result.skipped and result.frames == len(truth.openness)
    assert not (out / pipeline.WORK).exists() and digest(out) == before


def test_train_killed_at_random_instants_then_resume_equals_an_uninterrupted_run(prepared_demo, tmp_path):
    ds, _, _ = prepared_demo
    train = ["train", ds.path, "--width", TINY_WIDTH, "--epochs", "4", "--batch-size", "32"]
    whole = timed(*train, "-o", tmp_path / "straight")
    out = tmp_path / "killed"
    rng = np.random.default_rng(3)
    for t in sorted(rng.uniform(0.35, 0.95, 3) * whole):
        kill_at([*train, "-o", out, "--resume"], t)
    run(*train, "-o", out, "--resume")
    a = json.loads((tmp_path / "straight" / "config.json").read_text())["history"]
    b = json.loads((out / "config.json").read_text())["history"]
    assert len(b) == 4
    assert [h["train"] for h in b] == pytest.approx([h["train"] for h in a], rel=1e-5)
    assert [h["val"] for h in b] == pytest.approx([h["val"] for h in a], rel=1e-5)
    assert hidden_leftovers(out) == []


@pytest.mark.parametrize("cut", [3, 4])
def test_a_checkpoint_cut_between_its_files_resumes_from_the_whole_epoch(prepared_demo, tmp_path, monkeypatch, cut):
    """Killed after the training state and the weights of an epoch are written but before its
    config.json: predicting says how to repair it, and --resume equals an uninterrupted run, also
    when the cut epoch was the last (then --resume only writes that epoch's files again)."""
    from lipsync_engine.model import checkpoint
    from lipsync_engine.model.checkpoint import load_model
    from lipsync_engine.model.network import ModelDimensions
    from lipsync_engine.model.train import TrainOptions, train_speaker

    ds, _, _ = prepared_demo
    tiny, opts = ModelDimensions().scaled(1 / 32), TrainOptions(epochs=4, batch_size=32, seed=5)
    straight = train_speaker(ds.path, tmp_path / "straight", opts, dims=tiny)
    out = tmp_path / "model"
    real = storage.write_json

    class Killed(BaseException):
        pass

    def dies_at_the_cut(path, data):
        if Path(path).name == checkpoint.CONFIG and data.get("epochs_done") == cut:
            raise Killed
        return real(path, data)

    monkeypatch.setattr(checkpoint.storage, "write_json", dies_at_the_cut)
    with pytest.raises(Killed):
        train_speaker(ds.path, out, opts, dims=tiny)
    monkeypatch.setattr(checkpoint.storage, "write_json", real)
    with pytest.raises(EngineError, match=f"weights are of epoch {cut} and config.json of epoch {cut - 1}.*resume the "
                                          "training"):
        load_model(out)
    result = train_speaker(ds.path, out, opts, resume=True)
    a = json.loads((tmp_path / "straight" / "config.json").read_text())["history"]
    b = json.loads((out / "config.json").read_text())["history"]
    assert [h["train"] for h in b] == pytest.approx([h["train"] for h in a], rel=1e-5)
    assert result.train_loss == pytest.approx(straight.train_loss, rel=1e-5)
    load_model(out)


def test_predict_killed_then_rerun_leaves_no_temporary_and_equals_a_whole_run(trained_demo, demo_video, tmp_path):
    model, _, _ = trained_demo
    video, _ = demo_video
    args = ["predict", model, video, "--no-preview"]
    run(*args, "-o", tmp_path / "straight")
    out = tmp_path / "killed"
    rng = np.random.default_rng(5)
    # killed at seeded points of the prediction itself: timed kills missed on a loaded machine
    killed = [kill_when([*args, "-o", out], "predict", f) for f in sorted(rng.uniform(0.2, 0.9, 2))]
    assert any(killed)
    run(*args, "-o", out, *(["--overwrite"] if out.exists() else []))
    assert hidden_leftovers(tmp_path) == []               # the killed runs' temporaries are gone
    for name in ("blendshapes.json", "vertices.npz", "mesh.pc2"):
        if (tmp_path / "straight" / name).is_file():
            assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_leftovers_of_a_killed_run_are_cleared_and_a_moved_result_restored(tmp_path):
    out = tmp_path / "result"
    dead = 2 ** 22 + 12345                                 # above pid_max's default: no such process
    (tmp_path / f".result.tmp-{dead}").mkdir()
    (tmp_path / f".result.old-{dead}").mkdir()             # killed between moving OUT aside and publishing
    (tmp_path / f".result.old-{dead}" / "result.json").write_text("{}")
    mine = tmp_path / f".result.tmp-{os.getpid()}"         # a live process's temporary is not touched
    mine.mkdir()
    storage.clear_leftovers(out)
    assert (out / "result.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "result"])


# -- replacing a speaker: atomic --------------------------------------------------------------------

def _no_face_video(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width = v.height = 128
        v.pix_fmt = "yuv420p"
        a = out.add_stream("aac", rate=16000)
        for _ in range(30):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((128, 128, 3), 120, np.uint8), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        tone = (0.1 * np.sin(np.arange(19200) / 16000 * 2 * np.pi * 220)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*a.encode(frame), *a.encode()]:
            out.mux(p)
    return path


def test_prepare_overwrite_keeps_the_old_speaker_until_the_new_one_is_complete(prepared_demo, demo_video, tmp_path):
    ds, _, _ = prepared_demo
    video, _ = demo_video
    speaker = tmp_path / "speaker"
    shutil.copytree(ds.path, speaker)
    before = digest(speaker)
    bad = _no_face_video(tmp_path / "no face.mp4")
    proc = run("prepare", bad, "-o", speaker, "--overwrite", "--no-report", check=False)
    assert proc.returncode == 1 and "no face found" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(speaker) == before                       # the failed replacement left it whole
    assert hidden_leftovers(tmp_path) == []
    proc = run("prepare", bad, "-o", tmp_path / "fresh", check=False)
    assert proc.returncode == 1 and not (tmp_path / "fresh").exists()   # a failed prepare leaves no folder
    # a run killed between its two renames: the old speaker goes back
    old = tmp_path / ".speaker.prepare-old"
    os.replace(speaker, old)
    pipeline._finish_swap(speaker)
    assert digest(speaker) == before and not old.exists()
    # the replacement that succeeds: other options, so other arrays
    run("prepare", video, "-o", speaker, "--overwrite", "--no-report", "--no-lighting-normalization")
    meta = json.loads((speaker / "meta.json").read_text())
    assert meta["options"]["lighting"]["normalize"] is False
    assert digest(speaker) != before and hidden_leftovers(tmp_path) == []


# -- a full disk -------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (root only: mount); None where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_prepare_on_a_full_disk_is_a_one_line_error_not_a_signal(demo_video, small_disk, tmp_path, monkeypatch):
    video, _ = demo_video
    if small_disk is None:  # no tmpfs here: the same refusal from the free-space check, told the disk is small
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(12 << 20, 12 << 20, 0))
        from lipsync_engine import cli

        code = cli.main(["prepare", str(video), "-o", str(tmp_path / "sp"), "--no-report", "--workers", "1"])
        assert code == 4
        return
    proc = run("prepare", video, "-o", small_disk / "speaker", "--no-report", check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "free disk space" in errors[0] and str(small_disk / "speaker") in errors[0]
    assert "Traceback" not in proc.stderr
    # the workers are gone with it
    assert subprocess.run(["pgrep", "-f", str(small_disk)], capture_output=True).stdout == b""


def test_a_read_only_disk_is_refused_before_any_work(demo_video, tmp_path):
    """A real read-only file system (a tmpfs mounted ro; root only), else a folder without write
    permission for a non-root user: exit code 4, one line naming the output, nothing written."""
    video, _ = demo_video
    where = tmp_path / "ro"
    where.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        where.chmod(0o555)
    try:
        for args in (["prepare", video, "-o", where / "speaker"], ["synth-video", where / "clip.mp4", "--duration", "0.2"]):
            proc = run(*args, check=False)
            errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
            assert proc.returncode == 4 and len(errors) == 1, proc.stderr[-2000:]
            assert "cannot write there" in errors[0] and str(where) in errors[0]
            if mounted:
                assert "read-only file system" in errors[0]
        assert list(where.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        else:
            where.chmod(0o755)


def test_memory_mapped_arrays_are_allocated_up_front(tmp_path, small_disk, monkeypatch):
    """A memory map larger than the free space fails at once with ENOSPC naming the file (a
    sparse one would kill its writer with SIGBUS later, in the middle of the work)."""
    where = small_disk
    if where is None:
        where = tmp_path

        def no_space(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", no_space)
    path = where / "atlas.npy"
    with pytest.raises(OSError) as info:
        with storage.atomic_path(path) as tmp:
            storage.open_memmap_allocated(tmp, np.uint8, (300, 256, 256, 3))   # 59 MB
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert list(where.iterdir()) == []
    small = storage.open_memmap_allocated(where / "small.npy", np.uint8, (10, 64, 64, 3))
    small[:] = 7
    del small
    assert np.load(where / "small.npy").sum() == 7 * 10 * 64 * 64 * 3


# -- suspicious input: warnings --------------------------------------------------------------------

def _stretched(video: Path, out: Path, width_factor: float = 1.25) -> Path:
    """The video with its frames stretched sideways (a face of another shape), with its audio."""
    import av
    import cv2

    silent = out.with_name(out.stem + "_silent.mp4")
    with av.open(str(video)) as src, av.open(str(silent), "w") as dst:
        vin = src.streams.video[0]
        v = dst.add_stream("libx264", rate=vin.average_rate)
        v.width, v.height = int(vin.width * width_factor) // 2 * 2, vin.height
        v.pix_fmt = "yuv420p"
        for frame in src.decode(vin):
            img = cv2.resize(frame.to_ndarray(format="rgb24"), (v.width, v.height))
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                dst.mux(p)
        for p in v.encode():
            dst.mux(p)
    return _mux_audio(video, silent, out)


def _mux_audio(video: Path, silent: Path, final: Path) -> Path:
    """`silent`'s picture with `video`'s sound, into `final`."""
    import av

    with av.open(str(silent)) as vsrc, av.open(str(video)) as asrc, av.open(str(final), "w") as dst:
        vs, as_ = vsrc.streams.video[0], asrc.streams.audio[0]
        vo, ao = dst.add_stream_from_template(vs), dst.add_stream_from_template(as_)
        for pkt in vsrc.demux(vs):
            if pkt.dts is not None:
                pkt.stream = vo
                dst.mux(pkt)
        for pkt in asrc.demux(as_):
            if pkt.dts is not None:
                pkt.stream = ao
                dst.mux(pkt)
    return final


def test_a_second_person_a_truncated_file_and_a_short_speaker_are_warned_about(demo_video, tmp_path):
    video, _ = demo_video
    other = _stretched(video, tmp_path / "other.mp4")
    # the same face, stretched 25% sideways, is another shape
    proc = run("prepare", video, other, "-o", tmp_path / "two", "--no-report")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:") and "shaped unlike" in ln]
    assert len(warnings) == 1, proc.stderr[-2000:]          # the take unlike the reference's, whichever that is
    assert ("other.mp4" in warnings[0]) != (video.name in warnings[0])
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert any("shaped unlike" in w for w in meta["warnings"])
    # one person: no such warning
    proc = run("prepare", video, "-o", tmp_path / "one", "--no-report")
    assert "shaped unlike" not in proc.stderr and "too little to train" not in proc.stderr   # 6 s of video
    # a file cut short: its header announces more frames than decode
    data = (tmp_path / "fast.mp4")
    _faststart(video, data)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data.read_bytes()[: int(data.stat().st_size * 0.6)])
    proc = run("prepare", cut, "-o", tmp_path / "cut", "--no-report")
    assert "frames its header announces could be decoded" in proc.stderr
    assert "too little to train" in proc.stderr           # what is left of it: under 5 s


def _faststart(video: Path, out: Path) -> None:
    """`video` re-muxed with its index first (so that a cut-off copy still opens)."""
    import av

    with av.open(str(video)) as src, av.open(str(out), "w", options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for pkt in src.demux():
            if pkt.dts is not None:
                pkt.stream = streams[pkt.stream.index]
                dst.mux(pkt)


def test_identity_measure_separates_a_stretched_face_from_the_same_face():
    from lipsync_engine.face.topology import load_topology

    face = load_topology().vertices.astype(np.float64)
    rng = np.random.default_rng(0)
    takes = face[None] + rng.normal(0, 0.002 * np.ptp(face), (20, 468, 3))
    same = normalize.face_shape(takes)
    assert normalize.shape_difference(same, face) < 0.01
    wide = face * np.array([1.15, 1.0, 1.0])
    assert normalize.shape_difference(wide, face) > normalize.IDENTITY_LIMIT
    rotated = face @ np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]).T * 3 + 5   # a pose, not a shape
    assert normalize.shape_difference(rotated, face) < 1e-9


def test_a_speaker_too_short_to_train_on_is_refused(prepared_demo, tmp_path):
    from lipsync_engine.model.train import TrainOptions, train_speaker

    ds, _, _ = prepared_demo
    short = tmp_path / "short"
    shutil.copytree(ds.path, short)
    meta = json.loads((short / "meta.json").read_text())
    keep = 1
    for name, (file, _, _) in dataset.ARRAYS.items():
        np.save(short / file, np.load(short / file)[:keep])
    meta["frames"] = keep
    (short / "meta.json").write_text(json.dumps(meta))
    (short / "blendshapes.npy").unlink(missing_ok=True)   # a fit of the whole speaker
    with pytest.raises(EngineError, match=r"short: too few frames to train on: 1 of 1 .* at least 25"):
        train_speaker(short, tmp_path / "model", TrainOptions(epochs=1))
    assert not (tmp_path / "model").exists()


def test_dubbing_another_person_is_warned_about(trained_demo, demo_video, tmp_path):
    model, _, _ = trained_demo
    video, _ = demo_video
    other = _stretched(video, tmp_path / "other.mp4")
    proc = run("dub", model, "--audio", video, "--video", other, "-o", tmp_path / "dubbed.mp4", "--audio-end", "2")
    assert "shaped unlike the speaker the model was trained on" in proc.stderr, proc.stderr[-2000:]
    proc = run("dub", model, "--audio", video, "--video", video, "-o", tmp_path / "same.mp4", "--audio-end", "2")
    assert "shaped unlike" not in proc.stderr


def test_damaged_speaker_and_model_files_are_one_line_errors(trained_demo, tmp_path):
    """A .npy cut short (a copy that did not finish) and a version written as text: one line each
    naming the file, exit code 1, nothing changed."""
    model, ds, _ = trained_demo
    speaker = tmp_path / "speaker"
    shutil.copytree(ds.path, speaker)
    data = (speaker / "vertices.npy").read_bytes()
    (speaker / "vertices.npy").write_bytes(data[: len(data) // 2])
    before = digest(speaker)
    proc = run("fit", speaker, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "vertices.npy: damaged or truncated" in proc.stderr
    assert digest(speaker) == before
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["format_version"] = "2.0"
    (copy / "config.json").write_text(json.dumps(config))
    proc = run("predict", copy, tmp_path / "none.wav", "-o", tmp_path / "p", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "config.json: format_version must be a whole number, found '2.0'" in proc.stderr
