"""Secrets: the canary in every env file of this suite (tests/faults/kit.py) reaches no log line,
plan, JSON output, metric, history record, error message or container label. Every test of the
suite records what it saw and the autouse fixture checks it; this test adds the outputs the
others do not produce: a controller's logs and /metrics, `plan --json`, `status`, `history`,
and a failing rollout whose container prints the secret (the log tail must be redacted)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.dockerkit import Controller, Host
from tests.faults import kit

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_canary_never_leaves_the_env_file(host: Host) -> None:
    port = free_port()
    kit.write_stack(host, kit.DUO)
    ctl = Controller(host, "--resync", "5s", "--metrics-addr", f"127.0.0.1:{port}").start()
    try:
        ctl.wait_pass("converged", timeout=120)
        for args in (("plan", "--json"), ("plan",), ("status",), ("history",),
                     ("validate",)):
            kit.cli(host, *args)
        # a rollout whose container prints the secret and dies: the failure message carries
        # the log tail, which must be redacted
        n = len(ctl.passes())
        leaky = kit.DUO.replace(
            '    environment: {APP_NAME: web, APP_VERSION: "1"}\n',
            '    environment: {APP_NAME: web, APP_VERSION: "leaky"}\n'
            '    command: ["sh", "-c", "echo secret=$FAULT_CANARY_SECRET; '
            'echo $FAULT_CANARY_TOKEN >&2; exit 3"]\n')
        assert leaky != kit.DUO
        kit.write_stack(host, leaky)
        ctl.wait_pass("rolled_back", after=n, timeout=120)
        assert "secret=(sensitive)" in ctl.text() or "last log lines" in ctl.text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        kit.record("metrics", metrics)
        assert "reconciler_rollbacks_total" in metrics
        for args in (("plan", "--json"), ("status",), ("history",)):
            kit.cli(host, *args)
        kit.history(host.state)
        kit.record_host(host)
    finally:
        ctl.stop()
        kit.record("controller log", ctl.text())
    leaks = kit.canary_leaks()
    print(f"FIGURES secrets: {len(kit.OUTPUTS)} outputs checked, {len(leaks)} leak(s)")
    assert not leaks, leaks
