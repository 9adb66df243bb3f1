"""`--engine swarm` on the command line, without an engine: validate refuses what Swarm
cannot do (file:line, how to write it), the spec's `engine: swarm` selects the engine, and a
preview without a reachable manager plans against an empty cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from tests.specfactory import write_spec

SPEC = """
project: swcli
{engine}
networks: {{edge: {{}}}}
services:
  web:
    tier: core
    image: "web:1"
    networks: [edge]
    ports: ["{port}"]
    placement: {{constraints: ["node.role==manager"]}}
"""


def spec(tmp_path: Path, *, port: str = "8080:80", engine: str = "") -> Path:
    return write_spec(tmp_path / "spec", SPEC.format(port=port, engine=engine))


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    monkeypatch.setenv("RECONCILER_ENGINE_TIMEOUT", "2")


def test_validate_refuses_a_port_bound_to_one_address_and_says_how(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = spec(tmp_path, port="127.0.0.1:8080:80")
    assert main(["validate", "--spec", str(d), "--no-strict"]) == 0  # fine on one host
    assert main(["validate", "--spec", str(d), "--no-strict", "--engine", "swarm"]) == 1
    err = capsys.readouterr().err
    assert "spec.yaml:10: services.web.ports[0]" in err
    assert "'8080:80'" in err and "host mode" in err and "node.hostname==" in err


def test_the_spec_can_choose_swarm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = spec(tmp_path, port="127.0.0.1:8080:80", engine="engine: swarm")
    assert main(["validate", "--spec", str(d), "--no-strict"]) == 1
    assert "binds one host address" in capsys.readouterr().err
    # --engine wins over the spec
    assert main(["validate", "--spec", str(d), "--no-strict", "--engine", "docker"]) == 0


def test_preview_without_a_manager_plans_against_an_empty_cluster(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = spec(tmp_path)
    rc = main(["--dry-run", "--spec", str(d), "--state-dir", str(tmp_path / "st"),
               "--engine", "swarm"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "planning against an empty cluster" in err
    assert "+ network swcli_edge" in out and "+ web  swcli_web" in out
    assert "note: engine swarm" in out
    assert not (tmp_path / "st").exists()  # a preview writes nothing


def test_apply_without_a_manager_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = spec(tmp_path)
    rc = main(["apply", "--spec", str(d), "--state-dir", str(tmp_path / "st"),
               "--engine", "swarm"])
    err = capsys.readouterr().err
    assert rc == 1 and "reconciler: engine:" in err and "Traceback" not in err
