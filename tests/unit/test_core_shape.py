"""The shape of the pure core: every public type and function says what it is for, and no
module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "reconciler"
CORE = tuple(sorted(p.stem for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__"))


def missing_docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_"):
                    continue
                if ast.get_docstring(node) is None:
                    out.append(f"{path.name}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{node.name}.")

    visit(tree.body, "")
    return out


@pytest.mark.parametrize("module", CORE)
def test_public_names_of_the_core_have_docstrings(module: str) -> None:
    assert missing_docstrings(PACKAGE / "core" / f"{module}.py") == []


def test_the_loader_documents_its_public_names() -> None:
    assert missing_docstrings(PACKAGE / "loading.py") == []


def test_no_private_name_is_imported_across_modules() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reconciler"):
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_")]
    assert found == []


def test_one_redaction_longest_secret_first_short_values_kept() -> None:
    from reconciler.core.envfiles import Secret, redact

    text = "token=abcdef1234 prefix abcdef and ok"
    assert redact(text, [Secret("abcdef"), "abcdef1234", "ok"]) == (
        "token=(sensitive) prefix (sensitive) and ok")


def test_the_executor_and_the_edge_never_branch_on_a_reason() -> None:
    for module in ("execute", "edges"):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        step_reasons = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                        and n.attr == "reason" and isinstance(n.value, ast.Name)
                        and n.value.id in ("step", "s")]
        assert "Reason" not in names and not step_reasons, module
