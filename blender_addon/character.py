"""Drive a character from predictions: one take per line on the NLA, eased to rest.

Owns: reading the predicted ARKit coefficients (blendshapes_json of result.json), choosing
the preset, the character's targets (shape keys matched by mapping.py, or an armature's
bones: jawOpen turns the jaw bone, mouth coefficients move lip bones named like them; or the
mapping table's rows, whose sources may be visemes (the Rhubarb preset's, keyed CONSTANT) and
whose channels may be pose assets blended in by weight), and for each line (a sound strip) a
NEW action named after it, pushed as an NLA strip at the line's frame (anim.push_take): values resampled from
the result's fps to the scene's (sub-frame keys), clipped to each key's slider range, eased
to the rest pose over `ease` frames before and after. Procedural blinks and head motion go
into strips of their own that ADD on top (the head on the object's delta rotation, or on a
bone), so the user's own animation is never replaced. Older takes of the same line are muted
(removed only with replace); the user's active action moves into the NLA unchanged.
Must not: run the engine or import the head (importer.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import anim, mapping_table
from .core import client, mapping, results

DEFAULT_EASE = 3                    # frames from rest into a line and back to rest after it
JAW_WORDS = ("jaw",)                # an armature's jaw bone: the first bone whose name holds one of these


@dataclass(frozen=True)
class Target:
    """One animated channel of the character and what drives it: value = offset + gain * source.

    rotation : "" for a plain value (a shape key), else the bone axis "X", "Y" or "Z" that the
    value turns (radians); on a quaternion bone the angle becomes the quaternion's components.
    """

    name: str               # what the user sees: the shape key or "bone: rotation X"
    data_path: str          # on the data-block being animated (the shape-key block, or the armature)
    source: str             # the preset channel (or ARKit name) that drives it
    gain: float = 1.0
    offset: float = 0.0
    lo: float = 0.0
    hi: float = 1.0
    rotation: str = ""
    index: int = 0
    holder: object = None   # the ID keyed instead of the character's (a driver's input property), else None
    pose: tuple = ()        # a pose asset's ((data_path, index, pose value, rest value), ...): value is its weight


@dataclass
class DriveReport:
    action: str             # the (last) line's take
    preset: str             # the preset used
    match: mapping.Match    # what drives what, and what was left out
    takes: list = field(default_factory=list)          # every take made (action names)
    nla: anim.TakeReport = field(default_factory=anim.TakeReport)
    head_action: str = ""   # the (last) head-motion action ("" if none)
    unchanged: list = field(default_factory=list)      # lines already driven from the same inputs
    warnings: list = field(default_factory=list)

    @property
    def kept(self) -> str:
        return ", ".join(self.nla.kept)

    def text(self) -> str:
        takes = ", ".join(f"'{t}'" for t in self.takes) or "no new take"
        parts = [f"{takes} ({self.preset} preset): {self.match.report()}"]
        if self.unchanged:
            parts.append("already driven, unchanged: " + ", ".join(self.unchanged))
        nla = self.nla.text()
        if nla:
            parts.append(nla)
        if self.head_action:
            parts.append(f"head motion added in '{self.head_action}'")
        return "; ".join(parts + self.warnings)


def presets_folder() -> Path:
    root = client.bundled_engine_dir()
    if root is None:
        raise FileNotFoundError("the engine's blendshape_rigs folder is missing; reinstall the add-on")
    return root / "blendshape_rigs" / "presets"


def arkit_rows(result: results.PredictionResult) -> list:
    """(F, 52) predicted coefficients in ARKit order, from the prediction's blendshapes JSON."""
    track = results.read_coefficients(result.file("blendshapes_json"))
    keys = {mapping.normalize_name(n): i for i, n in enumerate(track.names)}
    try:
        order = [keys[mapping.normalize_name(n)] for n in mapping.ARKIT_NAMES]
    except KeyError as e:
        raise ValueError(f"{result.file('blendshapes_json')}: ARKit channel {e} is missing") from None
    return [[row[j] for j in order] for row in track.frames]


