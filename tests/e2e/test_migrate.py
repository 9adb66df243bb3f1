"""`reconciler migrate` of a stack started by docker-compose 1.29, under load through the
edge: the volume's data is kept, no container is orphaned, the failed requests and the
longest gap are reported (`-s`), the rollback script brings compose back; then the same
stack's `docker-compose down` + `reconciler apply` under the same load, for comparison.
Load goes only to the test's own port on 127.0.0.1 (tests/loadgen.py, bounded)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.dockerkit import APP, NGINX, REPO, Host, docker, wait_until
from tests.e2e.test_edge import free_port, get
from tests.loadgen import LoadResult, run_load

pytestmark = pytest.mark.docker

HEALTH = ('{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 1s, '
          'timeout: 3s, retries: 3}')
COMPOSE = f"""
version: "3.8"
services:
  db:
    image: {APP}:1.0
    environment: {{APP_NAME: db, APP_VERSION: "1.0"}}
    volumes: ["data:/data"]
    healthcheck: {HEALTH}
  api-gateway:
    image: {APP}:1.0
    environment: {{APP_NAME: api-gateway, APP_VERSION: "1.0"}}
    healthcheck: {HEALTH}
    depends_on: [db]
  nginx:
    image: {NGINX}
    ports: ["127.0.0.1:PORT:80"]
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "./conf.d:/etc/nginx/conf.d:ro"]
    healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health"],
                  interval: 1s, timeout: 3s, retries: 3}}
    depends_on: [api-gateway]
volumes:
  data: {{}}
"""
# what the reconciler renders for nginx/nginx.conf (upstreams and the enabled-services map),
# written by hand for the compose project
UPSTREAMS = ("upstream api-gateway {\n    server api-gateway:8080;\n    keepalive 16;\n}\n"
             "map $edge_service $edge_service_enabled {\n    default 0;\n    api-gateway 1;\n}\n")
SPEC = f"""
project: PROJECT
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 500ms,
                timeout: 3s, retries: 3, start_period: 5s}}
  update: {{min_ready: 1s, deadline: 40s, drain: 1s}}
  stop_grace_period: 5s
