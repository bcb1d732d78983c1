#!/usr/bin/env python3
"""Build the installable Blender add-on zip: dist/lipsync3d-<version>.zip, then validate it.

Layout of the zip (one top folder, which both Blender's extension installer and the legacy
"Install from Disk" accept):

    lipsync3d/                     blender_addon/* (blender_manifest.toml, __init__.py, core/, ...;
                                   core/interop.py, a symlink to the engine's in git, as a real file)
    lipsync3d/engine/              lipsync_engine/, blendshape_rigs/, requirements.lock
                                   (the engine runs from here: PYTHONPATH=<add-on>/engine)

No tests, caches or compiled files. The version is read from lipsync_engine/core/version.py (the
one place it is written) and written into the manifest and bl_info of the copy in the zip.
Validation: the zip is reopened, its manifest parsed and checked, its file list checked,
and Blender's own extension validator runs when it can be found (`blender --command
extension validate`, or the validator script inside the bpy module).

    python build_addon.py [-o dist] [--no-validate]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_ID = "lipsync3d"
SOURCES = (  # (folder in the repository, folder in the zip)
    (ROOT / "blender_addon", ADDON_ID),
    (ROOT / "lipsync_engine", f"{ADDON_ID}/engine/lipsync_engine"),
    (ROOT / "blendshape_rigs", f"{ADDON_ID}/engine/blendshape_rigs"),
)
EXTRA_FILES = ((ROOT / "requirements.lock", f"{ADDON_ID}/engine/requirements.lock"),)
EXCLUDED_PARTS = {"__pycache__", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp", ".tmp")
REQUIRED = (f"{ADDON_ID}/blender_manifest.toml", f"{ADDON_ID}/__init__.py", f"{ADDON_ID}/core/client.py",
            f"{ADDON_ID}/core/interop.py", f"{ADDON_ID}/engine/lipsync_engine/core/interop.py",
            f"{ADDON_ID}/engine/lipsync_engine/__init__.py", f"{ADDON_ID}/engine/lipsync_engine/cli.py",
            f"{ADDON_ID}/engine/lipsync_engine/face/data/mediapipe_face_mesh.json",
            f"{ADDON_ID}/engine/blendshape_rigs/arkit52/basis.npz",
            f"{ADDON_ID}/engine/blendshape_rigs/presets/arkit.json", f"{ADDON_ID}/engine/requirements.lock")
# the add-on's core/interop.py is a symlink to the engine's in git; the zip holds two equal real files
SHARED = (f"{ADDON_ID}/core/interop.py", f"{ADDON_ID}/engine/lipsync_engine/core/interop.py")
MANIFEST_FIELDS = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                   "blender_version_min", "license")
ZIP_DATE = (2025, 1, 1, 0, 0, 0)   # fixed timestamps: the same sources give the same zip


class BuildError(Exception):
    pass


def read_version() -> str:
    """__version__ from lipsync_engine/core/version.py, without importing the package."""
    text = (ROOT / "lipsync_engine" / "core" / "version.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__\s*=\s*"(\d+\.\d+\.\d+)"', text, re.M)
    if not m:
        raise BuildError("lipsync_engine/core/version.py: no __version__ = \"X.Y.Z\" line")
    return m.group(1)


def included(path: Path) -> bool:
    return not (EXCLUDED_PARTS & set(path.parts) or path.name.endswith(EXCLUDED_SUFFIXES)
                or path.name.startswith(".") or path.name.startswith("test_"))


def collect() -> list:
    """(source file, name in the zip) pairs, sorted by name."""
    files = []
    for src_root, zip_root in SOURCES:
        for p in src_root.rglob("*"):
            rel = p.relative_to(src_root)
            if p.is_file() and included(rel):
                files.append((p, f"{zip_root}/{rel.as_posix()}"))
    files += [(src, name) for src, name in EXTRA_FILES]
    return sorted(files, key=lambda f: f[1])


def stamped(name: str, data: bytes, version: str) -> bytes:
    """The manifest and bl_info carry the real version in the zip."""
    if name == f"{ADDON_ID}/blender_manifest.toml":
        text, n = re.subn(r'^version = "[^"]*"', f'version = "{version}"', data.decode("utf-8"), count=1, flags=re.M)
    elif name == f"{ADDON_ID}/__init__.py":
        parts = ", ".join(version.split("."))
        text, n = re.subn(r'"version": \([^)]*\)', f'"version": ({parts})', data.decode("utf-8"), count=1)
    else:
        return data
    if n != 1:
        raise BuildError(f"{name}: found no version field to fill in")
    return text.encode("utf-8")


def build(out_dir: Path) -> Path:
    version = read_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ADDON_ID}-{version}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for src, name in collect():
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, stamped(name, src.read_bytes(), version))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def validate(zip_path: Path) -> list:
    """Check the built zip; returns notes on what was checked, raises BuildError on a problem."""
    version = read_version()
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        manifest = tomllib.loads(zf.read(f"{ADDON_ID}/blender_manifest.toml").decode("utf-8"))
        init = zf.read(f"{ADDON_ID}/__init__.py").decode("utf-8")
        shared = {n: zf.read(n) for n in SHARED if n in names}
        bad = zf.testzip()
    if bad:
        raise BuildError(f"{zip_path}: corrupt member {bad}")
    missing = [n for n in REQUIRED if n not in names]
    stray = [n for n in names if not included(Path(n))]
    if missing or stray:
        raise BuildError(f"{zip_path}: missing {missing}; should not be there {stray[:5]}")
    if len(set(shared.values())) != 1:
        raise BuildError(f"{zip_path}: {SHARED[0]} is not a copy of {SHARED[1]} (a symlink in git; was it "
                         "checked out as a plain file holding its target path?)")
    absent = [f for f in MANIFEST_FIELDS if not manifest.get(f)]
    if absent or manifest["id"] != ADDON_ID or manifest["type"] != "add-on":
        raise BuildError(f"{zip_path}: manifest lacks {absent} or has the wrong id/type")
    if manifest["version"] != version or f'"version": ({", ".join(version.split("."))})' not in init:
        raise BuildError(f"{zip_path}: manifest version {manifest['version']} or bl_info differ from {version}")
    notes = [f"manifest: {manifest['name']} {manifest['version']}, Blender {manifest['blender_version_min']}"
             f" to {manifest.get('blender_version_max', 'any')}, {manifest['license'][0]}; {len(names)} files"]
    return notes + [blender_validate(zip_path)]


def _bundled_validator() -> Path | None:
    """blender_ext.py (Blender's extension tool) inside an installed bpy module, if any."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.origin:
        return None
    hits = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return hits[-1] if hits else None


def blender_validate(zip_path: Path) -> str:
    """Blender's own validator when available; a note saying which one ran (or that none did)."""
    blender = shutil.which("blender")
    if blender:
        cmd = [blender, "--factory-startup", "--command", "extension", "validate", str(zip_path)]
    elif (script := _bundled_validator()) is not None:
        cmd = [sys.executable, str(script), "validate", str(zip_path)]
    else:
        return "Blender's extension validator not found (no `blender` on PATH, no bpy module): skipped"
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or "error" in output.lower():
        raise BuildError(f"{zip_path}: Blender's validator failed:\n{output}")
    return f"Blender's validator ({Path(cmd[0 if blender else 1]).name}): {output.splitlines()[-1] if output else 'ok'}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    p.add_argument("--no-validate", action="store_true", help="skip the checks of the built zip")
    args = p.parse_args(argv)
    try:
        path = build(args.output)
        for note in [] if args.no_validate else validate(path):
            print(note, file=sys.stderr)
    except (BuildError, OSError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
