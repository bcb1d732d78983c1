"""Blendshape names: the ARKit set, matching a character's shape-key names, and the presets.

The 52 ARKit names (Apple's grouped order, the engine's canonical order), the Live Link Face
column order, name normalization and matching, and the reading and checking of the preset
files (interop.read_preset) live in core/interop.py, shared with the Blender add-on, and are
importable from here. Owns: explicit user mapping files, and the numpy form of the
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

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core import interop
from ..core.errors import InputError
from ..core.filters import moving_average
from ..io.exports import reorder_to_arkit  # noqa: F401  (public here too)
# the names, the formats and name matching are shared with the Blender add-on (stdlib only)
from ..core.interop import (ARKIT_NAMES, LIVELINK_COLUMNS, LIVELINK_HEADER, LIVELINK_POSE,  # noqa: F401
                            LIVELINK_SHAPES, LIVELINK_VALUE_COUNT, MAPPING_FORMAT, PRESET_FORMAT, PRESET_KINDS,
                            RHUBARB_EXTENDED, NameMatch, PresetSpec, arkit_index, match_names, normalize_name)

PRESETS_DIR = Path(__file__).resolve().parents[2] / "blendshape_rigs" / "presets"


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
    return interop.list_presets(folder)


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
        stamp = None                    # read_preset reports the missing file
    return _load_preset_file(path, stamp)


@lru_cache(maxsize=32)
def _load_preset_file(path: Path, stamp: int | None):
    """Read one preset file; cached per (path, modification time), so user edits are seen."""
    return from_spec(interop.read_preset(path, InputError))


def from_spec(spec: PresetSpec) -> LinearPreset | ClassifierPreset:
    """The numpy form of a preset read and checked by interop.read_preset (the add-on's mapping.py
    applies the same PresetSpec in plain Python). Its viseme_outputs are the add-on's: not applied here."""
    if spec.kind == "classify":
        prototypes = np.array(spec.prototypes, np.float64).reshape(len(spec.outputs), len(spec.features))
        features = tuple(ARKIT_NAMES[k] for k, _ in spec.features)
        return ClassifierPreset(spec.name, spec.description, spec.outputs, features,
                                np.array([w for _, w in spec.features], np.float64), prototypes, spec.rest,
                                spec.smoothing_frames, dict(spec.display_names))
    matrix = np.zeros((len(spec.outputs), len(ARKIT_NAMES)))
    for i, row in enumerate(spec.rows):
        for k, w in row:
            matrix[i, k] = w
    return LinearPreset(spec.name, spec.description, spec.kind, spec.outputs, matrix, np.array(spec.bias, np.float64),
                        spec.clip, dict(spec.aliases), spec.unused_arkit)


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
    data = interop.read_json(Path(path), "shape-key mapping file", InputError)
    mapping = data.get("mapping")
    if data.get("format") != MAPPING_FORMAT or not isinstance(mapping, dict):
        raise InputError(f"{path}: not a shape-key mapping file (needs \"format\": \"{MAPPING_FORMAT}\" and a "
                         "\"mapping\" object {shape key: channel name or null})")
    bad = [k for k, v in mapping.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise InputError(f"{path}: mapping values must be a channel name or null (bad entries: {bad})")
    return mapping


def best_preset(shape_keys, presets=None) -> str:
    """The preset (name) whose channels match_names matches to the most of `shape_keys` (ties: first
    listed): interop.best_preset, as the add-on's Auto preset."""
    names = list(presets) if presets is not None else list_presets()
    if not names:
        raise InputError(f"{PRESETS_DIR}: no presets found")
    loaded = [(n, load_preset(n)) for n in names]
    return interop.best_preset(shape_keys, [(n, p.outputs, p.aliases) if isinstance(p, LinearPreset)
                                            else (n, p.shapes, {}) for n, p in loaded])