networks: {{default: {{}}}}
volumes: {{data: {{}}}}
edge: {{service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    environment: {{APP_NAME: db, APP_VERSION: "1.0"}}
    volumes: ["data:/data"]
    networks: [default]
  api-gateway:
    tier: business
    image: {APP}:1.0
    environment: {{APP_NAME: api-gateway, APP_VERSION: "1.0"}}
    networks: [default]
    depends_on: [db]
    expose: {{port: 8080}}
  nginx:
    tier: external
    image: {NGINX}
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    ports: ["127.0.0.1:PORT:80"]
    networks: [default]
    healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health"]}}
    stop_signal: SIGQUIT
"""
LOAD_LIMIT_S = 150.0
LOAD_MAX = 40000
CONCURRENCY = 4
HANDOVER_SLACK_S = 2.0


def compose(h: Host, *args: str, timeout: float = 180) -> str:
    proc = subprocess.run(["docker-compose", "-p", h.project, "-f",
                           str(h.root / "compose" / "docker-compose.yml"), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={"COMPOSE_PARALLEL_LIMIT": "256", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def compose_running(h: Host) -> list[str]:
    return docker("ps", "-q", "--filter",
                  f"label=com.docker.compose.project={h.project}").split()


def under_load(port: int, action: Callable[[], subprocess.CompletedProcess[str]],
               ) -> tuple[LoadResult, subprocess.CompletedProcess[str], float]:
    async def go() -> tuple[LoadResult, subprocess.CompletedProcess[str], float]:
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(
            f"http://127.0.0.1:{port}/v1/orders", seconds=LOAD_LIMIT_S, max_requests=LOAD_MAX,
            concurrency=CONCURRENCY, stop=stop, request_timeout=5.0))
        await asyncio.sleep(2)
        started = time.monotonic()
        res = await asyncio.to_thread(action)
        took = time.monotonic() - started
        await asyncio.sleep(2)
        stop.set()
        return await load, res, took

    return asyncio.run(go())


@pytest.fixture
def compose_stack(host: Host) -> Iterator[tuple[Host, int]]:
    port = free_port()
    d = host.root / "compose"
    (d / "conf.d").mkdir(parents=True)
    (d / "docker-compose.yml").write_text(COMPOSE.replace("PORT", str(port)))
    (d / "conf.d" / "upstreams.conf").write_text(UPSTREAMS)
    shutil.copy(REPO / "nginx" / "nginx.conf", d / "nginx.conf")
    host.write(SPEC.replace("PORT", str(port)))
    shutil.copy(REPO / "nginx" / "nginx.conf", host.spec / "nginx.conf")
    try:
        compose(host, "up", "-d")
        wait_until(lambda: get(f"http://127.0.0.1:{port}/v1/x")[0] == 200, timeout=90,
                   what="compose's edge serves")
        yield host, port
    finally:
        subprocess.run(["docker-compose", "-p", host.project, "-f",
                        str(d / "docker-compose.yml"), "down", "-v", "--remove-orphans"],
                       capture_output=True, timeout=180, check=False)


def figures(load: LoadResult) -> str:
    start, end = load.gap_window
    when = sorted({f"{(t - start) * 1000:+.0f}" if t < start else f"end{(t - end) * 1000:+.0f}"
                   for t in load.outside_gap_at})[:10]
    return (f"{load.failed_outside_gap} failed outside the longest gap (ms from it: "
            f"{', '.join(when) or '-'}), slowest request {load.slowest_request_s * 1000:.0f} ms")


def ours(h: Host) -> dict[str, list[dict[str, object]]]:
    return h.by_service()


def test_migrate_from_compose_keeps_data_and_rolls_back(compose_stack: tuple[Host, int]) -> None:
    h, port = compose_stack
    (db,) = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={h.project}",
                   "--filter", "label=com.docker.compose.service=db").split()
    docker("exec", db, "sh", "-c", "echo precious-compose > /data/sentinel")
    before = sorted(compose_running(h))
    assert len(before) == 3

    dry = h.cli("migrate", "--compose-project", h.project, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Backups" in dry.stdout and "db: volume copy" in dry.stdout
    # the edge's holder takes compose's edge's ports over, the edge starts in its namespace
    assert (f"nginx.net: start ours with no network; stop {h.project}_nginx_1; the moment it "
            "exited, connect ours") in dry.stdout, dry.stdout
    assert "nginx: start ours in nginx.net's network namespace" in dry.stdout, dry.stdout
    assert dry.stdout.index("nginx.net: start") < dry.stdout.index("nginx: start ours")
    assert "api-gateway: start ours" in dry.stdout
    assert sorted(compose_running(h)) == before and h.containers() == []  # nothing changed

    load, res, took = under_load(port, lambda: h.cli(
        "migrate", "--compose-project", h.project, timeout=300))
    print(f"\n[migrate] {load.summary()}; migrate took {took:.1f}s; {figures(load)}")
    print(res.stdout[-3000:])
    assert res.returncode == 0, res.stdout + res.stderr
    # the edge's hand-over: ours was started right after compose's stopped and the port
    # was polled until it answered HTTP (the migrator's own measure of the gap)
    handover = re.search(rf"hand-over nginx: 127\.0\.0\.1:{port} answered (\d+) ms", res.stdout)
    assert handover is not None, res.stdout
    print(f"[migrate] edge hand-over (stop sent -> port answers): {handover.group(1)} ms")
    assert load.total > 0 and load.ok > 0
    # failed requests only in the edge's hand-over: none further than HANDOVER_SLACK_S from
    # the longest gap (the db's stop-first move and compose's gateway stopping fail nothing)
    start, end = load.gap_window
    away = [t for t in load.outside_gap_at
            if t < start - HANDOVER_SLACK_S or t > end + HANDOVER_SLACK_S]
    assert away == [], (load.summary(), figures(load))
    # compose's containers are all stopped (kept), ours run: 0 orphaned containers
    assert compose_running(h) == []
    stopped = docker("ps", "-aq", "--filter",
                     f"label=com.docker.compose.project={h.project}").split()
    assert sorted(stopped) == before
    svc = ours(h)
    assert sorted(svc) == ["api-gateway", "db", "nginx", "nginx.net"]
    assert all(c["State"]["Running"] for cs in svc.values() for c in cs)  # type: ignore[index]
    # the pre-created containers were adopted: one each, nginx in the holder's namespace
    (holder,), (edge,) = svc["nginx.net"], svc["nginx"]
    assert edge["HostConfig"]["NetworkMode"] == f"container:{holder['Id']}"  # type: ignore[index]
    (our_db,) = svc["db"]
    assert docker("exec", str(our_db["Id"]), "cat", "/data/sentinel").strip() == \
        "precious-compose"
    # the compose volume is the one in use: no second volume was created
    vols = json.loads(docker("inspect", str(our_db["Id"])))[0]["Mounts"]
    assert [m["Name"] for m in vols if m["Type"] == "volume"] == [f"{h.project}_data"]
    assert docker("volume", "ls", "-q", "--filter",
                  f"label=reconciler.project={h.project}").split() == []
    assert get(f"http://127.0.0.1:{port}/v1/x")[0] == 200
    # the containers created and started by the hand-over are exactly what the spec wants
    again = h.cli("--dry-run")
    assert again.returncode == 0, again.stdout + again.stderr
    listed = h.cli("backups", "--json")
    assert any(e["service"] == "db" and e["checksum_ok"] for e in json.loads(listed.stdout))
    scripts = list((h.state / "migrations").glob(f"{h.project}-*/restore.sh"))
    assert len(scripts) == 1

    back = h.cli("migrate", "--compose-project", h.project, "--rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert h.containers() == []
    assert sorted(compose_running(h)) == before
    wait_until(lambda: get(f"http://127.0.0.1:{port}/v1/x")[0] == 200, timeout=60,
               what="compose serves again")
    assert docker("exec", db, "cat", "/data/sentinel").strip() == "precious-compose"

    # the comparison: down + up of the same stack under the same load
    def down_up() -> subprocess.CompletedProcess[str]:
        compose(h, "down")
        return h.cli("apply", timeout=300)

    h.write(SPEC.replace("PORT", str(port)))
    shutil.copy(REPO / "nginx" / "nginx.conf", h.spec / "nginx.conf")
    load2, res2, took2 = under_load(port, down_up)
    print(f"[down+up] {load2.summary()}; down + apply took {took2:.1f}s; {figures(load2)}")
    assert res2.returncode == 0, res2.stdout + res2.stderr
