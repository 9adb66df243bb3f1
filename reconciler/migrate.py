"""`reconciler migrate`: take over a running docker compose project service by service.

Instead of `docker compose down` + install (the whole site down for a cold start), the spec
(imported with the compose project's name, so its volumes and networks are the same
`<project>_<name>` objects) converges through the usual planner, executor and health gates,
and compose's containers stop around each tier: a service that can run twice (no fixed host
port, no named volume: start-first) starts ours first and stops compose's once ours is
healthy; the others (databases on a volume, the edge on its port) stop compose's first. The
edge is in the last tier, so it moves last; its hand-over is compose's edge exiting and our
edge's holder joining its networks (our edge already runs in the holder's namespace, see
`_Migrating`). Everything is backed up first (the service's `backup` hook, else a copy of
its named volumes).

Compose's containers are foreign to the reconciler: this module is the ONLY place that
stops them, and only those labelled `com.docker.compose.project=<NAME>`. It never removes
them; `<state>/migrations/<NAME>-<time>/restore.sh` removes ours and starts them again
(volumes untouched), and `reconciler migrate --rollback` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reconciler.backupstore import BackupError, BackupStore
from reconciler.core import backups, labels
from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired, DesiredService, build
from reconciler.core.health import health_command
from reconciler.core.plans import Action, Step
from reconciler.core.specs import Backup, UpdateOrder, parse_port
from reconciler.edges import edge_dir
from reconciler.execute import ExecutionReport, Executor, StepFailed
from reconciler.persistence import State, atomic_write
from reconciler.runtimes import JSON, EngineError, Runtime

COMPOSE_PROJECT = labels.COMPOSE_PROJECT
COMPOSE_SERVICE = "com.docker.compose.service"
EXIT_OK, EXIT_FAILED = 0, 1


@dataclass(frozen=True, slots=True)
class ComposeContainer:
    id: str
    name: str
    service: str
    running: bool


def compose_containers(raw: list[JSON], project: str) -> list[ComposeContainer]:
    """The compose project's containers from the engine's list JSON (only that project's)."""
    out = []
    for c in raw:
        lbl = c.get("Labels") or {}
        if lbl.get(COMPOSE_PROJECT) != project:
            continue
        names = c.get("Names") or ["/?"]
        out.append(ComposeContainer(id=str(c["Id"]), name=str(names[0]).lstrip("/"),
                                    service=str(lbl.get(COMPOSE_SERVICE, "")),
                                    running=c.get("State") == "running"))
    return sorted(out, key=lambda c: (c.service, c.name))


@dataclass(frozen=True, slots=True)
class Move:
    """How one spec service takes over from compose's containers of the same name."""

    service: str
    tier: str
    stop_first: bool
    compose: tuple[ComposeContainer, ...]
    why: str


def moves(desired: Desired, found: list[ComposeContainer]) -> list[Move]:
    """Per service in tier order: stop compose's first or start ours first. Pure.

    With an edge holder (`Desired.edge_holder`, see `core.desired._split_edge`) the holder
    owns the published ports, so it takes over from compose's edge containers (stop-first);
    the edge itself runs in the holder's network namespace and starts right after it."""
    holder = desired.edge_holder
    edge = desired.edge_service if holder is not None else None
    out = []
    for tier in desired.tiers:
        # a service joining another's network namespace comes right after it
        for svc in sorted(desired.in_tier(tier), key=lambda s: (s.joins is not None, s.name)):
            own = edge if svc.name == holder and edge is not None else svc.name
            theirs = () if svc.name == edge else tuple(
                c for c in found if c.service == own and c.running)
            stop_first = svc.order is UpdateOrder.STOP_FIRST
            why = ("stop-first: a fixed host port or a named volume cannot be shared"
                   if stop_first else "start-first: ours is healthy before compose's stops")
            if svc.name == holder:
                stop_first = True
                why = f"holds {edge}'s networks, aliases and published ports"
            elif svc.name == edge:
                stop_first = True
                why = f"runs in {holder}'s network namespace"
            out.append(Move(svc.name, tier, stop_first, theirs, why))
    return out


def leftovers(desired: Desired, found: list[ComposeContainer]) -> list[ComposeContainer]:
    """Running compose containers of services the spec does not have (stopped last)."""
    return [c for c in found if c.running and c.service not in desired.services]


def restore_script(project: str, found: list[ComposeContainer], order: list[str]) -> str:
    """A shell script that removes the reconciler's containers of `project` and starts the
    compose containers that were running, in tier order (volumes untouched)."""
    running = {c.id: c for c in found if c.running}
    ids = [cid for cid in order if cid in running] + [
        cid for cid in running if cid not in order]
    lines = [
        "#!/bin/sh",
        f"# Brings the compose project {project} back as it ran before `reconciler migrate`.",
        "# Stop the reconciler service first (systemctl stop reconciler).",
        "set -eu",
        f"ours=$(docker ps -aq --filter label=reconciler.project={shlex.quote(project)})",
        'if [ -n "$ours" ]; then docker rm -f $ours >/dev/null; fi',
    ]
    lines += [f"docker start {shlex.quote(cid)} >/dev/null  # {running[cid].name}"
              for cid in ids]
    lines.append(f'echo "compose project {project}: {len(ids)} container(s) started"')
    return "\n".join(lines) + "\n"


def sequence_text(desired: Desired, found: list[ComposeContainer], *,
                  backed_up: list[str]) -> str:
    """The whole migration as text (`--dry-run`)."""
    lines = [f'Migration of compose project "{desired.project}" ({len(found)} container(s), '
             f"{sum(c.running for c in found)} running)", "", "1. Backups (before anything "
             "stops)"]
    lines += [f"   * {b}" for b in backed_up] or ["   (nothing to back up)"]
    n = 2
    for tier in desired.tiers:
        lines += ["", f"{n}. Tier {tier}"]
        n += 1
        for m in moves(desired, found):
            if m.tier != tier:
                continue
            names = ", ".join(c.name for c in m.compose) or "no compose container"
            if desired.services[m.service].service.job and not m.compose:
                lines.append(f"   {m.service}: run once to completion (job; what waits on it "
                             "starts after exit 0)")
            elif m.service == desired.edge_holder and m.compose:
                lines.append(f"   {m.service}: start ours with no network; stop {names}; the "
                             "moment it exited, connect ours to its networks, which binds the "
                             f"published ports ({m.why})")
            elif m.stop_first and not m.compose and desired.services[m.service].joins:
                lines.append(f"   {m.service}: start ours in "
                             f"{desired.services[m.service].joins}'s network namespace before "
                             "the hand-over (it listens when the ports are bound), "
                             "health-gated")
            elif m.stop_first:
                lines.append(f"   {m.service}: stop {names}, then start ours, health-gated "
                             f"({m.why})")
            else:
                lines.append(f"   {m.service}: start ours, health-gated ({m.why}); "
                             f"{names} stops once the edge moved")
    later = [c.name for m in moves(desired, found) if not m.stop_first for c in m.compose]
    lines += ["", f"{n}. After the edge moved, stop: " + (", ".join(
        later + [c.name for c in leftovers(desired, found)]) or "nothing")]
    lines += ["", "Compose's containers are stopped, never removed; volumes are kept. "
                  "`reconciler migrate --rollback` brings compose back."]
    return "\n".join(lines) + "\n"


def backup_plan(desired: Desired, found: list[ComposeContainer]) -> list[
        tuple[DesiredService, Backup, ComposeContainer | None]]:
    """What to back up: the `backup` hook where defined, else a copy of the named volumes."""
    out: list[tuple[DesiredService, Backup, ComposeContainer | None]] = []
    for svc in sorted(desired.services.values(), key=lambda s: s.name):
        source = next((c for c in found if c.service == svc.name and c.running), None)
        spec = svc.service.backup
        if spec is None and backups.named_volumes(svc):
            spec = Backup(volumes=True)
        if spec is None or (spec.command is not None and source is None):
            continue
        out.append((svc, spec, source))
    return out


EDGE_STOP_S = 1.0  # compose's edge: SIGQUIT lets in-flight requests finish, for this long
PORT_POLL_S = 0.01  # how often the hand-over polls the published port
PORT_WAIT_S = 15.0  # ... and for how long at most
WARM_POLL_S = 0.1  # how often the edge, started before the hand-over, is health-checked
WARM_SETTLE_S = 0.5  # an edge without a health check: still running after this long


def published(svc: DesiredService) -> list[tuple[str, int]]:
    """(address to poll, host port) of each fixed TCP host port the service publishes: the
    host itself for a wildcard binding (`80:80` -> 127.0.0.1:80)."""
    out = []
    for entry in svc.service.ports:
        try:
            port = parse_port(entry)
        except ValueError:
            continue
        if port.protocol == "tcp" and port.host_port.isdigit():
            ip = port.host_ip.strip("[]")
            out.append((ip if ip not in ("", "0.0.0.0", "::") else "127.0.0.1",
                        int(port.host_port)))
    return out


async def answers(host: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """True when an HTTP request to host:port gets an HTTP status line back (any status): a
    TCP accept alone is not enough (Docker's proxy accepts before the app listens)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"HEAD / HTTP/1.0\r\nHost: reconciler-migrate\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(5), timeout_s)
        return head == b"HTTP/"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@runtime_checkable
class _Rewiring(Protocol):
    """A runtime that can detach a container from a network (Docker's)."""

    async def disconnect_network(self, container_id: str, network: str) -> None: ...


@dataclass
class _Held:
    """A port-owning container of ours (the edge's holder), started with no network: Docker
    binds its published ports when it is connected to its first network. Started before
    compose's container stops, so the hand-over is one network connect, not a start."""

    cid: str
    endpoints: list[tuple[str, list[str]]]  # (network, aliases) in connect order
    connected: int = 0  # how many of them are connected


class _Migrating(Executor):
    """The executor with compose's containers stopped around each tier (see module doc).

    A stop-first service (a database on its volume, the edge's holder on its fixed ports) has
    ours created (image present, config staged) before compose's stops; right after the stop
    ours starts, here, without the executor's steps in between, and a service that publishes
    a host port is polled until the port answers HTTP again: that gap is the hand-over,
    printed with its timeline. The executor then adopts the containers by their labels and
    gates them on health as usual.

    The edge's hand-over (`_hand_over`): its holder is created, detached from its networks
    that are not internal and started before compose's edge stops (running, but no port
    bound: Docker binds published ports when a container joins its first such network); our
    edge is created and started in the holder's namespace and passes its own health check
    by exec there (`_warm`). Compose's edge gets its stop signal (SIGQUIT for nginx;
    `EDGE_STOP_S` to finish in-flight requests); the moment it exits (its `die` event:
    Docker has released the port by then) the holder is connected to its networks, which
    binds the ports to an edge that already listens. The gap is compose's edge exiting plus
    one network connect. Starting the holder and the edge only after the stop costs two
    container starts in the gap, and Docker's proxy listens on the port before the new
    namespace is wired: a client connecting in between waits for an ARP retry (1 s).
    Fallbacks: an edge that does not come up before the hand-over (a config that needs DNS
    at start) starts right after the connect; a refused connect (the port not yet released)
    restarts the holder once the stop returned and connects again; a runtime that cannot
    detach networks gets the plain order (stop, start holder, start edge).
    """

    def __init__(self, *args: Any, tier_moves: list[Move], stop: Callable[[ComposeContainer,
                                                                            float], Any],
                 say: Callable[[str], None] = print, **kw: Any):
        super().__init__(*args, **kw)
        self.tier_moves = tier_moves
        self.stop_compose = stop
        self.say = say
        self.handovers: dict[str, float] = {}  # service -> seconds its port did not answer

    async def _tier(self, steps: list[Step], desired: Desired,
                    outcome: ExecutionReport) -> None:
        tier = steps[0].tier
        first = {m.service for m in self.tier_moves if m.tier == tier and m.stop_first}
        handing = {m.service for m in self.tier_moves
                   if m.service in first and m.compose
                   and published(desired.services[m.service])}
        created: dict[str, list[str]] = {}
        held: dict[str, _Held] = {}
        # create ours before compose's stops (creating binds no port and runs nothing); a
        # service joining another's network namespace (the edge in its holder's) is created
        # in the namespace of that one's new container, so both start right after the stop
        for step in sorted(steps, key=lambda s: s.service in desired.services
                           and desired.services[s.service].joins is not None):
            svc = desired.services.get(step.service)
            if svc is None or step.service not in first or step.action is not Action.CREATE \
                    or not step.new_name:
                continue
            joins = created.get(svc.joins, [None])[0] if svc.joins is not None else None
            if svc.joins is not None and joins is None:
                continue  # the one it joins was not created here: the executor does both
            made = await self._precreate(step, svc, desired, joins=joins)
            if made is None:
                continue
            cid, body = made
            outside = (self._holdable(body, desired) if step.service in handing
                       and svc.joins is None and step.service not in held else [])
            if outside:
                holding = await self._hold(cid, body, outside)
                if holding is None:
                    continue  # removed again: the executor creates it after the stop
                held[step.service] = holding
            created.setdefault(step.service, []).append(cid)
        # what joins a held container starts now, in its namespace without a network, and is
        # health-checked by exec: at the hand-over it already listens (an edge whose config
        # needs DNS to start exits here and starts after the hand-over instead)
        warm: set[str] = set()
        for name, cids in created.items():
            joined = desired.services[name].joins
            if joined in held and len(cids) == 1 and await self._warm(
                    cids[0], desired.services[name].service.update.deadline):
                warm.add(name)
        for m in self.tier_moves:
            if m.service not in first:
                continue
            svc = desired.services[m.service]
            ports = published(svc)
            grace = (EDGE_STOP_S if ports and not backups.named_volumes(svc)
                     else svc.service.stop_grace_period)
            joining = [s.name for s in desired.in_tier(tier) if s.joins == m.service]
            began = time.monotonic()
            marks: list[tuple[str, float]] = []
            stops: asyncio.Task[None] | None = None
            ours = m.service in held or bool(created.get(m.service))
            if m.service in held:
                stops, restarted = await self._hand_over(m, held[m.service], grace,
                                                         desired.project, marks)
                if stops is None:  # could not connect it: the executor creates them all
                    for cid in [c for name in joining for c in created.pop(name, [])]:
                        with contextlib.suppress(EngineError):
                            await self.rt.remove_container(cid)
                    ours = False
                created.pop(m.service, None)
                if restarted:  # a new namespace: what joined the old one joins it again
                    for name in joining:
                        warm.discard(name)
                        for cid in created.get(name, []):
                            with contextlib.suppress(EngineError):
                                await self.rt.stop_container(cid, timeout_s=0)
            else:
                for c in m.compose:
                    await self.stop_compose(c, grace)
                marks.append(("compose's stopped", time.monotonic()))
            for name in (m.service, *joining):
                for cid in created.pop(name, []):
                    if name in warm:
                        continue  # already serving in the namespace
                    with contextlib.suppress(EngineError):  # the executor's start reports it
                        await self.rt.start_container(cid)
                    marks.append((f"{name} started", time.monotonic()))
            if ports and m.compose and ours:  # else the executor starts ours, gated as usual
                await self._port_back(m.compose[0].service, ports, began, marks)
            if stops is not None:  # the stop calls return a little after the exit
                await stops
        await super()._tier(steps, desired, outcome)

    async def _warm(self, cid: str, limit_s: float) -> bool:
        """Start a container in a held namespace; True once it runs and its own health check
        passes by exec (without one: still running after WARM_SETTLE_S). False (stopped
        again) when it exits or does not pass within `limit_s`."""
        end = time.monotonic() + limit_s
        try:
            await self.rt.start_container(cid)
            while time.monotonic() < end:
                info = await self.rt.inspect_container(cid)
                state = info.get("State") or {}
                if not state.get("Running") or state.get("Restarting"):
                    break
                command = health_command(info)
                if command is None:
                    await asyncio.sleep(WARM_SETTLE_S)
                    info = await self.rt.inspect_container(cid)
                    if (info.get("State") or {}).get("Running"):
                        return True
                    break
                if await self._exec_probe(cid, *command):
                    return True
                await asyncio.sleep(WARM_POLL_S)
        except EngineError:
            pass
        with contextlib.suppress(EngineError):
            await self.rt.stop_container(cid, timeout_s=0)
        return False

    async def _precreate(self, step: Step, svc: DesiredService, desired: Desired, *,
                         joins: str | None) -> tuple[str, JSON] | None:
        """Create the step's container (config staged, files written) as the executor would;
        the executor adopts it by its labels. None when anything fails: the executor's own
        step then does it and reports why."""
        assert step.new_name is not None
        try:
            if svc.staged and self.edge is not None:
                await self.edge.stage(desired, svc)
            if svc.files and self.files is not None:
                self.files.materialise(svc)  # its read-only binds must exist
            body = container_config(svc, step.replica or 1)
            if joins is not None:
                body["HostConfig"] = {**body["HostConfig"], "NetworkMode": f"container:{joins}"}
            return await self.rt.create_container(step.new_name, body), body
        except (EngineError, OSError, ValueError, StepFailed):
            return None

    def _holdable(self, body: JSON, desired: Desired) -> list[str]:
        """The networks to detach a new port owner from before the hand-over: those not
        internal (an internal network binds no published port). Empty (the plain order)
        when the runtime cannot detach, or an endpoint needs more than aliases."""
        endpoints = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        if not isinstance(self.rt, _Rewiring) or not all(
                set(e or {}) <= {"Aliases"} for e in endpoints.values()):
            return []
        return [net for net in endpoints
                if net not in desired.networks or not desired.networks[net].internal]

    async def _hold(self, cid: str, body: JSON, outside: list[str]) -> _Held | None:
        """Detach the new port owner from `outside` and start it: running, no port bound.
        None (the container removed again: the executor creates it after the stop) when
        the engine refuses."""
        endpoints = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        assert isinstance(self.rt, _Rewiring)
        try:
            for net in outside:
                await self.rt.disconnect_network(cid, net)
            await self.rt.start_container(cid)
            return _Held(cid, [(net, list((endpoints[net] or {}).get("Aliases") or ()))
                               for net in outside])
        except EngineError:
            with contextlib.suppress(EngineError):
                await self.rt.remove_container(cid)
            return None

    async def _connect(self, held: _Held) -> bool:
        """Connect the held container to the networks it is not on yet; False on a refusal
        (the port still bound by compose's container)."""
        try:
            for net, aliases in held.endpoints[held.connected:]:
                await self.rt.connect_network(held.cid, net, aliases=aliases)
                held.connected += 1
        except EngineError:
            return False
        return True

    async def _hand_over(self, m: Move, held: _Held, grace: float, project: str,
                         marks: list[tuple[str, float]]
                         ) -> tuple[asyncio.Task[None] | None, bool]:
        """Stop compose's containers of the move and connect the held one the moment they
        exited (their `die` events; the stop calls' return, without an event stream).
        Returns the task of the stops (still finishing; None when the held container could
        not be connected: then removed, the executor creates it) and whether the held
        container was restarted (a new network namespace)."""
        ids = {c.id for c in m.compose}
        exited: set[str] = set()
        gone = asyncio.Event()
        stream = self.rt.events(label=f"{COMPOSE_PROJECT}={project}")
        try:
            await stream.connect()
        except EngineError:
            gone.set()  # no events: the stops' return says it

        async def watch() -> bool:
            with contextlib.suppress(EngineError):
                async for ev in stream:
                    if ev.action == "die" and ev.container_id in ids:
                        exited.add(ev.container_id)
                        if exited >= ids:
                            return True
            return False  # the stream ended: the stops' return says it

        async def stop_all() -> None:
            for c in m.compose:
                await self.stop_compose(c, grace)

        marks.append(("stop sent", time.monotonic()))
        stops = asyncio.create_task(stop_all())
        watcher = asyncio.create_task(watch()) if not gone.is_set() else None
        try:
            await asyncio.wait([t for t in (stops, watcher) if t is not None],
                               return_when=asyncio.FIRST_COMPLETED)
            if watcher is not None and watcher.done() and not watcher.result():
                await stops
            if stops.done():
                stops.result()  # a failed stop fails the migration, as before
            marks.append(("compose's exited", time.monotonic()))
            restarted = False
            if not await self._connect(held):
                restarted = True
                # refused (the port not yet released): the engine leaves that network's
                # interface in the namespace, so restart the holder (a fresh namespace with
                # the networks connected so far) once the stops returned, and connect again
                await stops
                with contextlib.suppress(EngineError):
                    await self.rt.stop_container(held.cid, timeout_s=0)
                    await self.rt.start_container(held.cid)
                if not await self._connect(held):
                    with contextlib.suppress(EngineError):
                        await self.rt.remove_container(held.cid)
                    self.say(f"hand-over {m.service}: could not connect it to its networks; "
                             "the executor creates it")
                    return None, True
            marks.append((f"{m.service} connected (ports bound)", time.monotonic()))
        finally:
            if watcher is not None:
                watcher.cancel()
            with contextlib.suppress(Exception):
                await stream.aclose()
        return stops, restarted

    async def _port_back(self, service: str, ports: list[tuple[str, int]],
                         began: float, marks: list[tuple[str, float]]) -> None:
        """Poll the service's published ports (every PORT_POLL_S, at most PORT_WAIT_S) until
        each answers; record and print the gap since compose's container was told to stop,
        with the timeline."""
        deadline = began + PORT_WAIT_S
        for host, port in ports:
            while not await answers(host, port) and time.monotonic() < deadline:
                await asyncio.sleep(PORT_POLL_S)
        gap = time.monotonic() - began
        self.handovers[service] = gap
        where = ", ".join(f"{h}:{p}" for h, p in ports)
        steps = ", ".join(f"{what} +{(t - began) * 1000:.0f}" for what, t in marks)
        self.say(f"hand-over {service}: {where} answered {gap * 1000:.0f} ms after compose's "
                 f"container was told to stop ({steps} ms)"
                 + ("" if time.monotonic() < deadline else
                    " (gave up polling: the health gate decides)"))


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("migrate", help="take over a running docker compose project")
    common(p, suppress=True)
    p.add_argument("--compose-project", metavar="NAME", required=True)
    p.add_argument("--dry-run", action="store_true", default=False,
                   help="show the whole sequence, change nothing")
    p.add_argument("--rollback", action="store_true",
                   help="run the last migration's restore.sh: compose back, ours removed")


def rollback(state_root: Path, project: str) -> int:
    base = state_root / "migrations"
    runs = sorted(base.glob(f"{project}-*")) if base.is_dir() else []
    if not runs:
        print(f"reconciler: no migration of {project} recorded in {base}", file=sys.stderr)
        return EXIT_FAILED
    script = runs[-1] / "restore.sh"
    res = subprocess.run(["sh", str(script)], check=False)
    return EXIT_OK if res.returncode == 0 else EXIT_FAILED


async def cmd_migrate(args: argparse.Namespace, *, state: State, runtime: Runtime,
                      spec_dir: Path, report: Any, policy: Any) -> int:
    from reconciler.reconcile import Reconciler

    name = args.compose_project
    raw = await runtime.list_containers(label=f"{COMPOSE_PROJECT}={name}")
    found = compose_containers(raw, name)
    rec = Reconciler(spec_dir=spec_dir, state=state, runtime=runtime,
                     profiles=tuple(args.profile), policy=policy, report=report)
    loaded = rec.load_candidate()
    if loaded.spec.project != name:
        print(f"reconciler: the spec's project is {loaded.spec.project!r}, the compose project "
              f"{name!r}: import with the same name so volumes and networks are reused",
              file=sys.stderr)
        return EXIT_FAILED
    if not any(c.running for c in found):
        print(f"reconciler: no running container of compose project {name!r}", file=sys.stderr)
        return EXIT_FAILED
    key = state.key(create=True)
    assert key is not None
    desired = build(loaded, key, edge_dir=str(edge_dir(state.root, name))
                    if loaded.spec.edge else None, edge_holder=True)
    todo = backup_plan(desired, found)
    shown = [f"{svc.name}: {'hook ' + ' '.join(spec.command) if spec.command else 'volume copy'}"
             + (f" in {src.name}" if src and spec.command else "") for svc, spec, src in todo]
    if args.dry_run:
        print(sequence_text(desired, found, backed_up=shown), end="")
        return EXIT_OK
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    directory = state.root / "migrations" / f"{name}-{stamp}"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    order = [c.id for m in moves(desired, found) for c in m.compose]
    atomic_write(directory / "restore.sh", restore_script(name, found, order).encode(),
                 mode=0o700)
    atomic_write(directory / "containers.json", json.dumps(
        [{"id": c.id, "name": c.name, "service": c.service, "running": c.running}
         for c in found], indent=1).encode())
    print(f"restore script: {directory / 'restore.sh'}")
    store = BackupStore(state.root, runtime)
    for (svc, spec, src), text in zip(todo, shown, strict=True):
        started = time.monotonic()
        try:
            entry = await store.backup(svc, source=src.id if src else None, spec=spec)
        except BackupError as exc:
            print(f"reconciler: {exc}: nothing was stopped", file=sys.stderr)
            return EXIT_FAILED
        print(f"backup {text}: {entry.file} ({entry.size} bytes, "
              f"{time.monotonic() - started:.1f}s)")
    stopped: list[str] = []

    async def stop(c: ComposeContainer, grace: float = 10.0) -> None:
        began = time.monotonic()
        await runtime.stop_container(c.id, timeout_s=grace)
        stopped.append(c.name)
        print(f"stopped compose container {c.name} ({time.monotonic() - began:.1f}s) at "
              f"{time.strftime('%H:%M:%S', time.gmtime())}", flush=True)

    tier_moves = moves(desired, found)
    rec.executor = _Migrating(runtime, report=report, backups=store, tier_moves=tier_moves,
                              stop=stop, say=lambda line: print(line, flush=True),
                              files=rec.files)
    res = await rec.reconcile()
    if res.ok:
        # start-first services' compose containers kept serving compose's edge until ours
        # took over (the edge moves last): stop them now, then what the spec does not have
        for c in [c for m in tier_moves if not m.stop_first for c in m.compose]:
            await stop(c)
    if not res.ok:
        print(f"Migration FAILED: {res.message}\nRun `reconciler migrate --compose-project "
              f"{name} --rollback` to bring compose back.", file=sys.stderr)
        return EXIT_FAILED
    for c in leftovers(desired, found):
        try:
            await stop(c)
        except EngineError as exc:
            print(f"reconciler: stop {c.name}: {exc}", file=sys.stderr)
    print(f"Migrated compose project {name}: {len(stopped)} compose container(s) stopped "
          f"(kept for `reconciler migrate --compose-project {name} --rollback`).")
    os.sync()
    return EXIT_OK
