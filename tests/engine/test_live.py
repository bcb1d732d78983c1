"""`lipsync live`: streamed frames equal `lipsync predict`, VMC over a real OSC server, no-microphone
errors, a late consumer, the recording, and low-latency (--lookahead) models."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lipsync_engine.io import media
from lipsync_engine.inference.live import LiveOptions, LiveStream
from lipsync_engine.inference.live_io import FileSource, LiveStats, Sink, run_live, silence_peak
from lipsync_engine.rig.names import ARKIT_NAMES
from lipsync_engine.inference.predictor import PredictOptions, frame_count, load_predictor
from lipsync_engine.core.progress import CancelToken
from lipsync_engine.demo.speech import synthesize_speech

ROOT = Path(__file__).resolve().parents[2]


def engine(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lipsync_engine", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    """4.4 s at 44.1 kHz stereo: a leading and an inner pause (silence handling), speech around them."""
    s = synthesize_speech(3.2, 16000, seed=3).samples
    x = np.concatenate([np.zeros(4000, np.float32), s[:26000], np.zeros(12000, np.float32), s[26000:]])
    t = np.arange(int(len(x) * 44100 / 16000)) / 44100
    y = np.interp(t, np.arange(len(x)) / 16000, x).astype(np.float32)
    path = tmp_path_factory.mktemp("live") / "line.wav"
    soundfile.write(path, np.stack([y, 0.5 * y], 1), 44100)
    return path


def frames_of(stdout: str) -> list[dict]:
    msgs = [json.loads(line) for line in stdout.splitlines()]
    assert msgs[-1][0] == "DONE" and msgs[-1][1]["exit_code"] == 0
    return [m[1] for m in msgs if m[0] == "FRAME"]


def test_file_input_equals_predict(trained_demo, speech_file, tmp_path):
    model = trained_demo[0]
    r = engine("--json", "live", model, "--input", speech_file, "--as-fast-as-possible", "--lookahead", 120,
               "--record", tmp_path / "take", "--no-preview")
    assert r.returncode == 0, r.stderr
    frames = frames_of(r.stdout)
    offline = load_predictor(model, "cpu").predict(speech_file, PredictOptions(atlas=False))
    assert [f["frame"] for f in frames] == list(range(len(offline)))
    streamed = np.array([f["blendshapes"] for f in frames])
    assert np.abs(streamed - offline.blendshapes).max() <= 0.02
    assert [f["silent"] for f in frames] == offline.silent.tolist() and offline.silent.sum() >= 10
    assert 0 < offline.blendshapes.max()          # a trained blendshape head, not zeros
    with np.load(tmp_path / "take" / "vertices.npz") as z:     # the recording: what was streamed
        assert np.abs(z["blendshapes"] - streamed).max() <= 1e-4
        assert np.abs(z["vertices"] - offline.vertices).max() < 1e-3
    manifest = json.loads((tmp_path / "take" / "result.json").read_text())
    assert manifest["frames"] == len(frames) and Path(manifest["audio"]).is_file()


@pytest.mark.parametrize("fps,atlas,lookahead", [(24.0, True, None), (60.0, False, None), (30.0, False, 40.0)])
def test_stream_exact_and_reduced_lookahead(trained_demo, speech_file, fps, atlas, lookahead):
    """Block by block in Python: exact (the network's lips too) at the model's lookahead; with less,
    the frame count, order and silence are kept and the numbers stay near (the future is mirrored).
    The mouth bank's lips stream without the +-1 frame smoothing of their blend weights (they would
    need 3 more frames of future): close to predict's, not equal."""
    p = load_predictor(trained_demo[0], "cpu")
    options = PredictOptions(fps=fps, atlas=atlas, texture="network" if atlas else "auto")
    offline = p.predict(speech_file, options)
    samples = media.load_audio(speech_file, 16000).samples
    stream = LiveStream(p, LiveOptions(options, lookahead_ms=lookahead), silence_peak(samples))
    out = []
    for i in range(0, len(samples), 256):
        out += stream.push(samples[i:i + 256])
    out += stream.finish()
    assert [f.index for f in out] == list(range(frame_count(len(samples) / 16000, fps)))
    bs = np.stack([f.blendshapes for f in out])
    if lookahead is None:
        assert np.abs(bs - offline.blendshapes).max() < 1e-5
        if atlas:
            assert np.abs(np.stack([f.lips for f in out]).astype(int) - offline.lips).max() <= 1
            bank = PredictOptions(fps=fps, atlas=True)
            stream = LiveStream(p, LiveOptions(bank), silence_peak(samples))
            lips = [f.lips for i in range(0, len(samples), 256) for f in stream.push(samples[i:i + 256])]
            lips = np.stack(lips + [f.lips for f in stream.finish()]).astype(float)
            assert np.abs(lips - p.predict(speech_file, bank).lips).mean() < 4.0   # grey levels
    else:
        assert np.corrcoef(bs[:, ARKIT_NAMES.index("jawOpen")], offline.blendshapes[:, ARKIT_NAMES.index("jawOpen")])[0, 1] > 0.8
    assert [f.silent for f in out] == offline.silent.tolist()


