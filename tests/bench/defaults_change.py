"""B9: one change in `defaults` under load through the edge, reconciler vs docker-compose.

A 3-tier stack (two stateful services on named volumes, a 2-replica gateway behind the
nginx edge) takes one changed key that every service inherits (an environment variable in
`defaults`; compose: the same variable in every service). Load runs through the edge's
port on 127.0.0.1 (tests/loadgen.py) while `reconciler apply` / `docker-compose up -d`
rolls it out. Reported per tool: failed requests, the longest gap between successes, and
the largest number of stateful services that were down at the same moment, from the
engine's own `die`/`start` events. Figures are reported, never asserted.

    python -m tests.bench.defaults_change [seconds] [max_requests]   # prints JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.bench import engine
from tests.bench.edge_compare import _compose, _figures, _free_port, _under_load, _wait_serving
from tests.bench.generate import static_upstreams
from tests.dockerkit import APP, NGINX, REPO, Host

STATEFUL = ("db", "cache")
# the whole rollout must run under load (a rollout of every service takes tens of seconds
# and this host sends a few hundred requests a second): the cap only bounds the loop
MAX_REQUESTS = 60000
HEALTH = ('{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 500ms, '
          'timeout: 5s, retries: 5, start_period: 5s}')

SPEC = f"""
project: PROJECT
tiers: [infrastructure, business, external]
defaults:
  environment: {{DEPLOY_REV: "REV"}}
  healthcheck: {HEALTH}
  update: {{min_ready: 1s, deadline: 60s, drain: 1s}}
  stop_grace_period: 5s
