"""PC2 point caches and OBJ heads: byte layout, round trips, streaming writes, bad files."""

import struct

import numpy as np
import pytest

from lipsync_engine.core.errors import InputError
from lipsync_engine.io.pointcache import (PC2_HEADER, PC2Writer, read_obj, read_pc2, read_pc2_header, write_obj,
                                       write_pc2)


def test_pc2_header_layout_and_round_trip(tmp_path, rng):
    v = rng.normal(size=(7, 5, 3)).astype(np.float32)
    path = tmp_path / "a.pc2"
    write_pc2(path, v, start_frame=3.0)
    raw = path.read_bytes()
    assert len(raw) == 32 + 7 * 5 * 12
    sig, version, points, start, rate, samples = struct.unpack("<12siiffi", raw[:32])
    assert (sig, version, points, start, rate, samples) == (b"POINTCACHE2\0", 1, 5, 3.0, 1.0, 7)
    assert np.frombuffer(raw[32:44], "<f4").tolist() == v[0, 0].tolist()      # frame 0, point 0: x, y, z
    header, back = read_pc2(path)
    assert header.samples == 7 and header.points == 5 and header.start_frame == 3.0
    np.testing.assert_array_equal(back, v)
    _, loaded = read_pc2(path, mmap=False)
    np.testing.assert_array_equal(loaded, v)


def test_pc2_streamed_in_blocks_equals_one_write(tmp_path, rng):
    v = rng.normal(size=(10, 4, 3))
    with PC2Writer(tmp_path / "s.pc2", 4, 10) as pc:
        for s in range(0, 10, 3):
            pc.write(v[s:s + 3])
    write_pc2(tmp_path / "w.pc2", v)
    assert (tmp_path / "s.pc2").read_bytes() == (tmp_path / "w.pc2").read_bytes()


def test_pc2_writer_checks_the_frame_count(tmp_path, rng):
    with pytest.raises(ValueError, match="2 frames written, 3 announced"):
        with PC2Writer(tmp_path / "x.pc2", 4, 3) as pc:
            pc.write(rng.normal(size=(2, 4, 3)))
    with pytest.raises(ValueError, match="expected"):
        PC2Writer(tmp_path / "y.pc2", 4, 3).write(np.zeros((1, 5, 3)))


def test_pc2_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.pc2"
    bad.write_bytes(b"not a cache at all, not at all......")
    with pytest.raises(InputError, match="bad.pc2: not a PC2"):
        read_pc2_header(bad)
    short = tmp_path / "short.pc2"
    short.write_bytes(PC2_HEADER.pack(b"POINTCACHE2\0", 1, 468, 0.0, 1.0, 10) + b"\0" * 100)
    with pytest.raises(InputError, match="short.pc2: truncated"):
        read_pc2(short)


def test_obj_round_trip_with_uvs_and_material(tmp_path, rng):
    v = rng.normal(size=(6, 3))
    tris = np.array([[0, 1, 2], [2, 3, 0], [3, 4, 5]])
    uv = rng.uniform(size=(6, 2))
    write_obj(tmp_path / "head.obj", v, tris, uv, texture="atlas.png")
    mesh = read_obj(tmp_path / "head.obj")
    np.testing.assert_allclose(mesh.vertices, v, atol=1e-6)
    np.testing.assert_allclose(mesh.uvs, uv, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, tris)
    np.testing.assert_array_equal(mesh.face_uvs, tris)         # one uv per vertex, same index
    assert mesh.material_library == "head.mtl"
    assert "map_Kd atlas.png" in (tmp_path / "head.mtl").read_text()


def test_obj_without_uvs_and_bad_lines(tmp_path):
    write_obj(tmp_path / "p.obj", np.eye(3), np.array([[0, 1, 2]]))
    mesh = read_obj(tmp_path / "p.obj")
    assert mesh.uvs.shape == (0, 2) and mesh.face_uvs.tolist() == [[-1, -1, -1]] and mesh.material_library == ""
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n")
    with pytest.raises(InputError, match="q.obj:4: malformed"):
        read_obj(tmp_path / "q.obj")
    with pytest.raises(ValueError, match="uvs must be"):
        write_obj(tmp_path / "r.obj", np.eye(3), np.array([[0, 1, 2]]), uvs=np.zeros((2, 2)))


def test_blender_reads_the_obj_and_pc2_as_written(tmp_path, rng):
    """Real bpy: the OBJ importer keeps the file's vertex order and coordinates in the mesh (the
    y-up -> z-up turn goes on the object), and a Mesh Cache modifier (PC2, default axes, Frame
    Start 0) then shows sample f at scene frame f: the convention docs/predict.md gives."""
    import bpy
    from lipsync_engine.face.topology import load_topology

    topo = load_topology()
    frames = topo.vertices[None] + rng.normal(scale=0.2, size=(4, 468, 3))
    write_obj(tmp_path / "head.obj", topo.vertices, topo.triangles, rng.uniform(size=(468, 2)))
    write_pc2(tmp_path / "head.pc2", frames)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.obj_import(filepath=str(tmp_path / "head.obj"))
    obj = bpy.context.selected_objects[0]
    mesh_co = np.array([tuple(v.co) for v in obj.data.vertices])
    np.testing.assert_allclose(mesh_co, topo.vertices, atol=1e-5)
    np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    assert len(obj.data.uv_layers) == 1 and len(obj.data.polygons) == 898
    mod = obj.modifiers.new("cache", "MESH_CACHE")
    mod.cache_format, mod.filepath = "PC2", str(tmp_path / "head.pc2")
    for f in (1, 3):
        bpy.context.scene.frame_set(f)
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        np.testing.assert_allclose(np.array([tuple(v.co) for v in ev.data.vertices]), frames[f], atol=1e-5)
    bpy.ops.wm.read_factory_settings(use_empty=True)
