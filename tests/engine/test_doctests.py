"""The docstring examples of the public API run as doctests, and `import lipsync_engine` stays light."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

MODULES = ("lipsync_engine", "lipsync_engine.core.interop", "lipsync_engine.core.filters",
           "lipsync_engine.core.threads", "lipsync_engine.model.numpy_heads", "lipsync_engine.serve")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_importing_the_package_loads_neither_torch_nor_mediapipe():
    code = ("import sys, lipsync_engine; assert lipsync_engine.__version__; "
            "print(sorted(m for m in ('torch', 'mediapipe', 'cv2', 'bpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
