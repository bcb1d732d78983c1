"""The add-on's engine client and protocol reader, without Blender: a fake engine and the real one."""

from __future__ import annotations

import json
import re
import os
import sys
import time
from pathlib import Path

import pytest

from blender_addon.core import client

FAKE = Path(__file__).parent / "fake_engine"


def fake_spec(**kw) -> client.EngineSpec:
    return client.EngineSpec(sys.executable, str(FAKE), **kw)


@pytest.fixture
def mode(monkeypatch):
    def set_mode(name: str):
        monkeypatch.setenv("LIPSYNC_FAKE_MODE", name)
    return set_mode


def test_parse_line_accepts_protocol_messages_and_names_bad_lines():
    assert client.parse_line('["DONE", {"exit_code": 0, "protocol": 1}]') == client.Message(
        "DONE", {"exit_code": 0, "protocol": 1})
    for bad, why in (("hello", "not JSON"), ('{"a": 1}', "not a [TYPE"), ('["NOPE", {}]', "unknown message type"),
                     ('["DONE", 3]', "not a [TYPE")):
        with pytest.raises(client.ProtocolError, match=re.escape(why)):
            client.parse_line(bad)
    assert client.MESSAGE_TYPES == ("STATUS", "PROGRESS", "WARN", "ERROR", "RESULT", "DONE", "FRAME")


def test_command_and_environment():
    spec = client.EngineSpec("/opt/py/bin/python", "/addon/engine")
    assert spec.command("train", "SPK", "-o", Path("M")) == [
        "/opt/py/bin/python", "-m", "lipsync_engine", "--json", "train", "SPK", "-o", "M"]
    env = spec.environment({"PYTHONHOME": "/blender/python", "PYTHONPATH": "/elsewhere", "HOME": "/h"})
    assert env["PYTHONPATH"] == "/addon/engine" and "PYTHONHOME" not in env and env["HOME"] == "/h"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "PYTHONPATH" not in client.EngineSpec("/py").environment({"PYTHONPATH": "/x"})


def test_successful_run_collects_progress_results_and_warnings(mode, tmp_path):
    mode("ok")
    seen = []
    job = fake_spec().job("Train", "train", "a b", log_path=tmp_path / "logs" / "train.log").start()
    outcome = job.wait(30, on_message=seen.append)
    assert outcome.ok and outcome.exit_code == 0 and outcome.error == ""
    kinds = [m.kind for m in seen]
    assert kinds[0] == "STATUS" and kinds[-1] == "DONE" and kinds.count("PROGRESS") == 5
    assert job.progress.stage == "train" and job.progress.done == 5 and job.progress.fraction == 1.0
    assert outcome.results[0]["argv"] == ["--json", "train", "a b"]
    assert outcome.warnings == ["fake warning"]
    assert "fake engine log line" in (tmp_path / "logs" / "train.log").read_text()


def test_engine_error_becomes_its_one_line_message(mode):
    mode("error")
    outcome = fake_spec().job("Prepare", "prepare", "x").start().wait(30)
    assert outcome.status == "error" and outcome.exit_code == 1
    assert outcome.error == "Prepare: clip.mp4: no face found in any of its 75 frames"


def test_crash_without_done_reports_the_signal_and_the_stderr_tail(mode):
    mode("crash")
    outcome = fake_spec().job("Train", "train").start().wait(30)
    assert outcome.status == "crashed" and outcome.exit_code == -9
    assert "signal 9 before finishing" in outcome.error and "MemoryError: fake out of memory" in outcome.error
    assert "Traceback (most recent call last)" in outcome.stderr_tail


def test_hang_is_detected_and_the_engine_stopped(mode):
    mode("hang")
    t0 = time.monotonic()
    job = fake_spec(hang_timeout_s=1.0).job("Train", "train").start()
    outcome = job.wait(30)
    assert outcome.status == "hung" and "stopped responding" in outcome.error
    assert time.monotonic() - t0 < 10
    assert job._proc.poll() is not None


def _alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_soon(pid: int, within_s: float = 3.0) -> bool:
    end = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see the worker")
def test_dead_engine_with_a_worker_holding_stdout_ends_the_job(mode, tmp_path, monkeypatch):
    """issue 17: the engine's main process is killed while a worker keeps stdout and stderr open;
    the client sees the exit (not end-of-file), stops the worker's process group, and says so."""
    mode("orphan")
    monkeypatch.setenv("LIPSYNC_FAKE_CHILD", str(tmp_path / "child.pid"))
    t0 = time.monotonic()
    outcome = fake_spec().job("Prepare", "prepare").start().wait(30)
    assert time.monotonic() - t0 < 8
    assert outcome.status == "crashed" and outcome.exit_code == -9
    assert "signal 9 before finishing" in outcome.error and "worker processes were stopped" in outcome.error
    assert _gone_soon(int((tmp_path / "child.pid").read_text()))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see the worker")
