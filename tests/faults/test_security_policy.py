"""Security policy: privileged containers, host namespaces, extra capabilities, the Docker
socket and host bind mounts outside the allow-list are refused at validation unless the
host's own policy file (RECONCILER_POLICY, never the spec repo) allows them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.model import SpecError
from reconciler.loading import load, load_policy
from tests.faults import kit

BASE = """\
project: shop
services:
  web:
    tier: core
    image: web:1
"""

# case -> (lines added under the service, policy YAML that allows it, words of the refusal)
TABLE = {
    "privileged": ("    privileged: true\n", "allow_privileged: true\n", "privileged"),
    "network-host": ("    network_mode: host\n", "allow_host_namespaces: true\n",
                     "network_mode"),
    "pid-host": ("    pid: host\n", "allow_host_namespaces: true\n", "pid"),
    "ipc-host": ("    ipc: host\n", "allow_host_namespaces: true\n", "ipc"),
    "cap-sys-admin": ("    cap_add: [SYS_ADMIN]\n", "allow_capabilities: [SYS_ADMIN]\n",
                      "SYS_ADMIN"),
    "docker-socket": ('    volumes: ["/var/run/docker.sock:/var/run/docker.sock"]\n',
                      "allow_docker_socket: true\n", "Docker socket"),
    "host-bind": ('    volumes: ["/etc:/host-etc:ro"]\n', "allow_bind_mounts: [/etc]\n",
                  "/etc"),
    "host-bind-escape": ('    volumes: ["../../../etc/shadow:/x:ro"]\n',
                         "allow_bind_mounts: [/etc]\n", "shadow"),
}


def spec(tmp: Path, case: str) -> Path:
    directory = tmp / "spec"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.yaml").write_text(BASE + TABLE[case][0])
    return directory


@pytest.mark.parametrize("case", list(TABLE))
def test_refused_without_policy_allowed_with_it(tmp_path: Path, case: str) -> None:
    directory = spec(tmp_path, case)
    with pytest.raises(SpecError) as err:
        load(directory, strict=False, policy=load_policy(str(tmp_path / "no-policy.yaml")))
    text = str(err.value)
    assert "host policy" in text and TABLE[case][2] in text, text
    assert f"{directory / 'spec.yaml'}:" in text  # file:line
    policy = tmp_path / "policy.yaml"
    policy.write_text(TABLE[case][1])
    if case == "host-bind-escape":  # resolved first: ../../../etc/shadow is not under /etc
        with pytest.raises(SpecError, match="outside the spec directory"):
            load(directory, strict=False, policy=load_policy(str(policy)))
        return
    loaded = load(directory, strict=False, policy=load_policy(str(policy)))
    assert "web" in loaded.spec.services
    print(f"FIGURES policy {case}: refused by default, allowed by the host policy")


def test_policy_comes_from_the_host_not_the_spec_repo(tmp_path: Path) -> None:
    directory = spec(tmp_path, "privileged")
    host_policy = tmp_path / "host-policy.yaml"
    host_policy.write_text("allow_privileged: true\n")
    only = tmp_path / "only-spec"
    run = [sys.executable, "-m", "reconciler.cli", "validate", "--no-strict", "--spec",
           str(only)]
    only.mkdir()
    (only / "spec.yaml").write_text((directory / "spec.yaml").read_text())
    (only / "policy.yml.txt").write_text("allow_privileged: true\n")  # in the repo: ignored
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_POLICY"}
    refused = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60,
                             env={**env, "RECONCILER_POLICY": str(tmp_path / "absent.yaml")})
    kit.record("validate refused", refused.stdout + refused.stderr)
    assert refused.returncode == 1 and "privileged" in refused.stderr, refused.stderr
    allowed = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60,
                             env={**env, "RECONCILER_POLICY": str(host_policy)})
    kit.record("validate allowed", allowed.stdout + allowed.stderr)
    assert allowed.returncode == 0, allowed.stderr
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text("allow_everything: true\n")
    typo = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60,
                          env={**env, "RECONCILER_POLICY": str(bad)})
    assert typo.returncode == 1 and f"{bad}:1: allow_everything: unknown key" in typo.stderr, (
        typo.stderr)
