"""`SwarmRuntime`: the Swarm endpoints of the Docker Engine API (services, tasks, nodes,
overlay networks) on top of a `DockerRuntime` (its client, timeouts and error mapping).

It must not decide anything: it lists, creates, updates and removes what it is told to.
The endpoint is the one `DockerRuntime` uses (`DOCKER_HOST` or the local socket); it must
be a Swarm manager.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core import labels
from reconciler.core.swarm import ENGINE, SWARM
from reconciler.dockerd import DockerRuntime
from reconciler.runtimes import JSON, Conflict, EngineFailure, NotFound

#: Where the kernel lists IPVS services; absent when the `ip_vs` module is not loaded (then a
#: service VIP answers "no route to host" and ingress-published ports never answer).
IPVS_PROC = "/proc/net/ip_vs"
#: Overrides the detection: `vip` or `dnsrr`.
ENDPOINT_MODE_ENV = "RECONCILER_SWARM_ENDPOINT_MODE"


class NotASwarmManager(EngineFailure):
    """The endpoint's engine is not a Swarm manager."""


def ipvs_available(proc: str = IPVS_PROC) -> tuple[bool, str]:
    """Whether this kernel has IPVS (the reconciler runs on a manager node, and every
    node of a cluster normally runs the same kernel), and how that was decided."""
    forced = os.environ.get(ENDPOINT_MODE_ENV, "").strip().lower()
    if forced in ("vip", "dnsrr"):
        return forced == "vip", f"{ENDPOINT_MODE_ENV}={forced}"
    if os.path.exists(proc):
        return True, f"{proc} present"
    return False, f"{proc} absent (no IPVS in this kernel)"


def _list(value: object, what: str) -> list[JSON]:
    if value is None or value == "":
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise EngineFailure(f"{what}: unexpected answer from the engine")
    return list(value)


def _obj(value: object, what: str) -> JSON:
    if not isinstance(value, dict):
        raise EngineFailure(f"{what}: unexpected answer from the engine")
    return value


class SwarmRuntime:
    """The Swarm calls the reconciler makes; `docker` is the plain runtime of the same
    endpoint (exec for the edge's reload, container lists of the local node)."""

    def __init__(self, docker: DockerRuntime) -> None:
        self.docker = docker

    @classmethod
    async def connect(cls, *, timeout_s: float = 30.0) -> SwarmRuntime:
        """Connect to the endpoint and check that it is a Swarm manager."""
        docker = await DockerRuntime.connect(timeout_s=timeout_s)
        rt = cls(docker)
        try:
            await rt.manager_node()
        except BaseException:
            await docker.close()
            raise
        return rt

    async def info(self) -> JSON:
        """`GET /info` (its `Swarm` section says whether this engine is a manager)."""
        return _obj(await self.docker.request("info", "info"), "info")

    async def manager_node(self) -> str:
        """The node id of this engine; `NotASwarmManager` unless it is an active manager."""
        swarm = (await self.info()).get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise NotASwarmManager(
                f"the engine at {self.docker.url} is not a Swarm manager (state "
                f"{swarm.get('LocalNodeState') or 'inactive'}): run `docker swarm init` "
                "there, or point DOCKER_HOST at a manager")
        return str(swarm.get("NodeID") or "")

    async def list_services(self, *, label: str) -> list[JSON]:
        params = {"filters": json.dumps({"label": [label]})}
        return _list(await self.docker.request("list services", "services", params=params),
                     "list services")

    async def list_tasks(self, *, service_ids: Sequence[str]) -> list[JSON]:
        if not service_ids:
            return []
        params = {"filters": json.dumps({"service": list(service_ids)})}
        return _list(await self.docker.request("list tasks", "tasks", params=params),
                     "list tasks")

    async def list_nodes(self) -> list[JSON]:
        return _list(await self.docker.request("list nodes", "nodes"), "list nodes")

    async def list_networks(self, *, label: str) -> list[JSON]:
        return await self.docker.list_networks(label=label)

    async def inspect_service(self, service_id: str) -> JSON:
        what = f"inspect service {service_id}"
        return _obj(await self.docker.request(what, f"services/{service_id}"), what)

    async def create_service(self, spec: Mapping[str, Any]) -> str:
        what = f"create service {spec.get('Name')}"
        got = _obj(await self.docker.request(what, "services/create", method="POST",
                                             body=spec), what)
        return str(got.get("ID", ""))

    async def update_service(self, service_id: str, *, version: int,
                             spec: Mapping[str, Any]) -> None:
        what = f"update service {spec.get('Name')}"
        await self.docker.request(what, f"services/{service_id}/update", method="POST",
                                  params={"version": str(version)}, body=spec)

    async def remove_service(self, service_id: str) -> None:
        try:
            await self.docker.request(f"remove service {service_id}", f"services/{service_id}",
                                      method="DELETE")
        except NotFound:
            return

    async def create_overlay_network(self, spec: Mapping[str, Any]) -> None:
        """Create an overlay network; an existing one of ours with that name is fine."""
        name = str(spec.get("Name"))
        what = f"create network {name}"
        try:
            await self.docker.request(what, "networks/create", method="POST", body=spec)
            return
        except Conflict:
            pass
        existing = _obj(await self.docker.request(what, f"networks/{name}"), what)
        mine = existing.get("Labels") or {}
        if mine.get(labels.PROJECT) != (spec.get("Labels") or {}).get(labels.PROJECT):
            raise Conflict(f"{what}: a network with this name exists without our labels")
        if existing.get("Driver") != "overlay" or mine.get(ENGINE) != SWARM:
            raise Conflict(f"{what}: a {existing.get('Driver')} network of ours has this name "
                           "(made by the docker engine): remove it first to move the "
                           "project to Swarm")

    async def close(self) -> None:
        await self.docker.close()
