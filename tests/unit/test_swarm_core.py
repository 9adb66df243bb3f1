"""The Swarm engine's pure part: spec -> ServiceSpec, list JSON -> snapshot, the plan (a
table: observed cluster in, step lines out) and the rollout gate (a table too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core import labels, render, swarm
from reconciler.core.desired import Desired
from reconciler.core.swarm import EndpointMode, Gate, SwarmService, SwarmTask
from tests.specfactory import desired_from, load_text

DNSRR = EndpointMode.DNSRR
SPEC = """
project: sw
networks: {backend: {internal: true}, edge: {}}
volumes: {data: {}}
defaults:
  update: {min_ready: 1s, deadline: 30s}
services:
  db:
    tier: infrastructure
    image: "db:1"
    volumes: ["data:/var/lib/db"]
    networks: [backend]
    resources: {memory: 64m, memory_reservation: 32m, cpus: 0.5}
    healthcheck: {test: ["CMD", "true"], interval: 1s}
  api:
    tier: business
    image: "api:1"
    replicas: 2
    networks: [backend, edge]
    network_aliases: {edge: [gateway]}
    expose: {port: 8080}
    environment: {MODE: fast}
    depends_on: [worker]
    placement: {constraints: ["node.role==worker"], max_replicas_per_node: 1}
    update: {order: start-first, parallelism: 2, delay: 2s, failure_action: rollback}
  worker:
    tier: business
    image: "worker:1"
    networks: [backend]
  edge:
    tier: external
    image: "nginx:1"
    ports: ["8088:80"]
    networks: [edge]
    placement: {global: true}
