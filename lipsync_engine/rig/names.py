"""Blendshape names: the ARKit set, matching a character's shape-key names, and the presets.

The 52 ARKit names (Apple's grouped order, the engine's canonical order), the Live Link Face
column order, name normalization and matching live in core/interop.py, shared with the
Blender add-on, and are importable from here. Owns: explicit user mapping files, and the
user-editable presets of blendshape_rigs/presets/*.json that turn per-frame ARKit
coefficients into another rig's channels:

- kind "rename": one target name per ARKit name (ARKit, Live Link Face, Character Creator 4);
- kind "linear": each output is clip(bias + sum_k weight_k * arkit_k) (VRM, Oculus visemes);
- kind "classify": one mouth shape per frame, the nearest prototype in a weighted space of
  ARKit mouth coefficients (Rhubarb / Preston Blair A-H, X).

Must not: fit, read speaker data or write files (exports.py writes). Nothing is dropped
silently: every name that cannot be matched is reported in a NameMatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.filters import moving_average
from ..io.exports import reorder_to_arkit  # noqa: F401  (public here too)
# the names, the formats and name matching are shared with the Blender add-on (stdlib only)
from ..core.interop import (ARKIT_NAMES, LIVELINK_COLUMNS, LIVELINK_HEADER, LIVELINK_POSE,  # noqa: F401
                            LIVELINK_SHAPES, LIVELINK_VALUE_COUNT, MAPPING_FORMAT, PRESET_FORMAT, PRESET_KINDS,
                            RHUBARB_EXTENDED, NameMatch, arkit_index, match_names, normalize_name)

PRESETS_DIR = Path(__file__).resolve().parents[2] / "blendshape_rigs" / "presets"
_ARKIT_KEYS = {normalize_name(n): i for i, n in enumerate(ARKIT_NAMES)}


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LinearPreset:
    """ARKit coefficients -> another rig's channels: out = clip(bias + coefficients @ matrix.T).

    outputs : the target channel names (n,). matrix : (n, 52) weights over ARKIT_NAMES.
    bias : (n,). clip : (low, high). aliases : other names of outputs (alias -> output).
    A "rename" preset is a LinearPreset whose rows each hold a single 1.
    """

    name: str
    description: str
    kind: str
    outputs: tuple
    matrix: np.ndarray
    bias: np.ndarray
    clip: tuple = (0.0, 1.0)
    aliases: dict = field(default_factory=dict)
    unused_arkit: tuple = ()        # ARKit names the target rig has no channel for (null in the file)

    def apply(self, coefficients: np.ndarray) -> np.ndarray:
        """(F, 52) ARKit coefficients (ARKIT_NAMES order) -> (F, n) channel values."""
        c = _check_arkit(coefficients)
        return np.clip(self.bias + c @ self.matrix.T, *self.clip)

    @property
    def names(self) -> tuple:
        """Every name this preset answers to: its outputs, then its aliases."""
        return self.outputs + tuple(self.aliases)


@dataclass(frozen=True, eq=False)
class ClassifierPreset:
    """ARKit coefficients -> one mouth shape per frame (nearest prototype).

    shapes : the shapes produced (n,): the basic ones plus the enabled extended ones.
    features : the ARKit names compared (m,). weights : (m,) per-feature weights.
    prototypes : (n, m) feature values of each shape. rest : the shape of silence (Rhubarb's X).
    smoothing_frames : odd window (frames) over which the distances are averaged (1 = off).
    display_names : optional other spelling per shape (Preston Blair: A -> MBP, ...).
    """

    name: str
    description: str
    shapes: tuple
    features: tuple
    weights: np.ndarray
    prototypes: np.ndarray
    rest: str
    smoothing_frames: int = 1
    display_names: dict = field(default_factory=dict)
    kind: str = "classify"

    def classify(self, coefficients: np.ndarray) -> np.ndarray:
        """(F, 52) ARKit coefficients -> (F,) shape names (numpy str array)."""
        c = _check_arkit(coefficients)
        f = c[:, [arkit_index(n) for n in self.features]]                              # (F, m)
        d = (((f[:, None, :] - self.prototypes[None]) ** 2) * self.weights).sum(-1)   # (F, n)
        if self.smoothing_frames > 1 and len(d) > 1:
            d = moving_average(d, self.smoothing_frames, axis=0)
        return np.asarray(self.shapes)[np.argmin(d, axis=1)]

    @property
    def names(self) -> tuple:
        return self.shapes


def _check_arkit(coefficients) -> np.ndarray:
    c = np.asarray(coefficients, np.float64)
    if c.ndim != 2 or c.shape[1] != len(ARKIT_NAMES):
        raise ValueError(f"expected (frames, 52) ARKit coefficients, got shape {c.shape}")
    return c


def list_presets(folder: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets shipped in blendshape_rigs/presets (file stems)."""
    return sorted(p.stem for p in Path(folder).glob("*.json"))


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: a {what} must be a JSON object")
    return data


def load_preset(name_or_path: str | Path) -> LinearPreset | ClassifierPreset:
    """Load a preset by name ("arkit", "visemes_oculus", ...) or from a JSON file path.

    Raises InputError naming the file and the rule it breaks (unknown ARKit name, a target
    name used twice, a missing field).
    """
    p = Path(name_or_path)
    path = (p if p.suffix == ".json" or p.exists() else PRESETS_DIR / f"{name_or_path}.json").resolve()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None                    # _read_json reports the missing file
    return _load_preset_file(path, stamp)


@lru_cache(maxsize=32)
def _load_preset_file(path: Path, stamp: int | None):
    """Parse one preset file; cached per (path, modification time), so user edits are seen."""
    data = _read_json(path, "blendshape preset")
    kind = data.get("kind")
    if data.get("format") != PRESET_FORMAT or kind not in PRESET_KINDS:
        raise InputError(f"{path}: not a blendshape preset (needs \"format\": \"{PRESET_FORMAT}\" and a "
                         f"\"kind\" in {PRESET_KINDS})")
    try:
        build = {"rename": _rename_preset, "linear": _linear_preset, "classify": _classify_preset}[kind]
        return build(path.stem, data)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: {e}") from e


def _rename_preset(stem: str, data: dict) -> LinearPreset:
    table = data["names"]
    unknown = [k for k in table if normalize_name(k) not in _ARKIT_KEYS]
    if unknown or len(table) != len(ARKIT_NAMES):
        raise ValueError(f"\"names\" must have one entry for each of the 52 ARKit names (unknown: {unknown})")
    outputs, rows = [], []
    for arkit, targets in table.items():
        for target in [targets] if isinstance(targets, str) else (targets or []):
            if target in outputs:
                raise ValueError(f"target name {target!r} is used twice")
            outputs.append(target)
            rows.append(arkit_index(arkit))
    matrix = np.zeros((len(outputs), len(ARKIT_NAMES)))
    matrix[np.arange(len(outputs)), rows] = 1.0
    unused = tuple(k for k, t in table.items() if not t)
    return LinearPreset(stem, data["description"], "rename", tuple(outputs), matrix, np.zeros(len(outputs)),
                        aliases=dict(data.get("aliases", {})), unused_arkit=unused)


def _linear_preset(stem: str, data: dict) -> LinearPreset:
    outs = data["outputs"]
    matrix, bias = np.zeros((len(outs), len(ARKIT_NAMES))), np.zeros(len(outs))
    for i, (name, spec) in enumerate(outs.items()):
        bias[i] = float(spec.get("bias", 0.0))
        for arkit, w in spec.get("weights", {}).items():
            matrix[i, arkit_index(arkit)] = float(w)
        if not matrix[i].any() and bias[i] == 0.0:
            raise ValueError(f"output {name!r} has no weights and no bias: it would always be 0")
    aliases = dict(data.get("aliases", {}))
    bad = [a for a, target in aliases.items() if target not in outs]
    if bad:
        raise ValueError(f"aliases {bad} point to names that are not outputs")
    lo, hi = (float(x) for x in data.get("clip", (0.0, 1.0)))
    return LinearPreset(stem, data["description"], "linear", tuple(outs), matrix, bias, (lo, hi), aliases)


def _classify_preset(stem: str, data: dict) -> ClassifierPreset:
    feats = data["features"]
    features, weights = tuple(feats), np.array([float(w) for w in feats.values()])
    for f in features:
        arkit_index(f)
    extended = set(data.get("extended_shapes", RHUBARB_EXTENDED))
    spec = {s: v for s, v in data["shapes"].items() if s not in RHUBARB_EXTENDED or s in extended}
    for s, v in spec.items():
        extra = set(v["prototype"]) - set(features)
        if extra:
            raise ValueError(f"shape {s!r}: prototype names {sorted(extra)} are not in \"features\"")
    if data["rest"] not in spec:
        raise ValueError(f"\"rest\" {data['rest']!r} is not one of the shapes in use {sorted(spec)}")
    window = int(data.get("smoothing_frames", 1))
    if window < 1 or window % 2 == 0:
        raise ValueError(f"\"smoothing_frames\" must be an odd number >= 1, got {window}")
    protos = np.array([[float(v["prototype"].get(f, 0.0)) for f in features] for v in spec.values()])
    display = {s: v["display_name"] for s, v in spec.items() if "display_name" in v}
    return ClassifierPreset(stem, data["description"], tuple(spec), features, weights, protos, data["rest"],
                            window, display)


def convert_coefficients(coefficients: np.ndarray, names, preset) -> tuple[tuple, np.ndarray]:
    """Per-frame coefficients (F, K) under `names` (ARKit, any spelling) -> a preset's channels.

    Returns (channel names, (F, n) float values) for a rename/linear preset, or
    (("shape",), (F,) str array) for a classify preset. `preset` is a name, path or preset.
    """
    p = preset if isinstance(preset, (LinearPreset, ClassifierPreset)) else load_preset(preset)
    arkit, _ = reorder_to_arkit(coefficients, names)
    if isinstance(p, ClassifierPreset):
        return ("shape",), p.classify(arkit)
    return p.outputs, p.apply(arkit)


# ---------------------------------------------------------------------------------------------
# Matching a character's shape keys
# ---------------------------------------------------------------------------------------------

def load_mapping_file(path: Path) -> dict:
    """Read an explicit mapping file: {"format": ..., "mapping": {shape key: channel or null}}.

    The file is the user's: keys are the character's shape-key names, values the channel
    names of the preset in use (any case/separators), null to leave a key alone on purpose.
    """
    data = _read_json(Path(path), "shape-key mapping file")
    mapping = data.get("mapping")
    if data.get("format") != MAPPING_FORMAT or not isinstance(mapping, dict):
        raise InputError(f"{path}: not a shape-key mapping file (needs \"format\": \"{MAPPING_FORMAT}\" and a "
                         "\"mapping\" object {shape key: channel name or null})")
    bad = [k for k, v in mapping.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise InputError(f"{path}: mapping values must be a channel name or null (bad entries: {bad})")
    return mapping


def best_preset(shape_keys, presets=None) -> str:
    """The preset (name) whose channel names match the most of `shape_keys` (ties: first listed)."""
    names = list(presets) if presets is not None else list_presets()
    if not names:
        raise InputError(f"{PRESETS_DIR}: no presets found")
    keys = [normalize_name(k) for k in shape_keys]

    def score(preset_name: str) -> int:
        known = {normalize_name(n) for n in load_preset(preset_name).names}
        return sum(k in known for k in keys)

    return max(names, key=score)
