"""The nginx edge: upstream rendering (pure) and safe reloads (through the runtime).

For each service with `expose`, an `upstream <service>` block lists exactly the containers
of that service that are running and healthy (by their address on a network shared with the
edge, so a stale entry can never make `nginx -t` fail on DNS). The file is written
atomically into a host directory the reconciler bind-mounts into the edge container; before
every reload `nginx -t` runs inside the edge container and a failing config is never
reloaded (the step fails, which triggers the normal revert). Reload is SIGHUP: graceful.

Next to the upstreams the same directory gets the stack's health as the reconciler sees it
(`health.json`, and `health-ok.json` while every service has a healthy replica): nginx serves
`/health` from these files, so the edge answers for the whole stack without a proxy hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path

from reconciler import edgeconf
from reconciler.core import nginxconf
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.snapshots import ContainerState, Health, Observed, parse
from reconciler.execute import EdgeHook, FailureKind, StepFailed
from reconciler.faults import crash_point
from reconciler.persistence import StateError, atomic_write
from reconciler.runtimes import EngineError, EngineUnavailable, Runtime

PLACEHOLDER = "server 127.0.0.1:9 down;  # no healthy container"
KEPT = "(kept: no healthy replica)"
EDGE = FailureKind.EDGE_RELOAD
HEADER = "# Rendered by reconciler: do not edit (rewritten on every rollout).\n"


def _address(c: Observed, networks: Iterable[str]) -> str | None:
    for net in networks:
        ip = c.addresses.get(net)
        if ip:
            return ip
    return None


def render_upstreams(
    desired: Desired, containers: Iterable[Observed], *, include: Collection[str] = (),
    exclude: Collection[str] = (), serving: Collection[str] = (),
) -> str:
    """`upstream` blocks for every exposed service. Pure.

    A container is listed when it is running and healthy (or has no healthcheck), belongs to
    the service, is not in `exclude`, and shares a network with the edge; `include` lists
    ids to keep even while their health is still settling.

    `serving`: names of the containers the edge serves now (`served_names` of the current
    file). When none of a service's containers is healthy, the ones still running from
    `serving` stay listed (marked `kept`) instead of the placeholder: a health check that
    flaps on an overloaded host must not turn into an outage made by the edge. A container
    that was never served (a new generation that never got healthy) is never listed this way.
    """
    edge = desired.services.get(desired.edge_service or "")
    if edge is not None and edge.joins is not None:  # its holder's networks are its own
        edge = desired.services.get(edge.joins, edge)
    edge_nets = edge.networks if edge else ()
    by_service: dict[str, list[str]] = {}
    kept: dict[str, list[str]] = {}
    for c in sorted(containers, key=lambda c: (c.service, c.replica or 0, c.name)):
        svc = desired.services.get(c.service)
        if svc is None or svc.service.expose is None or c.id in exclude:
            continue
        shared = [n for n in svc.networks if n in edge_nets] or list(svc.networks)
        address = _address(c, shared)
        if not address:
            continue
        line = f"server {address}:{svc.service.expose.port} max_fails=1 fail_timeout=2s;"
        ready = c.state is ContainerState.RUNNING and c.health in (Health.HEALTHY, Health.NONE)
        if ready or c.id in include:
            by_service.setdefault(c.service, []).append(f"{line}  # {c.name}")
        elif c.state is ContainerState.RUNNING and c.name in serving:
            kept.setdefault(c.service, []).append(f"{line}  # {c.name} {KEPT}")
    out = [HEADER]
    for name, svc in sorted(desired.services.items()):
        if svc.service.expose is None:
            continue
        servers = by_service.get(name) or kept.get(name) or [PLACEHOLDER]
        out.append(f"upstream {name} {{\n" + "".join(f"    {s}\n" for s in servers)
                   + "    keepalive 16;\n}\n")
    out.append(enabled_map(desired))
    return "\n".join(out)


def enabled_map(desired: Desired) -> str:
    """`$edge_service_enabled`: 1 for every service the spec exposes (profiles applied), so
    nginx.conf answers 404 for a path whose service is not enabled instead of failing on a
    missing upstream."""
    names = sorted(n for n, s in desired.services.items() if s.service.expose is not None)
    return ("map $edge_service $edge_service_enabled {\n    default 0;\n"
            + "".join(f"    {n} 1;\n" for n in names) + "}\n")


HEALTH_FILE = "health.json"
HEALTH_OK_FILE = "health-ok.json"


def render_health(desired: Desired, containers: Iterable[Observed]) -> tuple[str, bool]:
    """The stack's health as JSON, and whether the edge answers it with 200. Pure.

    Per tier and service: desired replicas and the running+healthy ones (a container without
    a healthcheck counts once running). `ok`: every service has all its replicas healthy;
    `degraded`: each has at least one; `down`: some service has none (then 503). A job
    (`kind: job`) serves nothing: it is listed with its last run (`done` once a container of
    it exited 0, `running`, `failed`, `not run`) and never changes the status."""
    healthy: dict[str, int] = {}
    runs: dict[str, str] = {}
    for c in containers:
        if c.state is ContainerState.RUNNING and c.health in (Health.HEALTHY, Health.NONE):
            healthy[c.service] = healthy.get(c.service, 0) + 1
        if c.state is ContainerState.RUNNING:
            run = "running"
        elif c.state is ContainerState.EXITED and c.exit_code == 0:
            run = "done"
        else:
            run = "failed"
        if runs.get(c.service) != "done":
            runs[c.service] = run
    tiers = []
    all_full, all_some = True, True
    for tier in desired.tiers:
        services: dict[str, dict[str, int | str]] = {}
        for svc in desired.in_tier(tier):
            if svc.service.job:
                services[svc.name] = {"job": runs.get(svc.name, "not run")}
                continue
            have = healthy.get(svc.name, 0)
            services[svc.name] = {"desired": svc.replicas, "healthy": have}
            all_full &= have >= svc.replicas
            all_some &= have > 0 or svc.replicas == 0
        if services:
            tiers.append({"tier": tier, "services": services})
    status = "ok" if all_full else ("degraded" if all_some else "down")
    doc = {"status": status, "project": desired.project,
           "revision": (desired.revision or desired.spec_fingerprint)[:12], "tiers": tiers}
    return json.dumps(doc, separators=(",", ":")) + "\n", status != "down"


def served_names(text: str) -> set[str]:
    """Names of the containers a rendered file lists (from the `# <name>` comments)."""
    out = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("server ") and "down;" not in line and "  # " in line:
            out.add(line.split("  # ", 1)[1].split()[0])
    return out


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
    """Keeps the edge's upstreams file true and reloads nginx safely.

    One instance serves one executor run. Syncs are serialised (services of a tier cut over
    in parallel), and a container taken out for draining stays out until it is gone, so a
    concurrent sync for another service cannot put it back.
    """

    def __init__(self, runtime: Runtime, directory: Path, *, filename: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 reload_poll_s: float = 0.05, reload_polls: int = 200,
                 conf_dir: Path | None = None) -> None:
        self.rt = runtime
        self.path = directory / filename
        self.conf_dir = conf_dir  # where `applied.json` records reloaded config digests
        self.sleep = sleep
        self.reload_poll_s = reload_poll_s
        self.reload_polls = reload_polls
        self._lock = asyncio.Lock()
        self._retiring: set[str] = set()
        self._vouched: set[str] = set()  # passed their gate; Docker may still say `starting`

    async def _containers(self, desired: Desired) -> list[Observed]:
        from reconciler.core.labels import project_selector

        raw = await self.rt.list_containers(label=project_selector(desired.project))
        return list(parse(desired.project, raw).containers)

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def write_health(self, desired: Desired, containers: Iterable[Observed]) -> None:
        """health.json always, health-ok.json only while the stack serves (see nginx.conf)."""
        text, ok = render_health(desired, containers)
        directory = self.path.parent
        try:
            # nginx's workers (not root) serve these files: the directory must be searchable
            if directory.is_dir() and directory.stat().st_mode & 0o777 != 0o755:
                directory.chmod(0o755)
            for name, wanted in ((HEALTH_FILE, True), (HEALTH_OK_FILE, ok)):
                path = directory / name
                try:
                    current = path.read_text()
                except OSError:
                    current = None
                if wanted and current != text:
                    atomic_write(path, text.encode(), mode=0o644)
                elif not wanted and current is not None:
                    path.unlink()
        except (StateError, OSError):
            return  # the health files are a report: never fail a rollout over them

    def write(self, text: str) -> bool:
        """Write when changed; True when the content changed."""
        if self._read() == text:
            return False
        crash_point("edge-write:before")
        try:
            atomic_write(self.path, text.encode(), mode=0o644)
        except StateError as exc:
            raise StepFailed("edge upstreams", str(exc), kind=EDGE) from None
        crash_point("edge-write:after")
        return True

    async def prepare(self, desired: Desired) -> None:
        """Before a rollout: the file exists, so a (re)created edge starts with it."""
        if not self.path.exists():
            self.write(render_upstreams(desired, await self._containers(desired)))

    async def sync(self, desired: Desired, *, include: Collection[str] = (),
                   exclude: Collection[str] = (),
                   containers: Iterable[Observed] | None = None) -> None:
        """Render, and reload the edge when the file changed. `containers`: a snapshot the
        caller already holds (saves a list call). A config that fails `nginx -t` is never
        reloaded, and the previous file is put back, so the file on disk is always the one
        the running edge serves (and the one a restarted edge would start with)."""
        async with self._lock:
            containers = (list(containers) if containers is not None
                          else await self._containers(desired))
            self.write_health(desired, containers)
            previous = self._read()
            # a container the executor's gate passed (its own exec probe) is served while
            # Docker's first probe is still an interval away; never once Docker says otherwise
            vouched = {c.id for c in containers
                       if c.id in self._vouched and c.health is Health.STARTING}
            text = render_upstreams(desired, containers, include={*include, *vouched},
                                    exclude={*exclude, *self._retiring},
                                    serving=served_names(previous or ""))
            if not self.write(text):
                return
            edges = [c for c in containers if c.service == desired.edge_service
                     and c.state is ContainerState.RUNNING]
            try:
                for edge in edges:
                    await self._reload(edge.id)
            except StepFailed:
                if previous is not None:
                    self.write(previous)
                raise

    async def stage(self, desired: Desired, svc: DesiredService, *,
                    started: str | None = None) -> None:
        """Before the edge container is created (or `started` again): its staged config
        copies hold the spec's files."""
        async with self._lock:
            try:
                edgeconf.stage(svc.staged, fresh=started is None)
                if started is not None and self.conf_dir is not None:
                    edgeconf.record_applied(self.conf_dir, started, svc.config_digest,
                                            alive=await self._edge_ids(desired))
            except StateError as exc:
                raise StepFailed(f"stage {svc.name}", str(exc), kind=EDGE) from None

    async def reload_config(self, desired: Desired, svc: DesiredService, cid: str) -> None:
        """The edge's mounted config changed: stage the new files, `nginx -t`, graceful
        reload (the same path as an upstreams change), record the applied digest. A config
        that fails `nginx -t` is never loaded and the staged copies are put back, so what
        the running edge mounts is again what it serves."""
        async with self._lock:
            try:
                before = edgeconf.stage(svc.staged)
            except StateError as exc:
                raise StepFailed(f"reload {svc.name}", str(exc), kind=EDGE) from None
            try:
                await self._test(cid)
            except StepFailed:
                # never loaded: the copies go back to what the edge serves (the step fails
                # either way; a later pass stages again)
                with contextlib.suppress(StateError):
                    edgeconf.restore(before)
                raise
            # from the signal on, nginx may serve the staged files: they stay (a failure
            # leaves the old digest recorded, so the next pass, forward or revert, reloads)
            await self._signal(cid)
            if self.conf_dir is not None:
                try:
                    edgeconf.record_applied(self.conf_dir, cid, svc.config_digest,
                                            alive=await self._edge_ids(desired))
                except StateError as exc:
                    raise StepFailed(f"reload {svc.name}", str(exc), kind=EDGE) from None

    async def _edge_ids(self, desired: Desired) -> list[str]:
        return [c.id for c in await self._containers(desired)
                if c.service == desired.edge_service]

    async def _reload(self, cid: str) -> None:
        """`nginx -t`, SIGHUP, then wait until the master runs workers with the new config:
        a SIGHUP returns before the new workers exist, and until then the old ones accept
        new requests with the old upstreams."""
        await self._test(cid)
        await self._signal(cid)

    async def _test(self, cid: str) -> None:
        """`nginx -t` in the running edge; a failure is a `StepFailed` with its output."""
        try:
            test = await self.rt.exec_in_container(cid, ["nginx", "-t", "-q"])
        except EngineError as exc:
            raise StepFailed("edge reload", f"nginx -t could not run: {exc}",
                             engine_down=isinstance(exc, EngineUnavailable), kind=EDGE) from None
        if test.exit_code != 0:
            raise StepFailed("edge reload", "nginx -t failed; the running config was kept:\n"
                             + test.output.strip()[-800:], kind=EDGE)

    async def _signal(self, cid: str) -> None:
        """SIGHUP, then wait for workers with the new config (see `_reload`)."""
        before = await self._workers(cid)
        crash_point("edge-reload:before")
        try:
            await self.rt.kill_container(cid, signal="HUP")
        except EngineError as exc:
            raise StepFailed("edge reload", f"reload signal failed: {exc}",
                             engine_down=isinstance(exc, EngineUnavailable), kind=EDGE) from None
        crash_point("edge-reload:after")
        if before is None:  # no `ps` in this image: a short settle instead
            await self.sleep(self.reload_poll_s * 10)
            return
        for _ in range(self.reload_polls):
            now = await self._workers(cid)
            if now is None or (now and not now & before):
                return
            await self.sleep(self.reload_poll_s)
        raise StepFailed("edge reload", "nginx did not start workers with the new config within "
                         f"{self.reload_polls * self.reload_poll_s:.0f}s (see the edge's log)",
                         kind=EDGE)

    async def _workers(self, cid: str) -> set[int] | None:
        """Pids of the edge's nginx workers that accept connections (not shutting down);
        None when they cannot be listed."""
        try:
            res = await self.rt.exec_in_container(cid, ["ps", "-o", "pid,args"])
        except EngineError:
            return None
        if res.exit_code != 0:
            return None
        return worker_pids(res.output)

    async def cutover(self, desired: Desired, svc: DesiredService, *, new_id: str,
                      old_ids: list[str]) -> None:
        """New healthy -> serve new + old -> serve new only -> drain -> (caller stops old).

        The first render lists the old containers only while they are healthy: in a revert
        the "old" ones are the failed new generation, which must never get traffic."""
        await self.sync(desired)
        await self.retire(desired, svc, old_ids=old_ids)

    async def retire(self, desired: Desired, svc: DesiredService, *,
                     old_ids: list[str]) -> None:
        """Take containers out of the upstreams and drain before the caller stops them."""
        self._retiring.update(old_ids)
        await self.sync(desired)
        await self.sleep(svc.service.update.drain)

    def vouch(self, cid: str) -> None:
        self._vouched.add(cid)

    async def after_step(self, desired: Desired, svc: DesiredService) -> None:
        await self.sync(desired)

    async def settle(self, desired: Desired) -> None:
        await self.sync(desired)