@pytest.mark.parametrize("stop", ["cancel", "kill"])
def test_cancel_and_kill_end_the_engines_workers_too(mode, tmp_path, monkeypatch, stop):
    mode("orphan-slow")
    monkeypatch.setenv("LIPSYNC_FAKE_CHILD", str(tmp_path / "child.pid"))
    job = fake_spec().job("Train", "train").start()
    while job.progress.done < 3:
        job.poll()
        time.sleep(0.02)
    child = int((tmp_path / "child.pid").read_text())
    assert _alive(child)
    t0 = time.monotonic()
    getattr(job, stop)()
    outcome = job.wait(30)
    assert time.monotonic() - t0 < 8
    assert outcome.status == "cancelled"
    assert _gone_soon(child)


def test_cancel_sends_sigint_and_the_engine_exits_130(mode):
    mode("slow")
    job = fake_spec().job("Train", "train").start()
    while job.progress.done < 3:
        job.poll()
        time.sleep(0.02)
    job.cancel()
    outcome = job.wait(30)
    assert outcome.status == "cancelled" and outcome.exit_code == 130 and outcome.cancelled
    assert 3 <= job.progress.done < 200
    assert "running it again resumes" in outcome.error


def test_missing_engine_python_is_a_clear_error():
    job = client.EngineSpec("/nonexistent/engine/bin/python").job("Check engine", "info").start()
    outcome = job.wait(5)
    assert outcome.status == "missing" and outcome.exit_code is None
    assert "/nonexistent/engine/bin/python" in outcome.error and "Preferences" in outcome.error


def test_python_without_the_engine_is_a_clear_error(tmp_path):
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")    # -S: no site-packages
    wrapper.chmod(0o755)
    outcome = client.EngineSpec(str(wrapper)).job("Check engine", "info").start().wait(30)
    assert outcome.status == "missing" and "not importable" in outcome.error


def test_non_protocol_lines_and_newer_protocol_become_warnings(mode):
    mode("garbage")
    outcome = fake_spec().job("X", "x").start().wait(30)
    assert outcome.ok and any("non-protocol line" in w for w in outcome.warnings)
    mode("newer")
    outcome = fake_spec().job("X", "x").start().wait(30)
    assert outcome.ok and any("protocol 2" in w for w in outcome.warnings)


def test_usage_error_quotes_the_engine(mode):
    mode("usage")
    outcome = fake_spec().job("Train", "train").start().wait(30)
    assert outcome.status == "error" and outcome.exit_code == 2
    assert "unrecognized arguments: --bogus" in outcome.error