def choose_preset(key_names: list, wanted: str) -> mapping.Preset:
    presets = [(n, _with_aliases(n, p)) for n, p in mapping.list_presets(presets_folder())]
    by_name = dict(presets)
    name = mapping.best_preset(key_names, presets) if wanted in ("", "AUTO") else wanted
    if name not in by_name:
        raise ValueError(f"preset {name!r} not found in {presets_folder()}")
    return by_name[name]


def _with_aliases(name: str, preset: mapping.Preset) -> mapping.Preset:
    """Mouth-shape presets also match their Preston Blair names (MBP, etc, AI, E, O, U, FV, L, rest)."""
    if preset.kind != "classify":
        return preset
    pb = mapping_table.preston_blair_aliases(presets_folder() / f"{name}.json")
    return dataclasses.replace(preset, aliases={**pb, **preset.aliases})


def _esc(name: str) -> str:
    return bpy.utils.escape_identifier(name)


def shape_key_targets(obj, options: mapping.DriveOptions, table: list | None = None) -> tuple:
    """(preset, match, targets) of a mesh character: its shape keys matched to the preset's channels
    (corrective keys never), or the mapping table's rows (mapping_table.Row) when given."""
    key = obj.data.shape_keys if obj.type == 'MESH' else None
    if key is None or len(key.key_blocks) < 2:
        raise ValueError(f"{obj.name}: has no shape keys to drive")
    names = [kb.name for kb in key.key_blocks[1:]]       # the first is the basis
    if table is not None:
        preset = table_preset()         # sources are ARKit coefficients and the visemes
        rows = [r for r in table if r.source != mapping_table.NONE and r.key in key.key_blocks]
        targets = [Target(r.key, f'key_blocks["{_esc(r.key)}"].value', table_column(preset, r.source),
                          r.gain, r.offset, key.key_blocks[r.key].slider_min, key.key_blocks[r.key].slider_max)
                   for r in rows if table_column(preset, r.source)]
        match = mapping.Match({t.name: t.source for t in targets},
                              tuple(n for n in names if n not in {t.name for t in targets}), (), ())
        return preset, match, targets
    preset = choose_preset([n for n in names if not mapping_table.is_corrective(n)], options.preset)
    plain = [n for n in names if not mapping_table.is_corrective(n)]
    explicit = mapping_table.preston_blair_explicit(plain, preset.aliases) if preset.kind == "classify" else {}
    match = mapping.match_names(plain, preset.outputs, explicit=explicit, aliases=preset.aliases)
    left = tuple(n for n in names if mapping_table.is_corrective(n))
    match = mapping.Match(match.assignments, match.unmapped_keys + left, match.ignored_keys, match.unused_channels)
    targets = [Target(k, f'key_blocks["{_esc(k)}"].value', ch, lo=key.key_blocks[k].slider_min,
                      hi=key.key_blocks[k].slider_max) for k, ch in match.assignments.items()]
    return preset, match, targets


def table_preset() -> mapping.Preset:
    """The preset behind a mapping table: the ARKit preset (one output per coefficient) plus one output
    per viseme of the Rhubarb preset, "viseme:A" ... "viseme:X", 1 on the frames the Rhubarb
    classifier (mapping.Preset.apply of that preset, as the mouth-swap preset path uses) gives that
    shape, else 0."""
    presets = dict(mapping.list_presets(presets_folder()))
    arkit, visemes = presets["arkit"], presets.get(mapping.VISEME_PRESET)
    if visemes is None or visemes.kind != "classify":
        return arkit
    return mapping.with_visemes(arkit, visemes, [(mapping_table.viseme_source(v), v, 1.0, 0.0)
                                                 for v in visemes.outputs])


def table_column(preset: mapping.Preset, source: str) -> str:
    """The output of table_preset() that a row's source reads ("" when there is none)."""
    if mapping_table.viseme_shape(source):
        return source if source in preset.outputs else ""
    column = {mapping.normalize_name(n): c for c, n in zip(preset.outputs, mapping.ARKIT_NAMES)}
    return column.get(mapping.normalize_name(source), "")


def viseme_preset() -> mapping.Preset:
    """The classify preset of the visemes (Rhubarb), with its Preston Blair names as aliases."""
    return _with_aliases(mapping.VISEME_PRESET,
                         mapping.load_preset(presets_folder() / f"{mapping.VISEME_PRESET}.json"))


