"""The nginx edge: upstream rendering (pure) and safe reloads (through the runtime).

For each service with `expose`, an `upstream <service>` block lists exactly the containers
of that service that are running and healthy (by their address on a network shared with the
edge, so a stale entry can never make `nginx -t` fail on DNS). The file is written
atomically into a host directory the reconciler bind-mounts into the edge container; before
every reload `nginx -t` runs inside the edge container and a failing config is never
reloaded (the step fails, which triggers the normal revert). Reload is SIGHUP: graceful.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from pathlib import Path

from reconciler.desired import Desired, DesiredService
from reconciler.execute import EdgeHook, StepFailed
from reconciler.persistence import StateError, atomic_write
from reconciler.runtimes import Runtime, RuntimeError_
from reconciler.snapshots import Health, Observed, State, parse

PLACEHOLDER = "server 127.0.0.1:9 down;  # no healthy container"
HEADER = "# Rendered by reconciler: do not edit (rewritten on every rollout).\n"


def _address(c: Observed, networks: Iterable[str]) -> str | None:
    for net in networks:
        ip = c.addresses.get(net)
        if ip:
            return ip
    return None


def render_upstreams(
    desired: Desired, containers: Iterable[Observed], *, include: Collection[str] = (),
    exclude: Collection[str] = (),
) -> str:
    """`upstream` blocks for every exposed service. Pure.

    A container is listed when it is running and healthy (or has no healthcheck), belongs to
    the service, is not in `exclude`, and shares a network with the edge; `include` lists
    ids to keep even while their health is still settling (an old generation being drained).
    """
    edge = desired.services.get(desired.edge_service or "")
    edge_nets = edge.networks if edge else ()
    by_service: dict[str, list[str]] = {}
    for c in sorted(containers, key=lambda c: (c.service, c.replica or 0, c.name)):
        svc = desired.services.get(c.service)
        if svc is None or svc.service.expose is None or c.id in exclude:
            continue
        ready = c.state is State.RUNNING and c.health in (Health.HEALTHY, Health.NONE)
        if not ready and c.id not in include:
            continue
        shared = [n for n in svc.networks if n in edge_nets] or list(svc.networks)
        address = _address(c, shared)
        if address:
            by_service.setdefault(c.service, []).append(
                f"server {address}:{svc.service.expose.port} max_fails=1 fail_timeout=2s;"
                f"  # {c.name}")
    out = [HEADER]
    for name, svc in sorted(desired.services.items()):
        if svc.service.expose is None:
            continue
        servers = by_service.get(name) or [PLACEHOLDER]
        out.append(f"upstream {name} {{\n" + "".join(f"    {s}\n" for s in servers)
                   + "    keepalive 16;\n}\n")
    return "\n".join(out)


def upstream_servers(text: str) -> dict[str, list[str]]:
    """Parse a rendered file back into {upstream: [server addresses]} (for plans and tests)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("upstream "):
            current = line.split()[1]
            out[current] = []
        elif line.startswith("server ") and current and "down;" not in line:
            out[current].append(line.split()[1])
    return out


class Edge(EdgeHook):
    """Keeps the edge's upstreams file true and reloads nginx safely."""

    def __init__(self, runtime: Runtime, directory: Path, *, filename: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rt = runtime
        self.path = directory / filename
        self.sleep = sleep

    async def _containers(self, desired: Desired) -> list[Observed]:
        from reconciler.labels import project_selector

        raw = await self.rt.list_containers(label=project_selector(desired.project))
        return list(parse(desired.project, raw).containers)

    def write(self, text: str) -> bool:
        """Write when changed; True when the content changed."""
        try:
            if self.path.read_text() == text:
                return False
        except OSError:
            pass
        try:
            atomic_write(self.path, text.encode(), mode=0o644)
        except StateError as exc:
            raise StepFailed("edge upstreams", str(exc)) from None
        return True

    async def prepare(self, desired: Desired) -> None:
        """Before a rollout: the file exists, so a (re)created edge starts with it."""
        if not self.path.exists():
            self.write(render_upstreams(desired, await self._containers(desired)))

    async def sync(self, desired: Desired, *, include: Collection[str] = (),
                   exclude: Collection[str] = ()) -> None:
        containers = await self._containers(desired)
        text = render_upstreams(desired, containers, include=include, exclude=exclude)
        if not self.write(text):
            return
        edges = [c for c in containers if c.service == desired.edge_service
                 and c.state is State.RUNNING]
        for edge in edges:
            await self._reload(edge)

    async def _reload(self, edge: Observed) -> None:
        try:
            test = await self.rt.exec_in_container(edge.id, ["nginx", "-t", "-q"])
        except RuntimeError_ as exc:
            raise StepFailed("edge reload", f"nginx -t could not run: {exc}") from None
        if test.exit_code != 0:
            raise StepFailed("edge reload", "nginx -t failed; the running config was kept:\n"
                             + test.output.strip()[-800:])
        try:
            await self.rt.kill_container(edge.id, signal="HUP")
        except RuntimeError_ as exc:
            raise StepFailed("edge reload", f"reload signal failed: {exc}") from None

    async def cutover(self, desired: Desired, svc: DesiredService, *, new_id: str,
                      old_ids: list[str]) -> None:
        """New healthy -> serve new + old -> serve new only -> drain -> (caller stops old)."""
        await self.sync(desired, include=old_ids)
        await self.sync(desired, exclude=old_ids)
        await self.sleep(svc.service.update.drain)

    async def after_step(self, desired: Desired, svc: DesiredService) -> None:
        await self.sync(desired)

    async def settle(self, desired: Desired) -> None:
        await self.sync(desired)


def edge_dir(state_dir: Path, project: str) -> Path:
    return state_dir / "edge" / project


def mount_for(desired_edge_file: str, directory: Path) -> tuple[str, str]:
    """(host dir, container dir) of the bind the edge container gets for its upstreams."""
    return str(directory), os.path.dirname(desired_edge_file)


def changes(before: Mapping[str, list[str]], after: Mapping[str, list[str]]) -> list[str]:
    out = []
    for name in sorted(set(before) | set(after)):
        added = sorted(set(after.get(name, [])) - set(before.get(name, [])))
        removed = sorted(set(before.get(name, [])) - set(after.get(name, [])))
        if added or removed:
            out.append(f"upstream {name}: " + ", ".join(
                [f"+{a}" for a in added] + [f"-{r}" for r in removed]))
    return out
