"""Cartoon line-art in the scene (paper Section 3.3): the engine's contour lines as a Grease
Pencil object riding on the imported head frame by frame, and a toon material for the face.

Owns: the Cartoon operator (runs `lipsync cartoon PREDICTION` for the head's prediction when
its contours are missing or asked for again, then builds the scene data), the Grease Pencil
v3 object on Blender 4.3+, a legacy one on 4.2 (one layer, one drawing per scene frame, one
stroke per contour of contours.json; the points come from core/contours.py), its ink
material, and the toon material (the head's own atlas texture through a two-tone diffuse
ramp, for EEVEE: Shader to RGB does nothing in Cycles), plus this module's settings
(scene.lipsync3d_cartoon) and its box in the "Cartoon & Dub" panel.
Must not: import engine modules or run the engine other than through runner.py.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, FloatProperty, FloatVectorProperty, PointerProperty

from . import runner
from .core import results
from .core.contours import SKIN_OFFSET, line_points, read_contours  # noqa: F401  (bpy-free part)

LAYER = "Contours"
TOON_SHADOW = 0.55          # brightness of the shadow tone of the toon ramp
TOON_EDGE = 0.35            # diffuse level where the shadow tone turns into the lit tone


class LIPSYNC3D_PG_cartoon(bpy.types.PropertyGroup):
    line_width_mm: FloatProperty(name="Line width", default=1.5, min=0.05, soft_max=10.0,
                                 description="Width of the contour lines in millimetres on the head")
    line_color: FloatVectorProperty(name="Line colour", subtype='COLOR', size=4, min=0.0, max=1.0,
                                    default=(0.02, 0.015, 0.012, 1.0))
    filter_strength: FloatProperty(name="Filter strength", default=1.0, min=0.0, soft_max=3.0,
                                   description="Bilateral filtering of the engine's cartoon image sequence (0 = off)")
    toon: BoolProperty(name="Toon material", default=True,
                       description="Give the head a toon material (two-tone shading of its atlas, EEVEE)")
    rerun: BoolProperty(name="Re-run engine", default=False,
                        description="Run the engine's cartoon pass again even if the contours are there")


def _settings(context):
    return context.scene.lipsync3d_cartoon


def head_object(context):
    """The active object if it is a head imported by the add-on; UserError otherwise."""
    obj = context.active_object
    if obj is None or obj.type != 'MESH' or "lipsync3d_result" not in obj:
        raise runner.UserError("select a head imported by LipSync3D (Textured Head > Import Head)")
    return obj


def _ink_material(name: str, color) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    bpy.data.materials.create_gpencil_data(mat)
    mat.grease_pencil.color = tuple(color)
    mat.grease_pencil.show_fill = False
    return mat


def build_line_art(context, head, width_mm: float = 1.5, color=(0.02, 0.015, 0.012, 1.0)):
    """A Grease Pencil object, parented to `head`, whose strokes follow the prediction's contours.

    Scene frame frame_start + i shows contour points of prediction frame i (head.pc2), in the
    head's own coordinates (so it inherits the head's placement and 0.01 scale). Returns it.
    """
    result = results.read_prediction(head["lipsync3d_result"])
    doc = read_contours(result.path)
    start = int(head.get("lipsync3d_frame_start", context.scene.frame_current))
    lines = doc["contours"]
    sizes = [len(c["vertex_ids"]) for c in lines]
    ids = [i for c in lines for i in c["vertex_ids"]]
    context.view_layer.update()                    # matrix_world of a head imported just now
    scale = max(abs(s) for s in head.matrix_world.to_scale()) or 1.0
    radius = width_mm / 1000.0 / 2.0 / scale
    # v3 data is bpy.data.grease_pencils_v3 on 4.3/4.4 and bpy.data.grease_pencils after them
    # (where 4.2's is legacy: _legacy_strokes below)
    gp = getattr(bpy.data, "grease_pencils_v3", bpy.data.grease_pencils).new(f"{head.name} line-art")
    gp.materials.append(_ink_material(f"{head.name} ink", color))
    layer = gp.layers.new(LAYER)
    cylinder = result.manifest.get("cylinder")
    with results.PointCache(result.file("pc2")) as pc:
        for i in range(result.frames):
            frame = layer.frames.new(start + i)
            points = line_points(pc.frame(i), ids, cylinder)
            if hasattr(frame, "drawing"):          # Grease Pencil v3 (Blender 4.3+)
                drawing = frame.drawing
                drawing.add_strokes(sizes)
                drawing.attributes["position"].data.foreach_set("vector", points)
                drawing.attributes.new("radius", 'FLOAT', 'POINT').data.foreach_set("value", [radius] * len(ids))
                cyclic = drawing.attributes.get("cyclic") or drawing.attributes.new("cyclic", 'BOOLEAN', 'CURVE')
                cyclic.data.foreach_set("value", [bool(c["closed"]) for c in lines])
            else:                                  # legacy Grease Pencil (Blender 4.2)
                _legacy_strokes(frame, lines, sizes, points, radius)
    layer.frames.new(start + result.frames)        # empty: the lines end with the prediction
    obj = bpy.data.objects.new(gp.name, gp)
    for coll in head.users_collection:
        coll.objects.link(obj)
    obj.parent = head                  # identity parent inverse: the points are in the head's coordinates
    obj["lipsync3d_contours"] = [c["name"] for c in lines]
    return obj


def _legacy_strokes(frame, lines, sizes, points, radius: float) -> None:
    """Blender 4.2's Grease Pencil: one 3D-space stroke per contour; its line width is the
    legacy thickness (radius x 2000, Blender's LEGACY_RADIUS_CONVERSION_FACTOR)."""
    k = 0
    for contour, n in zip(lines, sizes):
        stroke = frame.strokes.new()
        stroke.display_mode = '3DSPACE'
        stroke.line_width = max(1, int(round(radius * 2000)))
        stroke.use_cyclic = bool(contour["closed"])
        stroke.points.add(n)
        stroke.points.foreach_set("co", points[3 * k:3 * (k + n)])
        k += n


def toon_material(head) -> bpy.types.Material:
    """A copy of the head's atlas material shaded in two tones (EEVEE), assigned to the head."""
    base = head.active_material
    if base is None or base.node_tree is None:
        raise runner.UserError(f"{head.name} has no LipSync3D atlas material to make a toon version of")
    mat = base.copy()
    mat.name = f"{base.name} toon"
    nt = mat.node_tree
    tex = next((n for n in nt.nodes if n.bl_idname == "ShaderNodeTexImage"), None)
    out = next((n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputMaterial"), None)
    if tex is None or out is None:
        raise runner.UserError(f"material {base.name} has no atlas image or output node")
    diffuse = nt.nodes.new("ShaderNodeBsdfDiffuse")
    to_rgb = nt.nodes.new("ShaderNodeShaderToRGB")
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.interpolation = 'CONSTANT'
    ramp.color_ramp.elements[0].position, ramp.color_ramp.elements[0].color = 0.0, (TOON_SHADOW,) * 3 + (1.0,)
    ramp.color_ramp.elements[1].position, ramp.color_ramp.elements[1].color = TOON_EDGE, (1.0, 1.0, 1.0, 1.0)
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type, mix.blend_type = 'RGBA', 'MULTIPLY'
    mix.inputs["Factor"].default_value = 1.0
    a, b = (s for s in mix.inputs if s.type == 'RGBA')
    emission = nt.nodes.new("ShaderNodeEmission")
    for k, node in enumerate((diffuse, to_rgb, ramp, mix, emission)):
        node.location = (out.location[0] - 1000 + 220 * k, out.location[1] - 350)
    nt.links.new(diffuse.outputs["BSDF"], to_rgb.inputs["Shader"])
    nt.links.new(to_rgb.outputs["Color"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], a)
    nt.links.new(tex.outputs["Color"], b)
    nt.links.new(next(s for s in mix.outputs if s.type == 'RGBA'), emission.inputs["Color"])
    nt.links.new(emission.outputs["Emission"], out.inputs["Surface"])
    head.active_material = mat
    return mat


class LIPSYNC3D_OT_cartoon(runner.EngineJobOperator, bpy.types.Operator):
    """Cartoon line-art for the selected head: the engine's contour lines as Grease Pencil strokes
    that follow the head frame by frame, and a toon material"""

    bl_idname = "lipsync3d.cartoon"
    bl_label = "Cartoon Line-Art"
    bl_options = {'REGISTER', 'UNDO'}

    def build_jobs(self, context):
        head = head_object(context)
        self._head_name = head.name
        folder = Path(head["lipsync3d_result"])
        s = _settings(context)
        if (folder / "contours.json").is_file() and not s.rerun:
            return []
        rgb = ",".join(str(int(round(c * 255))) for c in s.line_color[:3])
        spec = runner.engine_spec(context)
        return [spec.job("Cartoon", "cartoon", folder, "--line-color", rgb, "--filter-strength",
                         f"{s.filter_strength:g}", "--no-preview", log_path=runner.log_path(context, "cartoon"))]

    def on_success(self, context, outcome):
        head = bpy.data.objects.get(self._head_name)
        if head is None:
            raise runner.UserError(f"the head {self._head_name} is gone")
        s = _settings(context)
        try:
            obj = build_line_art(context, head, s.line_width_mm, s.line_color)
        except results.ResultError as e:
            raise runner.UserError(str(e)) from None
        if s.toon:
            toon_material(head)
        self.report({'INFO'}, f"{obj.name}: {len(obj['lipsync3d_contours'])} contour lines on {head.name}")
        return {'FINISHED'}


def draw(layout, context) -> None:
    s = _settings(context)
    layout.label(text="Cartoon line-art", icon='OUTLINER_OB_GREASEPENCIL')
    col = layout.column()
    col.prop(s, "line_width_mm")
    col.prop(s, "line_color")
    col.prop(s, "filter_strength")
    row = col.row()
    row.prop(s, "toon")
    row.prop(s, "rerun")
    obj = context.active_object
    ok = obj is not None and "lipsync3d_result" in obj
    row = col.row()
    row.enabled = ok
    row.operator(LIPSYNC3D_OT_cartoon.bl_idname, icon='GREASEPENCIL')
    if not ok:
        col.label(text="Select an imported head", icon='INFO')


CLASSES = (LIPSYNC3D_PG_cartoon, LIPSYNC3D_OT_cartoon)


def register_extra() -> None:
    bpy.types.Scene.lipsync3d_cartoon = PointerProperty(type=LIPSYNC3D_PG_cartoon)


def unregister_extra() -> None:
    del bpy.types.Scene.lipsync3d_cartoon
