"""`gitsync`: the spec repo cannot run code through git, and a hung git dies with its
children. Real git on temporary repositories; bounded in time, no network."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.gitsync import PullKind, clean_env, git_pull

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """(upstream work tree, the host's checkout cloned from it)."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "spec.yaml").write_text("project: a\n")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "one")
    git(tmp_path, "clone", "-q", str(upstream), "checkout")
    return upstream, tmp_path / "checkout"


def plant_hook(checkout: Path, marker: Path) -> None:
    for name in ("post-merge", "post-checkout", "reference-transaction", "pre-auto-gc"):
        hook = checkout / ".git" / "hooks" / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
        hook.chmod(0o755)


def new_commit(upstream: Path) -> str:
    (upstream / "spec.yaml").write_text("project: b\n")
    git(upstream, "commit", "-q", "-am", "two")
    return git(upstream, "rev-parse", "HEAD")


async def test_a_hook_planted_in_the_checkout_never_runs(
        repos: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream, checkout = repos
    marker = tmp_path / "hook-ran"
    plant_hook(checkout, marker)
    # the same hooks do run under a plain `git pull` (so this test can fail)
    control = tmp_path / "control"
    git(tmp_path, "clone", "-q", str(upstream), "control")
    plant_hook(control, marker)
    head = new_commit(upstream)
    git(control, "pull", "-q", "--ff-only")
    assert marker.exists()
    marker.unlink()

    monkeypatch.setenv("GIT_DIR", str(tmp_path / "nowhere"))  # the caller's GIT_* are ignored
    res = await git_pull(checkout)
    assert (res.kind, res.head) == (PullKind.OK, head), res.detail
    assert not marker.exists()
    assert (checkout / "spec.yaml").read_text() == "project: b\n"
    assert (await git_pull(checkout)).kind is PullKind.UNCHANGED


def test_git_gets_a_clean_environment() -> None:
    env = clean_env({"PATH": "/bin", "HOME": "/tmp/evil", "GIT_DIR": "/x",
                     "GIT_SSH_COMMAND": "touch /tmp/pwned", "LD_PRELOAD": "/x.so"})
    assert env["PATH"] == "/bin" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["HOME"] != "/tmp/evil"
    assert set(env) == {"PATH", "HOME", "LC_ALL", "GIT_TERMINAL_PROMPT"}


async def test_a_hung_git_is_killed_with_its_children(repos: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    _, checkout = repos
    pids = tmp_path / "pids"
    fake = tmp_path / "git"
    # answers rev-parse, hangs on pull with a child (like a stuck ssh) in its process group
    fake.write_text(f"""#!/bin/sh
case "$*" in *rev-parse*) echo abc; exit 0;; esac
sleep 300 &
echo "$$ $!" > {pids}
wait
""")
    fake.chmod(0o755)
    started = time.monotonic()
    res = await git_pull(checkout, timeout_s=0.5, git=str(fake))
    assert res.kind is PullKind.FAILED and "timed out" in res.detail
    assert time.monotonic() - started < 10
    shell, child = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in (shell, child)):
        time.sleep(0.05)
    assert not alive(shell) and not alive(child)


def alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