# A pose asset (Blender 4.x/5.0's pose library: an action marked as an asset, one pose) blends its bone
# transforms in with a row's value as weight: channel = rest + weight * (pose value - rest).
POSE_REST = {"location": (0.0, 0.0, 0.0), "rotation_euler": (0.0, 0.0, 0.0),
             "rotation_quaternion": (1.0, 0.0, 0.0, 0.0), "rotation_axis_angle": (0.0, 0.0, 1.0, 0.0),
             "scale": (1.0, 1.0, 1.0)}
_BONE_PATH = re.compile(r'^pose\.bones\["((?:[^"\\]|\\.)*)"\]\.(\w+)$')


def _pose_bone(data_path: str) -> tuple:
    """'pose.bones["jaw"].location' -> ("jaw", "location"); ("", "") for other paths."""
    m = _BONE_PATH.match(data_path)
    return (re.sub(r"\\(.)", r"\1", m.group(1)), m.group(2)) if m else ("", "")


def pose_channels(arm, action) -> tuple:
    """((data_path, index, pose value, rest value), ...): the bone transforms (location, rotation,
    scale) of `action` on arm's bones, evaluated at the action's first frame (a pose asset holds one
    pose); channels of other bones or other properties are left out."""
    frame = action.frame_range[0]
    out = []
    for fc in anim.action_fcurves(action, 'OBJECT'):
        bone, prop = _pose_bone(fc.data_path)
        if prop not in POSE_REST or fc.mute:
            continue
        if arm.pose.bones.get(bone) is None or fc.array_index >= len(POSE_REST[prop]):
            continue
        out.append((fc.data_path, fc.array_index, float(fc.evaluate(frame)), POSE_REST[prop][fc.array_index]))
    return tuple(sorted(out))


def pose_assets(arm) -> list:
    """The actions of the blend file marked as assets that pose arm's bones (the pose library)."""
    return sorted((a for a in bpy.data.actions if a.asset_data is not None and pose_channels(arm, a)),
                  key=lambda a: a.name)


def pose_target(arm, key: str, source: str, gain: float = 1.0, offset: float = 0.0):
    """The Target of a pose row ("pose asset: AI"): the pose action AI blended in with weight
    offset + gain * source; None when there is no such action posing arm's bones."""
    action = bpy.data.actions.get(mapping_table.pose_action_name(key))
    channels = pose_channels(arm, action) if action is not None and arm.type == 'ARMATURE' else ()
    if not channels:
        return None
    return Target(key, "", source, gain, offset, lo=-1e6, hi=1e6, pose=channels)


def driven_keys(holder, targets: list) -> list:
    """The targets whose channel a driver controls: keys would be overridden by the driver."""
    ad = holder.animation_data
    paths = {(d.data_path, d.array_index) for d in (ad.drivers if ad else ())}
    return [t.name for t in targets if (t.data_path, t.index) in paths]


_CUSTOM_PROPERTY = re.compile(r"""\[(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\]$""")    # ...["name"]


def driver_input(holder, target: Target):
    """(ID, data_path) of the property that the driver of `target` passes through unchanged: a
    SCRIPTED driver whose expression is its one variable, or an AVERAGE driver of one variable, of
    type Single Property, reading an ID property or custom property (`obj["jaw_ctrl"]`,
    `pose.bones["ctrl"]["jaw"]`), with an F-curve that maps its input to itself; else None."""
    ad = holder.animation_data
    fc = next((d for d in (ad.drivers if ad else ()) if d.data_path == target.data_path
               and d.array_index == target.index), None)
    if fc is None or fc.driver.type not in ('SCRIPTED', 'AVERAGE') or len(fc.driver.variables) != 1:
        return None
    var = fc.driver.variables[0]
    if var.type != 'SINGLE_PROP' or (fc.driver.type == 'SCRIPTED' and fc.driver.expression.strip() != var.name):
        return None
    tgt = var.targets[0]
    if tgt.id is None or not _CUSTOM_PROPERTY.search(tgt.data_path or "") \
            or not hasattr(tgt.id, "animation_data_create"):
        return None
    lo, hi = max(target.lo, -10.0), min(target.hi, 10.0)
    if any(abs(fc.evaluate(lo + (hi - lo) * k / 8) - (lo + (hi - lo) * k / 8)) > 1e-5 for k in range(9)):
        return None                     # the driver's curve reshapes its input: keying it would not give the value
    try:
        tgt.id.path_resolve(tgt.data_path)
    except ValueError:
        return None                     # the property does not exist yet
    return tgt.id, tgt.data_path


