"""The Swarm engine's shell: observe the cluster, execute a Swarm plan with tier gates on
Swarm's own rollout, and `SwarmReconciler`, the one-host `Reconciler` with these two swapped
in (so choosing the desired spec, quarantine, revert to last-good and history are the very
same code).

The executor decides nothing: networks first, then tier by tier (the services of a tier in
parallel, same-tier `depends_on` first), each step one Swarm call (create, update, scale)
followed by its gate; services gone from the spec are removed last. A gate passes when
`swarm.gate` says READY continuously for `min_ready`; it fails on FAILED (update paused or
rolled back by Swarm, tasks failing, service gone) or at `deadline`. Time and sleep are
injected: component tests run it on a fake clock against a fake cluster.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from reconciler.core import labels, swarm
from reconciler.core.desired import Desired, DesiredService
from reconciler.core.model import LoadedSpec
from reconciler.core.plans import Action, Plan, Step
from reconciler.core.snapshots import ContainerState, Health, Observed, Snapshot
from reconciler.core.swarm import EndpointMode, SwarmSnapshot
from reconciler.edges import Edge, edge_dir
from reconciler.execute import (
    ExecutionReport,
    FailureKind,
    Progress,
    Reporter,
    StepFailed,
    StepResult,
    engine_failed,
    ignore_progress,
)
from reconciler.reconcile import Reconciler
from reconciler.runtimes import JSON, Conflict, EngineError, Runtime

Sleeper = Callable[[float], Awaitable[None]]


class SwarmApi(Protocol):
    """What the executor asks of a Swarm manager (`swarmd.SwarmRuntime`, or a fake)."""

    async def list_services(self, *, label: str) -> list[JSON]: ...
    async def list_tasks(self, *, service_ids: list[str]) -> list[JSON]: ...
    async def list_nodes(self) -> list[JSON]: ...
    async def list_networks(self, *, label: str) -> list[JSON]: ...
    async def inspect_service(self, service_id: str) -> JSON: ...
    async def create_service(self, spec: JSON) -> str: ...
    async def update_service(self, service_id: str, *, version: int, spec: JSON) -> None: ...
    async def remove_service(self, service_id: str) -> None: ...
    async def create_overlay_network(self, spec: JSON) -> None: ...


async def observe(api: SwarmApi, project: str) -> SwarmSnapshot:
    """Services by our project label, their tasks, the nodes, our networks."""
    selector = labels.project_selector(project)
    services, nodes, networks = await asyncio.gather(
        api.list_services(label=selector), api.list_nodes(), api.list_networks(label=selector))
    ids = [str(s.get("ID")) for s in services]
    tasks = await api.list_tasks(service_ids=ids)
    return swarm.parse(project, services, tasks, nodes, networks)


def task_containers(snapshot: SwarmSnapshot, *, stopping: bool = True) -> list[Observed]:
    """The running tasks as `Observed` containers (running means healthy on Swarm; one that
    Swarm is stopping counts as unhealthy), so the edge's upstream rendering lists task
    addresses exactly as it lists containers. `stopping=False`: only the tasks Swarm wants
    running (for counting)."""
    out = []
    for t in snapshot.tasks:
        if t.state != "running":
            continue
        svc = snapshot.service(t.service)
        # a task Swarm is shutting down still answers: the edge keeps it only while no
        # other task of its service is ready (`render_upstreams`' kept rule), never adds it
        leaving = t.desired_state != "running"
        if leaving and (not stopping or (svc is not None and svc.edge)):
            continue  # an edge on its way out is not reloaded
        name = f"{svc.name if svc else t.service}.{t.slot or t.node_id}.{t.id[:12]}"
        out.append(Observed(
            id=t.container_id or t.id, name=name, service=t.service, tier=svc.tier if svc else "",
            replica=t.slot, fingerprint=t.fingerprint, state=ContainerState.RUNNING,
            health=Health.UNHEALTHY if leaving else Health.HEALTHY, image="",
            edge=bool(svc and svc.edge),
            addresses=dict(t.addresses)))
    return out


class SwarmExecutor:
    def __init__(self, api: SwarmApi, *, mode: EndpointMode,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleeper = asyncio.sleep,
                 report: Reporter = ignore_progress, poll_s: float = 0.5,
                 crash_limit: int = 3) -> None:
        self.api = api
        self.mode = mode
        self.clock = clock
        self.sleep = sleep
        self.report = report
        self.poll_s = poll_s
        self.crash_limit = crash_limit
        self.edge: Edge | None = None
        self._windows: list[asyncio.Task[None]] = []  # min_ready windows in the background

    async def run(self, plan: Plan, desired: Desired, *,
                  edge: Edge | None = None) -> ExecutionReport:
        self.edge = edge
        outcome = ExecutionReport()
        try:
            if edge is not None:
                await edge.prepare(desired)
            for step in plan.objects():
                await self._timed(step, desired, outcome)
            for tier in plan.tiers:
                steps = plan.in_tier(tier)
                if not steps:
                    continue
                await self._windows_passed(wait=False)
                started = self.clock()
                self.report(Progress("tier-start", tier=tier, message=f"{len(steps)} step(s)"))
                await self._tier(steps, desired, outcome)
                outcome.tier_seconds[tier] = self.clock() - started
                self.report(Progress("tier-done", tier=tier, seconds=outcome.tier_seconds[tier]))
            await self._windows_passed(wait=True)
            for step in plan.orphans():
                await self._timed(step, desired, outcome)
            await self.sync_edge(desired)
        except StepFailed as exc:
            for window in self._windows:
                window.cancel()
            await asyncio.gather(*self._windows, return_exceptions=True)
            self._windows = []
            outcome.ok, outcome.failure = False, exc
            outcome.engine_unavailable = exc.engine_down
            self.report(Progress("step-failed", step=exc.step_id, message=exc.message))
        return outcome

    async def _windows_passed(self, *, wait: bool) -> None:
        """Raise the failure of a min_ready window running in the background (`wait`: let
        every window finish first)."""
        if wait and self._windows:
            await asyncio.wait(self._windows)
        for window in [w for w in self._windows if w.done()]:
            self._windows.remove(window)
            window.result()

    async def sync_edge(self, desired: Desired, snapshot: SwarmSnapshot | None = None) -> None:
        """Render the edge's upstreams from the running tasks (reloads when changed)."""
        if self.edge is None:
            return
        try:
            snap = snapshot or await observe(self.api, desired.project)
        except EngineError as exc:
            raise engine_failed("edge upstreams", "engine error", exc) from None
        await self.edge.sync(desired, containers=task_containers(snap))

    async def _tier(self, steps: list[Step], desired: Desired, outcome: ExecutionReport) -> None:
        done = {s.service: asyncio.Event() for s in steps}

        async def one(step: Step) -> None:
            for w in step.after:  # HEALTHY: set at the dependency's first ready observation
                if w.service in done:
                    await done[w.service].wait()
            await self._timed(step, desired, outcome, healthy=done[step.service])
            done[step.service].set()

        try:
            async with asyncio.TaskGroup() as group:
                for step in steps:
                    group.create_task(one(step))
        except BaseExceptionGroup as eg:
            raise _first(eg) from None

    async def _timed(self, step: Step, desired: Desired, outcome: ExecutionReport, *,
                     healthy: asyncio.Event | None = None) -> None:
        started = self.clock()
        self.report(Progress("step-start", tier=step.tier, step=step.id))
        try:
            await self._step(step, desired, outcome, healthy=healthy)
        except StepFailed as exc:
            outcome.results.append(StepResult(step, False, self.clock() - started, exc.message))
            raise
        seconds = self.clock() - started
        outcome.results.append(StepResult(step, True, seconds))
        self.report(Progress("step-done", tier=step.tier, step=step.id, seconds=seconds))

    async def _call(self, step: Step, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except EngineError as exc:
            raise engine_failed(step.id, "engine error", exc) from None

    async def _step(self, step: Step, desired: Desired, outcome: ExecutionReport, *,
                    healthy: asyncio.Event | None = None) -> None:
        if step.action is Action.CREATE_NETWORK:
            net = desired.networks[step.object_name]
            await self._call(step, self.api.create_overlay_network(swarm.network_spec(
                step.object_name, project=desired.project, internal=net.internal)))
            return
        if step.action is Action.REMOVE:
            for old in step.old:
                await self._call(step, self.api.remove_service(old.id))
            return
        svc = desired.services[step.service]
        if step.action is Action.CREATE:
            service_id = await self._create(step, svc)
        else:
            service_id = await self._update(step, svc, step.old[0].id)
        await self._gate(step, svc, service_id, desired, outcome, healthy=healthy)

    async def _create(self, step: Step, svc: DesiredService) -> str:
        spec = swarm.service_spec(svc, mode=self.mode)
        try:
            return str(await self.api.create_service(spec))
        except Conflict:
            pass  # created by an interrupted pass (or by hand): take it over if it is ours
        except EngineError as exc:
            raise engine_failed(step.id, "create service", exc) from None
        return await self._update(step, svc, spec["Name"])

    async def _update(self, step: Step, svc: DesiredService, service_id: str) -> str:
        current = await self._call(step, self.api.inspect_service(service_id))
        mine = (current.get("Spec") or {}).get("Labels") or {}
        if mine.get(labels.PROJECT) != svc.project:
            raise StepFailed(step.id, f"Swarm service {service_id} exists without our labels: "
                             "not touched")
        fp = swarm.swarm_fingerprint(svc, mode=self.mode)
        force = int(((current.get("Spec") or {}).get("TaskTemplate") or {})
                    .get("ForceUpdate") or 0)
        if mine.get(labels.FINGERPRINT) == fp and step.action is not Action.SCALE:
            force += 1  # the same spec again (a paused or rolled-back update): redeploy it
        spec = swarm.service_spec(svc, mode=self.mode, force=force)
        version = int((current.get("Version") or {}).get("Index") or 0)
        await self._call(step, self.api.update_service(str(current.get("ID")),
                                                       version=version, spec=spec))
        return str(current.get("ID"))

    async def _gate(self, step: Step, svc: DesiredService, service_id: str, desired: Desired,
                    outcome: ExecutionReport, *, healthy: asyncio.Event | None = None) -> None:
        u = svc.service.update
        started = self.clock()
        deadline = started + u.deadline
        fp = swarm.swarm_fingerprint(svc, mode=self.mode)
        p = svc.service.placement
        replicas = None if p is not None and p.global_ else svc.replicas
        ready_since: float | None = None
        view = swarm.GateView(swarm.Gate.WAITING)
        while True:
            try:
                snap = await observe(self.api, desired.project)
            except EngineError as exc:
                raise engine_failed(step.id, "engine error", exc) from None
            found = next((s for s in snap.services if s.id == service_id), None)
            view = swarm.gate(found, snap.tasks_of(svc.name), fingerprint=fp, replicas=replicas,
                              crash_limit=self.crash_limit)
            now = self.clock()
            if view.gate is swarm.Gate.FAILED:
                kind = (FailureKind.CRASH_LOOP if view.failed >= self.crash_limit
                        else FailureKind.HEALTH_GATE)
                raise StepFailed(step.id, view.message, kind=kind)
            if self.edge is not None and svc.service.expose is not None:
                await self.edge.sync(desired, containers=task_containers(snap))
            if view.gate is swarm.Gate.READY:
                if ready_since is None:
                    ready_since = now
                    if healthy is not None:
                        healthy.set()
                    if step.window_after and u.min_ready > 0:  # cold tier: hold it later
                        self._windows.append(asyncio.create_task(self._hold(
                            step, svc, service_id, desired, fp=fp, replicas=replicas,
                            since=now)))
                        return
                    outcome.health_waits[svc.name] = max(
                        outcome.health_waits.get(svc.name, 0.0), now - started)
                if now - ready_since >= u.min_ready:
                    return
            else:
                ready_since = None
            if now >= deadline:
                raise StepFailed(step.id, f"not ready within the deadline of {u.deadline:g}s: "
                                 f"{view.running}/{view.wanted} task(s) of the new generation "
                                 f"running ({view.message})", kind=FailureKind.DEADLINE)
            await self.sleep(self.poll_s)


    async def _hold(self, step: Step, svc: DesiredService, service_id: str, desired: Desired,
                    *, fp: str, replicas: int | None, since: float) -> None:
        """The rest of a cold step's min_ready window, in the background: READY must hold
        until `since + min_ready`; anything else fails the run (raised at the next tier)."""
        u = svc.service.update
        while self.clock() - since < u.min_ready:
            await self.sleep(min(self.poll_s, max(u.min_ready - (self.clock() - since), 0.0)))
            try:
                snap = await observe(self.api, desired.project)
            except EngineError as exc:
                raise engine_failed(step.id, "engine error", exc) from None
            found = next((s for s in snap.services if s.id == service_id), None)
            view = swarm.gate(found, snap.tasks_of(svc.name), fingerprint=fp,
                              replicas=replicas, crash_limit=self.crash_limit)
            if view.gate is not swarm.Gate.READY:
                kind = (FailureKind.CRASH_LOOP if view.failed >= self.crash_limit
                        else FailureKind.HEALTH_GATE)
                raise StepFailed(step.id, f"not ready for min_ready ({u.min_ready:g}s): "
                                 f"{view.message or 'a task stopped running'}", kind=kind)


def _first(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, StepFailed):
            return exc
    return eg.exceptions[0]


class SwarmReconciler(Reconciler):
    """The `Reconciler` on a Swarm cluster: the same pass (candidate or last-good,
    quarantine, revert, history); observing, planning and executing are Swarm's."""

    stage_edge_config = False  # a changed nginx.conf rolls the edge service (swarm_fingerprint)
    edge_holder = False  # Swarm publishes the edge's ports itself

    def __init__(self, *, api: SwarmApi, runtime: Runtime, mode: EndpointMode,
                 **kwargs: Any) -> None:
        super().__init__(runtime=runtime, **kwargs)
        self.api = api
        self.mode = mode
        self.swarm_executor = SwarmExecutor(api, mode=mode, clock=self.clock, sleep=self.sleep,
                                            report=self.report,
                                            poll_s=float(os.environ.get(
                                                "RECONCILER_SWARM_POLL", "0.5")))
        self.last_swarm: SwarmSnapshot | None = None

    async def converge(self, loaded: LoadedSpec, *, hold: tuple[str, ...] = (),
                       retry: tuple[str, ...] = (),
                       planner: Callable[[Desired, Snapshot], Plan] | None = None,
                       ) -> tuple[Desired, Plan, ExecutionReport | None]:
        del planner  # restart plans are the docker engine's
        desired = self.desired_for(loaded)
        snapshot = await observe(self.api, desired.project)
        self.last_swarm = snapshot
        plan = swarm.compute(desired, snapshot, mode=self.mode, hold=hold, retry=retry)
        spec = loaded.spec
        edge = None
        if spec.edge is not None:
            edge = Edge(self.rt, edge_dir(self.state.root, spec.project),
                        filename=os.path.basename(spec.edge.upstreams_file), sleep=self.sleep)
        if plan.empty:
            if edge is not None:
                self.swarm_executor.edge = edge
                try:
                    await self.swarm_executor.sync_edge(desired, snapshot)
                except StepFailed as exc:
                    self.report_line(f"edge not updated: {exc}")
            return desired, plan, None
        return desired, plan, await self.swarm_executor.run(plan, desired, edge=edge)

