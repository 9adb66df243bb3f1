"""The nginx edge for real: zero failed requests through a rollout under load (replicas 1
and 2), a never-healthy rollout reverted under load, error pages, favicon, a broken config
never reloaded, and `nginx -t` on the shipped nginx.conf with deploy/demo's upstreams.

Each test has its own project and its own published port on 127.0.0.1; load goes only to
that port (tests/loadgen.py: bounded in time and count). Figures are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.desired import build
from reconciler.core.snapshots import ContainerState, Health, Observed
from reconciler.edges import render_upstreams, upstream_servers, worker_pids
from reconciler.loading import load
from tests.dockerkit import APP, NGINX, REPO, Host, docker, swap, wait_until
from tests.loadgen import LoadResult, run_load

pytestmark = pytest.mark.docker

LOAD_SECONDS = 21.0
LOAD_LIMIT_S = 90.0
LOAD_MAX = 30000
MIN_REQUESTS = 2100  # the load goes on past LOAD_SECONDS until this many were sent
CONCURRENCY = 6

STACK = f"""
project: PROJECT
tiers: [business, external]
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 500ms,
                timeout: 5s, retries: 3, start_period: 5s}}
  update: {{min_ready: 1s, deadline: 30s, drain: 1s}}
  stop_grace_period: 5s
networks: {{edge: {{}}}}
edge: {{service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}}
services:
  api-gateway:
    tier: business
    image: {APP}:1.0
    replicas: 1
    environment: {{APP_NAME: api-gateway, APP_VERSION: "1.0"}}
    networks: [edge]
    expose: {{port: 8080}}
  nginx:
    tier: external
    image: {NGINX}
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    ports: ["127.0.0.1:PORT:80"]
    networks: [edge]
    healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1/nginx-health"]}}
    stop_signal: SIGQUIT
