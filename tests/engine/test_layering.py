"""The engine's import rules, read from the source (ast, function-level imports included):
imports point only down the layers, no two modules import each other (directly or round a
cycle), inference and applications never reach the trainer, and nothing imports bpy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "lipsync_engine"
# lowest first; a module may import its own layer and the layers below it
LAYERS = ("core", "face", "io", "prepare", "rig", "model", "inference", "apps", "demo", "")
TRAINER = "lipsync_engine.model.train"


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in module NAME, at any depth of the code."""
    package = name if is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def engine_imports(name: str) -> list[tuple[str, int]]:
    return [(m, line) for m, line in imports(name) if m.split(".")[0] == "lipsync_engine"]


def layer(name: str) -> int:
    parts = name.split(".")
    sub = parts[1] if len(parts) > 2 or (len(parts) == 2 and is_package(name)) else ""
    return LAYERS.index(sub)


def graph() -> dict[str, set[str]]:
    """module -> engine modules it imports (package __init__ files left out: they hold no code)."""
    return {m: {t for t, _ in engine_imports(m) if t in MODULES and not is_package(t)}
            for m in MODULES if not is_package(m) or m == "lipsync_engine"}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        assert name == "lipsync_engine" or name.split(".")[1] in LAYERS or name.count(".") == 1, name


def test_imports_point_only_down_the_layers():
    bad = {f"{m}:{line} imports {t} ({LAYERS[layer(t)] or 'top'} is above {LAYERS[layer(m)] or 'top'})"
           for m in MODULES for t, line in engine_imports(m) if t in MODULES and layer(t) > layer(m)}
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g, state, cycles = graph(), {}, []

    def visit(m: str, path: list) -> None:
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"
    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("stage", ["inference", "apps"])
def test_inference_and_apps_never_reach_the_trainer(stage):
    g = graph()
    for start in (m for m in g if m.startswith(f"lipsync_engine.{stage}.")):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            assert m != TRAINER, f"{start} reaches {TRAINER}"
            todo += [t for t in g.get(m, ()) if t not in seen]
            seen.update(g.get(m, ()))


def test_the_engine_never_imports_bpy():
    bad = [f"{m}:{line}" for m in MODULES for t, line in imports(m) if t.split(".")[0] in ("bpy", "bpy_extras")]
    assert not bad, bad


def test_interop_imports_only_the_standard_library():
    """core/interop.py is shared with the Blender add-on, which has no numpy, torch or engine."""
    outside = {t for t, _ in imports("lipsync_engine.core.interop")
               if t.split(".")[0] not in sys.stdlib_module_names}
    assert not outside, outside
