"""`reconciler run` as an operator runs it: a real dockerd, a real local git remote and
clone, the controller as a subprocess; commits, bad commits, force pushes, tampering, a cut
event stream, an invalid spec and SIGTERM mid-rollout."""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dockerkit import STACK, Controller, Host, docker, git, swap, wait_until
from tests.faults.kit import FaultProxy

pytestmark = pytest.mark.docker


def running_healthy(h: Host, service: str, count: int = 1) -> bool:
    cs = h.by_service().get(service, [])
    return len(cs) == count and all(
        c["State"]["Running"] and c["State"].get("Health", {}).get("Status") == "healthy"
        for c in cs)


@pytest.fixture
def repo(host: Host) -> Iterator[tuple[Path, Path]]:
    """(dev clone, host clone): commits are made in dev and pushed to a bare remote."""
    remote, dev, clone = host.root / "remote.git", host.root / "dev", host.root / "host"
    git(host.root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(host.root, "init", "-q", "-b", "main", str(dev))
    (dev / "spec").mkdir()
    (dev / "spec" / "stack.yaml").write_text(STACK.replace("PROJECT", host.project))
    git(dev, "add", "-A")
    git(dev, "commit", "-qm", "first")
    git(dev, "remote", "add", "origin", str(remote))
    git(dev, "push", "-q", "origin", "main")
    git(host.root, "clone", "-q", str(remote), str(clone))
    yield dev, clone


def commit(dev: Path, text: str, message: str) -> str:
    (dev / "spec" / "stack.yaml").write_text(text)
    git(dev, "commit", "-qam", message)
    git(dev, "push", "-q", "origin", "main")
    return git(dev, "rev-parse", "HEAD")


def test_git_commits_go_live_bad_ones_are_reverted_force_pushes_refused(
        host: Host, repo: tuple[Path, Path]) -> None:
    dev, clone = repo
    ctl = Controller(host, "--git-pull", "1s", "--resync", "30s",
                     spec=clone / "spec").start()
    try:
        first = ctl.wait_pass("converged", timeout=60)
        assert first["revision"] == git(clone, "rev-parse", "HEAD")[:12]
        # a good commit goes live
        text = STACK.replace("PROJECT", host.project)
        v2 = swap(text, 'APP_NAME: auth}', 'APP_NAME: auth, APP_VERSION: "2.0"}')
        t0 = time.monotonic()
        rev = commit(dev, v2, "auth 2.0")
        n = len(ctl.passes())
        live = ctl.wait_pass("converged", after=n, timeout=60)
        commit_to_live = time.monotonic() - t0
        assert live["revision"] == rev[:12]
        auth = host.by_service()["auth"][0]
        assert "APP_VERSION=2.0" in auth["Config"]["Env"]
        print(f"commit-to-live: {commit_to_live:.2f}s")
        # a bad commit is reverted and quarantined; the host stays on the good one
        before = host.ids()
        bad = swap(v2, 'APP_VERSION: "2.0"}', 'APP_VERSION: "3.0", NEVER_HEALTHY: "1"}')
        commit(dev, bad, "bad auth")
        n = len(ctl.passes())
        reverted = ctl.wait_pass("rolled_back", after=n, timeout=60)
        # the pass log carries the message's first line: the failed step and why
        assert "auth" in reverted["message"] and reverted["steps"] > 0, reverted
        assert host.ids() == before
        quarantine = json.loads((host.state / "quarantine.json").read_text())
        assert quarantine and "auth" in json.dumps(quarantine), quarantine
        # the next good commit is applied
        fixed = swap(v2, 'APP_VERSION: "2.0"}', 'APP_VERSION: "4.0"}')
        rev4 = commit(dev, fixed, "auth 4.0")
        n = len(ctl.passes())
        assert ctl.wait_pass("converged", after=n, timeout=60)["revision"] == rev4[:12]
        # a force-pushed remote is refused; the host keeps running what it has
        current = host.ids()
        git(dev, "reset", "-q", "--hard", "HEAD~2")
        (dev / "spec" / "stack.yaml").write_text(swap(text, "replicas: 2", "replicas: 3"))
        git(dev, "commit", "-qam", "rewritten history")
        git(dev, "push", "-q", "--force", "origin", "main")
        ctl.wait_for(lambda ln: ln.get("event") == "git pull failed", timeout=30,
                     what="git pull failed")
        assert git(clone, "rev-parse", "HEAD") == rev4
        time.sleep(1.5)
        assert host.ids() == current
    finally:
        ctl.stop()


@pytest.mark.parametrize("tamper", ["rm", "stop", "process-exit"])
def test_tampering_is_repaired_within_seconds(host: Host, tamper: str) -> None:
    host.write(STACK)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=60)
        wait_until(lambda: running_healthy(host, "auth"), what="auth healthy")
        victim = host.by_service()["auth"][0]["Id"]
        t0 = time.monotonic()
        if tamper == "rm":
            docker("rm", "-f", victim)
        elif tamper == "stop":
            docker("stop", "-t", "1", victim)
        else:
            docker("exec", victim, "kill", "1", check=False)  # exec dies with its container
        def repaired() -> bool:
            if not running_healthy(host, "auth"):
                return False
            return tamper != "rm" or host.by_service()["auth"][0]["Id"] != victim

        wait_until(repaired, timeout=20, what="auth repaired")
        took = time.monotonic() - t0
        assert took < 5.0, took
        print(f"{tamper}: healthy again after {took:.2f}s")
    finally:
        ctl.stop()


