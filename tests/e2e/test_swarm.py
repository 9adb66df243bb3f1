"""deploy/demo on a real two-node Docker Swarm (tests/swarmkit.py: a manager and a worker
dockerd in their own network namespaces on this machine), driven by `reconciler ... --engine
swarm` with DOCKER_HOST set to the manager (issue 18):

- a cold `apply` spreads the demo over both nodes, every tier gated on the one before it;
- a rolling update of api-gateway under load through the edge loses no request;
- a never-healthy rollout is reverted cluster-wide and quarantined (exit 1, every service back
  on its last-good fingerprint, the same bad spec is not retried);
- a drained node's tasks come back healthy on the other node.

The tests share one deployment of the demo (module fixtures) and run in order, serially
(`xdist_group("swarm")`). Load goes only to 127.0.0.1:8088 inside the namespace of the node
that runs the edge (host-mode published port). Timings are printed (`-s`) with `[swarm]`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.loading import load
from tests.dockerkit import REPO, git, swap
from tests.swarmkit import NODES, SwarmLab

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("swarm")]

PROJECT = "demo"
EDGE_URL = "http://127.0.0.1:8088/v1/orders"  # the demo edge's port, inside a lab node's netns
APPLY_TIMEOUT = 240.0


@dataclass
class Applied:
    rc: int
    out: str
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Demo:
    """A copy of deploy/demo (+ nginx/nginx.conf, which it bind-mounts) in a scratch git
    checkout, a state dir, and the CLI against the lab's manager."""

    lab: SwarmLab
    root: Path
    timings: dict[str, float] = field(default_factory=dict)
    cold: Applied | None = None

    @property
    def spec(self) -> Path:
        return self.root / "deploy" / "demo"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def cli(self, command: str, *args: str, timeout: float = APPLY_TIMEOUT,
            ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "reconciler.cli", command, "--spec", str(self.spec),
               "--state-dir", str(self.state), "--engine", "swarm", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**_env(), "NO_COLOR": "1", **self.lab.env}, cwd=self.root)

    def apply(self) -> Applied:
        started = time.monotonic()
        res = self.cli("apply")
        return Applied(res.returncode, res.stdout + res.stderr, time.monotonic() - started)

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.spec / name
        path.write_text(swap(path.read_text(), old, new))

    def files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in self.spec.glob("*.yaml")}

    def restore(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.spec / name).write_text(text)

    def expected(self) -> dict[str, tuple[str, int]]:
        """service -> (tier, replicas) for the services the spec runs (no profiles)."""
        spec = load(self.spec, strict=False).spec
        return {name: (svc.tier, svc.replicas) for name, svc in spec.services.items()
                if not svc.profiles}

    def tiers(self) -> list[str]:
        return list(load(self.spec, strict=False).spec.tiers)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}


@dataclass(frozen=True)
class Task:
    service: str
    node: str           # "manager" | "worker"
    state: str          # the task's state: running, starting, ...
    health: str         # the container's health: healthy, starting, unhealthy, none, gone
    container: str
    env: tuple[str, ...]
    image: str


def cluster(lab: SwarmLab, project: str = PROJECT) -> tuple[dict[str, dict[str, Any]],
                                                              dict[str, list[Task]]]:
    """(services by reconciler.service, the desired-running tasks of each with their
    container's health), in a handful of docker calls."""
    services = lab.services(project)
    by_id = {svc["ID"]: name for name, svc in services.items()}
    tasks: dict[str, list[Task]] = {name: [] for name in services}
    if not services:
        return services, tasks
    ids = lab.docker("service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running",
                     *by_id).split()
    raw = lab.inspect(*ids, kind="task")
    names = lab.node_names()
    prefix = f"{lab.name}-"
    containers: dict[str, dict[str, Any]] = {}
    for node in NODES:
        cids = [t["Status"].get("ContainerStatus", {}).get("ContainerID", "") for t in raw
                if names.get(t.get("NodeID", ""), "") == prefix + node]
        for c in lab.inspect(*[c for c in cids if c], node=node):
            containers[c["Id"]] = c
    for t in raw:
        cid = t["Status"].get("ContainerStatus", {}).get("ContainerID", "")
        c = containers.get(cid)
        health = "gone"
        if c is not None:
            health = (c["State"].get("Health") or {}).get("Status", "none")
        tasks[by_id[t["ServiceID"]]].append(Task(
            service=by_id[t["ServiceID"]],
            node=names.get(t.get("NodeID", ""), "?").removeprefix(prefix),
            state=t["Status"]["State"], health=health, container=cid,
            env=tuple(t["Spec"]["ContainerSpec"].get("Env") or ()),
            image=t["Spec"]["ContainerSpec"]["Image"].split("@")[0]))
    return services, tasks


