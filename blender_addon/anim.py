"""Keyframes the fast way, into an action of the add-on's own, for Blender 4.2 to 5.0.

Owns: giving a data-block a NEW action named by the add-on (the user's action is never
overwritten: it moves to an NLA track that keeps playing underneath, and is reported), and
writing whole F-curves at once (keyframe_points.add + foreach_set, not one keyframe_insert
per key). Blender 4.4+ has slotted actions: Action.fcurve_ensure_for_datablock creates the
layer, strip, channel bag and slot; 4.2/4.3 use the legacy Action.fcurves.
Must not: decide what is animated (importer.py and character.py do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


def action_fcurves(action, id_type: str = "OBJECT") -> list:
    """The F-curves of `action` for a data-block of id_type: the channel bags of its first slot for
    that type (4.4+: slotted actions; any slot when none is typed so), or the legacy Action.fcurves."""
    if getattr(action, "slots", None) is None:
        return list(action.fcurves)
    slots = [s for s in action.slots if s.target_id_type == id_type] or \
        [s for s in action.slots if s.target_id_type == 'UNSPECIFIED']
    if not slots:
        return []
    out = []
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(slots[0]) if hasattr(strip, "channelbag") else None
            out.extend(bag.fcurves if bag is not None else ())
    return out


def shift_keys(fc, delta: float) -> None:
    """Move every keyframe of fc (and its handles) by delta frames, all at once."""
    n = len(fc.keyframe_points)
    for prop in ("co", "handle_left", "handle_right"):
        co = [0.0] * (2 * n)
        fc.keyframe_points.foreach_get(prop, co)
        co[0::2] = [x + delta for x in co[0::2]]
        fc.keyframe_points.foreach_set(prop, co)
    fc.update()


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


# ---------------------------------------------------------------------------------------------
# Takes on the NLA: every line is its own action, pushed as a strip at its frame
# ---------------------------------------------------------------------------------------------

TAKE_TRACK = "LipSync3D"            # REPLACE strips of the lines ("LipSync3D 2", ... for overlaps)
ADD_TRACK = "LipSync3D add"         # ADD/COMBINE strips: blinks and head motion, above the takes
REST_TRACK = "LipSync3D rest"       # one HOLD strip: the rest value of every channel the takes drive
KEPT_PREFIX = "Kept: "              # the user's action, moved off the active slot (never altered)
LINE = "lipsync3d_line"             # custom properties on a take's action: the line (strip) it belongs to,
ROLE = "lipsync3d_role"             # what it holds ("lips", "add"),
SIGNATURE = "lipsync3d_signature"   # the inputs it was made from (same signature: nothing to redo)
CORE = "lipsync3d_core"             # [first, last] frame of the line itself (without the ease)


@dataclass
class TakeReport:
    """What pushing takes did to a data-block's NLA, in words for the operator's report."""

    kept: list = field(default_factory=list)       # the user's actions moved into the NLA (names)
    muted: list = field(default_factory=list)      # older takes muted (action names)
    replaced: list = field(default_factory=list)   # older takes removed (Replace)
    moved: list = field(default_factory=list)      # takes moved by Re-sync ("name: a -> b")
    restacked: list = field(default_factory=list)  # the user's NLA tracks recreated above the rest track
    masked: list = field(default_factory=list)     # the user's NLA tracks the rest track could not go below

    def merge(self, other: "TakeReport") -> None:
        for f in ("kept", "muted", "replaced", "moved", "restacked", "masked"):
            getattr(self, f).extend(x for x in getattr(other, f) if x not in getattr(self, f))

    def text(self) -> str:
        parts = []
        if self.kept:
            parts.append("your action " + ", ".join(f"'{n}'" for n in self.kept) + " moved into the NLA (kept, "
                         "unchanged)")
        if self.replaced:
            parts.append("replaced " + ", ".join(f"'{n}'" for n in self.replaced))
        if self.muted:
            parts.append("muted older take " + ", ".join(f"'{n}'" for n in self.muted))
        if self.moved:
            parts.append("moved " + ", ".join(self.moved))
        if self.restacked:
            parts.append("your NLA track " + ", ".join(f"'{n}'" for n in self.restacked) + f" recreated just above "
                         f"'{REST_TRACK}' (same strips, actions and settings), so that it plays between takes")
        if self.masked:
            parts.append(f"'{REST_TRACK}' could not go below your NLA track " + ", ".join(f"'{n}'" for n in self.masked)
                         + " (meta, transition or sound strips, or F-modifiers, are not recreated): it hides "
                           "that track's values of the keys LipSync3D drives between takes")
        return "; ".join(parts)


def _is_ours(track_name: str, prefix: str) -> bool:
    return track_name == prefix or (track_name.startswith(prefix + " ") and track_name[len(prefix) + 1:].isdigit())


def our_strips(id_data):
    """(track, strip) of every take and additive strip the add-on placed on id_data."""
    ad = id_data.animation_data
    for track in (ad.nla_tracks if ad else ()):
        if _is_ours(track.name, TAKE_TRACK) or _is_ours(track.name, ADD_TRACK):
            for strip in track.strips:
                yield track, strip


def keep_user_action(id_data, report: TakeReport) -> None:
    """Move the user's active action (not one of ours) into an NLA track of its own, unchanged."""
    ad = id_data.animation_data or id_data.animation_data_create()
    previous = ad.action
    if previous is None:
        return
    slot = getattr(ad, "action_slot", None)
    ad.action = None
    if previous.get(TAG):           # a take left active by an older version of the add-on: now a strip
        _push(ad, previous, TAKE_TRACK, 'REPLACE', slot)
        return
    track = ad.nla_tracks.new(prev=_under_takes(ad))
    track.name = f"{KEPT_PREFIX}{previous.name}"[:63]
    strip = track.strips.new(previous.name[:63], int(previous.frame_range[0]), previous)
    if slot is not None and hasattr(strip, "action_slot"):
        strip.action_slot = slot
    report.kept.append(previous.name)


