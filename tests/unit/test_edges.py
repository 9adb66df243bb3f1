"""Edge upstreams: rendering (pure table tests), the plan's upstream changes, and the reload
protocol (`nginx -t` gate, file restored on failure, waiting for new workers) on a scripted
runtime, without real sleeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.desired import Desired
from reconciler.core.plans import compute
from reconciler.core.snapshots import ContainerState, Health, Observed
from reconciler.edges import (
    PLACEHOLDER,
    Edge,
    enabled_map,
    render_health,
    render_upstreams,
    served_names,
    upstream_servers,
    worker_pids,
)
from reconciler.execute import StepFailed
from reconciler.runtimes import ExecResult
from tests.specfactory import container_json, desired_from
from tests.unit.test_planner import observed

SPEC = """
project: shop
networks: {backend: {}, edge: {}}
edge: {service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}
services:
  api:
    tier: business
    image: api:1
    replicas: 2
    networks: [backend, edge]
    expose: {port: 8080}
  admin:
    tier: business
    image: admin:1
    networks: [edge]
    expose: {port: 9000}
  worker:
    tier: business
    image: worker:1
    networks: [backend]
  nginx:
    tier: external
    image: nginx:1
    networks: [edge]
"""


@pytest.fixture(scope="module")
def desired(tmp_path_factory: pytest.TempPathFactory) -> Desired:
    return desired_from(tmp_path_factory.mktemp("edge"), SPEC)


def c(cid: str, service: str = "api", *, replica: int = 1,
      state: ContainerState = ContainerState.RUNNING,
      health: Health = Health.HEALTHY, nets: dict[str, str] | None = None) -> Observed:
    return Observed(id=cid, name=f"shop-{service}-{replica}-{cid}", service=service,
                    tier="business", replica=replica, fingerprint="f", state=state,
                    health=health, image="img",
                    addresses=nets if nets is not None else {
                        "shop_backend": f"10.0.0.{len(cid)}", "shop_edge": f"10.1.0.{cid[-1]}"})


CASES: list[tuple[str, list[Observed], dict[str, Any], dict[str, list[str]]]] = [
    ("healthy ones listed by their edge-network address",
     [c("a1"), c("a2", replica=2)], {},
     {"admin": [], "api": ["10.1.0.1:8080", "10.1.0.2:8080"]}),
    ("starting, unhealthy and stopped containers are left out",
     [c("a1", health=Health.STARTING), c("a2", health=Health.UNHEALTHY),
      c("a3", state=ContainerState.EXITED), c("a4")], {},
     {"admin": [], "api": ["10.1.0.4:8080"]}),
    ("no healthcheck counts as ready",
     [c("a1", health=Health.NONE)], {}, {"admin": [], "api": ["10.1.0.1:8080"]}),
    ("exclude takes a healthy container out (draining before its stop)",
     [c("a1"), c("a2", replica=2)], {"exclude": ["a1"]},
     {"admin": [], "api": ["10.1.0.2:8080"]}),
    ("include keeps a not-yet-healthy container",
     [c("a1", health=Health.STARTING)], {"include": ["a1"]},
     {"admin": [], "api": ["10.1.0.1:8080"]}),
    ("exclude wins over include",
     [c("a1")], {"include": ["a1"], "exclude": ["a1"]}, {"admin": [], "api": []}),
    ("no healthy container: a placeholder, so the file still loads",
     [c("a1", health=Health.STARTING)], {}, {"admin": [], "api": []}),
    ("services without expose and the edge itself are never upstream servers",
     [c("w1", "worker"), c("n1", "nginx"), c("d1", "admin")], {},
     {"admin": ["10.1.0.1:9000"], "api": []}),
    ("no address on the network shared with the edge: left out (the edge cannot reach it)",
     [c("a1", nets={"shop_backend": "10.0.0.9"})], {}, {"admin": [], "api": []}),
    ("the address on the shared network, not the first network's",
     [c("a1", nets={"shop_backend": "10.0.0.9", "shop_edge": "10.1.0.7"})], {},
     {"admin": [], "api": ["10.1.0.7:8080"]}),
    ("no address at all: left out",
     [c("a1", nets={})], {}, {"admin": [], "api": []}),
    ("containers of unknown services are ignored",
     [c("x1", "legacy")], {}, {"admin": [], "api": []}),
]


@pytest.mark.parametrize(("containers", "kw", "expected"), [x[1:] for x in CASES],
                         ids=[x[0] for x in CASES])
def test_render_upstreams(desired: Desired, containers: list[Observed], kw: dict[str, Any],
                          expected: dict[str, list[str]]) -> None:
    text = render_upstreams(desired, containers, **kw)
    assert upstream_servers(text) == expected
    for name, servers in expected.items():
        assert f"upstream {name} {{" in text
        if not servers:
            block = text.split(f"upstream {name} {{", 1)[1].split("}", 1)[0]
            assert PLACEHOLDER in block
    assert text.count("keepalive 16;") == 2


def test_no_healthy_replica_keeps_the_served_ones_never_new_ones(desired: Desired) -> None:
    """Health checks flapping on an overloaded host must not empty the upstream; a container
    that was never served (a new generation that never got healthy) is never listed."""
    served = render_upstreams(desired, [c("a1")])
    assert served_names(served) == {"shop-api-1-a1"}
    flapping = [c("a1", health=Health.UNHEALTHY), c("a2", replica=2, health=Health.UNHEALTHY)]
    text = render_upstreams(desired, flapping, serving=served_names(served))
    assert upstream_servers(text)["api"] == ["10.1.0.1:8080"] and "(kept:" in text
    # a healthy one exists: only it is listed
    text = render_upstreams(desired, [*flapping, c("a3", replica=3)],
                            serving=served_names(served))
    assert upstream_servers(text)["api"] == ["10.1.0.3:8080"]
    # stopped, or being retired: not kept
    assert upstream_servers(render_upstreams(desired, [c("a1", state=ContainerState.EXITED)],
                                             serving={"shop-api-1-a1"}))["api"] == []
    assert upstream_servers(render_upstreams(desired, flapping, exclude={"a1"},
                                             serving={"shop-api-1-a1"}))["api"] == []


def test_render_is_deterministic_and_names_containers(desired: Desired) -> None:
    a = render_upstreams(desired, [c("a2", replica=2), c("a1")])
    b = render_upstreams(desired, [c("a1"), c("a2", replica=2)])
    assert a == b
    assert a.index("shop-api-1-a1") < a.index("shop-api-2-a2")
    assert "max_fails=1 fail_timeout=2s;  # shop-api-1-a1" in a


def test_worker_pids_skip_the_master_and_workers_shutting_down() -> None:
    ps = """PID   COMMAND
    1 nginx: master process /usr/sbin/nginx -g daemon off;
    7 nginx: worker process is shutting down
   21 nginx: worker process
   22 nginx: worker process
   30 ps -o pid,args