def redirect_to_driver_inputs(holder, targets: list) -> tuple:
    """(targets, redirected names, kept names): each driver-controlled target whose driver passes a
    custom property through (driver_input) keys that property instead."""
    driven = set(driven_keys(holder, targets))
    out, moved, kept = [], [], []
    for t in targets:
        found = driver_input(holder, t) if t.name in driven else None
        if found is None:
            out.append(t)
            if t.name in driven:
                kept.append(t.name)
            continue
        out.append(dataclasses.replace(t, data_path=found[1], index=0, holder=found[0]))
        moved.append(f"{t.name} -> {found[0].name}{found[1] if found[1].startswith('[') else '.' + found[1]}")
    return out, moved, kept


def find_jaw_bone(arm) -> str:
    return next((b.name for b in arm.pose.bones if any(w in b.name.casefold() for w in JAW_WORDS)), "")


# Lip bones: a bone whose name matches a mouth coefficient (fuzzy, like shape keys: "mouthSmile_L",
# "lipCorner.L", Rigify's "lips.L") moves by gain * coefficient along one bone-local axis (the bone's
# rest space: Y along the bone, Z its up for a level bone); the table edits gain, axis and source.
LIP_BONES = {                       # coefficient: (channel, axis, gain per unit of the coefficient)
    "mouthSmileLeft": ("location", "Z", 0.006), "mouthSmileRight": ("location", "Z", 0.006),
    "mouthFrownLeft": ("location", "Z", -0.005), "mouthFrownRight": ("location", "Z", -0.005),
    "mouthUpperUpLeft": ("location", "Z", 0.004), "mouthUpperUpRight": ("location", "Z", 0.004),
    "mouthLowerDownLeft": ("location", "Z", -0.004), "mouthLowerDownRight": ("location", "Z", -0.004),
    "mouthFunnel": ("location", "Y", 0.005), "mouthPucker": ("location", "Y", 0.008),
    "mouthClose": ("location", "Z", -0.003), "mouthRollLower": ("rotation", "X", math.radians(-15.0)),
    "mouthRollUpper": ("rotation", "X", math.radians(15.0)),
}
LIP_BONE_ALIASES = {"lipCornerLeft": "mouthSmileLeft", "lipCornerRight": "mouthSmileRight",
                    "mouthCornerLeft": "mouthSmileLeft", "mouthCornerRight": "mouthSmileRight",
                    "lipsLeft": "mouthSmileLeft", "lipsRight": "mouthSmileRight"}


def lip_bone_targets(arm, skip: tuple = ()) -> tuple:
    """(match, targets) of the bones whose names match a mouth coefficient of LIP_BONES."""
    names = [b.name for b in arm.pose.bones if b.name not in skip]
    match = mapping.match_names(names, tuple(LIP_BONES), aliases=LIP_BONE_ALIASES)
    targets = []
    for bone, channel in match.assignments.items():
        kind, axis, gain = LIP_BONES[channel]
        targets.append(bone_target(arm, f"{bone}: {kind} {axis}", channel, gain))
    return match, targets


