"""The package's shape: imports point one way (no circle, lazy imports included), and
``import rtdenoise`` and the engine interface stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rtdenoise"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the rtdenoise modules it imports anywhere in its body (lazy ones too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # A package's __init__ re-exports its modules; an edge into a package stands for the
    # modules it names, so packages are left out and only module-to-module edges count.
    packages = {n for n in graph if (SRC.parent / n.replace(".", "/") / "__init__.py").exists()}
    edges = {n: {d for d in deps if d not in packages} for n, deps in graph.items() if n not in packages}
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    return found


def test_no_import_circle_between_modules():
    assert _cycles(_import_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("layer,below", [
    pytest.param("rtdenoise.model", ("rtdenoise.backends", "rtdenoise.stream", "rtdenoise.cli", "rtdenoise.train"),
                 id="model-knows-no-engine"),
    pytest.param("rtdenoise.backends", ("rtdenoise.stream", "rtdenoise.cli", "rtdenoise.train", "rtdenoise.denoise"),
                 id="engines-know-no-service"),
    pytest.param("rtdenoise.synth", ("rtdenoise.model", "rtdenoise.backends", "rtdenoise.stream", "rtdenoise.train"),
                 id="synth-knows-no-model"),
])
def test_imports_point_down_the_layers(layer, below):
    graph = _import_graph()
    wrong = sorted((m, d) for m, deps in graph.items() if m.startswith(layer) for d in deps if d.startswith(below))
    assert wrong == []


@pytest.mark.parametrize("module", ["rtdenoise", "rtdenoise.backends.base", "rtdenoise.stream.wire"])
def test_light_imports_do_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_rtdenoise_denoise_is_the_function_whatever_was_imported_first():
    """The submodule rtdenoise.denoise shares the function's name: importing it (the service and the
    CLI do) must not replace ``rtdenoise.denoise``, the documented API, with the module."""
    code = ("import rtdenoise.stream.sequencer, rtdenoise.cli, rtdenoise.denoise, rtdenoise, numpy as np; "
            "from rtdenoise.denoise import denoise; "
            "print(rtdenoise.denoise is denoise, callable(rtdenoise.denoise))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_every_subpackage_is_installed():
    """pyproject lists the packages by hand; one left out is missing from every wheel (an
    editable install hides it)."""
    import tomllib

    listed = set(tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p) for p in SRC.rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
