"""Fixtures of the add-on's tests: the built zip, Blender (bpy 5.0.1 as a module) with the add-on
installed from it in a throw-away user folder, and a fake engine.

Blender's user folder is redirected (BLENDER_USER_RESOURCES) before bpy is first imported,
and the zip goes into an extension repository of its own in a temporary folder, so the
user's Blender is never touched. Between tests the scene is reset with read_homefile
(factory startup, empty): unlike read_factory_settings it keeps the preferences, and with
them the installed, enabled add-on.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = Path(__file__).parent / "fake_engine"
REPO_MODULE = "lipsync_test"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))       # blender_addon and build_addon are not installed packages
if "bpy" not in sys.modules and "BLENDER_USER_RESOURCES" not in os.environ:
    _user = tempfile.mkdtemp(prefix="lipsync3d-blender-user-")
    os.environ["BLENDER_USER_RESOURCES"] = _user
    atexit.register(shutil.rmtree, _user, True)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    """The zip made by build_addon.py, validated (Blender's own validator included)."""
    import build_addon

    path = build_addon.build(tmp_path_factory.mktemp("dist"))
    notes = build_addon.validate(path)
    return path, notes


@pytest.fixture(scope="session")
def blender(addon_zip, tmp_path_factory):
    """bpy with the add-on installed from the zip and enabled; yields the add-on's package module."""
    import addon_utils
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    repos = bpy.context.preferences.extensions.repos
    repo = repos.new(name=REPO_MODULE, module=REPO_MODULE,
                     custom_directory=str(tmp_path_factory.mktemp("extensions")), source='USER')
    result = bpy.ops.extensions.package_install_files(filepath=str(addon_zip[0]), repo=REPO_MODULE,
                                                      enable_on_install=True)
    assert result == {'FINISHED'}
    module = f"bl_ext.{REPO_MODULE}.lipsync3d"
    assert module in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.engine_python = sys.executable
    yield sys.modules[module]
    addon_utils.disable(module)
    repos = bpy.context.preferences.extensions.repos   # re-read: resets in between may have rebuilt the list
    for r in [r for r in repos if r.module == REPO_MODULE]:
        repos.remove(r)


@pytest.fixture
def scene(blender):
    """An empty scene with the add-on enabled and its preferences at their test values."""
    import addon_utils
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    if blender.__name__ not in bpy.context.preferences.addons:      # another test reset the preferences
        addon_utils.enable(blender.__name__, default_set=True)
    prefs = bpy.context.preferences.addons[blender.__name__].preferences
    prefs.engine_python, prefs.engine_source, prefs.device = sys.executable, 'BUNDLED', 'CPU'
    prefs.hang_timeout_s = 600.0
    job = bpy.context.window_manager.lipsync3d_job
    job.last_error = job.last_log = job.last_report = ""
    return bpy.context.scene


@pytest.fixture
def fake_engine(scene, blender, tmp_path, monkeypatch):
    """Point the add-on at the fake engine; returns a function that sets its mode."""
    import bpy

    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={FAKE_ENGINE} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    prefs = bpy.context.preferences.addons[blender.__name__].preferences
    prefs.engine_python, prefs.engine_source = str(wrapper), 'INSTALLED'
    log = tmp_path / "argv.log"
    monkeypatch.setenv("LIPSYNC_FAKE_LOG", str(log))
    mode_file = tmp_path / "fake-mode"                  # read by every run: a warm fake server too
    monkeypatch.setenv("LIPSYNC_FAKE_MODE_FILE", str(mode_file))

    def set_mode(mode: str):
        mode_file.write_text(mode)
        return log
    return set_mode