edge: {service: edge}
"""


@pytest.fixture(scope="module")
def desired(tmp_path_factory: pytest.TempPathFactory) -> Desired:
    return desired_from(tmp_path_factory.mktemp("sw"), SPEC)


def service_json(desired: Desired, name: str, *, sid: str | None = None,
                 replicas: int | None = None, fp: str | None = None,
                 update: str = "", force: int = 0) -> dict[str, Any]:
    """`GET /services` JSON of one of our services, as the engine answers it."""
    spec = swarm.service_spec(desired.services[name], mode=DNSRR, force=force)
    if fp is not None:
        spec["Labels"] = {**spec["Labels"], labels.FINGERPRINT: fp}
    if replicas is not None:
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    out: dict[str, Any] = {"ID": sid or f"id-{name}", "Version": {"Index": 7}, "Spec": spec}
    if update:
        out["UpdateStatus"] = {"State": update, "Message": f"update {update}"}
    return out


def test_service_spec_maps_the_spec_onto_swarm(desired: Desired) -> None:
    api = swarm.service_spec(desired.services["api"], mode=DNSRR)
    assert api["Name"] == "sw_api"
    assert api["Mode"] == {"Replicated": {"Replicas": 2}}
    assert api["EndpointSpec"] == {"Mode": "dnsrr", "Ports": []}
    task = api["TaskTemplate"]
    assert task["Networks"] == [{"Target": "sw_backend", "Aliases": ["api"]},
                                {"Target": "sw_edge", "Aliases": ["api", "gateway"]}]
    assert task["Placement"] == {"Constraints": ["node.role==worker"], "MaxReplicas": 1}
    assert "MODE=fast" in task["ContainerSpec"]["Env"]
    assert api["UpdateConfig"] == {"Parallelism": 2, "Delay": 2_000_000_000,
                                   "FailureAction": "rollback", "Monitor": 1_000_000_000,
                                   "MaxFailureRatio": 0.0, "Order": "start-first"}
    assert api["RollbackConfig"]["FailureAction"] == "pause"
    lbl = api["Labels"]
    assert lbl[labels.PROJECT] == "sw" and lbl[labels.SERVICE] == "api"
    assert lbl[labels.TIER] == "business" and labels.REPLICA not in lbl
    assert lbl[swarm.ENGINE] == "swarm"
    assert task["ContainerSpec"]["Labels"] == lbl

    db = swarm.service_spec(desired.services["db"], mode=DNSRR)
    dbt = db["TaskTemplate"]
    assert dbt["Resources"] == {"Limits": {"MemoryBytes": 64 * 2**20, "NanoCPUs": 500_000_000},
                                "Reservations": {"MemoryBytes": 32 * 2**20}}
    assert dbt["ContainerSpec"]["Mounts"] == [{
        "Type": "volume", "Source": "sw_data", "Target": "/var/lib/db", "ReadOnly": False,
        "VolumeOptions": {"Labels": {labels.PROJECT: "sw"}}}]
    assert dbt["ContainerSpec"]["Healthcheck"]["Test"] == ["CMD", "true"]
    assert db["UpdateConfig"]["Order"] == "stop-first"  # auto + named volume

    edge = swarm.service_spec(desired.services["edge"], mode=DNSRR)
    assert edge["Mode"] == {"Global": {}}
    assert edge["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8088, "PublishMode": "host"}]
    assert edge["Labels"][labels.EDGE] == "true"


def test_swarm_only_keys_change_the_generation_but_replicas_do_not(tmp_path: Path) -> None:
    base = desired_from(tmp_path / "a", SPEC).services["api"]
    moved = desired_from(tmp_path / "b", SPEC.replace("node.role==worker",
                                                      "node.role==manager")).services["api"]
    scaled = desired_from(tmp_path / "c", SPEC.replace("replicas: 2", "replicas: 3")
                          ).services["api"]
    fp = swarm.swarm_fingerprint
    assert base.fingerprint == moved.fingerprint  # the container is the same...
    assert fp(base, mode=DNSRR) != fp(moved, mode=DNSRR)  # ...the Swarm service is not
    assert fp(base, mode=DNSRR) == fp(scaled, mode=DNSRR)
    assert fp(base, mode=DNSRR) != fp(base, mode=EndpointMode.VIP)


def lines(plan: Any) -> list[str]:
    out = []
    for s in plan.steps:
        after = " after " + ",".join(w.service for w in s.after) if s.after else ""
        out.append(f"{s.action} {s.object_name or s.service} ({s.reason}){after}")
    return out


ALL = ["create-network sw_backend (network missing)", "create-network sw_edge (network missing)",
       "create db (new service)", "create api (new service) after worker",
       "create worker (new service)", "create edge (new service)"]


@pytest.mark.parametrize(("name", "observed", "expected"), [
    ("empty cluster", [], ALL),
    ("in sync", ["db", "api", "worker", "edge"], []),
    ("config changed", ["db", ("api", {"fp": "0" * 16}), "worker", "edge"],
     ["replace api (config changed)"]),
    ("scaled by hand", ["db", ("api", {"replicas": 5}), "worker", "edge"],
     ["scale api (scaled down)"]),
    ("removed by hand", ["db", "api", "edge"],
     ["create worker (new service)"]),
    ("update paused", ["db", ("api", {"update": "paused"}), "worker", "edge"],
     ["replace api (finish an interrupted update)"]),
    ("orphan", ["db", "api", "worker", "edge", ("gone", {})],
     ["remove gone (service no longer in the spec)"]),
])
def test_plan_table(desired: Desired, name: str, observed: list[Any],
                    expected: list[str]) -> None:
    services = []
    for item in observed:
        svc, kw = (item, {}) if isinstance(item, str) else item
        if svc == "gone":
            j = service_json(desired, "worker", sid="id-gone")
            j["Spec"]["Labels"] = {**j["Spec"]["Labels"], labels.SERVICE: "gone"}
            j["Spec"]["Name"] = "sw_gone"
            services.append(j)
            continue
        services.append(service_json(desired, svc, **kw))
    nets = [{"Name": n, "Labels": {labels.PROJECT: "sw"}} for n in ("sw_backend", "sw_edge")]
    snap = swarm.parse("sw", services, networks=nets if observed else [])
    plan = swarm.compute(desired, snap, mode=DNSRR)
    assert lines(plan) == expected, name
    assert any("rolling service update" in n for n in plan.notes)


def test_plan_renders_swarm_steps(desired: Desired) -> None:
    snap = swarm.parse("sw", [service_json(desired, "db"), service_json(desired, "worker"),
                              service_json(desired, "edge"),
                              service_json(desired, "api", replicas=1)])
    text = render.text(swarm.compute(desired, snap, mode=DNSRR))
    assert "~ api  sw_api" in text and "replicas: 1 -> 2" in text
    assert "1 to scale." in text and "note: engine swarm" in text
    assert "note: endpoint mode dnsrr" in text


def test_foreign_services_and_their_tasks_are_invisible(desired: Desired) -> None:
    foreign = {"ID": "x", "Spec": {"Name": "other", "Labels": {}}}
    task = {"ID": "t", "ServiceID": "x", "Status": {"State": "running"}}
    snap = swarm.parse("sw", [foreign], [task])
    assert snap.services == () and snap.tasks == ()


def test_tasks_carry_node_generation_and_addresses(desired: Desired) -> None:
    svc = service_json(desired, "api")
    fp = svc["Spec"]["Labels"][labels.FINGERPRINT]
    task = {"ID": "t1", "ServiceID": "id-api", "Slot": 1, "NodeID": "n1",
            "DesiredState": "running",
            "Spec": {"ContainerSpec": {"Labels": {labels.FINGERPRINT: fp}}},
            "Status": {"State": "running", "Timestamp": "2026-01-01T00:00:00Z",
                       "ContainerStatus": {"ContainerID": "c1"}},
            "NetworksAttachments": [{"Network": {"Spec": {"Name": "sw_edge"}},
                                     "Addresses": ["10.0.1.5/24"]}]}
    node = {"ID": "n1", "Description": {"Hostname": "web-1"}, "Spec": {
        "Role": "worker", "Availability": "active"}, "Status": {"State": "ready"}}
    snap = swarm.parse("sw", [svc], [task], [node])
    (t,) = snap.tasks_of("api")
    assert (t.node, t.fingerprint, t.container_id, t.addresses) == (
        "web-1", fp, "c1", {"sw_edge": "10.0.1.5"})
    assert snap.nodes[0].usable


def svc(update: str = "", replicas: int | None = 2) -> SwarmService:
    return SwarmService(id="s", name="sw_api", service="api", tier="t", fingerprint="new",
                        version=1, replicas=replicas, update_state=update,
                        update_message="task failed" if update else "")


def task(state: str, fp: str = "new", desired: str = "running", ts: str = "1") -> SwarmTask:
    return SwarmTask(id=f"{state}{fp}{ts}", service_id="s", service="api", slot=1,
                     node_id="n", node="web-1", state=state, desired_state=desired,
                     fingerprint=fp, error="exit 1" if state == "failed" else "",
                     timestamp=ts)


@pytest.mark.parametrize(("name", "service", "tasks", "replicas", "gate"), [
    ("fresh create, all running", svc(), [task("running"), task("running", ts="2")], 2,
     Gate.READY),
    ("one still starting", svc(), [task("running"), task("starting", ts="2")], 2,
     Gate.WAITING),
    ("update in progress", svc("updating"), [task("running"), task("running", ts="2")], 2,
     Gate.WAITING),
    ("update completed", svc("completed"), [task("running"), task("running", ts="2"),
                                            task("shutdown", "old", "shutdown")], 2,
     Gate.READY),
    ("old generation still serves", svc("completed"),
     [task("running"), task("running", ts="2"), task("running", "old")], 2, Gate.WAITING),
    ("update paused by Swarm", svc("paused"), [task("running")], 2, Gate.FAILED),
    ("rolled back by Swarm", svc("rollback_completed"), [task("running", "old")], 2,
     Gate.FAILED),
    ("crash loop", svc(), [task("failed", ts=str(i)) for i in range(3)], 2, Gate.FAILED),
    ("two failures are not yet a loop", svc(), [task("failed", ts="1"),
                                                task("failed", ts="2")], 2, Gate.WAITING),
    ("service gone", None, [], 2, Gate.FAILED),
    ("global: every placed task runs", svc(replicas=None),
     [task("running"), task("running", ts="2")], None, Gate.READY),
    ("global: nothing placed yet", svc(replicas=None), [], None, Gate.WAITING),
    ("scaled to zero", svc(replicas=0), [], 0, Gate.READY),
])
def test_gate_table(name: str, service: SwarmService | None, tasks: list[SwarmTask],
                    replicas: int | None, gate: Gate) -> None:
    view = swarm.gate(service, tasks, fingerprint="new", replicas=replicas)
    assert view.gate is gate, (name, view)


def test_validate_for_swarm_names_the_port_and_how_to_write_it(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """
        project: v
        services:
          admin:
            tier: core
            image: "a:1"
            ports: ["127.0.0.1:8089:8080"]
          web:
            tier: core
            image: "w:1"
            security_opt: [no-new-privileges]
            volumes: ["./conf:/etc/conf:ro"]
        """)
    found = {(".".join(map(str, f.path)), f.message) for f in swarm.findings(loaded.spec)}
    (port,) = [m for p, m in found if p == "services.admin.ports.0"]
    assert "127.0.0.1" in port and "'8089:8080'" in port and "host mode" in port
    assert any(p == "services.web.security_opt" for p, _ in found)
    (bind,) = [f for f in swarm.findings(loaded.spec) if f.path[-2:] == ("volumes", 0)]
    assert bind.warning and "placement" in bind.message


def test_tasks_on_a_node_that_is_down_are_lost_not_running(desired: Desired) -> None:
    svc = service_json(desired, "api")
    fp = svc["Spec"]["Labels"][labels.FINGERPRINT]

    def task(tid: str, node: str) -> dict[str, Any]:
        return {"ID": tid, "ServiceID": "id-api", "Slot": 1, "NodeID": node,
                "DesiredState": "running",
                "Spec": {"ContainerSpec": {"Labels": {labels.FINGERPRINT: fp}}},
                "Status": {"State": "running"}}

    nodes = [{"ID": "up", "Description": {"Hostname": "a"}, "Spec": {"Role": "manager",
              "Availability": "active"}, "Status": {"State": "ready"}},
             {"ID": "gone", "Description": {"Hostname": "b"}, "Spec": {"Role": "worker",
              "Availability": "active"}, "Status": {"State": "down"}}]
    snap = swarm.parse("sw", [svc], [task("t1", "up"), task("t2", "gone")], nodes)
    assert [(t.node, t.state) for t in snap.tasks_of("api")] == [("a", "running"),
                                                                 ("b", "lost")]
    view = swarm.gate(snap.service("api"), snap.tasks_of("api"), fingerprint=fp, replicas=2)
    assert view.gate is Gate.WAITING and view.running == 1
    plan = swarm.compute(desired, snap, mode=DNSRR)
    assert "node b is down: Swarm reschedules its tasks" in plan.notes


def test_a_bridge_network_of_the_same_name_is_not_ours_on_swarm(desired: Desired) -> None:
    nets = [{"Name": "sw_backend", "Driver": "bridge", "Labels": {labels.PROJECT: "sw"}},
            {"Name": "sw_edge", "Driver": "overlay", "Labels": {labels.PROJECT: "sw"}}]
    assert swarm.parse("sw", [], networks=nets).networks == {"sw_edge"}
