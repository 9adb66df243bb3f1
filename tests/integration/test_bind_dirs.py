"""A bind source directory that does not exist yet is created at apply (0755), as compose
does; validate warns about it."""

from __future__ import annotations

import stat

import pytest

from tests.dockerkit import APP, Host

pytestmark = pytest.mark.docker


def test_missing_bind_directory_is_created_at_apply(host: Host) -> None:
    host.write(f"""
project: PROJECT
services:
  app:
    tier: business
    image: {APP}:1.0
    environment: {{APP_NAME: app}}
    volumes: ["./data/uploads:/data"]
    update: {{min_ready: 300ms, deadline: 20s}}
""")
    res = host.cli("validate")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "does not exist: it is created (empty, mode 0755)" in res.stderr
    res = host.cli("apply")
    assert res.returncode == 0, res.stdout + res.stderr
    made = host.spec / "data" / "uploads"
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o755
    res = host.cli("apply")
    assert res.returncode == 0 and "No changes" in res.stdout, res.stdout + res.stderr