def test_cut_event_stream_reconnects_and_resyncs(host: Host) -> None:
    host.write(STACK)
    proxy = FaultProxy(host.root / "docker.sock").start()
    ctl = Controller(host, "--resync", "120s",
                     env={"DOCKER_HOST": f"unix://{host.root / 'docker.sock'}"}).start()
    try:
        ctl.wait_pass("converged", timeout=60)
        proxy.cut()
        ctl.wait_for(lambda ln: ln.get("event") == "event stream ended; reconnecting",
                     timeout=20, what="reconnect")
        n = len(ctl.passes())
        ctl.wait_for(lambda ln: ln.get("event") == "pass"
                     and "events-connected" in ln.get("triggers", []), timeout=20,
                     what="resync after reconnect")
        victim = host.by_service()["web"][0]["Id"]
        docker("rm", "-f", victim)
        ctl.wait_pass("converged", after=n, timeout=30)
        wait_until(lambda: running_healthy(host, "web"), what="web repaired")
    finally:
        ctl.stop()
        proxy.stop()


def test_invalid_spec_is_reported_and_nothing_touched(host: Host) -> None:
    host.write(STACK)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=60)
        before = host.ids()
        n = len(ctl.passes())
        (host.spec / "stack.yaml").write_text(
            STACK.replace("PROJECT", host.project).replace("    replicas: 2",
                                                           "    replicas: 2\n    replcas: 3"))
        bad = ctl.wait_pass("invalid_spec", after=n, timeout=30)
        assert any("stack.yaml:" in p and "services.api.replcas: unknown key" in p
                   for p in bad["problems"]), bad
        time.sleep(1)
        assert host.ids() == before
        n = len(ctl.passes())
        host.write(swap(STACK, "replicas: 2", "replicas: 3"))
        ctl.wait_pass("converged", after=n, timeout=60)
        assert len(host.by_service()["api"]) == 3
    finally:
        ctl.stop()


def test_sigterm_mid_rollout_then_restart_converges_cleanly(host: Host) -> None:
    host.write(STACK)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=60)
        host.write(swap(STACK, 'APP_NAME: db, HEALTH_DELAY: "1"}',
                        'APP_NAME: db, HEALTH_DELAY: "3"}'))
        ctl.wait_for(lambda ln: ln.get("event") == "tier-start", timeout=30, what="rollout")
        ctl.signal(signal.SIGTERM)
        assert ctl.proc is not None
        assert ctl.proc.wait(timeout=30) == 0
    finally:
        ctl.stop()
    again = Controller(host, "--resync", "60s").start()
    try:
        again.wait_pass("converged", timeout=60)
        services = host.by_service()
        assert {s: len(c) for s, c in services.items()} == {"db": 1, "auth": 1, "api": 2,
                                                             "web": 1}
        assert all(c["State"]["Running"] for cs in services.values() for c in cs)
        assert 'HEALTH_DELAY=3' in services["db"][0]["Config"]["Env"]
    finally:
        again.stop()


def test_file_write_to_pass_start_latency(host: Host) -> None:
    host.write(STACK)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=60)
        n = len(ctl.passes())
        lines = len(ctl.lines())
        t0 = time.time()
        host.write(swap(STACK, "replicas: 2", "replicas: 3"))
        line = ctl.wait_for(lambda ln: ln.get("event") == "tier-start", timeout=30, after=lines)
        started = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        latency = started.timestamp() - t0
        print(f"file-write-to-pass-start: {latency:.3f}s")
        assert 0 < latency < 10, latency  # quiet period 0.5 s + one pass's load and plan
        ctl.wait_pass("converged", after=n, timeout=60)
    finally:
        ctl.stop()
