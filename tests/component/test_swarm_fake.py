"""The Swarm engine's pass on a fake cluster: tier gates on Swarm's rollout, a failed update
(paused by Swarm, crash loop, deadline) reverts the whole cluster to last-good through the
same quarantine as on one host, drift (a service removed or scaled by hand) is repaired.
The fake schedules tasks itself: an image in `bad` never gets healthy (its update pauses),
one in `crash` fails its tasks; `slow` takes `slow_s` to start. Nothing really sleeps."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from reconciler.core import labels
from reconciler.core.swarm import EndpointMode
from reconciler.persistence import State
from reconciler.reconcile import PassStatus
from reconciler.runtimes import JSON, Conflict, NotFound
from reconciler.swarmexec import SwarmReconciler
from tests.component.fakes import FakeRuntime
from tests.specfactory import write_spec

SPEC = """
project: sw
defaults:
  healthcheck: {test: ["CMD", "true"], interval: 1s}
  update: {min_ready: 2s, deadline: 30s}
networks: {backend: {}}
services:
  db: {tier: infrastructure, image: "db:1", networks: [backend], update: {order: stop-first}}
  api:
    tier: business
    image: "api:1"
    replicas: 2
    networks: [backend]
    depends_on: [db]
"""


class FakeSwarm:
    """An in-memory Swarm manager: services, tasks (scheduled on two nodes at each list),
    networks; failures by image."""

    def __init__(self) -> None:
        self.now = 0.0
        self.services: dict[str, JSON] = {}
        self.tasks: list[JSON] = []
        self.networks: dict[str, JSON] = {}
        self.bad: set[str] = set()
        self.crash: set[str] = set()
        self.flaky: set[str] = set()  # runs at 1 s, stops running at 1.5 s
        self.started: dict[str, float] = {}  # service id -> when its spec last changed
        self.updates = 0
        self._ids = itertools.count(1)
        self.nodes = [{"ID": f"n{i}", "Description": {"Hostname": f"node-{i}"},
                       "Spec": {"Role": "manager" if i == 1 else "worker",
                                "Availability": "active"}, "Status": {"State": "ready"}}
                      for i in (1, 2)]

    # the SwarmApi protocol
    async def list_services(self, *, label: str) -> list[JSON]:
        key, _, value = label.partition("=")
        self._schedule()
        return [s for s in self.services.values() if s["Spec"]["Labels"].get(key) == value]

    async def list_tasks(self, *, service_ids: list[str]) -> list[JSON]:
        return [t for t in self.tasks if t["ServiceID"] in service_ids]

    async def list_nodes(self) -> list[JSON]:
        return list(self.nodes)

    async def list_networks(self, *, label: str) -> list[JSON]:
        key, _, value = label.partition("=")
        return [n for n in self.networks.values() if n["Labels"].get(key) == value]

    async def inspect_service(self, service_id: str) -> JSON:
        for s in self.services.values():
            if service_id in (s["ID"], s["Spec"]["Name"]):
                return s
        raise NotFound(service_id)

    async def create_service(self, spec: JSON) -> str:
        if any(s["Spec"]["Name"] == spec["Name"] for s in self.services.values()):
            raise Conflict(spec["Name"])
        sid = f"s{next(self._ids)}"
        self.services[sid] = {"ID": sid, "Version": {"Index": 1}, "Spec": spec}
        self.started[sid] = self.now
        return sid

    async def update_service(self, service_id: str, *, version: int, spec: JSON) -> None:
        svc = self.services[service_id]
        assert svc["Version"]["Index"] == version
        svc["Version"]["Index"] += 1
        svc["PreviousSpec"], svc["Spec"] = svc["Spec"], spec
        svc["UpdateStatus"] = {"State": "updating"}
        self.started[service_id] = self.now
        self.updates += 1

    async def remove_service(self, service_id: str) -> None:
        self.services.pop(service_id, None)
        self.tasks = [t for t in self.tasks if t["ServiceID"] != service_id]

    async def create_overlay_network(self, spec: JSON) -> None:
        self.networks[spec["Name"]] = spec

    # the scheduler: converges tasks to each service's spec (1 s to start a task)
    def _schedule(self) -> None:
        for sid, svc in self.services.items():
            spec = svc["Spec"]
            cspec = spec["TaskTemplate"]["ContainerSpec"]
            fp, image = cspec["Labels"][labels.FINGERPRINT], cspec["Image"]
            want = spec["Mode"]["Replicated"]["Replicas"]
            age = self.now - self.started[sid]
            mine = [t for t in self.tasks if t["ServiceID"] == sid]
            for t in mine:
                t["DesiredState"] = "shutdown"
            self.tasks = [t for t in self.tasks if t["ServiceID"] != sid]
            if image in self.bad:  # never healthy: Swarm pauses the update
                state = "starting"
                if age >= 3 and "UpdateStatus" in svc:
                    svc["UpdateStatus"] = {"State": "paused", "Message": "update paused due "
                                           "to failure or early termination of task x"}
                old = svc.get("PreviousSpec", spec)["TaskTemplate"]["ContainerSpec"]["Labels"]
                self.tasks += [self._task(sid, i, old[labels.FINGERPRINT], "running")
                               for i in range(1, want + 1) if "PreviousSpec" in svc]
            elif image in self.crash:
                self.tasks += [self._task(sid, i, fp, "failed", n)
                               for i in range(1, want + 1) for n in range(int(age) + 1)]
                continue
            elif image in self.flaky:
                state = "running" if 1 <= age < 1.5 else "starting"
            else:
                state = "running" if age >= 1 else "starting"
                if state == "running" and "UpdateStatus" in svc:
                    svc["UpdateStatus"] = {"State": "completed"}
            self.tasks += [self._task(sid, i, fp, state) for i in range(1, want + 1)]

    def _task(self, sid: str, slot: int, fp: str, state: str, n: int = 0) -> JSON:
        return {"ID": f"{sid}-{slot}-{fp[:4]}-{state}-{n}", "ServiceID": sid, "Slot": slot,
                "NodeID": f"n{1 + slot % 2}", "DesiredState": "running",
                "Spec": {"ContainerSpec": {"Labels": {labels.FINGERPRINT: fp}}},
                "Status": {"State": state, "Timestamp": f"{self.now:012.3f}{n}",
                           "Err": "exit status 1" if state == "failed" else ""}}

    def service(self, name: str) -> JSON:
        return next(s for s in self.services.values() if s["Spec"]["Labels"].get(
            labels.SERVICE) == name)


def make(tmp_path: Path, cluster: FakeSwarm, text: str = SPEC) -> SwarmReconciler:
    spec = write_spec(tmp_path / "spec", text)

    async def sleep(seconds: float) -> None:
        cluster.now += seconds
        await asyncio.sleep(0)

    return SwarmReconciler(api=cluster, runtime=FakeRuntime(), mode=EndpointMode.DNSRR,
                           spec_dir=spec, state=State(tmp_path / "state"),
                           clock=lambda: cluster.now, wall=lambda: 1e9 + cluster.now,
                           sleep=sleep)


def image_of(cluster: FakeSwarm, name: str) -> Any:
    return cluster.service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]


@pytest.fixture
def cluster() -> FakeSwarm:
    return FakeSwarm()


async def test_cold_start_gates_each_tier_on_swarm_and_a_second_pass_is_a_noop(
        tmp_path: Path, cluster: FakeSwarm) -> None:
    rec = make(tmp_path, cluster)
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    assert res.outcome is not None
    # a cold tier passes once its tasks run (1 s); its min_ready (2 s) is held in the
    # background while the next tier starts, and the pass waits for it
    assert 1.0 <= res.outcome.tier_seconds["infrastructure"] < 3.0
    assert res.seconds >= res.outcome.tier_seconds["infrastructure"] + 3.0
    assert set(cluster.networks) == {"sw_backend"}
    assert cluster.networks["sw_backend"]["Driver"] == "overlay"
    assert cluster.networks["sw_backend"]["Attachable"] is True
    again = await rec.reconcile()
    assert again.result is PassStatus.NOOP and cluster.updates == 0


@pytest.mark.parametrize(("behaviour", "kind"), [("bad", "paused"), ("crash", "failed")])
async def test_a_failed_update_reverts_the_cluster_and_quarantines(
        tmp_path: Path, cluster: FakeSwarm, behaviour: str, kind: str) -> None:
    rec = make(tmp_path, cluster)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    getattr(cluster, behaviour).add("api:2")
    write_spec(tmp_path / "spec", SPEC.replace('"api:1"', '"api:2"').replace(
        '"db:1"', '"db:2"'))
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK, res.message
    assert kind in res.message
    assert res.quarantined
    # the whole cluster is back: db (updated fine in an earlier tier) too
    assert image_of(cluster, "api") == "api:1" and image_of(cluster, "db") == "db:1"
    assert rec.state.quarantined()
    held = await rec.reconcile()
    assert held.held_last_good and image_of(cluster, "api") == "api:1"


async def test_a_rollout_that_never_gets_ready_fails_at_the_deadline(
        tmp_path: Path, cluster: FakeSwarm) -> None:
    text = SPEC.replace("deadline: 30s", "deadline: 5s")
    rec = make(tmp_path, cluster, text)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    cluster.bad.add("api:2")
    write_spec(tmp_path / "spec", text.replace('"api:1"', '"api:2"').replace(
        "deadline: 5s", "deadline: 2s"))
    res = await rec.reconcile()
    assert res.result is PassStatus.ROLLED_BACK
    assert "deadline" in res.message and res.outcome is not None
    assert str(res.outcome.failure_kind) == "deadline"


async def test_drift_a_service_removed_or_scaled_by_hand_is_repaired(
        tmp_path: Path, cluster: FakeSwarm) -> None:
    rec = make(tmp_path, cluster)
    assert (await rec.reconcile()).result is PassStatus.CONVERGED
    await cluster.remove_service(cluster.service("db")["ID"])
    api = cluster.service("api")
    api["Spec"]["Mode"]["Replicated"]["Replicas"] = 5
    res = await rec.reconcile()
    assert res.result is PassStatus.CONVERGED, res.message
    assert res.plan is not None
    assert sorted(s.id for s in res.plan.steps) == ["create db", "scale api"]
    assert cluster.service("api")["Spec"]["Mode"]["Replicated"]["Replicas"] == 2


async def test_a_cold_tier_that_stops_running_within_min_ready_fails_the_pass(
        tmp_path: Path, cluster: FakeSwarm) -> None:
    cluster.flaky.add("db:1")
    rec = make(tmp_path, cluster)
    res = await rec.reconcile()
    assert res.result is PassStatus.FAILED
    assert "min_ready" in res.message and "db" in res.message
