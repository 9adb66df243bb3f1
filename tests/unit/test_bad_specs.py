"""A table of bad specs, each with the exact error a user sees (file:line: key: message)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.model import SpecError
from reconciler.loading import load
from tests.specfactory import write_spec

OK = """\
project: shop
networks: {backend: {}}
services:
  db:
    tier: infrastructure
    image: db:1
    networks: [backend]
  api:
    tier: business
    image: api:1
    depends_on: [db]
"""

CASES = {
    "cycle": (OK.replace("depends_on: [db]", "depends_on: [db, auth]") + """\
  auth:
    tier: business
    image: auth:1
    depends_on: [api]
""", "spec.yaml:11: services.api.depends_on: dependency cycle: api -> auth -> api"),
    "upward_dependency": (OK.replace("    networks: [backend]\n  api", "    networks: [backend]\n"
                                     "    depends_on: [api]\n  api"),
                          "spec.yaml:8: services.db.depends_on.api: db (infrastructure) depends on "
                          "api (business): depends_on may point only to the same or an earlier "
                          "tier"),
    "unknown_key": (OK.replace("    image: api:1\n", "    image: api:1\n    imagee: x\n"),
                    "spec.yaml:11: services.api.imagee: unknown key 'imagee'"),
    "duplicate_key": (OK.replace("    image: api:1\n", "    image: api:1\n    image: api:2\n"),
                      'spec.yaml:11: found duplicate key "image"'),
    "yaml_bomb": ("project: shop\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(12)), "aliases (YAML bomb?)"),
    "bad_duration": (OK.replace("    image: api:1\n",
                                "    image: api:1\n    healthcheck: {interval: 5 seconds}\n"),
                     "spec.yaml:11: services.api.healthcheck.interval: invalid duration "
                     "'5 seconds' (use e.g. 45s, 1m30s or 300ms)"),
    "port_conflict": (OK.replace("    image: db:1\n", "    image: db:1\n    ports: ['8080:80']\n")
                      .replace("    image: api:1\n", "    image: api:1\n    ports: ['8080:81']\n"),
                      "spec.yaml:7: services.db.ports[0]: host port 8080/tcp is already "
                      "published by api"),
    "expose_without_edge": (OK.replace("    image: api:1\n",
                                       "    image: api:1\n    expose: {port: 8080}\n"),
                            "spec.yaml:11: services.api.expose: expose needs a top-level `edge`"),
    "start_first_named_volume": (OK.replace("services:", "volumes: {data: {}}\nservices:").replace(
        "    image: db:1\n",
        "    image: db:1\n    volumes: ['data:/d']\n    update: {order: start-first}\n"),
        "spec.yaml:9: services.db.update.order: start-first cannot mount a named volume "
        "(two writers on one volume)"),
    "unknown_tier": (OK.replace("tier: business", "tier: frontend"),
                     "spec.yaml:9: services.api.tier: unknown tier 'frontend' (tiers: "
                     "infrastructure, core, business, external)"),
    "privileged": (OK.replace("    image: api:1\n", "    image: api:1\n    privileged: true\n"),
                   "spec.yaml:11: services.api.privileged: privileged containers are refused "
                   "(host policy: allow_privileged)"),
    "docker_socket": (OK.replace("    image: api:1\n", "    image: api:1\n    volumes: "
                                 "['/var/run/docker.sock:/var/run/docker.sock']\n"),
                      "spec.yaml:11: services.api.volumes[0]: mounting the Docker socket is "
                      "refused (host policy: allow_docker_socket)"),
    "host_bind_mount": (OK.replace("    image: api:1\n",
                                   "    image: api:1\n    volumes: ['/etc:/host-etc:ro']\n"),
                        "spec.yaml:11: services.api.volumes[0]: bind mount of /etc is outside "
                        "the spec directory and the host's allow-list (host policy: "
                        "allow_bind_mounts)"),
    "restart_no_stays_a_string": (OK.replace("    image: api:1\n",
                                             "    image: api:1\n    restart: nope\n"),
                                  "spec.yaml:11: services.api.restart: Input should be 'no', "
                                  "'always', 'on-failure' or 'unless-stopped'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = CASES[name]
    write_spec(tmp_path / "s", text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load("s", strict=False)
    messages = [str(p).removeprefix("s/") for p in info.value.problems]
    assert any(expected in m for m in messages), messages


def test_restart_no_is_the_string_no(tmp_path: Path) -> None:
    spec = load(write_spec(tmp_path, OK.replace("image: api:1", "image: api:1\n    restart: no")),
                strict=False).spec
    assert spec.services["api"].restart.value == "no"


def test_name_defined_in_two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(tmp_path / "s", OK, "a.yaml")
    write_spec(tmp_path / "s", "services:\n  db: {tier: core, image: x}\n", "b.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load("s", strict=False)
    assert [str(p) for p in info.value.problems] == [
        "s/b.yaml:2: services.db: already defined in s/a.yaml"]


ENV_SPEC = OK.replace("    image: api:1\n", "    image: api:1\n    env_file: [api.env]\n")


def env_case(tmp_path: Path, content: str, *, mode: int = 0o600, link: bool = False) -> list[str]:
    d = write_spec(tmp_path / "s", ENV_SPEC)
    target = tmp_path / "real.env" if link else d / "api.env"
    target.write_text(content)
    os.chmod(target, mode)
    if link:
        (d / "api.env").symlink_to(target)
    with pytest.raises(SpecError) as info:
        load(d, strict=True)
    return [str(p).replace(str(d) + "/", "") for p in info.value.problems]


def test_weak_password(tmp_path: Path) -> None:
    assert env_case(tmp_path, "API_DB_PASSWORD=changeme\n") == [
        "api.env:1: API_DB_PASSWORD: empty, default or weak value: set a strong secret"]


def test_env_file_too_open(tmp_path: Path) -> None:
    assert env_case(tmp_path, "API_KEY=8f3a9c1d2e7b4a6f0c5d\n", mode=0o644) == [
        "api.env: mode 0644 is too open: use 0600 or stricter"]


def test_short_jwt_secret(tmp_path: Path) -> None:
    assert env_case(tmp_path, "JWT_SECRET=tooshort-but-random-9x\n") == [
        "api.env:1: JWT_SECRET: JWT secret shorter than 32 characters"]


def test_symlinked_env_file(tmp_path: Path) -> None:
    assert env_case(tmp_path, "API_KEY=8f3a9c1d2e7b4a6f0c5d\n", link=True) == [
        "api.env: is a symlink: env files must be regular files"]


def test_missing_env_file_is_an_error_when_strict_and_a_warning_otherwise(
        tmp_path: Path) -> None:
    d = write_spec(tmp_path / "s", ENV_SPEC)
    with pytest.raises(SpecError) as info:
        load(d, strict=True)
    assert "file not found" in str(info.value)
    loaded = load(d, strict=False)
    assert [p.warning for p in loaded.warnings] == [True]
    assert loaded.unknown_env


def test_database_passwords_unique_across_services(tmp_path: Path) -> None:
    text = ENV_SPEC.replace("    image: db:1\n", "    image: db:1\n    env_file: [db.env]\n")
    d = write_spec(tmp_path / "s", text)
    for name, key in (("api.env", "ORDERS_DB_PASSWORD"), ("db.env", "AUTH_DB_PASSWORD")):
        (d / name).write_text(f"{key}=Zq8-shared-but-long-value-91xk\n")
        os.chmod(d / name, 0o600)
    with pytest.raises(SpecError) as info:
        load(d, strict=True)
    text = str(info.value)
    assert "ORDERS_DB_PASSWORD: database password is the same as AUTH_DB_PASSWORD (db)" in text
    assert "Zq8-shared" not in text
