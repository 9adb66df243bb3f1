"""The core cannot do I/O: import-linter forbids its I/O modules (os, pathlib, asyncio, time,
subprocess, ...); this test forbids the builtins that reach the world without an import
(`open`, `print`, `input`, `exec`, `eval`, `compile`, `__import__`, `breakpoint`) and the
dynamic-import escape hatches (`importlib`, `builtins`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reconciler.core
import reconciler.export

FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "compile", "__import__",
                   "breakpoint"}
FORBIDDEN_IMPORTS = {"importlib", "builtins", "ctypes"}

CORE_DIRS = [Path(reconciler.core.__file__).parent, Path(reconciler.export.__file__).parent]


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Calls of forbidden builtins and imports of forbidden modules in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: {node.func.id}()")
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_IMPORTS]
        if isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in FORBIDDEN_IMPORTS:
            found.append(f"{filename}:{node.lineno}: from {node.module} import")
    return found


def core_files() -> list[Path]:
    return sorted(p for d in CORE_DIRS for p in d.glob("*.py"))


def test_the_core_has_modules() -> None:
    names = {p.stem for p in core_files()}
    assert {"specs", "plans", "desired", "model", "health", "rollback", "render"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_module_does_no_io(path: Path) -> None:
    assert violations(path.read_text(), str(path)) == []


@pytest.mark.parametrize("planted", [
    "def f(p):\n    return open(p).read()\n",
    "print('x')\n",
    "import importlib\nimportlib.import_module('os')\n",
    "x = __import__('os')\n",
])
def test_a_planted_escape_is_caught(planted: str) -> None:
    assert violations(planted) != []
