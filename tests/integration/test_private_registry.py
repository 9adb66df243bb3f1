"""Pulls with the host's registry credentials, against a real private registry: Debian's
`docker-registry` (the distribution registry) as a host process with basic auth on a free
127.0.0.1 port (the engine treats 127.0.0.0/8 as an insecure-allowed registry: plain HTTP).

A demo image is pushed after `docker login` into a temp DOCKER_CONFIG. Without credentials the
rollout fails at the pull, with a clear error, before anything is stopped; with them it
converges. The password never appears in any output."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dockerkit import APP, Host, docker

pytestmark = pytest.mark.docker

USER, PASSWORD = "ci-bot", "pw-4b1d9e7c0a-not-printed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    htpasswd = shutil.which("htpasswd")
    if binary is None or htpasswd is None:
        pytest.skip("docker-registry / htpasswd not installed (deploy/setup.sh installs them)")
    port = free_port()
    auth = tmp_path / "htpasswd"
    auth.write_text(subprocess.run([htpasswd, "-Bbn", USER, PASSWORD], capture_output=True,
                                   text=True, check=True, timeout=30).stdout)
    conf = tmp_path / "registry.yml"
    conf.write_text(f"""version: 0.1
log: {{level: error}}
storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}
http: {{addr: "127.0.0.1:{port}"}}
auth: {{htpasswd: {{realm: test, path: {auth}}}}}
""")
    proc = subprocess.Popen([binary, "serve", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{addr}/v2/", timeout=2)  # 127.0.0.1 only
                break
            except urllib.error.HTTPError:
                break  # 401: up, asking for credentials
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.2)
        yield addr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


STACK = """
project: PROJECT
defaults:
  healthcheck: {test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms,
                timeout: 2s, retries: 2, start_period: 5s}
  update: {min_ready: 500ms, deadline: 20s}
  stop_grace_period: 2s
services:
  api: {tier: business, image: IMAGE, environment: {APP_NAME: api}}
"""


def test_pull_uses_docker_credentials_and_fails_clearly_without(
        host: Host, registry: str, tmp_path: Path) -> None:
    logged_in = tmp_path / "docker-config"
    logged_in.mkdir()
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    env = {**os.environ, "DOCKER_CONFIG": str(logged_in)}
    login = subprocess.run(["docker", "login", registry, "-u", USER, "--password-stdin"],
                           input=PASSWORD, capture_output=True, text=True, env=env,
                           timeout=60, check=False)
    assert login.returncode == 0, login.stderr
    private = f"{registry}/{host.project}/app:1.0"
    docker("tag", f"{APP}:1.0", private)
    try:
        push = subprocess.run(["docker", "push", private], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert push.returncode == 0, push.stderr
        docker("rmi", private)  # only the tag: the pull must go to the registry

        host.write(STACK.replace("IMAGE", f"{APP}:1.0"))
        first = host.cli("apply")
        assert first.returncode == 0, first.stdout + first.stderr
        before = host.ids()

        host.write(STACK.replace("IMAGE", private))
        denied = host.cli("apply", env={"DOCKER_CONFIG": str(empty)})
        out = denied.stdout + denied.stderr
        assert denied.returncode == 1, out
        assert f"no credentials for {registry}" in out, out
        assert f"docker login {registry}" in out, out
        assert host.ids() == before  # nothing stopped: the pull failed first
        assert PASSWORD not in out

        # a failed rollout quarantines its spec until the spec changes (DESIGN §4)
        host.write(STACK.replace("IMAGE", private).replace("APP_NAME: api", "APP_NAME: api2"))
        ok = host.cli("apply", env={"DOCKER_CONFIG": str(logged_in)})
        out = ok.stdout + ok.stderr
        assert ok.returncode == 0, out
        assert PASSWORD not in out
        (api,) = host.by_service()["api"]
        assert api["Config"]["Image"] == private and api["State"]["Running"]
    finally:
        docker("rmi", "-f", private, check=False)
