"""Keyframes the fast way, into an action of the add-on's own, for Blender 4.2 to 5.0.

Owns: giving a data-block a NEW action named by the add-on (the user's action is never
overwritten: it moves to an NLA track that keeps playing underneath, and is reported), and
writing whole F-curves at once (keyframe_points.add + foreach_set, not one keyframe_insert
per key). Blender 4.4+ has slotted actions: Action.fcurve_ensure_for_datablock creates the
layer, strip, channel bag and slot; 4.2/4.3 use the legacy Action.fcurves.
Must not: decide what is animated (importer.py and character.py do).
"""

from __future__ import annotations

import bpy

TAG = "lipsync3d"           # custom property on the actions the add-on made
INTERPOLATION = {"CONSTANT": 0, "LINEAR": 1, "BEZIER": 2}   # Keyframe.interpolation enum values


def own_action(id_data, name: str, source: str) -> tuple:
    """Assign a new action `name` to id_data; returns (action, kept) where kept names the user's
    action moved to an NLA track ("" when there was none, or when it was an older one of ours,
    which is removed).

    source : what the action was made from (a prediction folder), stored on the action.
    """
    ad = id_data.animation_data or id_data.animation_data_create()
    previous, kept = ad.action, ""
    if previous is not None:
        ad.action = None
        if previous.get(TAG):
            if previous.users == 0:
                bpy.data.actions.remove(previous)
        else:
            kept = previous.name
            track = ad.nla_tracks.new()
            track.name = f"Kept: {previous.name}"[:63]
            start = int(previous.frame_range[0])
            track.strips.new(previous.name[:63], start, previous)
    action = bpy.data.actions.new(name)
    action[TAG] = source
    ad.action = action
    return action, kept


def fcurve(action, id_data, data_path: str, index: int = 0, group: str = ""):
    """The F-curve for data_path[index] of id_data in `action` (already assigned to id_data)."""
    if hasattr(action, "fcurve_ensure_for_datablock"):        # Blender 4.4+: slotted actions
        try:
            return action.fcurve_ensure_for_datablock(id_data, data_path, index=index, group_name=group)
        except TypeError:                                     # 4.4's takes no group_name
            return action.fcurve_ensure_for_datablock(id_data, data_path, index=index)
    fc = action.fcurves.find(data_path, index=index)
    return fc or action.fcurves.new(data_path, index=index, action_group=group)


def set_keys(fc, frames, values, interpolation: str = "LINEAR") -> None:
    """Replace fc's keyframes by (frames[i], values[i]) pairs, all at once."""
    n = len(frames)
    if n != len(values):
        raise ValueError(f"{len(frames)} frames but {len(values)} values for {fc.data_path}")
    fc.keyframe_points.clear()
    fc.keyframe_points.add(n)
    co = [0.0] * (2 * n)
    co[0::2], co[1::2] = frames, values
    fc.keyframe_points.foreach_set("co", co)
    code = INTERPOLATION[interpolation]
    try:
        fc.keyframe_points.foreach_set("interpolation", [code] * n)
    except (TypeError, AttributeError):     # older Blender: enums one by one
        for kp in fc.keyframe_points:
            kp.interpolation = interpolation
    fc.update()
