"""Interchange files for per-frame blendshape coefficients.

Owns: writing (atomically) and reading
- Live Link Face takes (.csv): the exact header of Epic's Live Link Face app
  (interop.LIVELINK_HEADER), one row per frame, "HH:MM:SS:FF.mmm" timecodes, 61 values;
- a plain JSON animation: {"names", "fps", "frames": [[...], ...]};
- Rhubarb Lip Sync mouth cues for 2D mouth charts, TSV and JSON, as Rhubarb itself writes
  them (DanielSWolf/rhubarb-lip-sync, README.adoc "Output formats": TSV lines
  "<seconds>\\t<shape>" with a final line at the end of the recording holding the closed
  mouth; JSON {"metadata": {"soundFile", "duration"}, "mouthCues": [{"start", "end",
  "value"}]}; times in seconds, multiples of 0.01).
Must not: fit, classify or rename (names.py does); it writes what it is given.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import storage
from ..core.errors import InputError
from ..core.interop import (ARKIT_NAMES, LIVELINK_HEADER, LIVELINK_POSE, LIVELINK_SHAPES, LIVELINK_VALUE_COUNT,
                            arkit_index, normalize_name)

ANIMATION_FORMAT = "lipsync3d-blendshape-animation"
ANIMATION_VERSION = 1
VALUE_DECIMALS = 6          # digits after the point for coefficients in CSV/JSON
RHUBARB_TIME_STEP = 0.01    # Rhubarb's cue times are multiples of 10 ms
_TIMECODE = re.compile(r"^(\d+):(\d{2}):(\d{2})[:;](\d+)(?:\.(\d+))?$")


def reorder_to_arkit(coefficients: np.ndarray, names) -> tuple[np.ndarray, tuple[str, ...]]:
    """(F, K) coefficients under `names` -> ((F, 52) in ARKIT_NAMES order, ARKit names missing).

    Names may be spelled in any case/separator style; missing ARKit channels are 0 and
    returned so the caller can report them. ValueError for a name that is not ARKit's.
    """
    c = np.asarray(coefficients, np.float64)
    names = list(names)
    if c.ndim != 2 or c.shape[1] != len(names):
        raise ValueError(f"coefficients must be (frames, {len(names)}) for {len(names)} names, got {c.shape}")
    out = np.zeros((len(c), len(ARKIT_NAMES)))
    idx = [arkit_index(n) for n in names]
    if len(set(idx)) != len(idx):
        raise ValueError("the same ARKit name appears twice in names")
    out[:, idx] = c
    missing = tuple(n for i, n in enumerate(ARKIT_NAMES) if i not in set(idx))
    return out, missing


@dataclass(frozen=True, eq=False)
class LiveLinkTake:
    """A Live Link Face take read back from its CSV.

    coefficients : (F, 52) float64 in ARKIT_NAMES order (camelCase). pose : (F, 9) the
    HeadYaw ... RightEyeRoll columns (zeros if the file has none). timecodes : (F,) strings.
    seconds : (F,) float64, each timecode in seconds at the take's fps.
    """

    coefficients: np.ndarray
    pose: np.ndarray
    timecodes: tuple
    seconds: np.ndarray
    fps: float


# ---------------------------------------------------------------------------------------------
# Live Link Face CSV
# ---------------------------------------------------------------------------------------------

def frame_timecode(frame: int, fps: float, start_s: float = 0.0) -> str:
    """Timecode "HH:MM:SS:FF.mmm" of frame `frame` at `fps`, starting at `start_s` seconds.

    FF counts frames within the second (rounded-up fps of them, e.g. 0-29 at 29.97) and
    .mmm is the sub-frame fraction in thousandths, as in Live Link Face takes
    ("14:03:52:28.207"); frames on the fps grid have ".000".

    Example: ``frame_timecode(45, 30.0) == "00:00:01:15.000"``.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    t = start_s + frame / fps
    ticks = round(t * fps * 1000)                       # thousandths of a frame, exact on the grid
    whole_s = math.floor(ticks / (fps * 1000) + 1e-9)
    rest = ticks - round(whole_s * fps * 1000)
    ff, sub = divmod(max(rest, 0), 1000)
    ff = min(ff, math.ceil(fps) - 1)
    h, rem = divmod(whole_s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{sub:03d}"


def parse_timecode(text: str) -> tuple[int, int, int, float]:
    """"HH:MM:SS:FF[.sss]" -> (hours, minutes, seconds, frames + sub-frame fraction)."""
    m = _TIMECODE.match(text.strip())
    if not m:
        raise ValueError(f"not a timecode HH:MM:SS:FF.mmm: {text!r}")
    h, mi, s, ff, frac = m.groups()
    return int(h), int(mi), int(s), int(ff) + (float("0." + frac) if frac else 0.0)


def timecode_seconds(text: str, fps: float) -> float:
    h, m, s, frames = parse_timecode(text)
    return h * 3600 + m * 60 + s + frames / fps


def _start_seconds(start_timecode: str, fps: float) -> float:
    return timecode_seconds(start_timecode, fps)


def write_livelink_csv(path: Path | str, coefficients: np.ndarray, names, fps: float,
                       start_timecode: str = "00:00:00:00.000", pose: np.ndarray | None = None) -> tuple:
    """Write a Live Link Face take: the standard header, then one row per frame.

    Parameters
    ----------
    coefficients : (F, K) values in [0, 1] under `names` (ARKit names, any spelling;
        reordered into Live Link Face's column order).
    fps : frames per second of the timecodes; start_timecode : the first row's timecode.
    pose : optional (F, 9) HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw ... RightEyeRoll; zeros if None.

    Returns the ARKit names that were not given and were written as 0 (report them).
    Each row: Timecode, BlendShapeCount (61), 52 shape values, 9 pose values.
    """
    arkit, missing = reorder_to_arkit(coefficients, names)
    pose = np.zeros((len(arkit), len(LIVELINK_POSE))) if pose is None else np.asarray(pose, np.float64)
    if pose.shape != (len(arkit), len(LIVELINK_POSE)):
        raise ValueError(f"pose must be ({len(arkit)}, {len(LIVELINK_POSE)}), got {pose.shape}")
    order = [ARKIT_NAMES.index(_ARKIT_BY_KEY[normalize_name(n)]) for n in LIVELINK_SHAPES]
    values = np.concatenate([np.clip(arkit[:, order], 0.0, 1.0), pose], axis=1)
    start = _start_seconds(start_timecode, fps)
    lines = [LIVELINK_HEADER]
    fmt = f"{{:.{VALUE_DECIMALS}f}}"
    for i, row in enumerate(values):
        cells = [frame_timecode(i, fps, start), str(LIVELINK_VALUE_COUNT)] + [fmt.format(x) for x in row]
        lines.append(",".join(cells))
    _write_text(Path(path), "\n".join(lines) + "\n")
    return missing


_ARKIT_BY_KEY = {normalize_name(n): n for n in ARKIT_NAMES}


def read_livelink_csv(path: Path | str, fps: float = 60.0) -> LiveLinkTake:
    """Read a Live Link Face take (ours or the app's). Columns are found by name (any case).

    fps : the take's frame rate, used only to turn FF.mmm into seconds (the app records at 60
    by default; our files state theirs in their name only, so pass it).
    Raises InputError naming the file if the header lacks a shape column or a row is malformed.
    """
    path = Path(path)
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e})") from e
    if not rows or normalize_name(rows[0][0]) != "timecode":
        raise InputError(f"{path}: not a Live Link Face take (the first column must be Timecode)")
    col = {normalize_name(h): i for i, h in enumerate(rows[0])}
    lacking = [n for n in LIVELINK_SHAPES if normalize_name(n) not in col]
    if lacking:
        raise InputError(f"{path}: missing blendshape columns {lacking}")
    body = [r for r in rows[1:] if r]
    try:
        table = np.array([[float(r[col[normalize_name(n)]]) for n in ARKIT_NAMES] for r in body]).reshape(-1, 52)
        pose = np.array([[float(r[col[normalize_name(n)]]) if normalize_name(n) in col else 0.0 for n in LIVELINK_POSE]
                         for r in body]).reshape(-1, len(LIVELINK_POSE))
        stamps = tuple(r[0] for r in body)
        seconds = np.array([timecode_seconds(s, fps) for s in stamps])
    except (ValueError, IndexError) as e:
        raise InputError(f"{path}: malformed row ({e})") from e
    return LiveLinkTake(table, pose, stamps, seconds, float(fps))


