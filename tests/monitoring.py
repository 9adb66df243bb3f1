"""Helpers shared by the telemetry, alert-rule and Prometheus-backed dashboard tests: where the
monitoring files are, the PromQL expressions they contain, and promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = sorted((PROM_DIR / "rules").glob("*.yml"))
ALERT_TESTS = PROM_DIR / "tests" / "alerts-test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "reconciler.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

# a PromQL vector selector's metric name: an identifier followed by `{` or `[`, or a bare
# identifier that is not a function, keyword or label
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_RECONCILER = re.compile(r"\breconciler_[a-z0-9_]+")


def tool(name: str) -> str:
    """Path of a Prometheus tool (Debian `prometheus`); skipped if missing, failed in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {name} is not installed (apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60, check=False)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


SWARM_ONLY = "reconciler_swarm_"  # series a one-host reconciler never exports


def dashboard_queries(dash: dict[str, Any], *, engine: str = "docker",
                      ) -> list[tuple[str, str]]:
    """(where, expr) for every target of every panel and every query variable
    (`label_values(expr, label)` -> expr). `engine="docker"` leaves out the Swarm panels
    (their series exist only under `--engine swarm`); `engine="swarm"`: every panel."""
    out: list[tuple[str, str]] = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            if SWARM_ONLY in target["expr"] and engine != "swarm":
                continue
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def alert_rules() -> list[dict[str, Any]]:
    yaml = YAML(typ="safe")
    out: list[dict[str, Any]] = []
    for path in RULES:
        for group in yaml.load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (reconciler_* anywhere, plus any `name{`/`name[`)."""
    names = set(_RECONCILER.findall(expr))
    names |= {m for m in _SELECTOR.findall(expr) if m not in ("by", "without", "on", "ignoring")}
    return names


def substitute(expr: str, *, job: str, instance: str) -> str:
    """Grafana's template variables as Grafana would fill them for one scrape target."""
    for name, value in (("$__rate_interval", "1m"), ("$__interval", "15s"),
                        ("$__range", "5m"), ("${job}", job), ("$job", job),
                        ("${instance}", instance), ("$instance", instance)):
        expr = expr.replace(name, value)
    return expr