def worker_pids(ps_output: str) -> set[int]:
    """Pids of `nginx: worker process` lines in `ps -o pid,args` output (not the ones
    `is shutting down` after a reload)."""
    out = set()
    for line in ps_output.splitlines():
        pid, _, args = line.strip().partition(" ")
        args = args.strip()
        if pid.isdigit() and args.startswith("nginx: worker process") and (
                "shutting down" not in args):
            out.add(int(pid))
    return out


def edge_dir(state_dir: Path, project: str) -> Path:
    return state_dir / "edge" / project


def edge_conf_dir(state_dir: Path, project: str) -> Path:
    """The edge's staged config copies (`mounts/`) and the record of reloads."""
    return edgeconf.conf_dir(state_dir, project)


def edge_log_dir(state_dir: Path, project: str) -> Path:
    """Where the edge writes its JSON access log (mounted at /var/log/nginx/edge)."""
    return state_dir / "edge-log" / project


async def reuse_facts(rt: Runtime, container_ids: Iterable[str]) -> dict[str, str]:
    """What each running edge's whole config (`nginx -T`, everything nginx read, a volume's
    TLS snippet too) says: container id -> "" when every listening socket has `reuseport`,
    else why not (an `nginx -T` that cannot run counts as not proven)."""
    out: dict[str, str] = {}
    for cid in container_ids:
        try:
            res = await rt.exec_in_container(cid, ["nginx", "-T", "-q"])
        except EngineError as exc:
            out[cid] = f"nginx -T could not run: {exc}"
            continue
        if res.exit_code != 0:
            out[cid] = f"nginx -T exited {res.exit_code}"
        else:
            out[cid] = nginxconf.reuseport(nginxconf.dumped_files(res.output),
                                           complete=True).reason
    return out