def armature_targets(arm, jaw_bone: str = "", jaw_degrees: float = 25.0, axis: str = "X") -> tuple:
    """(preset, match, targets) of an armature character: jawOpen turns the jaw bone about `axis`
    by up to jaw_degrees, and mouth coefficients move the lip bones (LIP_BONES) (the ARKit preset:
    its channels are the 52 coefficients)."""
    bone = jaw_bone or find_jaw_bone(arm)
    if jaw_bone and arm.pose.bones.get(jaw_bone) is None:
        raise ValueError(f"{arm.name}: no jaw bone named {jaw_bone!r}; name it in the Character panel")
    preset = dict(mapping.list_presets(presets_folder()))["arkit"]
    targets = []
    if bone:
        pb = arm.pose.bones[bone]
        path = f'pose.bones["{_esc(bone)}"].' + ("rotation_quaternion" if pb.rotation_mode == 'QUATERNION'
                                                    else "rotation_euler")
        targets.append(Target(f"{bone}: rotation {axis}", path, "jawOpen", gain=math.radians(jaw_degrees),
                              lo=-math.pi, hi=math.pi, rotation=axis, index="XYZ".index(axis)))
    _, lip_targets = lip_bone_targets(arm, skip=(bone,))
    targets += lip_targets
    if not targets:
        raise ValueError(f"{arm.name}: no jaw bone found (nor lip bones named like mouth coefficients); "
                         "name it in the Character panel")
    used = {t.source for t in targets}
    match = mapping.Match({t.name: t.source for t in targets}, (), (),
                          tuple(c for c in preset.outputs if c not in used))
    return preset, match, targets


def bone_target(arm, name: str, source: str, gain: float = 1.0, offset: float = 0.0):
    """The Target of a bone channel row, "bone: rotation X" (radians) or "bone: location Z" (the
    bone's local units), or None when the armature has no such bone."""
    bone, _, channel = name.rpartition(": ")
    kind, _, axis = channel.partition(" ")
    pb = arm.pose.bones.get(bone) if arm.type == 'ARMATURE' else None
    if pb is None or kind not in ("rotation", "location") or axis not in ("X", "Y", "Z"):
        return None
    base = f'pose.bones["{_esc(bone)}"].'
    if kind == "location":
        return Target(name, base + "location", source, gain, offset, lo=-1e6, hi=1e6, index="XYZ".index(axis))
    path = base + ("rotation_quaternion" if pb.rotation_mode == 'QUATERNION' else "rotation_euler")
    return Target(name, path, source, gain, offset, lo=-math.pi, hi=math.pi, rotation=axis, index="XYZ".index(axis))


def table_rows(obj, options: mapping.DriveOptions) -> list:
    """Fill from Character: the mapping table (mapping_table.Row) that automatic matching gives,
    one row per shape key (or per bone channel of an armature)."""
    if obj.type == 'ARMATURE':
        return armature_rows(obj)
    preset, match, _ = shape_key_targets(obj, options)
    names = [kb.name for kb in obj.data.shape_keys.key_blocks[1:]]
    return mapping_table.rows_from_preset(names, preset, match)     # a mouth-swap preset: viseme rows


def armature_rows(arm) -> list:
    """An armature's table: its jaw and lip bone channels, then one row per pose asset posing its bones,
    with the viseme or coefficient its name gives (MBP, AI, ..., jawOpen; none if nothing). A bone
    that a pose row with a source poses is left to the poses: its own channel rows get none."""
    try:
        bones = [mapping_table.Row(t.name, t.source, t.gain, t.offset) for t in armature_targets(arm)[2]]
    except ValueError:
        bones = []
    poses = pose_assets(arm)
    if not bones and not poses:
        raise ValueError(f"{arm.name}: no jaw bone, no lip bones named like mouth coefficients and no pose "
                         "assets (actions marked as assets posing its bones)")
    visemes = viseme_preset()
    guess = mapping_table.guess_sources([a.name for a in poses], visemes, visemes.aliases)
    rows = [mapping_table.Row(mapping_table.pose_key(a.name), guess.get(a.name, mapping_table.NONE)) for a in poses]
    posed = {_pose_bone(c[0])[0] for a, r in zip(poses, rows) if r.source != mapping_table.NONE
             for c in pose_channels(arm, a)}
    bones = [dataclasses.replace(r, source=mapping_table.NONE) if r.key.rpartition(": ")[0] in posed else r
             for r in bones]
    return bones + rows


def table_channels(obj, preset_file=None) -> list:
    """The channel names a table of obj may hold: its shape keys, or its armature's default bone
    channels plus every bone channel a preset file names."""
    if obj.type != 'ARMATURE':
        return [kb.name for kb in obj.data.shape_keys.key_blocks[1:]] if obj.data.shape_keys else []
    try:
        names = [t.name for t in armature_targets(obj)[2]]
    except ValueError:
        names = []
    names += [mapping_table.pose_key(a.name) for a in pose_assets(obj)]
    if preset_file is not None:
        names += [n for n in mapping.load_preset(preset_file, (presets_folder(),)).outputs if n not in names
                  and (bone_target(obj, n, "jawOpen") or pose_target(obj, n, "jawOpen")) is not None]
    return names


