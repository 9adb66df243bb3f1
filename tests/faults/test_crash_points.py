"""Crash at every step: `reconciler apply` with one crash point armed dies there (SIGKILL);
`reconciler apply` again must finish the job within 30 s — the host matches the spec (or
last-good, for a revert: a quarantined spec is never applied), no duplicate or orphaned
container, the volume sentinel byte-identical, at most one revert in the history, and every
state file parses.

Phases: `cold` (empty host -> v1), `forward` (v1 -> v2: stop-first db and start-first
api-gateway behind the nginx edge), `revert` (v1 -> a db that exits at once: the crash is
armed for the revert phase only, `revert:<point>`). Trials of one phase run one after the
other on one host, each from a converged state (a new version, or a new bad version, per
trial), so no trial pays for a cold start it does not test. The default run covers a
representative subset; RECONCILER_FULL_FAULTS=1 runs every reachable (phase, point)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from reconciler.faults import POINTS
from tests.dockerkit import Host
from tests.faults import kit

pytestmark = pytest.mark.docker

FULL = os.environ.get("RECONCILER_FULL_FAULTS") == "1"
CONVERGE_S = 30.0

# Where each point is met (verified: the armed apply must die with SIGKILL). The revert phase
# counts only hits after the rollout failed (quarantine onwards).
REACHABLE: dict[str, tuple[str, ...]] = {
    "cold": (
        "network-create:before", "network-create:after", "volume-create:before",
        "volume-create:after", "container-create:before", "container-create:after",
        "container-start:before", "container-start:after", "edge-write:before",
        "edge-write:after", "state-key:before", "state-key:after",
        "state-last-good:before", "state-last-good:after", "state-history:before",
        "state-history:after",
    ),
    "forward": (
        "container-create:before", "container-create:after", "container-start:before",
        "container-start:after", "container-stop:before", "container-stop:after",
        "container-remove:before", "container-remove:after", "edge-write:before",
        "edge-write:after", "edge-reload:before", "edge-reload:after",
        "state-last-good:before", "state-last-good:after", "state-history:before",
        "state-history:after",
    ),
    "revert": (
        "state-quarantine:before", "state-quarantine:after", "container-create:before",
        "container-create:after", "container-start:before", "container-start:after",
        "container-stop:before", "container-stop:after", "container-remove:before",
        "container-remove:after",
    ),
}
# The default CI subset: one point per side effect kind, spread over the phases.
SUBSET = {
    ("cold", "volume-create:after"), ("cold", "state-key:after"),
    ("cold", "container-create:after"),
    ("forward", "container-stop:after"), ("forward", "container-create:after"),
    ("forward", "edge-reload:before"), ("forward", "state-last-good:before"),
    ("revert", "state-quarantine:after"), ("revert", "container-remove:before"),
    ("revert", "container-start:before"),
}


def cases(phase: str) -> list[str]:
    return [p for p in REACHABLE[phase] if FULL or (phase, p) in SUBSET]


def test_reachability_table_names_real_points() -> None:
    for points in REACHABLE.values():
        assert set(points) <= set(POINTS)
    run = sum(len(cases(ph)) for ph in REACHABLE)
    print(f"FIGURES crash points: {len(POINTS)} defined; reachable (phase x point): "
          f"{sum(map(len, REACHABLE.values()))}; this run: {run}"
          + (" (full matrix)" if FULL else " (subset; RECONCILER_FULL_FAULTS=1 for all)"))


LAST: dict[str, str] = {}


def matches(h: Host, spec: Path) -> bool:
    """The host is exactly `spec`: an empty plan, every container running and healthy."""
    plan = kit.cli(h, "plan", "--json", spec=spec)
    if plan.returncode != 0:
        steps = json.loads(plan.stdout)["steps"] if plan.stdout.startswith("{") else []
        LAST["why"] = f"plan exit {plan.returncode}: " + "; ".join(
            f"{s['action']} {s['service']} ({s['reason']})" for s in steps) + plan.stderr[-500:]
        return False
    cs = kit.containers(h)
    LAST["why"] = "containers: " + "; ".join(
        f"{c['Name']} {c['State']['Status']} {c['State'].get('Health', {}).get('Status')}"
        for c in cs)
    return kit.all_healthy(cs) and kit.one_per_replica(cs)


def reset(h: Host) -> None:
    h.cleanup()
    shutil.rmtree(h.state, ignore_errors=True)


def trial(h: Host, phase: str, point: str, n: int, data: bytes | None) -> float:
    """One crash and one restart; returns seconds from the restart to converged."""
    v1 = kit.TINY
    if phase == "cold":
        reset(h)
        kit.write_stack(h, v1)
    elif phase == "forward":
        kit.write_stack(h, kit.version(kit.version(v1, "db", f"{n + 2}"), "api-gateway",
                                       f"{n + 2}"))
    else:
        kit.write_stack(h, kit.version(v1, "db", f"bad{n}", ', EXIT_IMMEDIATELY: "1"'))
    good_before = None
    if (h.state / "last-good.json").exists():
        good_before = json.loads((h.state / "last-good.json").read_text())["fingerprint"]
    reverts_before = sum(e["result"] == "rolled_back" for e in kit.history(h.state))
    armed = f"revert:{point}" if phase == "revert" else point
    crashed = kit.cli(h, "apply", env={"RECONCILER_CRASH_AT": armed})
    assert crashed.returncode == -9, (
        f"{armed} was not reached (exit {crashed.returncode}):\n"
        + crashed.stdout[-1500:] + crashed.stderr[-1500:])

    t0 = time.monotonic()
    again = kit.cli(h, "apply")
    out = again.stdout + again.stderr
    assert "Traceback" not in out, out
    if phase == "revert":
        assert again.returncode == 1, out
        good = json.loads((h.state / "last-good.json").read_text())
        assert good["fingerprint"] == good_before, "the quarantined spec became last-good"
        expected = Path(good["directory"])
    else:
        assert again.returncode == 0, out
        expected = h.spec
    left = CONVERGE_S - (time.monotonic() - t0)
    assert kit.wait_for(lambda: matches(h, expected), left) is not None, (
        f"not converged within {CONVERGE_S}s: {LAST.get('why')}\n{out}")
    seconds = time.monotonic() - t0
    if data is not None:
        assert kit.sentinel(h) == data, "the volume sentinel changed"
    cs = kit.containers(h)
    assert sorted(c["Config"]["Labels"]["reconciler.service"] for c in cs) == [
        "api-gateway", "db", "nginx"], "orphaned or missing containers"
    if phase == "revert":
        assert all(not any(e.startswith("APP_VERSION=bad") for e in c["Config"]["Env"])
                   for c in cs), "a quarantined spec is running"
    reverts = sum(e["result"] == "rolled_back" for e in kit.history(h.state)) - reverts_before
    assert reverts <= (1 if phase == "revert" else 0), f"{reverts} reverts"
    assert kit.state_consistent(h.state) == []
    return seconds


@pytest.mark.parametrize("phase", list(REACHABLE))
def test_crash_then_restart_converges(host: Host, phase: str) -> None:
    points = cases(phase)
    kit.write_stack(host, kit.TINY)
    data = None
    if phase != "cold":
        first = kit.cli(host, "apply")
        assert first.returncode == 0, first.stdout + first.stderr
        data = kit.plant_sentinel(host)
    figures = kit.Figures(f"crash {phase}")
    failures = []
    for n, point in enumerate(points):
        try:
            seconds = trial(host, phase, point, n, data)
        except AssertionError as exc:
            failures.append(f"{phase}/{point}: {str(exc)[:1500]}")
            figures.trial(False, 0.0)
            print(f"  {phase}/{point}: FAILED")
            if phase != "cold":  # start the phase over from a clean, converged host
                reset(host)
                kit.write_stack(host, kit.TINY)
                assert kit.cli(host, "apply").returncode == 0
                data = kit.plant_sentinel(host)
            continue
        figures.trial(True, seconds)
        print(f"  {phase}/{point}: converged {seconds:.2f}s after the restart")
    kit.record_host(host)
    figures.notes.append(f"points {', '.join(points)}")
    figures.show()
    assert not failures, "\n\n".join(failures)
