"""Create the engine's own Python environment on request, as visible, cancellable steps.

Owns: finding a base Python 3.11, and the steps that build <add-on user dir>/engine-venv
the way the README's `make venv` does: `python -m venv`, torch first with its own
dependencies (nothing after it may pull a newer one), then the exact pins of
requirements.lock with --no-deps (without bpy and the test tools, which the engine does not
need), then `lipsync_engine info` to prove the engine starts. Each step is a client.EngineJob,
so the add-on shows it in the status bar and Esc stops it.
Must not: import bpy; install anything into Blender's own Python (the engine never runs there).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from . import client

ENGINE_PYTHON_VERSION = (3, 11)                      # the engine's pyproject.toml: requires-python ==3.11.*
SKIPPED_REQUIREMENTS = ("bpy", "pytest", "iniconfig", "pluggy", "pytest-xdist", "execnet")   # test-only pins
VENV_NAME = "engine-venv"


def requirements_file(engine_dir: Path | None = None) -> Path:
    """requirements.lock beside the engine (the zip's engine/ folder, or a checkout's root)."""
    root = Path(engine_dir) if engine_dir else client.bundled_engine_dir()
    if root is None or not (root / "requirements.lock").is_file():
        raise FileNotFoundError(f"requirements.lock not found beside the engine ({root}); reinstall the add-on")
    return root / "requirements.lock"


def find_base_python() -> str:
    """A Python 3.11 to create the environment from: python3.11 on PATH, else Blender's own
    interpreter when it is 3.11 (Blender 4.2 to 5.0 ship 3.11); "" if none."""
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == ENGINE_PYTHON_VERSION and Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    return ""


def split_requirements(lock_text: str) -> tuple[str, list]:
    """(the torch pin, every other pin the engine needs) from requirements.lock's text."""
    torch, others = "", []
    for line in lock_text.splitlines():
        pin = line.split("#", 1)[0].strip()
        if not pin:
            continue
        name = pin.split("==", 1)[0].strip().lower()
        if name == "torch":
            torch = pin
        elif name not in SKIPPED_REQUIREMENTS:
            others.append(pin)
    if not torch:
        raise ValueError("requirements.lock has no torch pin")
    return torch, others


def venv_jobs(base_python: str, venv_dir: Path, lock_path: Path, log_dir: Path, engine_dir: Path | None) -> list:
    """The EngineJob steps that create `venv_dir` and check the engine runs in it."""
    venv_dir, log_dir = Path(venv_dir), Path(log_dir)
    torch, pins = split_requirements(Path(lock_path).read_text(encoding="utf-8"))
    log_dir.mkdir(parents=True, exist_ok=True)
    pins_file = log_dir / "engine-requirements.txt"
    pins_file.write_text("\n".join(pins) + "\n", encoding="utf-8")
    python = str(client.venv_python(venv_dir))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]

    def job(label, command, name):
        return client.EngineJob(label, command, env, log_path=log_dir / f"{name}.log", hang_timeout_s=1800,
                                protocol=False, missing_hint=command[0])
    spec = client.EngineSpec(python, str(engine_dir) if engine_dir else None)
    steps = [] if Path(python).is_file() else [job("Create environment", [base_python, "-m", "venv", str(venv_dir)],
                                                   "venv")]
    return steps + [job("Install torch", pip + [torch], "pip-torch"),
                    job("Install engine packages", pip + ["--no-deps", "-r", str(pins_file)], "pip-engine"),
                    spec.job("Check engine", "info", log_path=log_dir / "check.log")]
