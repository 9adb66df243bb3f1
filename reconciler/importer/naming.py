"""Names and paths: compose project names, image roles, paths rebased into the spec dir."""

from __future__ import annotations

import os
import re

# Well-known images, matched on the last path component of the repository (no registry/tag).
_INFRA_NAMES = frozenset({
    "postgres", "postgresql", "postgis", "mysql", "mariadb", "redis", "redis-stack",
    "redis-stack-server", "redis-sentinel", "valkey", "mongo", "mongodb",
    "mongodb-community-server", "kafka", "zookeeper", "rabbitmq", "elasticsearch", "opensearch",
    "nats", "nats-streaming", "minio",
    "cp-kafka", "cp-zookeeper", "cp-server", "cp-enterprise-kafka",  # confluentinc
})
_EXTERNAL_NAMES = frozenset({
    "nginx", "nginx-unprivileged", "openresty", "traefik", "caddy", "haproxy", "kong",
})

def rebase(path: str, *, project_dir: str, out_dir: str) -> str:
    """A path relative to the compose project dir -> relative to the spec dir (`./` or `../`)."""
    if path.startswith(("/", "~")) or not project_dir or not out_dir:
        return path
    full = os.path.normpath(os.path.join(project_dir, path))
    if os.path.commonpath([full, out_dir]) == os.path.sep:  # nothing in common: stay absolute
        return full
    rel = os.path.relpath(full, out_dir)
    return rel if rel.startswith("..") else "./" + rel


def reference(path: str, out_dir: str) -> str:
    """How a spec file in `out_dir` names `path`: relative when they share a directory."""
    if out_dir and os.path.commonpath([path, out_dir]) != os.path.sep:
        rel = os.path.relpath(path, out_dir)
        return rel if rel.startswith("..") else "./" + rel
    return path


def sanitise_project(name: str) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    text = re.sub(r"-{2,}", "-", text)[:40].strip("-")
    return text or "app"


def compose_project_name(name: str) -> str:
    """How compose itself normalises a project name (used in its volume names)."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def image_role(image: str) -> str | None:
    """'infrastructure' / 'external' for well-known images, else None."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    if last in _EXTERNAL_NAMES:
        return "external"
    if last in _INFRA_NAMES:
        return "infrastructure"
    return None
