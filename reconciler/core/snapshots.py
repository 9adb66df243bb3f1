"""The observed model: what runs on the host, parsed purely from the engine's list JSON.

Pure: the shell makes one list call per object kind filtered by our project label and hands
the raw JSON here. Containers without our project label never enter a snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from reconciler.core import labels

_EXIT = re.compile(r"^Exited \((-?\d+)\)")


class ContainerState(StrEnum):
    """A container's state as Docker's list reports it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


class Health(StrEnum):
    """A container's health as Docker's list `Status` text reports it."""

    NONE = "none"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Observed:
    """One container of ours as the engine's list reported it."""

    id: str
    name: str
    service: str
    tier: str
    replica: int | None
    fingerprint: str
    state: ContainerState
    health: Health
    image: str
    created: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)  # the reconciler.config label
    edge: bool = False
    exit_code: int | None = None  # from "Exited (N) ..." in the list Status
    addresses: Mapping[str, str] = field(default_factory=dict)  # network -> IPv4 address
    # the edge's mounted config it serves: the label, or the digest a reload applied since
    config_digest: str = ""
    joined: str = ""  # id of the container whose network namespace it joined (container:<id>)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything of one project on the host: containers, networks, volumes."""

    project: str
    containers: tuple[Observed, ...] = ()
    networks: frozenset[str] = frozenset()
    volumes: frozenset[str] = frozenset()
    engine_available: bool = True
    # a running edge's whole config (`nginx -T`), read only when a plan would replace it
    # start-first next to it: container id -> "" when every listening socket has
    # `reuseport`, else why not
    edge_reuse: Mapping[str, str] = field(default_factory=dict)

    def of_service(self, service: str) -> list[Observed]:
        """The containers of one service."""
        return [c for c in self.containers if c.service == service]


def parse_health(status: str) -> Health:
    """Docker's list `Status` text carries health: "Up 3s (healthy)", "(health: starting)"."""
    if "(healthy)" in status:
        return Health.HEALTHY
    if "(unhealthy)" in status:
        return Health.UNHEALTHY
    if "(health: starting)" in status:
        return Health.STARTING
    return Health.NONE


def parse_state(value: str) -> ContainerState:
    """Docker's `State` text; anything unknown counts as dead."""
    try:
        return ContainerState(value)
    except ValueError:
        return ContainerState.DEAD


def parse_container(item: Mapping[str, Any]) -> Observed | None:
    """One list item -> `Observed` (labels decide service, replica, fingerprint)."""
    lbl: Mapping[str, str] = item.get("Labels") or {}
    names = item.get("Names") or []
    name = str(names[0]).lstrip("/") if names else str(item.get("Id", ""))[:12]
    replica_text = lbl.get(labels.REPLICA, "")
    try:
        config = json.loads(lbl.get(labels.CONFIG, "{}"))
    except ValueError:
        config = {}
    return Observed(
        id=str(item.get("Id", "")),
        name=name,
        service=lbl.get(labels.SERVICE, ""),
        tier=lbl.get(labels.TIER, ""),
        replica=int(replica_text) if replica_text.isdigit() else None,
        fingerprint=lbl.get(labels.FINGERPRINT, ""),
        state=parse_state(str(item.get("State", ""))),
        health=parse_health(str(item.get("Status", ""))),
        image=str(item.get("Image", "")),
        created=int(item.get("Created") or 0),
        config=config if isinstance(config, dict) else {},
        edge=lbl.get(labels.EDGE) == "true",
        config_digest=lbl.get(labels.CONFIG_DIGEST, ""),
        exit_code=int(m.group(1)) if (m := _EXIT.match(str(item.get("Status", "")))) else None,
        addresses={str(net): str(ep.get("IPAddress")) for net, ep in (
            (item.get("NetworkSettings") or {}).get("Networks") or {}).items()
            if isinstance(ep, dict) and ep.get("IPAddress")},
        joined=_joined(item),
    )


def _joined(item: Mapping[str, Any]) -> str:
    host = item.get("HostConfig")
    mode = str(host.get("NetworkMode") or "") if isinstance(host, Mapping) else ""
    return mode.removeprefix("container:") if mode.startswith("container:") else ""


def parse(
    project: str,
    containers: Iterable[Mapping[str, Any]],
    networks: Iterable[Mapping[str, Any]] = (),
    volumes: Iterable[Mapping[str, Any]] = (),
) -> Snapshot:
    """Build a snapshot; anything without `reconciler.project=<project>` is dropped, except
    networks and volumes of the docker compose project of the same name (a migrated stack
    keeps using them)."""

    def ours(item: Mapping[str, Any]) -> bool:
        return bool((item.get("Labels") or {}).get(labels.PROJECT) == project)

    def usable(item: Mapping[str, Any]) -> bool:  # ours, or compose's of the same project
        return ours(item) or (item.get("Labels") or {}).get(labels.COMPOSE_PROJECT) == project

    parsed = [parse_container(c) for c in containers if ours(c)]
    return Snapshot(
        project=project,
        containers=tuple(sorted((c for c in parsed if c is not None),
                                key=lambda c: (c.service, c.replica or 0, c.name, c.id))),
        networks=frozenset(str(n.get("Name")) for n in networks if usable(n)),
        volumes=frozenset(str(v.get("Name")) for v in volumes if usable(v)),
    )


def with_applied(snapshot: Snapshot, applied: Mapping[str, str]) -> Snapshot:
    """The snapshot with the config digests graceful reloads applied (container id -> digest,
    recorded in the state dir) in place of the create-time labels."""
    if not applied:
        return snapshot
    return replace(snapshot, containers=tuple(
        replace(c, config_digest=applied[c.id]) if c.id in applied and c.config_digest else c
        for c in snapshot.containers))


def with_edge_reuse(snapshot: Snapshot, facts: Mapping[str, str]) -> Snapshot:
    """The snapshot with what the running edges' configs say about `reuseport`."""
    return replace(snapshot, edge_reuse={**snapshot.edge_reuse, **facts})


def empty(project: str, *, engine_available: bool = True) -> Snapshot:
    """A snapshot of a host with nothing of ours (or no engine at all)."""
    return Snapshot(project=project, engine_available=engine_available)
