"""`reconciler run --engine swarm` on the two-node lab (tests/swarmkit.py): the loop converges
a small spec, repairs a service removed by hand and one scaled by hand (Swarm's service events
and the task poll), `status --engine swarm` names the node of every task, and /metrics carries
`reconciler_swarm_tasks{service,node,state}` and `reconciler_engine_info{engine="swarm"}`.
Runs in the `swarm` xdist group (one lab per session)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.dockerkit import wait_until
from tests.specfactory import write_spec
from tests.swarmkit import SwarmLab

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("swarm")]

SPEC = """
project: PROJECT
tiers: [infrastructure, core]
defaults:
  healthcheck: {test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 500ms,
                timeout: 2s, retries: 2}
  update: {min_ready: 500ms, deadline: 40s}
  stop_grace_period: 1s
networks: {backend: {}}
services:
  store:
    tier: infrastructure
    image: reconciler-demo/app:1.0
    environment: {APP_NAME: store, HEALTH_DELAY: "0"}
    networks: [backend]
  web:
    tier: core
    image: reconciler-demo/app:1.0
    replicas: 2
    environment: {APP_NAME: web, HEALTH_DELAY: "0"}
    networks: [backend]
    depends_on: [store]
    placement: {max_replicas_per_node: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def replicas(lab: SwarmLab, name: str) -> int | None:
    out = lab.docker("service", "inspect", name, "--format",
                     "{{.Spec.Mode.Replicated.Replicas}}", check=False).strip()
    return int(out) if out.isdigit() else None


def running(lab: SwarmLab, name: str) -> int:
    out = lab.docker("service", "ps", name, "-q", "--filter", "desired-state=running",
                     "--format", "{{.CurrentState}}", check=False)
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


def test_run_loop_repairs_drift_and_reports_nodes(swarm_lab: SwarmLab, tmp_path: Path) -> None:
    lab = swarm_lab
    project = f"r{uuid.uuid4().hex[:6]}"
    spec = write_spec(tmp_path / "spec", SPEC.replace("PROJECT", project))
    state = tmp_path / "state"
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}, **lab.env,
           "RECONCILER_SWARM_POLL": "0.25"}
    cmd = [sys.executable, "-m", "reconciler.cli", "run", "--engine", "swarm", "--spec",
           str(spec), "--state-dir", str(state), "--metrics-addr", f"127.0.0.1:{port}",
           "--resync", "60s"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.monotonic()
        wait_until(lambda: running(lab, f"{project}_web") == 2, timeout=90, interval=0.5,
                   what="the loop's first convergence")
        print(f"\n[swarm] run: first convergence in {time.monotonic() - started:.1f}s")

        status = subprocess.run([sys.executable, "-m", "reconciler.cli", "status", "--engine",
                                 "swarm", "--spec", str(spec), "--state-dir", str(state),
                                 "--json"], capture_output=True, text=True, env=env,
                                timeout=60, check=False)
        data = json.loads(status.stdout)
        assert data["engine"] == "swarm" and data["endpoint_mode"] in ("dnsrr", "vip")
        web = next(s for s in data["services"] if s["name"] == "web")
        nodes = {t["node"] for t in web["tasks"] if t["state"] == "running"}
        assert nodes == {f"{lab.name}-manager", f"{lab.name}-worker"}  # 1 per node
        assert {n["hostname"] for n in data["nodes"]} == nodes

        # a service removed by hand comes back
        lab.docker("service", "rm", f"{project}_store")
        took = wait_until(lambda: running(lab, f"{project}_store") == 1, timeout=60,
                          interval=0.5, what="the removed service back")
        print(f"[swarm] run: service removed by hand, back and running in {took:.1f}s")
        # one scaled by hand goes back to the spec's replicas
        lab.docker("service", "scale", "-d", f"{project}_web=1")
        took = wait_until(lambda: replicas(lab, f"{project}_web") == 2
                          and running(lab, f"{project}_web") == 2, timeout=60, interval=0.5,
                          what="the scaled service back at 2")
        print(f"[swarm] run: service scaled by hand, back at 2 in {took:.1f}s")

        text = ""

        def exported() -> bool:
            nonlocal text
            text = metrics(port)
            return (f'reconciler_swarm_tasks{{node="{lab.name}-worker",service="web",'
                    'state="running"}' in text and 'kind="removed"} 1.0' in text
                    and 'reconciler_service_replicas{service="web",state="running",'
                    'tier="core"} 2.0' in text)

        wait_until(exported, timeout=30, interval=0.5, what="swarm metrics")
        assert 'reconciler_engine_info{engine="swarm"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        lab.remove_project(project)
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