def _top(ad, prefixes: tuple, kept: bool = False):
    """The highest track whose name has one of `prefixes` (or a Kept track), None when there is none."""
    found = None
    for track in ad.nla_tracks:             # bottom to top
        if any(_is_ours(track.name, p) for p in prefixes) or (kept and track.name.startswith(KEPT_PREFIX)):
            found = track
    return found


def _under_takes(ad):
    """The track after which a new track sits above every other track (the rest track, the user's
    tracks, the Kept ones) but below the takes and additive tracks; None (the top) when no track is
    below them."""
    below = None
    for track in ad.nla_tracks:             # bottom to top
        if _is_ours(track.name, TAKE_TRACK) or _is_ours(track.name, ADD_TRACK):
            return below
        below = track
    return below


def begin_action(id_data, name: str, source: str, line: str, role: str, signature: str = ""):
    """A new action of the add-on for id_data (not assigned: the user's active action stays as it
    is); the caller writes its F-curves with take_fcurve(), then push_take() places it on the NLA."""
    action = bpy.data.actions.new(name)
    action[TAG], action[LINE], action[ROLE], action[SIGNATURE] = source, line, role, signature
    if hasattr(action, "id_root"):
        try:
            action.id_root = id_data.id_type
        except (TypeError, AttributeError):
            pass
    return action


def take_fcurve(action, id_data, data_path: str, index: int = 0, group: str = ""):
    """The F-curve data_path[index] of an action that is NOT assigned to id_data (a take).

    Blender 4.4+: the action's one slot (for id_data's type), layer, keyframe strip and channel
    bag, made when missing; 4.2/4.3: the legacy Action.fcurves.
    """
    if getattr(action, "slots", None) is None:
        fc = action.fcurves.find(data_path, index=index)
        return fc or action.fcurves.new(data_path, index=index, action_group=group)
    slot = action.slots[0] if len(action.slots) else action.slots.new(id_data.id_type, id_data.name)
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type='KEYFRAME')
    bag = strip.channelbag(slot, ensure=True)
    fc = bag.fcurves.find(data_path, index=index)
    if fc is None:
        fc = bag.fcurves.new(data_path, index=index)
        if group:
            fc.group = bag.groups.get(group) or bag.groups.new(group)
    return fc


def retire_line(id_data, line: str, role: str, replace: bool, report: TakeReport, keep=None) -> None:
    """Mute (or, with replace, remove) the older takes of `line` with `role` on id_data."""
    for track, strip in list(our_strips(id_data)):
        action = strip.action
        if action is None or action is keep or action.get(LINE) != line or action.get(ROLE) != role:
            continue
        if replace:
            name = action.name
            track.strips.remove(strip)
            if action.users == 0 and action.get(TAG):
                bpy.data.actions.remove(action)
            report.replaced.append(name)
        elif not strip.mute:
            strip.mute = True
            report.muted.append(action.name)
    ad = id_data.animation_data
    for track in [t for t in (ad.nla_tracks if ad else ()) if _is_ours(t.name, TAKE_TRACK) or _is_ours(t.name, ADD_TRACK)]:
        if not len(track.strips):
            ad.nla_tracks.remove(track)


