"""Helpers for tests against the real dockerd: a unique project per test, the CLI as a
subprocess, engine facts through the docker CLI, and cleanup of exactly what a test made."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
APP = "reconciler-demo/app"
NGINX = "reconciler-demo/nginx:1.22"


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc.stdout


def require_engine() -> None:
    reason = ""
    if shutil.which("docker") is None:
        reason = "the docker CLI is not installed"
    else:
        try:
            docker("version", "--format", "{{.Server.APIVersion}}", timeout=15)
            docker("image", "inspect", f"{APP}:1.0", timeout=15)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            reason = f"{exc} (run deploy/setup.sh)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no usable Docker engine: {reason}")
        pytest.skip(f"no usable Docker engine: {reason}")


@dataclass
class Host:
    """One test's project on the real engine."""

    project: str
    root: Path  # tmp dir: spec/ and state/ live here

    @property
    def spec(self) -> Path:
        return self.root / "spec"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def write(self, text: str, name: str = "stack.yaml") -> None:
        self.spec.mkdir(parents=True, exist_ok=True)
        for old in self.spec.glob("*.yaml"):
            if old.name != name:
                old.unlink()
        (self.spec / name).write_text(textwrap.dedent(text).replace("PROJECT", self.project))

    def cli(self, *args: str, timeout: float = 240, env: dict[str, str] | None = None,
            spec: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "reconciler.cli", *args]
        if spec:
            cmd += ["--spec", str(self.spec), "--state-dir", str(self.state)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "NO_COLOR": "1", **(env or {})}, check=False)

    def containers(self, *, all_states: bool = True) -> list[dict[str, Any]]:
        ids = docker("ps", "-q", *(["-a"] if all_states else []), "--no-trunc", "--filter",
                     f"label=reconciler.project={self.project}").split()
        if not ids:
            return []
        # a container may go away between the list and the inspect (a controller is
        # repairing): inspect reports the ones that still exist and fails for the rest
        out = docker("inspect", *ids, check=False).strip()
        return list(json.loads(out)) if out else []

    def by_service(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.containers():
            out.setdefault(c["Config"]["Labels"]["reconciler.service"], []).append(c)
        return out

    def ids(self) -> dict[str, str]:
        """container name -> id, for 'nothing else changed' checks."""
        return {c["Name"].lstrip("/"): c["Id"] for c in self.containers()}

    def events(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        out = docker("events", "--since", f"{since:.3f}", "--until",
                     f"{(until or time.time()):.3f}", "--filter",
                     f"label=reconciler.project={self.project}", "--filter", "type=container",
                     "--format", "{{json .}}", timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @contextlib.contextmanager
    def watch(self, *events: str) -> Iterator[list[dict[str, Any]]]:
        """Record our containers' events live (the daemon's replay buffer holds only 256, and
        health probes fill it quickly). The list is filled when the block exits."""
        args = ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
                "--filter", f"label=reconciler.project={self.project}"]
        for ev in events or ("start", "die", "health_status", "destroy", "create"):
            args += ["--filter", f"event={ev}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # the subscription is registered before the block starts
        seen: list[dict[str, Any]] = []
        try:
            yield seen
        finally:
            time.sleep(0.3)
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            seen.extend(json.loads(line) for line in out.splitlines() if line.strip())

    def cleanup(self) -> None:
        sel = f"label=reconciler.project={self.project}"
        ids = docker("ps", "-aq", "--filter", sel, check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        nets = docker("network", "ls", "-q", "--filter", sel, check=False).split()
        if nets:
            docker("network", "rm", *nets, check=False)
        vols = docker("volume", "ls", "-q", "--filter", sel, check=False).split()
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    require_engine()
    h = Host(project=f"t{uuid.uuid4().hex[:8]}", root=tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


# A small 4-tier stack on the demo image with quick health checks. Placeholders are filled
# by str.format-free replacement in tests: IMAGE_API, ENV_API, DB_ENV etc.
STACK = f"""
project: PROJECT
defaults:
  healthcheck: {{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 2s, retries: 2, start_period: 5s}}
  update: {{min_ready: 600ms, deadline: 20s, drain: 200ms}}
  stop_grace_period: 2s
networks: {{backend: {{}}}}
volumes: {{data: {{}}}}
services:
  db:
    tier: infrastructure
    image: {APP}:1.0
    environment: {{APP_NAME: db, HEALTH_DELAY: "1"}}
    volumes: ["data:/data"]
    networks: [backend]
  auth:
    tier: core
    image: {APP}:1.0
    environment: {{APP_NAME: auth}}
    networks: [backend]
    depends_on: [db]
  api:
    tier: business
    image: {APP}:1.0
    replicas: 2
    update: {{parallelism: 2}}
    environment: {{APP_NAME: api, APP_VERSION: "1.0"}}
    networks: [backend]
    depends_on: [auth]
  web:
    tier: external
    image: {APP}:1.0
    environment: {{APP_NAME: web}}
    networks: [backend]
    depends_on: [api]
"""


def swap(text: str, old: str, new: str) -> str:
    """str.replace that fails loudly when `old` is absent (a test must change something)."""
    assert old in text, f"{old!r} not in the spec"
    return text.replace(old, new)


class Controller:
    """`reconciler run` as a subprocess, its JSON log lines collected in a file."""

    def __init__(self, h: Host, *args: str, spec: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = h.root / f"controller-{uuid.uuid4().hex[:6]}.log"
        self.args = [sys.executable, "-m", "reconciler.cli", "run", "--spec",
                     str(spec or h.spec), "--state-dir", str(h.state), *args]
        self.env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        self.fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=self.fh, stderr=subprocess.STDOUT,
                                     env=self.env)
        return self

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "text": line})
        return out

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, predicate: Any, timeout: float = 60, what: str = "",
                 after: int = 0) -> dict[str, Any]:
        """Wait for a log line (from line number `after` on) matching predicate(line)."""
        deadline = time.monotonic() + timeout
        seen = after
        while time.monotonic() < deadline:
            lines = self.lines()
            for line in lines[seen:]:
                if predicate(line):
                    return line
            seen = len(lines)
            assert self.proc is not None and self.proc.poll() is None, (
                f"controller exited ({self.proc.returncode if self.proc else '?'}):\n"
                + self.text()[-3000:])
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or predicate}:\n" + self.text()[-4000:])

    def passes(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == "pass"]

    def wait_pass(self, result: str | None = None, *, after: int = 0,
                  timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.passes()[after:]:
                if result is None or p.get("result") == result:
                    return p
            assert self.proc is not None and self.proc.poll() is None, self.text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no pass with result {result}:\n" + self.text()[-4000:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1,
               what: str = "") -> float:
    """Poll until predicate() is truthy; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()
