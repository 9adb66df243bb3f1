"""Health verdicts for the executor's gates. Pure: observations and times in, verdict out.

A replica passes when it is running and Docker reports `healthy` (or, without a healthcheck,
it simply runs) continuously for `min_ready`; it fails early on exit, OOM kill, a restart
count above the baseline, or `unhealthy`; `deadline` bounds the wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Probe:
    """What one inspect said about a container."""

    status: str  # running, exited, restarting, created, paused, dead, removing
    health: str  # none, starting, healthy, unhealthy
    restart_count: int
    exit_code: int
    oom_killed: bool

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> Probe:
        state = data.get("State") or {}
        health = (state.get("Health") or {}).get("Status") or "none"
        return cls(
            status=str(state.get("Status") or "dead"),
            health=str(health),
            restart_count=int(data.get("RestartCount") or 0),
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
        )


@dataclass(frozen=True, slots=True)
class Gate:
    started_at: float
    min_ready: float
    deadline: float
    baseline_restarts: int = 0
    ready_since: float | None = None


def judge(gate: Gate, probe: Probe, now: float) -> tuple[Verdict, Gate, str]:
    """One step of the gate. Returns the verdict, the gate to carry on with, and a reason."""
    if probe.oom_killed:
        return Verdict.FAILED, gate, "killed by the kernel (out of memory)"
    if probe.status in ("exited", "dead"):
        return Verdict.FAILED, gate, f"exited with code {probe.exit_code}"
    if probe.status == "restarting":
        return Verdict.FAILED, gate, (f"exited with code {probe.exit_code} and is being "
                                      "restarted (crash loop)")
    if probe.restart_count > gate.baseline_restarts:
        return Verdict.FAILED, gate, (f"restarted {probe.restart_count - gate.baseline_restarts}"
                                      " time(s) (crash loop)")
    if probe.health == "unhealthy":
        return Verdict.FAILED, gate, "health check reports unhealthy"
    ok = probe.status == "running" and probe.health in ("healthy", "none")
    if ok:
        since = gate.ready_since if gate.ready_since is not None else now
        gate = replace(gate, ready_since=since)
        if now - since >= gate.min_ready:
            return Verdict.READY, gate, "healthy"
    else:
        gate = replace(gate, ready_since=None)
    if now - gate.started_at >= gate.deadline:
        return Verdict.FAILED, gate, (f"not healthy within the deadline of {gate.deadline:g}s "
                                      f"(status {probe.status}, health {probe.health})")
    return Verdict.WAITING, gate, probe.health