networks: {{edge: {{}}}}
volumes: {{db-data: {{}}, cache-data: {{}}}}
edge: {{service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    environment: {{APP_NAME: db}}
    volumes: ["db-data:/data"]
    networks: [edge]
  cache:
    tier: infrastructure
    image: {APP}:1.0
    environment: {{APP_NAME: cache}}
    volumes: ["cache-data:/data"]
    networks: [edge]
  api-gateway:
    tier: business
    image: {APP}:1.0
    replicas: 2
    depends_on: [db, cache]
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

_APP_SVC = """  {name}:
    image: {image}
    environment: {{APP_NAME: {name}, APP_VERSION: "1.0", DEPLOY_REV: "REV"}}
    healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"],
                  interval: 500ms, timeout: 5s, retries: 5, start_period: 5s}}
    stop_grace_period: 5s
    restart: unless-stopped
    networks: [edge]
"""

STATIC_UPSTREAMS = static_upstreams([("api-gateway", 8080)])


def compose_file() -> str:
    out = 'version: "2.4"\nservices:\n'
    for name in STATEFUL:
        out += (_APP_SVC.format(name=name, image=f"{APP}:1.0")
                + f'    volumes: ["{name}-data:/data"]\n')
    out += _APP_SVC.format(name="api-gateway", image=f"{APP}:1.0") + "    scale: 2\n" + (
        "    depends_on: {db: {condition: service_healthy}, cache: {condition: service_healthy}}\n")
    out += f"""  nginx:
    image: {NGINX}
    environment: {{DEPLOY_REV: "REV"}}
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "./conf.d:/etc/nginx/conf.d:ro"]
    ports: ["127.0.0.1:PORT:80"]
    depends_on: {{api-gateway: {{condition: service_healthy}}}}
    stop_signal: SIGQUIT
    restart: unless-stopped
    networks: [edge]
networks:
  edge: {{}}
volumes:
  db-data: {{}}
  cache-data: {{}}
"""
    return out


@contextlib.contextmanager
def _watch(label: str) -> Iterator[list[dict[str, Any]]]:
    """Record start/die events of a project live (the daemon's replay buffer holds only 256
    events, and other projects' health probes fill it in seconds)."""
    proc = subprocess.Popen(["docker", "events", "--format", "{{json .}}", "--filter",
                             "type=container", "--filter", f"label={label}", "--filter",
                             "event=start", "--filter", "event=die"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # subscribed before the block starts
    seen: list[dict[str, Any]] = []
    try:
        yield seen
    finally:
        time.sleep(0.3)
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        seen.extend(json.loads(line) for line in out.splitlines() if line.strip())


def _stateful(evts: list[dict[str, Any]], service_label: str) -> int:
    mine = [e for e in evts
            if ((e.get("Actor") or {}).get("Attributes") or {}).get(service_label) in STATEFUL]
    if not mine:
        raise RuntimeError(f"no start/die events of {STATEFUL} ({len(evts)} events of the "
                           "project): the check would prove nothing")
    return engine.max_down_together(sorted(evts, key=lambda e: int(e.get("timeNano") or 0)),
                                    STATEFUL, service_label)


def run_reconciler(root: Path, *, seconds: float, max_requests: int,
                   edge_only: bool = False, edge_config: bool = False) -> dict[str, Any]:
    """`edge_only`: the change is a container-level change of the edge alone (what an edge
    image change costs: the edge is recreated, stop-first, since it publishes a port).
    `edge_config`: the change is the edge's nginx.conf alone, replaced the way `git
    checkout` does (new file + rename): `nginx -t` and a graceful reload, no new container."""
    h = Host(project=f"dc{uuid.uuid4().hex[:8]}", root=root / "reconciler")
    port = _free_port()
    spec = SPEC.replace("PORT", str(port))
    if edge_only:
        # only the edge's own value changes (a plain "REV" would also rename DEPLOY_REV and
        # EDGE_REV, a change of every service)
        spec = spec.replace('DEPLOY_REV: "REV"', 'DEPLOY_REV: "1"').replace(
            "    stop_signal: SIGQUIT\n", "    stop_signal: SIGQUIT\n"
                                        '    environment: {EDGE_REVISION: "@REV@"}\n')

    def revision(rev: str) -> str:
        return spec.replace("@REV@", rev) if edge_only else spec.replace("REV", rev)

    try:
        h.write(revision("1"))
        shutil.copy(REPO / "nginx" / "nginx.conf", h.spec / "nginx.conf")
        res = h.cli("apply")
        if res.returncode != 0:
            raise RuntimeError(f"reconciler apply failed:\n{res.stdout}{res.stderr}")
        _wait_serving(port)

        def deploy() -> str:
            if edge_config:
                conf = h.spec / "nginx.conf"
                (h.spec / ".nginx.conf.new").write_text(conf.read_text() + "# changed\n")
                os.replace(h.spec / ".nginx.conf.new", conf)
            else:
                h.write(revision("2"))
            r = h.cli("apply")
            return f"exit {r.returncode}"

        with _watch(f"{engine.RECONCILER_LABEL}={h.project}") as evts:
            result, took, out = _under_load(port, deploy, seconds=seconds,
                                            max_requests=max_requests)
        both = 0 if edge_only or edge_config else _stateful(evts, "reconciler.service")
        return {**_figures(result, took), "deploy": out, "max_stateful_down_together": both,
                "load_covered_deploy": result.seconds >= took + 2}
    finally:
        h.cleanup()


def run_compose(root: Path, *, seconds: float, max_requests: int) -> dict[str, Any]:
    directory = root / "compose"
    (directory / "conf.d").mkdir(parents=True)
    shutil.copy(REPO / "nginx" / "nginx.conf", directory / "nginx.conf")
    (directory / "conf.d" / "upstreams.conf").write_text(STATIC_UPSTREAMS)
    project = f"dcc{uuid.uuid4().hex[:8]}"
    port = _free_port()
    compose = compose_file().replace("PORT", str(port))
    try:
        (directory / "docker-compose.yml").write_text(compose.replace("REV", "1"))
        res = _compose(directory, project, "up", "-d")
        if res.returncode != 0:
            raise RuntimeError(f"docker-compose up failed:\n{res.stdout}{res.stderr}")
        _wait_serving(port)

        def deploy() -> str:
            (directory / "docker-compose.yml").write_text(compose.replace("REV", "2"))
            r = _compose(directory, project, "up", "-d")
            return f"exit {r.returncode}"

        with _watch(f"{engine.COMPOSE_LABEL}={project}") as evts:
            result, took, out = _under_load(port, deploy, seconds=seconds,
                                            max_requests=max_requests)
        both = _stateful(evts, "com.docker.compose.service")
        return {**_figures(result, took), "deploy": out, "max_stateful_down_together": both,
                "load_covered_deploy": result.seconds >= took + 2}
    finally:
        _compose(directory, project, "down", "-v", "--remove-orphans", "-t", "2")


def compare(seconds: float = 20.0, max_requests: int = MAX_REQUESTS) -> dict[str, Any]:
    """One `defaults` change rolled out by each tool under the same load."""
    with tempfile.TemporaryDirectory(prefix="defaults-change-") as tmp:
        root = Path(tmp)
        return {
            "load": {"seconds": seconds, "max_requests": max_requests},
            "reconciler": run_reconciler(root, seconds=seconds, max_requests=max_requests),
            "compose": run_compose(root, seconds=seconds, max_requests=max_requests),
        }


def edge_recreate(seconds: float = 20.0, max_requests: int = MAX_REQUESTS) -> dict[str, Any]:
    """The gap a container-level change of the edge (its image, its environment) costs under
    load: the edge is recreated stop-first (it publishes a fixed host port)."""
    with tempfile.TemporaryDirectory(prefix="edge-recreate-") as tmp:
        return run_reconciler(Path(tmp), seconds=seconds, max_requests=max_requests,
                              edge_only=True)


def edge_reload(seconds: float = 20.0, max_requests: int = MAX_REQUESTS) -> dict[str, Any]:
    """The same load through a change of the edge's nginx.conf alone: reloaded, not
    recreated (0 failed requests expected)."""
    with tempfile.TemporaryDirectory(prefix="edge-reload-") as tmp:
        return run_reconciler(Path(tmp), seconds=seconds, max_requests=max_requests,
                              edge_config=True)


if __name__ == "__main__":
    if sys.argv[1:2] in (["edge"], ["edge-config"]):
        measure = edge_recreate if sys.argv[1] == "edge" else edge_reload
        print(json.dumps(measure(float(sys.argv[2]) if len(sys.argv) > 2 else 8.0),
                         indent=2))
        sys.exit(0)
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else MAX_REQUESTS
    print(json.dumps(compare(secs, cap), indent=2))
