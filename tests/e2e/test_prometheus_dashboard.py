"""A real Prometheus scrapes a real `reconciler run` on the demo stack through a converge, a
drift repair, a failed rollout that reverts and a return to the good spec; then every PromQL
expression of the dashboard and of the alert rules is evaluated through Prometheus's HTTP API:
each must parse, and each dashboard query must return data. Also: `promtool check metrics` on
the real /metrics, and a secret canary from an env file appears in neither /metrics nor the
controller's output."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dockerkit import STACK, Host, docker, swap
from tests.monitoring import (
    alert_rules,
    dashboard,
    dashboard_queries,
    promtool,
    substitute,
    tool,
)

pytestmark = pytest.mark.docker

CANARY = "canary-7f3a9c-do-not-print"
JOB = "reconciler"


def free_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range (32768-60999): a port
    from that range can be taken again, before the controller binds it, as the source port
    of one of the many connections the parallel tests' load generators open."""
    for _ in range(200):
        candidate = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port in 20000-32000 on 127.0.0.1")


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # 127.0.0.1 only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_for(what: str, check: Callable[[], bool], *, timeout: float,
              proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Running]]:
    """Start Prometheus on 127.0.0.1 scraping the given port every second."""
    binary = tool("prometheus")
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Running:
        port = free_port()
        root = tmp_path / "prometheus"
        (root / "data").mkdir(parents=True)
        config = root / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""\
            global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
            scrape_configs:
              - job_name: {JOB}
                static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
            """))
        log = root / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
                 "--query.lookback-delta=30s"],
                stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for("Prometheus to be ready", lambda: http_get(f"{base}/-/ready")[0] == 200,
                 timeout=30, proc=proc, log=log)
        return Running(proc, log, base)

    try:
        yield start
    finally:
        for proc in started:
            stop(proc)


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url, timeout=10)
    data: dict[str, Any] = json.loads(body) if body else {"status": "error", "error": status}
    return data


def samples(body: str) -> list[tuple[str, dict[str, str], float]]:
    return [(x.name, dict(x.labels), float(x.value))
            for fam in text_string_to_metric_families(body) for x in fam.samples]


def metric(body: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`, or None."""
    for sample, have, value in samples(body):
        if sample == name and labels.items() <= have.items():
            return value
    return None


def total(body: str, name: str) -> float:
    return sum(value for sample, _, value in samples(body) if sample == name)


def test_dashboard_and_alerts_against_a_real_prometheus(
    host: Host, prometheus: Callable[[int], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    tool("promtool")
    env_file = host.root / "env" / "auth.env"
    env_file.parent.mkdir()
    policy = host.root / "policy.yaml"  # env files outside the spec: listed by the host
    policy.write_text(f"env_file_roots: [{env_file.parent}]\n")
    monkeypatch.setenv("RECONCILER_POLICY", str(policy))
    env_file.write_text(f"CANARY_SECRET={CANARY}\n")
    env_file.chmod(0o600)
    good = swap(STACK, "deadline: 20s", "deadline: 8s")
    good = swap(good, "    environment: {APP_NAME: auth}",
                f"    env_file: [{env_file}]\n    environment: {{APP_NAME: auth}}")
    host.write(good)

    port = free_port()
    prom = prometheus(port)
    log = host.root / "controller.log"
    with log.open("wb") as out:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--spec", str(host.spec),
             "--state-dir", str(host.state), "--metrics-addr", f"127.0.0.1:{port}",
             "--resync", "2s"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    base = f"http://127.0.0.1:{port}"
    scraped: list[str] = []

    def scrape() -> str:
        status, body = http_get(f"{base}/metrics")
        if status == 200:
            scraped.append(body)
        return body if status == 200 else ""

    try:
        # 1. converge
        wait_for("the first converge", lambda: metric(scrape(), "reconciler_converged") == 1.0,
                 timeout=60, proc=ctl, log=log)
        assert http_get(f"{base}/readyz")[0] == 200
        assert http_get(f"{base}/healthz")[0] == 200

        # 2. drift: a managed container removed behind the controller's back
        api = host.by_service()["api"][0]
        docker("rm", "-f", api["Id"])
        wait_for("the drift repair", lambda: (metric(scrape(), "reconciler_drift_total",
                                                     kind="removed") or 0) >= 1,
                 timeout=30, proc=ctl, log=log)

        # 3. a rollout that never gets healthy: reverted, quarantined
        host.write(swap(good, 'APP_VERSION: "1.0"}', 'APP_VERSION: "2.0", NEVER_HEALTHY: "1"}'))
        wait_for("the revert", lambda: total(scrape(), "reconciler_rollbacks_total") >= 1,
                 timeout=45, proc=ctl, log=log)
        body = scrape()
        assert metric(body, "reconciler_quarantined_revisions") == 1.0
        assert metric(body, "reconciler_reconcile_total", result="rolled_back") == 1.0

        # 4. back to the good spec: converged again
        host.write(good)
        wait_for("converged on the good spec again",
                 lambda: metric(scrape(), "reconciler_converged") == 1.0,
                 timeout=30, proc=ctl, log=log)
        time.sleep(3)  # a few more scrapes of the final state

        # the real exposition: promtool has no findings, the canary is not in it
        body = scrape()
        check = promtool("check", "metrics", stdin=body.encode())
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            check.stdout + check.stderr)
        for text in scraped:
            assert CANARY not in text

        # every dashboard query returns data, every alert expression parses
        instance = f"127.0.0.1:{port}"
        up = query(prom.base, f'up{{job="{JOB}"}}')
        assert up["status"] == "success" and up["data"]["result"], up
        assert up["data"]["result"][0]["metric"]["instance"] == instance
        failures: list[str] = []
        evaluated = with_data = 0
        for where, expr in dashboard_queries(dashboard()):
            res = query(prom.base, substitute(expr, job=JOB, instance=instance))
            evaluated += 1
            if res.get("status") != "success":
                failures.append(f"{where}: {res.get('error')}: {expr}")
            elif not res["data"]["result"]:
                failures.append(f"{where}: no data: {expr}")
            else:
                with_data += 1
        parsed = 0
        firing: dict[str, list[dict[str, str]]] = {}
        for rule in alert_rules():
            res = query(prom.base, rule["expr"])
            if res.get("status") != "success":
                failures.append(f"alert {rule.get('alert')}: {res.get('error')}")
                continue
            parsed += 1
            firing[rule.get("alert", "")] = [r["metric"] for r in res["data"]["result"]]
        print(f"dashboard queries: {evaluated} evaluated, {with_data} with data; "
              f"alert expressions: {parsed} parsed")
        assert not failures, "\n".join(failures)
        # the alert conditions say what happened (before any `for:`)
        reasons = {r.get("reason") for r in firing["ReconcilerRolloutReverted"]}
        assert reasons and reasons <= {"health_gate", "deadline", "crash_loop"}, firing
        assert firing["ReconcilerRevisionQuarantined"], firing
        assert not firing["ReconcilerDown"], firing
        assert not firing["ReconcilerStuck"], firing
        assert not firing["ReconcilerConvergenceFailing"], firing
    finally:
        stop(ctl)
    output = log.read_text(errors="replace")
    assert CANARY not in output, "the canary secret leaked into the controller's output"
    assert ctl.returncode == 0, output[-3000:]
    assert time.monotonic() - started < 120