def table_targets(obj, rows: list) -> tuple:
    """(preset, match, targets) from the mapping table's rows (mapping_table.Row)."""
    if obj.type != 'ARMATURE':
        return shape_key_targets(obj, mapping.DriveOptions(), table=rows)
    preset = table_preset()
    targets = [(pose_target if mapping_table.pose_action_name(r.key) else bone_target)(
        obj, r.key, table_column(preset, r.source), r.gain, r.offset) for r in rows if r.source != mapping_table.NONE]
    targets = [t for t in targets if t is not None and t.source]
    used = {t.source for t in targets}
    match = mapping.Match({t.name: t.source for t in targets},
                          tuple(r.key for r in rows if r.key not in {t.name for t in targets}), (),
                          tuple(c for c in preset.outputs if c not in used))
    return preset, match, targets


def _channels(target: Target, series: list) -> list:
    """[(data_path, index, values)] that key `series` (the target's values) on its data-block."""
    if not target.rotation:
        return [(target.data_path, target.index, series)]
    axis = "XYZ".index(target.rotation)
    if target.data_path.endswith("rotation_quaternion"):
        out = [(target.data_path, 0, [math.cos(a / 2) for a in series])]
        return out + [(target.data_path, axis + 1, [math.sin(a / 2) for a in series])]
    return [(target.data_path, axis, series)]


def _channel_series(targets: list, series_of: dict, preset: mapping.Preset) -> dict:
    """{(data_path, index): [values, stepwise]} keyed for `targets` whose values are series_of[t]: a
    channel target's own values; a pose target adds weight * (pose - rest) to each channel it poses
    (to the rest value, or to a channel target's values on the same channel). stepwise: keyed
    CONSTANT (every source of the channel is a viseme or a mouth-swap shape)."""
    out = {}
    for t in targets:
        if not t.pose:
            for path, index, vals in _channels(t, series_of[t]):
                out[(path, index)] = [list(vals), preset.stepwise(t.source)]
    for t in targets:
        weights = series_of[t]
        for path, index, value, rest in t.pose:
            cur = out.setdefault((path, index), [[rest] * len(weights), True])
            cur[0] = [a + w * (value - rest) for a, w in zip(cur[0], weights)]
            cur[1] = cur[1] and preset.stepwise(t.source)
    return out