# ---------------------------------------------------------------------------------------------
# Plain JSON animation
# ---------------------------------------------------------------------------------------------

def write_coefficients_json(path: Path | str, coefficients: np.ndarray, names, fps: float,
                            metadata: dict | None = None) -> None:
    """Write {"format", "format_version", "names", "fps", "frame_count", "metadata", "frames"}.

    frames : one list per frame of len(names) values (VALUE_DECIMALS digits), in `names` order.
    """
    c = np.asarray(coefficients, np.float64)
    names = [str(n) for n in names]
    if c.ndim != 2 or c.shape[1] != len(names):
        raise ValueError(f"coefficients must be (frames, {len(names)}), got {c.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    data = {"format": ANIMATION_FORMAT, "format_version": ANIMATION_VERSION, "names": names, "fps": float(fps),
            "frame_count": int(len(c)), "metadata": metadata or {},
            "frames": np.round(c, VALUE_DECIMALS).tolist()}
    _write_text(Path(path), json.dumps(data, separators=(",", ":")) + "\n")


def read_coefficients_json(path: Path | str) -> tuple[tuple, np.ndarray, float]:
    """(names, (F, K) coefficients, fps) from write_coefficients_json's file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        names, fps = tuple(d["names"]), float(d["fps"])
        frames = np.asarray(d["frames"], np.float64).reshape(-1, len(names))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a blendshape animation JSON ({e})") from e
    return names, frames, fps


# ---------------------------------------------------------------------------------------------
# Rhubarb Lip Sync mouth cues
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MouthCue:
    start: float    # seconds, a multiple of 0.01
    end: float
    value: str      # mouth shape (A-H, X, or a display name)


def mouth_cues(labels, fps: float, rename: dict | None = None) -> tuple[list[MouthCue], float]:
    """Per-frame shapes (F,) -> (cues, duration): runs of equal shapes, times on Rhubarb's 10 ms grid.

    Frame k covers [k / fps, (k + 1) / fps). Cue boundaries are rounded to 0.01 s; a cue that
    rounds to nothing is absorbed by its neighbours. duration is F / fps truncated to 0.01 s,
    as Rhubarb does. rename : optional {shape: name written} (e.g. Preston Blair names).
    """
    labels = [str(x) for x in np.asarray(labels).ravel()]
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    steps = round(1.0 / RHUBARB_TIME_STEP)
    duration_steps = math.floor(len(labels) / fps * steps + 1e-6)
    cues: list[list] = []
    for k, shape in enumerate(labels):
        start = min(round(k / fps * steps), duration_steps)
        if cues and cues[-1][2] == shape:
            continue
        if cues and cues[-1][0] == start:
            cues.pop()                     # the previous run rounded to zero length
            if cues and cues[-1][2] == shape:
                continue
        cues.append([start, None, shape])
    for cur, nxt in zip(cues, cues[1:] + [[duration_steps]]):
        cur[1] = nxt[0]
    rename = rename or {}
    out = [MouthCue(s / steps, e / steps, rename.get(v, v)) for s, e, v in cues if e > s]
    return out, duration_steps / steps


def write_rhubarb_tsv(path: Path | str, labels, fps: float, rest: str = "X", rename: dict | None = None) -> None:
    """Rhubarb's TSV: "<start>\\t<shape>" per cue (start 0.00 first), then "<duration>\\t<rest>"."""
    cues, duration = mouth_cues(labels, fps, rename)
    rest = (rename or {}).get(rest, rest)
    lines = [f"{c.start:.2f}\t{c.value}" for c in cues] + [f"{duration:.2f}\t{rest}"]
    _write_text(Path(path), "\n".join(lines) + "\n")


def write_rhubarb_json(path: Path | str, labels, fps: float, sound_file: str = "", rename: dict | None = None) -> None:
    """Rhubarb's JSON: {"metadata": {"soundFile", "duration"}, "mouthCues": [{"start", "end", "value"}]}."""
    cues, duration = mouth_cues(labels, fps, rename)
    body = ",\n".join(f'    {{ "start": {c.start:.2f}, "end": {c.end:.2f}, "value": {json.dumps(c.value)} }}'
                      for c in cues)
    text = ("{\n  \"metadata\": {\n"
            f"    \"soundFile\": {json.dumps(str(sound_file))},\n    \"duration\": {duration:.2f}\n  }},\n"
            f"  \"mouthCues\": [\n{body}\n  ]\n}}\n")
    _write_text(Path(path), text)


def read_rhubarb_json(path: Path | str) -> list[MouthCue]:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return [MouthCue(float(c["start"]), float(c["end"]), str(c["value"])) for c in d["mouthCues"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a Rhubarb JSON file ({e})") from e


def _write_text(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    with storage.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
