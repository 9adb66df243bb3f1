"""Failed requests during a deploy: `reconciler apply` vs `docker-compose up -d` (1.29).

The same service (api-gateway on reconciler-demo/app, 1.0 -> 2.0) behind the same
nginx/nginx.conf, the same load (tests/loadgen.py) through the edge's port on 127.0.0.1:

- reconciler: start-first, upstreams rendered by IP, graceful reloads, drain, then stop.
- compose: what operators run today: a static upstreams file naming the compose service
  (`server api-gateway:8080;`, resolved once when nginx starts) and `docker-compose up -d`
  after the change, which recreates the service (stop old -> create -> start new), and
  recreates nginx too when compose decides a dependency changed.

    from tests.bench.edge_compare import compare
    compare(seconds=20, max_requests=6000)   # -> {"reconciler": {...}, "compose": {...}}

or `python -m tests.bench.edge_compare [seconds] [max_requests]` (prints JSON). Needs the
demo images and docker-compose; every container, network and file it makes is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.bench.generate import static_upstreams
from tests.dockerkit import APP, NGINX, REPO, Host
from tests.loadgen import LoadResult, run_load

CONCURRENCY = 6
LIMIT_S = 120.0  # hard bound on one load run, whatever the machine's speed

SPEC = f"""
project: PROJECT
tiers: [business, external]
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 500ms,
                timeout: 5s, retries: 5, start_period: 5s}}
  update: {{min_ready: 1s, deadline: 60s, drain: 1s}}
  stop_grace_period: 5s
networks: {{edge: {{}}}}
edge: {{service: nginx, upstreams_file: /etc/nginx/conf.d/upstreams.conf}}
services:
  api-gateway:
    tier: business
    image: {APP}:TAG
    environment: {{APP_NAME: api-gateway, APP_VERSION: "TAG"}}
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

COMPOSE = f"""version: "2.4"
services:
  api-gateway:
    image: {APP}:TAG
    environment: {{APP_NAME: api-gateway, APP_VERSION: "TAG"}}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"]
      interval: 500ms
      timeout: 5s
      retries: 5
      start_period: 5s
    stop_grace_period: 5s
    restart: unless-stopped
    networks: [edge]
  nginx:
    image: {NGINX}
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro", "./conf.d:/etc/nginx/conf.d:ro"]
    ports: ["127.0.0.1:PORT:80"]
    depends_on: {{api-gateway: {{condition: service_healthy}}}}
    stop_signal: SIGQUIT
    restart: unless-stopped
    networks: [edge]
networks:
  edge: {{}}
"""

STATIC_UPSTREAMS = static_upstreams([("api-gateway", 8080)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(port: int, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/x", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing serves on 127.0.0.1:{port}")


def _under_load(port: int, action: Any, *, seconds: float,
                max_requests: int) -> tuple[LoadResult, float, str]:
    """Load for `seconds` (longer if the action takes longer: until it is done + 2 s, at most
    LIMIT_S); `action()` (blocking) runs in a thread 2 s in. (load, action s, action output)"""

    async def go() -> tuple[LoadResult, float, str]:
        stop = asyncio.Event()
        started = time.monotonic()
        task = asyncio.create_task(run_load(
            f"http://127.0.0.1:{port}/v1/orders", seconds=LIMIT_S, max_requests=max_requests,
            concurrency=CONCURRENCY, stop=stop, min_requests=min(max_requests, 2000)))
        await asyncio.sleep(2)
        t = time.monotonic()
        out = await asyncio.to_thread(action)
        took = time.monotonic() - t
        await asyncio.sleep(max(2.0, seconds - (time.monotonic() - started)))
        stop.set()
        return await task, took, out

    return asyncio.run(go())


def _figures(result: LoadResult, took: float) -> dict[str, Any]:
    return {"requests": result.total, "failed": result.failed,
            "errors_by_kind": result.errors_by_kind,
            "longest_gap_s": round(result.longest_gap_s, 3), "deploy_s": round(took, 1),
            "load_s": round(result.seconds, 1),
            "versions": result.versions_seen_in_order[:3]
            + (["..."] if len(result.versions_seen_in_order) > 6 else [])
            + result.versions_seen_in_order[3:][-3:]}


def run_reconciler(root: Path, *, seconds: float, max_requests: int) -> dict[str, Any]:
    h = Host(project=f"ec{uuid.uuid4().hex[:8]}", root=root / "reconciler")
    port = _free_port()
    spec = SPEC.replace("PORT", str(port))
    try:
        h.write(spec.replace("TAG", "1.0"))
        shutil.copy(REPO / "nginx" / "nginx.conf", h.spec / "nginx.conf")
        res = h.cli("apply")
        if res.returncode != 0:
            raise RuntimeError(f"reconciler apply failed:\n{res.stdout}{res.stderr}")
        _wait_serving(port)

        def deploy() -> str:
            h.write(spec.replace("TAG", "2.0"))
            r = h.cli("apply")
            return f"exit {r.returncode}"

        result, took, out = _under_load(port, deploy, seconds=seconds,
                                        max_requests=max_requests)
        return {**_figures(result, took), "deploy": out}
    finally:
        h.cleanup()


def _compose(directory: Path, project: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-p", project, *args], cwd=directory,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "COMPOSE_PARALLEL_LIMIT": "256"})


def run_compose(root: Path, *, seconds: float, max_requests: int) -> dict[str, Any]:
    directory = root / "compose"
    (directory / "conf.d").mkdir(parents=True)
    shutil.copy(REPO / "nginx" / "nginx.conf", directory / "nginx.conf")
    (directory / "conf.d" / "upstreams.conf").write_text(STATIC_UPSTREAMS)
    project = f"ecc{uuid.uuid4().hex[:8]}"
    port = _free_port()
    compose = COMPOSE.replace("PORT", str(port))
    try:
        (directory / "docker-compose.yml").write_text(compose.replace("TAG", "1.0"))
        res = _compose(directory, project, "up", "-d")
        if res.returncode != 0:
            raise RuntimeError(f"docker-compose up failed:\n{res.stdout}{res.stderr}")
        _wait_serving(port)

        def deploy() -> str:
            (directory / "docker-compose.yml").write_text(compose.replace("TAG", "2.0"))
            r = _compose(directory, project, "up", "-d")
            recreated = list(dict.fromkeys(ln.split()[1] for ln in r.stderr.splitlines()
                                           if ln.startswith("Recreating ")))
            return f"exit {r.returncode}, recreated {', '.join(recreated) or 'nothing'}"

        result, took, out = _under_load(port, deploy, seconds=seconds,
                                        max_requests=max_requests)
        return {**_figures(result, took), "deploy": out}
    finally:
        _compose(directory, project, "down", "-v", "--remove-orphans", "-t", "2")


def compare(seconds: float = 20.0, max_requests: int = 6000) -> dict[str, Any]:
    """One reconciler rollout and one compose recreate under the same load."""
    with tempfile.TemporaryDirectory(prefix="edge-compare-") as tmp:
        root = Path(tmp)
        return {
            "load": {"seconds": seconds, "max_requests": max_requests,
                     "concurrency": CONCURRENCY},
            "reconciler": run_reconciler(root, seconds=seconds, max_requests=max_requests),
            "compose": run_compose(root, seconds=seconds, max_requests=max_requests),
        }


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 6000
    print(json.dumps(compare(secs, cap), indent=2))
