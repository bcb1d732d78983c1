"""Helpers of the add-on's Blender tests: evaluated vertex positions and a tiny Cycles render."""

from __future__ import annotations

import numpy as np


def evaluated_coords(obj) -> np.ndarray:
    import bpy

    deps = bpy.context.evaluated_depsgraph_get()
    me = obj.evaluated_get(deps).to_mesh()
    co = np.zeros(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    obj.evaluated_get(deps).to_mesh_clear()
    return co.reshape(-1, 3)


def engine_to_blender(v: np.ndarray) -> np.ndarray:
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], -1)


def emission_render_setup(scene, obj, size: int = 48, samples: int = 1):
    """A front orthographic camera on the head and Cycles; returns render(frame) -> (H, W, 3) uint8 RGB."""
    import math

    import bpy
    import cv2

    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    cam.data.type, cam.data.ortho_scale = 'ORTHO', 0.25
    scene.collection.objects.link(cam)
    scene.camera = cam
    bpy.context.view_layer.update()
    c = np.array([obj.matrix_world @ v.co for v in obj.data.vertices]).mean(0)
    cam.location, cam.rotation_euler = (c[0], c[1] - 1.0, c[2]), (math.pi / 2, 0, 0)   # looking along +Y
    scene.render.engine = 'CYCLES'
    scene.cycles.samples, scene.cycles.device = samples, 'CPU'
    scene.view_settings.view_transform = 'Standard'
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100

    def render(frame: int, path) -> np.ndarray:
        scene.frame_set(frame)
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        return cv2.imread(str(path))[..., ::-1]
    return render


def texture_as_emission(obj) -> None:
    """Rewire the head material so renders show the atlas colours unlit (pixels = texture)."""
    nt = obj.active_material.node_tree
    bsdf = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    tex = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeTexImage")
    nt.links.remove(bsdf.inputs["Base Color"].links[0])
    bsdf.inputs["Base Color"].default_value = (0, 0, 0, 1)
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Emission Color"])
    bsdf.inputs["Emission Strength"].default_value = 1.0


def make_character(names):
    """A one-triangle mesh with a Basis and the given shape keys, linked to the scene."""
    import bpy

    me = bpy.data.meshes.new("char")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new("Character", me)
    bpy.context.scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    for n in names:
        obj.shape_key_add(name=n)
    return obj


# Blender 4.2-5.0 differences the tests read through (the add-on has its own in anim.py etc.)

def ensure_fcurve(action, id_data, data_path: str):
    """An F-curve of `action` (assigned to id_data): slotted actions on 4.4+, legacy on 4.2/4.3."""
    if hasattr(action, "fcurve_ensure_for_datablock"):
        return action.fcurve_ensure_for_datablock(id_data, data_path)
    return action.fcurves.find(data_path) or action.fcurves.new(data_path)


def action_fcurves(action) -> list:
    """Every F-curve of an action: its layers' strips' channel bags on 4.4+, Action.fcurves before."""
    if getattr(action, "layers", None) is not None and len(action.layers):
        return [c for layer in action.layers for st in layer.strips for cb in st.channelbags for c in cb.fcurves]
    return list(action.fcurves)


def vse_strips(sed, every: bool = False) -> list:
    """The VSE's top-level (or, with every, all) strips: `strips` on 4.4+, `sequences` before."""
    if every:
        return list(sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all)
    return list(sed.strips if hasattr(sed, "strips") else sed.sequences)


def new_sound_strip(sed, name: str, path: str, channel: int, frame: int):
    return (sed.strips if hasattr(sed, "strips") else sed.sequences).new_sound(name, path, channel, frame)
