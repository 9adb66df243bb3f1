"""The importer's value types: remarks, sources, results, and the located YAML it reads.

Compose files are read by the same capped reader as spec files (`reconciler.yamlread`):
`parse` turns a `Source` into a tree of `Y` (= `yamlread.Located`) nodes whose mapping
entries carry the line of their key, or a `ComposeError` naming file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler import yamlread
from reconciler.core.model import format_path
from reconciler.yamlread import Located as Y

__all__ = ["ComposeError", "CycleReport", "ImportResult", "Kind", "NotText", "Remark",
           "Source", "Y", "as_text", "err", "parse", "plain"]


class Kind(StrEnum):
    ERROR = "error"  # the import cannot produce a spec (nothing is written)
    UNSUPPORTED = "unsupported"  # a compose key that is not carried over
    NOTE = "note"  # carried over differently, or something the operator should know
    WARNING = "warning"  # carried over as is, but risky in production


@dataclass(frozen=True, slots=True)
class Remark:
    kind: Kind
    file: str
    line: int | None
    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = format_path(self.path)
        return f"{where}: {key + ': ' if key else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class Source:
    """One compose file: the name shown in remarks and its text."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class CycleReport:
    cycles: tuple[tuple[str, ...], ...] = ()  # each `a -> b -> a`
    upward: tuple[tuple[str, str, str, str], ...] = ()  # (service, tier, dependency, tier)
    drop: tuple[tuple[str, str], ...] = ()  # (service, dependency) edges proposed for removal
    reasons: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out: list[str] = []
        if not self.cycles:
            return out
        out.append(f"{len(self.cycles)} dependency cycle(s):")
        out.extend("  " + " -> ".join(c) for c in self.cycles)
        if self.upward:
            out.append("edges that point upward (a service may depend only on its own or an "
                       "earlier tier):")
            out.extend(f"  {a} ({ta}) -> {b} ({tb})" for a, ta, b, tb in self.upward)
        out.append("proposed edges to drop:")
        for a, b in self.drop:
            reason = self.reasons.get((a, b), "")
            out.append(f"  {a} -> {b}" + (f"   ({reason})" if reason else ""))
        return out


@dataclass(frozen=True, slots=True)
class ImportResult:
    project: str
    tiers: tuple[str, ...]
    services: Mapping[str, Mapping[str, Any]]  # spec service mappings (plain data)
    placement: Mapping[str, str]  # service -> tier
    files: Mapping[str, str]  # spec file name -> YAML text ({} when nothing may be written)
    remarks: tuple[Remark, ...]
    cycles: CycleReport
    # service -> {variable: value} taken out of the spec: written by the CLI to the env file
    # `secret_files[service]` (0600), never into a spec file, never printed
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secret_files: Mapping[str, str] = field(default_factory=dict)
    # generated files of secrets/configs with an environment source: path -> value (0600)
    secret_blobs: Mapping[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Remark]:
        return [r for r in self.remarks if r.kind is Kind.ERROR]

    @property
    def ok(self) -> bool:
        return bool(self.files)


class ComposeError(Exception):
    def __init__(self, remark: Remark) -> None:
        self.remark = remark
        super().__init__(str(remark))


def err(file: str, line: int | None, path: tuple[str | int, ...], message: str) -> Remark:
    return Remark(Kind.ERROR, file, line, path, message)


def parse(source: Source, budget: yamlread.Budget | None = None) -> Y:
    """Parse one compose file with the shared capped reader (YAML 1.2, duplicates and key
    collisions rejected, depth/alias/size caps checked before anything is built)."""
    try:
        root = yamlread.parse(source.text, source.name, lines=True, budget=budget)
    except yamlread.YamlRefused as exc:
        raise ComposeError(err(exc.file, exc.line, exc.path, exc.message)) from None
    if root is None:
        return Y({}, source.name, 1)
    if not isinstance(root.value, dict):
        raise ComposeError(err(source.name, 1, (), "a compose file must be a mapping"))
    return root


def plain(y: Y | None) -> Any:
    return yamlread.to_plain(y)


class NotText(ValueError):
    """A list or a mapping where compose expects a scalar."""


def as_text(value: Any) -> str:
    """A scalar as compose writes it (`true`/`false` for booleans); `NotText` for a list or
    a mapping (never their Python repr)."""
    if isinstance(value, dict | list):
        raise NotText
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
