"""`lipsync say`: offline espeak-ng speech, then exactly `lipsync predict` on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lipsync_engine.io import media, tts
from lipsync_engine.prepare import audio
from lipsync_engine.core.errors import InputError
from lipsync_engine.prepare.normalize import mouth_openness

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests for a while."


def engine(*args):
    return subprocess.run([sys.executable, "-m", "lipsync_engine", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_synthesize_duration_rate_and_voices():
    a = tts.synthesize(SENTENCE)
    words = len(SENTENCE.split())
    assert a.sample_rate == 22050 and 0.6 < a.duration_s / (words / 175 * 60) < 1.8
    slow = tts.synthesize(SENTENCE, rate_wpm=100)
    assert slow.duration_s > 1.4 * a.duration_s
    assert tts.synthesize("Guten Morgen", "de").duration_s > 0.3
    langs = {v.language for v in tts.list_voices()}
    assert {"en-us", "en-gb", "de", "fr-fr", "es"} <= langs and len(langs) > 50
    assert all(tts.synthesize("Bonjour", v).duration_s > 0.2 for v in ("fr-fr", "fr", "roa/fr"))


@pytest.mark.parametrize("text,voice,match", [("", "en-us", "text is empty"), ("   ", "en-us", "text is empty"),
                                              ("hello", "xx-klingon", "unknown voice")])
def test_bad_text_or_voice(text, voice, match):
    with pytest.raises(InputError, match=match):
        tts.synthesize(text, voice)


def test_say_cli_errors_are_one_line(trained_demo, tmp_path):
    for args, match in (([""], "text is empty"), (["hello", "--voice", "xx-klingon"], "unknown voice")):
        r = engine("say", trained_demo[0], *args, "-o", tmp_path / "o")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0] and not (tmp_path / "o").exists()


def test_say_predicts_as_predict(trained_demo, tmp_path):
    out = tmp_path / "say out"
    r = engine("--json", "say", trained_demo[0], SENTENCE, "-o", out, "--no-preview")
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert msgs[-1] == ["DONE", {"exit_code": 0, "protocol": 1}]
    manifest = json.loads((out / "result.json").read_text())
    speech = media.load_audio(out / "speech.wav", audio.SAMPLE_RATE)
    assert manifest["audio"] == str((out / "speech.wav").resolve()) and manifest["say"]["voice"] == "en-us"
    assert 2.0 < speech.duration_s < 8.0 and manifest["frames"] == int(speech.duration_s * 30 + 0.5)
    # exactly `lipsync predict` on speech.wav
    r2 = engine("predict", trained_demo[0], out / "speech.wav", "-o", tmp_path / "pred", "--no-preview")
    assert r2.returncode == 0, r2.stderr
    with np.load(out / "vertices.npz") as a, np.load(tmp_path / "pred" / "vertices.npz") as b:
        assert np.array_equal(a["blendshapes"], b["blendshapes"]) and np.array_equal(a["vertices"], b["vertices"])
        openness, times = mouth_openness(a["vertices"]), a["times"]
    env = audio.envelope(speech.samples, times)
    r_env = np.corrcoef(openness, env)[0, 1]
    assert r_env >= 0.5, r_env
