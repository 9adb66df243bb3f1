"""Hostile input through the real CLI: one test per attack class, each asserting the exact
refusal (exit 1, `file:line: key: message`, no traceback) and, for the classes that used to
crash, hang or blow up, bounded time and memory: the CLI runs in a subprocess with a 1 GiB
address-space limit (tests/faults/hostile.py).

Before this suite: 100k nested `[` segfaulted the C loader (exit -11); a scalar alias bomb
validated and then died of MemoryError in --dry-run; a compose alias bomb ran 50 s to 1 GB;
a 3 GiB spec file was read whole; a symlink to a spec outside the spec dir and a FIFO spec
file were accepted or skipped silently; `1` and `"1"` collided silently; escapes reached the
terminal raw; import-compose wrote .env passwords into the spec, echoed them in `${X:?}`
errors and wrote through a planted symlink."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tests.dockerkit import STACK, Controller, Host
from tests.faults import hostile, kit

SECONDS = 20.0  # wall clock on a shared 2-core machine; the cases take well under 2 s
PEAK_MB = 300.0


def refused(run: hostile.Run, *expected: str) -> str:
    out = kit.record("cli", run.out)
    assert run.code == 1, run.summary() + "\n" + out
    assert "Traceback" not in out and "internal error" not in out, out
    for text in expected:
        assert text in out, out
    return out


def bounded(run: hostile.Run) -> None:
    assert run.seconds < SECONDS, run.summary()
    assert run.peak_mb < PEAK_MB, run.summary()
    print(f"FIGURES hostile: {run.summary()}")


def test_nested_brackets_100k_are_refused_not_a_segfault(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.nested_brackets(tmp_path))
    refused(run, f"error: {tmp_path}/spec/spec.yaml:2: x[0][0][0]",
            "[0]: nesting deeper than 32 levels")
    bounded(run)


@pytest.mark.parametrize("command", ["validate", "--dry-run"])
def test_scalar_alias_bomb_is_refused_before_anything_is_built(tmp_path: Path,
                                                               command: str) -> None:
    run = hostile.run_cli(hostile.scalar_alias_bomb(tmp_path, command=command))
    refused(run, f"error: {tmp_path}/spec/spec.yaml:34: services.web.labels.l27: more than "
                 "16777216 bytes of text after expanding aliases (YAML bomb?)")
    bounded(run)


def test_mapping_alias_bomb_is_refused(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.mapping_alias_bomb(tmp_path))
    refused(run, f"error: {tmp_path}/spec/spec.yaml:7: f[1]: more than 200000 values after "
                 "expanding aliases (YAML bomb?)")
    bounded(run)


def test_compose_alias_bomb_is_refused_and_nothing_written(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.compose_alias_bomb(tmp_path))
    refused(run, f"{tmp_path}/compose.yml:6: x-f[1]: more than 200000 values after expanding "
                 "aliases (YAML bomb?)", "import failed: nothing was written")
    assert not (tmp_path / "out").exists()
    bounded(run)


def test_huge_spec_file_is_refused_unread(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.huge_file(tmp_path))
    refused(run, f"error: {tmp_path}/spec/zz-huge.yaml: is larger than 1048576 bytes")
    bounded(run)


def test_spec_file_symlinked_outside_the_spec_dir_is_refused(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.symlink_outside(tmp_path))
    out = refused(run, f"error: {tmp_path}/spec/10-link.yaml: is a symlink to a file outside "
                       "the spec directory (refused)")
    assert "thief" not in out


def test_spec_file_symlinked_inside_the_spec_dir_still_loads(tmp_path: Path) -> None:
    spec = hostile.spec_dir(tmp_path, {"00-project.yaml": hostile.SERVICE})
    (spec / "parts").mkdir()
    (spec / "parts" / "more.yml").write_text("volumes: {data: {}}\n")
    (spec / "10-more.yaml").symlink_to("parts/more.yml")
    run = hostile.run_cli(["validate", "--spec", str(spec)])
    assert run.code == 0, run.out


def test_fifo_spec_file_is_refused_never_opened(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.fifo_spec(tmp_path), timeout=30)
    refused(run, f"error: {tmp_path}/spec/10-fifo.yaml: is a FIFO, not a regular file "
                 "(refused, never opened)")
    bounded(run)


def test_spec_file_symlinked_to_a_device_is_refused(tmp_path: Path) -> None:
    spec = hostile.spec_dir(tmp_path, {"00-project.yaml": hostile.SERVICE})
    (spec / "10-zero.yaml").symlink_to("/dev/zero")
    run = hostile.run_cli(["validate", "--spec", str(spec)])
    refused(run, f"error: {spec}/10-zero.yaml: is a symlink to a file outside the spec "
                 "directory (refused)")
    bounded(run)


def test_too_many_spec_files_are_refused(tmp_path: Path) -> None:
    files = {f"{i:03d}.yaml": f"volumes: {{v{i}: {{}}}}\n" for i in range(201)}
    spec = hostile.spec_dir(tmp_path, {**files, "000-project.yaml": hostile.SERVICE})
    run = hostile.run_cli(["validate", "--spec", str(spec)])
    refused(run, f"error: {spec}: 202 spec files: more than 200 *.yaml/*.yml files in one "
                 "spec directory")


def test_keys_colliding_after_string_conversion_are_an_error(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.key_collision(tmp_path))
    refused(run, f"error: {tmp_path}/spec/spec.yaml:8: services.web.labels.1: key '1' is "
                 "written twice (as different YAML types that read as the same text)")


def test_escape_sequences_in_a_tier_name_are_shown_escaped(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.escape_sequences(tmp_path),
                          env={**os.environ, "NO_COLOR": "1"})
    out = kit.record("cli", run.out)
    assert run.code in (0, 2), out  # a plan (2: changes pending)
    assert "Tier 2/2: ev\\x1b[2J\\x1b]0;owned\\x07il" in out, out
    assert "\x1b" not in out and "\x07" not in out


def test_escape_sequences_in_an_error_message_are_shown_escaped(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.escape_in_error(tmp_path))
    out = refused(run, f"error: {tmp_path}/spec/spec.yaml:6: "
                       "services.web.im\\x1b]0;owned\\x07age\\x1b[2J: unknown key")
    assert "\x1b" not in out and "\x07" not in out


def test_import_compose_moves_secrets_to_a_0600_env_file(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.compose_secret_env(tmp_path), cwd=tmp_path)
    out = kit.record("import-compose", run.out)
    assert run.code == 0, out
    assert "Traceback" not in out
    specs = tmp_path / "specs"
    for path in specs.iterdir():
        kit.record(str(path), path.read_text())  # the canary check: never in the spec
    assert (f"{tmp_path}/compose.yml:5: services.db.environment.POSTGRES_PASSWORD: looks like "
            "a secret interpolated from the environment or .env: its value is written to the "
            "service's secrets env file (0600), not into the spec") in out, out
    assert (f"{tmp_path}/compose.yml:10: services.api.environment.API_TOKEN: passed through "
            "from the environment or .env: its value is written to the service's secrets env "
            "file (0600), not into the spec") in out, out
    db, api = tmp_path / "secrets" / "db.env", tmp_path / "secrets" / "api.env"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(api.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert f"POSTGRES_PASSWORD={hostile.SECRET}\n" in db.read_text()
    assert f"API_TOKEN={hostile.SECRET}-2\n" in api.read_text()
    infra = (specs / "10-infrastructure.yaml").read_text()
    assert "env_file: [../secrets/db.env]" in infra and "POSTGRES_DB: shop" in infra
    core = (specs / "20-core.yaml").read_text()
    assert "env_file: [../secrets/api.env]" in core and "MODE: prod" in core


def test_required_variable_message_never_echoes_a_secret(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.compose_required_message(tmp_path), cwd=tmp_path)
    out = refused(run, f"{tmp_path}/compose.yml:5: services.db.environment.X: required "
                       "variable MISSING is missing a value: not set, password is $DB_PASSWORD")
    assert hostile.SECRET not in out
    assert not (tmp_path / "specs").exists()


def test_planted_symlink_at_the_temp_path_is_not_followed(tmp_path: Path) -> None:
    run = hostile.run_cli(hostile.planted_temp_symlink(tmp_path), cwd=tmp_path)
    assert run.code == 0, run.out
    assert (tmp_path / "victim.txt").read_text() == "untouched\n"
    out = tmp_path / "specs"
    for name in ("00-project.yaml", "20-core.yaml"):
        assert (out / name).is_file() and not (out / name).is_symlink()
        assert (out / f".{name}.tmp").is_symlink()  # left alone, never written through
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_planted_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    args = hostile.planted_temp_symlink(tmp_path)
    (tmp_path / "specs" / "00-project.yaml").symlink_to(tmp_path / "victim.txt")
    run = hostile.run_cli([*args, "--force"], cwd=tmp_path)
    assert run.code == 0, run.out
    assert (tmp_path / "victim.txt").read_text() == "untouched\n"
    assert not (tmp_path / "specs" / "00-project.yaml").is_symlink()


@pytest.mark.docker
def test_controller_logs_a_hostile_spec_and_keeps_running_on_the_last_one(host: Host) -> None:
    host.write(STACK)
    ctl = Controller(host, "--resync", "60s").start()
    try:
        ctl.wait_pass("converged", timeout=90)
        before = host.ids()
        n = len(ctl.passes())
        bomb = host.spec / "zz-bomb.yaml"
        bomb.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n")
        bad = ctl.wait_pass("invalid_spec", after=n, timeout=30)
        assert any(f"{bomb}:1: x[0]" in p and "nesting deeper than 32 levels" in p
                   for p in bad["problems"]), bad
        time.sleep(1)
        assert ctl.proc is not None and ctl.proc.poll() is None, ctl.text()[-3000:]
        assert host.ids() == before  # nothing touched: the host stays on the last spec
        n = len(ctl.passes())
        bomb.unlink()
        ctl.wait_pass(after=n, timeout=30)
        assert ctl.proc.poll() is None
        assert host.ids() == before
    finally:
        assert ctl.stop() in (0, -15)
