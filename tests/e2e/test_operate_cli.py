"""The commands operators type, against a real edge stack: `status` (names, uptime, --json),
`history --json`, `logs` (prefixed per replica, --tail, -f until Ctrl-C), `exec` (exit code
passed through) and `restart` (rolling, health-gated: 0 failed requests through the edge).

One project and one 127.0.0.1 port per test; load only to that port, bounded (tests/loadgen).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.dockerkit import Host
from tests.e2e.test_edge import CONCURRENCY, assert_zero_failures, edge_stack
from tests.loadgen import run_load

pytestmark = pytest.mark.docker


def exec_(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    """`reconciler exec` takes its options before SERVICE: everything after is the command."""
    return host.cli("exec", "--spec", str(host.spec), "--state-dir", str(host.state), *args,
                    spec=False)


def test_status_logs_exec_and_json(host: Host) -> None:
    edge_stack(host, **{"replicas: 1": "replicas: 2"})
    res = host.cli("status")
    assert res.returncode == 0, res.stdout + res.stderr
    names = [c["Name"].lstrip("/") for c in host.by_service()["api-gateway"]]
    for name in names:
        line = next(ln for ln in res.stdout.splitlines() if name in ln)
        assert " up " in line, line
    data = json.loads(host.cli("status", "--json").stdout)
    gateway = next(s for s in data["services"] if s["name"] == "api-gateway")
    assert gateway["ok"] and gateway["running"] == 2
    assert sorted(c["name"] for c in gateway["containers"]) == sorted(names)
    assert all(c["uptime_s"] >= 0 and c["current"] for c in gateway["containers"])
    history = json.loads(host.cli("history", "--json").stdout)
    assert history[-1]["result"] == "converged"

    # exec: the exit code passes through; output reaches the operator
    res = exec_(host, "api-gateway", "--", "sh", "-c", "echo from-exec; exit 7")
    assert res.returncode == 7 and "from-exec" in res.stdout, res.stdout + res.stderr
    for replica in (1, 2):
        res = exec_(host, "api-gateway", "--replica", str(replica), "--",
                       "sh", "-c", f"echo marker-{replica} > /proc/1/fd/1")
        assert res.returncode == 0, res.stdout + res.stderr
    assert exec_(host, "api-gateway", "--replica", "9", "--", "true").returncode == 1

    # logs: every replica, prefixed
    res = host.cli("logs", "api-gateway", "--tail", "50")
    assert res.returncode == 0, res.stderr
    assert any(ln.startswith("api-gateway-1 | ") and "marker-1" in ln
               for ln in res.stdout.splitlines()), res.stdout
    assert any(ln.startswith("api-gateway-2 | ") and "marker-2" in ln
               for ln in res.stdout.splitlines()), res.stdout
    assert "marker-1" not in host.cli("logs", "api-gateway", "--since", "2099-01-01T00:00:00Z"
                                      ).stdout
    res = host.cli("logs", "no-such-service")
    assert res.returncode == 1 and "no containers of service" in res.stderr

    # logs -f: follows until Ctrl-C
    cmd = [sys.executable, "-m", "reconciler.cli", "logs", "api-gateway", "-f", "--tail", "0",
           "--spec", str(host.spec), "--state-dir", str(host.state)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        time.sleep(2.0)  # connected
        exec_(host, "api-gateway", "--replica", "2", "--",
                 "sh", "-c", "echo followed-line > /proc/1/fd/1")
        time.sleep(1.0)
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "api-gateway-2 | followed-line" in out, out + err
    assert "Traceback" not in err


def test_restart_is_rolling_with_no_failed_request(host: Host) -> None:
    _, port = edge_stack(host, **{"replicas: 1": "replicas: 2"})
    before = {c["Name"]: c["Config"]["Labels"]["reconciler.fingerprint"]
              for c in host.by_service()["api-gateway"]}

    async def go() -> tuple[object, subprocess.CompletedProcess[str], float]:
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(
            f"http://127.0.0.1:{port}/v1/orders", seconds=90.0, max_requests=30000,
            concurrency=CONCURRENCY, stop=stop, min_requests=2100))
        await asyncio.sleep(2)
        started = time.monotonic()
        res = await asyncio.to_thread(host.cli, "restart", "api-gateway")
        took = time.monotonic() - started
        await asyncio.sleep(max(2.0, 21.0 - took - 2))
        stop.set()
        return await load, res, took

    result, res, took = asyncio.run(go())
    print(f"\n[restart] {result.summary()}; restart took {took:.1f}s")  # type: ignore[attr-defined]
    assert res.returncode == 0, res.stdout + res.stderr
    assert_zero_failures(result, host, res.stdout + res.stderr)  # type: ignore[arg-type]
    after = {c["Name"]: c["Config"]["Labels"]["reconciler.fingerprint"]
             for c in host.by_service()["api-gateway"]}
    assert len(after) == 2 and not set(after) & set(before)  # every replica replaced
    assert set(after.values()) == set(before.values())  # one generation: same fingerprint
    res = host.cli("apply")
    assert res.returncode == 0 and "No changes" in res.stdout, res.stdout + res.stderr
    unknown = host.cli("restart", "nope")
    assert unknown.returncode == 1 and "no service 'nope'" in unknown.stderr
