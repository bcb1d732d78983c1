"""From per-frame ARKit-52 coefficients to a character's shape-key values, with the stdlib only.

Owns: the presets of blendshape_rigs/presets/*.json (rename, linear, classify) applied in
plain Python (interop.read_preset reads and checks the files, for the engine too), temporal
smoothing, strength, procedural eye blinks and a subtle head motion
(the paper combines the predicted mouth with other blendshapes for lively animation,
Section 3.3). The ARKit names and name matching (case and separators ignored,
side suffixes, prefix words) are interop.py's, shared with the engine.
Must not: import bpy (character.py writes the keyframes) or numpy.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

# the names, their matching and the preset files are the engine's, shared (interop.py)
from . import interop
from .interop import (ARKIT_NAMES, PRESET_FORMAT, VISEME_PRESET, NameMatch, PresetSpec,  # noqa: F401
                      match_names, normalize_name, side_key)

BLINK_CLOSE_S, BLINK_HOLD_S, BLINK_OPEN_S = 0.07, 0.03, 0.13   # eyelid timing of a spontaneous blink
BLINK_INTERVAL_S = (1.8, 6.0)    # seconds between blinks (about 17 per minute on average)
HEAD_FREQUENCIES_HZ = (0.11, 0.23, 0.41)   # slow sway; incommensurate so it never visibly repeats


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """A preset turned into plain Python: out_j = clip(bias_j + sum_k weights_j[k] * arkit_k).

    kind "classify" instead makes one-hot outputs: 1 for the frame's nearest prototype.
    weights : one {ARKit index: weight} per output. aliases : {other name: output}.
    """

    name: str
    kind: str                       # rename, linear or classify
    description: str
    outputs: tuple                  # channel names
    weights: tuple = ()             # per output {arkit index: weight}
    bias: tuple = ()
    clip: tuple = (0.0, 1.0)
    aliases: dict = field(default_factory=dict)
    features: tuple = ()            # classify: (arkit index, weight) pairs
    prototypes: tuple = ()          # classify: per output, the feature values
    smoothing_frames: int = 1       # classify: window of the distance averaging
    visemes: "Preset | None" = None  # linear/rename: a classify preset whose shapes feed viseme_outputs
    viseme_outputs: tuple = ()      # (output, shape index in visemes.outputs, gain, bias), after the others

    @classmethod
    def from_spec(cls, spec: PresetSpec) -> "Preset":
        """The plain-Python form of a preset read and checked by interop.read_preset (the engine's
        rig/names.py makes its numpy form from the same PresetSpec); load_preset links viseme outputs."""
        if spec.kind == "classify":
            return cls(spec.name, spec.kind, spec.description, spec.outputs, features=spec.features,
                       prototypes=spec.prototypes, smoothing_frames=spec.smoothing_frames)
        return cls(spec.name, spec.kind, spec.description, spec.outputs, tuple(dict(r) for r in spec.rows),
                   spec.bias, spec.clip, dict(spec.aliases))

    def apply(self, frames: list) -> list:
        """(F, 52) ARKit values (lists) -> (F, len(outputs)) channel values."""
        if self.kind == "classify":
            return self._classify(frames)
        lo, hi = self.clip
        out = [[min(max(b + sum(w * row[k] for k, w in ws.items()), lo), hi)
                for ws, b in zip(self.weights, self.bias)] for row in frames]
        if self.viseme_outputs:     # bias + gain x (1 while the frame's viseme is that shape, else 0)
            for row, hot in zip(out, self.visemes.apply(frames)):
                row.extend(min(max(b + g * hot[s], lo), hi) for _, s, g, b in self.viseme_outputs)
        return out

    def stepwise(self, output: str) -> bool:
        """Whether `output` swaps from frame to frame (a viseme: keyed CONSTANT) instead of blending."""
        return self.kind == "classify" or any(o == output for o, _, _, _ in self.viseme_outputs)

    def _classify(self, frames: list) -> list:
        dist = [[sum(w * (row[k] - proto[i]) ** 2 for i, (k, w) in enumerate(self.features))
                 for proto in self.prototypes] for row in frames]
        if self.smoothing_frames > 1:
            dist = box_filter(dist, self.smoothing_frames // 2)
        out = []
        for d in dist:
            best = min(range(len(d)), key=d.__getitem__)
            out.append([1.0 if j == best else 0.0 for j in range(len(d))])
        return out


def load_preset(path: Path | str, folders: tuple = ()) -> Preset:
    """Read one blendshape_rigs/presets/*.json (interop.read_preset); ValueError naming the file and the problem.

    A linear preset may also hold "viseme_outputs" {output: {"viseme": shape, "gain": g, "bias": b}}:
    outputs driven by the visemes of the classify preset named by "viseme_preset" (default
    "rhubarb"), looked up next to the file, then in `folders`.
    """
    spec = interop.read_preset(path)
    preset = Preset.from_spec(spec)
    if not spec.viseme_outputs:
        return preset
    try:
        return _with_viseme_outputs(preset, spec, Path(path), folders)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _with_viseme_outputs(preset: Preset, spec: PresetSpec, path: Path, folders: tuple) -> Preset:
    name = spec.viseme_preset
    found = next((f / f"{name}.json" for f in (path.parent, *folders) if (Path(f) / f"{name}.json").is_file()), None)
    if found is None:
        raise ValueError(f"viseme preset {name!r} not found next to the file")
    visemes = load_preset(found)
    if visemes.kind != "classify":
        raise ValueError(f"viseme preset {name!r} is not a classify preset")
    for out, shape, _, _ in spec.viseme_outputs:
        if shape not in visemes.outputs:
            raise ValueError(f"viseme output {out!r}: {shape!r} is not one of the shapes {list(visemes.outputs)}")
    return with_visemes(preset, visemes, spec.viseme_outputs)


def with_visemes(preset: Preset, visemes: Preset, outputs: list) -> Preset:
    """`preset` plus outputs [(name, shape, gain, bias)] = bias + gain x (1 while the frame's viseme of
    the classify preset `visemes` is `shape`, else 0): the visemes are visemes.apply's, unchanged."""
    extra = tuple((o, visemes.outputs.index(s), float(g), float(b)) for o, s, g, b in outputs)
    return dataclasses.replace(preset, outputs=preset.outputs + tuple(o for o, _, _, _ in extra), visemes=visemes,
                               viseme_outputs=preset.viseme_outputs + extra)


def list_presets(folder: Path) -> list:
    """(name, Preset) of every preset file in `folder`, sorted by name; unreadable ones skipped."""
    out = []
    for name in interop.list_presets(folder):
        try:
            out.append((name, load_preset(Path(folder) / f"{name}.json", (Path(folder),))))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------------------------------
# Matching shape keys to channels
# ---------------------------------------------------------------------------------------------

Match = NameMatch    # the add-on's name for interop's match result


def best_preset(shape_keys, presets: list) -> str:
    """The name of the (name, Preset) pair matching most of shape_keys (ties: the first listed)."""
    return interop.best_preset(shape_keys, [(n, p.outputs, p.aliases) for n, p in presets])


# ---------------------------------------------------------------------------------------------
# Time series: smoothing, blinks, head motion
# ---------------------------------------------------------------------------------------------

def box_filter(rows: list, radius: int) -> list:
    """Centred moving average over 2 * radius + 1 frames of (F, K) lists, edges held (O(F K))."""
    if radius <= 0 or not rows:
        return [list(r) for r in rows]
    n, k = len(rows), len(rows[0])
    out = [[0.0] * k for _ in range(n)]
    for j in range(k):
        col = [rows[min(max(i, 0), n - 1)][j] for i in range(-radius, n + radius)]
        run = sum(col[:2 * radius + 1])
        width = 2 * radius + 1
        for i in range(n):
            out[i][j] = run / width
            if i + width < len(col):
                run += col[i + width] - col[i]
    return out


def smooth(rows: list, radius: int) -> list:
    """Two box passes (a triangle window, close to a Gaussian of sigma ~ 0.8 radius); 0 = off."""
    return box_filter(box_filter(rows, radius), radius) if radius > 0 else [list(r) for r in rows]


def blink_curve(frames: int, fps: float, seed: int = 0) -> list:
    """Eyelid closure in [0, 1] per frame: spontaneous blinks at random intervals (seeded).

    Each blink closes in 70 ms, holds 30 ms and opens in 130 ms (smoothstep ramps).
    """
    rng, out = random.Random(seed), [0.0] * frames
    t = rng.uniform(0.5, BLINK_INTERVAL_S[1] / 2)
    length = BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S
    while t * fps < frames:
        first, last = int(math.floor(t * fps)), int(math.ceil((t + length) * fps))
        for f in range(max(first, 0), min(last + 1, frames)):
            out[f] = max(out[f], _blink_shape(f / fps - t))
        t += length + rng.uniform(*BLINK_INTERVAL_S)
    return out


def _blink_shape(dt: float) -> float:
    def ease(x):
        x = min(max(x, 0.0), 1.0)
        return x * x * (3 - 2 * x)
    if dt < 0:
        return 0.0
    if dt < BLINK_CLOSE_S:
        return ease(dt / BLINK_CLOSE_S)
    if dt < BLINK_CLOSE_S + BLINK_HOLD_S:
        return 1.0
    return 1.0 - ease((dt - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S)


def add_blinks(arkit_rows: list, fps: float, seed: int = 0) -> list:
    """ARKit rows with eyeBlinkLeft/Right raised to a procedural blink curve (max of both)."""
    curve = blink_curve(len(arkit_rows), fps, seed)
    left, right = ARKIT_NAMES.index("eyeBlinkLeft"), ARKIT_NAMES.index("eyeBlinkRight")
    out = [list(r) for r in arkit_rows]
    for row, b in zip(out, curve):
        row[left], row[right] = max(row[left], b), max(row[right], b)
    return out


def head_motion(arkit_rows: list, fps: float, amplitude_deg: float = 2.0, seed: int = 0,
                frames: list | None = None) -> list:
    """Subtle head rotation per row: (pitch, yaw, roll) radians.

    A slow sway (three incommensurate sines per axis, random phases) of at most
    `amplitude_deg`, plus small nods that follow the speech (the smoothed jawOpen).
    frames : the frame number of each row (time = frame / fps); default 0, 1, 2, ...
    """
    rng = random.Random(seed)
    phases = [[rng.uniform(0, 2 * math.pi) for _ in HEAD_FREQUENCIES_HZ] for _ in range(3)]
    jaw = ARKIT_NAMES.index("jawOpen")
    speech = [r[0] for r in smooth([[row[jaw]] for row in arkit_rows], max(1, int(fps * 0.15)))]
    mean = sum(speech) / len(speech) if speech else 0.0
    amp = math.radians(amplitude_deg)
    out = []
    for i, s in enumerate(speech):
        t = (frames[i] if frames is not None else i) / fps
        sway = [sum(math.sin(2 * math.pi * hz * t + ph) for hz, ph in zip(HEAD_FREQUENCIES_HZ, axis)) / 3
                for axis in phases]
        out.append((amp * (0.6 * sway[0] + 0.4 * min(max((s - mean) * 2, -1), 1)), amp * sway[1], amp * 0.5 * sway[2]))
    return out


def euler_to_quaternion(pitch: float, yaw: float, roll: float) -> tuple:
    """XYZ Euler (radians, about x, then y, then z) -> (w, x, y, z) quaternion, as Blender's 'XYZ' mode."""
    cx, sx = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    cz, sz = math.cos(roll / 2), math.sin(roll / 2)
    return (cx * cy * cz + sx * sy * sz, sx * cy * cz - cx * sy * sz,
            cx * sy * cz + sx * cy * sz, cx * cy * sz - sx * sy * cz)


@dataclass(frozen=True)
class DriveOptions:
    """How predicted coefficients become a character's shape-key animation."""

    preset: str = "AUTO"           # a preset name from blendshape_rigs/presets, or AUTO (best match)
    strength: float = 1.0          # multiplies every channel (then clipped to the key's slider range)
    smoothing_frames: int = 0      # radius of the triangle smoothing window in frames (0 = off)
    blinks: bool = True            # add procedural eye blinks
    head_motion: bool = False      # add a subtle head sway and speech nods
    head_amplitude_deg: float = 2.0  # largest head rotation of the sway
    seed: int = 0                  # blinks and sway are random but repeatable


def channel_values(arkit_rows: list, fps: float, preset: Preset, options: DriveOptions) -> list:
    """ARKit rows -> the preset's channel rows after blinks, smoothing and strength (F, n)."""
    rows = smooth(arkit_rows, options.smoothing_frames)     # smooth the prediction, not the blinks
    rows = add_blinks(rows, fps, options.seed) if options.blinks else rows
    return [[v * options.strength for v in r] for r in preset.apply(rows)]
