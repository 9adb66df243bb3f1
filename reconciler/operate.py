"""The commands operators type on a running stack: `logs`, `exec`, `restart`, and the data
behind `status --json` / `history --json`.

Shell: it talks to the engine through the `Runtime` protocol (and, for `exec`, hands the
terminal to the docker CLI), but decides nothing about what to change: `restart` asks the pure
`restarts.restart_plan` for its steps and the executor carries them out like any update. It
prints no secret: log lines are the containers' own output, printed through the CLI's safe
stream; env values are never read here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from reconciler.core.labels import project_selector
from reconciler.core.snapshots import ContainerState, Observed, parse_container
from reconciler.core.specs import parse_duration
from reconciler.runtimes import EngineError, Runtime

#: `logs` without `--tail` and without `-f` prints at most this many lines per container.
DEFAULT_TAIL = 500


class OperateError(Exception):
    """A request the stack cannot answer (no such service, no running replica...)."""


async def service_containers(runtime: Runtime, project: str, service: str) -> list[Observed]:
    """The containers of one service of `project`, by replica then name."""
    raw = await runtime.list_containers(label=project_selector(project))
    found = [c for item in raw if (c := parse_container(item)) is not None
             and c.service == service]
    if not found:
        raise OperateError(f"no containers of service {service!r} in project {project!r}")
    return sorted(found, key=lambda c: (c.replica or 0, c.name))


def parse_since(value: str, *, now: float) -> float:
    """`--since`: a duration back from now (`10m`, `1h30m`), Unix seconds, or an ISO 8601 /
    RFC 3339 time (`2026-11-30T10:00:00Z`)."""
    text = value.strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OperateError(f"--since {value!r}: expected a duration (10m), Unix seconds or "
                           "an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def prefix_of(c: Observed, width: int) -> str:
    label = f"{c.service}-{c.replica if c.replica is not None else '?'}"
    return f"{label:<{width}} | "


async def print_logs(runtime: Runtime, containers: Sequence[Observed], *, out: TextIO,
                     tail: int | None, since: float | None, follow: bool) -> None:
    """Every line of every container, prefixed `service-N | `. Without `follow`, container by
    container; with it, interleaved as they arrive until every stream ends (or Ctrl-C)."""
    width = max(len(prefix_of(c, 0)) - 3 for c in containers)

    async def one(c: Observed) -> None:
        prefix = prefix_of(c, width)
        async for line in runtime.stream_logs(c.id, tail=tail, since=since, follow=follow):
            out.write(prefix + line + "\n")
            if follow:
                out.flush()

    if follow:
        await asyncio.gather(*(one(c) for c in containers))
    else:
        for c in containers:
            await one(c)
    out.flush()


def pick_replica(containers: Sequence[Observed], replica: int | None) -> Observed:
    """The container `exec` runs in: replica N, or the first running one."""
    running = [c for c in containers if c.state is ContainerState.RUNNING]
    if replica is not None:
        chosen = [c for c in running if c.replica == replica]
        if not chosen:
            have = ", ".join(str(c.replica) for c in running) or "none"
            raise OperateError(f"replica {replica} of {containers[0].service} is not running "
                               f"(running replicas: {have})")
        return chosen[0]
    if not running:
        raise OperateError(f"{containers[0].service} has no running container")
    return running[0]


def exec_argv(container_id: str, cmd: Sequence[str], *, tty: bool,
              docker: str = "docker") -> list[str]:
    """The docker CLI command line of `reconciler exec` (stdin always attached, a TTY only
    when the operator's stdin and stdout are terminals)."""
    return [docker, "exec", "-i", *(["-t"] if tty else []), container_id, *cmd]


async def run_exec(runtime: Runtime, target: Observed, cmd: Sequence[str], *,
                   out: TextIO, isatty: Callable[[], bool]) -> int:
    """Run `cmd` in `target`; its exit code. The docker CLI (it honours DOCKER_HOST) carries
    the terminal, stdin and signals; without it, the runtime's exec (output after the end)."""
    docker = shutil.which("docker")
    if docker is not None:
        argv = exec_argv(target.id, cmd, tty=isatty(), docker=docker)
        proc = await asyncio.to_thread(subprocess.run, argv, check=False)
        return int(proc.returncode)
    result = await runtime.exec_in_container(target.id, cmd)
    out.write(result.output)
    out.flush()
    return result.exit_code


def _started_at(info: dict[str, Any]) -> float | None:
    state = info.get("State") if isinstance(info.get("State"), dict) else {}
    raw = state.get("StartedAt") if isinstance(state, dict) else None
    if not isinstance(raw, str) or raw.startswith("0001-"):
        return None
    text = raw.replace("Z", "+00:00")
    if "." in text:  # the engine writes nanoseconds; Python reads microseconds
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


async def started_times(runtime: Runtime, containers: Sequence[Observed]) -> dict[str, float]:
    """When each running container started (inspect: the list has only a human text)."""
    out: dict[str, float] = {}
    for c in containers:
        if c.state is not ContainerState.RUNNING:
            continue
        try:
            when = _started_at(await runtime.inspect_container(c.id))
        except EngineError:
            continue
        if when is not None:
            out[c.id] = when
    return out


def human_uptime(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def container_row(c: Observed, started: float | None, *, now: float) -> dict[str, Any]:
    """One container as `status --json` shows it."""
    return {"name": c.name, "replica": c.replica, "state": c.state.value,
            "health": c.health.value, "current": None,
            "started_at": started, "uptime_s": round(now - started, 1) if started else None}


def now() -> float:
    return time.time()


def is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
