"""The two pure policies, as tables: the health gate (`health.judge`) and which spec to
converge to / what a failure leads to (`rollback`)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core import rollback
from reconciler.core.health import Failure, Gate, Judgement, Probe, Verdict, judge
from reconciler.core.rollback import AfterFailure, AfterRevert, Target

GATE = Gate(started_at=100.0, min_ready=5.0, deadline=60.0, baseline_restarts=1)


def probe(status: str = "running", health: str = "healthy", *, restarts: int = 1,
          code: int = 0, oom: bool = False) -> Probe:
    return Probe(status=status, health=health, restart_count=restarts, exit_code=code,
                 oom_killed=oom)


# (name, gate, probe, now) -> (verdict, failure, words in the reason, ready_since after)
JUDGE: list[tuple[str, Gate, Probe, float, Verdict, Failure | None, str, float | None]] = [
    ("healthy: the clock starts", GATE, probe(), 101.0, Verdict.WAITING, None, "healthy",
     101.0),
    ("healthy for min_ready", Gate(100.0, 5.0, 60.0, 1, ready_since=101.0), probe(), 106.0,
     Verdict.READY, None, "healthy", 101.0),
    ("not yet min_ready", Gate(100.0, 5.0, 60.0, 1, ready_since=101.0), probe(), 105.9,
     Verdict.WAITING, None, "healthy", 101.0),
    ("no healthcheck counts as healthy", GATE, probe(health="none"), 100.0, Verdict.WAITING,
     None, "none", 100.0),
    ("starting resets the clock", Gate(100.0, 5.0, 60.0, 1, ready_since=101.0),
     probe(health="starting"), 104.0, Verdict.WAITING, None, "starting", None),
    ("unhealthy fails early", GATE, probe(health="unhealthy"), 101.0, Verdict.FAILED,
     Failure.HEALTH_GATE, "unhealthy", None),
    ("OOM kill fails, even while running", GATE, probe(oom=True), 101.0, Verdict.FAILED,
     Failure.HEALTH_GATE, "out of memory", None),
    ("exited", GATE, probe("exited", "none", code=3), 101.0, Verdict.FAILED,
     Failure.CRASH_LOOP, "exited with code 3", None),
    ("dead", GATE, probe("dead", "none", code=1), 101.0, Verdict.FAILED, Failure.CRASH_LOOP,
     "exited with code 1", None),
    ("restarting", GATE, probe("restarting", "none", code=2), 101.0, Verdict.FAILED,
     Failure.CRASH_LOOP, "being restarted", None),
    ("a restart above the baseline", GATE, probe(restarts=2), 101.0, Verdict.FAILED,
     Failure.CRASH_LOOP, "restarted 1 time(s)", None),
    ("restarts up to the baseline are not counted", GATE, probe(restarts=1), 101.0,
     Verdict.WAITING, None, "healthy", 101.0),
    ("deadline", GATE, probe(health="starting"), 160.0, Verdict.FAILED, Failure.DEADLINE,
     "deadline of 60s", None),
    ("ready wins over the deadline", Gate(100.0, 5.0, 60.0, 1, ready_since=150.0), probe(),
     160.0, Verdict.READY, None, "healthy", 150.0),
    ("created is waiting, not failed", GATE, probe("created", "none"), 101.0,
     Verdict.WAITING, None, "none", None),
]


@pytest.mark.parametrize("row", JUDGE, ids=[r[0] for r in JUDGE])
def test_judge_table(row: tuple[Any, ...]) -> None:
    _, gate, observed, now, verdict, failure, words, since = row
    got = judge(gate, observed, now)
    assert isinstance(got, Judgement)
    assert (got.verdict, got.failure) == (verdict, failure)
    assert words in got.reason
    assert got.gate.ready_since == since
    assert (got.gate.started_at, got.gate.deadline) == (gate.started_at, gate.deadline)


def test_probe_from_inspect_reads_restarts_oom_and_health() -> None:
    p = Probe.from_inspect({"RestartCount": 3, "State": {
        "Status": "running", "ExitCode": 137, "OOMKilled": True,
        "Health": {"Status": "unhealthy"}}})
    assert p == Probe("running", "unhealthy", 3, 137, True)
    assert Probe.from_inspect({}) == Probe("dead", "none", 0, 0, False)


# --- rollback: which spec, and what a failure leads to -----------------------------------------

CHOOSE = [
    # candidate, last_good, quarantined -> target
    ("c", None, set(), Target.CANDIDATE),
    ("c", "g", set(), Target.CANDIDATE),
    ("c", "g", {"x"}, Target.CANDIDATE),
    ("c", "g", {"c"}, Target.LAST_GOOD),
    ("c", None, {"c"}, Target.NOTHING),
    ("c", "c", {"c"}, Target.NOTHING),  # never "revert" to the spec that is quarantined
]


@pytest.mark.parametrize(("candidate", "last_good", "quarantined", "target"), CHOOSE)
def test_choose_table(candidate: str, last_good: str | None, quarantined: set[str],
                      target: Target) -> None:
    assert rollback.choose(candidate, last_good=last_good,
                           quarantined=quarantined).target is target


@pytest.mark.parametrize(("failed", "last_good", "to"), [
    ("c", "g", "g"), ("c", None, None), ("c", "c", None),
])
def test_revert_to_table(failed: str, last_good: str | None, to: str | None) -> None:
    assert rollback.revert_to(failed, last_good=last_good) == to


AFTER_FAILURE = [
    # name, candidate, last_good, engine_unavailable[, failed services] -> policy
    ("engine outage: no quarantine", "c", "g", True, AfterFailure.RETRY),
    ("engine outage on a repair: no quarantine", "g", "g", True, AfterFailure.RETRY),
    ("engine outage, first rollout: no quarantine", "c", None, True, AfterFailure.RETRY),
    ("failed repair of last-good: no quarantine", "g", "g", False, AfterFailure.REPAIR_FAILED),
    ("bad rollout: quarantine (and revert)", "c", "g", False, AfterFailure.QUARANTINE),
    ("bad first rollout, no service to blame (pull, edge): quarantine", "c", None, False,
     AfterFailure.QUARANTINE),
    ("bad first rollout of a service: degrade, no quarantine", "c", None, False, ("auth",),
     AfterFailure.DEGRADE),
    ("bad rollout of a service with last-good: quarantine and revert", "c", "g", False,
     ("auth",), AfterFailure.QUARANTINE),
    ("engine outage, first rollout, a service failed: retry", "c", None, True, ("auth",),
     AfterFailure.RETRY),
]


@pytest.mark.parametrize("row", AFTER_FAILURE, ids=[r[0] for r in AFTER_FAILURE])
def test_after_failure_table(row: tuple[Any, ...]) -> None:
    candidate, last_good, outage, *failed, policy = row[1:]
    assert rollback.after_failure(candidate, last_good=last_good, engine_unavailable=outage,
                                  failed_services=failed[0] if failed else ()) is policy


@pytest.mark.parametrize(("ok", "outage", "policy"), [
    (True, False, AfterRevert.ROLLED_BACK),
    (True, True, AfterRevert.ROLLED_BACK),
    (False, True, AfterRevert.RETRY),  # engine outage during the revert: the next pass
    (False, False, AfterRevert.HALT),  # a failed revert never starts another rollout
])
def test_after_revert_table(ok: bool, outage: bool, policy: AfterRevert) -> None:
    assert rollback.after_revert(ok=ok, engine_unavailable=outage) is policy
