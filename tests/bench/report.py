"""Figures -> the table of medians (min/max), ratios reconciler/compose and targets. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Row:
    """One measured quantity of one scenario. `rec`/`cmp` are the raw samples (None: the
    side does not exist, e.g. compose for drift repair); `note` explains n/a and not-run."""

    scenario: str
    metric: str
    unit: str
    rec: list[float] | None = None
    cmp: list[float] | None = None
    target: str = ""
    met: bool | None = None  # None: no target, or not evaluated
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rec_median(self) -> float | None:
        return median(self.rec)

    @property
    def cmp_median(self) -> float | None:
        return median(self.cmp)

    @property
    def ratio(self) -> float | None:
        return ratio(self.rec_median, self.cmp_median)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(rec_median=self.rec_median, cmp_median=self.cmp_median, ratio=self.ratio)
        return out


def median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_num(value: float | None, unit: str = "") -> str:
    """Compact: 3 significant digits, a unit suffix; ms below one second for `s` units."""
    if value is None:
        return "-"
    if unit == "s" and abs(value) < 1:
        return f"{value * 1000:.3g} ms"
    if unit in ("", "calls", "count", "calls/min"):
        text = f"{value:.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"
        return text + (f" {unit}" if unit and unit != "count" else "")
    text = f"{value:.3g}"
    if "e" in text:
        text = f"{value:.0f}"
    return f"{text} {unit}".strip()


def fmt_cell(samples: Sequence[float] | None, unit: str) -> str:
    if not samples:
        return "n/a"
    med = fmt_num(median(samples), unit)
    if len(samples) == 1:
        return med
    return f"{med} ({fmt_num(min(samples), unit)}-{fmt_num(max(samples), unit)})"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_met(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: ""}[met]


HEADER = ("scenario", "metric", "reconciler median (min-max)", "compose median (min-max)",
          "rec/compose", "target", "status")


def table_rows(rows: Iterable[Row]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in rows:
        rec = fmt_cell(r.rec, r.unit) if r.rec else (r.note or "n/a") if r.rec is None and \
            r.cmp is None else "n/a"
        cmp = fmt_cell(r.cmp, r.unit) if r.cmp else ("n/a" if r.rec else "")
        status = fmt_met(r.met)
        if r.rec is None and r.cmp is None and r.note:
            rec, cmp, status = r.note, "", "not run" if r.target else ""
        out.append((r.scenario, r.metric, rec, cmp, fmt_ratio(r.ratio), r.target, status))
    return out


def markdown(rows: Iterable[Row]) -> str:
    body = table_rows(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def plain(rows: Iterable[Row]) -> str:
    body = [HEADER, *table_rows(rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
    out = []
    for n, r in enumerate(body):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"


def summary(rows: Iterable[Row]) -> str:
    rows = list(rows)
    met = [r for r in rows if r.met is True]
    missed = [r for r in rows if r.met is False]
    lines = [f"targets: {len(met)} met, {len(missed)} not met"]
    for r in missed:
        lines.append(f"  NOT met: {r.scenario} {r.metric}: target {r.target}")
    return "\n".join(lines) + "\n"


def rows_from_json(data: dict[str, Any]) -> list[Row]:
    keep = {"scenario", "metric", "unit", "rec", "cmp", "target", "met", "note", "extra"}
    return [Row(**{k: v for k, v in r.items() if k in keep}) for r in data.get("rows", [])]


if __name__ == "__main__":  # `python -m tests.bench.report FILE.json`: the markdown table again
    import json
    import sys
    from pathlib import Path

    rows = rows_from_json(json.loads(Path(sys.argv[1]).read_text()))
    sys.stdout.write(markdown(rows) + "\n" + summary(rows))
