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
