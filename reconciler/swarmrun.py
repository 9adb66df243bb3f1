"""`reconciler run --engine swarm`: the one-host controller loop with Swarm's triggers.

Triggers besides the spec, git and the resync timer: Swarm's service and node events (a
service removed or scaled by hand, a node going down, drained or coming back) and a
change of the set of running tasks (Swarm reports no task events: a short poll of the
task list, which also keeps the edge's upstreams on the tasks that run now). The pass
itself is `swarmexec.SwarmReconciler`; this module only sequences and exports metrics.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from reconciler.controller import Controller
from reconciler.core.snapshots import Snapshot
from reconciler.core.swarm import SwarmSnapshot
from reconciler.dockerd import DockerRuntime
from reconciler.reconcile import PassResult
from reconciler.runtimes import EngineError
from reconciler.swarmexec import SwarmReconciler, observe, task_containers


def task_signature(snapshot: SwarmSnapshot) -> frozenset[tuple[str, str, str, str]]:
    """What the task poll compares: (task, node, state, desired state) of every task."""
    return frozenset((t.id, t.node_id, t.state, t.desired_state) for t in snapshot.tasks)


def task_counts(snapshot: SwarmSnapshot) -> dict[tuple[str, str, str], int]:
    """(service, node, state) -> how many tasks Swarm wants running are in that state."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for t in snapshot.tasks:
        if t.desired_state != "running":
            continue  # history Swarm keeps (up to 5 old tasks per slot)
        state = ("running" if t.state == "running" else "failed"
                 if t.state in ("failed", "rejected") else "lost" if t.state == "lost"
                 else "starting")
        counts[(t.service, t.node or "-", state)] += 1
    return dict(counts)


class _ClusterEvents:
    """What the base loop's event follower calls: Swarm's service and node events."""

    def __init__(self, docker: DockerRuntime) -> None:
        self.docker = docker

    def events(self, *, label: str) -> Any:
        del label  # Swarm's events carry no labels of ours
        return self.docker.cluster_events()


class SwarmController(Controller):
    """The controller loop on a Swarm cluster (see the module docstring)."""

    def __init__(self, reconciler: SwarmReconciler, *, docker: DockerRuntime,
                 task_poll_s: float = 2.0, swarm_metrics: Any = None, **kwargs: Any) -> None:
        super().__init__(reconciler, **kwargs)
        self.swarm_rec = reconciler
        self.events_source = _ClusterEvents(docker)
        self.task_poll_s = task_poll_s
        self.swarm_metrics = swarm_metrics
        self._signature: frozenset[tuple[str, str, str, str]] | None = None

    async def run(self) -> None:
        self.rt = self.events_source  # type: ignore[assignment]
        poll = asyncio.create_task(self._poll_tasks(), name="swarm-tasks")
        try:
            await super().run()
        finally:
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)

    async def _read_events(self, stream: Any) -> None:
        try:
            await stream.connect()
            self.trigger("events-connected")
            async for _event in stream:  # any service or node change: one (coalesced) pass
                self.trigger("engine-event")
        except EngineError as exc:
            self.log.warning("event stream error", error=str(exc))

    async def _poll_tasks(self) -> None:
        while True:
            await self.sleep(self.task_poll_s)
            desired = self.rec.last_desired
            if desired is None or self.pass_started is not None:
                continue
            try:
                snap = await observe(self.swarm_rec.api, desired.project)
            except EngineError as exc:
                self.log.warning("task poll failed", error=str(exc))
                continue
            signature = task_signature(snap)
            if self._signature is not None and signature != self._signature:
                self.trigger("engine-event")
            self._signature = signature
            self._export_swarm(snap)

    def _export_swarm(self, snap: SwarmSnapshot) -> None:
        if self.swarm_metrics is None:
            return
        self.swarm_metrics.tasks(task_counts(snap))
        self.swarm_metrics.nodes((n.hostname, n.role, n.state, n.availability)
                                 for n in snap.nodes)

    async def _export(self, res: PassResult, kinds: list[str]) -> None:
        desired = self.rec.last_desired
        if desired is not None:
            try:
                snap = await observe(self.swarm_rec.api, desired.project)
            except EngineError:
                snap = None
            if snap is not None:
                self._export_swarm(snap)
                self.rec.last_snapshot = Snapshot(project=desired.project,
                                                  containers=tuple(task_containers(
                                                      snap, stopping=False)))
        await super()._export(res, kinds)