def test_chain_runs_in_order_and_stops_at_the_first_failure(mode, tmp_path, monkeypatch):
    log = tmp_path / "argv.log"
    monkeypatch.setenv("LIPSYNC_FAKE_LOG", str(log))
    mode("ok")
    spec = fake_spec()
    chain = client.JobChain([spec.job("Prepare", "prepare"), spec.job("Fit", "fit"), spec.job("Train", "train")])
    fractions = []
    outcome = chain.start().wait(60, on_message=lambda m: fractions.append(chain.fraction))
    assert outcome.ok and len(outcome.results) == 3
    assert [json.loads(line)[1] for line in log.read_text().splitlines()] == ["prepare", "fit", "train"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    mode("error")
    log.unlink()
    outcome = client.JobChain([spec.job("Prepare", "prepare"), spec.job("Train", "train")]).start().wait(60)
    assert outcome.status == "error" and len(log.read_text().splitlines()) == 1


def test_chain_cancel_stops_the_current_job_and_starts_no_other(mode, tmp_path, monkeypatch):
    log = tmp_path / "argv.log"
    monkeypatch.setenv("LIPSYNC_FAKE_LOG", str(log))
    mode("slow")
    spec = fake_spec()
    chain = client.JobChain([spec.job("Prepare", "prepare"), spec.job("Train", "train")]).start()
    while chain.current.progress.done < 2:
        chain.poll()
        time.sleep(0.02)
    assert chain.status_text().startswith("Prepare (1/2): train ")
    chain.cancel()
    outcome = chain.wait(30)
    assert outcome.cancelled and len(log.read_text().splitlines()) == 1


def test_progress_eta_and_format():
    p = client.ProgressState()
    p.update({"stage": "train", "done": 0, "total": 100}, now=10.0)
    assert p.eta_s is None
    p.update({"stage": "train", "done": 25, "total": 100, "message": "epoch 1/4"}, now=20.0)
    assert p.eta_s == pytest.approx(30.0) and p.fraction == 0.25 and p.message == "epoch 1/4"
    p.update({"stage": "atlas", "done": 1, "total": 10}, now=21.0)     # a new stage restarts the rate
    assert p.eta_s is None
    assert [client.format_eta(s) for s in (None, 5, 75, 3725)] == ["", "5s", "1m15s", "1h02m"]


def test_default_engine_python_prefers_env_then_created_venv(tmp_path, monkeypatch):
    monkeypatch.delenv("LIPSYNC3D_ENGINE_PYTHON", raising=False)
    root = tmp_path / "repo" / "blender_addon"
    root.mkdir(parents=True)
    assert client.default_engine_python(root, tmp_path / "user") == ""
    venv_py = client.venv_python(tmp_path / "user" / "engine-venv")
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text("")
    assert client.default_engine_python(root, tmp_path / "user") == str(venv_py)
    monkeypatch.setenv("LIPSYNC3D_ENGINE_PYTHON", "/my/python")
    assert client.default_engine_python(root, tmp_path / "user") == "/my/python"


def test_bundled_engine_dir_finds_the_checkout():
    assert client.bundled_engine_dir() == Path(__file__).resolve().parents[2]


def test_real_engine_info_speaks_the_protocol():
    """The real engine's `info` subcommand through the client: every line parses, DONE is last."""
    spec = client.EngineSpec(sys.executable, str(client.bundled_engine_dir()))
    seen = []
    outcome = spec.job("Check engine", "info").start().wait(120, on_message=seen.append)
    assert outcome.ok, outcome.error
    assert seen[-1].kind == "DONE" and seen[-1].payload == {"exit_code": 0, "protocol": 1}
    info = outcome.results[0]
    from lipsync_engine.core.version import __version__
    assert info["engine_version"] == __version__ and info["protocol"] == 1
    assert Path(info["engine_path"]) == client.bundled_engine_dir() / "lipsync_engine"
    assert info["torch"].startswith("2.") and info["device"] in ("cpu", "cuda", "mps")
    assert os.path.basename(info["engine_path"]) == "lipsync_engine"


def test_warm_server_runs_jobs_one_process_each_with_its_own_messages(mode, tmp_path):
    """server.py: ServeJobs of one EngineServer (`lipsync serve`) behave as EngineJobs, in one process."""
    from blender_addon.core import server

    mode("ok")
    engine = server.EngineServer(fake_spec(), log_path=tmp_path / "serve.log")
    try:
        outcomes = []
        for name in ("first", "second"):
            seen = []
            job = engine.job(f"Predict {name}", "predict", "MODEL", f"{name}.wav", "-o", str(tmp_path / name)).start()
            outcomes.append(job.wait(30, on_message=seen.append))
            assert [m.kind for m in seen][-1] == "DONE" and all(m.payload["id"] == job.request_id for m in seen)
            assert job.progress.done == 5 and outcomes[-1].warnings == ["fake warning"]
        assert all(o.ok for o in outcomes) and {o.results[0]["pid"] for o in outcomes} == {engine.pid}
        assert [o.results[0]["argv"][2:4] for o in outcomes] == [["MODEL", "first.wav"], ["MODEL", "second.wav"]]
        assert engine.alive and outcomes[0].log_path == str(tmp_path / "serve.log")
    finally:
        engine.shutdown()
    assert not engine.alive and "fake engine log line" in (tmp_path / "serve.log").read_text()


def test_warm_server_hang_usage_and_missing_python(mode, tmp_path):
    from blender_addon.core import server

    mode("hang")
    engine = server.EngineServer(fake_spec(hang_timeout_s=1.0))
    outcome = engine.job("Predict", "predict", "M", "a.wav").start().wait(30)
    assert outcome.status == "hung" and "stopped responding" in outcome.error and not engine.alive
    mode("usage")                                    # argparse refused the request: its one line, the server goes on
    engine = server.EngineServer(fake_spec())
    try:
        outcome = engine.job("Predict", "predict", "--bogus").start().wait(30)
        assert outcome.status == "error" and outcome.error == "Predict: lipsync: error: unrecognized arguments: --bogus"
        assert engine.alive
    finally:
        engine.shutdown()
    missing = server.EngineServer(client.EngineSpec(str(tmp_path / "no-python")))
    outcome = missing.job("Predict", "predict").start().outcome
    assert outcome.status == "missing" and "engine Python not found or not runnable" in outcome.error
