"""The mapping table of the Character panel, with the standard library only: which channel drives
each shape key, with a gain and an offset, saved and loaded as a preset JSON of
blendshape_rigs/presets/ (kind "linear"); Preston Blair names for the Rhubarb mouth shapes;
corrective shape keys, which no name rule may drive.

A row: (shape key, source, gain, offset); value = offset + gain * source, where the source is an
ARKit coefficient ("jawOpen"), or "none" (the key is left alone).
Must not: import bpy (properties.py holds the rows, character.py keys them) or edit mapping.py's rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .core import mapping

NONE = "none"
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
    (a linear/rename channel with one coefficient); keys nothing drives get NONE."""
    rows = []
    for k in key_names:
        ch = match.assignments.get(k)
        if ch is None or preset.kind == "classify":
            rows.append(Row(k, NONE if ch is None else ch))
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
    """Write the table as a preset of blendshape_rigs/presets/ format (kind "linear")."""
    outputs = {r.key: {"weights": {r.source: r.gain}, "bias": r.offset} for r in rows if r.source != NONE}
    doc = {"format": mapping.PRESET_FORMAT, "format_version": 1, "kind": "linear",
           "description": description or "Mapping table saved from the LipSync3D Character panel",
           "clip": [-10.0, 10.0], "outputs": outputs}
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def load_rows(path: Path | str, key_names: list) -> list:
    """The table from a preset file: each key matched to the file's outputs by the usual name rules."""
    preset = mapping.load_preset(path)
    match = mapping.match_names([k for k in key_names if not is_corrective(k)], preset.outputs,
                                aliases=preset.aliases)
    return rows_from_preset(key_names, preset, match)
