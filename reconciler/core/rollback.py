"""Which spec to converge to, and what a failure leads to. Pure: fingerprints and facts in,
a choice out.

Never chooses a quarantined candidate, and never reverts to a spec identical to the one that
just failed (that would retry the bad rollout under another name). The quarantine policy
(an engine outage quarantines nothing, nor does a failed repair of last-good; a failed
revert halts) lives here too, so the reconcile pass only sequences it. So does the rule that a
backup inside a revert is best effort (`for_revert`): a revert never stops half-way because a
copy of the failed generation's data could not be taken.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from enum import StrEnum

from reconciler.core.plans import Action, Plan


class Target(StrEnum):
    """The spec a pass converges to."""

    CANDIDATE = "candidate"
    LAST_GOOD = "last-good"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class Choice:
    """The target of a pass and why (for humans)."""

    target: Target
    reason: str


def choose(candidate: str, *, last_good: str | None, quarantined: Collection[str]) -> Choice:
    """The desired state for a pass: the candidate unless it is quarantined."""
    if candidate not in quarantined:
        return Choice(Target.CANDIDATE, "candidate spec")
    if last_good is not None and last_good != candidate:
        return Choice(Target.LAST_GOOD, f"candidate {candidate} is quarantined: holding last-good")
    return Choice(Target.NOTHING, f"candidate {candidate} is quarantined and there is no other "
                                  "good spec: leaving the host as it is")


def revert_to(failed: str, *, last_good: str | None) -> str | None:
    """After `failed` failed: the fingerprint to go back to, or None (nothing to go back to)."""
    if last_good is None or last_good == failed:
        return None
    return last_good


class AfterFailure(StrEnum):
    """What a failed rollout of the candidate leads to."""

    RETRY = "retry"  # the engine did not answer: no quarantine, no revert, the next pass retries
    REPAIR_FAILED = "repair-failed"  # repairing drift to last-good failed: no quarantine
    QUARANTINE = "quarantine"  # quarantine the candidate (and revert, see `revert_to`)
    # first deploy (no last-good): no quarantine, no revert; the failed services are held
    # back, everything that does not depend on them comes up, and the next passes retry them
    DEGRADE = "degrade"


def after_failure(candidate: str, *, last_good: str | None, engine_unavailable: bool,
                  failed_services: Collection[str] = ()) -> AfterFailure:
    """The policy for a failed rollout of `candidate`.

    An engine outage says nothing about the spec: no quarantine. A failed repair of the
    known-good spec is not a bad rollout, there is nothing to revert to, and quarantining the
    good spec would stop every later repair. Without a last-good there is nothing to revert
    to either: when the failure is a service's own (`failed_services`), the host degrades
    (the rest comes up, the failed services are retried) instead of freezing. Anything else
    quarantines the candidate.
    """
    if engine_unavailable:
        return AfterFailure.RETRY
    if last_good is not None and last_good == candidate:
        return AfterFailure.REPAIR_FAILED
    if last_good is None and failed_services:
        return AfterFailure.DEGRADE
    return AfterFailure.QUARANTINE


class AfterRevert(StrEnum):
    """What a revert to last-good leads to."""

    ROLLED_BACK = "rolled-back"  # the host is on last-good again
    RETRY = "retry"  # the engine did not answer: the next pass converges to last-good
    HALT = "halt"  # the revert itself failed: stop, never start another forward rollout


def after_revert(*, ok: bool, engine_unavailable: bool) -> AfterRevert:
    """The policy once a revert has run (`ok`: it converged, or there was nothing to do)."""
    if ok:
        return AfterRevert.ROLLED_BACK
    if engine_unavailable:
        return AfterRevert.RETRY
    return AfterRevert.HALT


def for_revert(plan: Plan) -> Plan:
    """The plan of a revert to last-good (or of a pass that holds last-good, which finishes an
    interrupted revert): its backup steps are best effort. A forward rollout stops before
    touching anything when a backup fails; a revert must not, because it runs to undo a
    failure: the container a backup command would run in is often the broken one, and
    stopping there would leave the host half-way between the failed generation and
    last-good. The executor logs, counts and records a failed best-effort backup and goes
    on; the backups taken before the failed rollout are still there."""
    if not any(s.action is Action.BACKUP for s in plan.steps):
        return plan
    steps = tuple(replace(s, best_effort=True) if s.action is Action.BACKUP else s
                  for s in plan.steps)
    return replace(plan, steps=steps,
                   notes=(*plan.notes, "a revert: a failed backup is recorded and the revert "
                                       "goes on (it never stops half-way)"))
