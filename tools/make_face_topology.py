"""Write lipsync_engine/data/mediapipe_face_mesh.json, the canonical face topology.

Where the numbers come from (all Apache-2.0, The MediaPipe Authors):
- vertices (xyz), uv, triangles and Procrustes weights: the `canonical_mesh` and
  `procrustes_landmark_basis` of
  mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt
  (google-ai-edge/mediapipe, commit fde35cd091b716320ebae0f909d2c8b01648eb2e), copied
  value by value into three text files (vertices.txt: `x y z u v` per vertex,
  triangles.txt: `a b c` per triangle, procrustes.txt: `id weight`);
- the contour index loops (lips, eyes, eyebrows, face oval): the FACEMESH_* edge sets
  of mediapipe.python.solutions.face_mesh_connections in the mediapipe 0.10.21 wheel.

Usage: python tools/make_face_topology.py DIR_WITH_TXT_FILES
The checks at the end reject a transcription slip (an orientation conflict or an
edge shared by three triangles) before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from mediapipe.python.solutions import face_mesh_connections as fmc

OUT = Path(__file__).resolve().parents[1] / "lipsync_engine" / "data" / "mediapipe_face_mesh.json"


def edges_to_loops(edges) -> list[list[int]]:
    """Chain an undirected edge set into closed or open vertex loops."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen: set[tuple[int, int]] = set()
    loops = []
    starts = [v for v, n in adj.items() if len(n) == 1] + sorted(adj)
    for s in starts:
        for n in adj[s]:
            if (s, n) in seen:
                continue
            loop, prev, cur = [s], s, n
            seen.add((s, n)), seen.add((n, s))
            while cur != s:
                loop.append(cur)
                nxt = [x for x in adj[cur] if x != prev and (cur, x) not in seen]
                if not nxt:
                    break
                prev, cur = cur, nxt[0]
                seen.add((prev, cur)), seen.add((cur, prev))
            loops.append(loop)
    return loops


def check_manifold(tris: np.ndarray) -> None:
    directed = {}
    for t in tris:
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            if (a, b) in directed:
                raise SystemExit(f"directed edge {(a, b)} used twice: orientation conflict")
            directed[(a, b)] = True
    assert len(np.unique(tris)) == 468, "not every vertex is used"


def main(src: Path) -> None:
    v = np.loadtxt(src / "vertices.txt", dtype=np.float64)
    tris = np.loadtxt(src / "triangles.txt", dtype=np.int64)
    proc = np.loadtxt(src / "procrustes.txt")
    assert v.shape == (468, 5) and tris.shape == (898, 3) and proc.shape == (33, 2)
    check_manifold(tris)
    contours = {
        name: edges_to_loops(getattr(fmc, "FACEMESH_" + name.upper()))
        for name in ("lips", "left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "face_oval")
    }
    data = {
        "notice": (
            "Canonical face model of MediaPipe Face Mesh. Copyright 2020 The MediaPipe Authors. "
            "Licensed under the Apache License, Version 2.0 "
            "(http://www.apache.org/licenses/LICENSE-2.0). Values copied from "
            "mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt "
            "(google-ai-edge/mediapipe@fde35cd091b716320ebae0f909d2c8b01648eb2e) and the "
            "FACEMESH_* sets of mediapipe 0.10.21; see tools/make_face_topology.py."
        ),
        "units": "canonical model space, roughly centimetres; x to the viewer's right, y up, z towards the viewer",
        "vertices": [[round(float(c), 6) for c in row[:3]] for row in v],
        "uv": [[round(float(c), 6) for c in row[3:]] for row in v],
        "triangles": tris.tolist(),
        "procrustes_landmarks": [[int(i), float(w)] for i, w in proc],
        "contours": contours,
    }
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
