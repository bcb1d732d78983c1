"""Drive a character's shape keys (and optionally its head) from a prediction.

Owns: reading the predicted ARKit coefficients (blendshapes_json of result.json), choosing
the preset, matching the character's shape keys (mapping.py), and writing one F-curve per
driven key in a NEW action named "LipSync3D <take>" (anim.py keeps the user's action on an
NLA track), values clipped to each key's slider range; a head sway on the object or on an
armature bone, in an action of its own.
Must not: run the engine or import the head (importer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from . import anim
from .core import client, mapping, results


@dataclass(frozen=True)
class DriveReport:
    action: str             # the new shape-key action
    preset: str             # the preset used
    match: mapping.Match    # what drives what, and what was left out
    kept: str               # the user's action moved to an NLA track ("" if none)
    head_action: str = ""   # the head-motion action ("" if none)

    def text(self) -> str:
        kept = f"; your action '{self.kept}' is kept on an NLA track" if self.kept else ""
        head = f"; head motion in '{self.head_action}'" if self.head_action else ""
        return f"'{self.action}' ({self.preset} preset): {self.match.report()}{kept}{head}"


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
    presets = mapping.list_presets(presets_folder())
    by_name = dict(presets)
    name = mapping.best_preset(key_names, presets) if wanted in ("", "AUTO") else wanted
    if name not in by_name:
        raise ValueError(f"preset {name!r} not found in {presets_folder()}")
    return by_name[name]


def drive_character(obj, segments: list, options: mapping.DriveOptions, head=None, bone: str = "",
                    take: str = "") -> DriveReport:
    """Key obj's shape keys from one or more predictions placed on the timeline.

    segments : [(PredictionResult, frame_start)], e.g. every strip of a channel; between two
        segments the keys rest (the preset's values for all-zero coefficients).
    head : the object to sway (obj itself, or an armature with `bone`), when options.head_motion.
    """
    key = obj.data.shape_keys if obj.type == 'MESH' else None
    if key is None or len(key.key_blocks) < 2:
        raise ValueError(f"{obj.name}: has no shape keys to drive")
    if options.head_motion and head is not None and head.type == 'ARMATURE' and bone \
            and head.pose.bones.get(bone) is None:     # checked before anything is written
        raise ValueError(f"{head.name}: has no bone named {bone!r}")
    names = [kb.name for kb in key.key_blocks[1:]]       # the first is the basis
    preset = choose_preset(names, options.preset)
    match = mapping.match_names(names, preset.outputs, aliases=preset.aliases)
    segments = sorted(segments, key=lambda s: s[1])
    frames, values, arkit = _timeline(segments, preset, options)
    first = segments[0][0]
    take = take or Path(first.audio).stem or first.path.name
    action, kept = anim.own_action(key, f"LipSync3D {take}", str(first.path))
    column = {c: j for j, c in enumerate(preset.outputs)}
    for key_name, channel in match.assignments.items():
        kb = key.key_blocks[key_name]
        j = column[channel]
        series = [min(max(r[j], kb.slider_min), kb.slider_max) for r in values]
        fc = anim.fcurve(action, key, f'key_blocks["{bpy.utils.escape_identifier(key_name)}"].value',
                         group="LipSync3D")
        anim.set_keys(fc, frames, series)
    head_action = ""
    if options.head_motion and head is not None:
        head_action = drive_head(head, bone, arkit, frames, first.fps, options, take)
    return DriveReport(action.name, preset.name, match, kept, head_action)


def _timeline(segments: list, preset: mapping.Preset, options: mapping.DriveOptions) -> tuple:
    """(frames, channel rows, ARKit rows) over all segments, with rest keys in the gaps."""
    zeros = [0.0] * len(mapping.ARKIT_NAMES)
    rest = preset.apply([zeros])[0]
    frames, values, arkit = [], [], []
    for result, start in segments:
        rows = arkit_rows(result)
        if frames and start > frames[-1] + 1:
            gap = [frames[-1] + 1] + ([start - 1] if start - 1 > frames[-1] + 1 else [])
            frames += gap
            values += [rest] * len(gap)
            arkit += [zeros] * len(gap)
        keep = [i for i in range(len(rows)) if not frames or start + i > frames[-1]]   # overlaps: first wins
        seg = mapping.channel_values(rows, result.fps, preset, options)
        frames += [start + i for i in keep]
        values += [seg[i] for i in keep]
        arkit += [rows[i] for i in keep]
    return frames, values, arkit


def drive_head(target, bone: str, rows: list, frames: list, fps: float, options: mapping.DriveOptions,
               take: str) -> str:
    """Key a subtle sway (pitch, yaw, roll) in an action of its own; returns the action's name.

    On an object: rotation about its X (pitch), Z (yaw: Blender's up) and Y (roll), added to
    its current rotation. On a pose bone: about the bone's X, Y (along the bone, which points
    up in a head bone) and Z, relative to its rest pose.
    """
    angles = mapping.head_motion(rows, fps, options.head_amplitude_deg, options.seed + 1, frames)
    if target.type == 'ARMATURE' and bone:
        holder = target.pose.bones.get(bone)
        if holder is None:
            raise ValueError(f"{target.name}: has no bone named {bone!r}")
        base = f'pose.bones["{bpy.utils.escape_identifier(bone)}"].'
    else:
        holder, base = target, ""
        rest = tuple(target.rotation_euler)
        angles = [(a[0] + rest[0], a[2] + rest[1], a[1] + rest[2]) for a in angles]
    action, _ = anim.own_action(target, f"LipSync3D head {take}", take)
    group = bone or "LipSync3D head"
    if holder.rotation_mode == 'QUATERNION':
        quats = [mapping.euler_to_quaternion(*a) for a in angles]
        for i in range(4):
            anim.set_keys(anim.fcurve(action, target, base + "rotation_quaternion", i, group), frames,
                          [q[i] for q in quats])
    else:
        for i in range(3):
            anim.set_keys(anim.fcurve(action, target, base + "rotation_euler", i, group), frames,
                          [a[i] for a in angles])
    return action.name
