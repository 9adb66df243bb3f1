"""Secrets and configs, `network_mode: service:X` and static addresses on the real engine."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.dockerkit import APP, Host, docker

pytestmark = pytest.mark.docker

HEALTH = ('{test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/health"], interval: 300ms, '
          "timeout: 2s, retries: 2, start_period: 5s}")


def _exec(host: Host, service: str, script: str) -> tuple[int, str]:
    res = host.cli("exec", "--spec", str(host.spec), "--state-dir", str(host.state), service,
                   "--", "sh", "-c", script, spec=False)
    return res.returncode, res.stdout + res.stderr


def _all_text(root: Path, *, skip: str) -> str:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != skip]
        for name in filenames:
            try:
                out.append(Path(dirpath, name).read_bytes().decode("utf-8", "replace"))
            except OSError:
                continue
    return "\n".join(out)


def test_secret_is_a_read_only_file_never_shown_and_a_change_rolls(host: Host) -> None:
    value = f"s3cret-{uuid.uuid4().hex}"
    secret = host.spec / "db_password.txt"
    host.write(f"""
project: PROJECT
secrets:
  db_pw: {{file: ./db_password.txt}}
configs:
  app_conf: {{content: "greeting = hello\\n"}}
services:
  app:
    tier: business
    image: {APP}:1.0
    environment: {{APP_NAME: app}}
    healthcheck: {HEALTH}
    update: {{min_ready: 300ms, deadline: 20s}}
    secrets: [{{source: db_pw, target: x, mode: "0440"}}]
    configs: [{{source: app_conf, target: /etc/app.conf}}]
""")
    secret.write_text(value)
    secret.chmod(0o600)

    res = host.cli("--dry-run")
    assert res.returncode == 2, res.stdout + res.stderr  # 2: changes pending
    assert value not in res.stdout + res.stderr
    res = host.cli("--dry-run", "--json")
    assert value not in res.stdout + res.stderr
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    assert value not in res.stdout + res.stderr

    code, out = _exec(host, "app", "cat /run/secrets/x; echo; stat -c '%a' /run/secrets/x "
                                   "/etc/app.conf; cat /etc/app.conf")
    assert code == 0, out
    assert out.splitlines()[:4] == [value, "440", "444", "greeting = hello"]
    code, out = _exec(host, "app", "echo x > /run/secrets/x")
    assert code != 0  # mounted read-only
    (first,) = host.containers()
    inspected = docker("inspect", first["Id"])
    assert value not in inspected
    assert value not in json.dumps(first["Config"]["Env"])
    assert value not in _all_text(host.state, skip="files")

    value2 = f"s3cret-{uuid.uuid4().hex}"
    secret.write_text(value2)
    res = host.cli("--dry-run")
    assert res.returncode == 2 and "replace" in res.stdout, res.stdout + res.stderr
    assert value2 not in res.stdout + res.stderr and value not in res.stdout
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    (second,) = host.containers()
    assert second["Id"] != first["Id"]
    code, out = _exec(host, "app", "cat /run/secrets/x")
    assert code == 0 and out.strip() == value2, out
    res = host.cli("apply")
    assert res.returncode == 0 and "No changes" in res.stdout, res.stdout + res.stderr
    # the old generation's files are pruned once no container uses them
    kept = sorted(os.listdir(host.state / "files" / host.project))
    assert kept == [f"app-{second['Config']['Labels']['reconciler.fingerprint']}"]


def test_network_mode_service_shares_the_namespace_and_follows_a_replacement(
        host: Host) -> None:
    spec = f"""
project: PROJECT
networks: {{back: {{}}}}
services:
  web:
    tier: core
    image: {APP}:1.0
    environment: {{APP_NAME: web, VERSION: "1"}}
    networks: [back]
    healthcheck: {HEALTH}
    update: {{min_ready: 300ms, deadline: 20s}}
  sidecar:
    tier: business
    image: {APP}:1.0
    entrypoint: ["sleep", "3600"]
    network_mode: "service:web"
    healthcheck: {HEALTH}
    update: {{min_ready: 300ms, deadline: 20s}}
"""
    host.write(spec)
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    # web's port answers on the sidecar's own loopback: one network namespace
    code, out = _exec(host, "sidecar", "wget -qO- http://127.0.0.1:8080/health")
    assert code == 0, out
    before = {s: c[0]["Id"] for s, c in host.by_service().items()}
    sidecar = host.by_service()["sidecar"][0]
    assert sidecar["HostConfig"]["NetworkMode"] == f"container:{before['web']}"

    host.write(spec.replace('VERSION: "1"', 'VERSION: "2"'))
    res = host.cli("--dry-run")
    assert "sidecar" in res.stdout and "network_of" in res.stdout, res.stdout
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    after = {s: c[0]["Id"] for s, c in host.by_service().items()}
    assert after["web"] != before["web"] and after["sidecar"] != before["sidecar"]
    sidecar = host.by_service()["sidecar"][0]
    assert sidecar["HostConfig"]["NetworkMode"] == f"container:{after['web']}"
    code, out = _exec(host, "sidecar", "wget -qO- http://127.0.0.1:8080/health")
    assert code == 0, out
    res = host.cli("apply")  # the engine's list shows the joined id the planner expects
    assert res.returncode == 0 and "No changes" in res.stdout, res.stdout + res.stderr


def test_static_ipv4_address_is_applied(host: Host) -> None:
    third = 100 + int(uuid.uuid4().hex[:2], 16) % 100  # a subnet unlikely to be taken
    host.write(f"""
project: PROJECT
networks:
  back:
    ipam: {{config: [{{subnet: 10.{third}.7.0/24}}]}}
services:
  app:
    tier: business
    image: {APP}:1.0
    environment: {{APP_NAME: app}}
    networks: [back]
    ipv4_address: {{back: 10.{third}.7.42}}
    healthcheck: {HEALTH}
    update: {{min_ready: 300ms, deadline: 20s}}
""")
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    (c,) = host.containers()
    (net,) = c["NetworkSettings"]["Networks"].values()
    assert net["IPAddress"] == f"10.{third}.7.42"
    ipam = json.loads(docker("network", "inspect", f"{host.project}_back"))[0]["IPAM"]
    assert ipam["Config"][0]["Subnet"] == f"10.{third}.7.0/24"