def replicas_of(svc: dict[str, Any]) -> int | None:
    mode = svc["Spec"]["Mode"]
    return int(mode["Replicated"]["Replicas"]) if "Replicated" in mode else None


def unconverged(demo: Demo, *, avoid: str | None = None) -> list[str]:
    """What keeps the cluster from "every service of the spec has its replicas running and
    healthy" (optionally: none on node `avoid`); empty when converged."""
    services, tasks = cluster(demo.lab)
    problems = []
    expected = demo.expected()
    if set(services) != set(expected):
        problems.append(f"services {sorted(services)} != spec {sorted(expected)}")
    for name, svc in services.items():
        want = replicas_of(svc)
        ok = [t for t in tasks[name] if t.state == "running" and t.health in ("healthy", "none")
              and t.node != avoid]
        if (want is not None and len(ok) != want) or (want is None and not ok) or len(
                ok) != len(tasks[name]):
            problems.append(f"{name}: {[(t.node, t.state, t.health) for t in tasks[name]]} "
                            f"(want {want if want is not None else 'global'})")
    return problems


def wait_converged(demo: Demo, *, timeout: float, avoid: str | None = None) -> float:
    started = time.monotonic()
    problems: list[str] = []
    while time.monotonic() - started < timeout:
        problems = unconverged(demo, avoid=avoid)
        if not problems:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"not converged after {timeout:.0f}s:\n" + "\n".join(problems))


def fingerprints(lab: SwarmLab) -> dict[str, str]:
    return {name: (svc["Spec"].get("Labels") or {}).get("reconciler.fingerprint", "")
            for name, svc in lab.services(PROJECT).items()}


def versions(lab: SwarmLab) -> dict[str, int]:
    return {name: int(svc["Version"]["Index"]) for name, svc in lab.services(PROJECT).items()}


def wait_edge(demo: Demo, timeout: float = 30) -> str:
    """The node whose namespace serves the edge (200 from 127.0.0.1:8088)."""
    deadline = time.monotonic() + timeout
    last: tuple[str, int, str] = ("", 0, "")
    while time.monotonic() < deadline:
        try:
            node = demo.lab.node_of(PROJECT, "nginx")
        except (AssertionError, KeyError) as exc:
            last = ("", 0, str(exc))
        else:
            status, body = demo.lab.get(node, EDGE_URL)
            if status == 200:
                return node
            last = (node, status, body[:300])
        time.sleep(0.5)
    raise AssertionError(f"the edge does not serve {EDGE_URL} after {timeout:.0f}s: {last}")


def tier_timeline(demo: Demo, events: list[dict[str, Any]],
                  ) -> list[tuple[str, float, float]]:
    """Per tier: (tier, first container start, the moment every service of the tier had its
    replicas healthy), in epoch seconds, from the container events of both nodes."""
    expected = demo.expected()
    swarm_to_service = {svc["Spec"]["Name"]: name
                        for name, svc in demo.lab.services(PROJECT).items()}
    starts: dict[str, list[float]] = {}
    healthy: dict[str, dict[str, float]] = {}
    for ev in events:
        attrs = ev.get("Actor", {}).get("Attributes", {})
        service = swarm_to_service.get(attrs.get("com.docker.swarm.service.name", ""))
        if service is None:
            continue
        when = ev["timeNano"] / 1e9
        if ev["Action"] == "start":
            starts.setdefault(service, []).append(when)
        elif ev["Action"].startswith("health_status: healthy"):
            healthy.setdefault(service, {}).setdefault(ev["Actor"]["ID"], when)
    out = []
    for tier in demo.tiers():
        names = [n for n, (t, _) in expected.items() if t == tier]
        if not names:
            continue
        first = min((min(starts[n]) for n in names if n in starts), default=float("nan"))
        ready = []
        for n in names:
            times = sorted(healthy.get(n, {}).values())
            want = expected[n][1]
            ready.append(times[want - 1] if len(times) >= want else float("inf"))
        out.append((tier, first, max(ready)))
    return out