def live_take(id_data, line: str, role: str, signature: str):
    """The unmuted take of `line` made from the same inputs, if there is one (nothing to redo)."""
    for _, strip in our_strips(id_data):
        a = strip.action
        if not strip.mute and a is not None and a.get(LINE) == line and a.get(ROLE) == role \
                and a.get(SIGNATURE) == signature:
            return a
    return None


def push_take(id_data, action, additive: str = "") -> object:
    """Put `action` (begun with begin_action, written) on id_data's NLA at the frames of its keys.

    additive : "" for a line's take (REPLACE, on the "LipSync3D" tracks), else the blend type
    ('ADD' or 'COMBINE') of an additive strip on the "LipSync3D add" tracks above them. A strip
    goes on the first such track with room, else on a new one. Extrapolation NOTHING: outside
    its frames the strip has no effect (the rest track and the user's animation show).
    """
    ad = id_data.animation_data or id_data.animation_data_create()
    slot = action.slots[0] if getattr(action, "slots", None) is not None and len(action.slots) else None
    return _push(ad, action, ADD_TRACK if additive else TAKE_TRACK, additive or 'REPLACE', slot)


def _push(ad, action, prefix: str, blend: str, slot):
    start = action.frame_range[0]
    name = str(action.get(LINE) or action.name)[:63]
    tracks = [t for t in ad.nla_tracks if _is_ours(t.name, prefix)]
    for track in tracks:
        try:
            strip = track.strips.new(name, int(start), action)
            break
        except RuntimeError:        # no room on this track: an overlapping line
            continue
    else:
        if prefix == ADD_TRACK:
            track = ad.nla_tracks.new()           # on top of everything
        else:                                     # above the other takes, else above the user's tracks
            track = ad.nla_tracks.new(prev=_top(ad, (TAKE_TRACK,)) or _under_takes(ad))
        taken = {t.name for t in ad.nla_tracks}
        track.name = next(n for n in [prefix] + [f"{prefix} {i}" for i in range(2, 1000)] if n not in taken)
        strip = track.strips.new(name, int(start), action)
    if slot is not None and hasattr(strip, "action_slot") and strip.action_slot != slot:
        strip.action_slot = slot
    strip.blend_type = blend
    strip.extrapolation = 'NOTHING'
    strip.use_sync_length = False
    return strip


def ensure_rest(id_data, values: dict, report: TakeReport | None = None) -> None:
    """Hold each channel {(data_path, index): rest value} on the "LipSync3D rest" track, so that
    between takes the keys the add-on drives rest instead of taking Blender's RNA defaults (NLA
    evaluation resets every channel its strips touch; a shape key's default value is 1.0).

    The rest track is the bottom track, so every other track (the user's, the Kept ones, the takes)
    plays over it. RNA adds a track at the top or after a given track, never below the bottom one:
    the rest track goes after the bottom track, and that one track of the user is recreated just
    above it (same name, strips, actions, slots, timing, blending and settings; its actions are
    not touched) and reported; a track that cannot be recreated (meta, transition or sound strips,
    strip modifiers) stays below the rest track and is reported as masked.
    """
    report = report if report is not None else TakeReport()
    ad = id_data.animation_data or id_data.animation_data_create()
    track = next((t for t in ad.nla_tracks if t.name == REST_TRACK), None)
    action = track.strips[0].action if track is not None and len(track.strips) else None
    if action is None:
        action = begin_action(id_data, f"LipSync3D rest {id_data.name}", "rest", "", "rest")
    for (path, index), value in values.items():
        set_keys(take_fcurve(action, id_data, path, index, "LipSync3D rest"), [0.0], [float(value)])
    if track is not None and ad.nla_tracks[0] == track:
        return
    bottom = ad.nla_tracks[0] if len(ad.nla_tracks) else None
    if track is not None and (bottom is None or not _can_recreate(ad, bottom)):
        if bottom.name not in report.masked:
            report.masked.append(bottom.name)
        return
    if track is not None:       # made above the user's tracks (an older version of the add-on): remade
        ad.nla_tracks.remove(track)
        bottom = ad.nla_tracks[0] if len(ad.nla_tracks) else None
    track = ad.nla_tracks.new(prev=bottom)      # bottom None: an empty stack, the track is the only one
    track.name = REST_TRACK
    strip = track.strips.new("rest", 0, action)
    slot = action.slots[0] if getattr(action, "slots", None) is not None and len(action.slots) else None
    if slot is not None and hasattr(strip, "action_slot"):
        strip.action_slot = slot
    strip.extrapolation = 'HOLD'
    if bottom is not None:
        name = bottom.name
        if _recreate_after(ad, bottom, track) is not None:
            report.restacked.append(name)
        else:
            report.masked.append(name)


