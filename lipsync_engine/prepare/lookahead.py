"""Low-latency models: the spectrogram window shifted into the past (`lipsync train --lookahead`).

Owns: what a model's lookahead means, the spectrograms of a speaker with a shifted window, and
reading a prepared speaker's takes' audio again (take_audio; phones.py uses it too).
The paper's stack (audio.py) spans 240 ms centred on the frame, so a frame needs 120 ms of
future audio. A model trained with lookahead L ms hears the same 240 ms stack centred
120 - L ms before the frame (columns t - 240 + L .. t + L ms), so it needs only L ms of future
audio; predict.py and live.py shift their windows by window_shift_s(L). Models trained before
this option (no "lookahead_ms" in their options) are L = 120.
Must not: train or predict, or import bpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DatasetError, InputError
from ..io import media
from . import audio, dataset

PAPER_LOOKAHEAD_MS = 120.0     # ms: half of the paper's 240 ms window


def window_shift_s(lookahead_ms: float) -> float:
    """Seconds the window centre sits before the frame time: (120 - L) / 1000 (0 for the paper's window)."""
    return (PAPER_LOOKAHEAD_MS - float(lookahead_ms)) / 1000.0


def model_lookahead_ms(config: dict) -> float:
    """The lookahead (ms) a model was trained with (config.json options; 120 for older models)."""
    return float((config.get("options") or {}).get("lookahead_ms", PAPER_LOOKAHEAD_MS))


def take_audio(ds: dataset.SpeakerDataset, purpose: str, takes=None):
    """Yield (rows, media.AudioTrack at audio.SAMPLE_RATE) for each take of a prepared speaker that
    has frames (of `takes` only, a set of take numbers, when given), decoded from its source video;
    DatasetError naming the take when it cannot be read ("SPEAKER: <purpose> the source videos'
    audio, and take k cannot be read: ...")."""
    index = np.asarray(ds.frame_index)
    for k, take in enumerate(ds.meta["takes"]):
        rows = np.flatnonzero(index[:, 0] == k)
        if not len(rows) or (takes is not None and k not in takes):
            continue
        try:
            sound = media.load_audio(Path(take["path"]), audio.SAMPLE_RATE)
        except InputError as e:
            raise DatasetError(f"{ds.path}: {purpose} the source videos' audio, and take {k} cannot be read: "
                               f"{e}") from e
        yield rows, sound


def speaker_spectrograms(speaker_dir: Path | str, lookahead_ms: float) -> np.ndarray:
    """(N, 256, 24, 2) float32 spectrograms of a prepared speaker's frames with the window shifted
    for lookahead_ms, recomputed from its source videos' audio exactly as prepare.py computes
    spectrograms.npy (which it equals for 120 ms). DatasetError when a source video is gone."""
    ds = dataset.open_speaker(speaker_dir)
    if float(lookahead_ms) == PAPER_LOOKAHEAD_MS:
        return np.asarray(ds.spectrograms, np.float32)
    shift = window_shift_s(lookahead_ms)
    times = np.asarray(ds.frame_times, np.float64)
    out = np.empty((len(ds), audio.N_FREQ, audio.N_COLUMNS, 2), np.float32)
    purpose = f"a lookahead other than {PAPER_LOOKAHEAD_MS:g} ms recomputes the spectrograms from"
    for rows, sound in take_audio(ds, purpose):
        out[rows] = audio.spectrogram_frames(sound.samples, times[rows] - shift, sound.start_offset_s)
    return out