"""

V2 = ('APP_VERSION: "1.0"}', 'APP_VERSION: "2.0"}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge_stack(h: Host, **swaps: str) -> tuple[str, int]:
    """Write the stack (the shipped nginx.conf copied into the spec dir) and apply it."""
    port = free_port()
    text = STACK.replace("PORT", str(port))
    for old, new in swaps.items():
        text = swap(text, old, new)
    h.write(text)
    shutil.copy(REPO / "nginx" / "nginx.conf", h.spec / "nginx.conf")
    res = h.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/v1/x")[0] == 200, timeout=15, what="the edge serves")
    return text.replace("PROJECT", h.project), port


def get(url: str, accept: str = "*/*") -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # 127.0.0.1 only
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except OSError:
        return 0, {}, ""


def rollout_under_load(h: Host, port: int, new_text: str | Callable[[], None],
                       ) -> tuple[LoadResult, int, str, float]:
    """Load through the edge; 2 s in, `reconciler apply` of new_text (or after calling it);
    the load goes on until the apply is done + 2 s and at least LOAD_SECONDS (at most
    LOAD_LIMIT_S: a slow, shared machine stretches rollouts). Returns (load, apply exit
    code, apply output, apply s)."""

    async def go() -> tuple[LoadResult, int, str, float]:
        stop = asyncio.Event()
        started = time.monotonic()
        load_task = asyncio.create_task(run_load(
            f"http://127.0.0.1:{port}/v1/orders", seconds=LOAD_LIMIT_S, max_requests=LOAD_MAX,
            concurrency=CONCURRENCY, stop=stop, min_requests=MIN_REQUESTS))
        await asyncio.sleep(2)
        if callable(new_text):
            new_text()
        else:
            h.write(new_text)
        applying = time.monotonic()
        res = await asyncio.to_thread(h.cli, "apply")
        took = time.monotonic() - applying
        await asyncio.sleep(max(2.0, LOAD_SECONDS - (time.monotonic() - started)))
        stop.set()
        return await load_task, res.returncode, res.stdout + res.stderr, took

    return asyncio.run(go())


def report(what: str, result: LoadResult, apply_s: float) -> None:
    print(f"\n[edge] {what}: {result.summary()}; apply took {apply_s:.1f}s")


def assert_zero_failures(result: LoadResult, h: Host, apply_out: str) -> None:
    assert result.seconds >= 20 and result.total >= 2000, result.summary()
    if result.failed:
        edges = h.by_service().get("nginx", [])
        log = subprocess.run(["docker", "logs", "--tail", "400", edges[0]["Id"]],
                             capture_output=True, text=True, timeout=30,
                             check=False) if edges else None
        noted = [ln for ln in (log.stdout + log.stderr if log else "").splitlines()
                 if '"status":50' in ln or "[error]" in ln or "[warn]" in ln or "signal" in ln]
        raise AssertionError(f"{result.summary()}\napply:\n{apply_out}\nedge log:\n"
                             + "\n".join([*noted[:10], "...", *noted[-20:]]))
    assert result.ok == result.total


@pytest.mark.parametrize("replicas", [1, 2])
def test_rolling_update_under_load_fails_no_request(host: Host, replicas: int) -> None:
    text, port = edge_stack(host, **{"replicas: 1": f"replicas: {replicas}"})
    before = {c["Id"] for c in host.by_service()["api-gateway"]}
    new = swap(swap(text, *V2), f"{APP}:1.0", f"{APP}:2.0")
    result, rc, out, took = rollout_under_load(host, port, new)
    report(f"rollout, replicas {replicas}", result, took)
    assert rc == 0, out
    assert_zero_failures(result, host, out)
    versions = result.versions_seen_in_order
    assert versions[0] == "1.0" and versions[-1] == "2.0", versions
    assert set(versions) == {"1.0", "2.0"}
    after = host.by_service()["api-gateway"]
    assert len(after) == replicas and not {c["Id"] for c in after} & before


def test_never_healthy_rollout_is_reverted_without_a_failed_request(host: Host) -> None:
    text, port = edge_stack(host)
    before = {c["Id"] for c in host.by_service()["api-gateway"]}
    new = swap(swap(text, V2[0], 'APP_VERSION: "2.0", NEVER_HEALTHY: "1"}'),
               "deadline: 30s", "deadline: 8s")
    result, rc, out, took = rollout_under_load(host, port, new)
    report("never-healthy rollout + revert", result, took)
    assert rc == 1, out
    assert "reverting to last-good" in out, out
    assert "health check reports unhealthy" in out or "not healthy within the deadline" in out
    assert_zero_failures(result, host, out)
    assert result.versions_seen_in_order == ["1.0"]  # the bad version never got a request
    after = host.by_service()["api-gateway"]
    assert {c["Id"] for c in after} == before and after[0]["State"]["Running"]


def test_favicon_is_local_and_with_no_upstream_the_client_gets_a_friendly_503(
        host: Host) -> None:
    _, port = edge_stack(host, **{"APP_NAME: api-gateway,": "APP_NAME: api-gateway, "
                                                           'APP_LOG_REQUESTS: "1",'})
    base = f"http://127.0.0.1:{port}"
    (app,) = host.by_service()["api-gateway"]
    status, _, body = get(base + "/favicon.ico")
    assert status == 204 and body == ""
    assert get(base + "/v1/after-icon")[0] == 200
    def app_log() -> str:  # the app logs each request to stderr once it has answered it
        return subprocess.run(["docker", "logs", app["Id"]], capture_output=True, text=True,
                              timeout=30, check=False).stderr

    wait_until(lambda: "GET /v1/after-icon" in app_log(), timeout=10,
               what="the app logged the request")  # requests are logged by the app ...
    logs = app_log()
    assert "favicon.ico" not in logs  # ... and the favicon never reached it

    docker("stop", "-t", "1", app["Id"])  # every upstream container of the service stopped
    status, headers, body = get(base + "/v1/orders", accept="application/json")
    assert status == 503 and headers.get("Retry-After") == "5", (status, headers, body)
    assert json.loads(body)["error"] == "service_unavailable"
    # a browser (not /v1/) gets the HTML page (/health is the stack's health, not proxied)
    status, headers, body = get(base + "/api-docs/", accept="text/html,application/xhtml+xml")
    assert status == 503 and headers.get("Retry-After") == "5", (status, headers, body)
    assert headers["Content-Type"].startswith("text/html") and "<html" in body


def test_application_500_passes_through_unchanged(host: Host, tmp_path: Path) -> None:
    """The app's own 500 (and its JSON body) reaches the client as the app sent it."""
    _, port = edge_stack(host)
    conf = (REPO / "nginx" / "nginx.conf").read_text()
    # route /status/ like /v1/ (an operator's extra location) to reach the app's 500
    conf = swap(conf, "        location = /health {",
                "        location /status/ {\n            proxy_pass http://api-gateway;\n"
                "        }\n\n        location = /health {")
    (host.spec / "nginx.conf").write_text(conf)
    res = host.cli("apply")  # nginx.conf changed: the edge reloads it
    assert res.returncode == 0, res.stdout + res.stderr
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/v1/x")[0] == 200, timeout=15, what="the new edge")
    for accept in ("application/json", "text/html"):
        status, headers, body = get(base + "/status/500", accept=accept)
        assert status == 500, (status, body)
        assert json.loads(body) == {"service": "api-gateway", "error": "app status 500"}
        assert "Retry-After" not in headers