def drive_character(obj, segments: list, options: mapping.DriveOptions, head=None, bone: str = "",
                    take: str = "", replace: bool = False, ease: int = DEFAULT_EASE, scene=None,
                    targets: tuple | None = None, driver_inputs: bool = False) -> DriveReport:
    """One take per segment on obj's NLA (see the module's docstring).

    segments : [(PredictionResult, frame_start)] or [(result, frame_start, line)]: line names the
        take (a sound strip's name; default `take`, else the audio's stem).
    head : the object to sway (an object, or an armature with `bone`), when options.head_motion.
    targets : (preset, match, targets) to use instead of matching the character (the mapping
        table; armature characters).
    driver_inputs : a key controlled by a pass-through driver of a custom property keys that
        property instead (a take on the property's ID); off, such keys are keyed and reported.
    """
    scene = scene or bpy.context.scene
    if options.head_motion and head is not None and head.type == 'ARMATURE' and bone \
            and head.pose.bones.get(bone) is None:     # checked before anything is written
        raise ValueError(f"{head.name}: has no bone named {bone!r}")
    if targets is None:
        targets = armature_targets(obj) if obj.type == 'ARMATURE' else shape_key_targets(obj, options)
    preset, match, rows = targets
    holder = obj if obj.type == 'ARMATURE' else obj.data.shape_keys
    column = {c: j for j, c in enumerate(preset.outputs)}
    rows = [t for t in rows if t.source in column]
    report = DriveReport("", preset.name, match)
    driven = driven_keys(holder, rows)
    if driven and driver_inputs:
        rows, moved, driven = redirect_to_driver_inputs(holder, rows)
        if moved:
            report.warnings.append("keyed the driver input instead: " + ", ".join(moved))
    if driven:
        report.warnings.append(f"{len(driven)} key(s) controlled by a driver, which overrides the keys: "
                               + ", ".join(driven) + " (remove the driver, or key the property it reads"
                               + ("" if driver_inputs else ": the Key Driver Inputs option") + ")")
    groups = {}                         # the IDs keyed: the character's, and any driver inputs' IDs
    for t in rows:
        groups.setdefault(t.holder if t.holder is not None else holder, []).append(t)
    groups = groups or {holder: []}
    zeros = [0.0] * len(mapping.ARKIT_NAMES)
    rest = [v * options.strength for v in preset.apply([zeros])[0]]
    rest_of = {t: min(max(t.offset + t.gain * rest[column[t.source]], t.lo), t.hi) for t in rows}
    for h, group in groups.items():
        channels = _channel_series(group, {t: [rest_of[t]] for t in group}, preset)
        anim.ensure_rest(h, {k: v[0][0] for k, v in channels.items()}, report.nla)
        anim.keep_user_action(h, report.nla)
    fps_scene = scene.render.fps / scene.render.fps_base
    for seg in sorted(segments, key=lambda s: s[1]):
        result, start = seg[0], seg[1]
        line = (seg[2] if len(seg) > 2 else "") or take or Path(result.audio).stem or result.path.name
        channels = [(t.data_path, t.index, t.source, t.gain, t.offset, getattr(t.holder, "name", ""), t.pose)
                    for t in rows]
        signature = f"{result.path}|{start}|{fps_scene:.6f}|{options}|{preset.name}|{ease}|{channels}"
        if all(anim.live_take(h, line, "lips", signature) is not None for h in groups):
            report.unchanged.append(line)
            continue
        step = fps_scene / result.fps                       # scene frames per result frame
        if abs(step - 1.0) > 1e-6:
            report.warnings.append(f"'{line}' was predicted at {result.fps:g} fps and resampled to the scene's "
                                   f"{fps_scene:g} fps")
        arkit = mapping.smooth(arkit_rows(result), options.smoothing_frames)
        values = [[v * options.strength for v in r] for r in preset.apply(arkit)]
        frames = [start + i * step for i in range(len(values))]
        keys = ([start - ease] if ease > 0 else []) + frames + ([frames[-1] + ease] if ease > 0 else [])
        for h, group in groups.items():
            anim.retire_line(h, line, "lips", replace, report.nla)
            name = f"LipSync3D {line}" if h == holder else f"LipSync3D {line} ({h.name})"
            action = anim.begin_action(h, name, str(result.path), line, "lips", signature)
            action[anim.CORE] = [float(frames[0]), float(frames[-1])]
            series_of = {}
            for t in group:
                j = column[t.source]
                series = [min(max(t.offset + t.gain * r[j], t.lo), t.hi) for r in values]
                series_of[t] = [rest_of[t]] + series + [rest_of[t]] if ease > 0 else series
            for (path, index), (vals, stepwise) in _channel_series(group, series_of, preset).items():
                anim.set_keys(anim.take_fcurve(action, h, path, index, group="LipSync3D"), keys, vals,
                              'CONSTANT' if stepwise else 'LINEAR')     # mouth swaps (visemes) snap
            anim.push_take(h, action)
            report.takes.append(action.name)
            if h == holder or not report.action:
                report.action = action.name
        if options.blinks:
            _blinks(holder, [t for t in rows if t.holder is None], column, arkit, values, preset, options,
                    result.fps, keys, ease, line, signature, replace, report)
        if options.head_motion and head is not None:
            report.head_action = drive_head(head, bone, arkit, keys, frames, result.fps, options, line, ease,
                                            replace, report.nla, signature)
    return report


