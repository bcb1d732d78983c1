"""Import a prediction as a textured talking head: mesh, per-frame motion, atlas material, sound.

Owns: the head object on the MediaPipe topology (468 vertices, 898 triangles, the OBJ's UVs),
its animation (one shape key per frame keyed per frame, or a Mesh Cache modifier on head.pc2),
the material that samples the per-frame atlas image sequence through the engine's cylinder,
computed in shader nodes from the object-space position of the deformed mesh, so the
texture follows the per-frame geometry exactly as the paper's cylinder UVs do:

    (x, y, z)_engine = (X, Z, -Y)_object            (results.blender_to_engine)
    u_px = u0 + k * atan2(x - cx, z - cz),  v_px = v0 - s * y      (geometry.CylinderMap)
    U = (u_px + 0.5) / 256,  V = 1 - (v_px + 0.5) / 256   (pixel centres, as the engine's OBJ UVs;
                                                          Blender's V points up, the atlas rows down)

and a sound strip when the audio came from a file. Frame i of the prediction is shown at
scene frame frame_start + i.
Must not: run the engine; the axis conversion of positions lives in results.py only.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from . import anim
from .core import results
from .runner import blend_path

OBJECT_SCALE = 0.01         # engine units are about a centimetre: the head is about 0.2 m tall in Blender
MAX_SHAPE_KEY_FRAMES = 20000  # beyond this, shape keys are refused: use the Mesh Cache
COLLECTION = "LipSync3D"


def import_head(context, result: results.PredictionResult, frame_start: int, animation: str = 'SHAPE_KEYS',
                name: str = "", sound_file: str = "", line: str = "") -> bpy.types.Object:
    """Create the animated, textured head of `result` in context.scene; returns the object.

    animation : 'SHAPE_KEYS' or 'MESH_CACHE'. sound_file : add a sound strip of this file at
    frame_start (when the audio did not come from a strip already in place). line : the sound
    strip the head belongs to (Re-sync Takes moves the head with it; the added strip when
    sound_file is given).
    """
    scene = context.scene
    step = scene.render.fps / scene.render.fps_base / result.fps      # scene frames per result frame
    obj_mesh = results.read_obj(result.file("obj"))
    name = name or f"LipSync3D head {Path(result.audio).stem or result.path.name}"
    mesh = _mesh(name, obj_mesh)
    obj = bpy.data.objects.new(name, mesh)
    obj.scale = (OBJECT_SCALE,) * 3
    _collection(scene).objects.link(obj)
    obj["lipsync3d_result"], obj["lipsync3d_frame_start"] = str(result.path), int(frame_start)
    if animation == 'MESH_CACHE':
        _mesh_cache(obj, result, frame_start, step)
    else:
        _shape_keys(obj, result, frame_start, step)
    if abs(step - 1.0) > 1e-6:
        obj["lipsync3d_warning"] = (f"predicted at {result.fps:g} fps: the geometry is resampled to the scene's "
                                    f"{result.fps * step:g} fps, the atlas images are not (re-predict at the scene's "
                                    "fps for them)")
    cylinder = _cylinder(result)
    mesh.materials.append(head_material(name, result, frame_start, cylinder))
    if line:
        obj[anim.LINE] = line
    if sound_file:
        obj[anim.LINE] = add_sound_strip(scene, sound_file, frame_start, name).name
    _extend_frame_range(scene, frame_start, int(result.frames * step + 0.999))
    return obj


def move_head(obj, frame_start: int) -> str:
    """Move an imported head so that prediction frame 0 shows at scene frame frame_start again (its
    sound strip was moved): the per-frame shape keys' keys (or the Mesh Cache's start), the atlas image
    sequence's start and the visibility keys of a batch head move by the same number of frames.
    Returns "'name' a -> b", or "" when it is already there."""
    old = int(obj.get("lipsync3d_frame_start", frame_start))
    delta = int(frame_start) - old
    if not delta:
        return ""
    key = obj.data.shape_keys if obj.type == 'MESH' else None
    action = key.animation_data.action if key is not None and key.animation_data is not None else None
    if action is not None and action.get(anim.TAG):         # the head's own "<name> frames" action
        for fc in anim.action_fcurves(action, 'KEY'):
            anim.shift_keys(fc, delta)
    for mod in obj.modifiers:
        if mod.type == 'MESH_CACHE':        # it shows sample frame * frame_scale - frame_start
            mod.frame_start += delta * mod.frame_scale
    for mat in (obj.data.materials if obj.type == 'MESH' else ()):
        for node in (mat.node_tree.nodes if mat is not None and mat.node_tree is not None else ()):
            if node.bl_idname == "ShaderNodeTexImage" and node.image is not None and node.image.source == 'SEQUENCE':
                node.image_user.frame_start += delta
    ad = obj.animation_data
    if ad is not None and ad.action is not None:             # a batch head's visibility keys
        for fc in anim.action_fcurves(ad.action, 'OBJECT'):
            if fc.data_path in ("hide_viewport", "hide_render"):
                anim.shift_keys(fc, delta)
    obj["lipsync3d_frame_start"] = int(frame_start)
    return f"head '{obj.name}' {old} -> {int(frame_start)}"


def _collection(scene):
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def _mesh(name: str, obj_mesh: results.ObjMesh):
    mesh = bpy.data.meshes.new(name)
    verts = [results.engine_to_blender(*v) for v in obj_mesh.vertices]
    mesh.from_pydata(verts, [], [list(f) for f in obj_mesh.faces])
    if obj_mesh.uvs and all(min(f) >= 0 for f in obj_mesh.face_uvs):
        layer = mesh.uv_layers.new(name="UVMap")
        uv = [c for f in obj_mesh.face_uvs for i in f for c in obj_mesh.uvs[i]]
        layer.data.foreach_set("uv", uv)        # from_pydata keeps the face corner order
    if hasattr(mesh, "shade_smooth"):       # Blender 4.1+
        mesh.shade_smooth()
    mesh.validate()
    return mesh


def _blender_coords(flat) -> list:
    """Flat engine xyz floats -> flat Blender xyz floats (engine_to_blender on each point)."""
    out = [0.0] * len(flat)
    out[0::3], out[1::3], out[2::3] = flat[0::3], [-z for z in flat[2::3]], flat[1::3]
    return out


def _shape_keys(obj, result: results.PredictionResult, frame_start: int, step: float = 1.0) -> None:
    """One relative shape key per frame; key i is 1 at frame_start + i * step and 0 one result frame
    either side (step: scene frames per result frame; sub-frame keys when the rates differ)."""
    if result.frames > MAX_SHAPE_KEY_FRAMES:
        raise ValueError(f"{result.path}: {result.frames} frames are too many for shape keys "
                         f"(at most {MAX_SHAPE_KEY_FRAMES}); choose the Mesh Cache animation")
    obj.shape_key_add(name="Basis", from_mix=False)
    key = obj.data.shape_keys
    action, _ = anim.own_action(key, f"{obj.name} frames", str(result.path))
    with results.PointCache(result.file("pc2")) as pc:
        if pc.header.points != len(obj.data.vertices) or pc.header.samples < result.frames:
            raise ValueError(f"{pc.path}: {pc.header.samples} frames of {pc.header.points} points do not match "
                             f"the head ({result.frames} frames of {len(obj.data.vertices)} vertices)")
        for i in range(result.frames):
            kb = obj.shape_key_add(name=f"frame {i:06d}", from_mix=False)
            kb.data.foreach_set("co", _blender_coords(pc.frame(i)))
            f = frame_start + i * step
            fc = anim.fcurve(action, key, f'key_blocks["{kb.name}"].value', group="frames")
            anim.set_keys(fc, [f - step, f, f + step], [0.0, 1.0, 0.0])


def _mesh_cache(obj, result: results.PredictionResult, frame_start: int, step: float = 1.0) -> None:
    """A Mesh Cache modifier on head.pc2 (the engine's frame: y up, z to the viewer).

    The modifier's axis pair that yields engine_to_blender, (x, y, z) -> (x, -z, y), is
    forward +Z, up -Y (found by trying all pairs against the shape keys; tests check it).
    In FRAME mode it shows sample (scene frame * frame_scale - its frame_start) (measured), so with
    frame_scale = 1 / step (the result's fps over the scene's) and its frame_start = frame_start /
    step, sample i shows at scene frame frame_start + i * step.
    """
    mod = obj.modifiers.new("LipSync3D cache", 'MESH_CACHE')
    mod.cache_format = 'PC2'
    mod.filepath = blend_path(result.file("pc2"))
    mod.forward_axis, mod.up_axis = 'POS_Z', 'NEG_Y'
    mod.time_mode, mod.play_mode = 'FRAME', 'SCENE'
    mod.frame_start, mod.frame_scale = float(frame_start) / step, 1.0 / step  # it shows frame * scale - start
    mod.interpolation = 'LINEAR'


def _cylinder(result: results.PredictionResult) -> dict | None:
    """The model's cylinder {cx, cz, radius, k, u0, s, v0}: from result.json, else the model's config.json."""
    if isinstance(result.manifest.get("cylinder"), dict):
        return result.manifest["cylinder"]
    try:
        return results.read_model_config(result.model_dir).get("cylinder")
    except results.ResultError:
        return None


def add_sound_strip(scene, filepath: str, frame_start: int, name: str):
    """A sound strip of `filepath` at frame_start on the first free channel; returns it."""
    sed = scene.sequence_editor or scene.sequence_editor_create()
    strips = sed.strips if hasattr(sed, "strips") else sed.sequences     # 4.4+ / older
    every = sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all
    used = {s.channel for s in every if s.frame_final_start < frame_start + 10 ** 6}
    channel = next(c for c in range(1, 129) if c not in used)
    strip = strips.new_sound(name[:63], str(filepath), channel, int(frame_start))
    scene.sync_mode = 'AUDIO_SYNC'
    return strip


def _extend_frame_range(scene, frame_start: int, frames: int) -> None:
    scene.frame_start = min(scene.frame_start, frame_start)
    scene.frame_end = max(scene.frame_end, frame_start + frames - 1)


# ---------------------------------------------------------------------------------------------
# The material
# ---------------------------------------------------------------------------------------------

def atlas_image(result: results.PredictionResult, frame_start: int, node) -> None:
    """Point an Image Texture node at the atlas sequence so scene frame frame_start + i shows atlas i."""
    first = result.atlas_frame(0)
    if not first.is_file():
        raise ValueError(f"{first}: the atlas sequence is missing")
    image = bpy.data.images.load(str(first), check_existing=False)
    image.source = 'SEQUENCE'
    image.filepath = blend_path(first)
    image.name = f"atlas {result.path.name}"
    node.image = image
    user = node.image_user
    user.frame_duration = result.frames
    user.frame_start = int(frame_start)
    user.frame_offset = -1          # Blender shows file number (frame - frame_start + 1 + offset): 0 at frame_start
    user.use_auto_refresh = True
    user.use_cyclic = False


def head_material(name: str, result: results.PredictionResult, frame_start: int, cylinder: dict | None):
    """Principled BSDF whose base colour is the atlas sequence sampled through the cylinder
    projection of the object-space position (the static OBJ UVs when there is no cylinder)."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:       # Blender < 5.0
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Roughness"].default_value = 0.6
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.location = (-400, 200)
    tex.extension = 'EXTEND'
    atlas_image(result, frame_start, tex)
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if cylinder is not None:
        nt.links.new(cylinder_uv_nodes(nt, cylinder), tex.inputs["Vector"])
    mat["lipsync3d_cylinder"] = bool(cylinder)
    return mat


def cylinder_uv_nodes(nt, c: dict):
    """Shader nodes computing the atlas UV of each shading point; returns the UV output socket."""
    size = float(results.ATLAS_SIZE)

    def math(op, a, b, c3=None, x=0, y=0, label=""):
        n = nt.nodes.new("ShaderNodeMath")
        n.operation, n.location, n.label = op, (x, y), label
        for i, v in enumerate((a, b, c3)):
            if v is None:
                continue
            if isinstance(v, (int, float)):
                n.inputs[i].default_value = float(v)
            else:
                nt.links.new(v, n.inputs[i])
        return n.outputs[0]

    coords = nt.nodes.new("ShaderNodeTexCoord")
    coords.location = (-1500, 200)
    xyz = nt.nodes.new("ShaderNodeSeparateXYZ")
    xyz.location = (-1300, 200)
    nt.links.new(coords.outputs["Object"], xyz.inputs[0])
    X, Y, Z = xyz.outputs["X"], xyz.outputs["Y"], xyz.outputs["Z"]    # engine x = X, y = Z, z = -Y
    dx = math('SUBTRACT', X, float(c["cx"]), x=-1100, y=300, label="x - cx")
    dz = math('MULTIPLY_ADD', Y, -1.0, -float(c["cz"]), x=-1100, y=100, label="z - cz = -Y - cz")
    theta = math('ARCTAN2', dx, dz, x=-900, y=250, label="theta = atan2(x - cx, z - cz)")
    u = math('MULTIPLY_ADD', theta, float(c["k"]) / size, (float(c["u0"]) + 0.5) / size, x=-700, y=250,
             label="U = (u0 + k theta + 0.5) / 256")
    v = math('MULTIPLY_ADD', Z, float(c["s"]) / size, 1.0 - (float(c["v0"]) + 0.5) / size, x=-700, y=50,
             label="V = 1 - (v0 - s y + 0.5) / 256")
    uv = nt.nodes.new("ShaderNodeCombineXYZ")
    uv.location = (-550, 150)
    nt.links.new(u, uv.inputs[0])
    nt.links.new(v, uv.inputs[1])
    return uv.outputs[0]
