"""Registry credentials as the docker CLI stores them: auths entries, credential helpers,
Hub's many names; errors never carry a secret."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from reconciler.registryauth import CredentialError, credentials_for, qualified, registry_of


def config(tmp_path: Path, data: object) -> dict[str, str]:
    (tmp_path / "config.json").write_text(json.dumps(data))
    return {"DOCKER_CONFIG": str(tmp_path), "PATH": os.environ.get("PATH", "")}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_registry_of_follows_docker_rules() -> None:
    assert registry_of("postgres:16") == "docker.io"
    assert registry_of("bitnami/redis:7") == "docker.io"
    assert registry_of("ghcr.io/metro/api:1") == "ghcr.io"
    assert registry_of("127.0.0.1:5000/demo/app:1") == "127.0.0.1:5000"
    assert registry_of("localhost/app") == "localhost"
    assert qualified("postgres:16") == "docker.io/library/postgres:16"
    assert qualified("bitnami/redis") == "docker.io/bitnami/redis"
    assert qualified("ghcr.io/a/b") == "ghcr.io/a/b"


def test_auths_entries_match_the_image_registry(tmp_path: Path) -> None:
    env = config(tmp_path, {"auths": {
        "https://ghcr.io": {"auth": b64("bot:s3cret-token")},
        "https://index.docker.io/v1/": {"username": "hubuser", "password": "hubpass"},
        "127.0.0.1:5000": {"identitytoken": "tok"}}})
    assert credentials_for("ghcr.io/metro/api:1", env=env) == {
        "username": "bot", "password": "s3cret-token", "serveraddress": "ghcr.io"}
    assert credentials_for("postgres:16", env=env) == {
        "username": "hubuser", "password": "hubpass",
        "serveraddress": "https://index.docker.io/v1/"}
    assert credentials_for("127.0.0.1:5000/x", env=env) == {
        "identitytoken": "tok", "serveraddress": "127.0.0.1:5000"}
    assert credentials_for("quay.io/other/x", env=env) is None
    assert credentials_for("x", env={"DOCKER_CONFIG": str(tmp_path / "none")}) is None


def test_credential_helpers_are_asked_per_registry(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text('#!/bin/sh\nread server\nif [ "$server" = "ghcr.io" ]; then\n'
                      '  echo \'{"ServerURL":"ghcr.io","Username":"helper-user",'
                      '"Secret":"helper-secret"}\'\nelse echo "credentials not found" >&2; '
                      'exit 1; fi\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    env = config(tmp_path, {"credHelpers": {"ghcr.io": "fake"},
                            "auths": {"quay.io": {"auth": b64("q:p")}}})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    assert credentials_for("ghcr.io/metro/api:1", env=env) == {
        "username": "helper-user", "password": "helper-secret", "serveraddress": "ghcr.io"}
    assert credentials_for("quay.io/a/b", env=env) == {
        "username": "q", "password": "p", "serveraddress": "quay.io"}
    env2 = config(tmp_path, {"credsStore": "fake"})
    env2["PATH"] = env["PATH"]
    assert credentials_for("ghcr.io/a", env=env2) is not None
    assert credentials_for("quay.io/a", env=env2) is None  # helper: not found -> anonymous
    env3 = config(tmp_path, {"credsStore": "missing-helper"})
    with pytest.raises(CredentialError, match="docker-credential-missing-helper"):
        credentials_for("ghcr.io/a", env=env3)


def test_bad_config_errors_name_the_file_not_the_value(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CredentialError, match="not valid JSON"):
        credentials_for("ghcr.io/a", env={"DOCKER_CONFIG": str(tmp_path)})
    env = config(tmp_path, {"auths": {"ghcr.io": {"auth": "!!not-base64-secretvalue"}}})
    with pytest.raises(CredentialError) as err:
        credentials_for("ghcr.io/a", env=env)
    assert "secretvalue" not in str(err.value)
