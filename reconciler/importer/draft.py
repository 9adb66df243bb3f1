"""`Draft`: one compose service while it is translated (spec data, remarks, dependencies,
secrets taken out of the spec)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.importer.model import Kind, Remark, Y
from reconciler.importer.naming import rebase


@dataclass
class Draft:
    name: str
    y: Y
    project_dir: str = ""
    out_dir: str = ""
    environ: Mapping[str, str] = field(default_factory=dict)  # the shell's and .env values
    data: dict[str, Any] = field(default_factory=dict)
    remarks: list[Remark] = field(default_factory=list)
    depends: dict[str, str] = field(default_factory=dict)  # dep -> condition
    depends_short: bool = True
    exposed: list[str] = field(default_factory=list)  # container ports (expose + ports)
    secrets: dict[str, str] = field(default_factory=dict)  # variable -> value (env file only)
    links: dict[str, tuple[str, Y]] = field(default_factory=dict)  # alias -> (service, where)
    anon_volumes: list[str] = field(default_factory=list)  # named volumes made of anonymous

    def rebase(self, path: str) -> str:
        return rebase(path, project_dir=self.project_dir, out_dir=self.out_dir)

    def where(self, y: Y | None) -> tuple[str, int | None]:
        return (y.file, y.line) if y is not None else (self.y.file, self.y.line)

    def remark(self, kind: Kind, y: Y | None, path: Sequence[str | int], message: str) -> None:
        file, line = self.where(y)
        self.remarks.append(Remark(kind, file, line, ("services", self.name, *path), message))

    def number(self, y: Y, path: Sequence[str | int], *, integer: bool) -> int | float | None:
        """A number (interpolated values arrive as strings); an error remark otherwise. An
        interpolated value is quoted as written (`${X}`), never as its value."""
        try:
            if isinstance(y.value, bool):
                raise ValueError
            return int(str(y.value)) if integer else float(str(y.value))
        except ValueError:
            shown = y.source if y.source is not None else y.value
            self.remark(Kind.ERROR, y, path, f"expected {'an integer' if integer else 'a number'}"
                        f", got {shown!r}")
            return None

    def unsupported(self, y: Y | None, path: Sequence[str | int], hint: str = "") -> None:
        self.remark(Kind.UNSUPPORTED, y, path,
                    "not supported (dropped)" + (f": {hint}" if hint else ""))
