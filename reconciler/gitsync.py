"""`git pull` of the spec checkout for `reconciler run --git-pull`, hardened: the spec repo is
written by people who must not get the host.

git runs with hooks disabled (`core.hooksPath=/dev/null`, so a hook planted in the checkout's
`.git/hooks` never runs as root), no fsmonitor command, a minimal clean environment (no
`GIT_*` or anything else from the caller; `HOME` is the running user's own home from the
password database, never `$HOME`; no terminal prompts), in its own session, and on a
timeout the whole process group is killed (git's ssh/http helpers included). Only
fast-forwards are taken: a force-pushed remote or a conflict is refused, never merged.
This module decides nothing about reconciling; it reports what the pull did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SAFE_OPTIONS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")


class PullKind(StrEnum):
    """What a pull did (the `reconciler_git_pull_total{result}` label)."""

    OK = "ok"  # new commits were fetched and checked out
    UNCHANGED = "unchanged"
    FAILED = "failed"
    NON_FAST_FORWARD = "non_fast_forward"


@dataclass(frozen=True, slots=True)
class GitPull:
    """The result of one `git pull`: what happened, the head after it, and git's output."""

    kind: PullKind
    head: str = ""
    detail: str = ""


def git_lock(spec_dir: Path) -> Path | None:
    """The index lock of the git work tree holding `spec_dir` (None when it is in none)."""
    for candidate in (spec_dir.resolve(), *spec_dir.resolve().parents):
        if (candidate / ".git").is_dir():
            return candidate / ".git" / "index.lock"
    return None


def clean_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment git gets: nothing from the caller but a sane PATH."""
    source = os.environ if environ is None else environ
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        home = "/"
    return {"PATH": source.get("PATH") or DEFAULT_PATH, "HOME": home, "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0"}


async def run_git(cwd: Path, *args: str, timeout_s: float = 60.0,
                  git: str = "git") -> tuple[int, str]:
    """Run one git command hardened as the module says; (exit code, output). A timeout
    kills git's whole process group and returns 124."""
    proc = await asyncio.create_subprocess_exec(
        git, *SAFE_OPTIONS, *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=clean_env(), start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: its pgid is its pid
        await proc.wait()
        return 124, f"git {args[0]} timed out after {timeout_s:g}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def git_pull(spec_dir: Path, *, timeout_s: float = 60.0, git: str = "git") -> GitPull:
    """`git pull --ff-only`; a force-pushed remote or a conflict is refused, never merged."""
    cwd = spec_dir.resolve()
    code, before = await run_git(cwd, "rev-parse", "HEAD", git=git)
    if code != 0:
        return GitPull(PullKind.FAILED, detail=before[-300:])
    code, out = await run_git(cwd, "pull", "--ff-only", "--quiet", timeout_s=timeout_s, git=git)
    if code != 0:
        diverged = "fast-forward" in out or "diverg" in out
        return GitPull(PullKind.NON_FAST_FORWARD if diverged else PullKind.FAILED, before,
                       out[-300:])
    _, after = await run_git(cwd, "rev-parse", "HEAD", git=git)
    return GitPull(PullKind.OK if after != before else PullKind.UNCHANGED, after)
