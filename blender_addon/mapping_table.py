"""The mapping table of the Character panel, with the standard library only: which channel drives
each shape key, with a gain and an offset, saved and loaded as a preset JSON of
blendshape_rigs/presets/ (kind "linear", viseme rows in its "viseme_outputs"); Preston Blair
names for the Rhubarb mouth shapes; corrective shape keys, which no name rule may drive.

A row: (channel, source, gain, offset); value = offset + gain * source, where the source is an
ARKit coefficient ("jawOpen"), a viseme ("viseme:D": 1 on the frames whose mouth shape, as the
Rhubarb preset classifies the coefficients, is D (Preston Blair's AI), else 0; keyed CONSTANT),
or "none" (the channel is left alone). The channel is a shape key, an armature's bone channel
("jaw: rotation X"), or a pose asset ("pose asset: AI": the pose action's bone transforms,
blended in with the value as weight).
Must not: import bpy (properties.py holds the rows, character.py keys them) or edit mapping.py's rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .core import client, mapping

NONE = "none"
VISEME_PREFIX = "viseme:"           # a row's source "viseme:D": the Rhubarb shape D (Preston Blair's AI)
POSE_PREFIX = "pose asset: "        # a row's channel "pose asset: AI": the pose action "AI" of the blend file


def viseme_source(shape: str) -> str:
    return VISEME_PREFIX + shape


def viseme_shape(source: str) -> str:
    """"viseme:D" -> "D"; "" when the source is not a viseme."""
    return source[len(VISEME_PREFIX):] if source.startswith(VISEME_PREFIX) else ""


def pose_key(action_name: str) -> str:
    return POSE_PREFIX + action_name


def pose_action_name(key: str) -> str:
    """"pose asset: AI" -> "AI"; "" when the row's channel is not a pose asset."""
    return key[len(POSE_PREFIX):] if key.startswith(POSE_PREFIX) else ""


def viseme_items(preset_file: Path | str) -> list:
    """[(source, label)] of the visemes a table row may use: the shapes the classify preset uses
    (Rhubarb: A-F, and G, X as its "extended_shapes" say), labelled with their Preston Blair names."""
    try:
        visemes = mapping.load_preset(preset_file)
    except ValueError:
        return []
    names = {t: a for a, t in preston_blair_aliases(preset_file).items() if a != "WQ"}
    return [(viseme_source(v), f"{v} ({names[v]})" if v in names else v) for v in visemes.outputs]


def guess_sources(names: list, visemes: mapping.Preset, aliases: dict) -> dict:
    """{name: source} for names of visemes or coefficients (pose assets "MBP", "AI", "jawOpen"): a
    viseme by its Rhubarb letter or Preston Blair name (on a Preston Blair chart E and O are its own),
    else an ARKit coefficient by the usual name rules; names that match nothing are left out."""
    explicit = preston_blair_explicit(names, aliases)
    found = mapping.match_names(names, visemes.outputs, explicit=explicit, aliases=aliases).assignments
    out = {n: viseme_source(s) for n, s in found.items()}
    rest = [n for n in names if n not in out]
    out.update(mapping.match_names(rest, mapping.ARKIT_NAMES).assignments if rest else {})
    return out
_CORRECTIVE = re.compile(r"^(?i:fix|corr)(?=[\s_\-.:]|[A-Z])|(?i:[\s_\-.:]?corrective)$")


def is_corrective(name: str) -> bool:
    """A corrective shape key (fix_mouthClose, corr_jawOpen, jawOpen_corrective): never driven by a
    name rule, since it fixes the shape of another key and has its own driver or combination."""
    return bool(_CORRECTIVE.search(name))


def preston_blair_aliases(preset_file: Path | str) -> dict:
    """{Preston Blair name: Rhubarb shape} from a classify preset's display_name entries
    (MBP -> A, etc -> B, E -> C, AI -> D, O -> E, U -> F, FV -> G, L -> H, rest -> X)."""
    try:
        shapes = json.loads(Path(preset_file).read_text(encoding="utf-8")).get("shapes", {})
    except (OSError, ValueError):
        return {}
    out = {v["display_name"]: k for k, v in shapes.items() if isinstance(v, dict) and v.get("display_name")}
    if "U" in out:
        out.setdefault("WQ", out["U"])          # Rhubarb's F: puckered lips, as in "you", W and Q
    return out


