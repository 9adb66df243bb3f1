"""`reconciler --dry-run` and `validate` as a user runs them: exit codes, a plan against the
real engine that changes nothing, planning without an engine, and a secret canary that never
appears in any output, label, state file or log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dockerkit import REPO, STACK, Controller, Host, docker, swap

CANARY = "canary-7f3a9c41e2d8-do-not-print"


def engine_state(h: Host) -> str:
    """Everything the engine says about our containers, networks and volumes, except the
    health-probe log and in-flight probe execs, which the engine itself changes."""
    sel = f"label=reconciler.project={h.project}"
    containers = []
    for c in sorted(h.containers(), key=lambda c: c["Id"]):
        c["State"].pop("Health", None)
        c.pop("ExecIDs", None)  # a health probe in flight
        containers.append(c)
    parts = [json.dumps(containers, sort_keys=True),
             docker("network", "ls", "--filter", sel, "--format", "{{.ID}}"),
             docker("volume", "ls", "--filter", sel, "--format", "{{.Name}}")]
    return "\n".join(parts)


@pytest.mark.docker
def test_dry_run_shows_the_plan_and_changes_nothing(host: Host) -> None:
    host.write(STACK)
    assert host.cli("apply").returncode == 0
    foreign = f"{host.project}-foreign"
    docker("run", "-d", "--name", foreign, "reconciler-demo/app:1.0")
    try:
        in_sync = host.cli("--dry-run")
        assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
        assert "No changes" in in_sync.stdout
        host.write(swap(STACK, "replicas: 2", "replicas: 1").replace(
            "  web:\n", "  web2:\n    tier: external\n    image: reconciler-demo/app:1.0\n"
            "  web:\n"))
        before = engine_state(host)
        state_before = {str(p): p.stat().st_mtime_ns for p in host.state.rglob("*")}
        time.sleep(0.5)
        res = host.cli("--dry-run")
        assert res.returncode == 2, res.stdout + res.stderr
        lines = [ln.strip() for ln in res.stdout.splitlines()]
        assert any(ln.startswith("- api[2]") and "scaled down" in ln for ln in lines)
        assert any(ln.startswith("+ web2[1]") for ln in lines)
        assert foreign not in res.stdout
        assert res.stdout.index("Tier 1/4: infrastructure") < res.stdout.index(
            "Tier 4/4: external")
        assert lines[-1] == "Plan: 1 to create, 0 to replace, 0 to start, 1 to remove."
        as_json = host.cli("--dry-run", "--json")
        assert as_json.returncode == 2
        data = json.loads(as_json.stdout)
        assert data["summary"] == {"create": 1, "replace": 0, "start": 0, "remove": 1}
        assert engine_state(host) == before  # byte-identical: ids, states, everything
        assert {str(p): p.stat().st_mtime_ns for p in host.state.rglob("*")} == state_before
    finally:
        docker("rm", "-f", foreign, check=False)


def test_dry_run_without_an_engine_plans_against_an_empty_host(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "--dry-run", "--state-dir",
         str(tmp_path / "state")], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}, check=False)
    assert res.returncode == 2, res.stderr
    assert "no Docker engine reachable" in res.stderr
    for n, tier in enumerate(["infrastructure", "core", "business", "external"], start=1):
        assert f"Tier {n}/4: {tier}" in res.stdout
    assert not (tmp_path / "state").exists()  # a preview writes nothing


def test_dry_run_in_the_repo_root_plans_the_production_stack(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "reconciler.cli", "--dry-run", "--state-dir",
                          str(tmp_path / "s")], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "api-gateway[2]" in res.stdout
    assert "env file" in res.stderr and "warning" in res.stderr


@pytest.mark.docker
def test_secret_canary_never_appears(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    # the env file lives outside the spec (so no spec copy in the state dir holds it), in a
    # directory the host policy lists in env_file_roots
    env = host.root / "secrets" / "auth.env"
    env.parent.mkdir()
    policy = host.root / "policy.yaml"
    policy.write_text(f"env_file_roots: [{env.parent}]\n")
    monkeypatch.setenv("RECONCILER_POLICY", str(policy))
    env.write_text(f"AUTH_TOKEN_SECRET={CANARY}\nJWT_SECRET={CANARY}-{CANARY}\n")
    env.chmod(0o600)
    spec = swap(STACK, "    environment: {APP_NAME: auth}",
                f"    environment: {{APP_NAME: auth}}\n    env_file: [{env}]")
    host.write(spec)
    outputs = []
    for args in (["validate"], ["--dry-run"], ["--dry-run", "--json"], ["apply"], ["status"],
                 ["history"]):
        res = host.cli(*args)
        outputs.append(res.stdout + res.stderr)
        assert res.returncode in (0, 2), (args, res.stdout, res.stderr)
    # a changed secret shows as (sensitive), never as the value
    env.write_text(f"AUTH_TOKEN_SECRET={CANARY}-2\nJWT_SECRET={CANARY}-{CANARY}\n")
    res = host.cli("--dry-run")
    outputs.append(res.stdout + res.stderr)
    assert "(sensitive)" in res.stdout
    # error paths: a weak value and a bad spec
    env.write_text(f"AUTH_TOKEN_SECRET={CANARY}\nDB_PASSWORD=changeme\n")
    res = host.cli("validate")
    assert res.returncode == 1 and "DB_PASSWORD" in res.stderr
    outputs.append(res.stdout + res.stderr)
    env.write_text(f"AUTH_TOKEN_SECRET={CANARY}-3\nJWT_SECRET={CANARY}-{CANARY}\n")
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass(timeout=60)
    finally:
        ctl.stop()
    outputs.append(ctl.text())
    labels = json.dumps([c["Config"]["Labels"] for c in host.containers()])
    state_files = "".join(p.read_text(errors="replace") for p in host.state.rglob("*")
                          if p.is_file() and p.name != "host.key")
    for text in [*outputs, labels, state_files]:
        assert CANARY not in text
    # the value does reach the container, where it belongs
    auth = host.by_service()["auth"][0]
    assert any(e.startswith("AUTH_TOKEN_SECRET=canary") for e in auth["Config"]["Env"])