def test_vmc_over_osc(trained_demo, speech_file):
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import BlockingOSCUDPServer

    got = {"val": [], "apply": 0}
    d = Dispatcher()
    d.map("/VMC/Ext/Blend/Val", lambda addr, name, value: got["val"].append((name, value)))
    d.map("/VMC/Ext/Blend/Apply", lambda addr, *a: got.__setitem__("apply", got["apply"] + 1))
    # The engine sends the line's bundles (about 2 KB each) as fast as it can. The receiver drains them
    # on one thread (a thread per datagram fell behind on a busy machine) into a buffer large enough
    # for all of them where the system allows it: a datagram the kernel drops here is the test's loss.
    server = BlockingOSCUDPServer(("127.0.0.1", 0), d)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        r = engine("live", trained_demo[0], "--input", speech_file, "--as-fast-as-possible", "--vmc",
                   f"127.0.0.1:{port}", "--stats")
        assert r.returncode == 0, r.stderr
        deadline = time.time() + 5
        expected = frame_count(media.load_audio(speech_file, 16000).duration_s, 30.0)
        while got["apply"] < expected and time.time() < deadline:
            time.sleep(0.05)
    finally:
        server.shutdown()
    assert got["apply"] == expected
    assert len(got["val"]) == 52 * expected
    assert {n for n, _ in got["val"]} == set(ARKIT_NAMES)
    values = np.array([v for _, v in got["val"]])
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0
    assert "latency" in r.stdout and "p99" in r.stdout


def test_mic_without_device_is_usage_error(trained_demo):
    r = engine("live", trained_demo[0], "--input", "mic", timeout=60)
    if r.returncode == 0:
        pytest.skip("this machine has a working microphone")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: microphone:")
    r = engine("--json", "live", trained_demo[0], "--input", "mic", timeout=60)
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert msgs[-2][0] == "ERROR" and msgs[-1] == ["DONE", {"exit_code": 2, "protocol": 1}]


class _SlowSink(Sink):
    name = "slow"

    def send(self, frame) -> None:
        time.sleep(0.25)                    # a consumer far slower than 30 frames/s


def test_late_consumer_never_holds_the_engine_back(trained_demo, speech_file):
    p = load_predictor(trained_demo[0], "cpu")
    stats = LiveStats()
    sink = _SlowSink(stats, timed=True)
    source = FileSource(speech_file, realtime=True)
    t0 = time.monotonic()
    run_live(p, source, [sink], LiveOptions(), stats, CancelToken())
    wall = time.monotonic() - t0
    sink.close()
    duration = len(source.samples) / 16000
    assert stats.frames == frame_count(duration, 30.0)          # every frame was made, on time
    assert wall < duration + 1.0
    assert stats.dropped["slow"] >= stats.frames // 2            # and most were dropped, counted


def test_lookahead_spectrograms_and_option(prepared_demo):
    from lipsync_engine.prepare.lookahead import speaker_spectrograms, window_shift_s
    from lipsync_engine.model.train import TrainOptions

    ds = prepared_demo[0]
    assert np.array_equal(speaker_spectrograms(ds.path, 120 - 1e-9), np.asarray(ds.spectrograms))
    shifted = speaker_spectrograms(ds.path, 40.0)
    assert shifted.shape == ds.spectrograms.shape and not np.allclose(shifted, ds.spectrograms)
    assert window_shift_s(40) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="lookahead_ms"):
        TrainOptions(lookahead_ms=200)


def test_lips_stream_in_the_json_frames_as_lossless_png(trained_demo, speech_file):
    """--lips: every FRAME carries the lip crop (base64 PNG), the very crop the stream predicted."""
    import base64

    import cv2

    model = trained_demo[0]
    r = engine("--json", "live", model, "--input", speech_file, "--as-fast-as-possible", "--lips")
    assert r.returncode == 0, r.stderr
    frames = frames_of(r.stdout)
    got = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(f["lips_png"]), np.uint8),
                                              cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in frames])
    p = load_predictor(model, "cpu")
    samples = media.load_audio(speech_file, 16000).samples
    stream = LiveStream(p, LiveOptions(PredictOptions(atlas=True)), silence_peak(samples))
    want = [f.lips for i in range(0, len(samples), 160) for f in stream.push(samples[i:i + 160])]
    want = np.stack(want + [f.lips for f in stream.finish()])
    assert got.shape == want.shape == (len(frames), 128, 128, 3)
    assert np.array_equal(got, want)
    assert got.std() > 5                                      # a picture, not a blank