def preston_blair_explicit(key_names: list, aliases: dict) -> dict:
    """{key: shape} when the keys are a Preston Blair chart (two or more names only it uses, like
    MBP, etc, AI, FV, WQ, rest): then "E" and "O" are its E and O, not Rhubarb's letters."""
    only = {mapping.normalize_name(n) for n in ("MBP", "etc", "AI", "FV", "WQ", "rest")}
    if sum(mapping.normalize_name(k) in only for k in key_names) < 2:
        return {}
    by = {mapping.normalize_name(a): t for a, t in aliases.items()}
    return {k: by[mapping.normalize_name(k)] for k in key_names if mapping.normalize_name(k) in by}


@dataclass(frozen=True)
class Row:
    key: str                # the shape key
    source: str             # an ARKit name, or NONE
    gain: float = 1.0
    offset: float = 0.0


def rows_from_preset(key_names: list, preset: mapping.Preset, match: mapping.Match) -> list:
    """The table for a character: each key's channel written out as ARKit source, gain and offset
    (a linear/rename channel with one coefficient), or as a viseme (a classify preset's shape, or a
    linear preset's viseme output); keys nothing drives get NONE."""
    rows = []
    visemes = {o: (preset.visemes.outputs[i], g, b) for o, i, g, b in preset.viseme_outputs}
    for k in key_names:
        ch = match.assignments.get(k)
        if ch is None:
            rows.append(Row(k, NONE))
            continue
        if preset.kind == "classify":
            rows.append(Row(k, viseme_source(ch)))
            continue
        if ch in visemes:
            shape, g, b = visemes[ch]
            rows.append(Row(k, viseme_source(shape), g, b))
            continue
        j = preset.outputs.index(ch)
        weights, bias = preset.weights[j], preset.bias[j]
        if len(weights) == 1:
            (i, w), = weights.items()
            rows.append(Row(k, mapping.ARKIT_NAMES[i], float(w), float(bias)))
        else:       # a blend of several coefficients: the strongest one stands for it in the table
            i = max(weights, key=lambda n: abs(weights[n]))
            rows.append(Row(k, mapping.ARKIT_NAMES[i], float(weights[i]), float(bias)))
    return rows


def save_preset(rows: list, path: Path | str, description: str = "") -> Path:
    """Write the table as a preset of blendshape_rigs/presets/ format (kind "linear"): ARKit rows in
    "outputs", viseme rows in "viseme_outputs" {channel: {"viseme": shape, "gain", "bias"}} with the
    classify preset they come from in "viseme_preset" (mapping.load_preset reads both)."""
    outputs = {r.key: {"weights": {r.source: r.gain}, "bias": r.offset} for r in rows
               if r.source != NONE and not viseme_shape(r.source)}
    visemes = {r.key: {"viseme": viseme_shape(r.source), "gain": r.gain, "bias": r.offset} for r in rows
               if viseme_shape(r.source)}
    doc = {"format": mapping.PRESET_FORMAT, "format_version": 1, "kind": "linear",
           "description": description or "Mapping table saved from the LipSync3D Character panel",
           "clip": [-10.0, 10.0], "outputs": outputs}
    if visemes:
        doc["viseme_preset"], doc["viseme_outputs"] = mapping.VISEME_PRESET, visemes
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def load_rows(path: Path | str, key_names: list, folders: tuple | None = None) -> list:
    """The table from a preset file: each key matched to the file's outputs by the usual name rules.

    folders : where the viseme preset of a file with viseme rows may be besides the file's own folder
    (default: the add-on's bundled presets).
    """
    if folders is None:
        root = client.bundled_engine_dir()
        folders = (root / "blendshape_rigs" / "presets",) if root is not None else ()
    preset = mapping.load_preset(path, tuple(folders))
    plain = [k for k in key_names if not is_corrective(k)]
    aliases, explicit = preset.aliases, {}
    if preset.kind == "classify":           # a mouth-shape preset: its Preston Blair names too
        aliases = {**preston_blair_aliases(path), **preset.aliases}
        explicit = preston_blair_explicit(plain, aliases)
    match = mapping.match_names(plain, preset.outputs, explicit=explicit, aliases=aliases)
    return rows_from_preset(key_names, preset, match)