"""
    assert worker_pids(ps) == {21, 22}
    assert worker_pids("") == set()


# --- the plan's upstream changes ------------------------------------------------------------

def test_plan_upstream_changes_follow_the_steps(tmp_path: Path) -> None:
    old = desired_from(tmp_path / "old", SPEC)
    new = desired_from(tmp_path / "new", SPEC.replace("image: api:1", "image: api:2")
                       .replace("replicas: 2", "replicas: 1")
                       .replace("image: worker:1", "image: worker:2"))
    host = [container_json(old, "api", 1, cid="a1"), container_json(old, "api", 2, cid="a2"),
            container_json(old, "admin", 1, cid="d1", state="exited", status="Exited (0)"),
            container_json(old, "worker", 1, cid="w1"), container_json(old, "nginx", 1)]
    plan = compute(new, observed(new, *host))
    got = {u.upstream: (u.added, u.removed) for u in plan.upstreams}
    api_new = new.services["api"].container_name(1)
    admin = old.services["admin"].container_name(1)
    assert got == {
        "api": ((api_new,), (old.services["api"].container_name(1),
                             old.services["api"].container_name(2))),
        "admin": ((admin,), ()),  # a stopped container started again joins; nothing leaves
    }
    assert plan.edge == "nginx"


def test_plan_in_sync_has_no_upstream_changes(desired: Desired) -> None:
    host = [container_json(desired, s, r) for s, r in
            (("api", 1), ("api", 2), ("admin", 1), ("worker", 1), ("nginx", 1))]
    plan = compute(desired, observed(desired, *host))
    assert plan.empty and plan.upstreams == ()


# --- the reload protocol on a scripted runtime ----------------------------------------------

@dataclass
class ScriptedRuntime:
    """list/exec/kill only: what `Edge` uses. nginx -t fails while `broken`; `ps` shows the
    old worker until `reload_after` polls after a HUP."""

    containers: list[dict[str, Any]]
    broken: bool = False
    reload_after: int = 2
    calls: list[str] = field(default_factory=list)
    workers: int = 7
    _pending: int = -1

    async def list_containers(self, *, label: str) -> list[dict[str, Any]]:
        return self.containers

    async def exec_in_container(self, container_id: str, cmd: Sequence[str]) -> ExecResult:
        self.calls.append(" ".join(cmd))
        if cmd[0] == "nginx":
            return ExecResult(1 if self.broken else 0, "emerg: bad" if self.broken else "")
        if self._pending > 0:
            self._pending -= 1
            if self._pending == 0:
                self.workers += 10
        return ExecResult(0, f"  1 nginx: master process\n  {self.workers} nginx: worker "
                             "process\n")

    async def kill_container(self, container_id: str, *, signal: str) -> None:
        self.calls.append(f"kill {signal}")
        self._pending = self.reload_after


def edge_setup(tmp_path: Path, desired: Desired,
               **kw: Any) -> tuple[Edge, ScriptedRuntime, list[float]]:
    host = [container_json(desired, "api", 1, cid="a1"), container_json(desired, "nginx", 1)]
    for item in host:
        item["NetworkSettings"] = {"Networks": {"shop_edge": {"IPAddress": "10.1.0.5"}}}
    rt = ScriptedRuntime(host, **kw)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    return Edge(rt, tmp_path, filename="upstreams.conf", sleep=sleep,  # type: ignore[arg-type]
                reload_polls=5), rt, slept


async def test_reload_waits_until_new_workers_run(tmp_path: Path, desired: Desired) -> None:
    edge, rt, slept = edge_setup(tmp_path, desired)
    await edge.sync(desired)
    assert rt.calls == ["nginx -t -q", "ps -o pid,args", "kill HUP", "ps -o pid,args",
                        "ps -o pid,args"]
    assert len(slept) == 1
    assert "10.1.0.5:8080" in (tmp_path / "upstreams.conf").read_text()
    rt.calls.clear()
    await edge.sync(desired)  # unchanged: no test, no reload
    assert rt.calls == []


async def test_reload_that_never_takes_effect_fails_the_step(tmp_path: Path,
                                                             desired: Desired) -> None:
    edge, _, _ = edge_setup(tmp_path, desired, reload_after=100)
    with pytest.raises(StepFailed, match="did not start workers"):
        await edge.sync(desired)


async def test_broken_config_is_never_reloaded_and_the_file_is_restored(
        tmp_path: Path, desired: Desired) -> None:
    edge, rt, _ = edge_setup(tmp_path, desired)
    (tmp_path / "upstreams.conf").write_text("# served now\n")
    rt.broken = True
    with pytest.raises(StepFailed, match="nginx -t failed"):
        await edge.sync(desired)
    assert rt.calls == ["nginx -t -q"]  # no HUP
    assert (tmp_path / "upstreams.conf").read_text() == "# served now\n"


async def test_retired_containers_stay_out_until_gone(tmp_path: Path, desired: Desired) -> None:
    edge, _, slept = edge_setup(tmp_path, desired)
    svc = desired.services["api"]
    await edge.retire(desired, svc, old_ids=["a1"])
    assert "10.1.0.5:8080" not in (tmp_path / "upstreams.conf").read_text()
    assert slept[-1] == svc.service.update.drain
    await edge.sync(desired)  # another service's sync does not bring it back
    assert "10.1.0.5:8080" not in (tmp_path / "upstreams.conf").read_text()


# --- the enabled map and the stack's health (issue 17) -----------------------------------------


def test_enabled_map_lists_exactly_the_exposed_services(desired: Desired) -> None:
    text = enabled_map(desired)
    assert text.startswith("map $edge_service $edge_service_enabled {")
    assert "    default 0;\n    admin 1;\n    api 1;\n}" in text
    assert "worker" not in text and "nginx" not in text
    assert text in render_upstreams(desired, [])  # rendered with the upstreams, every time


@pytest.mark.parametrize(("containers", "status", "serves"), [
    ([c("a1"), c("a2", replica=2), c("d1", "admin"), c("w1", "worker"), c("n1", "nginx")],
     "ok", True),
    ([c("a1"), c("a2", replica=2, health=Health.UNHEALTHY), c("d1", "admin"),
      c("w1", "worker", health=Health.NONE), c("n1", "nginx")], "degraded", True),
    ([c("a1", state=ContainerState.EXITED), c("d1", "admin"), c("w1", "worker"), c("n1", "nginx")],
     "down", False),
    ([], "down", False),
])
def test_render_health(desired: Desired, containers: list[Observed], status: str,
                       serves: bool) -> None:
    text, ok = render_health(desired, containers)
    doc = json.loads(text)
    assert (doc["status"], ok) == (status, serves)
    assert [t["tier"] for t in doc["tiers"]] == ["business", "external"]
    business = doc["tiers"][0]["services"]
    assert business["api"]["desired"] == 2
    assert render_health(desired, list(reversed(containers)))[0] == text  # stable: no clock


async def test_sync_writes_health_files_next_to_the_upstreams(desired: Desired,
                                                               tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir(mode=0o700)
    edge, _, _ = edge_setup(tmp_path / "edge", desired)
    await edge.sync(desired, containers=[c("a1"), c("a2", replica=2), c("d1", "admin"),
                                         c("w1", "worker"), c("n1", "nginx")])
    assert json.loads((tmp_path / "edge" / "health.json").read_text())["status"] == "ok"
    assert (tmp_path / "edge" / "health-ok.json").exists()
    assert (tmp_path / "edge").stat().st_mode & 0o777 == 0o755  # nginx workers read it
    await edge.sync(desired, containers=[c("n1", "nginx")])
    assert json.loads((tmp_path / "edge" / "health.json").read_text())["status"] == "down"
    assert not (tmp_path / "edge" / "health-ok.json").exists()


JOB_SPEC = SPEC.replace("services:\n", "services:\n  migrate:\n    tier: business\n"
                        "    kind: job\n    image: api:1\n", 1)


@pytest.mark.parametrize(("job", "run"), [
    ([], "not run"),
    ([c("j1", "migrate", state=ContainerState.RUNNING, health=Health.NONE)], "running"),
    ([c("j1", "migrate", state=ContainerState.EXITED)], "failed"),  # no exit code: not 0
    ([replace(c("j1", "migrate", state=ContainerState.EXITED), exit_code=0)], "done"),
    ([replace(c("j1", "migrate", state=ContainerState.EXITED), exit_code=3),
      replace(c("j2", "migrate", state=ContainerState.EXITED), exit_code=0)], "done"),
])
def test_a_job_is_listed_with_its_run_and_never_makes_the_stack_down(
        tmp_path: Path, job: list[Observed], run: str) -> None:
    """An exited job is not a service with no healthy replica: the stack stays `ok`."""
    d = desired_from(tmp_path, JOB_SPEC)
    serving = [c("a1"), c("a2", replica=2), c("d1", "admin"), c("w1", "worker"),
               c("n1", "nginx")]
    text, ok = render_health(d, serving + job)
    doc = json.loads(text)
    assert (doc["status"], ok) == ("ok", True)
    assert doc["tiers"][0]["services"]["migrate"] == {"job": run}
