"""Committed notebooks: executed (no never-run cells, no stored errors) and never re-defining the library.

nbval (run by `make test`) re-executes every notebook; this file checks what is *committed*.
"""
from __future__ import annotations

import ast
import glob
import importlib
import inspect
import os
import pkgutil

import nbformat
import pytest

import gagpo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "chapters", "**", "*.ipynb"), recursive=True))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p]


def library_names() -> set[str]:
    """Every public function and class defined in a gagpo module (what a chapter must import, not copy)."""
    names = set(gagpo.__all__)
    for info in pkgutil.walk_packages(gagpo.__path__, "gagpo."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # optional extras (e.g. language-model deps) may be absent
            continue
        for name, obj in vars(module).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == info.name:
                names.add(name)
    return names


def defined_names(source: str) -> set[str]:
    """Names bound to functions or classes anywhere in a cell: def, class, or ``name = lambda ...``
    (IPython magics stripped). Plain variables such as ``returns = ...`` are not definitions."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Lambda):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(t.id for t in targets if isinstance(t, ast.Name))
    return out


def test_library_names_are_found():
    names = library_names()
    assert {"gagpo_advantages", "StepBatch", "ppo_clip_loss", "TextPolicy", "collect"} <= names


def test_redefinition_detector_catches_a_copy():
    assert "gagpo_advantages" in defined_names("def gagpo_advantages(batch, gamma, lam):\n    return 0")
    assert "naive_gagpo" in defined_names("naive_gagpo = lambda b: b")
    assert "StepBatch" in defined_names("class StepBatch:\n    pass")
    assert defined_names("returns = gagpo.discounted_returns(b, 0.9)") == set()


@pytest.mark.skipif(not NOTEBOOKS, reason="no chapters yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.relpath(p, ROOT) for p in NOTEBOOKS])
def test_notebook_is_executed_and_imports_the_library(path):
    nb = nbformat.read(path, as_version=4)
    exported = library_names()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        assert cell.get("execution_count") is not None, f"{os.path.basename(path)} cell {i} was never run"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{os.path.basename(path)} cell {i} has a stored error: {errors[0].get('ename')}"
        clash = {n for n in defined_names(cell.source) if n in exported}
        assert not clash, f"{os.path.basename(path)} cell {i} re-defines {sorted(clash)} exported by gagpo; import it (or name a teaching copy naive_*)"