def test_broken_config_is_never_reloaded_and_the_edge_keeps_serving(host: Host) -> None:
    text, port = edge_stack(host)
    base = f"http://127.0.0.1:{port}"
    (edge,) = host.by_service()["nginx"]
    def workers_now() -> set[int]:
        return worker_pids(docker("exec", edge["Id"], "ps", "-o", "pid,args"))

    workers = workers_now()
    upstreams_dir = next(host.state.glob("edge/*"))
    (upstreams_dir / "zz-broken.conf").write_text("this is not nginx syntax;\n")
    served = (upstreams_dir / "upstreams.conf").read_text()
    host.write(swap(swap(text, *V2), f"{APP}:1.0", f"{APP}:2.0"))
    res = host.cli("apply")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "nginx -t failed" in res.stdout + res.stderr
    assert workers_now() == workers  # never reloaded
    assert (upstreams_dir / "upstreams.conf").read_text() == served  # the served file back
    status, _, body = get(base + "/v1/x")
    assert status == 200 and json.loads(body)["version"] == "1.0"


def test_shipped_nginx_conf_passes_nginx_t_with_the_demo_upstreams(tmp_path: Path) -> None:
    from tests.dockerkit import require_engine
    from tests.specfactory import KEY

    require_engine()
    desired = build(load(REPO / "deploy" / "demo", strict=False), KEY)
    net = desired.services["api-gateway"].networks[-1]
    gw = [Observed(id=f"g{i}", name=f"demo-api-gateway-{i}", service="api-gateway",
                   tier="business", replica=i, fingerprint="f", state=ContainerState.RUNNING,
                   health=Health.HEALTHY, image="app", addresses={net: f"172.30.0.{i + 1}"})
          for i in (1, 2)]
    for case, containers in (("healthy", gw), ("none healthy", [])):
        conf_d = tmp_path / case.replace(" ", "-")
        conf_d.mkdir()
        text = render_upstreams(desired, containers)
        (conf_d / "upstreams.conf").write_text(text)
        assert len(upstream_servers(text)["api-gateway"]) == len(containers)
        out = docker("run", "--rm", "--network", "none",
                     "-v", f"{REPO / 'nginx' / 'nginx.conf'}:/etc/nginx/nginx.conf:ro",
                     "-v", f"{conf_d}:/etc/nginx/conf.d:ro",
                     "-v", f"{tmp_path}:/var/log/nginx/edge",  # the reconciler mounts it
                     NGINX, "sh", "-c",
                     "nginx -t 2>&1", timeout=60)
        assert "test is successful" in out, (case, out)
