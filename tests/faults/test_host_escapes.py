"""A spec author must never get the host: every escape of issue 12 (names that are paths or
the host's namespaces, links out of the spec checkout, env files from anywhere, a policy that
fails open, an unkeyed fingerprint, a hostile state dir or .git/HEAD) is refused through the
real CLI with exit 1 and `file:line: key: message`, never a traceback; `apply` creates
nothing. The control: an ordinary spec still validates and applies."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dockerkit import APP, Host, swap
from tests.faults import kit

BASE = f"""\
project: PROJECT
services:
  web:
    tier: core
    image: {APP}:1.0
"""
Setup = Callable[[Path], None]


def _nothing(_: Path) -> None:
    return None


def _link(name: str, target: str) -> Setup:
    def setup(spec: Path) -> None:
        (spec / name).symlink_to(target)
    return setup


def _git_checkout(spec: Path) -> None:
    subprocess.run(["git", "init", "-q", str(spec)], check=True, timeout=30)


def _checkout_above(spec: Path) -> None:
    subprocess.run(["git", "init", "-q", str(spec.parent)], check=True, timeout=30)


def _fifo_in_conf(spec: Path) -> None:
    (spec / "conf").mkdir()
    (spec / "conf" / "app.conf").write_text("ok\n")
    os.mkfifo(spec / "conf" / "pipe")  # opened, it would hang the fingerprint forever


def _outside_env(spec: Path) -> None:
    outside = spec.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    (outside / "other.env").write_text(kit.ENV_TEXT)
    (outside / "other.env").chmod(0o600)


def _env_link(spec: Path) -> None:
    _outside_env(spec)
    (spec / "web.env").symlink_to(spec.parent / "elsewhere" / "other.env")


def _env_in_git(spec: Path) -> None:
    _git_checkout(spec)
    (spec / ".git" / "config").chmod(0o600)


def _env_loose_dir(spec: Path) -> None:
    (spec / "env").mkdir()
    (spec / "env" / "web.env").write_text(kit.ENV_TEXT)
    (spec / "env" / "web.env").chmod(0o600)
    (spec / "env").chmod(0o777)


def _env_huge(spec: Path) -> None:
    (spec / "web.env").write_text("A=1\n" * 100_000)  # 400 KB
    (spec / "web.env").chmod(0o600)


# case -> (lines under the service + top-level, setup, key path, line marker, refusal words)
ATTACKS: dict[str, tuple[str, Setup, str, str, str]] = {
    "volume-name-root": ('    volumes: ["x:/h"]\nvolumes: {x: {external: true, name: /}}\n',
                         _nothing, "volumes.x.name", "name: /}", "'/' is a path"),
    "volume-name-docker-socket": (
        '    volumes: ["x:/s"]\nvolumes: {x: {external: true, name: /var/run/docker.sock}}\n',
        _nothing, "volumes.x.name", "docker.sock}", "'/var/run/docker.sock' is a path"),
    "network-external-host": ("    networks: [h]\nnetworks: {h: {external: true, name: host}}\n",
                              _nothing, "networks.h.name", "name: host", "allow_host_namespaces"),
    "pid-container": ("    pid: container:foo\n", _nothing, "services.web.pid", "pid:",
                      "allow_host_namespaces"),
    "ipc-container": ("    ipc: container:foo\n", _nothing, "services.web.ipc", "ipc:",
                      "allow_host_namespaces"),
    "network-mode-container": ("    network_mode: container:foo\n", _nothing,
                               "services.web.network_mode", "network_mode:",
                               "allow_host_namespaces"),
    "bind-symlink-to-root": ('    volumes: ["./hostroot:/host:ro"]\n', _link("hostroot", "/"),
                             "services.web.volumes[0]", "hostroot",
                             "bind mount of / is outside the spec directory"),
    "bind-symlink-to-host-file": ('    volumes: ["./hostname:/etc/h:ro"]\n',
                                  _link("hostname", "/etc/hostname"),
                                  "services.web.volumes[0]", "hostname",
                                  "bind mount of /etc/hostname is outside"),
    "bind-symlink-to-device": ('    volumes: ["./zero:/z:ro"]\n', _link("zero", "/dev/zero"),
                               "services.web.volumes[0]", "zero", "bind mount of /dev/zero"),
    "bind-fifo-in-directory": ('    volumes: ["./conf:/conf:ro"]\n', _fifo_in_conf,
                               "services.web.volumes[0]", "conf",
                               "contains pipe, which is a FIFO"),
    "bind-dot-git": ('    volumes: ["./.git:/g:ro"]\n', _git_checkout, "services.web.volumes[0]",
                     ".git", ".git (its remote URL and credentials): never mountable"),
    "bind-checkout-holding-git": ('    volumes: ["..:/repo:ro"]\n', _checkout_above,
                                  "services.web.volumes[0]", "..:/repo",
                                  "would expose the spec repository's .git"),
    "env-file-outside": ("    env_file: [../elsewhere/other.env]\n", _outside_env,
                         "services.web.env_file[0]", "env_file",
                         "is outside the spec checkout and the host's env_file_roots "
                         "(/opt/env): not read"),
    "env-file-host-secret": ("    env_file: [/etc/shadow]\n", _nothing,
                             "services.web.env_file[0]", "env_file",
                             "env file /etc/shadow is outside the spec checkout"),
    "env-file-in-git": ("    env_file: [.git/config]\n", _env_in_git, "services.web.env_file[0]",
                        "env_file", "is inside .git: never read"),
    "env-file-loose-dir": ("    env_file: [env/web.env]\n", _env_loose_dir,
                           "services.web.env_file[0]", "env_file",
                           "is group- or world-writable"),
}
# refusals that are not keyed to a spec line (the env file itself is the location)
FILE_ATTACKS: dict[str, tuple[str, Setup, str]] = {
    "env-file-symlink": ("    env_file: [web.env]\n", _env_link,
                         "web.env: is a symlink: env files must be regular files"),
    "env-file-huge": ("    env_file: [web.env]\n", _env_huge,
                      "web.env: env file of web: is larger than 262144 bytes"),
}


def _host(tmp_path: Path) -> Host:
    return Host(project=f"t{uuid.uuid4().hex[:8]}", root=tmp_path)


def _write(h: Host, extra: str, setup: Setup) -> str:
    h.spec.mkdir(parents=True, exist_ok=True)
    text = BASE.replace("PROJECT", h.project) + extra
    (h.spec / "spec.yaml").write_text(text)
    setup(h.spec)
    return text


def _no_policy(h: Host) -> dict[str, str]:
    return {"RECONCILER_POLICY": str(h.root / "absent-policy.yaml")}


def _line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def _assert_refused(res: subprocess.CompletedProcess[str], where: str, words: str,
                    *, seconds: float | None = None) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert where in out and words in out, out
    assert kit.CANARY not in out
    if seconds is not None:
        assert seconds < 30, seconds


@pytest.mark.parametrize("case", list(ATTACKS))
def test_attack_is_refused_by_validate_and_dry_run(tmp_path: Path, case: str) -> None:
    extra, setup, key, marker, words = ATTACKS[case]
    h = _host(tmp_path)
    text = _write(h, extra, setup)
    where = f"{h.spec / 'spec.yaml'}:{_line_of(text, marker)}: {key}: "
    started = time.monotonic()
    res = kit.cli(h, "validate", env=_no_policy(h), timeout=60)
    _assert_refused(res, where, words, seconds=time.monotonic() - started)
    preview = kit.cli(h, "plan", env=_no_policy(h), timeout=60)
    if case.startswith("env-file"):
        # a preview plans without the host's secrets: the env file is reported, never read
        assert preview.returncode in (1, 2) and "Traceback" not in preview.stderr
        assert where in preview.stderr and "warning" in preview.stderr, preview.stderr
    else:
        _assert_refused(preview, where, words)
    assert not h.state.exists()  # validate and the preview write nothing


@pytest.mark.parametrize("case", list(FILE_ATTACKS))
def test_env_file_that_is_not_a_plain_small_file_is_refused(tmp_path: Path, case: str) -> None:
    extra, setup, words = FILE_ATTACKS[case]
    h = _host(tmp_path)
    _write(h, extra, setup)
    res = kit.cli(h, "validate", env=_no_policy(h), timeout=60)
    _assert_refused(res, f"{h.spec}/", words)


@pytest.mark.docker
@pytest.mark.parametrize("case", list(ATTACKS) + list(FILE_ATTACKS))
def test_attack_is_refused_by_apply_and_creates_nothing(host: Host, case: str) -> None:
    if case in ATTACKS:
        extra, setup, key, marker, words = ATTACKS[case]
        text = _write(host, extra, setup)
        where = f"{host.spec / 'spec.yaml'}:{_line_of(text, marker)}: {key}: "
    else:
        extra, setup, words = FILE_ATTACKS[case]
        _write(host, extra, setup)
        where = f"{host.spec}/"
    res = kit.cli(host, "apply", env=_no_policy(host), timeout=120)
    _assert_refused(res, where, words)
    assert host.containers() == []
    assert kit.docker_at(None, "network", "ls", "-q", "--filter",
                         f"label=reconciler.project={host.project}").split() == []


# --- the host policy fails closed ------------------------------------------------------------

PRIVILEGED = '    privileged: true\n    volumes: ["/etc:/host-etc:ro"]\n'
# policy text, policy mode -> what the refusal names
POLICIES: dict[str, tuple[str, int, str]] = {
    "no": ("allow_privileged: no\n", 0o644,
           ":1: allow_privileged: must be true or false (a YAML boolean), not 'no'"),
    "quoted-false": ('allow_privileged: "false"\n', 0o644,
                     ":1: allow_privileged: must be true or false (a YAML boolean), not 'false'"),
    "off": ("allow_privileged: off\n", 0o644, ":1: allow_privileged: must be true or false"),
    "bind-string": ("allow_bind_mounts: /srv/data\n", 0o644,
                    ":1: allow_bind_mounts: must be a list (e.g. [a, b]), not '/srv/data'"),
    "world-writable": ("allow_privileged: true\nallow_bind_mounts: [/etc]\n", 0o666,
                       ": the host policy has mode 0666: it must not be group- or "
                       "world-writable"),
}


@pytest.mark.parametrize("case", list(POLICIES))
def test_policy_that_would_fail_open_is_refused(tmp_path: Path, case: str) -> None:
    text, mode, words = POLICIES[case]
    h = _host(tmp_path)
    _write(h, PRIVILEGED, _nothing)
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    policy.chmod(mode)
    for command in ("validate", "plan"):
        res = kit.cli(h, command, env={"RECONCILER_POLICY": str(policy)}, timeout=60)
        _assert_refused(res, f"{policy}", words)
        assert "nothing dangerous is allowed" in res.stderr
    good = tmp_path / "good-policy.yaml"
    good.write_text("allow_privileged: true\nallow_bind_mounts: [/etc]\n")
    res = kit.cli(h, "validate", "--no-strict", env={"RECONCILER_POLICY": str(good)})
    assert res.returncode == 0, res.stderr  # the same spec, allowed by a well-formed policy


def test_policy_allowing_slash_is_acknowledged(tmp_path: Path) -> None:
    h = _host(tmp_path)
    _write(h, '    volumes: ["/etc:/host-etc:ro"]\n', _nothing)
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_bind_mounts: [/]\n")
    res = kit.cli(h, "validate", env={"RECONCILER_POLICY": str(policy)})
    assert res.returncode == 0, res.stderr
    assert (f"warning: {policy}:1: allow_bind_mounts: `/` allows every path of the host to be "
            "bind-mounted") in res.stderr


def test_env_file_under_env_file_roots_is_allowed(tmp_path: Path) -> None:
    h = _host(tmp_path)
    _outside_env(h.spec)
    _write(h, f"    env_file: [{tmp_path / 'elsewhere' / 'other.env'}]\n", _nothing)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"env_file_roots: [{tmp_path / 'elsewhere'}]\n")
    res = kit.cli(h, "validate", env={"RECONCILER_POLICY": str(policy)})
    assert res.returncode == 0, res.stdout + res.stderr


# --- state dir and .git/HEAD -------------------------------------------------------------------


def test_world_writable_state_dir_is_refused_by_apply(tmp_path: Path) -> None:
    h = _host(tmp_path)
    _write(h, "", _nothing)
    h.state.mkdir()
    h.state.chmod(0o777)
    res = kit.cli(h, "apply", env=_no_policy(h))
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out
    assert f"reconciler: state: the state dir {h.state} has mode 0777" in res.stderr
    assert list(h.state.iterdir()) == []  # no lock, no key was written


def test_lock_symlink_is_not_followed(tmp_path: Path) -> None:
    h = _host(tmp_path)
    _write(h, "", _nothing)
    h.state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (h.state / "lock").symlink_to(victim)
    res = kit.cli(h, "apply", env=_no_policy(h))
    assert res.returncode == 1 and "a symlink: refused" in res.stderr, res.stderr
    assert victim.read_text() == "precious\n"


def test_git_head_ref_outside_git_is_not_read(tmp_path: Path) -> None:
    h = _host(tmp_path)
    _write(h, "", _nothing)
    marker = tmp_path / "marker"
    marker.write_text("\x1b]0;0123456789abcdef0123456789abcdef01234567\n")
    _git_checkout(h.spec)
    (h.spec / ".git" / "HEAD").write_text(f"ref: {'../' * 12}{str(marker).lstrip('/')}\n")
    res = kit.cli(h, "plan", env=_no_policy(h))
    assert res.returncode == 2, res.stderr
    assert "0123456789abcdef" not in res.stdout and "\x1b]" not in res.stdout
    assert res.stdout.startswith(f'Plan for project "{h.project}"\n'), res.stdout[:200]


# --- the control: an ordinary spec still validates and applies ---------------------------------

# the suite's two-service stack (named volume, env file in the spec dir, one shared network)
# plus a bind mount of a directory inside the spec dir
ORDINARY = swap(kit.DUO, 'volumes: ["data:/data"]', 'volumes: ["data:/data", "./conf:/conf:ro"]')


@pytest.mark.docker
def test_ordinary_spec_validates_and_applies_with_a_keyed_fingerprint(host: Host) -> None:
    kit.write_stack(host, ORDINARY)
    (host.spec / "conf").mkdir()
    (host.spec / "conf" / "app.conf").write_text("setting = 1\n")
    (host.spec / "conf" / "link").symlink_to("app.conf")  # resolved in the container
    env = _no_policy(host)
    res = kit.cli(host, "validate", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = kit.cli(host, "apply", env=env, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    running = {c["Config"]["Labels"]["reconciler.service"]: c for c in host.containers()}
    assert set(running) == {"db", "web"}
    db = running["db"]
    assert f"FAULT_CANARY_SECRET={kit.CANARY}" in db["Config"]["Env"]
    binds = {m["Destination"]: m for m in db["Mounts"]}
    assert binds["/conf"]["Source"] == str((host.spec / "conf").resolve())
    assert binds["/data"]["Type"] == "volume"

    # the spec fingerprint shown (history, status) is keyed with the host key
    history = kit.cli(host, "history")
    shown = re.findall(r"\b[0-9a-f]{12}\b", history.stdout)
    assert shown, history.stdout
    fingerprint = shown[0]
    status = kit.cli(host, "status")
    assert f"spec {fingerprint}" in status.stdout, status.stdout
    content = kit.ENV_TEXT.strip()
    for unkeyed in (hashlib.sha256(content.encode()).hexdigest(),
                    hashlib.sha256(kit.ENV_TEXT.encode()).hexdigest()):
        assert fingerprint not in unkeyed
    other = host.root / "other-state"
    other.mkdir(mode=0o700)
    (other / "host.key").write_bytes(b"k" * 32)
    other_status = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--spec", str(host.spec),
         "--state-dir", str(other)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **env, "NO_COLOR": "1"})
    kit.record("status other key", other_status.stdout + other_status.stderr)
    other_fp = re.search(r"spec ([0-9a-f]{12})", other_status.stdout)
    assert other_fp is not None, other_status.stdout + other_status.stderr
    assert other_fp.group(1) != fingerprint  # another host key, another shown value

