"""The one field table: every `Service` field either reaches the container and changes the
fingerprint, or does not reach the container at all. A new field fails here until it is
classified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core.blueprint import container_config
from reconciler.core.desired import Desired
from reconciler.core.fields import FIELDS
from reconciler.core.specs import HostPolicy, Service
from tests.specfactory import desired_from

BASE = """
project: f
networks: {n: {ipam: {config: [{subnet: 10.9.0.0/24}]}}, m: {}}
secrets: {pw: {file: ./pw.txt}}
configs: {conf: {content: "x = 1"}}
volumes: {v: {}}
edge: {service: edge, upstreams_file: /etc/nginx/conf.d/u.conf}
services:
  db: {tier: infrastructure, image: "db:1", networks: [n]}
  edge: {tier: external, image: "edge:1", networks: [n]}
  app:
    tier: core
    image: "app:1"
    networks: [n]
    expose: {port: 8080}
"""
POLICY = HostPolicy(allow_privileged=True, allow_host_namespaces=True,
                    allow_capabilities=frozenset({"SYS_ADMIN"}), allow_sysctls=("net.",))

# field -> (YAML replacing "    expose: {port: 8080}\n" in `app`; keep expose unless testing it)
KEEP = "    expose: {port: 8080}\n"
CONTAINER_VISIBLE: dict[str, str] = {
    "image": 'KEEP    image: "app:2"\n',
    "build": "KEEP    build: ./ctx\n",  # the image becomes the built one's content name
    "pull_policy": "KEEP    pull_policy: always\n",
    "command": 'KEEP    command: ["run"]\n',
    "entrypoint": 'KEEP    entrypoint: ["/init"]\n',
    "environment": 'KEEP    environment: {A: "1"}\n',
    "env_file": "KEEP    env_file: [./app.env]\n",
    "volumes": 'KEEP    volumes: ["v:/data"]\n',
    "networks": "KEEP    networks: [n, m]\n",
    "ports": 'KEEP    ports: ["18081:80"]\n',
    "expose": "    expose: {port: 8081}\n",
    "healthcheck": 'KEEP    healthcheck: {test: ["CMD", "true"]}\n',
    "resources": "KEEP    resources: {memory: 64m}\n",
    "restart": "KEEP    restart: always\n",
    "labels": "KEEP    labels: {team: a}\n",
    "stop_grace_period": "KEEP    stop_grace_period: 20s\n",
    "stop_signal": "KEEP    stop_signal: SIGINT\n",
    "user": 'KEEP    user: "1000"\n',
    "working_dir": "KEEP    working_dir: /w\n",
    "hostname": "KEEP    hostname: h\n",
    "privileged": "KEEP    privileged: true\n",
    "network_mode": "KEEP    network_mode: none\n",
    "pid": "KEEP    pid: host\n",
    "ipc": "KEEP    ipc: host\n",
    "cap_add": "KEEP    cap_add: [SYS_ADMIN]\n",
    "shm_size": "KEEP    shm_size: 64m\n",
    "logging": "KEEP    logging: {driver: none}\n",
    "ulimits": "KEEP    ulimits: {nofile: 1024}\n",
    "init": "KEEP    init: true\n",
    "read_only": "KEEP    read_only: true\n",
    "tmpfs": "KEEP    tmpfs: [/run]\n",
    "security_opt": "KEEP    security_opt: [no-new-privileges]\n",
    "cap_drop": "KEEP    cap_drop: [NET_RAW]\n",
    "extra_hosts": 'KEEP    extra_hosts: ["h:10.0.0.1"]\n',
    "pids_limit": "KEEP    pids_limit: 100\n",
    "dns": "KEEP    dns: [10.0.0.53]\n",
    "dns_search": "KEEP    dns_search: [example.org]\n",
    "sysctls": "KEEP    sysctls: {net.core.somaxconn: 1024}\n",
    "network_aliases": "KEEP    network_aliases: {n: [www]}\n",
    "ipv4_address": "KEEP    ipv4_address: {n: 10.9.0.5}\n",
    "secrets": "KEEP    secrets: [pw]\n",
    "configs": "KEEP    configs: [{source: conf, target: /etc/app.conf, mode: '0440'}]\n",
    "kind": "    kind: job\n",  # a job has no expose; it never restarts
}
# shape the rollout or the stack, never the container
NOT_IN_CONTAINER: dict[str, str] = {
    "tier": "KEEP    tier: business\n",
    "update": "KEEP    update: {parallelism: 2, min_ready: 1s}\n",
    "replicas": "KEEP    replicas: 2\n",
    "depends_on": "KEEP    depends_on: [db]\n",
    "backup": "KEEP    backup: {volumes: true, keep: 2}\n",
    # Swarm only: part of the Swarm service's generation (core/swarm.swarm_fingerprint)
    "placement": "KEEP    placement: {constraints: [node.role==manager]}\n",
}
EXEMPT = {"profiles": "decides whether the service runs at all, not how"}


def build(tmp: Path, extra: str) -> Desired:
    text = BASE.replace(KEEP, extra.replace("KEEP", KEEP))
    for key in ("tier", "image", "networks"):  # replaced, not added
        if f"    {key}: " in extra:
            text = text.replace({"tier": '    tier: core\n', "image": '    image: "app:1"\n',
                                 "networks": "    networks: [n]\n    expose"}[key],
                                "    expose" if key == "networks" else "", 1)
    env = tmp / "app.env"
    tmp.mkdir(parents=True, exist_ok=True)
    env.write_text("SECRET_TOKEN=a-long-enough-secret-value\n")
    env.chmod(0o600)
    (tmp / "ctx").mkdir(exist_ok=True)
    (tmp / "ctx" / "Dockerfile").write_text("FROM app:1\n")
    (tmp / "pw.txt").write_text("a-long-enough-secret-value")
    (tmp / "pw.txt").chmod(0o600)
    return desired_from(tmp, text, policy=POLICY)


def body(d: Desired) -> dict[str, Any]:
    out = container_config(d.services["app"], 1)
    labels = {k: v for k, v in out["Labels"].items() if not k.startswith("reconciler.")}
    return {**out, "Labels": labels}


def test_every_service_field_is_classified() -> None:
    fields = set(Service.model_fields)
    classified = set(CONTAINER_VISIBLE) | set(NOT_IN_CONTAINER) | set(EXEMPT)
    assert fields == classified, (fields - classified, classified - fields)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Desired:
    return build(tmp_path_factory.mktemp("base"), KEEP)


@pytest.mark.parametrize("field", sorted(CONTAINER_VISIBLE))
def test_a_container_visible_change_changes_the_fingerprint(field: str, base: Desired,
                                                             tmp_path: Path) -> None:
    changed = build(tmp_path, CONTAINER_VISIBLE[field])
    assert body(changed) != body(base) or field == "pull_policy"
    assert changed.services["app"].fingerprint != base.services["app"].fingerprint


@pytest.mark.parametrize("field", sorted(NOT_IN_CONTAINER))
def test_a_rollout_only_change_leaves_container_and_fingerprint(field: str, base: Desired,
                                                                tmp_path: Path) -> None:
    changed = build(tmp_path, NOT_IN_CONTAINER[field])
    assert body(changed) == body(base)
    assert changed.services["app"].fingerprint == base.services["app"].fingerprint


def test_the_table_has_one_row_per_key() -> None:
    keys = [f.key for f in FIELDS]
    assert len(keys) == len(set(keys))