def _blinks(holder, rows, column, arkit, values, preset, options, fps, keys, ease, line, signature, replace,
            report) -> None:
    """Procedural blinks as an ADD strip: (preset output with blinks) - (without), zero at the ends."""
    blinked = [[v * options.strength for v in r] for r in preset.apply(mapping.add_blinks(arkit, fps, options.seed))]
    delta = {}                          # (data_path, index): the blinks' addition
    for t in rows:
        j = column[t.source]
        d = [t.gain * (b[j] - v[j]) for b, v in zip(blinked, values)]
        if not any(abs(x) > 1e-9 for x in d) or t.rotation:
            continue
        d = ([0.0] if ease > 0 else []) + d + ([0.0] if ease > 0 else [])
        # a pose (a blink pose asset) adds weight * (pose - rest) to its channels; not to quaternions,
        # which an ADD strip cannot add to
        parts = [(p, i, v - r) for p, i, v, r in t.pose
                 if not p.endswith(("rotation_quaternion", "rotation_axis_angle"))] if t.pose \
            else [(t.data_path, t.index, 1.0)]
        for path, index, scale in parts:
            cur = delta.setdefault((path, index), [0.0] * len(d))
            delta[(path, index)] = [a + scale * x for a, x in zip(cur, d)]
    anim.retire_line(holder, line, "blinks", replace, report.nla)
    delta = {k: v for k, v in delta.items() if any(abs(x) > 1e-9 for x in v)}
    if not delta:
        return
    action = anim.begin_action(holder, f"LipSync3D blinks {line}", line, line, "blinks", signature)
    action[anim.CORE] = [float(keys[0] + ease), float(keys[-1] - ease)]
    for (path, index), series in delta.items():
        anim.set_keys(anim.take_fcurve(action, holder, path, index, group="LipSync3D blinks"), keys, series)
    anim.push_take(holder, action, additive='ADD')


def drive_head(target, bone: str, rows: list, keys: list, frames: list, fps: float, options: mapping.DriveOptions,
               take: str, ease: int = DEFAULT_EASE, replace: bool = False, nla=None, signature: str = "") -> str:
    """A subtle sway (pitch, yaw, roll) in an ADD strip of its own; returns the action's name.

    On an object: its delta rotation (added to whatever rotation it has, keyed or not), about
    X (pitch), Z (yaw: Blender's up) and Y (roll). On a pose bone: about the bone's X, Y (along
    the bone) and Z, added to its own animation (COMBINE for quaternions). Zero at the ends.
    """
    nla = nla if nla is not None else anim.TakeReport()
    step = (frames[1] - frames[0]) if len(frames) > 1 else 1.0
    angles = mapping.head_motion(rows, fps, options.head_amplitude_deg, options.seed + 1,
                                 [f / step for f in frames])        # time = scene frame / scene fps
    if target.type == 'ARMATURE' and bone:
        holder = target.pose.bones.get(bone)
        if holder is None:
            raise ValueError(f"{target.name}: has no bone named {bone!r}")
        base = f'pose.bones["{_esc(bone)}"].'
        quat = holder.rotation_mode == 'QUATERNION'
        paths = (base + "rotation_quaternion", base + "rotation_euler")
        anim.keep_user_action(target, nla)      # an active action would replace the bone's motion on top
    else:
        angles = [(a[0], a[2], a[1]) for a in angles]          # pitch about X, yaw about Z (up), roll about Y
        quat = target.rotation_mode == 'QUATERNION'
        paths = ("delta_rotation_quaternion", "delta_rotation_euler")
    if len(keys) > len(angles):
        angles = [(0.0, 0.0, 0.0)] + angles + [(0.0, 0.0, 0.0)]
    anim.retire_line(target, take, "head", replace, nla)
    action = anim.begin_action(target, f"LipSync3D head {take}", take, take, "head", signature)
    action[anim.CORE] = [float(frames[0]), float(frames[-1])]
    group = bone or "LipSync3D head"
    if quat:
        quats = [mapping.euler_to_quaternion(*a) for a in angles]
        for i in range(4):
            anim.set_keys(anim.take_fcurve(action, target, paths[0], i, group), keys, [q[i] for q in quats])
    else:
        for i in range(3):
            anim.set_keys(anim.take_fcurve(action, target, paths[1], i, group), keys, [a[i] for a in angles])
    anim.push_take(target, action, additive='COMBINE' if quat else 'ADD')
    return action.name