_STRIP_SETTINGS = ("use_sync_length", "action_frame_start", "action_frame_end", "scale", "repeat", "use_reverse",
                   "blend_type", "use_auto_blend", "blend_in", "blend_out", "extrapolation", "influence",
                   "use_animated_influence", "use_animated_time", "use_animated_time_cyclic", "mute", "select")
_KEY_SETTINGS = ("co", "handle_left", "handle_right", "interpolation", "handle_left_type", "handle_right_type",
                 "easing")


def _can_recreate(ad, track) -> bool:
    """Whether RNA can make an exact copy of `track`: action strips only, without F-modifiers."""
    return not getattr(ad, "use_tweak_mode", False) and all(
        s.type == 'CLIP' and s.action is not None and not len(s.modifiers)
        and not any(len(fc.modifiers) for fc in s.fcurves) for s in track.strips)


def _copy_strip(track, src):
    strip = track.strips.new(src.name, math.ceil(src.frame_start), src.action)
    if getattr(src, "action_slot", None) is not None and strip.action_slot != src.action_slot:
        strip.action_slot = src.action_slot
    for _ in range(2):          # the action range is clamped against itself: twice reaches any range
        for prop in _STRIP_SETTINGS[:5]:
            setattr(strip, prop, getattr(src, prop))
    strip.frame_start_ui = src.frame_start       # moves the strip, keeping its length
    for prop in _STRIP_SETTINGS[5:]:
        setattr(strip, prop, getattr(src, prop))
    for fc in src.fcurves:                        # animated influence / strip time
        new = strip.fcurves.find(fc.data_path, index=fc.array_index)
        n = len(fc.keyframe_points)
        new.keyframe_points.clear()
        new.keyframe_points.add(n)
        for prop in _KEY_SETTINGS:
            for a, b in zip(fc.keyframe_points, new.keyframe_points):
                setattr(b, prop, getattr(a, prop))
        new.extrapolation = fc.extrapolation
        new.update()
    return strip


def _same_strip(a, b) -> bool:
    def same(x, y):
        return abs(x - y) < 1e-4 if isinstance(x, float) else x == y
    if not all(same(getattr(a, p), getattr(b, p)) for p in ("frame_start", "frame_end", "action") + _STRIP_SETTINGS):
        return False
    if getattr(a, "action_slot", None) != getattr(b, "action_slot", None):
        return False
    for fa in a.fcurves:
        fb = b.fcurves.find(fa.data_path, index=fa.array_index)
        if fb is None or len(fa.keyframe_points) != len(fb.keyframe_points) or any(
                not same(float(x), float(y)) for ka, kb in zip(fa.keyframe_points, fb.keyframe_points)
                for x, y in zip(ka.co, kb.co)):
            return False
    return True


def _recreate_after(ad, src, prev):
    """Recreate the NLA track `src` (with its strips, which keep their actions unchanged) right after
    the track `prev`, then remove `src`; returns the new track, or None (nothing changed) when it
    cannot be copied exactly."""
    if not _can_recreate(ad, src):
        return None
    new = ad.nla_tracks.new(prev=prev)
    try:
        for strip in src.strips:
            _copy_strip(new, strip)
        ok = len(new.strips) == len(src.strips) and all(_same_strip(a, b) for a, b in zip(src.strips, new.strips))
    except (RuntimeError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        ad.nla_tracks.remove(new)
        return None
    name, names = src.name, [s.name for s in src.strips]
    mute, lock, select, solo = src.mute, src.lock, src.select, src.is_solo
    ad.nla_tracks.remove(src)
    new.name = name
    for strip, n in zip(new.strips, names):
        strip.name = n
    new.mute, new.lock, new.select = mute, lock, select
    if solo:
        new.is_solo = True
    return new


def resync(id_data, starts: dict, report: TakeReport) -> None:
    """Move every take and additive strip of id_data whose line is in starts {line: frame} so that
    the line begins at that frame again (its sound strip was moved); muted takes move too."""
    moves = []
    for track, strip in our_strips(id_data):
        action = strip.action
        if action is None or action.get(LINE) not in starts or action.get(CORE) is None:
            continue
        delta = starts[action[LINE]] - action[CORE][0]
        if delta:
            moves.append((strip, action, delta))
    for strip, action, delta in sorted(moves, key=lambda m: -m[0].frame_start if m[2] > 0 else m[0].frame_start):
        old = strip.frame_start
        strip.frame_start_ui = old + delta
        action[CORE] = [float(action[CORE][0] + delta), float(action[CORE][1] + delta)]
        if action.get(ROLE) == "lips":
            report.moved.append(f"'{action.name}' {old:g} -> {strip.frame_start:g}")
