"""issue 15: the importer validates exactly like `validate` (profiles, host policy) and
`--profile` selects what is written; hub detection with --break-cycles; small compose files
written for each test."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.loading import load


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def compose(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project" / "compose.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


PROFILED = """
services:
  app:
    image: app:1
    restart: unless-stopped
  debug:
    image: busybox:1
    profiles: [debug]
    restart: unless-stopped
  worker:
    image: worker:1
    profiles: [jobs]
    restart: unless-stopped
"""


def test_profile_selects_what_is_written(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = compose(tmp_path, PROFILED)
    out = tmp_path / "spec"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out), "--profile",
                                "debug"], capsys)
    assert code == 0, stdout + stderr
    assert "services.worker: not written: its profiles (jobs)" in stdout
    spec = load(out, strict=False, profiles=["debug"]).spec
    assert set(spec.services) == {"app", "debug"}
    # without --profile everything is written, profiles kept for `--profile` at apply time
    out2 = tmp_path / "spec2"
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(out2)], capsys)
    assert code == 0, stdout + stderr
    assert set(load(out2, strict=False, profiles=["debug", "jobs"]).spec.services) == {
        "app", "debug", "worker"}


PRIVILEGED = """
services:
  agent:
    image: agent:1
    privileged: true
    restart: unless-stopped
"""


def test_import_validates_with_the_host_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    src = compose(tmp_path, PRIVILEGED)
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_privileged: true\n")
    os.chmod(policy, 0o644)
    monkeypatch.setenv("RECONCILER_POLICY", str(tmp_path / "absent.yaml"))
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(tmp_path / "a")],
                               capsys)
    assert code == 1 and "privileged" in stderr, stdout + stderr
    monkeypatch.setenv("RECONCILER_POLICY", str(policy))
    code, stdout, stderr = run(["import-compose", str(src), "-o", str(tmp_path / "b")],
                               capsys)
    assert code == 0, stdout + stderr
    code, stdout, stderr = run(["validate", "--no-strict", "--spec", str(tmp_path / "b")],
                               capsys)
    assert code == 0, stdout + stderr
