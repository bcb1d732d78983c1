"""What the engine and the Blender add-on must agree on, in one file, with the standard library only.

Owns: the 52 ARKit blendshape names (Apple's grouped order, the engine's canonical order),
the Live Link Face columns, name matching (case and separators ignored, plus side suffixes
and prefix words), the blendshape preset files (read and checked into a PresetSpec, which
rig/names.py applies with numpy and the add-on's mapping.py in plain Python; listing them,
choosing the best by name), the shape-key mapping format name, the stdout message protocol
(message kinds, version, exit codes, one line <-> one message), and the readers of JSON
objects, the PC2 point cache and the OBJ head the engine writes.

Shared, not copied: this is lipsync_engine/core/interop.py; the add-on's
blender_addon/core/interop.py is a symlink to it in git, which build_addon.py turns into a
real file in the add-on zip. Must not: import anything outside the standard library (the
add-on runs in Blender's Python: no numpy), or know about Blender or torch. A test checks it.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Blendshape names
# ---------------------------------------------------------------------------------------------

ARKIT_NAMES = (
    # left eye
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft",
    # right eye
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight",
    "eyeWideRight",
    # mouth and jaw
    "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft",
    "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    # eyebrows, cheeks and nose
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
    # tongue
    "tongueOut",
)

# The header row of a Live Link Face take (.csv), byte for byte. Its shape order is Apple's
# except that JawRight/JawLeft and MouthRight/MouthLeft are swapped. Checked against the
# importers that read these takes: nmfisher/blender_livelinkface (LIVE_LINK_FACE_HEADER),
# a Flutter/Dart loader ("Load visemes from a CSV file formatted according to the following
# header"), and a real-capture header quoted in a third project's tests (which spells the
# second column "BlendshapeCount"; readers here accept either spelling).
LIVELINK_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,"
    "MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,"
    "MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,"
    "MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,"
    "CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,"
    "LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
)
LIVELINK_COLUMNS = tuple(LIVELINK_HEADER.split(","))
LIVELINK_SHAPES = LIVELINK_COLUMNS[2:54]            # the 52 PascalCase shape names
LIVELINK_POSE = LIVELINK_COLUMNS[54:]               # head and eye rotations (9)
LIVELINK_VALUE_COUNT = len(LIVELINK_COLUMNS) - 2    # the BlendShapeCount column: 61

PRESET_FORMAT = "lipsync3d-blendshape-preset"       # blendshape_rigs/presets/*.json
MAPPING_FORMAT = "lipsync3d-shape-key-mapping"      # a user's {shape key: channel or null} file
PRESET_KINDS = ("rename", "linear", "classify")
RHUBARB_EXTENDED = "GHX"    # Rhubarb's optional shapes; A-F are always used
SEPARATORS = re.compile(r"[\s_\-.:]+")
_SIDE_WORD = re.compile(r"^(.*?[^\s_\-.:])[\s_\-.:]+(left|right|l|r)$", re.IGNORECASE)
_SIDE_LETTER = re.compile(r"^(.*[a-z0-9])([LR])$")


def normalize_name(name: str) -> str:
    """Matching key of a name: case-folded, separators removed.

    >>> normalize_name("Jaw Open") == normalize_name("jaw_open") == "jawopen"
    True
    """
    return SEPARATORS.sub("", str(name)).casefold()


_ARKIT_KEYS = {normalize_name(n): i for i, n in enumerate(ARKIT_NAMES)}


def arkit_index(name: str) -> int:
    """Index of an ARKit name in ARKIT_NAMES, any case or separators; ValueError if unknown.

    >>> ARKIT_NAMES[arkit_index("JAW_OPEN")]
    'jawOpen'
    """
    try:
        return _ARKIT_KEYS[normalize_name(name)]
    except KeyError:
        raise ValueError(f"{name!r} is not one of the 52 ARKit blendshape names") from None


def side_key(name: str) -> str:
    """Matching key with a side suffix spelled out: "mouthSmile_L", "mouthSmileL" -> "mouthsmileleft".

    A single L/R needs a separator or an upper-case letter after lower case, so names that
    merely end in "l" ("Ball") are not read as sides.
    """
    m = _SIDE_WORD.match(str(name)) or _SIDE_LETTER.match(str(name))
    if not m:
        return normalize_name(name)
    stem, side = m.groups()
    return normalize_name(stem) + ("left" if side[0] in "lL" else "right")


@dataclass(frozen=True)
class NameMatch:
    """Which source channel drives each of a character's shape keys.

    assignments : shape key -> channel name (as the preset spells it), in key order.
    unmapped_keys : keys nothing drives (no match, no explicit entry).
    ignored_keys : keys an explicit mapping sets to null on purpose.
    unused_channels : channels that drive no key (the character lacks that shape).
    """

    assignments: dict
    unmapped_keys: tuple
    ignored_keys: tuple
    unused_channels: tuple

    def report(self, limit: int = 12) -> str:
        """One line for a person: counts, then the names (the first `limit` of each list)."""
        def names(seq):
            return ", ".join(seq[:limit]) + (f" (+{len(seq) - limit} more)" if len(seq) > limit else "")
        parts = [f"{len(self.assignments)} shape keys driven"]
        if self.unmapped_keys:
            parts.append(f"{len(self.unmapped_keys)} not driven: {names(self.unmapped_keys)}")
        if self.ignored_keys:
            parts.append(f"{len(self.ignored_keys)} ignored by the mapping: {names(self.ignored_keys)}")
        if self.unused_channels:
            parts.append(f"{len(self.unused_channels)} channels without a shape key: {names(self.unused_channels)}")
        return "; ".join(parts)


def match_names(shape_keys, channels, explicit: dict | None = None, aliases: dict | None = None) -> NameMatch:
    """Match a character's shape-key names to source channel names.

    Parameters
    ----------
    shape_keys : the character's shape-key names (as in Blender).
    channels : the names a preset (or ARKIT_NAMES) produces.
    explicit : {shape key: channel or None} (a mapping file); wins over automatic matching,
        None leaves a key alone on purpose. ValueError if it names a channel that does not exist.
    aliases : {alias: channel}, other names a channel answers to.

    Tiers, first hit wins: the explicit entry; the name with case and separators ignored
    (jawOpen = JawOpen = jaw_open = "Jaw Open", aliases included); a side suffix (_L/_R, L/R:
    "mouthSmile_L" = mouthSmileLeft); then the name with leading prefix words dropped
    ("Face.jawOpen", "BS_jaw_open").

    >>> m = match_names(["Jaw Open", "mouthSmile_L", "Hat"], ARKIT_NAMES)
    >>> m.assignments, m.unmapped_keys
    ({'Jaw Open': 'jawOpen', 'mouthSmile_L': 'mouthSmileLeft'}, ('Hat',))
    """
    channels = tuple(channels)
    exact = {normalize_name(c): c for c in channels}
    for alias, target in (aliases or {}).items():
        exact.setdefault(normalize_name(alias), target)
    sided = {side_key(c): c for c in channels}
    for alias, target in (aliases or {}).items():
        sided.setdefault(side_key(alias), target)
    wanted = {normalize_name(k): v for k, v in (explicit or {}).items()}
    assignments, unmapped, ignored = {}, [], []
    for key in shape_keys:
        nk = normalize_name(key)
        if nk in wanted and wanted[nk] is None:
            ignored.append(key)
        elif nk in wanted:
            if normalize_name(wanted[nk]) not in exact:
                raise ValueError(f"mapping for shape key {key!r}: {wanted[nk]!r} is not a channel name")
            assignments[key] = exact[normalize_name(wanted[nk])]
        else:
            hit = _lookup(key, exact, sided)
            words = [w for w in SEPARATORS.split(key) if w]
            for i in range(1, len(words)):
                if hit is not None:
                    break
                hit = _lookup("_".join(words[i:]), exact, sided)
            if hit is None:
                unmapped.append(key)
            else:
                assignments[key] = hit
    used = set(assignments.values())
    return NameMatch(assignments, tuple(unmapped), tuple(ignored), tuple(c for c in channels if c not in used))


def _lookup(name: str, exact: dict, sided: dict):
    return exact.get(normalize_name(name)) or sided.get(side_key(name))


# ---------------------------------------------------------------------------------------------
# Blendshape presets (blendshape_rigs/presets/*.json): read and checked here, once; applied by
# rig/names.py (numpy) and the add-on's core/mapping.py (plain Python)
# ---------------------------------------------------------------------------------------------

VISEME_PRESET = "rhubarb"   # the classify preset of a file's "viseme_outputs" when it names no "viseme_preset"


@dataclass(frozen=True)
class PresetSpec:
    """A checked preset file as plain tuples; ARKit names are indices into ARKIT_NAMES.

    outputs : the channel names; kind "classify": the shapes in use (A-F and the enabled G, H, X).
    rename/linear: output j = clip(bias[j] + sum of w * arkit[k] over (k, w) in rows[j]) (a rename
    row is one (k, 1.0)); aliases ((other name, output), ...); unused_arkit: the ARKit names a rename
    preset maps to null. classify: features ((k, weight), ...), prototypes (per shape, a value per
    feature), rest (the shape of silence), smoothing_frames (odd), display_names ((shape, name), ...).
    viseme_outputs ((output, shape, gain, bias), ...), rename/linear only: bias + gain x (1 while the
    frame's shape under the classify preset `viseme_preset` is `shape`, else 0), after the outputs.
    """

    name: str
    kind: str
    description: str
    outputs: tuple
    rows: tuple = ()
    bias: tuple = ()
    clip: tuple = (0.0, 1.0)
    aliases: tuple = ()
    unused_arkit: tuple = ()
    features: tuple = ()
    prototypes: tuple = ()
    rest: str = ""
    smoothing_frames: int = 1
    display_names: tuple = ()
    viseme_preset: str = ""
    viseme_outputs: tuple = ()


def read_json(path: Path | str, what: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in a file; `error` naming the file and `what` it should be otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a JSON object")
    return data


def read_preset(path: Path | str, error: type[Exception] = ValueError) -> PresetSpec:
    """Read and check one preset file; `error` naming the file and the rule it breaks (an unknown
    ARKit name, a target name used twice, a missing field, ...)."""
    data = read_json(path, "blendshape preset", error)
    kind = data.get("kind")
    if data.get("format") != PRESET_FORMAT or kind not in PRESET_KINDS:
        raise error(f"{path}: not a blendshape preset (needs \"format\": \"{PRESET_FORMAT}\" and a "
                    f"\"kind\" in {PRESET_KINDS})")
    try:
        fields = {"rename": _rename_fields, "linear": _linear_fields, "classify": _classify_fields}[kind](data)
        if kind != "classify" and data.get("viseme_outputs"):
            fields["viseme_preset"] = str(data.get("viseme_preset", VISEME_PRESET))
            fields["viseme_outputs"] = tuple((out, str(v["viseme"]), float(v.get("gain", 1.0)),
                                              float(v.get("bias", 0.0))) for out, v in data["viseme_outputs"].items())
        return PresetSpec(Path(path).stem, kind, data["description"], **fields)
    except (KeyError, TypeError, ValueError) as e:
        raise error(f"{path}: {e}") from e
    except AttributeError as e:      # an entry that should be an object is a number or a string
        raise error(f"{path}: an entry is not a JSON object where one is expected ({e})") from e


def _rename_fields(data: dict) -> dict:
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
            rows.append(((arkit_index(arkit), 1.0),))
    return {"outputs": tuple(outputs), "rows": tuple(rows), "bias": (0.0,) * len(outputs),
            "aliases": tuple(dict(data.get("aliases", {})).items()),
            "unused_arkit": tuple(k for k, t in table.items() if not t)}


def _linear_fields(data: dict) -> dict:
    outs, rows, bias = data["outputs"], [], []
    for name, spec in outs.items():
        bias.append(float(spec.get("bias", 0.0)))
        rows.append({arkit_index(k): float(w) for k, w in spec.get("weights", {}).items()})
        if not rows[-1] and bias[-1] == 0.0:    # listed weights of 0 are the user's (a table row of gain 0)
            raise ValueError(f"output {name!r} has no weights and no bias: it would always be 0")
    aliases = dict(data.get("aliases", {}))
    bad = [a for a, target in aliases.items() if target not in outs]
    if bad:
        raise ValueError(f"aliases {bad} point to names that are not outputs")
    lo, hi = (float(x) for x in data.get("clip", (0.0, 1.0)))
    return {"outputs": tuple(outs), "rows": tuple(tuple(r.items()) for r in rows), "bias": tuple(bias),
            "clip": (lo, hi), "aliases": tuple(aliases.items())}


def _classify_fields(data: dict) -> dict:
    feats = data["features"]
    weights = [float(w) for w in feats.values()]
    features = tuple(zip([arkit_index(f) for f in feats], weights))
    extended = set(data.get("extended_shapes", RHUBARB_EXTENDED))
    shapes = {s: v for s, v in data["shapes"].items() if s not in RHUBARB_EXTENDED or s in extended}
    for s, v in shapes.items():
        extra = set(v["prototype"]) - set(feats)
        if extra:
            raise ValueError(f"shape {s!r}: prototype names {sorted(extra)} are not in \"features\"")
    if data["rest"] not in shapes:
        raise ValueError(f"\"rest\" {data['rest']!r} is not one of the shapes in use {sorted(shapes)}")
    window = int(data.get("smoothing_frames", 1))
    if window < 1 or window % 2 == 0:
        raise ValueError(f"\"smoothing_frames\" must be an odd number >= 1, got {window}")
    return {"outputs": tuple(shapes), "features": features, "rest": data["rest"], "smoothing_frames": window,
            "prototypes": tuple(tuple(float(v["prototype"].get(f, 0.0)) for f in feats) for v in shapes.values()),
            "display_names": tuple((s, v["display_name"]) for s, v in shapes.items() if "display_name" in v)}


def list_presets(folder: Path | str) -> list:
    """The names (file stems) of the preset files in `folder`, sorted; not read."""
    return sorted(p.stem for p in Path(folder).glob("*.json"))


def best_preset(shape_keys, presets, error: type[Exception] = ValueError) -> str:
    """The name of the (name, channels, aliases) whose channels match_names gives the most of
    `shape_keys` (ties: the first listed); `error` when there are none."""
    presets, keys = list(presets), list(shape_keys)
    if not presets:
        raise error("no presets found")
    return max(presets, key=lambda p: len(match_names(keys, p[1], aliases=p[2]).assignments))[0]


# ---------------------------------------------------------------------------------------------
# The message protocol on the engine's stdout (`--json`)
# ---------------------------------------------------------------------------------------------

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("STATUS", "PROGRESS", "WARN", "ERROR", "RESULT", "DONE", "FRAME")   # FRAME: `lipsync live`
# exit codes of `python -m lipsync_engine`: anything else is a crash of the interpreter itself
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CRASH, EXIT_CANCELLED = 0, 1, 2, 3, 130
EXIT_ENVIRONMENT = 4     # the machine, not the input: disk full, read-only, no CUDA (docs/errors.md)


def encode_message(kind: str, payload: dict) -> str:
    """One protocol line (without the newline); ValueError for an unknown kind.

    >>> encode_message("PROGRESS", {"stage": "train", "done": 3, "total": 30})
    '["PROGRESS",{"stage":"train","done":3,"total":30}]'
    """
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}; expected one of {MESSAGE_TYPES}")
    return json.dumps([kind, payload], separators=(",", ":"))


def decode_message(line: str, error: type[Exception] = ValueError) -> tuple[str, dict]:
    """One stdout line -> (kind, payload); `error` naming what is wrong otherwise.

    >>> decode_message('["DONE", {"exit_code": 0}]')
    ('DONE', {'exit_code': 0})
    """
    try:
        data = json.loads(line)
    except ValueError as e:
        raise error(f"not JSON ({e}): {line[:120]!r}") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[1], dict)):
        raise error(f"not a [TYPE, {{...}}] message: {line[:120]!r}")
    if data[0] not in MESSAGE_TYPES:
        raise error(f"unknown message type {data[0]!r}")
    return data[0], data[1]


# ---------------------------------------------------------------------------------------------
# PC2 point caches and OBJ heads (what `lipsync predict` writes; io/pointcache.py writes them)
# ---------------------------------------------------------------------------------------------

PC2_SIGNATURE = b"POINTCACHE2\0"
PC2_VERSION = 1
PC2_HEADER = struct.Struct("<12siiffi")   # signature, version, points, start frame, sample rate, samples


@dataclass(frozen=True)
class PC2Header:
    points: int           # vertices per frame
    start_frame: float    # frame of the first sample (the engine writes 0)
    sample_rate: float    # frames between samples (1.0: one sample per frame)
    samples: int          # frames in the file


def read_pc2_header(path: Path | str, error: type[Exception] = ValueError) -> PC2Header:
    """The header of a PC2 file; `error` if it is not one or is shorter than it says."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(PC2_HEADER.size)
        size = path.stat().st_size
    except OSError as e:
        raise error(f"{path}: cannot read the point cache ({e.strerror or e})") from None
    if len(raw) < PC2_HEADER.size or raw[:12] != PC2_SIGNATURE:
        raise error(f"{path}: not a PC2 point cache (bad header)")
    _, version, points, start, rate, samples = PC2_HEADER.unpack(raw)
    expected = PC2_HEADER.size + samples * points * 12
    if version != PC2_VERSION or points < 1 or samples < 0 or size < expected:
        raise error(f"{path}: truncated or unsupported PC2 (version {version}, {size} bytes, "
                    f"{expected} expected for {samples} frames of {points} points)")
    return PC2Header(points, start, rate, samples)


def read_pc2_frame(file, header: PC2Header, index: int) -> array:
    """Frame `index` of an open PC2 file as a flat array('f') [x0, y0, z0, x1, ...]."""
    if not 0 <= index < header.samples:
        raise IndexError(f"frame {index} outside 0..{header.samples - 1}")
    n = header.points * 3
    file.seek(PC2_HEADER.size + index * n * 4)
    out = array("f")
    out.frombytes(file.read(n * 4))
    if sys.byteorder == "big":  # PC2 is little-endian
        out.byteswap()
    return out


@dataclass(frozen=True)
class ObjData:
    """vertices: [(x, y, z)]; uvs: [(u, v)] (v up); faces: [(v0, v1, v2, ...)] and face_uvs: the
    matching uv index per corner (0-based, -1 where a corner has none); material_library: mtllib."""

    vertices: list
    uvs: list
    faces: list
    face_uvs: list
    material_library: str


def read_obj(path: Path | str, error: type[Exception] = ValueError, triangles: bool = False) -> ObjData:
    """The v / vt / f / mtllib records of a Wavefront OBJ (negative indices allowed); `error`
    naming the file (and line) otherwise. triangles : every face must have 3 corners."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise error(f"{path}: cannot read the OBJ ({e.strerror or e})") from None
    verts, uvs, faces, face_uvs, mtllib = [], [], [], [], ""
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                verts.append(tuple(float(x) for x in parts[1:4]))
            elif parts[0] == "vt":
                uvs.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "f":
                corners = [c.split("/") for c in parts[1:]]
                if triangles and len(corners) != 3:
                    raise ValueError("not a triangle")
                faces.append(tuple(_obj_index(c[0], len(verts)) for c in corners))
                face_uvs.append(tuple(_obj_index(c[1], len(uvs)) if len(c) > 1 and c[1] else -1 for c in corners))
            elif parts[0] == "mtllib":
                mtllib = line.split(None, 1)[1].strip()
        except (ValueError, IndexError) as e:
            raise error(f"{path}:{number}: malformed OBJ line {line[:60]!r} ({e})") from None
    if not verts or not faces:
        raise error(f"{path}: the OBJ has no vertices or no faces")
    return ObjData(verts, uvs, faces, face_uvs, mtllib)


def _obj_index(text: str, count: int) -> int:
    i = int(text)
    return i - 1 if i > 0 else count + i
