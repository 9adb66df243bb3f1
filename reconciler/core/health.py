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
    """Where a gate stands after one observation."""

    WAITING = "waiting"
    READY = "ready"
    FAILED = "failed"


class Failure(StrEnum):
    """Why a gate failed, as a kind (the `reconciler_rollbacks_total{reason}` label)."""

    CRASH_LOOP = "crash_loop"  # exited, restarting, or restarted
    HEALTH_GATE = "health_gate"  # unhealthy, or killed by the kernel (out of memory)
    DEADLINE = "deadline"  # not healthy within the deadline


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
        """The probe of one `docker inspect` answer."""
        state = data.get("State") or {}
        health = (state.get("Health") or {}).get("Status") or "none"
        return cls(
            status=str(state.get("Status") or "dead"),
            health=str(health),
            restart_count=int(data.get("RestartCount") or 0),
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
        )


def health_command(data: Mapping[str, Any]) -> tuple[list[str], float] | None:
    """The container's own health check as an exec command and its timeout in seconds
    (from `docker inspect`'s Config.Healthcheck), or None without one."""
    hc = (data.get("Config") or {}).get("Healthcheck") or {}
    test = [str(t) for t in hc.get("Test") or []]
    timeout = (int(hc.get("Timeout") or 0) / 1e9) or 30.0  # Docker's default
    if test[:1] == ["CMD"] and len(test) > 1:
        return test[1:], timeout
    if test[:1] == ["CMD-SHELL"] and len(test) > 1:
        return ["/bin/sh", "-c", test[1]], timeout
    return None


def vouched(probe: Probe) -> Probe:
    """The probe once an exec of the container's own health check succeeded: Docker's
    `starting` (its first probe is one interval away) counts as healthy; `unhealthy` and
    everything else still count as themselves."""
    return replace(probe, health="healthy") if probe.health == "starting" else probe


@dataclass(frozen=True, slots=True)
class Gate:
    """The state of one health gate: when it started, its limits, and since when the
    replica has been ready (None: not ready now)."""

    started_at: float
    min_ready: float
    deadline: float
    baseline_restarts: int = 0
    ready_since: float | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    """One step of a gate: the verdict, the gate to carry on with, a reason for humans,
    and on failure its kind."""

    verdict: Verdict
    gate: Gate
    reason: str
    failure: Failure | None = None


def _failed(gate: Gate, failure: Failure, reason: str) -> Judgement:
    return Judgement(Verdict.FAILED, gate, reason, failure)


def judge(gate: Gate, probe: Probe, now: float) -> Judgement:
    """One step of the gate: what the probe at `now` means for it."""
    if probe.oom_killed:
        return _failed(gate, Failure.HEALTH_GATE, "killed by the kernel (out of memory)")
    if probe.status in ("exited", "dead"):
        return _failed(gate, Failure.CRASH_LOOP, f"exited with code {probe.exit_code}")
    if probe.status == "restarting":
        return _failed(gate, Failure.CRASH_LOOP, f"exited with code {probe.exit_code} and is "
                       "being restarted (crash loop)")
    if probe.restart_count > gate.baseline_restarts:
        return _failed(gate, Failure.CRASH_LOOP, f"restarted "
                       f"{probe.restart_count - gate.baseline_restarts} time(s) (crash loop)")
    if probe.health == "unhealthy":
        return _failed(gate, Failure.HEALTH_GATE, "health check reports unhealthy")
    ok = probe.status == "running" and probe.health in ("healthy", "none")
    if ok:
        since = gate.ready_since if gate.ready_since is not None else now
        gate = replace(gate, ready_since=since)
        if now - since >= gate.min_ready:
            return Judgement(Verdict.READY, gate, "healthy")
    else:
        gate = replace(gate, ready_since=None)
    if now - gate.started_at >= gate.deadline:
        return _failed(gate, Failure.DEADLINE, f"not healthy within the deadline of "
                       f"{gate.deadline:g}s (status {probe.status}, health {probe.health})")
    return Judgement(Verdict.WAITING, gate, probe.health)