def assert_status_shows_nodes(demo: Demo) -> None:
    """`status --engine swarm` names the node of every task: each node's hostname is on at
    least as many lines as tasks run there (a node list may add one line per node)."""
    st = demo.cli("status")
    assert st.returncode == 0, st.stdout + st.stderr
    _, tasks = cluster(demo.lab)
    for node in NODES:
        here = sum(t.node == node for ts in tasks.values() for t in ts)
        hostname = f"{demo.lab.name}-{node}"
        lines = [ln for ln in st.stdout.splitlines() if hostname in ln]
        assert here <= len(lines) <= here + 1, (
            f"{here} task(s) on {hostname}, {len(lines)} status line(s) name it:\n{st.stdout}")


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(swarm_lab: SwarmLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp("swarm-demo")
    shutil.copytree(REPO / "deploy" / "demo", root / "deploy" / "demo",
                    ignore=shutil.ignore_patterns("images"))
    (root / "nginx").mkdir()
    shutil.copy(REPO / "nginx" / "nginx.conf", root / "nginx" / "nginx.conf")
    for env_file in (root / "deploy" / "demo" / "env").glob("*.env"):
        env_file.chmod(0o600)
    git(root, "init", "-q")  # bind mounts may come from the checkout (../../nginx/nginx.conf)
    d = Demo(lab=swarm_lab, root=root)
    swarm_lab.remove_project(PROJECT)  # a lab kept from an earlier session (SWARM_LAB_KEEP=1)
    try:
        yield d
    finally:
        for node in NODES:
            swarm_lab.docker("node", "update", "--availability", "active",
                             swarm_lab.node_id(node), check=False)
        swarm_lab.remove_project(PROJECT)
        if d.timings:
            print("\n[swarm] timings (s): " + ", ".join(
                f"{k} {v:.1f}" for k, v in d.timings.items()))


@pytest.fixture(scope="module")
def cold(demo: Demo) -> Applied:
    """The cold `apply --engine swarm` of the demo (once per module), with the container
    events of both nodes recorded while it ran."""
    if demo.cold is None:
        with demo.lab.watch("start", "health_status") as events:
            demo.cold = demo.apply()
        demo.cold.events = events
        demo.timings["lab up"] = demo.lab.up_seconds
        demo.timings["cold start"] = demo.cold.seconds
        print(f"\n[swarm] cold apply: exit {demo.cold.rc} in {demo.cold.seconds:.1f}s")
    return demo.cold


@pytest.fixture
def running(demo: Demo, cold: Applied) -> Demo:
    """The demo converged on the cluster (every later test starts from here)."""
    assert cold.rc == 0, f"the cold apply failed (exit {cold.rc}):\n{cold.out[-4000:]}"
    wait_converged(demo, timeout=60)
    return demo


# --- tests ------------------------------------------------------------------------------------

def test_cold_apply_spreads_the_demo_over_both_nodes_tier_by_tier(demo: Demo, cold: Applied,
                                                                   ) -> None:
    assert cold.rc == 0, cold.out[-4000:]
    wait_converged(demo, timeout=30)
    services, tasks = cluster(demo.lab)
    nodes = {t.node for ts in tasks.values() for t in ts}
    assert nodes == {"manager", "worker"}, {n: [(t.node) for t in ts] for n, ts in tasks.items()}

    # no IPVS here: names resolve to task addresses, the edge publishes on its node
    assert not demo.lab.ipvs
    for name, svc in services.items():
        assert svc["Spec"].get("EndpointSpec", {}).get("Mode") == "dnsrr", name
    ports = services["nginx"]["Spec"].get("EndpointSpec", {}).get("Ports") or []
    assert [(p.get("PublishMode"), p.get("PublishedPort"), p.get("TargetPort"))
            for p in ports] == [("host", 8088, 80)], ports

    # every tier started only once the tier before it was healthy
    timeline = tier_timeline(demo, cold.events)
    start0 = timeline[0][1]
    print("\n[swarm] tiers (s after the first start): " + "; ".join(
        f"{tier} start {first - start0:.1f} healthy {ready - start0:.1f}"
        for tier, first, ready in timeline))
    assert [t for t, _, _ in timeline] == [t for t in demo.tiers()
                                           if t in {x for x, _ in demo.expected().values()}]
    for (tier, _, ready), (nxt, first, _) in itertools.pairwise(timeline):
        assert ready != float("inf"), f"{tier} never healthy in the events"
        assert first >= ready - 0.05, (
            f"{nxt} started {ready - first:.2f}s before {tier} was healthy")

    node = wait_edge(demo)
    status, body = demo.lab.get(node, EDGE_URL)
    assert status == 200 and json.loads(body)["service"] == "api-gateway", body

    assert_status_shows_nodes(demo)


def test_rolling_update_under_load_through_the_edge_loses_no_request(running: Demo) -> None:
    demo = running
    node = wait_edge(demo)
    before = versions(demo.lab)
    demo.edit("30-business.yaml", "image: reconciler-demo/app:1.0\n    replicas: 2",
              "image: reconciler-demo/app:2.0\n    replicas: 2")
    demo.edit("30-business.yaml", 'APP_NAME: api-gateway, APP_VERSION: "1.0"',
              'APP_NAME: api-gateway, APP_VERSION: "2.0"')
    with demo.lab.load(node, EDGE_URL, seconds=150, max_requests=30000, concurrency=6,
                       min_requests=1000) as results:
        time.sleep(2)
        applied = demo.apply()
        time.sleep(2)
    result = results[0]
    demo.timings["rolling update"] = applied.seconds
    print(f"\n[swarm] rolling update of api-gateway: exit {applied.rc} in "
          f"{applied.seconds:.1f}s; load: {result.summary()}")
    assert applied.rc == 0, applied.out[-4000:]
    assert result.total >= 1000, result.summary()
    assert result.failed == 0, f"{result.summary()}\n{applied.out[-3000:]}"
    assert result.versions_seen_in_order[0] == "1.0", result.summary()
    assert result.versions_seen_in_order[-1] == "2.0", result.summary()
    wait_converged(demo, timeout=30)
    _, tasks = cluster(demo.lab)
    assert {t.image for t in tasks["api-gateway"]} == {"reconciler-demo/app:2.0"}
    after = versions(demo.lab)
    untouched = {n for n in before if n not in ("api-gateway", "nginx")}
    assert {n: after[n] for n in untouched} == {n: before[n] for n in untouched}


def test_never_healthy_rollout_is_reverted_cluster_wide_and_quarantined(running: Demo,
                                                                        ) -> None:
    demo = running
    good_files = demo.files()
    good = fingerprints(demo.lab)
    assert all(good.values()), good
    # a healthy change in the core tier and a never-healthy one in the business tier
    demo.edit("20-core.yaml", 'APP_NAME: notification-service, APP_VERSION: "1.0"',
              'APP_NAME: notification-service, APP_VERSION: "1.1"')
    demo.edit("30-business.yaml",
              'APP_NAME: order-service, APP_VERSION: "1.0", HEALTH_DELAY: "1"}',
              'APP_NAME: order-service, APP_VERSION: "1.0", HEALTH_DELAY: "1", '
              'NEVER_HEALTHY: "1"}\n    update: {deadline: 20s}')
    try:
        bad = demo.apply()
        demo.timings["failed rollout + revert"] = bad.seconds
        print(f"\n[swarm] never-healthy rollout: exit {bad.rc} in {bad.seconds:.1f}s")
        assert bad.rc == 1, bad.out[-4000:]
        assert fingerprints(demo.lab) == good  # every service back on last-good
        wait_converged(demo, timeout=60)
        _, tasks = cluster(demo.lab)
        assert all("NEVER_HEALTHY=1" not in t.env for t in tasks["order-service"])
        assert all("APP_VERSION=1.0" in t.env for t in tasks["notification-service"])
        assert json.loads((demo.state / "quarantine.json").read_text())

        settled = versions(demo.lab)
        again = demo.apply()
        demo.timings["quarantined re-apply"] = again.seconds
        assert again.rc == 1, again.out[-4000:]
        assert "quarantined" in again.out, again.out[-4000:]
        assert versions(demo.lab) == settled  # not retried: no service was touched
    finally:
        demo.restore(good_files)


def test_a_drained_nodes_tasks_come_back_healthy_on_the_other_node(running: Demo) -> None:
    demo = running
    lab = demo.lab
    _, tasks = cluster(lab)
    on_worker = sorted(t.service for ts in tasks.values() for t in ts if t.node == "worker")
    assert on_worker, "nothing runs on the worker: the drain would prove nothing"
    started = time.monotonic()
    lab.docker("node", "update", "--availability", "drain", lab.node_id("worker"))
    try:
        took = wait_converged(demo, timeout=120, avoid="worker")
        demo.timings["drain recovery"] = time.monotonic() - started
        print(f"\n[swarm] drained the worker ({len(on_worker)} tasks: {on_worker}): every "
              f"service healthy on the manager after {took:.1f}s")
        _, tasks = cluster(lab)
        assert {t.node for ts in tasks.values() for t in ts} == {"manager"}
        # the reconciler agrees: nothing to do but (re)point the edge, then it serves
        res = demo.apply()
        demo.timings["apply after drain"] = res.seconds
        assert res.rc == 0, res.out[-4000:]
        assert wait_edge(demo) == "manager"
        assert_status_shows_nodes(demo)
    finally:
        lab.docker("node", "update", "--availability", "active", lab.node_id("worker"),
                   check=False)
