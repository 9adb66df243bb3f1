"""Spec files from the imported data: one file per tier, YAML that reads the same under
YAML 1.1 and 1.2 (ports and yes/no words quoted)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import StringIO
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

SCHEMA_COMMENT = "# yaml-language-server: $schema=../reconciler.schema.json"

_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _node(value: Any) -> Any:
    if isinstance(value, dict):
        m = CommentedMap()
        for k, v in value.items():
            m[k] = _node(v)
        if not value:
            m.fa.set_flow_style()
        return m
    if isinstance(value, list | tuple):
        seq = CommentedSeq(_node(v) for v in value)
        scalars = all(isinstance(v, str | int | float) and not isinstance(v, bool)
                      and "\n" not in str(v) for v in value)
        if scalars and sum(len(str(v)) + 2 for v in value) <= 72 and not all(
                isinstance(v, DoubleQuotedScalarString) for v in value):
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, str):
        if "\n" in value and not any(line != line.rstrip() for line in value.split("\n")):
            return LiteralScalarString(value)
        if value.lower() in _YAML11_WORDS:
            return DoubleQuotedScalarString(value)
    return value


def dump(data: Mapping[str, Any]) -> str:
    yaml = YAML(typ="rt")
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    stream = StringIO()
    yaml.dump(_node(data), stream)
    return stream.getvalue()


def _quoted_ports(service: Mapping[str, Any]) -> dict[str, Any]:
    """`8080:80` is a base-60 number to YAML 1.1 readers: always quote ports."""
    out = dict(service)
    if "ports" in out:
        out["ports"] = [DoubleQuotedScalarString(str(p)) for p in out["ports"]]
    return out


def tier_file(index: int, tier: str) -> str:
    return f"{(index + 1) * 10:02d}-{tier}.yaml"


def render_files(
    *,
    project: str,
    tiers: Sequence[str],
    networks: Mapping[str, Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, Any]],
    services: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    head = f"{SCHEMA_COMMENT}\n# Imported from docker compose by `reconciler import-compose`.\n"
    project_doc: dict[str, Any] = {"project": project, "tiers": list(tiers)}
    if networks:
        project_doc["networks"] = {k: dict(v) for k, v in sorted(networks.items())}
    if volumes:
        project_doc["volumes"] = {k: dict(v) for k, v in sorted(volumes.items())}
    for key, section in (extra or {}).items():  # top-level secrets, configs
        if section:
            project_doc[key] = {k: dict(v) for k, v in sorted(section.items())}
    files = {"00-project.yaml": head + dump(project_doc)}
    for i, tier in enumerate(tiers):
        mine = {n: _quoted_ports(s) for n, s in sorted(services.items()) if s["tier"] == tier}
        if mine:
            files[tier_file(i, tier)] = (f"{SCHEMA_COMMENT}\n# Tier {i + 1}: {tier}.\n"
                                         + dump({"services": mine}))
    return files
